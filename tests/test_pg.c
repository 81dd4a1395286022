/* The libpq engine against a real PostgreSQL (the harness's throwaway server, scram auth):
 * the probe on both backends (WARMLOCK_IO=uring and poll) through clean starts, late
 * starts, crash recovery (57P03), wrong passwords, missing databases, bad conninfo, servers
 * that never come up or never answer, and failing warm_sql; the failure table; the
 * canonical key; then wl_pg_ensure / wl_pg_connect with real forked processes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/engine.h"
#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define MS       1000000ull
#define PASSWORD "s3cret-Pa55"

WLT_PG_SUITE
static char CI[1024];     /* H.conninfo with the password */
static char BAD_PW[1024]; /* ... with a wrong one */

static int group_setup(void **state)
{
    (void)state;
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        return 0;
    have_pg = 1;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    snprintf(BAD_PW, sizeof(BAD_PW), "%s password=wrong-%s", H.conninfo, "pw");
    return 0;
}

/* How a test reaches the engine: its prestate says "uring" or "poll" (the engine alone on
 * that backend, wlt_backend), or "target" (a prepared target on a fresh segment, as a
 * leader: what wl_pg_target_ensure returns must be what the engine did). The wl_pg_ensure
 * tests run with "call" (wl_pg_ensure, wl_pg_connect) and "target" (the same through a
 * prepared target opened for each call). */
static int via_target(void **state)
{
    const char *m = *state ? (const char *)*state : "";
    if (!strcmp(m, "target") || !strcmp(m, "call")) {
        print_message("through: %s\n", m);
        unsetenv("WARMLOCK_IO");
        return !strcmp(m, "target");
    }
    wlt_backend(state);
    return 0;
}
static int use_target;

#define WLT_ALL(fn) WLT_BOTH(fn), cmocka_unit_test_prestate(fn, (void *)"target")
#define WLT_CALLS(fn)                                                                              \
    cmocka_unit_test_prestate(fn, (void *)"call"), cmocka_unit_test_prestate(fn, (void *)"target")

static int target_ensure(struct wl_segment *seg, const char *conninfo,
                         const struct wl_pg_opts *o, struct wl_result *r)
{
    struct wl_pg_target *t;
    int rc = wl_pg_target_open(seg, conninfo, o, &t);
    if (rc < 0) {
        memset(r, 0, sizeof(*r));
        snprintf(r->error, sizeof(r->error), "%s", wl_last_error());
        return rc;
    }
    rc = wl_pg_target_ensure(t, r);
    wl_pg_target_close(t);
    return rc;
}

static int pg_ensure(struct wl_segment *seg, const char *conninfo, const struct wl_pg_opts *o,
                     struct wl_result *r)
{
    return use_target ? target_ensure(seg, conninfo, o, r) : wl_pg_ensure(seg, conninfo, o, r);
}

static PGconn *pg_connect(struct wl_segment *seg, const char *conninfo,
                          const struct wl_pg_opts *o, struct wl_result *r)
{
    struct wl_pg_target *t;
    PGconn *c;
    if (!use_target)
        return wl_pg_connect(seg, conninfo, o, r);
    if (wl_pg_target_open(seg, conninfo, o, &t) < 0) {
        memset(r, 0, sizeof(*r));
        snprintf(r->error, sizeof(r->error), "%s", wl_last_error());
        return NULL;
    }
    c = wl_pg_target_connect(t, r);
    wl_pg_target_close(t);
    return c;
}

static int probe(const char *conninfo, const struct wl_pg_opts *o, struct wl_result *r,
                 uint64_t *ms)
{
    /* Without opts of the test's own: the defaults, but an attempt may take as long as a
     * slow machine (valgrind, a loaded CI host) needs for a login, so that a test counting
     * attempts counts the server's answers, not the machine's speed. */
    static const struct wl_pg_opts slow_ok = {.attempt_timeout_ms = 60000};
    uint64_t t0 = wl__now_ns();
    int rc;
    if (!o)
        o = &slow_ok;
    memset(r, 0, sizeof(*r));
    if (use_target) {
        struct wl_segment *seg;
        const char *name = wlt_segname();
        assert_int_equal(wl_open(name, NULL, &seg), 0);
        rc = target_ensure(seg, conninfo, o, r);
        if (rc != -EINVAL && r->role != WL_LEADER)
            print_message("rc=%d role=%d error='%s'\n", rc, r->role, r->error);
        if (rc != -EINVAL)
            assert_int_equal(r->role, WL_LEADER);
        wl_close(seg);
        wl_unlink(name);
    } else {
        rc = wl__pg_probe(conninfo, o, 0, r);
    }
    if (ms)
        *ms = (wl__now_ns() - t0) / MS;
    print_message("rc=%d (%s) attempts=%u sqlstate='%s' error='%s'\n", rc,
                  rc ? wl_strerror(rc) : "ok", r->attempts, r->sqlstate, r->error);
    return rc;
}

/* ---------------------------------------------------------------- engine */

static void test_pg_probe_succeeds_with_one_connection(void **state)
{
    struct wl_result r;
    long mark;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    mark = pgh_log_mark(&H);
    assert_int_equal(probe(CI, NULL, &r, NULL), 0);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.sqlstate, "");
    assert_string_equal(r.error, "");
    /* one connection: warm-up and verification share it */
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 1);
}

struct later {
    unsigned ms;
    int rc;
};

static void *start_later(void *arg)
{
    struct later *l = arg;
    wlt_sleep_ms(l->ms);
    l->rc = pgh_start(&H, 0);
    return NULL;
}

static void test_pg_probe_retries_until_a_late_server_starts(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 15000};
    struct later l = {500, -1};
    struct wl_result r;
    pthread_t th;
    uint64_t ms;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pthread_create(&th, NULL, start_later, &l), 0);
    assert_int_equal(probe(CI, &o, &r, &ms), 0);
    pthread_join(th, NULL);
    assert_int_equal(l.rc, 0);
    print_message("ready after %llu ms, %u attempts\n", (unsigned long long)ms, r.attempts);
    assert_true(ms >= 500);
    assert_true(ms < 10000);
    assert_true(r.attempts > 1);
    assert_string_equal(r.sqlstate, ""); /* success clears the last failure */
}

