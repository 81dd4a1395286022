/*
 * Micro-benchmarks of the core, each against its baseline measured in the same run:
 *   1. the ready path of wl_ensure, of a prepared key (wl_key_ensure), of a prepared target
 *      (wl_pg_target_ensure) and of wl_pg_ensure  vs  lock+unlock of an uncontended
 *      process-shared mutex
 *   2. releasing N waiters (1, 8, 64, 256)  vs  a raw FUTEX_WAKE broadcast to N processes
 *   3. takeover latency after SIGKILL of the leader (median, p99, max over >= 50 kills)
 * Prints a Markdown table; with --csv FILE also writes CSV. --quick: fewer rounds;
 * --ready-only: the ready path alone (full rounds).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "micro_rows.h"
#include "proc.h"
#include "warmlock.h"
#include "warmlock/pg.h"

static uint64_t median(uint64_t *v, size_t n)
{
    wlt_sort_u64(v, n);
    return v[n / 2];
}

/* How long a child may take before it is counted as wedged (then SIGKILLed). */
#define CHILD_MS 60000u

static FILE *csv;
static char segname[64];

static void row(const char *what, const char *n, double ours, double base, const char *unit)
{
    printf("| %s | %s | %.3f %s | %.3f %s | %.2f |\n", what, n, ours, unit, base, unit,
           base > 0 ? ours / base : 0.0);
    if (csv)
        fprintf(csv, "%s,%s,%.6f,%.6f,%s,%.4f\n", what, n, ours, base, unit,
                base > 0 ? ours / base : 0.0);
    fflush(stdout);
}

static int noop_warm(void *arg, struct wl_result *res)
{
    (void)arg;
    (void)res;
    return 0;
}

/* 1. The ready path. */

/* A target nothing listens for: the ready path never connects (its slot is made READY by a
 * no-op warm-up under the target's own key). */
#define MICRO_CONNINFO "host=/nonexistent/warmlock-micro port=1 dbname=micro user=micro"

/* `iters` runs of `stmt`, in ns per run, into `out`; timed in chunks of CHUNK runs with
 * `between` run untimed before each (a target's slot re-verified now, so that a default max
 * age never expires inside a timed loop: a re-verification here would find no server). */
#define CHUNK 100000u
#define TIME_LOOP(out, iters, between, stmt)                                                       \
    do {                                                                                           \
        uint64_t sum_ = 0;                                                                         \
        for (unsigned done_ = 0; done_ < (iters); done_ += CHUNK) {                                \
            unsigned n_ = (iters)-done_ < CHUNK ? (iters)-done_ : CHUNK;                           \
            between;                                                                               \
            uint64_t t0_ = wlt_now_ns();                                                           \
            for (unsigned i_ = 0; i_ < n_; i_++) {                                                 \
                stmt;                                                                              \
            }                                                                                      \
            sum_ += wlt_now_ns() - t0_;                                                            \
        }                                                                                          \
        (out) = (double)sum_ / (iters);                                                            \
    } while (0)

static void die_unless(int ok, const char *what, const char *why)
{
    if (!ok) {
        fprintf(stderr, "micro: %s: %s\n", what, why);
        exit(1);
    }
}

/* The slot of `key` READY at a new epoch, verified now (a no-op warm-up). */
static void fresh_ready(struct wl_segment *seg, const char *key)
{
    struct wl_result res;
    if (wl_ensure(seg, key, noop_warm, NULL, NULL, &res) == 0)
        wl_invalidate(seg, key, res.epoch);
    die_unless(wl_ensure(seg, key, noop_warm, NULL, NULL, &res) == 0, key, res.error);
}

/* Timed rounds of the ready path (plus one to warm up). */
#define READY_ROUNDS 9

static double median_d(double *v, size_t n)
{
    wlt_sort_double(v, n);
    return v[n / 2];
}

