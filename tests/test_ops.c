/* Operability against a real PostgreSQL: the `warmlock check` healthcheck (the segment only:
 * no connection, no segment created), the stages a warm-up records (how far it got), and
 * resume detection (a host suspended since READY was verified: one process re-verifies for
 * all, the others wait for it). The suspend is faked through the library's test hook,
 * which moves this process's boot and wall clocks as a real resume does. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/internal.h"
#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define PASSWORD "0ps-Pa55w0rd"
#define NCALLERS 8
#define MS       1000000ull

WLT_PG_SUITE

static char CI[1024], BAD_PW[1024], DOWN[1024], OTHER_DB[1100];
static char DIR_[64];

#define RUN(r, timeout, ...) WLT_RUN((r), DIR_, (timeout), __VA_ARGS__)

static int group_setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wltest-ops.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        return 0;
    have_pg = 1;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    snprintf(BAD_PW, sizeof(BAD_PW), "%s password=wrong-pw", H.conninfo);
    snprintf(OTHER_DB, sizeof(OTHER_DB), "%s dbname=template1", CI);
    /* the server's socket directory, but a port nothing listens on: no socket file */
    snprintf(DOWN, sizeof(DOWN), "host=%s port=1 dbname=postgres user=postgres", H.sockdir);
    return 0;
}

static pid_t daemon_pid;

static int group_teardown(void **state)
{
    char cmd[128];
    if (daemon_pid > 0) {
        kill(daemon_pid, SIGKILL);
        waitpid(daemon_pid, NULL, 0);
    }
    snprintf(cmd, sizeof(cmd), "rm -rf %s", DIR_);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", DIR_);
    return pg_group_teardown(state);
}

static const char *segname(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "%s", wlt_segname());
    wl_unlink(buf);
    return buf;
}

/* warmlockd --foreground --interval 1 on shm for CI, its log in DIR_. */
static void daemon_start(const char *shm)
{
    static char log[128];
    char *argv[] = {(char *)WL_WARMLOCKD, (char *)"--foreground", (char *)"--interval",
                    (char *)"1", (char *)"--shm", (char *)shm, (char *)"--target", CI, NULL};
    snprintf(log, sizeof(log), "%s/warmlockd.log", DIR_);
    daemon_pid = wlt_spawn_exec(argv, NULL, log, -1);
    assert_true(daemon_pid > 0);
}

static void daemon_stop(void)
{
    if (daemon_pid <= 0)
        return;
    kill(daemon_pid, SIGCONT);
    kill(daemon_pid, SIGTERM);
    wlt_wait(daemon_pid, 5000);
    daemon_pid = 0;
}

/* Run `warmlock check [extra] --shm shm CI` until its exit status is `want`, bounded by
 * timeout_ms: the ms it took, or -1 (r holds the last run). */
static int check_until(struct wlt_run *r, const char *shm, const char *max_age, int want,
                       unsigned timeout_ms)
{
    uint64_t t0 = wlt_now_ns(), end = t0 + (uint64_t)timeout_ms * MS;
    for (;;) {
        if (max_age)
            RUN(r, 5000, WL_WARMLOCK, "check", "--max-age", (char *)max_age, "--shm",
                (char *)shm, CI);
        else
            RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, CI);
        if (r->status == want)
            return (int)((wlt_now_ns() - t0) / MS);
        if (wlt_now_ns() >= end)
            return -1;
        wlt_sleep_ms(20);
    }
}

/* ---------------------------------------------------------------- check */

