/*
 * Readiness answers that stay true through outages, without the coordinator:
 *   - transient failures never end a caller's wait: callers take turns as the prober and
 *     are released when the server is back;
 *   - WL_FAIL_FAST answers at once during an outage, with how long the target is down;
 *   - READY older than max_age_ms is re-verified once, through the single-flight;
 *   - waiters that are killed stop counting, and a takeover after the leader and the
 *     watcher died together does not wait on a gauge;
 *   - a forced reset of a stopped leader: callers are told the holder is alive, and
 *     nothing of the discarded leader reaches the slot;
 *   - a server that stays full is named (53300) with the call's deadline.
 * Generic cases drive wl_ensure with a warm function the test controls; the libpq ones run
 * against a throwaway PostgreSQL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define MAXP 40
#define MS 1000000ull

struct shared {
    char seg[64];
    char ci[1024];
    struct wlt_barrier bar;
    uint32_t nbar;
    struct wl_wait_opts wait;
    struct wl_pg_opts pg;
    _Atomic uint32_t calls;   /* warm() calls */
    _Atomic uint32_t gate;    /* futex: warm() blocks until it is non-zero */
    _Atomic uint32_t inwarm;  /* futex: bumped when warm() starts */
    _Atomic int32_t warm_pid; /* the last warm()'s pid */
    int warm_rc;              /* what warm() returns once the gate opens */
    _Atomic uint32_t returned;
    int rc[MAXP];
    int role[MAXP];
    uint64_t epoch[MAXP], t_done[MAXP];
    char err[MAXP][256];
};

static struct shared *S;
WLT_PG_SUITE

static int group_setup(void **state)
{
    char conf[128];
    (void)state;
    S = wlt_shared(sizeof(*S));
    snprintf(conf, sizeof(conf), "max_connections = 6\nsuperuser_reserved_connections = 0\n");
    if ((pg_reason = pgh_suite_up(&H, NULL, conf)))
        return 0;
    have_pg = 1;
    return 0;
}

static int setup(void **state)
{
    (void)state;
    memset(S, 0, sizeof(*S));
    snprintf(S->seg, sizeof(S->seg), "%s", wlt_segname());
    if (have_pg) {
        snprintf(S->ci, sizeof(S->ci), "%s", H.conninfo);
        if (!H.running)
            assert_int_equal(pgh_start(&H, 1), 0);
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    wl_unlink(S->seg);
    return 0;
}

static int warm(void *arg, struct wl_result *res)
{
    struct shared *s = arg;
    atomic_fetch_add(&s->calls, 1);
    atomic_store(&s->warm_pid, (int32_t)getpid());
    atomic_fetch_add(&s->inwarm, 1);
    wlt_wake(&s->inwarm);
    while (!atomic_load(&s->gate))
        wlt_wait_change(&s->gate, 0, 1000);
    res->attempts = 1;
    if (s->warm_rc)
        snprintf(res->error, sizeof(res->error), "connection refused (on purpose)");
    return s->warm_rc;
}

static void record(int i, int r, const struct wl_result *res)
{
    S->rc[i] = r;
    S->role[i] = res->role;
    S->epoch[i] = res->epoch;
    S->t_done[i] = wlt_now_ns();
    memcpy(S->err[i], res->error, sizeof(res->error));
    atomic_fetch_add(&S->returned, 1);
    wlt_wake(&S->returned);
}

/* A child: open the segment, meet the others at the barrier (if any), one call. */
static int child_call(struct shared *s, int i, int pg)
{
    struct wl_segment *seg;
    struct wl_result res = {0};
    int r = wl_open(s->seg, NULL, &seg);
    if (r == 0) {
        if (s->nbar)
            wlt_barrier_wait(&s->bar, s->nbar);
        r = pg ? wl_pg_ensure(seg, s->ci, &s->pg, &res)
               : wl_ensure(seg, "db", warm, s, &s->wait, &res);
    }
    record(i, r, &res);
    return 0;
}

static int child_ensure(void *arg, int i)
{
    return child_call(arg, i, 0);
}

static int child_pg(void *arg, int i)
{
    return child_call(arg, i, 1);
}

static void reap(pid_t *pids, int n, unsigned timeout_ms)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(wlt_wait(pids[i], timeout_ms), 0);
}

static struct wl_slot_info lookup(const char *key)
{
    struct wl_segment *seg;
    struct wl_slot_info info;
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_lookup(seg, key, &info), 0);
    wl_close(seg);
    return info;
}