/* Release a held server once `n` connections after `mark` were refused with 57P03 (or after
 * 20 s, so that the caller is not left hanging; rc says which). */
struct release {
    long mark;
    int n;
    int rc;
};

static void *release_after_57P03(void *arg)
{
    struct release *rl = arg;
    int waited = pgh_wait_57P03_since(&H, rl->mark, rl->n, 20000);
    rl->rc = pgh_release(&H, 0) == 0 ? waited : -1;
    return NULL;
}

static void test_pg_probe_rides_out_crash_recovery_57P03(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 30000};
    pthread_t th;
    struct wl_result r;
    uint64_t ms, done_ms, ready_ms;
    long mark;
    int n57;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(pgh_crash(&H), 0);
    mark = pgh_log_mark(&H);
    /* held in recovery until the prober has been refused twice, however fast replay is */
    assert_int_equal(pgh_start_held(&H), 0);
    struct release rl = {mark, 2, -1};
    assert_int_equal(pthread_create(&th, NULL, release_after_57P03, &rl), 0);
    assert_int_equal(probe(CI, &o, &r, &ms), 0);
    done_ms = wl__realtime_ms();
    pthread_join(th, NULL);
    assert_int_equal(rl.rc, 0);
    n57 = pgh_count_log_57P03_since(&H, mark);
    ready_ms = (uint64_t)(pgh_log_ready_realtime_ns(&H, mark) / 1000000);
    print_message("crash-recovery start: ready after %llu ms, %u attempts, server sent %d "
                  "57P03 rejections; verified %lld ms after the server logged ready\n",
                  (unsigned long long)ms, r.attempts, n57,
                  (long long)done_ms - (long long)ready_ms);
    /* the leader probes fast: it trails the server's own readiness by about one capped
     * delay (250 ms) plus a connection; the bound is generous (valgrind on a loaded machine
     * once took 1039 ms) */
    if (ready_ms) {
        assert_true(done_ms + 5 >= ready_ms);
        assert_true(done_ms - ready_ms < 5000);
    } else {
        print_message("lag not measured: the server log has no UTC timestamps\n");
    }
    assert_true(n57 >= 1); /* it really was rejected with 57P03, and retried */
    assert_true(r.attempts >= (unsigned)n57);
    assert_int_equal(pgh_wait_ready(&H, 30000), 0);
}

/* A single attempt while the server replays WAL: the connection error's SQLSTATE is read
 * from libpq's verbose message, and 57P03 is classified as retryable. */
static void test_pg_connect_error_during_recovery_reads_sqlstate_57P03(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 5000, .backoff.max_attempts = 1};
    struct wl_result r;
    char st[6] = "";
    int i, refused, rc = 1;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    /* held in recovery for as long as the attempt takes: the amount of WAL does not matter */
    assert_int_equal(pgh_crash_rows(&H, 10000), 0);
    assert_int_equal(pgh_start_held(&H), 0);
    /* wait (raw protocol, not libpq) until the server answers 57P03 */
    for (i = 0; i < 2000; i++) {
        if (pgh_probe(&H, 0, st, 200) == PGH_PROBE_REJECTED && !strcmp(st, "57P03"))
            break;
        wlt_sleep_ms(2);
    }
    if (strcmp(st, "57P03") != 0) {
        print_message("the server never answered 57P03 (recovery too fast here)\n");
        fail();
    }
    rc = probe(CI, &o, &r, NULL);
    assert_int_equal(rc, -ETIMEDOUT); /* max_attempts ran out on a retryable error */
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.sqlstate, "57P03");
    /* "starting up", "not yet accepting connections" once past the redo start, or, held as
     * a standby without hot standby, "not accepting connections" */
    assert_true(strstr(r.error, "starting up") || strstr(r.error, "not yet accepting") ||
                strstr(r.error, "not accepting connections"));
    assert_non_null(strstr(r.error, "1 attempt"));
    assert_int_equal(wl__pg_classify(r.sqlstate, r.error, 1, &refused), 0);
    assert_int_equal(refused, 0);
    assert_int_equal(pgh_release(&H, 1), 0);
    assert_int_equal(pgh_wait_ready(&H, 30000), 0);
}

static void test_pg_probe_wrong_password_fails_fast_with_28P01(void **state)
{
    struct wl_result r;
    uint64_t ms;
    long mark;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    mark = pgh_log_mark(&H);
    assert_int_equal(probe(BAD_PW, NULL, &r, &ms), -EACCES);
    assert_int_equal(r.attempts, 1);
    assert_true(ms < 1000);
    assert_string_equal(r.sqlstate, "28P01");
    assert_non_null(strstr(r.error, "password authentication failed"));
    assert_null(strstr(r.error, "wrong-pw"));
    assert_null(strstr(r.error, "password=")); /* the conninfo is never echoed */
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 1);
}

static void test_pg_probe_missing_database_is_enoent(void **state)
{
    char ci[1200];
    struct wl_result r;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    snprintf(ci, sizeof(ci), "%s dbname=no_such_db", CI);
    assert_int_equal(probe(ci, NULL, &r, NULL), -ENOENT);
    assert_int_equal(r.attempts, 1);
    assert_string_equal(r.sqlstate, "3D000");
    assert_non_null(strstr(r.error, "no_such_db"));
}

static void test_pg_probe_bad_conninfo_is_einval_without_server_contact(void **state)
{
    static const char *const bad[] = {"this is not a conninfo", "nosuchkeyword=1",
                                      "postgresql://[::1", "sslmode=bogus",
                                      "target_session_attrs=whatever"};
    char ci[1200];
    struct wl_result r;
    long mark;
    size_t i;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    mark = pgh_log_mark(&H);
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(ci, sizeof(ci), "%s %s", CI, bad[i]);
        if (strchr(bad[i], ' ') || !strchr(bad[i], '=') || strstr(bad[i], "://"))
            snprintf(ci, sizeof(ci), "%s", bad[i]);
        assert_int_equal(probe(ci, NULL, &r, NULL), -EINVAL);
        assert_int_equal(r.attempts, 0);
        assert_non_null(strstr(r.error, "invalid"));
        assert_null(strstr(r.error, PASSWORD));
    }
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 0);
}