static void bench_ready_path(unsigned iters)
{
    struct wl_segment *seg;
    struct wl_key *key;
    struct wl_pg_target *tgt;
    struct wl_result res;
    pthread_mutex_t *m = wlt_shared(sizeof(*m));
    pthread_mutexattr_t a;
    double mutex_ns = 0, ensure_ns = 0, key_ns = 0, tgt_ns = 0, pg_ns = 0;
    unsigned pg_iters = iters / 64 + 1; /* it parses the conninfo: ~1 us a call */
    uint64_t sink = 0;

    die_unless(wl_open(segname, NULL, &seg) == 0, "wl_open", wl_last_error());
    die_unless(wl_key_open(seg, "bench-key", &key) == 0, "wl_key_open", wl_last_error());
    die_unless(wl_pg_target_open(seg, MICRO_CONNINFO, NULL, &tgt) == 0, "wl_pg_target_open",
               wl_last_error());
    fresh_ready(seg, "bench-ready");
    fresh_ready(seg, "bench-key");
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    /* Rounds, each timing every row once, interleaved so that a drift of the machine (its
     * clock speed, a neighbour) falls on all rows alike; the first round warms the caches
     * and is not counted; each row is the median of its rounds. */
    double v[5][READY_ROUNDS];
    unsigned per = iters / READY_ROUNDS, pg_per = pg_iters / READY_ROUNDS + 1;
    for (int round = 0; round <= READY_ROUNDS; round++) {
        TIME_LOOP(mutex_ns, per, (void)0, pthread_mutex_lock(m); pthread_mutex_unlock(m));
        TIME_LOOP(ensure_ns, per, (void)0,
                  wl_ensure(seg, "bench-ready", noop_warm, NULL, NULL, &res);
                  sink += res.epoch);
        TIME_LOOP(key_ns, per, (void)0, wl_key_ensure(key, noop_warm, NULL, NULL, &res);
                  sink += res.epoch);
        TIME_LOOP(tgt_ns, per, fresh_ready(seg, wl_pg_target_key(tgt)),
                  wl_pg_target_ensure(tgt, &res);
                  sink += res.epoch);
        TIME_LOOP(pg_ns, pg_per, fresh_ready(seg, wl_pg_target_key(tgt)),
                  wl_pg_ensure(seg, MICRO_CONNINFO, NULL, &res);
                  sink += res.epoch);
        if (round > 0) {
            v[0][round - 1] = mutex_ns;
            v[1][round - 1] = ensure_ns;
            v[2][round - 1] = key_ns;
            v[3][round - 1] = tgt_ns;
            v[4][round - 1] = pg_ns;
        }
    }
    mutex_ns = median_d(v[0], READY_ROUNDS);
    ensure_ns = median_d(v[1], READY_ROUNDS);
    key_ns = median_d(v[2], READY_ROUNDS);
    tgt_ns = median_d(v[3], READY_ROUNDS);
    pg_ns = median_d(v[4], READY_ROUNDS);
    fresh_ready(seg, wl_pg_target_key(tgt));
    /* each ready path still answers READY after its loop (no re-verification ran in it) */
    die_unless(wl_ensure(seg, "bench-ready", noop_warm, NULL, NULL, &res) == 0, "wl_ensure",
               res.error);
    die_unless(wl_key_ensure(key, noop_warm, NULL, NULL, &res) == 0, "wl_key_ensure", res.error);
    die_unless(wl_pg_target_ensure(tgt, &res) == 0, "wl_pg_target_ensure", res.error);
    die_unless(wl_pg_ensure(seg, MICRO_CONNINFO, NULL, &res) == 0, "wl_pg_ensure", res.error);
    if (sink == 0)
        abort();
    row(MICRO_ROW_ENSURE, "1", ensure_ns, mutex_ns, "ns");
    row(MICRO_ROW_KEY, "1", key_ns, mutex_ns, "ns");
    row(MICRO_ROW_TARGET, "1", tgt_ns, mutex_ns, "ns");
    row(MICRO_ROW_PG, "1", pg_ns, mutex_ns, "ns");
    wl_pg_target_close(tgt);
    wl_key_close(key);
    wl_close(seg);
}

/* 2. Releasing N waiters. */
struct rel {
    char key[32];
    _Atomic uint32_t ready;   /* children that are about to wait */
    _Atomic uint32_t go;      /* baseline: the word they wait on */
    _Atomic uint32_t done;    /* children that woke */
    _Atomic uint32_t leave;   /* children may exit */
    _Atomic uint64_t last_ns; /* latest wake time */
    uint64_t publish_ns;
    struct wl_segment *seg;   /* the parent's, inherited by the children */
};

static void note_wake(struct rel *r)
{
    uint64_t t = wlt_now_ns(), prev = atomic_load(&r->last_ns);
    while (t > prev && !atomic_compare_exchange_weak(&r->last_ns, &prev, t))
        ;
    atomic_fetch_add(&r->done, 1);
    wlt_wait_change(&r->leave, 0, WLT_FOREVER);
}

