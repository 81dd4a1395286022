/*
 * Secrets: a password in a conninfo never reaches the shared segment, the CLI's output
 * (status, status --json, metrics, wait's errors) or warmlockd's log. Against a real
 * PostgreSQL with scram-sha-256: a successful warm-up, a wrong password (whose failure is
 * published in the slot), a malformed conninfo (whose parser message libpq builds by
 * quoting the conninfo), then every byte of the object in /dev/shm and every byte the
 * programs print is searched for the passwords.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

/* Distinctive, so that finding one can only mean a leak. */
#define PASSWORD  "Zq7vK-s3cr3t-9f2e"
#define WRONG     "Wx4rT-wr0ng-b81c"
#define DAEMON_MS 3500u

static struct pgh H;
static int have_pg;
static const char *pg_reason;
static char DIR_[64];
static char CI[1024];        /* right password, key=value */
static char CI_URI[1024];    /* right password, URI (same key) */
static char BAD[1024];       /* wrong password, key=value */
static char BAD_TCP[1024];   /* wrong password over TCP (another key) */
static char MALFORMED[1024]; /* a URI libpq cannot parse, with the right password */
/* libpq percent-decodes URI query keywords: pass%77ord is password */
static char ENCODED_KW[1024];  /* ...?pass%77ord=PASSWORD in a URI libpq cannot parse */
static char ENCODED_TOK[1024]; /* ...?pass%77ord=PASSWORD%zz: "invalid percent-encoded token" */
static char AT_IN_PW[1024];    /* user:pass@word@host: the tail would become the host */
static char KEY[1024];

static const char *const secrets[] = {PASSWORD, WRONG};

/* Fail if buf (len bytes, any content) holds a password, or a long piece of one. */
static void expect_no_secret(const char *what, const void *buf, size_t len)
{
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
        size_t sl = strlen(secrets[i]);
        /* the whole password, and its first and last 8 bytes */
        const struct {
            size_t off, n;
        } parts[] = {{0, sl}, {0, 8}, {sl - 8, 8}};
        for (size_t k = 0; k < sizeof(parts) / sizeof(parts[0]); k++) {
            const char *hit = memmem(buf, len, secrets[i] + parts[k].off, parts[k].n);
            if (hit) {
                size_t at = (size_t)(hit - (const char *)buf);
                fail_msg("%s holds a password's bytes (%.*s) at offset %zu: ...%.*s...", what,
                         (int)parts[k].n, secrets[i] + parts[k].off, at,
                         (int)(len - at < 80 ? len - at : 80), hit);
            }
        }
    }
}

/* ---------------------------------------------------------------- processes */

/* Run a program to completion (bounded), capturing its output (wlt_run_v). */
#define RUN(r, timeout, ...) WLT_RUN((r), DIR_, (timeout), __VA_ARGS__)

/* A run's stdout and stderr must hold no password. */
static void expect_clean_run(const char *what, const struct wlt_run *r)
{
    char label[160];
    snprintf(label, sizeof(label), "the stdout of %s", what);
    expect_no_secret(label, r->out, strlen(r->out));
    snprintf(label, sizeof(label), "the stderr of %s", what);
    expect_no_secret(label, r->err, strlen(r->err));
}

/* ---------------------------------------------------------------- the segment */

/* Through the library: a wrong password (FAILED, with the server's message), then the
 * right one (READY), in both spellings, then a malformed conninfo. */
static void populate(const char *name)
{
    struct wl_pg_opts o;
    struct wl_segment *seg;
    struct wl_result r;
    int rc;

    memset(&o, 0, sizeof(o));
    o.wait.timeout_ms = 15000;
    o.wait.fail_ttl_ms = 100;
    assert_int_equal(wl_open(name, NULL, &seg), 0);

    rc = wl_pg_ensure(seg, BAD, &o, &r);
    print_message("wrong password: %d %s [%s]\n", rc, r.error, r.sqlstate);
    assert_int_equal(rc, -EACCES);
    assert_string_equal(r.sqlstate, "28P01");
    expect_no_secret("the wrong-password caller's wl_result.error", r.error, sizeof(r.error));

    /* a follower that arrives while the failure is served gets the published message */
    rc = wl_pg_ensure(seg, CI, &o, &r);
    if (rc == -EACCES)
        expect_no_secret("a follower's copy of the published failure", r.error, sizeof(r.error));
    wlt_sleep_ms(150); /* past fail_ttl_ms */
    rc = wl_pg_ensure(seg, CI, &o, &r);
    if (rc != 0)
        fail_msg("right password: %d %s", rc, r.error);
    rc = wl_pg_ensure(seg, CI_URI, &o, &r);
    if (rc != 0)
        fail_msg("right password, URI: %d %s", rc, r.error);

    /* over TCP, wrong password: a second slot, left FAILED */
    rc = wl_pg_ensure(seg, BAD_TCP, &o, &r);
    assert_int_equal(rc, -EACCES);
    expect_no_secret("wl_result.error (TCP, wrong password)", r.error, sizeof(r.error));

    /* libpq's message about a malformed URI quotes the URI */
    rc = wl_pg_ensure(seg, MALFORMED, &o, &r);
    print_message("malformed: %d %s\n", rc, r.error);
    assert_int_equal(rc, -EINVAL);
    expect_no_secret("wl_result.error of a malformed conninfo", r.error, sizeof(r.error));
    PGconn *c = wl_pg_connect(seg, MALFORMED, &o, &r);
    assert_null(c);
    expect_no_secret("wl_pg_connect's error for a malformed conninfo", r.error, sizeof(r.error));

    /* masked by what libpq parses, not by spelling; a host holding a password's tail is
     * refused, so it is never kept in a key */
    {
        const char *const odd[] = {ENCODED_KW, ENCODED_TOK, AT_IN_PW};
        for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
            rc = wl_pg_ensure(seg, odd[i], &o, &r);
            print_message("odd conninfo %zu: %d %s\n", i, rc, r.error);
            assert_int_equal(rc, -EINVAL);
            expect_no_secret("wl_result.error of an odd conninfo", r.error, sizeof(r.error));
        }
    }
    wl_close(seg);
}