static void test_pg_probe_never_up_times_out_at_the_deadline(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 800};
    char ci[300], dir[64];
    struct wl_result r;
    uint64_t ms;
    use_target = via_target(state);
    snprintf(dir, sizeof(dir), "/tmp/wltest-nosock.%d", (int)getpid());
    snprintf(ci, sizeof(ci), "host=%s port=5432 dbname=x user=x password=%s", dir, PASSWORD);
    assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
    print_message("gave up after %llu ms\n", (unsigned long long)ms);
    assert_true(ms >= 800 - 100 && ms <= 800 + 1000); /* generous above: a loaded machine */
    assert_true(r.attempts >= 3);
    assert_non_null(strstr(r.error, "deadline passed after"));
    assert_non_null(strstr(r.error, "attempts over"));
    assert_non_null(strstr(r.error, "No such file or directory"));
    assert_null(strstr(r.error, PASSWORD));
    assert_string_equal(r.sqlstate, "");
}

static int free_tcp_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    port = ntohs(a.sin_port);
    close(fd); /* nobody listens there now: connection refused */
    return port;
}

static void test_pg_probe_refused_until_attempts_run_out_is_econnrefused(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 5000, .backoff.max_attempts = 4};
    char ci[300];
    struct wl_result r;
    uint64_t ms;
    use_target = via_target(state);
    snprintf(ci, sizeof(ci), "hostaddr=127.0.0.1 port=%d dbname=x user=x", free_tcp_port());
    assert_int_equal(probe(ci, &o, &r, &ms), -ECONNREFUSED);
    assert_int_equal(r.attempts, 4);
    assert_true(ms < 2000);
    assert_non_null(strstr(r.error, "4 attempts"));
    assert_non_null(strstr(r.error, "Connection refused"));
}

/* A socket that accepts connections (the backlog) but never answers: only the engine's own
 * per-attempt timeout ends each attempt (PQconnectPoll applies no connect_timeout). */
static void test_pg_probe_silent_server_hits_the_attempt_timeout(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 700, .attempt_timeout_ms = 150};
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char dir[64], ci[300];
    struct wl_result r;
    uint64_t ms;
    int fd;
    use_target = via_target(state);
    snprintf(dir, sizeof(dir), "/tmp/wltest-silent.%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(a.sun_path, sizeof(a.sun_path), "%s/.s.PGSQL.5999", dir);
    unlink(a.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 64), 0);
    snprintf(ci, sizeof(ci), "host=%s port=5999 dbname=x user=x", dir);
    assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
    close(fd);
    unlink(a.sun_path);
    rmdir(dir);
    assert_true(ms >= 600 && ms <= 700 + 1000); /* generous above: a loaded machine */
    assert_true(r.attempts >= 3 && r.attempts <= 5);
    assert_non_null(strstr(r.error, "attempt timed out after 150 ms while connecting"));
}

/* Without attempt_timeout_ms, the conninfo's connect_timeout bounds each attempt. */
static void test_pg_probe_uses_connect_timeout_as_the_attempt_timeout(void **state)
{
    struct wl_pg_opts o = {.wait.timeout_ms = 2600};
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char dir[64], ci[300];
    struct wl_result r;
    uint64_t ms;
    int fd;
    use_target = via_target(state);
    snprintf(dir, sizeof(dir), "/tmp/wltest-silent2.%d", (int)getpid());
    mkdir(dir, 0700);
    snprintf(a.sun_path, sizeof(a.sun_path), "%s/.s.PGSQL.5998", dir);
    unlink(a.sun_path);
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 64), 0);
    snprintf(ci, sizeof(ci), "host=%s port=5998 dbname=x user=x connect_timeout=2", dir);
    assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
    close(fd);
    unlink(a.sun_path);
    rmdir(dir);
    assert_int_equal(r.attempts, 2); /* 0-2000 ms, then 2000 ms + backoff to the deadline */
    assert_non_null(strstr(r.error, "attempt timed out after 2000 ms while connecting"));
}

static void test_pg_probe_warm_sql_error_is_eio_with_sqlstate(void **state)
{
    struct wl_pg_opts o = {.warm_sql = "SELECT 1; SELECT * FROM no_such_table; SELECT 2"};
    struct wl_result r;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(probe(CI, &o, &r, NULL), -EIO);
    assert_int_equal(r.attempts, 1); /* not retried */
    assert_string_equal(r.sqlstate, "42P01");
    assert_non_null(strstr(r.error, "warm_sql failed"));
    assert_non_null(strstr(r.error, "no_such_table"));
    /* verify_sql's errors too */
    o.warm_sql = NULL;
    o.verify_sql = "SELECT 1/0";
    assert_int_equal(probe(CI, &o, &r, NULL), -EIO);
    assert_string_equal(r.sqlstate, "22012");
    assert_non_null(strstr(r.error, "verify_sql failed"));
}

static void test_pg_probe_runs_every_statement_of_warm_sql(void **state)
{
    struct wl_pg_opts o = {
        .warm_sql = "CREATE TABLE IF NOT EXISTS wl_warm(n int); INSERT INTO wl_warm VALUES (1);"
                    " INSERT INTO wl_warm VALUES (2)",
        .verify_sql = "SELECT 1 FROM wl_warm HAVING count(*) >= 2"};
    struct wl_result r;
    char out[64];
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(pgh_psql(&H, "DROP TABLE IF EXISTS wl_warm"), 0);
    assert_int_equal(probe(CI, &o, &r, NULL), 0);
    assert_int_equal(pgh_query(&H, "SELECT count(*) FROM wl_warm", out, sizeof(out)), 0);
    assert_string_equal(out, "2");
}

/* ---------------------------------------------------------------- classification */

