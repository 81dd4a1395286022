/* wl_ensure across real processes: single flight, takeover, failures, invalidation,
 * deadlines, independence of keys, and the pitfalls of fork and stale generations. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/seccomp.h>

#include "lib/internal.h"
#include "proc.h"
#include "warmlock.h"

#define MAXP 256
#define MAXCALLS 64

struct shared {
    char name[64];
    struct wlt_barrier bar;
    uint32_t nproc;
    /* the warm function's behaviour */
    uint32_t warm_ms;       /* how long the first call takes */
    uint32_t warm_ms_later; /* how long later calls take */
    int warm_rc;            /* what it returns */
    int fork_and_exit;      /* the first call forks; the parent exits, the child warms on */
    int stop_self;          /* the first call stops itself (SIGSTOP) */
    struct wl_wait_opts wait;
    /* what happened */
    _Atomic uint32_t calls;
    _Atomic uint32_t started; /* futex: bumped when a call starts */
    _Atomic int32_t warm_pid[MAXCALLS];
    _Atomic uint64_t start_ns[MAXCALLS], end_ns[MAXCALLS];
    int rc[MAXP];
    int role[MAXP];
    uint64_t epoch[MAXP];
    uint64_t done_ns[MAXP];
    char err[MAXP][256];
    int child_rc; /* the forked child's wl_ensure result (fork_and_exit) */
    pid_t ns_child; /* pid 1 of a new PID namespace, as seen from ours */
    int hold;                 /* children wait for `release` before exiting */
    _Atomic uint32_t release;
    _Atomic uint32_t returned; /* children that returned from wl_ensure */
    char child_err[256];
};

static struct shared *S;

static int warm(void *arg, struct wl_result *res)
{
    struct shared *s = arg;
    uint32_t i = atomic_fetch_add(&s->calls, 1);
    if (i >= MAXCALLS)
        i = MAXCALLS - 1;
    atomic_store(&s->warm_pid[i], (int32_t)getpid());
    atomic_store(&s->start_ns[i], wlt_now_ns());
    atomic_fetch_add(&s->started, 1);
    wlt_wake(&s->started);
    if (i == 0 && s->fork_and_exit) {
        pid_t c = fork();
        if (c > 0)
            _exit(0); /* the leader exits; its child goes on "warming" */
        wlt_sleep_ms(s->warm_ms);
        return 0;
    }
    if (i == 0 && s->stop_self)
        raise(SIGSTOP);
    wlt_sleep_ms(i == 0 ? s->warm_ms : s->warm_ms_later);
    atomic_store(&s->end_ns[i], wlt_now_ns());
    res->attempts = 1;
    if (s->warm_rc) {
        snprintf(res->error, sizeof(res->error), "warm-up %u failed on purpose", i);
        memcpy(res->sqlstate, "28P01", 6);
    }
    return s->warm_rc;
}

static int child_ensure(void *arg, int idx)
{
    struct shared *s = arg;
    struct wl_segment *seg;
    struct wl_result res;
    int r;

    if ((r = wl_open(s->name, NULL, &seg)) < 0) {
        snprintf(s->err[idx], sizeof(s->err[idx]), "open: %s", wl_last_error());
        s->rc[idx] = r;
        return 1;
    }
    if (s->bar.go == 0 && s->nproc)
        wlt_barrier_wait(&s->bar, s->nproc);
    r = wl_ensure(seg, "db", warm, s, &s->wait, &res);
    if (r == -ECHILD) { /* we are the leader's forked child */
        s->child_rc = r;
        memcpy(s->child_err, res.error, sizeof(res.error));
        return 0;
    }
    s->rc[idx] = r;
    s->role[idx] = res.role;
    s->epoch[idx] = res.epoch;
    s->done_ns[idx] = wlt_now_ns();
    memcpy(s->err[idx], res.error, sizeof(res.error));
    atomic_fetch_add(&s->returned, 1);
    if (s->hold) /* exit later, so exits do not compete with the release being measured */
        wlt_wait_change(&s->release, 0, 20000);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    S = wlt_shared(sizeof(*S));
    memset(S, 0, sizeof(*S));
    snprintf(S->name, sizeof(S->name), "%s", wlt_segname());
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    wl_unlink(S->name);
    munmap(S, sizeof(*S));
    return 0;
}