static void pg_key(char *key, size_t len)
{
    struct wl_segment *seg;
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
#ifdef WL_PG_KEY_MAX
    assert_true(wl_pg_slot_key(seg, S->ci, key, len) > 0);
#else
    assert_true(wl_pg_key(S->ci, key, len) > 0);
#endif
    wl_close(seg);
}

/* Generic: a transient failure does not end anyone's wait: the leader and the followers
 * take turns as the prober (paced by the slot) until the target is back; a caller with a
 * deadline gets -ETIMEDOUT naming the last error. */
static void test_transient_failure_keeps_callers_waiting(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_wait_opts shortw = {.timeout_ms = 300};
    pid_t pids[8];
    (void)state;
    S->wait.timeout_ms = 20000;
    S->warm_rc = -ECONNREFUSED;
    pids[0] = wlt_spawn(child_ensure, S, 0);
    assert_int_equal(wlt_wait_change(&S->inwarm, 0, 10000), 0);
    for (int i = 1; i < 8; i++)
        pids[i] = wlt_spawn(child_ensure, S, i);
    atomic_store(&S->gate, 1);
    wlt_wake(&S->gate);
    /* Several transient failures in a row: nobody returns. */
    while (atomic_load(&S->calls) < 5)
        wlt_wait_change(&S->inwarm, atomic_load(&S->inwarm), 1000);
    assert_int_equal(atomic_load(&S->returned), 0);
    /* A short caller meanwhile: its deadline, with the outage and the last error named. */
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    int r = wl_ensure(seg, "db", warm, S, &shortw, &res);
    print_message("300 ms caller during the outage: %d %s\n", r, res.error);
    assert_int_equal(r, -ETIMEDOUT);
    assert_non_null(strstr(res.error, "down for"));
    assert_non_null(strstr(res.error, "refused"));
    struct wl_slot_info info = lookup("db");
    assert_true(info.down_ms >= 0);
    assert_int_equal(info.waiters >= 6, 1);
    /* The target is back: the next prober succeeds and everyone is released. */
    S->warm_rc = 0;
    reap(pids, 8, 20000);
    for (int i = 0; i < 8; i++)
        if (S->rc[i] != 0)
            fail_msg("caller %d: %d %s", i, S->rc[i], S->err[i]);
    info = lookup("db");
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.down_ms, -1);
    assert_int_equal(info.waiters, 0);
    print_message("transient: %u warm-ups until the target was back\n",
                  atomic_load(&S->calls));
    wl_close(seg);
}

/* WL_FAIL_FAST: during an outage, the current transient failure at once, with the outage's
 * duration; a slot that is not in an outage is waited for as usual. */
static void test_fail_fast_answers_during_an_outage(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_wait_opts ff = {.timeout_ms = 5000, .flags = WL_FAIL_FAST};
    pid_t p;
    (void)state;
    S->wait.timeout_ms = 20000;
    S->warm_rc = -ECONNREFUSED;
    /* An outage: the first warm-up fails transiently, a second prober is in warm(). */
    S->gate = 1;
    S->wait.flags = WL_FAIL_FAST; /* leads once and returns its own failure */
    p = wlt_spawn(child_ensure, S, 0);
    assert_int_equal(wlt_wait(p, 10000), 0);
    assert_int_equal(S->rc[0], -ECONNREFUSED);
    S->wait.flags = 0;
    S->gate = 0;
    p = wlt_spawn(child_ensure, S, 1);
    assert_int_equal(wlt_wait_change(&S->inwarm, 1, 10000), 0);

    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    wlt_sleep_ms(30); /* so that the outage has a measurable age */
    uint64_t t0 = wlt_now_ns();
    int r = wl_ensure(seg, "db", warm, S, &ff, &res);
    uint64_t ms = (wlt_now_ns() - t0) / MS;
    print_message("fail-fast during the outage: %d (%s) in %llu ms: %s\n", r, wl_strerror(r),
                  (unsigned long long)ms, res.error);
    assert_int_equal(r, -ECONNREFUSED);
    assert_true(ms < 50);
    assert_non_null(strstr(res.error, "has been down for"));
    assert_non_null(strstr(res.error, "refused"));
    struct wl_slot_info info = lookup("db");
    assert_int_equal(info.state, WL_WARMING);
    assert_true(info.down_ms >= 30);
    /* The server is back: the prober succeeds; fail-fast callers get READY. */
    S->warm_rc = 0;
    atomic_store(&S->gate, 1);
    wlt_wake(&S->gate);
    assert_int_equal(wlt_wait(p, 10000), 0);
    assert_int_equal(S->rc[1], 0);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &ff, &res), 0);
    info = lookup("db");
    assert_int_equal(info.down_ms, -1);
    wl_close(seg);
}