static void test_pg_classification_table(void **state)
{
    static const struct {
        const char *st, *msg;
        int connecting, code, refused;
    } c[] = {
        {"57P03", "FATAL:  57P03: the database system is starting up", 1, 0, 0},
        {"57P01", "FATAL:  57P01: terminating connection due to administrator command", 0, 0, 0},
        {"57P02", "", 1, 0, 0},
        {"53300", "FATAL:  53300: sorry, too many clients already", 1, 0, 0},
        {"08006", "", 1, 0, 0},
        {"08P01", "", 0, 0, 0},
        {"28P01", "FATAL:  28P01: password authentication failed for user \"x\"", 1, -EACCES, 0},
        {"28000", "FATAL:  28000: no pg_hba.conf entry for host", 1, -EACCES, 0},
        {"28000", "FATAL:  28000: role \"nobody\" does not exist", 1, -ENOENT, 0},
        {"3D000", "FATAL:  3D000: database \"x\" does not exist", 1, -ENOENT, 0},
        {"42704", "FATAL:  42704: unrecognized configuration parameter \"x\"", 1, -EINVAL, 0},
        {"42P01", "relation does not exist", 0, -EIO, 0},
        {"", "connection to server at \"127.0.0.1\", port 1 failed: Connection refused", 1, 0, 1},
        {"", "connection to server on socket \"/x/.s.PGSQL.1\" failed: No such file or directory",
         1, 0, 1},
        {"", "server closed the connection unexpectedly", 0, 0, 0},
        {"XX000", "internal error", 1, -EIO, 0},
    };
    size_t i;
    int refused;
    (void)state;
    for (i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        int code = wl__pg_classify(c[i].st, c[i].msg, c[i].connecting, &refused);
        if (code != c[i].code || refused != c[i].refused)
            print_message("row %zu: %s '%s' -> %d refused %d\n", i, c[i].st, c[i].msg, code,
                          refused);
        assert_int_equal(code, c[i].code);
        assert_int_equal(refused, c[i].refused);
    }
}

static void test_pg_sqlstate_is_read_from_verbose_messages(void **state)
{
    char st[6];
    (void)state;
    wl__pg_sqlstate_of("connection to server on socket \"/s/.s.PGSQL.5432\" failed: FATAL:  "
                       "57P03: the database system is starting up\nLOCATION:  x.c:1\n",
                       st);
    assert_string_equal(st, "57P03");
    /* two hosts: the last answer wins */
    wl__pg_sqlstate_of("connection to server at \"a\" failed: FATAL:  53300: sorry\n"
                       "connection to server at \"b\" failed: FATAL:  28P01: password\n",
                       st);
    assert_string_equal(st, "28P01");
    wl__pg_sqlstate_of("connection to server at \"a\" failed: Connection refused", st);
    assert_string_equal(st, "");
    wl__pg_sqlstate_of("FATAL:  the database system is starting up", st); /* terse */
    assert_string_equal(st, "");
    wl__pg_sqlstate_of(NULL, st);
    assert_string_equal(st, "");
}

/* ---------------------------------------------------------------- the key */

static void key_of(const char *ci, char *buf, size_t len)
{
    int r = wl_pg_key(ci, buf, len);
    if (r < 0)
        print_message("wl_pg_key(%s) = %d: %s\n", ci, r, buf);
    assert_true(r > 0);
    assert_int_equal((size_t)r, strlen(buf));
}

static void test_pg_key_equivalent_spellings_give_one_key(void **state)
{
    static const char *const same[] = {
        "host=/run/pg port=5432 dbname=app user=u",
        "postgresql:///app?host=/run/pg&user=u",
        "postgres://u@%2Frun%2Fpg/app",
        "postgresql://u:secret@%2Frun%2Fpg:5432/app",
        "dbname=app user=u host=/run/pg password=other sslmode=prefer",
        "host=/run/pg dbname=app user=u application_name=x connect_timeout=3",
    };
    char k0[512], k[512];
    size_t i;
    (void)state;
    unsetenv("PGPORT");
    unsetenv("PGHOST");
    key_of(same[0], k0, sizeof(k0));
    print_message("key: %s\n", k0);
    assert_string_equal(k0, "u@/run/pg:5432/app");
    for (i = 1; i < sizeof(same) / sizeof(same[0]); i++) {
        key_of(same[i], k, sizeof(k));
        assert_string_equal(k, k0);
    }
}

static void test_pg_key_differs_on_what_selects_server_or_session(void **state)
{
    static const char *const diff[] = {
        "host=/run/pg port=5432 dbname=app user=u",
        "host=/run/pg port=5433 dbname=app user=u",
        "host=/run/pg2 port=5432 dbname=app user=u",
        "host=/run/pg port=5432 dbname=app2 user=u",
        "host=/run/pg port=5432 dbname=app user=v",
        "host=/run/pg port=5432 dbname=app user=u options='-c search_path=x'",
        "host=/run/pg port=5432 dbname=app user=u target_session_attrs=read-write",
        "host=/run/pg port=5432 dbname=app user=u sslmode=require",
        "hostaddr=10.0.0.1 port=5432 dbname=app user=u",
        "host=db.example hostaddr=10.0.0.1 port=5432 dbname=app user=u",
        "host=db.example port=5432 dbname=app user=u",
    };
    char k[sizeof(diff) / sizeof(diff[0])][512];
    size_t i, j;
    (void)state;
    for (i = 0; i < sizeof(diff) / sizeof(diff[0]); i++) {
        key_of(diff[i], k[i], sizeof(k[i]));
        print_message("%s\n", k[i]);
        for (j = 0; j < i; j++)
            assert_string_not_equal(k[i], k[j]);
    }
}

static void test_pg_key_never_holds_the_password(void **state)
{
    static const char *const ci[] = {
        "host=/run/pg dbname=app user=u password=Hunter2xyz",
        "postgresql://u:Hunter2xyz@%2Frun%2Fpg/app",
        "postgresql:///app?host=/run/pg&user=u&password=Hunter2xyz",
    };
    char k[512];
    size_t i;
    (void)state;
    setenv("PGPASSWORD", "Hunter2xyz", 1);
    for (i = 0; i < sizeof(ci) / sizeof(ci[0]); i++) {
        key_of(ci[i], k, sizeof(k));
        assert_null(strstr(k, "Hunter2"));
    }
    unsetenv("PGPASSWORD");
}