static void spawn_all(pid_t *pids, uint32_t n)
{
    S->nproc = n;
    for (uint32_t i = 0; i < n; i++)
        pids[i] = wlt_spawn(child_ensure, S, (int)i);
}

static void reap_all(pid_t *pids, uint32_t n, unsigned timeout_ms)
{
    for (uint32_t i = 0; i < n; i++)
        if (pids[i] > 0)
            assert_int_equal(wlt_wait(pids[i], timeout_ms), 0);
}

/* 1. 64 processes, one 200 ms warm-up: it runs once, one leader, one epoch. */
static void test_ensure_64_processes_warm_once(void **state)
{
    pid_t pids[64];
    int leaders = 0;
    uint64_t release_max = 0;
    (void)state;

    S->warm_ms = 200;
    S->hold = 1;
    spawn_all(pids, 64);
    for (int i = 0; i < 2000 && atomic_load(&S->returned) < 64; i++)
        wlt_sleep_ms(5);
    atomic_store(&S->release, 1);
    wlt_wake(&S->release);
    reap_all(pids, 64, 20000);
    assert_int_equal(atomic_load(&S->calls), 1);
    for (int i = 0; i < 64; i++) {
        if (S->rc[i] != 0)
            fail_msg("process %d: %d %s", i, S->rc[i], S->err[i]);
        leaders += S->role[i] == WL_LEADER;
        assert_int_equal(S->epoch[i], S->epoch[0]);
        if (S->role[i] == WL_FOLLOWER && S->done_ns[i] > S->end_ns[0] &&
            S->done_ns[i] - S->end_ns[0] > release_max)
            release_max = S->done_ns[i] - S->end_ns[0];
    }
    assert_int_equal(leaders, 1);
    assert_true(S->epoch[0] >= 1);
    printf("# release of 63 waiters: last one returned %.3f ms after the warm-up ended\n",
           release_max / 1e6);
    assert_true(release_max < 500000000ull); /* generous: a correctness bound */
}

/* 2. SIGKILL the leader mid-warm-up, 20 times: one waiter takes over within 50 ms, the
 * warm function never runs twice at once, every survivor returns 0. */
static void test_ensure_follower_takes_over_when_leader_killed(void **state)
{
    enum { ROUNDS = 20, N = 8 };
    uint64_t lat[ROUNDS];
    (void)state;

    for (int round = 0; round < ROUNDS; round++) {
        pid_t pids[N];
        memset(S, 0, sizeof(*S));
        snprintf(S->name, sizeof(S->name), "%s", wlt_segname());
        S->warm_ms = 5000;
        S->warm_ms_later = 20;
        spawn_all(pids, N);
        assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
        wlt_sleep_ms(20 + (unsigned)(round % 5) * 10); /* let the others queue up */
        pid_t leader = atomic_load(&S->warm_pid[0]);
        uint64_t kill_ns = wlt_now_ns();
        assert_int_equal(kill(leader, SIGKILL), 0);
        assert_int_equal(wlt_wait_change(&S->started, 1, 2000), 0);
        uint64_t start2 = atomic_load(&S->start_ns[1]);
        assert_true(start2 >= kill_ns); /* never two warm-ups at once */
        lat[round] = start2 - kill_ns;
        int survivors = 0;
        for (int i = 0; i < N; i++) {
            if (pids[i] == leader) {
                assert_int_equal(wlt_wait(pids[i], 5000), 128 + SIGKILL);
                continue;
            }
            assert_int_equal(wlt_wait(pids[i], 10000), 0);
            if (S->rc[i] != 0)
                fail_msg("round %d process %d: %d %s", round, i, S->rc[i], S->err[i]);
            survivors++;
        }
        assert_int_equal(survivors, N - 1);
        assert_int_equal(atomic_load(&S->calls), 2);

        struct wl_segment *seg;
        struct wl_slot_info info;
        assert_int_equal(wl_open(S->name, NULL, &seg), 0);
        assert_int_equal(wl_snapshot(seg, &info, 1), 1);
        assert_int_equal(info.state, WL_READY);
        assert_int_equal(info.takeovers, 1);
        assert_int_equal(info.warmups, 2);
        wl_close(seg);
        wl_unlink(S->name);
    }
    wlt_sort_u64(lat, ROUNDS);
    printf("# takeover after SIGKILL over %d kills: median %.3f ms, worst %.3f ms\n", ROUNDS,
           lat[ROUNDS / 2] / 1e6, lat[ROUNDS - 1] / 1e6);
    assert_true(lat[ROUNDS - 1] < 50000000ull);
}

