/*
 * The libpq engine's keys: credentials are part of a slot's identity, secrets are not.
 * SipHash-2-4 against the reference vectors; slot keys that differ only by a salted
 * password digest; the password taken the way libpq takes it ($PGPASSWORD, the password
 * file with its wildcards, escapes, "localhost" for the default socket directory and its
 * permission check); service= resolved by libpq; the masking of passwords in libpq's
 * messages by what libpq parses. Then against real PostgreSQL servers with scram-sha-256:
 * right and wrong passwords at once get their own slots and answers, with neither password
 * in the segment; one service name in two service files naming two servers gets two slots,
 * each verified on its own server; a password from the password file or $PGPASSWORD shares
 * the slot of the same password in the conninfo.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/engine.h"
#include "pgharness.h"
#include "suite.h"
#include "proc.h"
#include "warmlock.h"
#include "warmlock/pg.h"

/* Distinctive, so that finding one can only mean a leak. */
#define PASSWORD "Kp3vR-r1ght-7d0a"
#define WRONG    "Ys8nQ-wr0ng-2e4b"
#define PW2      "Hm5tX-s3c0nd-9c1f" /* the second server's */

static struct pgh H, H2;
static int have_pg, have_pg2;
static const char *pg_reason, *pg2_reason;
static char DIR_[64];

#define NEED_PG()  PGH_NEED(have_pg, pg_reason)
#define NEED_PG2() PGH_NEED(have_pg2, pg2_reason)

/* ---------------------------------------------------------------- helpers */

/* No PG* variable of the caller's environment steers a key. */
static void clean_env(void)
{
    static const char *const vars[] = {
        "PGHOST",    "PGHOSTADDR",           "PGPORT",       "PGDATABASE",
        "PGUSER",    "PGPASSWORD",           "PGOPTIONS",    "PGSERVICE",
        "PGSSLMODE", "PGTARGETSESSIONATTRS", "PGSERVICEFILE"};
    char none[128];
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    snprintf(none, sizeof(none), "%s/no-such-pgpass", DIR_);
    setenv("PGPASSFILE", none, 1);
}

static void slot_key(struct wl_segment *seg, const char *ci, char *buf, size_t len)
{
    int r = wl_pg_slot_key(seg, ci, buf, len);
    if (r < 0)
        fail_msg("wl_pg_slot_key(%s) = %d: %s", ci, r, buf);
    assert_int_equal((size_t)r, strlen(buf));
}