static void test_pg_key_fills_defaults_like_libpq(void **state)
{
    struct passwd *pw = getpwuid(geteuid());
    char k[512], want[512];
    (void)state;
    assert_non_null(pw);
    unsetenv("PGUSER");
    unsetenv("PGHOST");
    unsetenv("PGPORT");
    unsetenv("PGDATABASE");
    key_of("", k, sizeof(k));
    snprintf(want, sizeof(want), "%s@/var/run/postgresql:5432/%s", pw->pw_name, pw->pw_name);
    assert_string_equal(k, want);
    setenv("PGUSER", "envuser", 1);
    setenv("PGHOST", "/env/sock", 1);
    setenv("PGPORT", "6543", 1);
    key_of("dbname=d", k, sizeof(k));
    assert_string_equal(k, "envuser@/env/sock:6543/d");
    key_of("", k, sizeof(k));
    assert_string_equal(k, "envuser@/env/sock:6543/envuser"); /* dbname defaults to user */
    key_of("host=/h port=1 user=x", k, sizeof(k));            /* the conninfo wins */
    assert_string_equal(k, "x@/h:1/x");
    unsetenv("PGUSER");
    unsetenv("PGHOST");
    unsetenv("PGPORT");
}

static void test_pg_key_rejects_garbage_with_libpqs_message(void **state)
{
    char k[512];
    (void)state;
    assert_int_equal(wl_pg_key("this is garbage", k, sizeof(k)), -EINVAL);
    assert_non_null(strstr(k, "missing \"=\""));
    assert_int_equal(wl_pg_key("nosuchkeyword=1", k, sizeof(k)), -EINVAL);
    assert_non_null(strstr(k, "invalid connection option"));
    assert_int_equal(wl_pg_key("postgresql://[::1", k, sizeof(k)), -EINVAL);
    assert_int_equal(wl_pg_key("host=/run/pg dbname=app user=u", k, 8), -ENAMETOOLONG);
}

/* ---------------------------------------------------------------- wl_pg_ensure */

struct herd {
    char seg[64];
    char ci[1024];
    struct wlt_barrier bar;
    uint32_t n;
    int connect; /* worker 0 calls pg_connect (then SELECT 1 on it) instead of pg_ensure */
    int ordered; /* no barrier: the test starts worker 0 (the leader) first, then the others */
    _Atomic uint32_t leaders, ok;
    int rc[64];
    int role[64];
    unsigned attempts[64];
    uint64_t done_ns[64];
};

static int herd_worker(void *arg, int i)
{
    struct herd *h = arg;
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 30000};
    struct wl_result r;
    if (wl_open(h->seg, NULL, &seg) < 0)
        return 90;
    if (!h->ordered)
        wlt_barrier_wait(&h->bar, h->n);
    if (h->connect && i == 0) {
        PGconn *c = pg_connect(seg, h->ci, &o, &r);
        h->done_ns[i] = wlt_now_ns();
        PGresult *q = c ? PQexec(c, "SELECT 1") : NULL;
        h->rc[i] = !c ? -EIO : PQresultStatus(q) == PGRES_TUPLES_OK ? 0 : -EPROTO;
        PQclear(q);
        PQfinish(c);
    } else {
        h->rc[i] = pg_ensure(seg, h->ci, &o, &r);
        h->done_ns[i] = wlt_now_ns();
    }
    h->role[i] = r.role;
    h->attempts[i] = r.attempts;
    if (r.role == WL_LEADER)
        atomic_fetch_add(&h->leaders, 1);
    if (h->rc[i] == 0)
        atomic_fetch_add(&h->ok, 1);
    wl_close(seg);
    return 0;
}

/* 32 processes start with the server in crash recovery: one probes, all get READY, and
 * the server sees the leader's connections only. */
static void test_pg_ensure_herd_one_leader_through_crash_recovery(void **state)
{
    struct herd *h = wlt_shared(sizeof(*h));
    pid_t pids[64];
    long mark;
    uint32_t i;
    int conns, n57;
    uint64_t first = UINT64_MAX, last = 0;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    h->n = 32;
    snprintf(h->seg, sizeof(h->seg), "%s", wlt_segname());
    snprintf(h->ci, sizeof(h->ci), "%s", CI);
    assert_int_equal(pgh_crash(&H), 0);
    mark = pgh_log_mark(&H);
    /* held in recovery until the leader has been refused, however fast replay is */
    assert_int_equal(pgh_start_held(&H), 0);
    for (i = 0; i < h->n; i++)
        pids[i] = wlt_spawn(herd_worker, h, (int)i);
    assert_int_equal(pgh_wait_57P03_since(&H, mark, 1, 20000), 0);
    assert_int_equal(pgh_release(&H, 0), 0);
    for (i = 0; i < h->n; i++)
        assert_int_equal(wlt_wait(pids[i], 60000), 0);
    assert_int_equal(pgh_wait_ready(&H, 30000), 0);
    conns = pgh_count_log_since(&H, mark, "connection received");
    n57 = pgh_count_log_57P03_since(&H, mark);
    for (i = 0; i < h->n; i++) {
        if (h->rc[i] != 0)
            print_message("worker %u: rc %d\n", i, h->rc[i]);
        first = h->done_ns[i] < first ? h->done_ns[i] : first;
        last = h->done_ns[i] > last ? h->done_ns[i] : last;
    }
    print_message("%u processes: %u leader(s), %u ready; server saw %d connections, %d 57P03; "
                  "herd released within %.2f ms\n",
                  h->n, h->leaders, h->ok, conns, n57, (last - first) / 1e6);
    assert_int_equal(h->leaders, 1);
    assert_int_equal(h->ok, h->n);
    assert_true(conns >= 1);
    for (i = 0; i < h->n; i++)
        if (h->attempts[i])
            assert_true((unsigned)conns <= h->attempts[i]); /* only the leader's attempts */
    wl_unlink(h->seg);
}

/* The READY of a wl_pg_connect leader, which hands the connection that verified it to its
 * caller, says so; the followers it wakes are released WL__HANDOVER_GRACE_NS after it at the
 * earliest, so the caller's first query is not queued behind their logins. A wl_pg_ensure
 * leader keeps no connection: its READY delays nobody. (The followers call pg_ensure, so
 * their return is their release, with no login of their own after it.) */
