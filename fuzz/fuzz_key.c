/*
 * libFuzzer target: the conninfo -> key path (wl_pg_key) and the engine's reading of libpq
 * error messages (wl__pg_sqlstate_of, wl__pg_classify). The input, as a C string, is fed to
 * both.
 *
 * Checked on every input, besides what ASan and UBSan catch:
 * - wl_pg_key returns its length (the key is NUL-terminated there, without control
 *   characters) or -EINVAL/-ENOMEM/-ENAMETOOLONG with a message; a smaller buffer gives
 *   the same key or -ENAMETOOLONG, never a different key;
 * - the password never enters the key: the conninfo's options written back as
 *   key='value' pairs give the same key with the password, with another password and with
 *   none;
 * - nor the error message: with a known password in a URI's user:password@ or a leading
 *   password=, followed by the input, neither the key nor libpq's parser message (which
 *   quotes what it cannot parse) holds it, even truncated;
 * - wl_pg_slot_key gives wl_pg_key's key, or the same error, or -ENAMETOOLONG; a key it
 *   gives is wl_pg_key's, then nothing or "?pw=" / "&pw=" and 8 hex digits; with a known
 *   password in a password position (also ?pass%77ord=, and one holding an '@') the slot
 *   keys of two passwords differ at most in those digits and hold neither;
 * - the SQLSTATE read from a message is "" or five characters [0-9A-Z] that stand after
 *   "FATAL:  ", "ERROR:  " or "PANIC:  " and before a ':' in it;
 * - classification returns one of the codes the engine documents.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "warmlock/pg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define KEYBUF WL_PG_KEY_MAX /* what wl_pg_ensure gives it */
#define SMALL  24

static struct wl_segment *seg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* libpq's environment would make keys depend on the machine; keep runs comparable. */
    static const char *const vars[] = {
        "PGHOST",    "PGHOSTADDR",           "PGPORT",       "PGDATABASE",
        "PGUSER",    "PGPASSWORD",           "PGOPTIONS",    "PGSERVICE",
        "PGSSLMODE", "PGTARGETSESSIONATTRS", "PGSERVICEFILE"};
    const char *name = getenv("WL_FUZZ_SHM");
    char shm[128];
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    /* no password file, no service file: what a service names is not found */
    setenv("PGPASSFILE", "/nonexistent/wl-fuzz/pgpass", 1);
    setenv("PGSERVICEFILE", "/nonexistent/wl-fuzz/pg_service.conf", 1);
    setenv("PGSYSCONFDIR", "/nonexistent/wl-fuzz", 1);
    /* one segment for the slot keys' salt; its name goes at once (the mapping stays) */
    snprintf(shm, sizeof(shm), "%s.key", name && *name ? name : "/wlfuzz.key");
    if (wl_open(shm, NULL, &seg) < 0) {
        fprintf(stderr, "fuzz_key: %s\n", wl_last_error());
        abort();
    }
    wl_unlink(shm);
    return 0;
}

static void die(const char *what, const char *input, const char *a, const char *b)
{
    fprintf(stderr, "fuzz_key: invariant broken: %s\n  input: %s\n  %s\n  %s\n", what, input,
            a ? a : "", b ? b : "");
    abort();
}

/* The key of conninfo into a buffer of exactly len bytes (so ASan sees any overflow). */
static int key_of(const char *conninfo, size_t len, char **out)
{
    char *buf = malloc(len);
    int r;
    if (!buf)
        abort();
    r = wl_pg_key(conninfo, buf, len);
    *out = buf;
    return r;
}

static int slot_key_of(const char *conninfo, size_t len, char **out)
{
    char *buf = malloc(len);
    int r;
    if (!buf)
        abort();
    r = wl_pg_slot_key(seg, conninfo, buf, len);
    *out = buf;
    return r;
}

/* The length of key without a trailing "?pw=" or "&pw=" and 8 hex digits. */
static size_t without_digest(const char *key)
{
    size_t n = strlen(key);
    if (n < 12 || (key[n - 12] != '?' && key[n - 12] != '&') || strncmp(key + n - 11, "pw=", 3))
        return n;
    for (size_t i = n - 8; i < n; i++)
        if (!((key[i] >= '0' && key[i] <= '9') || (key[i] >= 'a' && key[i] <= 'f')))
            return n;
    return n - 12;
}