/* key = base + "?pw=" or "&pw=" + 8 lower-case hex digits; returns the digits. */
static const char *digest_of(const char *key, const char *base)
{
    size_t n = strlen(base);
    if (strncmp(key, base, n) != 0)
        fail_msg("slot key %s does not begin with wl_pg_key's %s", key, base);
    assert_int_equal(strlen(key), n + 12);
    assert_true(key[n] == (strchr(base, '?') ? '&' : '?'));
    assert_memory_equal(key + n + 1, "pw=", 3);
    for (size_t i = n + 4; i < n + 12; i++)
        assert_true((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f'));
    return key + n + 4;
}

/* Fail if buf holds a password, or its first or last 8 bytes. */
static void expect_no_secret(const char *what, const void *buf, size_t len,
                             const char *const *secrets, size_t ns)
{
    for (size_t i = 0; i < ns; i++) {
        size_t sl = strlen(secrets[i]);
        const struct {
            size_t off, n;
        } parts[] = {{0, sl}, {0, 8}, {sl - 8, 8}};
        for (size_t k = 0; k < (sl < 8 ? 1 : sizeof(parts) / sizeof(parts[0])); k++) {
            const char *hit = memmem(buf, len, secrets[i] + parts[k].off, parts[k].n);
            if (hit)
                fail_msg("%s holds a password's bytes (%.*s) at offset %zu", what, (int)parts[k].n,
                         secrets[i] + parts[k].off, (size_t)(hit - (const char *)buf));
        }
    }
}

/* ---------------------------------------------------------------- digest */

static void test_pgkey_siphash_matches_the_reference_vectors(void **state)
{
    uint8_t k[16], m[64];
    (void)state;
    for (int i = 0; i < 16; i++)
        k[i] = (uint8_t)i;
    for (int i = 0; i < 64; i++)
        m[i] = (uint8_t)i;
    /* SipHash-2-4's reference vectors: key 00..0f, messages 00..(n-1) */
    assert_true(wl__siphash24(k, m, 0) == 0x726fdb47dd0e0e31ull);
    assert_true(wl__siphash24(k, m, 1) == 0x74f839c593dc67fdull);
    assert_true(wl__siphash24(k, m, 15) == 0xa129ca6149be45e5ull);
}

/* ---------------------------------------------------------------- slot keys */

static void test_pgkey_slot_keys_differ_only_by_a_salted_password_digest(void **state)
{
    const char *seg1 = wlt_segname(), *seg2;
    struct wl_segment *a, *b;
    char base[WL_PG_KEY_MAX], ka[WL_PG_KEY_MAX], kb[WL_PG_KEY_MAX], kn[WL_PG_KEY_MAX];
    char ka2[WL_PG_KEY_MAX], ku[WL_PG_KEY_MAX], ks[WL_PG_KEY_MAX];
    static const char *const secrets[] = {PASSWORD, WRONG};
    (void)state;
    clean_env();
    assert_int_equal(wl_open(seg1, NULL, &a), 0);
    seg2 = wlt_segname();
    assert_int_equal(wl_open(seg2, NULL, &b), 0);

    assert_true(wl_pg_key("host=/run/pg port=5432 dbname=app user=u", base, sizeof(base)) > 0);
    slot_key(a, "host=/run/pg port=5432 dbname=app user=u password=" PASSWORD, ka, sizeof(ka));
    slot_key(a, "host=/run/pg port=5432 dbname=app user=u password=" WRONG, kb, sizeof(kb));
    slot_key(a, "host=/run/pg port=5432 dbname=app user=u", kn, sizeof(kn));
    slot_key(a, "postgresql://u:" PASSWORD "@%2Frun%2Fpg:5432/app", ku, sizeof(ku));
    slot_key(b, "host=/run/pg port=5432 dbname=app user=u password=" PASSWORD, ka2, sizeof(ka2));
    print_message("%s\n%s\n%s\n%s (other segment)\n", ka, kb, kn, ka2);
    /* no password, no digest: the key is wl_pg_key's */
    assert_string_equal(kn, base);
    /* a password: wl_pg_key's key and a digest; two passwords, two digests */
    assert_string_not_equal(digest_of(ka, base), digest_of(kb, base));
    /* one password in two spellings: one slot */
    assert_string_equal(ku, ka);
    /* the digest is keyed with the segment's salt: another segment, another digest */
    assert_string_not_equal(digest_of(ka2, base), digest_of(ka, base));
    expect_no_secret("a slot key", ka, strlen(ka), secrets, 2);
    expect_no_secret("a slot key", kb, strlen(kb), secrets, 2);
    /* a key with options: "&pw=" */
    slot_key(a, "host=/run/pg dbname=app user=u sslmode=disable password=" PASSWORD, ks,
             sizeof(ks));
    assert_true(wl_pg_key("host=/run/pg dbname=app user=u sslmode=disable", base, sizeof(base)) >
                0);
    digest_of(ks, base);
    assert_int_equal(wl_pg_slot_key(NULL, "host=/x", ks, sizeof(ks)), -EINVAL);
    wl_close(a);
    wl_close(b);
    wl_unlink(seg1);
    wl_unlink(seg2);
}

static void test_pgkey_too_long_a_key_is_refused_clearly(void **state)
{
    char ci[3000], k[WL_PG_KEY_MAX];
    (void)state;
    clean_env();
    snprintf(ci, sizeof(ci), "host=/run/pg dbname=app user=u options='-c application_name=%01500d'",
             7);
    assert_int_equal(wl_pg_key(ci, k, sizeof(k)), -ENAMETOOLONG);
    print_message("%s\n", k);
    assert_non_null(strstr(k, "WL_PG_KEY_MAX"));
    /* one that fits WL_PG_KEY_MAX but not the caller's buffer */
    assert_int_equal(wl_pg_key("host=/run/pg dbname=app user=u", k, 8), -ENAMETOOLONG);
}

/* $PGPASSWORD and the password file, the way libpq reads them */
static void test_pgkey_pgpassword_and_pgpass_key_like_a_conninfo_password(void **state)
{
    const char *name = wlt_segname();
    struct wl_segment *seg;
    char pass[128], want[WL_PG_KEY_MAX], want_colon[WL_PG_KEY_MAX], k[WL_PG_KEY_MAX];
    char base[WL_PG_KEY_MAX], text[512];
    const char *ci = "host=/run/pg port=5433 dbname=app user=u";
    (void)state;
    clean_env();
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_true(wl_pg_key(ci, base, sizeof(base)) > 0);
    slot_key(seg, "host=/run/pg port=5433 dbname=app user=u password=" PASSWORD, want,
             sizeof(want));
    slot_key(seg, "host=/run/pg port=5433 dbname=app user=u password='" PASSWORD ":x\\\\y'",
             want_colon, sizeof(want_colon));

    setenv("PGPASSWORD", PASSWORD, 1);
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, want);
    /* the conninfo's password wins over $PGPASSWORD */
    slot_key(seg, "host=/run/pg port=5433 dbname=app user=u password=" WRONG, k, sizeof(k));
    assert_string_not_equal(k, want);
    unsetenv("PGPASSWORD");

    snprintf(pass, sizeof(pass), "%s/pgpass", DIR_);
    setenv("PGPASSFILE", pass, 1);
    /* an exact line, after lines for other servers */
    wlt_write_file(pass, 0600, "/run/pg:5432:app:u:" WRONG "\n/run/pg:5433:app:u:" PASSWORD "\n");
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, want);
    /* wildcards */
    wlt_write_file(pass, 0600, "other:*:*:*:" WRONG "\n*:5433:*:u:" PASSWORD "\n");
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, want);
    /* escapes: \: and \\ in the password field, \: in a field matched */
    wlt_write_file(pass, 0600, "/run/pg:5433:app:u:" PASSWORD "\\:x\\\\y\n");
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, want_colon);
    /* the passfile keyword names the file as PGPASSFILE does */
    unsetenv("PGPASSFILE");
    snprintf(text, sizeof(text), "%s passfile=%s", ci, pass);
    slot_key(seg, text, k, sizeof(k));
    assert_string_equal(k, want_colon);
    setenv("PGPASSFILE", pass, 1);
    /* "localhost" matches libpq's default socket directory */
    wlt_write_file(pass, 0600, "localhost:5433:app:u:" PASSWORD "\n");
    slot_key(seg, "port=5433 dbname=app user=u password=" PASSWORD, want, sizeof(want));
    slot_key(seg, "port=5433 dbname=app user=u", k, sizeof(k));
    assert_string_equal(k, want);
    /* ~/.pgpass where libpq looks for it: libpq 15 and later in $HOME when it is set */
    if (PQlibVersion() >= 150000) {
        char home[128], at_home[160], *old_home = getenv("HOME");
        char saved[512] = "", want_home[WL_PG_KEY_MAX];
        slot_key(seg, "host=/run/pg port=5433 dbname=app user=u password=" PASSWORD, want_home,
                 sizeof(want_home));
        if (old_home)
            snprintf(saved, sizeof(saved), "%s", old_home);
        snprintf(home, sizeof(home), "%s/home", DIR_);
        mkdir(home, 0700);
        snprintf(at_home, sizeof(at_home), "%s/.pgpass", home);
        wlt_write_file(at_home, 0600, "/run/pg:5433:app:u:" PASSWORD "\n");
        unsetenv("PGPASSFILE");
        setenv("HOME", home, 1);
        slot_key(seg, ci, k, sizeof(k));
        assert_string_equal(k, want_home);
        unlink(at_home);
        slot_key(seg, ci, k, sizeof(k));
        assert_string_equal(k, base);
        rmdir(home);
        if (old_home)
            setenv("HOME", saved, 1);
        else
            unsetenv("HOME");
        setenv("PGPASSFILE", pass, 1);
    }
    /* a file others can read is ignored, as libpq ignores it (it warns on stderr) */
    wlt_write_file(pass, 0644, "*:*:*:*:" PASSWORD "\n");
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, base);
    /* no matching line: no password, no digest */
    wlt_write_file(pass, 0600, "*:9999:*:*:" PASSWORD "\n");
    slot_key(seg, ci, k, sizeof(k));
    assert_string_equal(k, base);
    /* two hosts, each its own line: both passwords count */
    wlt_write_file(pass, 0600, "a:1:d:u:" PASSWORD "\nb:1:d:u:" WRONG "\n");
    {
        char ab[WL_PG_KEY_MAX], ab2[WL_PG_KEY_MAX];
        slot_key(seg, "host=a,b port=1 dbname=d user=u", ab, sizeof(ab));
        wlt_write_file(pass, 0600, "a:1:d:u:" PASSWORD "\nb:1:d:u:" PASSWORD "\n");
        slot_key(seg, "host=a,b port=1 dbname=d user=u", ab2, sizeof(ab2));
        assert_string_not_equal(ab, ab2);
    }
    clean_env();
    wl_close(seg);
    wl_unlink(name);
}