/* Every byte of the object. */
static void expect_clean_object(const char *name)
{
    char path[128];
    struct stat st;
    unsigned char *b;
    int fd;

    snprintf(path, sizeof(path), "/dev/shm%s", name);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(fstat(fd, &st), 0);
    assert_true(st.st_size > 0);
    b = malloc((size_t)st.st_size);
    assert_non_null(b);
    assert_int_equal(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    /* we are looking at the right object: the key is there */
    assert_non_null(memmem(b, (size_t)st.st_size, KEY, strlen(KEY)));
    expect_no_secret(path, b, (size_t)st.st_size);
    print_message("%s: %lld bytes, no password\n", path, (long long)st.st_size);
    free(b);
}

static void test_secrets_never_reach_the_segment(void **state)
{
    const char *name;
    (void)state;
    NEED_PG();
    name = wlt_segname();
    populate(name);
    expect_clean_object(name);
    wl_unlink(name);
}

/* ---------------------------------------------------------------- the CLI */

static void test_secrets_never_reach_status_metrics_or_cli_errors(void **state)
{
    char name[64];
    struct wlt_run *r = calloc(1, sizeof(*r));
    (void)state;
    NEED_PG();
    assert_non_null(r);
    snprintf(name, sizeof(name), "%s", wlt_segname());
    populate(name);

    RUN(r, 10000, WL_WARMLOCK, "--shm", name, "status");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "ready"));
    expect_clean_run("warmlock status", r);

    RUN(r, 10000, WL_WARMLOCK, "--shm", name, "status", "--json");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "\"slots\""));
    assert_non_null(strstr(r->out, "28P01")); /* the TCP slot's published failure */
    assert_non_null(strstr(r->out, "?pw=")); /* a key carries a password digest */
    expect_clean_run("warmlock status --json", r);

    RUN(r, 10000, WL_WARMLOCK, "--shm", name, "metrics");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "# TYPE"));
    expect_clean_run("warmlock metrics", r);

    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", CI);
    assert_int_equal(r->status, 0);
    expect_clean_run("warmlock wait (right password)", r);

    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", BAD_TCP);
    assert_int_equal(r->status, 1);
    assert_true(r->err[0] != '\0');
    expect_clean_run("warmlock wait (wrong password)", r);

    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", MALFORMED);
    print_message("warmlock wait MALFORMED: %d %s", r->status, r->err);
    assert_int_equal(r->status, 1);
    expect_clean_run("warmlock wait (malformed conninfo)", r);

    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", ENCODED_KW);
    assert_int_equal(r->status, 1);
    expect_clean_run("warmlock wait (?pass%77ord= in a malformed URI)", r);
    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", ENCODED_TOK);
    assert_int_equal(r->status, 1);
    expect_clean_run("warmlock wait (an invalid percent-encoded token in ?pass%77ord=)", r);
    RUN(r, 20000, WL_WARMLOCK, "--shm", name, "wait", "--timeout", "10", AT_IN_PW);
    assert_int_equal(r->status, 1);
    expect_clean_run("warmlock wait (an '@' in a URI's password)", r);

    RUN(r, 10000, WL_WARMLOCK, "--shm", name, "invalidate", CI);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "invalidated"));
    expect_clean_run("warmlock invalidate", r);

    expect_clean_object(name);
    wl_unlink(name);
    free(r);
}

/* ---------------------------------------------------------------- warmlockd */

/* Poll file `path` (into log) until it holds every string of `needles` (NULL-terminated) or
 * is longer than `longer_than`; bounded by timeout_ms. */
static void wait_log(const char *path, char *log, size_t loglen, const char *const *needles,
                     size_t longer_than, unsigned timeout_ms)
{
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (wlt_now_ns() < end) {
        size_t n = wlt_slurp(path, log, loglen), i = 0;
        while (needles && needles[i] && strstr(log, needles[i]))
            i++;
        if (needles ? !needles[i] : n > longer_than)
            return;
        wlt_sleep_ms(10);
    }
}