/* A watcher (the follower blocked on the leader's mutex) that dies is replaced: another
 * follower finds its watch mutex owner-dead and takes over when the leader dies. */
static void test_ensure_survives_killed_watcher(void **state)
{
    enum { N = 6 };
    pid_t pids[N];
    struct wl_segment *seg;
    struct wl__slot *sl;
    (void)state;

    S->warm_ms = 5000;
    S->warm_ms_later = 10;
    spawn_all(pids, N);
    assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
    pid_t leader = atomic_load(&S->warm_pid[0]);
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl__slot_find(seg, "db", 0, &sl), 0);
    /* until one follower has taken the watch mutex (glibc: __owner is the owner's tid) */
    pid_t watcher = 0;
    for (int i = 0; i < 2000 && watcher <= 0; i++) {
        watcher = __atomic_load_n(&sl->watch.__data.__owner, __ATOMIC_ACQUIRE) & 0x3fffffff;
        if (watcher <= 0)
            wlt_sleep_ms(5);
    }
    assert_true(watcher > 0 && watcher != leader);
    kill(watcher, SIGKILL);
    for (int i = 0; i < N; i++)
        if (pids[i] == watcher) {
            assert_int_equal(wlt_wait(pids[i], 2000), 128 + SIGKILL);
            pids[i] = 0;
        }
    uint64_t kill_ns = wlt_now_ns();
    kill(leader, SIGKILL);
    assert_int_equal(wlt_wait_change(&S->started, 1, 2000), 0);
    uint64_t lat = atomic_load(&S->start_ns[1]) - kill_ns;
    printf("# takeover with the watcher dead first: %.3f ms\n", lat / 1e6);
    assert_true(lat < 500000000ull); /* bounded by the watcher probe, not the deadline */
    int leaders = 0;
    for (int i = 0; i < N; i++) {
        if (pids[i] == 0)
            continue;
        if (pids[i] == leader) {
            assert_int_equal(wlt_wait(pids[i], 2000), 128 + SIGKILL);
            continue;
        }
        assert_int_equal(wlt_wait(pids[i], 5000), 0);
        assert_int_equal(S->rc[i], 0);
        leaders += S->role[i] == WL_LEADER;
    }
    assert_int_equal(leaders, 1);
    assert_int_equal(atomic_load(&S->calls), 2);
    struct wl_slot_info info;
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.takeovers, 1);
    wl_close(seg);
}

/* 3. A failing warm-up: every waiter gets its code and message; within fail_ttl_ms a caller
 * gets it without a new warm-up; after the TTL the next caller warms again. */
