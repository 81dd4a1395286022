/*
 * wl_pg_ensure / wl_pg_connect with herds of real processes against a real PostgreSQL, on
 * both event-loop backends (WARMLOCK_IO=uring and poll): server already up, a cold start
 * 500 ms late, a crash-recovery start (57P03), a wrong password, a server that never comes
 * up, and a restart after READY that breaks everyone's connections.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define PASSWORD "herd-Pa55word"
#define MAXP 64

WLT_PG_SUITE
static char CI[1024], BAD_PW[1024], KEY[512];

struct herd {
    char seg[64];
    char ci[1024];
    uint32_t n;
    struct wlt_barrier bar;
    struct wl_pg_opts o;
    int repeat_ms;           /* call again every 50 ms for this long (failure TTL test) */
    int broken_conn;         /* scenario 9: connect first, then query after the restart */
    _Atomic uint32_t connected;
    _Atomic uint32_t go;
    int rc[MAXP], role[MAXP], attempts[MAXP], query_ok[MAXP], saw_broken[MAXP];
    uint64_t epoch[MAXP], done_ns[MAXP];
    char err[MAXP][256];
};

static int group_setup(void **state)
{
    (void)state;
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, "max_connections = 150")))
        return 0;
    have_pg = 1;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    snprintf(BAD_PW, sizeof(BAD_PW), "%s password=not-the-password", H.conninfo);
    if (wl_pg_key(CI, KEY, sizeof(KEY)) < 0)
        have_pg = 0, pg_reason = "wl_pg_key failed on the harness's conninfo";
    return 0;
}

static int query_one(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT 1");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok;
}

static int worker(void *arg, int i)
{
    struct herd *h = arg;
    struct wl_segment *seg;
    struct wl_result r;
    uint64_t end;

    if (wl_open(h->seg, NULL, &seg) < 0)
        return 90;
    if (h->broken_conn) {
        PGconn *c = wl_pg_connect(seg, h->ci, &h->o, &r);
        if (!c)
            return 91;
        uint64_t epoch = r.epoch;
        atomic_fetch_add(&h->connected, 1);
        wlt_wake(&h->connected);
        wlt_wait_change(&h->go, 0, 30000);
        /* The server restarted under us: our connection is broken. Tell everyone. */
        if (!query_one(c)) {
            char k[WL_PG_KEY_MAX];
            h->saw_broken[i] = 1;
            if (wl_pg_slot_key(seg, h->ci, k, sizeof(k)) > 0)
                wl_invalidate(seg, k, epoch);
        }
        PQfinish(c);
    } else if (h->n > 1) {
        wlt_barrier_wait(&h->bar, h->n);
    }
    end = wlt_now_ns() + (uint64_t)h->repeat_ms * 1000000u;
    do {
        h->rc[i] = wl_pg_ensure(seg, h->ci, &h->o, &r);
        if (h->repeat_ms)
            wlt_sleep_ms(50);
    } while (wlt_now_ns() < end);
    h->done_ns[i] = wlt_now_ns();
    h->role[i] = r.role;
    h->epoch[i] = r.epoch;
    h->attempts[i] = (int)r.attempts;
    memcpy(h->err[i], r.error, sizeof(r.error));
    if (h->rc[i] == 0) { /* and the worker's own query */
        PGconn *c = wl_pg_connect(seg, h->ci, &h->o, &r);
        h->query_ok[i] = c && query_one(c);
        if (!h->query_ok[i])
            snprintf(h->err[i], sizeof(h->err[i]), "own connection: %.200s",
                     c ? PQerrorMessage(c) : r.error);
        PQfinish(c);
    }
    wl_close(seg);
    return 0;
}

static struct herd *new_herd(uint32_t n, const char *ci)
{
    struct herd *h = wlt_shared(sizeof(*h));
    h->n = n;
    snprintf(h->seg, sizeof(h->seg), "%s", wlt_segname());
    snprintf(h->ci, sizeof(h->ci), "%s", ci);
    h->o.wait.timeout_ms = 30000;
    return h;
}

static void spawn(struct herd *h, pid_t *pids)
{
    for (uint32_t i = 0; i < h->n; i++)
        pids[i] = wlt_spawn(worker, h, (int)i);
}

static void reap(struct herd *h, pid_t *pids)
{
    for (uint32_t i = 0; i < h->n; i++)
        assert_int_equal(wlt_wait(pids[i], 60000), 0);
}

static int count_leaders(struct herd *h)
{
    int n = 0;
    for (uint32_t i = 0; i < h->n; i++)
        n += h->role[i] == WL_LEADER;
    return n;
}