/* Generic max_age_ms: one caller re-verifies an aged READY while everyone else keeps the
 * ready path; a failed re-verification turns the slot into an outage. */
static void test_max_age_reverifies_once(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_wait_opts aged = {.timeout_ms = 5000, .max_age_ms = 100};
    pid_t pids[8];
    (void)state;
    S->gate = 1;
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &aged, &res), 0);
    assert_int_equal(res.epoch, 1);
    /* Fresh: no re-verification. */
    assert_int_equal(wl_ensure(seg, "db", warm, S, &aged, &res), 0);
    assert_int_equal(atomic_load(&S->calls), 1);
    wlt_sleep_ms(120); /* older than max_age (a lower bound, not a guess about speed) */
    /* The re-verification blocks in warm(): 7 callers meanwhile keep the ready path. */
    S->gate = 0;
    S->wait = aged;
    pids[0] = wlt_spawn(child_ensure, S, 0);
    assert_int_equal(wlt_wait_change(&S->inwarm, 1, 10000), 0);
    for (int i = 1; i < 8; i++)
        pids[i] = wlt_spawn(child_ensure, S, i);
    reap(pids + 1, 7, 10000);
    for (int i = 1; i < 8; i++) {
        assert_int_equal(S->rc[i], 0);
        assert_int_equal(S->epoch[i], 1);
    }
    assert_int_equal(atomic_load(&S->calls), 2); /* one re-verification for all */
    /* It fails (server gone): the verifier carries on under the outage semantics (it
     * probes again, paced) until its deadline, 5 s. */
    S->warm_rc = -ECONNREFUSED;
    atomic_store(&S->gate, 1);
    wlt_wake(&S->gate);
    while (atomic_load(&S->calls) < 4)
        wlt_wait_change(&S->inwarm, atomic_load(&S->inwarm), 1000);
    struct wl_slot_info info = lookup("db");
    assert_int_not_equal(info.state, WL_READY);
    assert_true(info.down_ms >= 0);
    assert_int_equal(info.invalidations, 1);
    /* An invalidation of an old epoch changes nothing. */
    assert_int_equal(wl_invalidate(seg, "db", 0), 0);
    /* The server is back: the prober's next try succeeds, epoch 2. */
    S->warm_rc = 0;
    assert_int_equal(wlt_wait(pids[0], 10000), 0);
    assert_int_equal(S->rc[0], 0);
    assert_int_equal(S->epoch[0], 2);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &aged, &res), 0);
    assert_int_equal(res.epoch, 2);
    wl_close(seg);
}

/* Killed followers stop counting, and after the leader and (very likely) the watcher die
 * together, a survivor takes over within the probe interval, however many were killed. */
static void test_killed_waiters_stop_counting(void **state)
{
    pid_t pids[MAXP], leader;
    int n = 30;
    (void)state;
    S->wait.timeout_ms = 20000;
    leader = wlt_spawn(child_ensure, S, 0);
    assert_int_equal(wlt_wait_change(&S->inwarm, 0, 10000), 0);
    for (int i = 1; i <= n; i++)
        pids[i] = wlt_spawn(child_ensure, S, i);
    uint64_t end = wlt_now_ns() + 10000 * MS;
    struct wl_slot_info info;
    do {
        info = lookup("db");
        if (info.waiters == (uint32_t)n)
            break;
        wlt_sleep_ms(5);
    } while (wlt_now_ns() < end);
    assert_int_equal(info.waiters, n);
    /* Kill all followers but the last, then the leader: the survivor must take over. */
    for (int i = 1; i < n; i++)
        kill(pids[i], SIGKILL);
    for (int i = 1; i < n; i++)
        assert_int_equal(wlt_wait(pids[i], 10000), 128 + SIGKILL);
    info = lookup("db");
    assert_int_equal(info.waiters, 1);
    uint32_t in = atomic_load(&S->inwarm);
    atomic_store(&S->gate, 1); /* the survivor's warm-up will not block */
    uint64_t t0 = wlt_now_ns();
    kill(leader, SIGKILL);
    assert_int_equal(wlt_wait(leader, 10000), 128 + SIGKILL);
    assert_int_equal(wlt_wait_change(&S->inwarm, in, 5000), 0);
    uint64_t ms = (wlt_now_ns() - t0) / MS;
    print_message("takeover by the one survivor of %d followers: %llu ms\n", n,
                  (unsigned long long)ms);
    assert_true(ms < 3000); /* generous; the probe interval is 250-750 ms */
    assert_int_equal(wlt_wait(pids[n], 10000), 0);
    assert_int_equal(S->rc[n], 0);
    info = lookup("db");
    assert_int_equal(info.waiters, 0);
    assert_int_equal(info.state, WL_READY);
}