static void test_ensure_failure_is_published_and_served_until_ttl(void **state)
{
    enum { N = 16 };
    pid_t pids[N];
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->warm_ms = 100;
    S->warm_rc = -EACCES;
    S->wait.fail_ttl_ms = 400;
    spawn_all(pids, N);
    reap_all(pids, N, 10000);
    assert_int_equal(atomic_load(&S->calls), 1);
    for (int i = 0; i < N; i++) {
        assert_int_equal(S->rc[i], -EACCES);
        assert_string_equal(S->err[i], "warm-up 0 failed on purpose");
    }

    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    uint64_t t0 = wlt_now_ns();
    assert_int_equal(wl_ensure(seg, "db", warm, S, &S->wait, &res), -EACCES);
    assert_true(wlt_now_ns() - t0 < 50000000ull);
    assert_string_equal(res.error, "warm-up 0 failed on purpose");
    assert_string_equal(res.sqlstate, "28P01");
    assert_int_equal(res.role, WL_FOLLOWER);
    assert_int_equal(atomic_load(&S->calls), 1);

    wlt_sleep_ms(450);
    S->warm_rc = 0;
    assert_int_equal(wl_ensure(seg, "db", warm, S, &S->wait, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    assert_int_equal(atomic_load(&S->calls), 2);
    wl_close(seg);
}

/* 4. wl_invalidate(epoch) makes exactly one re-warm for many callers; an older epoch is
 * ignored. */
static void test_invalidate_causes_exactly_one_rewarm(void **state)
{
    enum { N = 32 };
    pid_t pids[N];
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->warm_ms = 10;
    S->warm_ms_later = 100;
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "db", warm, S, NULL, &res), 0);
    uint64_t e1 = res.epoch;
    assert_int_equal(wl_invalidate(seg, "db", e1 - 1), 0); /* older: ignored */
    assert_int_equal(wl_ensure(seg, "db", warm, S, NULL, &res), 0);
    assert_int_equal(res.epoch, e1);
    assert_int_equal(atomic_load(&S->calls), 1);

    assert_int_equal(wl_invalidate(seg, "db", e1), 1);
    assert_int_equal(wl_invalidate(seg, "db", e1), 0); /* once only */
    spawn_all(pids, N);
    reap_all(pids, N, 10000);
    assert_int_equal(atomic_load(&S->calls), 2);
    int leaders = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(S->rc[i], 0);
        assert_int_equal(S->epoch[i], e1 + 1);
        leaders += S->role[i] == WL_LEADER;
    }
    assert_int_equal(leaders, 1);
    assert_int_equal(wl_invalidate(seg, "db", e1), 0); /* old epoch now: nothing */
    assert_int_equal(wl_ensure(seg, "db", warm, S, NULL, &res), 0);
    assert_int_equal(res.epoch, e1 + 1);
    assert_int_equal(wl_invalidate(seg, "nokey", 1), -ENOENT);
    wl_close(seg);
}

/* 5. A leader stopped with SIGSTOP: waiters give up at their deadline naming its pid; after
 * SIGKILL the slot recovers on the next call. */
static void test_ensure_times_out_on_stopped_leader(void **state)
{
    enum { N = 8 };
    pid_t pids[N];
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->stop_self = 1;
    S->warm_ms = 10;
    S->wait.timeout_ms = 500;
    uint64_t t0 = wlt_now_ns();
    spawn_all(pids, N);
    assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
    pid_t leader = atomic_load(&S->warm_pid[0]);
    char want[32];
    snprintf(want, sizeof(want), "leader pid %d", (int)leader);
    for (int i = 0; i < N; i++) {
        if (pids[i] == leader)
            continue;
        assert_int_equal(wlt_wait(pids[i], 5000), 0);
        assert_int_equal(S->rc[i], -ETIMEDOUT);
        if (!strstr(S->err[i], want))
            fail_msg("message '%s' does not name '%s'", S->err[i], want);
        /* each started after t0 and gave up at its own 500 ms deadline (a loaded machine
         * wakes it late: a generous upper bound) */
        uint64_t took = S->done_ns[i] - t0;
        if (took < 450000000ull || took > 1500000000ull)
            fail_msg("process %d returned after %.1f ms", i, took / 1e6);
    }
    kill(leader, SIGKILL);
    kill(leader, SIGCONT);
    for (int i = 0; i < N; i++)
        if (pids[i] == leader)
            assert_int_equal(wlt_wait(pids[i], 5000), 128 + SIGKILL);
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &S->wait, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    wl_close(seg);
}