static void expect_all_ready(struct herd *h)
{
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->rc[i] != 0)
            fail_msg("worker %u: %d %s", i, h->rc[i], h->err[i]);
        if (!h->query_ok[i])
            fail_msg("worker %u: its own query failed: %s", i, h->err[i]);
        assert_int_equal(h->epoch[i], h->epoch[0]);
    }
    assert_int_equal(count_leaders(h), 1);
}

static int leader_attempts(struct herd *h)
{
    for (uint32_t i = 0; i < h->n; i++)
        if (h->role[i] == WL_LEADER)
            return h->attempts[i];
    return 0;
}

/* 1. Server up: one leader; 32 processes afterwards take the ready path (no connection of
 * the engine's; each opens only its own). */
static void test_herd_server_up_then_ready_path(void **state)
{
    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    struct herd *h = new_herd(1, CI);
    pid_t pids[MAXP];
    spawn(h, pids);
    reap(h, pids);
    assert_int_equal(h->rc[0], 0);
    assert_int_equal(h->role[0], WL_LEADER);
    uint64_t epoch = h->epoch[0];

    h->n = 32;
    long mark = pgh_log_mark(&H);
    spawn(h, pids);
    reap(h, pids);
    for (uint32_t i = 0; i < 32; i++) {
        assert_int_equal(h->rc[i], 0);
        assert_int_equal(h->role[i], WL_FOLLOWER);
        assert_int_equal(h->epoch[i], epoch);
        assert_int_equal(h->attempts[i], 0);
    }
    /* No verification after the first: one warm-up in all, and at least the 32 own
     * connections (more only where a loaded machine made a login outlast its attempt). */
    struct wl_segment *seg;
    struct wl_slot_info info;
    assert_int_equal(wl_open(h->seg, NULL, &seg), 0);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.warmups, 1);
    assert_int_equal(info.invalidations, 0);
    wl_close(seg);
    assert_true(pgh_count_log_since(&H, mark, "connection received") >= 32);
    wl_unlink(h->seg);
}

/* When the herd's last caller returned. */
static uint64_t last_done(const struct herd *h)
{
    uint64_t last = 0;
    for (uint32_t i = 0; i < h->n; i++)
        last = h->done_ns[i] > last ? h->done_ns[i] : last;
    return last;
}

/* 2. Cold start: 64 processes start, the server 500 ms later. */
static void test_herd_cold_start_server_late(void **state)
{
    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    struct herd *h = new_herd(64, CI);
    pid_t pids[MAXP];
    long mark = pgh_log_mark(&H);
    spawn(h, pids);
    wlt_sleep_ms(500);
    uint64_t t0 = wlt_now_ns();
    assert_int_equal(pgh_start(&H, 0), 0);
    reap(h, pids);
    expect_all_ready(h);
    uint64_t last = last_done(h);
    /* Rejections by the server; a client that gave up on a slow login (a loaded machine)
     * shows as "connection to client lost", which is not a rejection. */
    int fatal = pgh_count_log_since(&H, mark, "FATAL") -
                pgh_count_log_since(&H, mark, "connection to client lost");
    int conns = pgh_count_log_since(&H, mark, "connection received");
    print_message("cold start: all 64 ready %.0f ms after the server start; leader attempts %d; "
                  "server: %d connections (64 own + verification), %d FATAL\n",
                  (last - t0) / 1e6, leader_attempts(h), conns, fatal);
    assert_true(fatal <= 10);                 /* a handful: only the leader probes */
    assert_true(fatal <= leader_attempts(h)); /* every rejection was the leader's */
    wl_unlink(h->seg);
}

/* 3. Crash-recovery start: 57P03 is retried by the one leader. */
static void test_herd_crash_recovery_start(void **state)
{
    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    assert_int_equal(pgh_crash(&H), 0);
    struct herd *h = new_herd(64, CI);
    pid_t pids[MAXP];
    long mark = pgh_log_mark(&H);
    spawn(h, pids);
    uint64_t t0 = wlt_now_ns();
    /* held in recovery until the leader has been refused with 57P03, however fast replay is */
    assert_int_equal(pgh_start_held(&H), 0);
    assert_int_equal(pgh_wait_57P03_since(&H, mark, 1, 20000), 0);
    assert_int_equal(pgh_release(&H, 0), 0);
    reap(h, pids);
    expect_all_ready(h);
    uint64_t last = last_done(h);
    int n57 = pgh_count_log_57P03_since(&H, mark);
    int fatal = pgh_count_log_since(&H, mark, "FATAL") -
                pgh_count_log_since(&H, mark, "connection to client lost");
    print_message("crash recovery: all 64 ready %.0f ms after the server start; leader attempts "
                  "%d; server: %d FATAL, %d of them 57P03\n",
                  (last - t0) / 1e6, leader_attempts(h), fatal, n57);
    assert_true(leader_attempts(h) > 1);
    assert_true(fatal <= leader_attempts(h)); /* every rejection was the leader's */
    /* and it paced itself: a rate, not a count, since replay under load can take 20 s */
    assert_true(fatal <= (int)((last - t0) / 25000000u) + 10);
    wl_unlink(h->seg);
}