/* Run warmlockd until its log shows what the test needs (the ready target and the wrong
 * password's failure; bounded by DAEMON_MS each step), SIGHUP it and wait for the reload's
 * lines, then SIGTERM; its stderr into log. Returns its exit status. */
static int daemon_run(char *const argv[], char *log, size_t loglen)
{
    static const char *const want[] = {"ready", "28P01", NULL};
    char out[128], err[128];
    pid_t pid;
    int st;

    snprintf(out, sizeof(out), "%s/warmlockd.out", DIR_);
    snprintf(err, sizeof(err), "%s/warmlockd.err", DIR_);
    pid = wlt_spawn_exec(argv, out, err, -1);
    wait_log(err, log, loglen, want, 0, 5 * DAEMON_MS);
    size_t before = wlt_slurp(err, log, loglen);
    kill(pid, SIGHUP); /* reload: the config file's targets are read (and logged) again */
    wait_log(err, log, loglen, NULL, before, 5 * DAEMON_MS);
    kill(pid, SIGTERM);
    st = wlt_wait(pid, 10000);
    wlt_slurp(err, log, loglen);
    unlink(out);
    unlink(err);
    return st;
}

static void test_secrets_never_reach_warmlockd_logs(void **state)
{
    char name[64], cfg[128], log[65536];
    FILE *f;
    int st;
    (void)state;
    NEED_PG();
    snprintf(name, sizeof(name), "%s", wlt_segname());
    snprintf(cfg, sizeof(cfg), "%s/targets.conf", DIR_);
    assert_non_null(f = fopen(cfg, "w"));
    fprintf(f, "# targets with passwords\n%s\n%s\n", CI_URI, BAD_TCP);
    fclose(f);
    chmod(cfg, 0600);

    char *const argv[] = {(char *)WL_WARMLOCKD,
                          (char *)"--foreground",
                          (char *)"--interval",
                          (char *)"1",
                          (char *)"--shm",
                          name,
                          (char *)"--target",
                          CI,
                          (char *)"--config",
                          cfg,
                          NULL};
    st = daemon_run(argv, log, sizeof(log));
    print_message("warmlockd (exit %d) logged:\n%s%s", st, log,
                  log[0] && log[strlen(log) - 1] != '\n' ? "\n" : "");
    assert_int_equal(st, 0);
    assert_non_null(strstr(log, "ready"));
    assert_non_null(strstr(log, "28P01")); /* the wrong password's failure was logged */
    expect_no_secret("warmlockd's log", log, strlen(log));
    expect_clean_object(name);
    wl_unlink(name);

    /* a target libpq cannot parse: skipped with a message saying why, without the URI's
     * password (warmlockd keeps running; it is stopped after 1.5 s) */
    snprintf(name, sizeof(name), "%s", wlt_segname());
    struct wlt_run *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    RUN(r, 1500, WL_WARMLOCKD, "--foreground", "--shm", name, "--target", MALFORMED, "--target",
        ENCODED_KW, "--target", ENCODED_TOK, "--target", AT_IN_PW, "--target", CI);
    print_message("warmlockd --target MALFORMED: status %d: %s", r->status, r->err);
    assert_int_not_equal(r->status, 127);
    assert_non_null(strstr(r->err, "invalid conninfo"));
    expect_clean_run("warmlockd with a malformed target", r);
    wl_unlink(name);
    free(r);
}

/* ---------------------------------------------------------------- suite */

static int group_setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wlsecrets.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        return 0;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    snprintf(CI_URI, sizeof(CI_URI), "postgresql://postgres:%s@/postgres?host=%s&port=%d", PASSWORD,
             H.sockdir, H.port);
    snprintf(BAD, sizeof(BAD), "%s password=%s", H.conninfo, WRONG);
    snprintf(BAD_TCP, sizeof(BAD_TCP), "%s password='%s'", H.tcp_conninfo, WRONG);
    /* an unterminated IPv6 literal: libpq's message quotes the whole URI */
    snprintf(MALFORMED, sizeof(MALFORMED), "postgresql://postgres:%s@[::1/postgres", PASSWORD);
    snprintf(ENCODED_KW, sizeof(ENCODED_KW), "postgresql://[::1]x/postgres?pass%%77ord=%s",
             PASSWORD);
    snprintf(ENCODED_TOK, sizeof(ENCODED_TOK), "postgresql://[::1]/postgres?pass%%77ord=%s%%zz",
             PASSWORD);
    /* PASSWORD with an '@' after its first 8 bytes: the tail holds its last 8 */
    snprintf(AT_IN_PW, sizeof(AT_IN_PW), "postgresql://postgres:%.8s@%s@localhost:1/postgres",
             PASSWORD, PASSWORD + 8);
    if (wl_pg_key(CI, KEY, sizeof(KEY)) < 0) {
        pg_reason = "wl_pg_key failed on the harness's conninfo";
        return 0;
    }
    have_pg = 1;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (have_pg)
        pgh_destroy(&H);
    if (DIR_[0])
        rmdir(DIR_);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_secrets_never_reach_the_segment),
        cmocka_unit_test(test_secrets_never_reach_status_metrics_or_cli_errors),
        cmocka_unit_test(test_secrets_never_reach_warmlockd_logs),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