/* The same stopped leader, resumed with SIGCONT, publishes and everyone after succeeds. */
static void test_ensure_recovers_when_stopped_leader_resumes(void **state)
{
    pid_t pids[2];
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->stop_self = 1;
    S->warm_ms = 10;
    S->wait.timeout_ms = 300;
    spawn_all(pids, 2);
    assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
    pid_t leader = atomic_load(&S->warm_pid[0]);
    wlt_sleep_ms(400);
    kill(leader, SIGCONT);
    for (int i = 0; i < 2; i++)
        assert_int_equal(wlt_wait(pids[i], 5000), 0);
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    S->wait.timeout_ms = 1000;
    assert_int_equal(wl_ensure(seg, "db", warm, S, &S->wait, &res), 0);
    assert_int_equal(res.role, WL_FOLLOWER);
    assert_int_equal(atomic_load(&S->calls), 1);
    wl_close(seg);
}

static int slow_other_key(void *arg, int idx)
{
    struct shared *s = arg;
    struct wl_segment *seg;
    (void)idx;
    if (wl_open(s->name, NULL, &seg) < 0)
        return 1;
    return wl_ensure(seg, "slow", warm, s, NULL, NULL) == 0 ? 0 : 2;
}

static int fast_warm(void *arg, struct wl_result *res)
{
    (void)arg;
    (void)res;
    return 0;
}