/* wl_reset(force) while the leader is stopped: callers are told that the holder is alive,
 * and when it resumes its publish is refused without touching the slot. */
static void test_forced_reset_of_a_stopped_leader(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_wait_opts w = {.timeout_ms = 300};
    pid_t leader;
    (void)state;
    S->wait.timeout_ms = 20000;
    leader = wlt_spawn(child_ensure, S, 0);
    assert_int_equal(wlt_wait_change(&S->inwarm, 0, 10000), 0);
    kill(leader, SIGSTOP);
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_reset(seg, 0), -EBUSY);
    assert_int_equal(wl_reset(seg, 1), 1);
    struct wl_slot_info info = lookup("db");
    assert_int_equal(info.state, WL_COLD);
    int r = wl_ensure(seg, "db", warm, S, &w, &res);
    print_message("after the forced reset: %d %s\n", r, res.error);
    assert_int_equal(r, -ETIMEDOUT);
    assert_non_null(strstr(res.error, "is alive and holds the slot's lock"));
    /* It resumes and finishes: nothing of its result reaches the slot. */
    atomic_store(&S->gate, 1);
    kill(leader, SIGCONT);
    wlt_wake(&S->gate);
    assert_int_equal(wlt_wait(leader, 10000), 0);
    assert_int_equal(S->rc[0], -ECANCELED);
    info = lookup("db");
    assert_int_equal(info.state, WL_COLD);
    assert_int_equal(info.epoch, 0);
    assert_int_equal(info.ready_age_ms, -1);
    assert_int_equal(info.time_to_ready_ms, -1);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &w, &res), 0);
    assert_int_equal(res.epoch, 1);
    wl_close(seg);
}

struct thread_call {
    struct wl_segment *seg;
    int rc;
    int role;
};

static void *thread_ensure(void *arg)
{
    struct thread_call *t = arg;
    struct wl_result res;
    struct wl_wait_opts w = {.timeout_ms = 10000};
    t->rc = wl_ensure(t->seg, "db", warm, S, &w, &res);
    t->role = res.role;
    return NULL;
}

/* Threads of one process sharing one handle: one leader per epoch, all ready. */
static void test_threads_share_a_handle(void **state)
{
    struct wl_segment *seg;
    struct thread_call t[8];
    pthread_t th[8];
    int leaders = 0;
    (void)state;
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    for (int i = 0; i < 8; i++) {
        t[i].seg = seg;
        assert_int_equal(pthread_create(&th[i], NULL, thread_ensure, &t[i]), 0);
    }
    assert_int_equal(wlt_wait_change(&S->inwarm, 0, 10000), 0);
    atomic_store(&S->gate, 1);
    wlt_wake(&S->gate);
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].rc, 0);
        leaders += t[i].role == WL_LEADER;
    }
    assert_int_equal(leaders, 1);
    assert_int_equal(atomic_load(&S->calls), 1);
    assert_int_equal(lookup("db").waiters, 0);
    wl_close(seg);
}