/* No segment: exit 1, one line, and still no segment afterwards. */
static void test_check_without_segment_fails_and_creates_nothing(void **state)
{
    const char *shm = segname();
    struct wlt_run *r = wlt_newrun();
    struct stat st;
    char path[128];
    (void)state;

    RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, "host=/nowhere dbname=x");
    assert_int_equal(r->status, 1);
    assert_int_equal(wlt_count_lines(r->err), 1);
    assert_string_equal(r->out, "");
    snprintf(path, sizeof(path), "/dev/shm%s", shm);
    assert_int_equal(stat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    /* a segment, but no slot for the target: 1 as well, and still no slot */
    {
        struct wl_segment *seg;
        assert_int_equal(wl_open(shm, NULL, &seg), 0);
        RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, "host=/nowhere dbname=x");
        assert_int_equal(r->status, 1);
        assert_int_equal(wlt_count_lines(r->err), 1);
        assert_non_null(strstr(r->err, "no slot"));
        assert_int_equal(wl_snapshot(seg, NULL, 0), 0);
        wl_close(seg);
        wl_unlink(shm);
    }
    free(r);
}

/* A READY target: exit 0, also within a --max-age; 20 checks add no connection to the
 * server's log (log_connections is on). */
static void test_check_ready_target_exits_0_without_connecting(void **state)
{
    const char *shm = segname();
    struct wlt_run *r = wlt_newrun();
    struct wl_segment *seg;
    struct wl_result res;
    long mark;
    (void)state;
    NEED_PG();
    pg_ensure_up();

    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_pg_ensure(seg, CI, NULL, &res), 0);
    mark = pgh_log_mark(&H);
    for (int i = 0; i < 20; i++) {
        if (i & 1)
            RUN(r, 5000, WL_WARMLOCK, "check", "--max-age", "60", "--shm", (char *)shm, CI);
        else
            RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, CI);
        assert_int_equal(r->status, 0);
        assert_non_null(strstr(r->out, "ready"));
        assert_null(strstr(r->out, PASSWORD));
    }
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 0);
    wl_close(seg);
    wl_unlink(shm);
    free(r);
}

/* warmlockd keeps the target READY; the server stops: check says 1 within 3 s, with the
 * state and the last error on one line; back up, 0 again. Then --max-age: with warmlockd
 * stopped (SIGSTOP) nothing verifies the target any more, and check fails once the last
 * verification is older than the bound, though the slot is still READY. */
static void test_check_sees_server_stop_and_stopped_checks(void **state)
{
    const char *shm = segname();
    struct wlt_run *r = wlt_newrun();
    uint64_t t0;
    int ms;
    (void)state;
    NEED_PG();
    pg_ensure_up();

    daemon_start(shm);
    assert_true(check_until(r, shm, NULL, 0, 20000) >= 0);

    assert_int_equal(pgh_stop(&H, "fast"), 0);
    t0 = wlt_now_ns();
    ms = check_until(r, shm, NULL, 1, 10000);
    print_message("check failed %.0f ms after the server stopped: %s",
                  (double)(wlt_now_ns() - t0) / 1e6, r->err);
    assert_true(ms >= 0);
    assert_true((wlt_now_ns() - t0) / MS < 3000);
    assert_int_equal(wlt_count_lines(r->err), 1);
    assert_true(strstr(r->err, "warming") || strstr(r->err, "stale"));
    assert_non_null(strstr(r->err, "stage "));
    assert_non_null(strstr(r->err, "last error: "));
    assert_null(strstr(r->err, PASSWORD));

    pg_ensure_up();
    assert_true(check_until(r, shm, NULL, 0, 20000) >= 0);
    /* verified every second by the daemon: within a 2.5 s bound */
    assert_true(check_until(r, shm, "2.5", 0, 10000) >= 0);
    assert_int_equal(kill(daemon_pid, SIGSTOP), 0);
    t0 = wlt_now_ns();
    ms = check_until(r, shm, "2.5", 1, 15000);
    assert_true(ms >= 0);
    print_message("with warmlockd stopped, check --max-age 2.5 failed after %.0f ms: %s",
                  (double)(wlt_now_ns() - t0) / 1e6, r->err);
    assert_non_null(strstr(r->err, "more than --max-age"));
    assert_int_equal(wlt_count_lines(r->err), 1);
    RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, CI);
    assert_int_equal(r->status, 0); /* still READY: only its age is in question */
    assert_int_equal(kill(daemon_pid, SIGCONT), 0);
    assert_true(check_until(r, shm, "2.5", 0, 10000) >= 0);
    daemon_stop();
    wl_unlink(shm);
    free(r);
}