static uint64_t slot_handover_ns(const char *segname)
{
    struct wl_segment *seg;
    struct wl__slot *sl;
    char key[WL_PG_KEY_MAX];
    assert_int_equal(wl_open(segname, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, CI, key, sizeof(key)) > 0);
    assert_int_equal(wl__slot_find(seg, key, 0, &sl), 0);
    uint64_t h = atomic_load(&sl->handover_ns);
    wl_close(seg);
    return h;
}

/* Until n callers wait on CI's slot in segname (bounded: 60 s). */
static void followers_wait(const char *segname, uint32_t n)
{
    struct wl_segment *seg;
    struct wl_slot_info si;
    char key[WL_PG_KEY_MAX];
    uint64_t end = wlt_now_ns() + 60000 * MS;
    assert_int_equal(wl_open(segname, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, CI, key, sizeof(key)) > 0);
    while (!(wl_lookup(seg, key, &si) == 0 && si.waiters >= n)) {
        if (wlt_now_ns() > end)
            fail_msg("only %u of %u followers wait after 60 s", si.waiters, n);
        usleep(2000);
    }
    wl_close(seg);
}

static void test_pg_connect_followers_let_the_leaders_first_query_go_first(void **state)
{
    struct herd *h = wlt_shared(sizeof(*h));
    pid_t pids[64];
    long mark;
    uint32_t i;
    use_target = via_target(state);
    NEED_PG();
    for (int mode = 1; mode >= 0; mode--) {
        pg_ensure_up();
        memset(h, 0, sizeof(*h));
        h->n = 8;
        h->connect = mode;
        h->ordered = 1;
        snprintf(h->seg, sizeof(h->seg), "%s", wlt_segname());
        snprintf(h->ci, sizeof(h->ci), "%s", CI);
        assert_int_equal(pgh_crash(&H), 0);
        mark = pgh_log_mark(&H);
        /* held in recovery until the leader has been refused: every worker waits */
        assert_int_equal(pgh_start_held(&H), 0);
        /* worker 0 first: refused once, it is the leader; then the followers */
        pids[0] = wlt_spawn(herd_worker, h, 0);
        assert_int_equal(pgh_wait_57P03_since(&H, mark, 1, 20000), 0);
        for (i = 1; i < h->n; i++)
            pids[i] = wlt_spawn(herd_worker, h, (int)i);
        /* every follower waits before the server may come up: none takes the ready path */
        followers_wait(h->seg, h->n - 1);
        assert_int_equal(pgh_release(&H, 0), 0);
        for (i = 0; i < h->n; i++)
            assert_int_equal(wlt_wait(pids[i], 60000), 0);
        assert_int_equal(pgh_wait_ready(&H, 30000), 0);
        assert_int_equal(h->leaders, 1);
        assert_int_equal(h->role[0], WL_LEADER);
        assert_int_equal(h->ok, h->n);
        uint64_t ho = slot_handover_ns(h->seg);
        print_message("%s: handover_ns %llu\n", mode ? "pg_connect" : "pg_ensure",
                      (unsigned long long)ho);
        if (!mode) {
            assert_true(ho == 0);
        } else {
            assert_true(ho != 0);
            for (i = 0; i < h->n; i++) {
                if (h->role[i] == WL_LEADER)
                    continue;
                if (h->done_ns[i] < ho + WL__HANDOVER_GRACE_NS)
                    fail_msg("follower %u returned %.3f ms after the READY, before the grace",
                             i, (double)(h->done_ns[i] - ho) / 1e6);
            }
        }
        wl_unlink(h->seg);
    }
}

static void test_pg_ensure_publishes_auth_failure_to_followers(void **state)
{
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 5000, .wait.fail_ttl_ms = 5000};
    struct wl_result r1, r2;
    long mark;
    const char *name = wlt_segname();
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    mark = pgh_log_mark(&H);
    assert_int_equal(pg_ensure(seg, BAD_PW, &o, &r1), -EACCES);
    assert_int_equal(r1.role, WL_LEADER);
    assert_string_equal(r1.sqlstate, "28P01");
    /* served from the segment: same code and message, no new connection */
    assert_int_equal(pg_ensure(seg, BAD_PW, &o, &r2), -EACCES);
    assert_int_equal(r2.role, WL_FOLLOWER);
    assert_string_equal(r2.sqlstate, "28P01");
    assert_string_equal(r2.error, r1.error);
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 1);
    /* garbage never reaches the segment or the server */
    assert_int_equal(pg_ensure(seg, "garbage", &o, &r1), -EINVAL);
    assert_non_null(strstr(r1.error, "invalid conninfo"));
    wl_close(seg);
    wl_unlink(name);
}

static void *restart_later(void *arg)
{
    struct later *l = arg;
    wlt_sleep_ms(l->ms);
    l->rc = pgh_start(&H, 0);
    return NULL;
}

/* The schedule knows what a probe costs. A port where nothing listens is probed every
 * refused_ms (it costs the server nothing); a server held in recovery, where every probe
 * costs it a fork and a FATAL line, at busy_ms and never faster. The lower bounds are
 * generous (a loaded machine runs timers late); the upper bounds are the pace itself, which
 * no machine speed can break. */