static void test_pgkey_service_is_keyed_on_what_the_service_file_names(void **state)
{
    char f1[128], f2[128], k1[WL_PG_KEY_MAX], k2[WL_PG_KEY_MAX], k[WL_PG_KEY_MAX];
    const char *name = wlt_segname();
    struct wl_segment *seg;
    (void)state;
    clean_env();
    snprintf(f1, sizeof(f1), "%s/svc1.conf", DIR_);
    snprintf(f2, sizeof(f2), "%s/svc2.conf", DIR_);
    wlt_write_file(f1, 0600, "[app]\nhost=/run/one\nport=6001\ndbname=d1\nuser=u1\n");
    wlt_write_file(f2, 0600,
               "# another file\n[app]\nhost=10.1.2.3\nport=6002\ndbname=d2\nuser=u2\n"
               "sslmode=require\npassword=" PASSWORD "\n");
    setenv("PGSERVICEFILE", f1, 1);
    assert_true(wl_pg_key("service=app", k1, sizeof(k1)) > 0);
    setenv("PGSERVICEFILE", f2, 1);
    assert_true(wl_pg_key("service=app", k2, sizeof(k2)) > 0);
    print_message("%s\n%s\n", k1, k2);
    /* the key names the server of the service file, not libpq's defaults */
    assert_string_equal(k1, "u1@/run/one:6001/d1");
    assert_string_equal(k2, "u2@10.1.2.3:6002/d2?sslmode=require");
    /* the conninfo wins over the service file */
    setenv("PGSERVICEFILE", f1, 1);
    assert_true(wl_pg_key("service=app port=7000", k, sizeof(k)) > 0);
    assert_string_equal(k, "u1@/run/one:7000/d1");
    /* $PGSERVICE names it too */
    setenv("PGSERVICE", "app", 1);
    assert_true(wl_pg_key("", k, sizeof(k)) > 0);
    assert_string_equal(k, k1);
    unsetenv("PGSERVICE");
    /* a password in the service file is digested as a conninfo's */
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    setenv("PGSERVICEFILE", f2, 1);
    slot_key(seg, "service=app", k, sizeof(k));
    slot_key(seg, "host=10.1.2.3 port=6002 dbname=d2 user=u2 sslmode=require password=" PASSWORD,
             k1, sizeof(k1));
    assert_string_equal(k, k1);
    /* an unknown service: libpq's message */
    assert_int_equal(wl_pg_key("service=nosuch", k, sizeof(k)), -EINVAL);
    assert_non_null(strstr(k, "nosuch"));
    clean_env();
    wl_close(seg);
    wl_unlink(name);
}