/* ---------------------------------------------------------------- stages */

/* The stage of conninfo's slot (with opts' warm_sql) after one wl_pg_ensure: its result. */
static int ensure_stage(struct wl_segment *seg, const char *conninfo, const char *warm_sql,
                        enum wl_stage *stage)
{
    struct wl_pg_opts o = {0};
    struct wl_pg_target *t;
    struct wl_slot_info si;
    struct wl_result res;
    int r;

    o.warm_sql = warm_sql;
    o.wait.timeout_ms = 400;
    assert_int_equal(wl_pg_target_open(seg, conninfo, &o, &t), 0);
    r = wl_pg_target_ensure(t, &res);
    assert_int_equal(wl_lookup(seg, wl_pg_target_key(t), &si), 0);
    *stage = si.stage;
    print_message("%-13s %-8s rc %d: %s\n", wl_stage_name(si.stage), wl_state_name(si.state),
                  r, res.error);
    wl_pg_target_close(t);
    return r;
}

/* Down: not even reachable; a wrong password: reachable; warm_sql failing: authenticated;
 * success: verified. status (table, JSON) and metrics show them. */
static void test_stages_say_how_far_the_warm_up_got(void **state)
{
    const char *shm = segname();
    struct wlt_run *r = wlt_newrun();
    struct wl_segment *seg;
    enum wl_stage st;
    (void)state;
    NEED_PG();
    pg_ensure_up();

    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(ensure_stage(seg, DOWN, NULL, &st), -ETIMEDOUT);
    assert_int_equal(st, WL_STAGE_NONE);
    assert_int_equal(ensure_stage(seg, BAD_PW, NULL, &st), -EACCES);
    assert_int_equal(st, WL_STAGE_REACHABLE);
    assert_int_equal(ensure_stage(seg, OTHER_DB, "SELECT * FROM wl_no_such_table", &st), -EIO);
    assert_int_equal(st, WL_STAGE_AUTHENTICATED);
    assert_int_equal(ensure_stage(seg, CI, "SELECT 1; SELECT 2", &st), 0);
    assert_int_equal(st, WL_STAGE_VERIFIED);
    assert_int_equal(ensure_stage(seg, CI, NULL, &st), 0);
    assert_int_equal(st, WL_STAGE_VERIFIED);

    RUN(r, 5000, WL_WARMLOCK, "status", "--json", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "\"stage\": \"none\""));
    assert_non_null(strstr(r->out, "\"stage\": \"reachable\""));
    assert_non_null(strstr(r->out, "\"stage\": \"authenticated\""));
    assert_non_null(strstr(r->out, "\"stage\": \"verified\""));
    RUN(r, 5000, WL_WARMLOCK, "status", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "STAGE"));
    assert_non_null(strstr(r->out, "authenticated"));
    RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "# TYPE warmlock_stage gauge"));
    assert_non_null(strstr(r->out, ",stage=\"reachable\"} 1"));
    /* check names the stage */
    RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, BAD_PW);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->err, "failed (stage reachable)"));
    assert_null(strstr(r->err, "wrong-pw"));
    wl_close(seg);
    wl_unlink(shm);
    free(r);
}

/* A server held in recovery answers 57P03: the warm-up is `reachable` (stale, an outage),
 * and `verified` once the server is released. */