/* 4. Wrong password: every caller gets -EACCES quickly with the server's message; the
 * server sees one authentication attempt per fail_ttl_ms, not one per process. */
static void test_herd_wrong_password_one_attempt_per_ttl(void **state)
{
    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    struct herd *h = new_herd(16, BAD_PW);
    h->o.wait.fail_ttl_ms = 1000;
    h->repeat_ms = 1500; /* everyone keeps asking for 1.5 s */
    pid_t pids[MAXP];
    long mark = pgh_log_mark(&H);
    spawn(h, pids);
    reap(h, pids);
    for (uint32_t i = 0; i < h->n; i++) {
        assert_int_equal(h->rc[i], -EACCES);
        assert_non_null(strstr(h->err[i], "password authentication failed"));
    }
    int conns = pgh_count_log_since(&H, mark, "connection received");
    print_message("16 processes asking for 1.5 s with a wrong password: %d authentication "
                  "attempts\n", conns);
    assert_true(conns >= 1 && conns <= 3);
    wl_unlink(h->seg);
}

/* 6. Server never comes up: every caller returns -ETIMEDOUT at its deadline, with what was
 * tried and the last error. */
static void test_herd_server_never_up_times_out(void **state)
{
    wlt_backend(state);
    NEED_PG();
    if (H.running)
        assert_int_equal(pgh_stop(&H, "fast"), 0);
    struct herd *h = new_herd(16, CI);
    h->o.wait.timeout_ms = 1000;
    pid_t pids[MAXP];
    uint64_t t0 = wlt_now_ns();
    spawn(h, pids);
    reap(h, pids);
    for (uint32_t i = 0; i < h->n; i++) {
        assert_int_equal(h->rc[i], -ETIMEDOUT);
        uint64_t took = h->done_ns[i] - t0;
        if (took < 950000000ull || took > 3000000000ull) /* from before the spawn: a loaded
                                                             machine forks and wakes late */
            fail_msg("worker %u returned after %.0f ms", i, took / 1e6);
        /* the leader: "N attempts over M ms; last error: ..."; a follower whose deadline
         * came first: "leader pid P has been warming for M ms; its last attempt: ..." */
        if (!(strstr(h->err[i], "attempts") && strstr(h->err[i], "last error")) &&
            !strstr(h->err[i], "its last attempt: "))
            fail_msg("worker %u: message '%s' does not say what was tried", i, h->err[i]);
    }
    wl_unlink(h->seg);
    pg_ensure_up();
}

/* 9. After READY the server restarts: everyone's connection breaks, they invalidate the
 * epoch, one process re-verifies, the others wait, all succeed in the new epoch. */
static void test_herd_restart_after_ready_one_reverification(void **state)
{
    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    struct herd *h = new_herd(16, CI);
    h->broken_conn = 1;
    pid_t pids[MAXP];
    spawn(h, pids);
    for (int i = 0; i < 3000 && atomic_load(&h->connected) < h->n; i++)
        wlt_sleep_ms(5);
    assert_int_equal(atomic_load(&h->connected), h->n);
    struct wl_segment *seg;
    struct wl_slot_info info;
    assert_int_equal(wl_open(h->seg, NULL, &seg), 0);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    uint64_t warmups = info.warmups, epoch = info.epoch;

    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pgh_start(&H, 1), 0);
    atomic_store(&h->go, 1);
    wlt_wake(&h->go);
    reap(h, pids);
    int broken = 0;
    for (uint32_t i = 0; i < h->n; i++)
        broken += h->saw_broken[i];
    expect_all_ready(h);
    assert_int_equal(broken, (int)h->n);
    assert_int_equal(h->epoch[0], epoch + 1);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.warmups, warmups + 1);
    assert_int_equal(info.invalidations, 1);
    wl_close(seg);
    wl_unlink(h->seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WLT_BOTH(test_herd_server_up_then_ready_path),
        WLT_BOTH(test_herd_cold_start_server_late),
        WLT_BOTH(test_herd_crash_recovery_start),
        WLT_BOTH(test_herd_wrong_password_one_attempt_per_ttl),
        WLT_BOTH(test_herd_server_never_up_times_out),
        WLT_BOTH(test_herd_restart_after_ready_one_reverification),
    };
    return cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
}