/* ---------------------------------------------------------------- masking */

#define HUNTER "Hunter2Secret"

static void expect_refused_without_secret(const char *ci, const char *const *secrets, size_t ns)
{
    const char *name = wlt_segname();
    struct wl_segment *seg;
    struct wl_result r;
    struct wl_pg_opts o = {.wait.timeout_ms = 3000};
    char k[WL_PG_KEY_MAX];
    PGconn *c;

    assert_int_equal(wl_pg_key(ci, k, sizeof(k)), -EINVAL);
    print_message("%s\n  -> %s\n", ci, k);
    assert_non_null(strstr(k, "invalid conninfo"));
    expect_no_secret("wl_pg_key's message", k, strlen(k), secrets, ns);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_pg_slot_key(seg, ci, k, sizeof(k)), -EINVAL);
    expect_no_secret("wl_pg_slot_key's message", k, strlen(k), secrets, ns);
    assert_int_equal(wl_pg_ensure(seg, ci, &o, &r), -EINVAL);
    expect_no_secret("wl_pg_ensure's error", r.error, sizeof(r.error), secrets, ns);
    c = wl_pg_connect(seg, ci, &o, &r);
    assert_null(c);
    expect_no_secret("wl_pg_connect's error", r.error, sizeof(r.error), secrets, ns);
    wl_close(seg);
    wl_unlink(name);
}

