/*
 * Micro-benchmarks of the core, each against its baseline measured in the same run:
 *   1. the ready path of wl_ensure  vs  lock+unlock of an uncontended process-shared mutex
 *   2. releasing N waiters (1, 8, 64, 256)  vs  a raw FUTEX_WAKE broadcast to N processes
 *   3. takeover latency after SIGKILL of the leader (median, p99, max over >= 50 kills)
 * Prints a Markdown table; with --csv FILE also writes CSV. --quick: fewer rounds.
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

#include "proc.h"
#include "warmlock.h"

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
static void bench_ready_path(unsigned iters)
{
    struct wl_segment *seg;
    struct wl_result res;
    pthread_mutex_t *m = wlt_shared(sizeof(*m));
    pthread_mutexattr_t a;
    uint64_t t0, t1, t2, sink = 0;

    if (wl_open(segname, NULL, &seg) < 0 ||
        wl_ensure(seg, "bench-ready", noop_warm, NULL, NULL, &res) < 0) {
        fprintf(stderr, "micro: %s\n", wl_last_error());
        exit(1);
    }
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    for (int round = 0; round < 2; round++) { /* first round warms caches */
        t0 = wlt_now_ns();
        for (unsigned i = 0; i < iters; i++) {
            wl_ensure(seg, "bench-ready", noop_warm, NULL, NULL, &res);
            sink += res.epoch;
        }
        t1 = wlt_now_ns();
        for (unsigned i = 0; i < iters; i++) {
            pthread_mutex_lock(m);
            pthread_mutex_unlock(m);
        }
        t2 = wlt_now_ns();
    }
    if (sink == 0)
        abort();
    row("ready path: wl_ensure vs pshared mutex lock+unlock", "1",
        (double)(t1 - t0) / iters, (double)(t2 - t1) / iters, "ns");
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
    int quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--csv") && i + 1 < argc) {
            if (!(csv = fopen(argv[++i], "w"))) {
                fprintf(stderr, "micro: cannot write %s: %s\n", argv[i], strerror(errno));
                return 1;
            }
            fprintf(csv, "benchmark,n,warmlock,baseline,unit,ratio\n");
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: micro [--quick] [--csv FILE]\n");
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
    fprintf(stderr, "micro: release of N waiters\n");
    bench_release(quick ? 3 : 9);
    fprintf(stderr, "micro: takeover after SIGKILL\n");
    bench_takeover(quick ? 20 : 100);
    wl_unlink(segname);
    if (csv)
        fclose(csv);
    return 0;
}