static void test_stage_is_reachable_while_the_server_recovers(void **state)
{
    const char *shm = segname();
    struct wl_pg_opts o = {0};
    struct wl_segment *seg;
    struct wl_pg_target *t;
    struct wl_slot_info si;
    struct wl_result res;
    int r;
    (void)state;
    NEED_PG();
    pg_ensure_up();

    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pgh_start_held(&H), 0);
    o.wait.flags = WL_FAIL_FAST;
    o.wait.timeout_ms = 5000;
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_pg_target_open(seg, CI, &o, &t), 0);
    r = wl_pg_target_ensure(t, &res);
    assert_int_equal(wl_lookup(seg, wl_pg_target_key(t), &si), 0);
    print_message("rc %d (%s); %s %s: %s\n", r, res.error, wl_state_name(si.state),
                  wl_stage_name(si.stage), si.last_error);
    assert_true(wl__transient(r)); /* an outage, not a failure served to everyone */
    assert_int_equal(si.state, WL_STALE);
    assert_int_equal(si.stage, WL_STAGE_REACHABLE);
    assert_string_equal(si.sqlstate, "57P03");
    assert_int_equal(pgh_release(&H, 1), 0);
    o.wait.flags = 0;
    wl_pg_target_close(t);
    assert_int_equal(wl_pg_target_open(seg, CI, &o, &t), 0);
    assert_int_equal(wl_pg_target_ensure(t, &res), 0);
    assert_int_equal(wl_lookup(seg, wl_pg_target_key(t), &si), 0);
    assert_int_equal(si.stage, WL_STAGE_VERIFIED);
    wl_pg_target_close(t);
    wl_close(seg);
    wl_unlink(shm);
}

/* ---------------------------------------------------------------- resume */

struct resume {
    struct wlt_barrier go;
    _Atomic uint32_t reverified; /* re-verifications run (the warm function) */
    _Atomic uint64_t verify_end_ns;
    uint64_t done_ns[NCALLERS];
    int rc[NCALLERS];
    uint64_t epoch[NCALLERS];
};

#define VERIFY_HOLD_MS 300 /* a re-verification takes this long: the others must wait it out */

static int counting_warm(void *arg, struct wl_result *res)
{
    struct resume *sh = arg;
    (void)res;
    if (wl__warm_reverifying()) {
        atomic_fetch_add(&sh->reverified, 1);
        wlt_sleep_ms(VERIFY_HOLD_MS);
        atomic_store(&sh->verify_end_ns, wlt_now_ns());
    }
    return 0;
}

static const struct wl_wait_opts AGED = {.timeout_ms = 10000, .max_age_ms = 600000};

static struct wl_segment *rseg;
static struct wl_key *rkeys[NCALLERS];

/* Half the callers use wl_ensure, half a prepared key (opened, and READY seen, before the
 * suspend: its ready path must notice the jump by itself). */
static int resume_caller(void *arg, int i)
{
    struct resume *sh = arg;
    struct wl_result res;
    wlt_barrier_wait(&sh->go, NCALLERS);
    sh->rc[i] = i & 1 ? wl_key_ensure(rkeys[i], counting_warm, sh, &AGED, &res)
                      : wl_ensure(rseg, "resume-db", counting_warm, sh, &AGED, &res);
    sh->done_ns[i] = wlt_now_ns();
    sh->epoch[i] = res.epoch;
    return 0;
}

static void run_callers(struct resume *sh)
{
    pid_t pids[NCALLERS];
    memset(&sh->go, 0, sizeof(sh->go));
    for (int i = 0; i < NCALLERS; i++)
        pids[i] = wlt_spawn(resume_caller, sh, i);
    for (int i = 0; i < NCALLERS; i++)
        assert_int_equal(wlt_wait(pids[i], 20000), 0);
}

/* A READY slot, verified a moment ago (max_age 10 min). Without a suspend 8 callers take
 * the ready path; after a faked 10 s suspend exactly one of 8 re-verifies, and the 7 others
 * return after it finished (they waited, rather than trust READY); then the ready path
 * again, and so for the libpq engine: one connection for 8 callers. */