static void test_pgkey_masks_a_password_by_what_libpq_parses(void **state)
{
    static const char *const hunter[] = {HUNTER};
    static const char *const halves[] = {"Hunter2", "Secret"};
    char k[WL_PG_KEY_MAX], m[256], want[WL_PG_KEY_MAX];
    const char *name = wlt_segname();
    struct wl_segment *seg;
    (void)state;
    clean_env();
    /* libpq percent-decodes URI query keywords: pass%77ord is password */
    expect_refused_without_secret("postgresql://[::1]x/postgres?pass%77ord=" HUNTER, hunter, 1);
    /* libpq's "invalid percent-encoded token" quotes the value */
    expect_refused_without_secret("postgresql://[::1]/postgres?pass%77ord=" HUNTER "%zz", hunter,
                                  1);
    expect_refused_without_secret("postgresql://[::1]/postgres?%70assword=" HUNTER "%zz", hunter,
                                  1);
    /* an '@' in a password: the rest would become the host, and be kept in the key */
    expect_refused_without_secret("postgresql://postgres:Hunter2@Secret@localhost:1/postgres",
                                  halves, 2);
    /* a URI libpq parses: the key holds no password, the slot key its digest */
    assert_true(wl_pg_key("postgresql://h:1/db?pass%77ord=" HUNTER, k, sizeof(k)) > 0);
    expect_no_secret("a key", k, strlen(k), hunter, 1);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    slot_key(seg, "postgresql://h:1/db?pass%77ord=" HUNTER, k, sizeof(k));
    slot_key(seg, "host=h port=1 dbname=db password=" HUNTER, want, sizeof(want));
    assert_string_equal(k, want);
    wl_close(seg);
    wl_unlink(name);
    /* any message about such a conninfo: the password libpq parsed, and its spellings */
    wl__pg_conninfo_message(m, sizeof(m), "x \"" HUNTER "\" y \"Hunter%32Secret\"",
                            "postgresql://h:1/db?pass%77ord=Hunter%32Secret");
    print_message("%s\n", m);
    expect_no_secret("a masked message", m, strlen(m), hunter, 1);
    assert_null(strstr(m, "Hunter%32"));
    wl__pg_conninfo_message(m, sizeof(m), "bad \"" HUNTER "\"",
                            "host=h password='" HUNTER "' sslmode=bogus");
    expect_no_secret("a masked message", m, strlen(m), hunter, 1);
}