static void test_pg_schedule_probes_by_what_a_probe_costs(void **state)
{
    /* the call's timeout too: through a target the caller would outlive one warm-up */
    struct wl_pg_opts o = {.backoff = {.deadline_ms = 600}, .wait.timeout_ms = 600};
    struct wl_result r;
    char ci[1200];
    uint64_t ms;
    long mark;
    int fatal, n57;
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();

    /* nothing listens on a socket file that is there (bound, never listened on):
     * ECONNREFUSED, probed every refused_ms */
    {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        int n = snprintf(sa.sun_path, sizeof(sa.sun_path), "%.90s/.s.PGSQL.%d", H.dir, 2);
        assert_true(n > 0 && (size_t)n < sizeof(sa.sun_path) && strlen(H.dir) <= 90);
        unlink(sa.sun_path);
        assert_true(fd >= 0);
        assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        snprintf(ci, sizeof(ci), "host=%s port=%d user=postgres dbname=postgres", H.dir, 2);
        assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
        print_message("refused: %u attempts in %llu ms (refused_ms 5)\n", r.attempts,
                      (unsigned long long)ms);
        assert_true(r.attempts >= 20);
        assert_true(r.attempts <= ms / 5 + 2);
        close(fd);
        unlink(sa.sun_path);
    }
    /* no socket file, its directory watched: its creation would wake the probe, so only
     * the cap (max_ms) paces it; not watched, refused_ms */
    snprintf(ci, sizeof(ci), "host=%s port=%d user=postgres dbname=postgres", H.dir, 1);
    assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
    print_message("no socket file, watched: %u attempts in %llu ms\n", r.attempts,
                  (unsigned long long)ms);
    assert_true(r.attempts >= 2);
    assert_true(r.attempts <= ms / 250 + 2);
    o.backoff.flags = WL_BACKOFF_NO_WATCH;
    assert_int_equal(probe(ci, &o, &r, &ms), -ETIMEDOUT);
    print_message("no socket file, not watched: %u attempts in %llu ms\n", r.attempts,
                  (unsigned long long)ms);
    assert_true(r.attempts >= 20);
    assert_true(r.attempts <= ms / 5 + 2);
    o.backoff.flags = 0;

    /* the server answers 57P03 for as long as it is held */
    assert_int_equal(pgh_crash(&H), 0);
    assert_int_equal(pgh_start_held(&H), 0);
    mark = pgh_log_mark(&H);
    o.backoff.deadline_ms = o.wait.timeout_ms = 1000;
    /* a local server's postmaster.pid is watched: it says when it is ready, so while it
     * answers 57P03 the probes come only at the cap (max_ms, 250) */
    assert_int_equal(probe(CI, &o, &r, &ms), -ETIMEDOUT);
    assert_string_equal(r.sqlstate, "57P03");
    print_message("57P03, watched: %u attempts in %llu ms (max_ms 250)\n", r.attempts,
                  (unsigned long long)ms);
    assert_true(r.attempts >= 2);
    assert_true(r.attempts <= ms / 250 + 2);
    /* not watched: busy_ms */
    o.backoff.flags = WL_BACKOFF_NO_WATCH;
    assert_int_equal(probe(CI, &o, &r, &ms), -ETIMEDOUT);
    assert_string_equal(r.sqlstate, "57P03");
    print_message("57P03: %u attempts in %llu ms (busy_ms 25)\n", r.attempts,
                  (unsigned long long)ms);
    assert_true(r.attempts >= 8);
    assert_true(r.attempts <= ms / 25 + 2);
    o.backoff.busy_ms = 100;
    assert_int_equal(probe(CI, &o, &r, &ms), -ETIMEDOUT);
    print_message("57P03: %u attempts in %llu ms (busy_ms 100)\n", r.attempts,
                  (unsigned long long)ms);
    assert_true(r.attempts >= 3);
    assert_true(r.attempts <= ms / 100 + 2);
    assert_int_equal(pgh_release(&H, 1), 0);
    /* the server logged no more FATAL lines than the probes made */
    fatal = pgh_count_log_since(&H, mark, "FATAL:");
    n57 = pgh_count_log_57P03_since(&H, mark);
    print_message("server log: %d FATAL, %d 57P03\n", fatal, n57);
    assert_true(n57 >= 1);
    assert_true(fatal <= 1000 / 250 + 2 + 1000 / 25 + 2 + 1000 / 100 + 2);
}

/* wl_pg_connect's leader keeps the connection that verified the epoch as its own: one
 * connection, not two, restored to what PQconnectdb gives (blocking). Not when warm_sql ran
 * on it: that session is the warm-up's. */
static void test_pg_connect_leader_keeps_its_verified_connection(void **state)
{
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 15000};
    struct wl_result r;
    PGresult *res;
    PGconn *c;
    long mark;
    const char *name = wlt_segname();
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    mark = pgh_log_mark(&H);
    c = pg_connect(seg, CI, &o, &r);
    assert_non_null(c);
    assert_int_equal(r.role, WL_LEADER);
    assert_int_equal(PQisnonblocking(c), 0);
    res = PQexec(c, "SELECT 6 * 7");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "42");
    PQclear(res);
    PQfinish(c);
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 1);
    /* a follower opens its own */
    c = pg_connect(seg, CI, &o, &r);
    assert_non_null(c);
    assert_int_equal(r.role, WL_FOLLOWER);
    PQfinish(c);
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 2);
    wl_close(seg);
    wl_unlink(name);

    /* with warm_sql: the warm-up's session is closed, the caller gets a fresh one */
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    o.warm_sql = "SET search_path = pg_catalog";
    mark = pgh_log_mark(&H);
    c = pg_connect(seg, CI, &o, &r);
    assert_non_null(c);
    assert_int_equal(r.role, WL_LEADER);
    res = PQexec(c, "SHOW search_path");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_not_equal(PQgetvalue(res, 0, 0), "pg_catalog");
    PQclear(res);
    PQfinish(c);
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 2);
    wl_close(seg);
    wl_unlink(name);
}

/* A prepared target's ready path makes no syscall (seccomp strict mode kills the process
 * on any but read, write, exit and sigreturn), with the engine's default max age, and its
 * results are those of wl_pg_ensure. */
static int target_ready_child(void *arg, int idx)
{
    struct wl_pg_target *t = arg;
    struct wl_result res;
    uint64_t sum = 0, epoch;
    (void)idx;
    if (wl_pg_target_ensure(t, &res) != 0)
        return 3;
    epoch = res.epoch;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        return 77;
    for (int i = 0; i < 200000; i++) {
        if (wl_pg_target_ensure(t, &res) != 0 || res.role != WL_FOLLOWER)
            syscall(SYS_exit, 4);
        sum += res.epoch;
    }
    for (int i = 0; i < 1000; i++)
        if (wl_pg_target_ready(t, 0, &res) != 1 || res.epoch != epoch)
            syscall(SYS_exit, 7);
    syscall(SYS_exit, sum == 200000 * epoch ? 0 : 5);
    return 6;
}