/* 6. A slow warm-up of one key does not delay another key. */
static void test_ensure_keys_are_independent(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->warm_ms = 1500;
    pid_t slow = wlt_spawn(slow_other_key, S, 0);
    assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    uint64_t t0 = wlt_now_ns();
    assert_int_equal(wl_ensure(seg, "fast", fast_warm, NULL, NULL, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    assert_true(wlt_now_ns() - t0 < 200000000ull);
    assert_int_equal(wlt_wait(slow, 5000), 0);
    wl_close(seg);
}

/* Pitfall 3: a leader forks and exits while its child keeps warming. A follower takes over
 * (the mutex reports the parent's death); the child's publish is refused with -ECHILD. */
static void test_ensure_forked_child_of_leader_cannot_publish(void **state)
{
    pid_t pids[2];
    struct wl_segment *seg;
    struct wl_slot_info info;
    (void)state;

    S->fork_and_exit = 1;
    S->warm_ms = 300;
    S->warm_ms_later = 10;
    spawn_all(pids, 2);
    reap_all(pids, 2, 10000); /* the leader exits 0 from inside warm() */
    assert_int_equal(wlt_wait_change(&S->started, 1, 3000), 0);
    /* wait for the orphaned child to finish its (refused) warm-up */
    for (int i = 0; i < 100 && S->child_rc == 0; i++)
        wlt_sleep_ms(10);
    assert_int_equal(S->child_rc, -ECHILD);
    assert_non_null(strstr(S->child_err, "forked"));
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.takeovers, 1);
    assert_int_equal(info.epoch, 1);
    int ok = 0;
    for (int i = 0; i < 2; i++)
        ok += S->rc[i] == 0 && S->role[i] == WL_LEADER;
    assert_int_equal(ok, 1);
    wl_close(seg);
}

static int reset_warm(void *arg, struct wl_result *res)
{
    struct wl_segment *seg = arg;
    (void)res;
    /* While we warm, someone forces a reset: our generation is no longer current. */
    assert_int_equal(wl_reset(seg, 0), -EBUSY);
    assert_int_equal(wl_reset(seg, 1), 1);
    return 0;
}

/* Pitfall 2: publish is a CAS from the leader's own generation, so a leader whose slot was
 * reset under it cannot publish stale readiness. */
static void test_ensure_publish_refused_from_old_generation(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_slot_info info;
    (void)state;

    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "db", reset_warm, seg, NULL, &res), -ECANCELED);
    assert_non_null(strstr(res.error, "reset"));
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.state, WL_COLD);
    assert_int_equal(wl_ensure(seg, "db", fast_warm, NULL, NULL, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    wl_close(seg);
}

/* The ready path makes no syscall: run it under seccomp strict mode, which kills the
 * process on any syscall but read, write, exit and sigreturn. */
static int ready_path_child(void *arg, int idx)
{
    struct wl_segment *seg = arg;
    struct wl_result res;
    uint64_t epochs = 0;
    (void)idx;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        return 77;
    for (int i = 0; i < 100000; i++) {
        if (wl_ensure(seg, "db", fast_warm, NULL, NULL, &res) != 0)
            syscall(SYS_exit, 3);
        epochs += res.epoch;
    }
    syscall(SYS_exit, epochs == 100000 ? 0 : 4);
    return 5;
}

/* The same for a prepared key, without and with a max age (the coarse clock is read from
 * the vDSO, not through a syscall). */
static int key_ready_path_child(void *arg, int idx)
{
    struct wl_key *k = arg;
    struct wl_wait_opts aged = {.max_age_ms = 600000};
    struct wl_result res;
    uint64_t epochs = 0;
    (void)idx;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        return 77;
    for (int i = 0; i < 200000; i++) {
        if (wl_key_ensure(k, fast_warm, NULL, i & 1 ? &aged : NULL, &res) != 0)
            syscall(SYS_exit, 3);
        epochs += res.epoch;
    }
    syscall(SYS_exit, epochs == 200000 ? 0 : 4);
    return 5;
}

static void test_ensure_prepared_key_ready_path_makes_no_syscall(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    struct wl_key *k;
    (void)state;

    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_key_open(seg, "db", &k), 0);
    assert_int_equal(wl_key_ensure(k, fast_warm, NULL, NULL, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    /* a second call learns the READY word: from here on the ready path */
    assert_int_equal(wl_key_ensure(k, fast_warm, NULL, NULL, &res), 0);
    pid_t pid = wlt_spawn(key_ready_path_child, k, 0);
    int st = wlt_wait(pid, 10000);
    if (st == 77)
        skip();
    assert_int_equal(st, 0); /* 128+SIGKILL would mean a syscall was made */
    wl_key_close(k);
    wl_close(seg);
}

static void test_ensure_ready_path_makes_no_syscall(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "db", fast_warm, NULL, NULL, &res), 0);
    pid_t pid = wlt_spawn(ready_path_child, seg, 0);
    int st = wlt_wait(pid, 10000);
    if (st == 77)
        skip();
    assert_int_equal(st, 0); /* 128+SIGKILL would mean a syscall was made */
    wl_close(seg);
}

/* Pitfall 5: a leader in another PID namespace. Liveness does not depend on its pid, and
 * messages say the pid is from another namespace. Needs CAP_SYS_ADMIN. */