/* ---------------------------------------------------------------- against servers */

#define NRIGHT 8
#define NWRONG 8

struct herd {
    char seg[64];
    char right[1024], wrong[1024];
    struct wlt_barrier bar;
    int rc[NRIGHT + NWRONG];
    char err[NRIGHT + NWRONG][160];
};

static int herd_worker(void *arg, int i)
{
    struct herd *h = arg;
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 20000, .wait.fail_ttl_ms = 2000};
    struct wl_result r;
    if (wl_open(h->seg, NULL, &seg) < 0)
        return 90;
    wlt_barrier_wait(&h->bar, NRIGHT + NWRONG);
    h->rc[i] = wl_pg_ensure(seg, i < NRIGHT ? h->right : h->wrong, &o, &r);
    wl__copy(h->err[i], sizeof(h->err[i]), r.error);
    wl_close(seg);
    return 0;
}

/* The whole object in /dev/shm holds neither password. */
static void expect_clean_object(const char *name, const char *const *secrets, size_t ns)
{
    char path[128];
    struct stat st;
    unsigned char *b;
    int fd;

    snprintf(path, sizeof(path), "/dev/shm%s", name);
    assert_true((fd = open(path, O_RDONLY)) >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_non_null(b = malloc((size_t)st.st_size));
    assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    expect_no_secret(path, b, (size_t)st.st_size, secrets, ns);
    free(b);
}

static void test_pgkey_right_and_wrong_passwords_at_once_get_their_own_slots(void **state)
{
    struct herd *h = wlt_shared(sizeof(*h));
    static const char *const secrets[] = {PASSWORD, WRONG};
    struct wl_segment *seg;
    struct wl_slot_info si[8];
    char kr[WL_PG_KEY_MAX], kw[WL_PG_KEY_MAX];
    pid_t pids[NRIGHT + NWRONG];
    int i, n;
    (void)state;
    NEED_PG();
    clean_env();
    snprintf(h->seg, sizeof(h->seg), "%s", wlt_segname());
    snprintf(h->right, sizeof(h->right), "%s password=%s", H.conninfo, PASSWORD);
    snprintf(h->wrong, sizeof(h->wrong), "%s password=%s", H.conninfo, WRONG);
    assert_int_equal(wl_open(h->seg, NULL, &seg), 0);
    for (i = 0; i < NRIGHT + NWRONG; i++)
        pids[i] = wlt_spawn(herd_worker, h, i);
    for (i = 0; i < NRIGHT + NWRONG; i++)
        assert_int_equal(wlt_wait(pids[i], 60000), 0);
    for (i = 0; i < NRIGHT + NWRONG; i++) {
        if (h->rc[i] != (i < NRIGHT ? 0 : -EACCES))
            print_message("%s caller %d: %d %s\n", i < NRIGHT ? "right" : "wrong", i, h->rc[i],
                          h->err[i]);
        assert_int_equal(h->rc[i], i < NRIGHT ? 0 : -EACCES);
    }
    n = wl_snapshot(seg, si, 8);
    assert_int_equal(n, 2);
    slot_key(seg, h->right, kr, sizeof(kr));
    slot_key(seg, h->wrong, kw, sizeof(kw));
    print_message("slots: %s (%s), %s (%s)\n", si[0].key, wl_state_name(si[0].state), si[1].key,
                  wl_state_name(si[1].state));
    for (i = 0; i < n; i++) {
        if (!strcmp(si[i].key, kr))
            assert_int_equal(si[i].state, WL_READY);
        else if (!strcmp(si[i].key, kw))
            assert_int_equal(si[i].state, WL_FAILED);
        else
            fail_msg("a slot of another key: %s", si[i].key);
    }
    wl_close(seg);
    expect_clean_object(h->seg, secrets, 2);
    wl_unlink(h->seg);
}

struct svc_run {
    char seg[64], file[128];
    int rc;
    char err[256];
};

/* A process of its own, with its own PGSERVICEFILE. */
static int svc_worker(void *arg, int i)
{
    struct svc_run *s = (struct svc_run *)arg + i;
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 20000};
    struct wl_result r;
    setenv("PGSERVICEFILE", s->file, 1);
    if (wl_open(s->seg, NULL, &seg) < 0)
        return 90;
    s->rc = wl_pg_ensure(seg, "service=app", &o, &r);
    wl__copy(s->err, sizeof(s->err), r.error);
    wl_close(seg);
    return 0;
}