/* A prepared key: the same single-flight; its ready path follows invalidations. */
static void test_prepared_key(void **state)
{
    struct wl_segment *seg;
    struct wl_key *k;
    struct wl_result res;
    (void)state;
    S->gate = 1;
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_key_open(seg, "db", &k), 0);
    assert_int_equal(wl_key_ensure(k, warm, S, NULL, &res), 0); /* a cold slot: warms */
    assert_int_equal(res.role, WL_LEADER);
    assert_int_equal(res.epoch, 1);
    assert_int_equal(atomic_load(&S->calls), 1);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(wl_key_ensure(k, warm, S, NULL, &res), 0);
        assert_int_equal(res.epoch, 1);
        assert_int_equal(res.role, WL_FOLLOWER);
    }
    assert_int_equal(wl_key_invalidate(k, 1), 1);
    assert_int_equal(wl_key_ensure(k, warm, S, NULL, &res), 0);
    assert_int_equal(res.epoch, 2);
    assert_int_equal(atomic_load(&S->calls), 2);
    /* Another process's invalidation is seen too. */
    assert_int_equal(wl_invalidate(seg, "db", 2), 1);
    assert_int_equal(wl_key_ensure(k, warm, S, NULL, NULL), 0);
    assert_int_equal(atomic_load(&S->calls), 3);
    wl_key_close(k);
    wl_close(seg);
}

/* libpq, no coordinator: 16 callers during an outage and 16 right after the server is
 * back all return 0; the first 16 are released soon after the server's ready time. */
static void test_pg_outage_without_coordinator(void **state)
{
    pid_t pids[32];
    (void)state;
    NEED_PG();
    S->pg.wait.timeout_ms = 20000;
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    for (int i = 0; i < 16; i++)
        pids[i] = wlt_spawn(child_pg, S, i);
    /* Every caller is in the slot before the server starts (waiting or probing). */
    char key[1024];
    pg_key(key, sizeof(key));
    uint64_t end = wlt_now_ns() + 60000 * MS;
    struct wl_segment *seg;
    struct wl_slot_info info = {0};
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    for (;;) {
        int r = wl_lookup(seg, key, &info);
        if (r == 0 && info.waiters >= 15 && info.down_ms >= 0)
            break;
        if (wlt_now_ns() >= end)
            fail_msg("after 60 s: lookup %d, state %s, waiters %u, down_ms %lld, key %s", r,
                     wl_state_name(info.state), info.waiters, (long long)info.down_ms, key);
        wlt_sleep_ms(5);
    }
    assert_int_equal(S->returned, 0);
    long mark = pgh_log_mark(&H);
    assert_int_equal(pgh_start(&H, 1), 0);
    uint64_t up = wlt_now_ns(); /* pg_ctl -w returned: the server accepts connections */
    for (int i = 16; i < 32; i++)
        pids[i] = wlt_spawn(child_pg, S, i);
    reap(pids, 32, 30000);
    uint64_t worst = 0;
    for (int i = 0; i < 32; i++) {
        if (S->rc[i] != 0)
            fail_msg("caller %d: %d %s", i, S->rc[i], S->err[i]);
        if (i < 16 && S->t_done[i] > up && S->t_done[i] - up > worst)
            worst = S->t_done[i] - up;
    }
    print_message("outage without the coordinator: the first 16 released at most %.1f ms "
                  "after pg_ctl -w returned; connections seen by the server: %d\n",
                  (double)worst / 1e6, pgh_count_log_since(&H, mark, "connection received"));
    assert_true(worst < 2000 * MS); /* generous: the prober's backoff is capped at 250 ms */
    assert_int_equal(wl_lookup(seg, key, &info), 0);
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.down_ms, -1);
    assert_int_equal(info.waiters, 0);
    wl_close(seg);
}

/* libpq WL_FAIL_FAST with the server stopped: -ECONNREFUSED within 50 ms, naming the
 * outage's duration; 0 once the server is back. */
static void test_pg_fail_fast(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_pg_opts ff = {.wait = {.timeout_ms = 5000, .flags = WL_FAIL_FAST}};
    (void)state;
    NEED_PG();
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    int r = wl_pg_ensure(seg, S->ci, &ff, &res); /* leads one attempt, starts the outage */
    assert_int_equal(r, -ECONNREFUSED);
    wlt_sleep_ms(20);
    uint64_t t0 = wlt_now_ns();
    r = wl_pg_ensure(seg, S->ci, &ff, &res);
    uint64_t us = (wlt_now_ns() - t0) / 1000;
    print_message("fail-fast, server stopped: %d (%s) in %.2f ms: %s\n", r, wl_strerror(r),
                  us / 1000.0, res.error);
    assert_int_equal(r, -ECONNREFUSED);
    assert_true(us < 50000);
    assert_true(strstr(res.error, "down for") != NULL);
    assert_int_equal(pgh_start(&H, 1), 0);
    /* The next fail-fast caller past the pacing probes once and finds it up. */
    uint64_t end = wlt_now_ns() + 5000 * MS;
    while ((r = wl_pg_ensure(seg, S->ci, &ff, &res)) != 0 && wlt_now_ns() < end)
        wlt_sleep_ms(20);
    assert_int_equal(r, 0);
    wl_close(seg);
}