static int release_warm(void *arg, struct wl_result *res)
{
    struct rel *r = arg;
    struct wl_segment *seg;
    static struct wl_slot_info info[WL_DEFAULT_SLOTS];
    unsigned n = r->ready;
    (void)res;
    atomic_store(&r->go, 1); /* claimed: the followers may come */
    wlt_wake(&r->go);
    /* Wait until every child is asleep in wl_ensure (the slot counts its waiters). */
    if (wl_open(segname, NULL, &seg) < 0)
        return -EIO;
    for (int waiting = 0; !waiting;) {
        int k = wl_snapshot(seg, info, WL_DEFAULT_SLOTS);
        for (int i = 0; i < k && i < WL_DEFAULT_SLOTS; i++)
            if (!strcmp(info[i].key, r->key) && info[i].waiters >= n)
                waiting = 1;
        if (!waiting)
            usleep(200);
    }
    usleep(2000); /* let the last ones reach the futex */
    wl_close(seg);
    r->publish_ns = wlt_now_ns();
    return 0;
}

/* Baseline: asleep on the raw futex word until the broadcast. */
static int release_baseline_child(void *arg, int index)
{
    struct rel *r = arg;
    (void)index;
    wlt_wait_change(&r->go, 0, WLT_FOREVER);
    note_wake(r);
    return 0;
}

/* Ours: once the leader has claimed, asleep in wl_ensure until it publishes. */
static int release_child(void *arg, int index)
{
    struct rel *r = arg;
    struct wl_result res;
    (void)index;
    wlt_wait_change(&r->go, 0, WLT_FOREVER);
    wl_ensure(r->seg, r->key, noop_warm, NULL, NULL, &res);
    note_wake(r);
    return 0;
}

static int release_leader(void *arg, int index)
{
    struct rel *r = arg;
    struct wl_result res;
    (void)index;
    return wl_ensure(r->seg, r->key, release_warm, r, NULL, &res) == 0 ? 0 : 1;
}

static uint64_t release_once(unsigned n, int baseline, unsigned round)
{
    struct rel *r = wlt_shared(sizeof(*r));
    char key[32];
    pid_t *pids = calloc(n, sizeof(pid_t));
    struct wl_segment *seg;
    uint64_t lat;

    snprintf(key, sizeof(key), "rel-%u-%u", n, round);
    memcpy(r->key, key, sizeof(key));
    if (wl_open(segname, NULL, &seg) < 0)
        exit(1);
    r->ready = n;
    r->seg = seg;
    for (unsigned i = 0; i < n; i++)
        pids[i] = wlt_spawn(baseline ? release_baseline_child : release_child, r, (int)i);
    if (baseline) {
        usleep(20000 + n * 100); /* let them all reach FUTEX_WAIT */
        r->publish_ns = wlt_now_ns();
        atomic_store(&r->go, 1);
        wlt_wake(&r->go);
    } else {
        /* A leader claims first (release_warm then lets the followers in), and publishes
         * once all n are asleep in wl_ensure. */
        wlt_wait(wlt_spawn(release_leader, r, 0), CHILD_MS);
    }
    while (atomic_load(&r->done) < n)
        usleep(500);
    lat = atomic_load(&r->last_ns) - r->publish_ns;
    atomic_store(&r->leave, 1);
    wlt_wake(&r->leave);
    for (unsigned i = 0; i < n; i++)
        wlt_wait(pids[i], CHILD_MS);
    free(pids);
    munmap(r, sizeof(*r));
    wl_close(seg);
    return lat;
}

static void bench_release(unsigned rounds)
{
    unsigned ns[] = {1, 8, 64, 256};
    for (size_t k = 0; k < 4; k++) {
        uint64_t ours[32], base[32];
        char nbuf[16];
        for (unsigned i = 0; i < rounds; i++) {
            ours[i] = release_once(ns[k], 0, i);
            base[i] = release_once(ns[k], 1, i);
        }
        snprintf(nbuf, sizeof(nbuf), "%u", ns[k]);
        row("release N waiters: wl_ensure publish vs raw FUTEX_WAKE (median of last wake)",
            nbuf, median(ours, rounds) / 1e3, median(base, rounds) / 1e3, "us");
    }
}