static void test_pgkey_one_service_name_in_two_files_gets_two_verified_slots(void **state)
{
    struct svc_run *s = wlt_shared(2 * sizeof(*s));
    static const char *const secrets[] = {PASSWORD, PW2};
    const struct pgh *hs[2] = {&H, &H2};
    const char *pws[2] = {PASSWORD, PW2};
    struct wl_segment *seg;
    struct wl_slot_info si[8];
    char text[1024], k[WL_PG_KEY_MAX], port[16];
    long mark[2];
    int i, n;
    (void)state;
    NEED_PG();
    NEED_PG2();
    clean_env();
    for (i = 0; i < 2; i++) {
        snprintf(s[i].seg, sizeof(s[i].seg), "%s", i ? s[0].seg : wlt_segname());
        snprintf(s[i].file, sizeof(s[i].file), "%s/service%d.conf", DIR_, i);
        snprintf(text, sizeof(text),
                 "[app]\nhost=%s\nport=%d\ndbname=postgres\nuser=postgres\n"
                 "password=%s\n",
                 hs[i]->sockdir, hs[i]->port, pws[i]);
        wlt_write_file(s[i].file, 0600, text);
        mark[i] = pgh_log_mark(hs[i]);
    }
    /* one after the other: the second must not be told READY by the first's slot */
    for (i = 0; i < 2; i++) {
        assert_int_equal(wlt_wait(wlt_spawn(svc_worker, s, i), 30000), 0);
        if (s[i].rc)
            print_message("service file %d: %d %s\n", i, s[i].rc, s[i].err);
        assert_int_equal(s[i].rc, 0);
    }
    /* each server saw its own verification */
    for (i = 0; i < 2; i++)
        assert_true(pgh_count_log_since(hs[i], mark[i], "connection authorized") >= 1);
    assert_int_equal(wl_open(s[0].seg, NULL, &seg), 0);
    n = wl_snapshot(seg, si, 8);
    assert_int_equal(n, 2);
    for (i = 0; i < 2; i++) {
        /* each key names its server, not libpq's defaults */
        setenv("PGSERVICEFILE", s[i].file, 1);
        slot_key(seg, "service=app", k, sizeof(k));
        snprintf(port, sizeof(port), ":%d/", hs[i]->port);
        assert_non_null(strstr(k, port));
        assert_non_null(strstr(k, hs[i]->sockdir));
        assert_true(!strcmp(si[0].key, k) || !strcmp(si[1].key, k));
        print_message("service file %d: %s\n", i, k);
    }
    assert_int_equal(si[0].state, WL_READY);
    assert_int_equal(si[1].state, WL_READY);
    clean_env();
    wl_close(seg);
    expect_clean_object(s[0].seg, secrets, 2);
    wl_unlink(s[0].seg);
}

/* A password from the password file or $PGPASSWORD shares the slot of the same password
 * spelled in the conninfo; a wrong one in $PGPASSWORD gets a slot of its own. */