/* libpq max_age_ms: an aged READY is re-verified with one verify_sql; with the server
 * stopped the callers get the outage semantics and are released when it is back. */
static void test_pg_max_age(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    /* 1 s: the herd below must be served within 1 s of the one verification */
    struct wl_pg_opts o = {.wait = {.timeout_ms = 20000, .max_age_ms = 1000}};
    char key[1024];
    pid_t pids[8];
    (void)state;
    NEED_PG();
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_pg_ensure(seg, S->ci, &o, &res), 0);
    pg_key(key, sizeof(key));
    wlt_sleep_ms(1050); /* older than max_age: a lower bound */
    /* Server up: one verification (a connection), no new epoch. */
    long mark = pgh_log_mark(&H);
    S->pg = o;
    S->nbar = 8;
    for (int i = 0; i < 8; i++)
        pids[i] = wlt_spawn(child_pg, S, i);
    reap(pids, 8, 20000);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(S->rc[i], 0);
        assert_int_equal(S->epoch[i], 1);
    }
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 1);
    struct wl_slot_info info;
    assert_int_equal(wl_lookup(seg, key, &info), 0);
    assert_int_equal(info.warmups, 1);
    assert_true(info.verified_age_ms >= 0 && info.verified_age_ms < info.ready_age_ms);
    /* Server stopped, READY aged: the re-verification fails, the callers wait (outage
     * semantics) and are released when the server is back, at a new epoch. */
    wlt_sleep_ms(1050); /* older than max_age: a lower bound */
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    S->returned = 0;
    for (int i = 0; i < 8; i++)
        pids[i] = wlt_spawn(child_pg, S, i);
    uint64_t end = wlt_now_ns() + 10000 * MS;
    for (;;) {
        assert_int_equal(wl_lookup(seg, key, &info), 0);
        if (info.state != WL_READY && info.down_ms >= 0)
            break;
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(5);
    }
    assert_int_equal(pgh_start(&H, 1), 0);
    reap(pids, 8, 30000);
    int newer = 0;
    for (int i = 0; i < 8; i++) {
        if (S->rc[i] != 0)
            fail_msg("caller %d: %d %s", i, S->rc[i], S->err[i]);
        newer += S->epoch[i] == 2;
    }
    assert_true(newer >= 1);
    assert_int_equal(wl_lookup(seg, key, &info), 0);
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.epoch, 2);
    assert_int_equal(info.warmups, 2);
    S->nbar = 0;
    wl_close(seg);
}

/* A server whose connections stay full: wl_pg_connect's error names its deadline and
 * 53300, not the last attempt's few milliseconds. */
static void test_pg_connect_names_53300_and_the_deadline(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_pg_opts o = {.wait = {.timeout_ms = 3000}};
    PGconn *held[16];
    int n = 0;
    (void)state;
    NEED_PG();
    assert_int_equal(wl_open(S->seg, NULL, &seg), 0);
    assert_int_equal(wl_pg_ensure(seg, S->ci, &o, &res), 0); /* READY */
    for (; n < 16; n++) {
        held[n] = PQconnectdb(S->ci);
        if (PQstatus(held[n]) != CONNECTION_OK) {
            assert_non_null(strstr(PQerrorMessage(held[n]), "too many clients"));
            PQfinish(held[n]);
            break;
        }
    }
    assert_true(n < 16);
    PGconn *c = wl_pg_connect(seg, S->ci, &o, &res);
    print_message("full server: %s\n", res.error);
    assert_null(c);
    assert_non_null(strstr(res.error, "53300"));
    assert_non_null(strstr(res.error, "deadline of"));
    assert_string_equal(res.sqlstate, "53300");
    while (n > 0)
        PQfinish(held[--n]);
    wl_close(seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_transient_failure_keeps_callers_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fail_fast_answers_during_an_outage, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_max_age_reverifies_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_waiters_stop_counting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_forced_reset_of_a_stopped_leader, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_threads_share_a_handle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prepared_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_outage_without_coordinator, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_fail_fast, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_max_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pg_connect_names_53300_and_the_deadline, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
}