static void test_pg_target_ready_path_makes_no_syscall(void **state)
{
    struct wl_segment *seg;
    struct wl_pg_target *t;
    struct wl_result r1, r2;
    const char *name = wlt_segname();
    int st;
    (void)state;
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_pg_target_open(seg, CI, NULL, &t), 0);
    assert_null(strstr(wl_pg_target_key(t), PASSWORD));
    assert_int_equal(wl_pg_target_ensure(t, &r1), 0);
    assert_int_equal(r1.role, WL_LEADER);
    assert_int_equal(wl_pg_ensure(seg, CI, NULL, &r2), 0);
    assert_int_equal(r2.role, WL_FOLLOWER);
    assert_int_equal(r2.epoch, r1.epoch);
    {
        /* a target that never waited sees the READY another one published */
        struct wl_pg_target *t2;
        assert_int_equal(wl_pg_target_open(seg, CI, NULL, &t2), 0);
        assert_int_equal(wl_pg_target_ready(t2, 0, &r2), 1);
        assert_int_equal(r2.epoch, r1.epoch);
        wl_pg_target_close(t2);
    }
    st = wlt_wait(wlt_spawn(target_ready_child, t, 0), 20000);
    if (st == 77)
        skip();
    assert_int_equal(st, 0); /* 128+SIGKILL would mean a syscall was made */
    /* invalidated through the target: not ready, and the next call leads a re-verification
     * (here with its own wait options) */
    assert_int_equal(wl_pg_target_invalidate(t, r1.epoch), 1);
    assert_int_equal(wl_pg_target_ready(t, 0, &r2), 0);
    struct wl_wait_opts w = {.timeout_ms = 5000, .max_age_ms = UINT32_MAX};
    assert_int_equal(wl_pg_target_ensure_opts(t, &w, &r2), 0);
    assert_int_equal(r2.role, WL_LEADER);
    assert_true(r2.epoch > r1.epoch);
    assert_int_equal(wl_pg_target_ready(t, UINT32_MAX, &r1), 1);
    assert_int_equal(r1.epoch, r2.epoch);
    wl_pg_target_close(t);
    /* bad conninfo: the message in wl_last_error, the password masked */
    assert_int_equal(wl_pg_target_open(seg, "password=hunter2 nosuchkeyword=1", NULL, &t),
                     -EINVAL);
    assert_non_null(strstr(wl_last_error(), "nosuchkeyword"));
    assert_null(strstr(wl_last_error(), "hunter2"));
    wl_close(seg);
    wl_unlink(name);
}

/* READY in the segment, but the server restarted meanwhile: wl_pg_connect's own connect
 * fails with a connection error, it invalidates the epoch and one re-verification follows. */
static void test_pg_connect_invalidates_a_stale_epoch_and_reconnects(void **state)
{
    struct wl_segment *seg;
    struct wl_pg_opts o = {.wait.timeout_ms = 15000};
    struct wl_result r;
    struct later l = {400, -1};
    pthread_t th;
    PGconn *c;
    PGresult *res;
    uint64_t epoch;
    const char *name = wlt_segname();
    use_target = via_target(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    c = pg_connect(seg, CI, &o, &r);
    assert_non_null(c);
    epoch = r.epoch;
    assert_true(epoch >= 1);
    res = PQexec(c, "SELECT 41 + 1");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_string_equal(PQgetvalue(res, 0, 0), "42");
    PQclear(res);
    PQfinish(c);

    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pthread_create(&th, NULL, restart_later, &l), 0);
    c = pg_connect(seg, CI, &o, &r);
    pthread_join(th, NULL);
    if (!c)
        print_message("wl_pg_connect: %s\n", r.error);
    assert_non_null(c);
    assert_true(r.epoch > epoch); /* re-verified in a new epoch */
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    PQfinish(c);
    /* auth failures come back as they are, no invalidation loop */
    assert_null(pg_connect(seg, BAD_PW, &o, &r));
    assert_string_equal(r.sqlstate, "28P01");
    wl_close(seg);
    wl_unlink(name);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_classification_table),
        cmocka_unit_test(test_pg_sqlstate_is_read_from_verbose_messages),
        cmocka_unit_test(test_pg_key_equivalent_spellings_give_one_key),
        cmocka_unit_test(test_pg_key_differs_on_what_selects_server_or_session),
        cmocka_unit_test(test_pg_key_never_holds_the_password),
        cmocka_unit_test(test_pg_key_fills_defaults_like_libpq),
        cmocka_unit_test(test_pg_key_rejects_garbage_with_libpqs_message),
        WLT_ALL(test_pg_probe_succeeds_with_one_connection),
        WLT_ALL(test_pg_probe_retries_until_a_late_server_starts),
        WLT_ALL(test_pg_probe_rides_out_crash_recovery_57P03),
        WLT_ALL(test_pg_connect_error_during_recovery_reads_sqlstate_57P03),
        WLT_ALL(test_pg_probe_wrong_password_fails_fast_with_28P01),
        WLT_ALL(test_pg_probe_missing_database_is_enoent),
        WLT_ALL(test_pg_probe_bad_conninfo_is_einval_without_server_contact),
        WLT_ALL(test_pg_probe_never_up_times_out_at_the_deadline),
        WLT_ALL(test_pg_probe_refused_until_attempts_run_out_is_econnrefused),
        WLT_ALL(test_pg_probe_silent_server_hits_the_attempt_timeout),
        WLT_ALL(test_pg_probe_uses_connect_timeout_as_the_attempt_timeout),
        WLT_ALL(test_pg_probe_warm_sql_error_is_eio_with_sqlstate),
        WLT_ALL(test_pg_probe_runs_every_statement_of_warm_sql),
        WLT_CALLS(test_pg_ensure_herd_one_leader_through_crash_recovery),
        WLT_CALLS(test_pg_ensure_publishes_auth_failure_to_followers),
        WLT_CALLS(test_pg_connect_followers_let_the_leaders_first_query_go_first),
        WLT_CALLS(test_pg_connect_invalidates_a_stale_epoch_and_reconnects),
        cmocka_unit_test(test_pg_target_ready_path_makes_no_syscall),
        WLT_CALLS(test_pg_connect_leader_keeps_its_verified_connection),
        WLT_ALL(test_pg_schedule_probes_by_what_a_probe_costs),
    };
    return cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
}