static void test_pgkey_pgpass_and_pgpassword_share_the_conninfo_passwords_slot(void **state)
{
    const char *name = wlt_segname();
    static const char *const secrets[] = {PASSWORD, WRONG};
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 20000, .wait.fail_ttl_ms = 100};
    struct wl_slot_info si[8];
    struct wl_result r;
    char pass[128], line[512], ci[1024];
    int rc;
    (void)state;
    NEED_PG();
    clean_env();
    snprintf(pass, sizeof(pass), "%s/pgpass.server", DIR_);
    snprintf(line, sizeof(line), "%s:%d:postgres:postgres:%s\n", H.sockdir, H.port, PASSWORD);
    wlt_write_file(pass, 0600, line);
    setenv("PGPASSFILE", pass, 1);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    rc = wl_pg_ensure(seg, H.conninfo, &o, &r); /* the file's password */
    if (rc)
        print_message("password file: %d %s\n", rc, r.error);
    assert_int_equal(rc, 0);
    assert_int_equal(r.role, WL_LEADER);
    snprintf(ci, sizeof(ci), "%s password=%s", H.conninfo, PASSWORD);
    rc = wl_pg_ensure(seg, ci, &o, &r); /* the same password: the same, READY slot */
    assert_int_equal(rc, 0);
    assert_int_not_equal(r.role, WL_LEADER);
    setenv("PGPASSWORD", PASSWORD, 1); /* wins over the file, and is the same password */
    rc = wl_pg_ensure(seg, H.conninfo, &o, &r);
    assert_int_equal(rc, 0);
    assert_int_not_equal(r.role, WL_LEADER);
    assert_int_equal(wl_snapshot(seg, si, 8), 1);
    setenv("PGPASSWORD", WRONG, 1);
    rc = wl_pg_ensure(seg, H.conninfo, &o, &r);
    assert_int_equal(rc, -EACCES);
    assert_int_equal(wl_snapshot(seg, si, 8), 2);
    clean_env();
    wl_close(seg);
    expect_clean_object(name, secrets, 2);
    wl_unlink(name);
}

/* ---------------------------------------------------------------- suite */

static int group_setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wlpgkey.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    if ((pg_reason = pgh_unavailable())) {
        pg2_reason = pg_reason;
        return 0;
    }
    if (pgh_init(&H, "scram", PASSWORD, NULL) < 0 || pgh_start(&H, 1) < 0) {
        pg_reason = pg2_reason = "the throwaway PostgreSQL did not start";
        return 0;
    }
    have_pg = 1;
    if (pgh_init(&H2, "scram", PW2, NULL) < 0 || pgh_start(&H2, 1) < 0)
        pg2_reason = "the second throwaway PostgreSQL did not start";
    else
        have_pg2 = 1;
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[160];
    (void)state;
    if (have_pg2)
        pgh_destroy(&H2);
    if (have_pg)
        pgh_destroy(&H);
    if (DIR_[0]) {
        static const char *const files[] = {"pgpass",    "pgpass.server", "svc1.conf",
                                            "svc2.conf", "service0.conf", "service1.conf"};
        for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
            snprintf(cmd, sizeof(cmd), "%s/%s", DIR_, files[i]);
            unlink(cmd);
        }
        rmdir(DIR_);
    }
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pgkey_siphash_matches_the_reference_vectors),
        cmocka_unit_test(test_pgkey_slot_keys_differ_only_by_a_salted_password_digest),
        cmocka_unit_test(test_pgkey_too_long_a_key_is_refused_clearly),
        cmocka_unit_test(test_pgkey_pgpassword_and_pgpass_key_like_a_conninfo_password),
        cmocka_unit_test(test_pgkey_service_is_keyed_on_what_the_service_file_names),
        cmocka_unit_test(test_pgkey_masks_a_password_by_what_libpq_parses),
        cmocka_unit_test(test_pgkey_right_and_wrong_passwords_at_once_get_their_own_slots),
        cmocka_unit_test(test_pgkey_one_service_name_in_two_files_gets_two_verified_slots),
        cmocka_unit_test(test_pgkey_pgpass_and_pgpassword_share_the_conninfo_passwords_slot),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