/* wl_pg_slot_key against wl_pg_key. */
static void check_slot_key(const char *in, int r, const char *key)
{
    char *sk;
    int rs = slot_key_of(in, KEYBUF, &sk);

    if (r < 0 && rs != r && rs != -ENOMEM)
        die("wl_pg_slot_key failed otherwise than wl_pg_key", in, key, sk);
    if (r >= 0 && rs < 0 && rs != -ENAMETOOLONG && rs != -ENOMEM && rs != -EINVAL)
        die("wl_pg_slot_key returned an undocumented code", in, key, sk);
    if (r >= 0 && rs >= 0) {
        size_t n = without_digest(sk);
        if ((size_t)rs != strlen(sk))
            die("wl_pg_slot_key's length is not the key's", in, sk, NULL);
        if (n != (size_t)r || strncmp(sk, key, n) != 0)
            die("the slot key is not wl_pg_key's key and a digest", in, key, sk);
        if (n != strlen(sk) && sk[n] != (strchr(key, '?') ? '&' : '?'))
            die("the digest's separator", in, key, sk);
    }
    free(sk);
}

/* Append s to a growing string. */
static void app(char **s, size_t *n, size_t *cap, const char *t, size_t tl)
{
    if (*n + tl + 1 > *cap) {
        *cap = (*n + tl + 1) * 2;
        if (!(*s = realloc(*s, *cap)))
            abort();
    }
    memcpy(*s + *n, t, tl);
    *n += tl;
    (*s)[*n] = '\0';
}

/* The parsed options as key='value' pairs, the password replaced by pw (NULL: left out). */
static char *rebuild(const PQconninfoOption *opts, const char *pw)
{
    char *s = NULL;
    size_t n = 0, cap = 0;
    app(&s, &n, &cap, "", 0);
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (!strcmp(o->keyword, "password"))
            v = pw;
        if (!v)
            continue;
        app(&s, &n, &cap, o->keyword, strlen(o->keyword));
        app(&s, &n, &cap, "='", 2);
        for (; *v; v++) {
            if (*v == '\'' || *v == '\\')
                app(&s, &n, &cap, "\\", 1);
            app(&s, &n, &cap, v, 1);
        }
        app(&s, &n, &cap, "' ", 2);
    }
    return s;
}

static void check_key(const char *in)
{
    char *key, *small, *k2;
    PQconninfoOption *opts;
    char *perr = NULL;
    int r, rs, i;

    r = key_of(in, KEYBUF, &key);
    if (r >= 0) {
        if ((size_t)r != strlen(key) || (size_t)r >= KEYBUF)
            die("wl_pg_key's length is not the key's", in, key, NULL);
        for (i = 0; i < r; i++)
            if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f)
                die("a control character in the key", in, key, NULL);
    } else if (r != -EINVAL && r != -ENOMEM && r != -ENAMETOOLONG) {
        die("wl_pg_key returned an undocumented code", in, key, NULL);
    } else if (!key[0] || strlen(key) >= KEYBUF) {
        die("wl_pg_key failed without a message", in, NULL, NULL);
    }

    check_slot_key(in, r, key);
    rs = key_of(in, SMALL, &small);
    if (r >= 0 && rs >= 0 && (rs != r || strcmp(small, key) != 0))
        die("a smaller buffer gave another key", in, key, small);
    if (r >= 0 && r < SMALL && rs != r)
        die("a key that fits failed in the smaller buffer", in, key, small);
    if (r >= SMALL && rs != -ENAMETOOLONG)
        die("a key that does not fit was not -ENAMETOOLONG", in, key, small);
    if (r == -EINVAL && rs != -EINVAL)
        die("bad conninfo was not -EINVAL in the smaller buffer", in, key, small);
    free(small);

    /* The password never enters the key. */
    if (r >= 0 && (opts = PQconninfoParse(in, &perr))) {
        static const char *const pws[] = {NULL, "", "Tr0ub4dor&3 'x' \\y", "%40"};
        for (size_t p = 0; p < sizeof(pws) / sizeof(pws[0]); p++) {
            char *ci = rebuild(opts, pws[p]);
            int r2 = key_of(ci, KEYBUF, &k2);
            if (r2 != r || strcmp(k2, key) != 0)
                die("the password changed the key", in, key, k2);
            free(k2);
            free(ci);
        }
        PQconninfoFree(opts);
    }
    PQfreemem(perr);
    free(key);
}

/* A password in a password position, the fuzzer's bytes after it: the key, or the error
 * message (libpq quotes what it cannot parse), must not depend on the password. Two
 * passwords of one length must give byte-identical results, whole and truncated (a
 * substring search would not do: the fuzzer assembles any needle from the key's
 * percent-encoding). */