/* 3. Takeover after SIGKILL. */
struct tk {
    _Atomic uint32_t started;
    _Atomic int32_t leader;
    _Atomic uint64_t start2;
};

static int tk_warm(void *arg, struct wl_result *res)
{
    struct tk *t = arg;
    (void)res;
    uint32_t n = atomic_fetch_add(&t->started, 1);
    if (n == 0) {
        atomic_store(&t->leader, getpid());
        wlt_wake(&t->started);
        pause(); /* until killed */
    }
    atomic_store(&t->start2, wlt_now_ns());
    wlt_wake(&t->started);
    return 0;
}

/* The first one leads (and is killed); the others follow once it has started. */
static int tk_child(void *arg, int index)
{
    struct tk *t = arg;
    struct wl_segment *seg;
    struct wl_result res;
    if (index > 0)
        wlt_wait_change(&t->started, 0, WLT_FOREVER);
    if (wl_open(segname, NULL, &seg) < 0)
        return 1;
    /* one slot, reset after each round */
    return wl_ensure(seg, "tk", tk_warm, t, NULL, &res) == 0 ? 0 : 1;
}

static void bench_takeover(unsigned kills)
{
    uint64_t *lat = calloc(kills, sizeof(uint64_t));
    struct tk *t = wlt_shared(sizeof(*t));
    for (unsigned k = 0; k < kills; k++) {
        pid_t p[3];
        memset(t, 0, sizeof(*t));
        for (int i = 0; i < 3; i++)
            p[i] = wlt_spawn(tk_child, t, i);
        wlt_wait_change(&t->started, 0, WLT_FOREVER);
        usleep(5000); /* followers asleep */
        uint64_t k0 = wlt_now_ns();
        kill(atomic_load(&t->leader), SIGKILL);
        while (atomic_load(&t->start2) == 0)
            wlt_wait_change(&t->started, 1, WLT_FOREVER);
        lat[k] = atomic_load(&t->start2) - k0;
        for (int i = 0; i < 3; i++)
            wlt_wait(p[i], CHILD_MS);
        struct wl_segment *seg;
        if (wl_open(segname, NULL, &seg) == 0) { /* back to COLD for the next round */
            wl_reset(seg, 1);
            wl_close(seg);
        }
    }
    wlt_sort_u64(lat, kills);
    char nbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%u kills", kills);
    printf("| takeover after SIGKILL: median / p99 / max | %s | %.3f / %.3f / %.3f ms | "
           "target 10 / 50 ms | - |\n", nbuf, lat[kills / 2] / 1e6,
           lat[(kills * 99) / 100 < kills ? (kills * 99) / 100 : kills - 1] / 1e6,
           lat[kills - 1] / 1e6);
    if (csv)
        fprintf(csv, "takeover median ms,%u,%.6f,,ms,\ntakeover p99 ms,%u,%.6f,,ms,\n"
                     "takeover max ms,%u,%.6f,,ms,\n", kills, lat[kills / 2] / 1e6, kills,
                lat[(kills * 99) / 100] / 1e6, kills, lat[kills - 1] / 1e6);
    free(lat);
}

int main(int argc, char **argv)
{
    int quick = 0, ready_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--ready-only")) {
            ready_only = 1;
        } else if (!strcmp(argv[i], "--csv") && i + 1 < argc) {
            if (!(csv = fopen(argv[++i], "w"))) {
                fprintf(stderr, "micro: cannot write %s: %s\n", argv[i], strerror(errno));
                return 1;
            }
            fprintf(csv, "benchmark,n,warmlock,baseline,unit,ratio\n");
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: micro [--quick] [--ready-only] [--csv FILE]\n");
            return 0;
        } else {
            fprintf(stderr, "micro: unknown argument '%s' (try --help)\n", argv[i]);
            return 2;
        }
    }
    snprintf(segname, sizeof(segname), "/warmlock-bench.%d", (int)getpid());
    printf("| benchmark | N | warmlock | baseline | ratio |\n|---|---|---|---|---|\n");
    fprintf(stderr, "micro: ready path\n");
    bench_ready_path(quick ? 200000 : 5000000);
    if (!ready_only) {
        fprintf(stderr, "micro: release of N waiters\n");
        bench_release(quick ? 3 : 9);
        fprintf(stderr, "micro: takeover after SIGKILL\n");
        bench_takeover(quick ? 20 : 100);
    }
    wl_unlink(segname);
    if (csv)
        fclose(csv);
    return 0;
}