static int pidns_child(void *arg, int idx)
{
    (void)idx;
    if (unshare(CLONE_NEWPID) != 0)
        return 77;
    pid_t c = fork(); /* the first child of a new namespace is its pid 1 */
    if (c == 0)
        _exit(child_ensure(arg, 0));
    ((struct shared *)arg)->ns_child = c;
    int st;
    waitpid(c, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_ensure_leader_in_other_pid_namespace(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;

    S->warm_ms = 10000; /* (a namespace's pid 1 ignores SIGSTOP: it just takes long) */
    S->warm_ms_later = 10;
    S->wait.timeout_ms = 300;
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    pid_t outer = wlt_spawn(pidns_child, S, 0);
    if (wlt_wait_change(&S->started, 0, 2000) != 0) {
        int st = wlt_wait(outer, 2000);
        if (st == 77) {
            printf("# skipped: unshare(CLONE_NEWPID) not permitted here\n");
            skip();
        }
        fail_msg("the namespaced leader never started (status %d)", st);
    }
    assert_int_equal(atomic_load(&S->warm_pid[0]), 1);
    assert_int_equal(wl_ensure(seg, "db", warm, S, &S->wait, &res), -ETIMEDOUT);
    assert_non_null(strstr(res.error, "another PID namespace"));
    /* Kill the namespace's init (the leader): the next caller takes over. */
    uint64_t kill_ns = wlt_now_ns();
    kill(S->ns_child, SIGKILL);
    wlt_wait(outer, 2000);
    S->wait.timeout_ms = 2000;
    for (int i = 0; i < 200; i++) { /* the kernel tears the namespace down asynchronously */
        int r = wl_ensure(seg, "db", warm, S, &S->wait, &res);
        if (r == 0)
            break;
        assert_int_equal(r, -ETIMEDOUT);
    }
    assert_int_equal(res.role, WL_LEADER);
    assert_true(wlt_now_ns() - kill_ns < 2000000000ull);
    wl_close(seg);
}

/* Pitfall 8: fields larger than the state word are suspect after EOWNERDEAD. A leader killed
 * while writing its failure text (seqcount odd) leaves a torn text; the takeover clears it. */
static void test_ensure_torn_failure_text_is_cleared_on_takeover(void **state)
{
    pid_t pids[2];
    struct wl_segment *seg;
    struct wl__slot *sl;
    struct wl_slot_info info;
    (void)state;

    S->warm_ms = 5000;
    S->warm_ms_later = 10;
    spawn_all(pids, 2);
    assert_int_equal(wlt_wait_change(&S->started, 0, 5000), 0);
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl__slot_find(seg, "db", 0, &sl), 0);
    /* What a leader dying inside write_failure() leaves behind: */
    atomic_fetch_add(&sl->info_seq, 1);
    memcpy(sl->fail_error, "torn half-writ", 15);
    kill(atomic_load(&S->warm_pid[0]), SIGKILL);
    for (int i = 0; i < 2; i++)
        wlt_wait(pids[i], 5000);
    assert_int_equal(atomic_load(&S->calls), 2);
    assert_int_equal(atomic_load(&sl->info_seq) & 1u, 0);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.state, WL_READY);
    assert_string_equal(info.last_error, "");
    assert_int_equal(info.takeovers, 1);
    wl_close(seg);
}

static void test_ensure_rejects_bad_arguments(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    (void)state;
    assert_int_equal(wl_open(S->name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "", fast_warm, NULL, NULL, &res), -EINVAL);
    assert_true(res.error[0] != '\0');
    assert_int_equal(wl_ensure(seg, NULL, fast_warm, NULL, NULL, &res), -EINVAL);
    assert_int_equal(wl_ensure(NULL, "db", fast_warm, NULL, NULL, NULL), -EINVAL);
    assert_int_equal(wl_ensure(seg, "db", NULL, NULL, NULL, NULL), 0); /* no-op warm-up */
    wl_close(seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ensure_64_processes_warm_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_follower_takes_over_when_leader_killed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_survives_killed_watcher, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_failure_is_published_and_served_until_ttl,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalidate_causes_exactly_one_rewarm, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_times_out_on_stopped_leader, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_recovers_when_stopped_leader_resumes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_keys_are_independent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_forked_child_of_leader_cannot_publish,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_publish_refused_from_old_generation, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_prepared_key_ready_path_makes_no_syscall, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_ready_path_makes_no_syscall, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_leader_in_other_pid_namespace, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_ensure_torn_failure_text_is_cleared_on_takeover,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_ensure_rejects_bad_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