#define SECRET_A "Fz9q-s3cr3t-K7"
#define SECRET_B "Jw2x-p4ssw0-M1"
/* With an '@' (raw in a URI, libpq ends user:password@ at it): the tail is "cr3t-K7". */
#define SECRET_AT_A "Fz9q-s3@cr3t-K7"
#define SECRET_AT_B "Jw2x-p4@ssw0-M1"

/* The slot keys of a and b (which differ in their password only) differ at most in the
 * digest: byte-identical otherwise, so they hold no piece of either password. */
static void check_slot_keys(const char *a, const char *b)
{
    char *ka, *kb;
    int ra = slot_key_of(a, KEYBUF, &ka), rb = slot_key_of(b, KEYBUF, &kb);
    if (ra != rb && !(ra >= 0 && rb >= 0))
        die("the slot key's outcome depends on the password", a, ka, kb);
    if (ra < 0 && strcmp(ka, kb) != 0)
        die("wl_pg_slot_key's message depends on the password", a, ka, kb);
    if (ra >= 0 &&
        (without_digest(ka) != without_digest(kb) || strncmp(ka, kb, without_digest(ka)) != 0))
        die("the slot key depends on the password beyond its digest", a, ka, kb);
    free(ka);
    free(kb);
}

static void check_no_secret(const char *in)
{
    static const char *const fmts[] = {"postgresql://u:%s@%s", "postgres://:%s@%s",
                                       "password=%s %s", "postgresql://h/d?pass%%77ord=%s&%s",
                                       "postgresql://[::1]x/d?pass%%77ord=%s%s"};
    static const char *const pairs[][2] = {{SECRET_A, SECRET_B}, {SECRET_AT_A, SECRET_AT_B}};
    static const size_t lens[] = {KEYBUF, SMALL};
    size_t n = strlen(in) + 96;
    char *a = malloc(n), *b = malloc(n), *ka, *kb;
    int ra, rb;

    if (!a || !b)
        abort();
    /* an input that spells a password itself would be masked in one run and not the other */
    if (!strstr(in, "Fz9q") && !strstr(in, "Jw2x") && !strstr(in, "cr3t-K7") &&
        !strstr(in, "ssw0-M1")) {
        for (size_t p = 0; p < sizeof(pairs) / sizeof(pairs[0]); p++) {
            for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
                snprintf(a, n, fmts[i], pairs[p][0], in);
                snprintf(b, n, fmts[i], pairs[p][1], in);
                for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                    ra = key_of(a, lens[l], &ka);
                    rb = key_of(b, lens[l], &kb);
                    if (ra != rb || strcmp(ka, kb) != 0)
                        die(ra < 0 ? "the error message depends on the password"
                                   : "the key depends on the password",
                            a, ka, kb);
                    free(ka);
                    free(kb);
                }
                check_slot_keys(a, b);
            }
        }
    }
    free(a);
    free(b);
}

static void check_sqlstate(const char *in)
{
    static const char *const sev[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    char st[6], needle[16];
    int found = 0, refused, c;

    memset(st, 'x', sizeof(st));
    wl__pg_sqlstate_of(in, st);
    if (st[0]) {
        if (strlen(st) != 5)
            die("a SQLSTATE that is not five characters", in, st, NULL);
        for (int i = 0; i < 5; i++)
            if (!((st[i] >= '0' && st[i] <= '9') || (st[i] >= 'A' && st[i] <= 'Z')))
                die("a SQLSTATE with a character outside [0-9A-Z]", in, st, NULL);
        for (size_t i = 0; i < sizeof(sev) / sizeof(sev[0]); i++) {
            snprintf(needle, sizeof(needle), "%s%s:", sev[i], st);
            found |= strstr(in, needle) != NULL;
        }
        if (!found)
            die("a SQLSTATE that is not in the message", in, st, NULL);
    }
    for (int connecting = 0; connecting < 2; connecting++) {
        c = wl__pg_classify(st, in, connecting, &refused);
        if (c != 0 && c != -ENOENT && c != -EACCES && c != -EINVAL && c != -EIO)
            die("classification gave an undocumented code", in, st, NULL);
        if (refused && (c != 0 || st[0] || !connecting))
            die("'refused' on a failure that is not a refused connection", in, st, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (!in)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    check_key(in);
    check_no_secret(in);
    check_sqlstate(in);
    free(in);
    return 0;
}