static void test_resume_one_reverification_for_eight_callers(void **state)
{
    const char *shm = segname();
    struct resume *sh = wlt_shared(sizeof(*sh));
    struct wl_result res;
    uint64_t epoch;
    (void)state;

    assert_int_equal(wl_open(shm, NULL, &rseg), 0);
    assert_int_equal(wl_ensure(rseg, "resume-db", counting_warm, sh, &AGED, &res), 0);
    epoch = res.epoch;
    for (int i = 0; i < NCALLERS; i++) {
        assert_int_equal(wl_key_open(rseg, "resume-db", &rkeys[i]), 0);
        assert_int_equal(wl_key_ensure(rkeys[i], counting_warm, sh, &AGED, &res), 0);
    }

    run_callers(sh);
    assert_int_equal(atomic_load(&sh->reverified), 0);

    wl__test_suspend(10000 * (int64_t)MS); /* inherited by the callers forked below */
    run_callers(sh);
    assert_int_equal(atomic_load(&sh->reverified), 1);
    for (int i = 0; i < NCALLERS; i++) {
        assert_int_equal(sh->rc[i], 0);
        assert_int_equal(sh->epoch[i], epoch); /* re-verified: the same epoch */
        assert_true(sh->done_ns[i] >= atomic_load(&sh->verify_end_ns));
    }
    /* verified since the (faked) resume: the ready path again */
    run_callers(sh);
    assert_int_equal(atomic_load(&sh->reverified), 1);
    wl__test_suspend(-10000 * (int64_t)MS); /* this process's clocks as they are */
    for (int i = 0; i < NCALLERS; i++)
        wl_key_close(rkeys[i]);
    wl_close(rseg);
    wl_unlink(shm);
}

struct pg_resume {
    struct wlt_barrier go;
    int rc[NCALLERS];
};

static struct wl_pg_target *ptargets[NCALLERS];

static int pg_resume_caller(void *arg, int i)
{
    struct pg_resume *sh = arg;
    struct wl_result res;
    wlt_barrier_wait(&sh->go, NCALLERS);
    sh->rc[i] = i & 1 ? wl_pg_target_ensure(ptargets[i], &res) : wl_pg_ensure(rseg, CI, NULL, &res);
    return 0;
}

static void test_resume_pg_ensure_reverifies_once(void **state)
{
    const char *shm = segname();
    struct pg_resume *sh = wlt_shared(sizeof(*sh));
    struct wl_result res;
    pid_t pids[NCALLERS];
    long mark;
    (void)state;
    NEED_PG();
    pg_ensure_up();

    /* in a child: the faked suspend must not outlive the test */
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        if (wl_open(shm, NULL, &rseg) < 0 || wl_pg_ensure(rseg, CI, NULL, &res) < 0)
            _exit(2);
        for (int i = 0; i < NCALLERS; i++)
            if (wl_pg_target_open(rseg, CI, NULL, &ptargets[i]) < 0 ||
                wl_pg_target_ensure(ptargets[i], &res) < 0)
                _exit(3);
        mark = pgh_log_mark(&H);
        wl__test_suspend(10000 * (int64_t)MS);
        for (int i = 0; i < NCALLERS; i++)
            pids[i] = wlt_spawn(pg_resume_caller, sh, i);
        for (int i = 0; i < NCALLERS; i++)
            if (wlt_wait(pids[i], 20000) != 0 || sh->rc[i] != 0)
                _exit(4);
        int n = pgh_count_log_since(&H, mark, "connection received");
        print_message("connections after the faked resume, for %d callers: %d\n", NCALLERS, n);
        _exit(n == 1 ? 0 : 5);
    }
    assert_int_equal(wlt_wait(child, 30000), 0);
    wl_unlink(shm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_without_segment_fails_and_creates_nothing),
        cmocka_unit_test(test_check_ready_target_exits_0_without_connecting),
        cmocka_unit_test(test_check_sees_server_stop_and_stopped_checks),
        cmocka_unit_test(test_stages_say_how_far_the_warm_up_got),
        cmocka_unit_test(test_stage_is_reachable_while_the_server_recovers),
        cmocka_unit_test(test_resume_one_reverification_for_eight_callers),
        cmocka_unit_test(test_resume_pg_ensure_reverifies_once),
    };
    return cmocka_run_group_tests_name("ops", tests, group_setup, group_teardown);
}
