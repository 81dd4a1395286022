/*
 * A slot's state machine: election, waiting, takeover, publish, invalidate, reset.
 *
 *   COLD ──claim──▶ WARMING ──ok──▶ READY(epoch+1) ──invalidate──▶ STALE ──claim──▶ WARMING
 *                    │ │ └─permanent failure──▶ FAILED ──fail_ttl passed, next claims──▶ WARMING
 *                    │ └─transient failure (down, starting up, full, timed out)──▶ STALE,
 *                    │   the outage clock running: callers with time left keep waiting and
 *                    │   the next prober claims it (paced by retry_ns)
 *                    └─leader died (EOWNERDEAD)──▶ WARMING under a new leader
 *   READY older than max_age_ms: one caller re-verifies (holding the mutex, the slot stays
 *   READY for everyone else); a failure turns it STALE or FAILED as above.
 *   READY verified before the host was suspended (CLOCK_BOOTTIME moved ahead of
 *   CLOCK_MONOTONIC since): one caller re-verifies while the others wait for it.
 *
 * Who does what:
 * - The leader holds the slot's robust mutex for the whole warm-up, and publishes by a CAS
 *   from the exact state word it claimed with (its generation): a forked child, or a leader
 *   whose slot was reset, cannot publish. It first moves to PUBLISHING (still "warming" to
 *   everyone), writes the epoch, timings and failure text, then stores the outcome, so a
 *   reset never sees half of a discarded leader's result.
 * - One follower, the watcher, holds the slot's `watch` mutex and blocks on the slot mutex:
 *   the kernel wakes it when the leader dies (robust-list cleanup wakes one waiter of the
 *   mutex only, never the futex sleepers), and it takes over.
 * - One more follower, the deputy, holds `deputy` and blocks on `watch`: the kernel wakes
 *   it when the watcher dies, and it becomes the watcher. So the leader and its watcher
 *   dying together cost no polling delay.
 * - Every other follower sleeps on the state word (futex). Each state change wakes them.
 *   Their sleep is bounded (a fixed, jittered probe interval) so that, should the watcher
 *   and the deputy die too, one of them finds `watch` owner-dead and becomes the watcher.
 * - Each follower holds a waiter token (a robust mutex in the header) while it waits, so
 *   the waiters gauge is derived from live tokens: a killed follower stops counting.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MS 1000000ull
#define PROBE_MIN_NS (250ull * MS) /* followers check the watcher every 250-750 ms: only the
                                    * rare death of both watcher and deputy needs it (a
                                    * deputy promoted to watcher wakes them at once, so one
                                    * takes its place), and each wake of each follower costs
                                    * CPU a herd can see: ~50 us on a small VM */
#define PROBE_SPAN_NS (500ull * MS)
#define MIN_CLAIM_NS (50ull * MS) /* too little time left to start a warm-up */
#define DEADLINE_SLACK_NS (20ull * MS) /* a timeout this close to it is the deadline's */
#define RETRY_FIRST_NS (10ull * MS) /* pacing of probers after transient failures */
#define RETRY_MAX_NS (250ull * MS)
#define PUBLISH_WAIT_NS (100ull * MS) /* how long wl_reset waits out a publishing leader */
#define DEFAULT_TIMEOUT_MS 30000u
#define DEFAULT_FAIL_TTL_MS 1000u
#define RESUME_NS (1000ull * MS) /* a boot gap grown by more than this: the host slept */

static const uint32_t hist_bounds_ms[WL_HIST_BUCKETS - 1] = WL_HIST_BOUNDS_MS;

/* ---- clocks of READY's age ---- */

/* The suspended time the tests pretend (wl__test_suspend); relaxed: a test sets it before
 * it starts the callers. */
static _Atomic int64_t fake_sleep_ns;

void wl__test_suspend(int64_t ns)
{
    atomic_fetch_add_explicit(&fake_sleep_ns, ns, memory_order_relaxed);
}

static int64_t ts_ns(const struct timespec *ts)
{
    return (int64_t)ts->tv_sec * 1000000000ll + ts->tv_nsec;
}

/* The boot gap, and CLOCK_MONOTONIC in *mono. */
static int64_t boot_gap(uint64_t *mono)
{
    struct timespec m, b;
    /* monotonic first: a preemption between the two reads can only widen the gap (a
     * spurious re-verification at worst, never a missed one) */
    clock_gettime(CLOCK_MONOTONIC, &m);
    clock_gettime(CLOCK_BOOTTIME, &b);
    *mono = (uint64_t)ts_ns(&m);
    return ts_ns(&b) - ts_ns(&m) + atomic_load_explicit(&fake_sleep_ns, memory_order_relaxed);
}

int64_t wl__boot_gap_ns(void)
{
    uint64_t mono;
    return boot_gap(&mono);
}

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts_ns(&ts);
}

/* The wall clock (CLOCK_REALTIME or its coarse form), which a resume moves by the time the
 * host slept. */
static uint64_t realtime_ns(clockid_t id)
{
    return clock_ns(id) + (uint64_t)atomic_load_explicit(&fake_sleep_ns, memory_order_relaxed);
}

/* The target was verified now: the age clocks of READY restart. Relaxed: hints for when to
 * re-verify; a reader that pairs a new verified_ns with an old gap re-verifies once more. */
static void mark_verified(struct wl__slot *sl, uint64_t now)
{
    atomic_store_explicit(&sl->boot_gap_ns, wl__boot_gap_ns(), memory_order_relaxed);
    atomic_store_explicit(&sl->verified_rt_ns, realtime_ns(CLOCK_REALTIME), memory_order_relaxed);
    atomic_store_explicit(&sl->verified_ns, now, memory_order_relaxed);
}

/* Was the host suspended since the slot's last verification (gap: the boot gap now)? */
static int slept_since(struct wl__slot *sl, int64_t gap)
{
    if (!atomic_load_explicit(&sl->verified_ns, memory_order_relaxed))
        return 0;
    return gap - atomic_load_explicit(&sl->boot_gap_ns, memory_order_relaxed) >
           (int64_t)RESUME_NS;
}

static int slept_since_verified(struct wl__slot *sl)
{
    return slept_since(sl, wl__boot_gap_ns());
}

uint64_t wl__key_hash(const char *key, size_t len)
{
    /* FNV-1a, 64-bit, with a final avalanche; 0 is reserved for "free slot". */
    uint64_t h = 0xcbf29ce484222325ull;
    size_t i;
    for (i = 0; i < len; i++) {
        h ^= (unsigned char)key[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h ? h : 1;
}

static int slot_matches(struct wl__slot *sl, const char *key, size_t len)
{
    size_t n = len < WL_KEY_MAX ? len : WL_KEY_MAX;
    /* Keys longer than WL_KEY_MAX are told apart by length and hash beyond the prefix. */
    return sl->key_len == (uint32_t)len && memcmp(sl->key, key, n) == 0;
}

int wl__slot_is(struct wl__slot *sl, uint32_t s, uint64_t hash)
{
    /* relaxed: ordered after the caller's acquire load of s, and before its recheck of s
     * (a CAS from s, ready_epoch's second load, or the slot mutex held throughout) */
    return (uint32_t)WL__ST(s) != WL__FORGOTTEN &&
           atomic_load_explicit(&sl->key_hash, memory_order_relaxed) == hash;
}

/* Linear probing from hash % nslots. A slot is never emptied (key_hash 0) once taken, so
 * a free slot ends a probe; a forgotten one does not, and *reuse gets the first of them. */
static struct wl__slot *probe(struct wl_segment *seg, uint64_t hash, const char *key,
                              size_t len, struct wl__slot **free_slot, struct wl__slot **reuse)
{
    uint32_t i, n = seg->nslots, start = (uint32_t)(hash % n);

    if (reuse)
        *reuse = NULL;
    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[(start + i) % n];
        /* acquire: pairs with the allocator's release store, so key text is complete */
        uint64_t h = atomic_load_explicit(&sl->key_hash, memory_order_acquire);
        if (h == 0) {
            if (free_slot)
                *free_slot = sl;
            return NULL;
        }
        /* acquire: a slot taken over for another key is seen with its new hash. Only a
         * candidate, or any slot when the allocator looks for one to take over. */
        if ((h == hash || reuse) &&
            (uint32_t)WL__ST(atomic_load_explicit(&sl->state, memory_order_acquire)) ==
                WL__FORGOTTEN) {
            if (reuse && !*reuse)
                *reuse = sl;
            continue;
        }
        if (h == hash && slot_matches(sl, key, len))
            return sl;
    }
    if (free_slot)
        *free_slot = NULL;
    return NULL;
}

static void repair_header(void *arg)
{
    /* An allocator died under the header lock. A half-written slot still has key_hash 0
     * (it is stored last), or is still forgotten (its new generation is stored last), so it
     * is simply free; nothing else is guarded. */
    (void)arg;
}

static int find_hashed(struct wl_segment *seg, const char *key, size_t len, uint64_t hash,
                       int allocate, struct wl__slot **out)
{
    struct wl__slot *sl, *free_slot = NULL, *reuse = NULL;
    int r;

    if ((sl = probe(seg, hash, key, len, NULL, NULL))) {
        *out = sl;
        return 0;
    }
    if (!allocate)
        return -ENOENT;
    if ((r = wl__lock(&seg->hdr->lock, UINT64_MAX, repair_header, NULL)) < 0)
        return r;
    sl = probe(seg, hash, key, len, &free_slot, &reuse);
    if (!sl && (reuse || free_slot)) {
        sl = reuse ? reuse : free_slot;
        sl->key_len = (uint32_t)len;
        memcpy(sl->key, key, len < WL_KEY_MAX ? len : WL_KEY_MAX);
        sl->key[len < WL_KEY_MAX ? len : WL_KEY_MAX] = '\0';
        /* release: the key text is visible before the slot is seen as taken */
        atomic_store_explicit(&sl->key_hash, hash, memory_order_release);
        if (reuse) {
            /* Only wl_forget and this (both under the header lock) change a forgotten
             * word. release: whoever sees the slot's new generation sees the new hash. */
            uint32_t w = atomic_load_explicit(&sl->state, memory_order_relaxed);
            atomic_store_explicit(&sl->state, WL__NEXT(w, WL_COLD), memory_order_release);
            wl__futex_wake_all(&sl->state);
        }
        atomic_fetch_add_explicit(&seg->hdr->nused, 1, memory_order_release);
    }
    wl__unlock(&seg->hdr->lock);
    if (!sl)
        return -ENOSPC;
    *out = sl;
    return 0;
}

int wl__slot_find(struct wl_segment *seg, const char *key, int allocate,
                  struct wl__slot **out)
{
    size_t len = strlen(key);
    return find_hashed(seg, key, len, wl__key_hash(key, len), allocate, out);
}

/* The one recovery function for a slot mutex whose owner died: the failure text may be
 * torn, so it is cleared; a warm-up that was in flight counts as a takeover. A leader
 * killed while publishing never stored its outcome: its slot is WARMING again. */
static void repair_slot(void *arg)
{
    struct wl__slot *sl = arg;
    uint32_t seq = atomic_load_explicit(&sl->info_seq, memory_order_relaxed);
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);

    if (seq & 1u) {
        sl->fail_error[0] = '\0';
        sl->fail_sqlstate[0] = '\0';
        atomic_store_explicit(&sl->info_seq, seq + 1, memory_order_release);
    }
    if ((uint32_t)WL__ST(s) == WL__PUBLISHING)
        /* release: the state change is ordered after the repaired text */
        atomic_compare_exchange_strong_explicit(&sl->state, &s, WL__NEXT(s, WL_WARMING),
                                                memory_order_release, memory_order_relaxed);
    if (WL__IS_WARMING(s))
        atomic_fetch_add_explicit(&sl->takeovers, 1, memory_order_relaxed);
}

static void repair_none(void *arg)
{
    (void)arg; /* the watch mutex and the waiter tokens guard no data */
}

int wl__slot_leader_alive(struct wl__slot *sl)
{
    int r = wl__lock(&sl->mutex, 0, repair_slot, sl);
    if (r >= 0) {
        /* Nobody held it, or its holder was dead: no live leader. A WARMING slot whose
         * leader died is returned to STALE so the next caller claims it. */
        uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
        if (WL__ST(s) == WL_WARMING &&
            atomic_compare_exchange_strong_explicit(&sl->state, &s, WL__NEXT(s, WL_STALE),
                                                    memory_order_release,
                                                    memory_order_relaxed))
            wl__futex_wake_all(&sl->state);
        wl__unlock(&sl->mutex);
        return 0;
    }
    return r == -EBUSY;
}

uint32_t wl__slot_waiters(struct wl_segment *seg, struct wl__slot *sl)
{
    uint32_t idx = (uint32_t)(sl - seg->slots) + 1, n = 0, i;

    for (i = 0; i < WL__NTOKENS; i++) {
        struct wl__token *t = &seg->hdr->tokens[i];
        /* acquire: pairs with the holder's release store of `slot` after taking it */
        if (atomic_load_explicit(&t->slot, memory_order_acquire) == idx &&
            wl__mutex_held(&t->m, NULL))
            n++;
    }
    return n + atomic_load_explicit(&sl->waiters, memory_order_relaxed);
}

/* Take a waiter token for sl (or count in sl->waiters when all are taken). */
static struct wl__token *token_take(struct wl_segment *seg, struct wl__slot *sl, uint64_t seed)
{
    uint32_t i, start = (uint32_t)((seed ^ (seed >> 29)) % WL__NTOKENS);

    for (i = 0; i < WL__NTOKENS; i++) {
        struct wl__token *t = &seg->hdr->tokens[(start + i) % WL__NTOKENS];
        if (wl__lock(&t->m, 0, repair_none, NULL) >= 0) {
            /* release: a counter that sees our slot index sees a held token */
            atomic_store_explicit(&t->slot, (uint32_t)(sl - seg->slots) + 1,
                                  memory_order_release);
            return t;
        }
    }
    atomic_fetch_add_explicit(&sl->waiters, 1, memory_order_relaxed);
    return NULL;
}

static void token_give(struct wl__slot *sl, struct wl__token *t)
{
    if (!t) {
        /* never below 0: wl_reset may have cleared it meanwhile */
        uint32_t v = atomic_load_explicit(&sl->waiters, memory_order_relaxed);
        while (v && !atomic_compare_exchange_weak_explicit(&sl->waiters, &v, v - 1,
                                                           memory_order_relaxed,
                                                           memory_order_relaxed))
            ;
        return;
    }
    atomic_store_explicit(&t->slot, 0, memory_order_relaxed);
    wl__unlock(&t->m);
}

/* Copy the published failure into res; 0 if the copy is consistent with state word s. */
static int read_failure(struct wl__slot *sl, uint32_t s, struct wl_result *res, int *code)
{
    uint32_t q1 = atomic_load_explicit(&sl->info_seq, memory_order_acquire);
    if (q1 & 1u)
        return -EAGAIN;
    *code = sl->fail_code;
    memcpy(res->error, sl->fail_error, sizeof(res->error));
    memcpy(res->sqlstate, sl->fail_sqlstate, sizeof(res->sqlstate));
    res->error[sizeof(res->error) - 1] = '\0';
    res->sqlstate[sizeof(res->sqlstate) - 1] = '\0';
    atomic_thread_fence(memory_order_acquire);
    if (atomic_load_explicit(&sl->info_seq, memory_order_relaxed) != q1 ||
        atomic_load_explicit(&sl->state, memory_order_relaxed) != s)
        return -EAGAIN;
    if (*code >= 0)
        *code = -EIO;
    return 0;
}

/* A consistent copy of the failure text and code, whatever the state (0, or -EAGAIN if a
 * writer kept changing it). */
static int read_info(struct wl__slot *sl, struct wl_result *out, int *code)
{
    for (int tries = 0; tries < 100; tries++) {
        uint32_t q = atomic_load_explicit(&sl->info_seq, memory_order_acquire);
        if (q & 1u)
            continue;
        *code = sl->fail_code;
        memcpy(out->error, sl->fail_error, sizeof(out->error));
        memcpy(out->sqlstate, sl->fail_sqlstate, sizeof(out->sqlstate));
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&sl->info_seq, memory_order_relaxed) == q) {
            out->error[sizeof(out->error) - 1] = '\0';
            out->sqlstate[sizeof(out->sqlstate) - 1] = '\0';
            return 0;
        }
    }
    return -EAGAIN;
}

static void write_text(struct wl__slot *sl, int code, const char *error, const char *sqlstate)
{
    uint32_t q = atomic_load_explicit(&sl->info_seq, memory_order_relaxed);
    atomic_store_explicit(&sl->info_seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release); /* odd seq is seen before the text changes */
    sl->fail_code = code;
    wl__copy(sl->fail_error, sizeof(sl->fail_error), error);
    wl__copy(sl->fail_sqlstate, sizeof(sl->fail_sqlstate), sqlstate);
    /* release: the text is complete before the even sequence is seen */
    atomic_store_explicit(&sl->info_seq, q + 2, memory_order_release);
}

int wl__transient(int code)
{
    return code == -ECONNREFUSED || code == -EAGAIN || code == -ETIMEDOUT ||
           code == -ECANCELED;
}

/* The warm-up this thread runs inside wl_ensure (set around warm()), for the engine. */
static _Thread_local struct wl__claim *warming;
static _Thread_local int warming_reverify, warming_fail_fast, warming_stop, warming_handover;

void wl__warm_stop(void)
{
    if (warming)
        warming_stop = 1;
}

/* The outage clock starts at the first transient failure since READY. Under the mutex. */
static void outage_begins(struct wl__slot *sl, uint64_t now)
{
    if (!atomic_load_explicit(&sl->down_ns, memory_order_relaxed))
        atomic_store_explicit(&sl->down_ns, now, memory_order_relaxed);
}

void wl__claim_progress(struct wl__claim *c, int code, const char *error, const char *sqlstate)
{
    /* We hold its mutex, so we are the only writer; a child forked inside warm() is not. */
    if (!c || getpid() != c->pid)
        return;
    write_text(c->sl, code, error ? error : "", sqlstate ? sqlstate : "");
    if (wl__transient(code))
        outage_begins(c->sl, wl__now_ns());
}

void wl__warm_progress(int code, const char *error, const char *sqlstate)
{
    wl__claim_progress(warming, code, error, sqlstate);
}

void wl__claim_stage(struct wl__claim *c, int stage)
{
    if (!c || getpid() != c->pid || stage < WL_STAGE_NONE || stage > WL_STAGE_VERIFIED)
        return;
    c->staged = 1;
    atomic_store_explicit(&c->sl->stage, (uint32_t)stage, memory_order_relaxed);
}

void wl__warm_stage(int stage)
{
    wl__claim_stage(warming, stage);
}

/* The stage a warm-up ended at: VERIFIED on success, else what it reported (NONE if it
 * reported nothing: a warm function of the caller's own). Under the mutex. */
static void stage_at_end(struct wl__claim *c, int rc)
{
    if (rc == 0 || !c->staged)
        atomic_store_explicit(&c->sl->stage, rc == 0 ? WL_STAGE_VERIFIED : WL_STAGE_NONE,
                              memory_order_relaxed);
}

int wl__warm_reverifying(void)
{
    return warming && warming_reverify;
}

void wl__warm_hands_over(void)
{
    if (warming)
        warming_handover = 1;
}

int wl__warm_fail_fast(void)
{
    return warming && warming_fail_fast;
}

static const char *pidns_note(struct wl_segment *seg, struct wl__slot *sl)
{
    uint64_t ns = atomic_load_explicit(&sl->leader_pidns, memory_order_relaxed);
    uint64_t mine = ns ? wl__segment_pidns(seg) : 0;
    return ns && mine && ns != mine ? " (in another PID namespace)" : "";
}

static uint64_t ms_since(uint64_t then, uint64_t now)
{
    return then && now > then ? (now - then) / MS : 0;
}

/*
 * The caller's deadline passed. A failure the leader published is passed on as it is; else
 * the message names the stuck leader, or the last prober's error during an outage.
 */
static int fail_timeout(struct wl_segment *seg, struct wl__slot *sl, uint32_t timeout_ms,
                        uint64_t ttl_ns, struct wl_result *res)
{
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
    int pid = atomic_load_explicit(&sl->leader_pid, memory_order_relaxed), code = 0, tid;
    uint64_t claimed = atomic_load_explicit(&sl->claimed_ns, memory_order_relaxed);
    uint64_t failed = atomic_load_explicit(&sl->failed_ns, memory_order_relaxed);
    uint64_t down = atomic_load_explicit(&sl->down_ns, memory_order_relaxed);
    uint64_t now = wl__now_ns();
    struct wl_result last;
    char dn[48] = "";

    if (WL__ST(s) == WL_FAILED && now - failed < ttl_ns && read_failure(sl, s, res, &code) == 0)
        return code;
    if (down)
        wl__fmt(dn, sizeof(dn), "; down for %llu ms", (unsigned long long)ms_since(down, now));
    if (read_info(sl, &last, &code) != 0)
        last.error[0] = last.sqlstate[0] = '\0';
    if (WL__IS_WARMING(s)) {
        int n = snprintf(res->error, sizeof(res->error), "timed out after %u ms waiting for "
                         "'%.80s': leader pid %d%s has been warming for %llu ms%s", timeout_ms,
                         sl->key, pid, pidns_note(seg, sl),
                         (unsigned long long)ms_since(claimed, now), dn);
        if (last.error[0] && n > 0 && (size_t)n < sizeof(res->error)) {
            wl__fmt(res->error + n, sizeof(res->error) - (size_t)n, "; its last attempt: %s",
                    last.error);
            memcpy(res->sqlstate, last.sqlstate, sizeof(res->sqlstate));
        }
    } else if (last.error[0] && (down || (failed && now - failed < ttl_ns))) {
        wl__fmt(res->error, sizeof(res->error), "timed out after %u ms%s; the last warm-up "
                "(pid %d) ended: %.160s", timeout_ms, dn, pid, last.error);
        memcpy(res->sqlstate, last.sqlstate, sizeof(res->sqlstate));
    } else if (WL__ST(s) == WL_COLD && pid &&
               !atomic_load_explicit(&sl->warmups, memory_order_relaxed) &&
               wl__mutex_held(&sl->mutex, &tid) && tid) {
        /* Reset (its counters are zero), never claimed since, yet the lock is held: the
         * leader whose warm-up a forced reset discarded is stopped (SIGSTOP) or hung. */
        wl__fmt(res->error, sizeof(res->error), "timed out after %u ms waiting for '%.80s' "
                "(state %s): pid %d%s is alive and holds the slot's lock (thread %d), so "
                "nobody can warm it until that process resumes or exits", timeout_ms, sl->key,
                wl_state_name(WL__ST(s)), pid, pidns_note(seg, sl), tid);
    } else {
        wl__fmt(res->error, sizeof(res->error), "timed out after %u ms waiting for '%.80s' "
                "(state %s, last leader pid %d%s)", timeout_ms, sl->key,
                wl_state_name(WL__ST(s)), pid, pidns_note(seg, sl));
    }
    return -ETIMEDOUT;
}

/* A WL_FAIL_FAST caller during an outage: the current transient failure, at once. */
static int fail_fast(struct wl__slot *sl, struct wl_result *res)
{
    uint64_t down = atomic_load_explicit(&sl->down_ns, memory_order_relaxed);
    struct wl_result last;
    int code = 0;

    if (read_info(sl, &last, &code) != 0 || !wl__transient(code) || code == -ECANCELED) {
        code = -EAGAIN;
        if (read_info(sl, &last, &(int){0}) != 0)
            last.error[0] = last.sqlstate[0] = '\0';
    }
    /* the engine's "gave up ... ; last error: X": X is what the caller needs */
    const char *e = strstr(last.error, "last error: ");
    e = e ? e + 12 : last.error;
    wl__fmt(res->error, sizeof(res->error), "'%.80s' has been down for %llu ms (fail-fast); "
            "last error: %.140s", sl->key, (unsigned long long)ms_since(down, wl__now_ns()),
            e[0] ? e : "none");
    memcpy(res->sqlstate, last.sqlstate, sizeof(res->sqlstate));
    return code;
}

static void record_wait(struct wl__slot *sl, uint64_t ns)
{
    uint64_t ms = ns / MS;
    unsigned b = 0;
    while (b < WL_HIST_BUCKETS - 1 && ms >= hist_bounds_ms[b])
        b++;
    atomic_fetch_add_explicit(&sl->hist[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sl->wait_count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sl->wait_sum_ns, ns, memory_order_relaxed);
}

/* Is the slot READY? Then fill the epoch. A seqlock read: the epoch only changes while
 * the slot is not READY, so an unchanged state word means the epoch belongs to it. */
static inline int ready_epoch(struct wl__slot *sl, uint32_t s, uint64_t *epoch)
{
    if (WL__ST(s) != WL_READY)
        return 0;
    *epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
    atomic_thread_fence(memory_order_acquire); /* the epoch load happens before the recheck */
    return atomic_load_explicit(&sl->state, memory_order_relaxed) == s;
}

static uint64_t xorshift(uint64_t *rng, uint64_t now)
{
    if (*rng == 0)
        *rng = now ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    return *rng;
}

/* How long a follower sleeps before checking the watcher: 250-750 ms, jittered, whatever
 * the number of waiters (a gauge never steers timing), so a watcher that died with its
 * deputy is replaced within 750 ms at worst. */
static uint64_t probe_interval(uint64_t now)
{
    static _Thread_local uint64_t rng;
    return PROBE_MIN_NS + xorshift(&rng, now) % PROBE_SPAN_NS;
}

/* ---- claim, progress, publish: the leader's three steps ---- */

/* Holding sl->mutex with state word s (not READY): claim it. 0, or -EAGAIN (unlocked) if
 * the word changed meanwhile. */
static int claim_locked(struct wl_segment *seg, struct wl__slot *sl, uint32_t s,
                        struct wl__claim *c)
{
    uint64_t t0 = wl__now_ns();
    uint32_t gen = WL__NEXT(s, WL_WARMING);

    atomic_store_explicit(&sl->leader_pid, (int32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&sl->leader_pidns, wl__segment_pidns(seg), memory_order_relaxed);
    atomic_store_explicit(&sl->claimed_ns, t0, memory_order_relaxed);
    /* release: leader fields are visible to whoever sees WARMING at this generation */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, gen, memory_order_release,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        return -EAGAIN; /* invalidated or reset meanwhile: decide again */
    }
    atomic_fetch_add_explicit(&sl->warmups, 1, memory_order_relaxed);
    wl__futex_wake_all(&sl->state); /* followers see the new generation; one becomes watcher */
    c->seg = seg;
    c->sl = sl;
    c->gen = gen;
    c->pid = getpid();
    c->t0 = t0;
    c->staged = 0;
    return 0;
}

int wl__claim_try(struct wl_segment *seg, const char *key, struct wl__claim *c)
{
    struct wl__slot *sl;
    uint64_t hash;
    uint32_t s;
    size_t len;
    int r;

    if (!seg || !key || !*key || !c)
        return -EINVAL;
    len = strlen(key);
    hash = wl__key_hash(key, len);
    if ((r = find_hashed(seg, key, len, hash, 1, &sl)) < 0)
        return r;
    for (;;) {
        s = atomic_load_explicit(&sl->state, memory_order_acquire);
        if (!wl__slot_is(sl, s, hash)) { /* forgotten since we found it: find it again */
            if ((r = find_hashed(seg, key, len, hash, 1, &sl)) < 0)
                return r;
            continue;
        }
        if (WL__ST(s) == WL_READY)
            return -EALREADY;
        r = wl__lock(&sl->mutex, 0, repair_slot, sl);
        if (r == -EBUSY)
            return -EBUSY;
        if (r < 0)
            return r;
        /* acquire: see the state as the previous holder left it */
        s = atomic_load_explicit(&sl->state, memory_order_acquire);
        if (!wl__slot_is(sl, s, hash)) {
            wl__unlock(&sl->mutex);
            continue;
        }
        if (WL__ST(s) == WL_READY) {
            wl__unlock(&sl->mutex);
            return -EALREADY;
        }
        if (claim_locked(seg, sl, s, c) == 0)
            return 0;
    }
}

int wl__claim_publish(struct wl__claim *c, int rc, struct wl_result *res)
{
    struct wl__slot *sl = c->sl;
    uint32_t gen = c->gen, pub = WL__NEXT(c->gen, WL__PUBLISHING), done;
    uint64_t now, epoch;

    if (getpid() != c->pid) {
        /* A child forked inside warm(): it does not own the mutex, and the slot has a
         * new leader once the parent is gone. Publish nothing, unlock nothing. */
        wl__fmt(res->error, sizeof(res->error), "the warm-up of '%.80s' forked; only the "
                "process that claimed it (pid %d) may publish", sl->key, (int)c->pid);
        return -ECHILD;
    }
    /* acquire: nothing of ours is written unless the slot is still ours (not reset) */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &gen, pub, memory_order_acquire,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        wl__fmt(res->error, sizeof(res->error), "the slot of '%.80s' was reset while this "
                "process warmed it; its result was discarded", sl->key);
        return -ECANCELED;
    }
    atomic_fetch_add_explicit(&sl->attempts, res->attempts, memory_order_relaxed);
    stage_at_end(c, rc);
    now = wl__now_ns();
    if (rc == 0) {
        epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed) + 1;
        atomic_store_explicit(&sl->epoch, epoch, memory_order_relaxed);
        atomic_store_explicit(&sl->time_to_ready_ns, (int64_t)(now - c->t0),
                              memory_order_relaxed);
        atomic_store_explicit(&sl->ready_ns, now, memory_order_relaxed);
        atomic_store_explicit(&sl->handover_ns, warming_handover ? now : 0,
                              memory_order_relaxed);
        mark_verified(sl, now);
        atomic_store_explicit(&sl->down_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->streak, 0, memory_order_relaxed);
        done = WL__NEXT(pub, WL_READY);
        res->epoch = epoch;
    } else {
        if (rc > 0)
            rc = -EIO;
        if (!res->error[0])
            wl__fmt(res->error, sizeof(res->error), "warm-up of '%.80s' failed: %s", sl->key,
                    wl_strerror(rc));
        write_text(sl, rc, res->error, res->sqlstate);
        atomic_fetch_add_explicit(&sl->failures, 1, memory_order_relaxed);
        if (wl__transient(rc)) {
            /* Says nothing final about the target: STALE, so callers with time left carry
             * on waiting and the next prober claims it, not before retry_ns. */
            static _Thread_local uint64_t rng;
            uint32_t k = atomic_fetch_add_explicit(&sl->streak, 1, memory_order_relaxed);
            uint64_t d = RETRY_FIRST_NS << (k < 5 ? k : 5);
            if (d > RETRY_MAX_NS)
                d = RETRY_MAX_NS;
            d = d / 2 + xorshift(&rng, now) % (d / 2 + 1);
            if (rc != -ECANCELED)
                outage_begins(sl, now);
            atomic_store_explicit(&sl->retry_ns, now + d, memory_order_relaxed);
            done = WL__NEXT(pub, WL_STALE);
        } else {
            /* Permanent: the server answered; whatever outage there was is over. */
            atomic_store_explicit(&sl->failed_ns, now, memory_order_relaxed);
            atomic_store_explicit(&sl->down_ns, 0, memory_order_relaxed);
            done = WL__NEXT(pub, WL_FAILED);
        }
        res->epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
    }
    /* release: READY (or FAILED) is never seen before the epoch and failure text. Only
     * this leader changes a PUBLISHING word (wl_reset waits it out), so a store does. */
    atomic_store_explicit(&sl->state, done, memory_order_release);
    warming_handover = 0;
    wl__futex_wake_all(&sl->state);
    wl__unlock(&sl->mutex);
    return rc;
}

void wl__slot_touch(struct wl_segment *seg, const char *key, uint64_t epoch)
{
    struct wl__slot *sl;
    uint64_t cur;
    uint32_t s;

    if (!seg || !key || wl__slot_find(seg, key, 0, &sl) < 0)
        return;
    s = atomic_load_explicit(&sl->state, memory_order_acquire);
    if (wl__slot_is(sl, s, wl__key_hash(key, strlen(key))) && ready_epoch(sl, s, &cur) &&
        cur == epoch)
        mark_verified(sl, wl__now_ns());
}

/* ---- wl_ensure ---- */

struct call {
    struct wl_segment *seg;
    struct wl__slot *sl;
    uint64_t hash; /* the key's: tells a forgotten or taken-over slot (wl__slot_is) */
    wl_warm_fn warm;
    void *arg;
    uint64_t deadline, ttl_ns;
    uint32_t flags;
    int led;
};

/* The leader's part, entered holding sl->mutex with the state word s (not READY). */
static int lead(struct call *k, uint32_t s, int reverify, struct wl_result *res)
{
    struct wl__claim c;
    int rc;

    if (claim_locked(k->seg, k->sl, s, &c) < 0)
        return -EAGAIN;
    res->role = WL_LEADER;
    res->attempts = 0;
    res->error[0] = '\0';
    res->sqlstate[0] = '\0';
    warming = &c;
    warming_reverify = reverify;
    warming_fail_fast = !!(k->flags & WL_FAIL_FAST);
    warming_stop = warming_handover = 0;
    rc = k->warm ? k->warm(k->arg, res) : 0;
    warming = NULL;
    warming_reverify = warming_fail_fast = 0;
    k->led = 1;
    return wl__claim_publish(&c, rc, res);
}

/* Could a caller claim the slot now? COLD, STALE (once retry_ns has passed), FAILED once
 * its fail_ttl is over. *wait_until gets when a paced STALE slot may be claimed. */
static int claimable(struct wl__slot *sl, uint32_t s, uint64_t now, uint64_t ttl_ns,
                     uint64_t *wait_until)
{
    uint64_t retry;

    *wait_until = 0;
    switch (WL__ST(s)) {
    case WL_COLD: return 1;
    case WL_STALE:
        retry = atomic_load_explicit(&sl->retry_ns, memory_order_relaxed);
        if (now >= retry)
            return 1;
        *wait_until = retry;
        return 0;
    case WL_FAILED:
        return now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) >= ttl_ns;
    default: return 0;
    }
}

/* Holding sl->mutex: decide. Returns 1 if the caller should loop (and has unlocked),
 * otherwise the result of leading (k->led set). */
static int decide_locked(struct call *k, struct wl_result *res)
{
    struct wl__slot *sl = k->sl;
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
    uint64_t now = wl__now_ns(), until;
    int r;

    if (!wl__slot_is(sl, s, k->hash)) { /* forgotten meanwhile: the caller finds it again */
        wl__unlock(&sl->mutex);
        return 1;
    }

    /* The mutex came too late to lead a warm-up that could finish: the caller reports its
     * deadline instead (the slot stays claimable for the next caller). */
    if (now >= k->deadline ||
        (k->deadline - now < MIN_CLAIM_NS &&
         (now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) < k->ttl_ns ||
          atomic_load_explicit(&sl->down_ns, memory_order_relaxed)))) {
        wl__unlock(&sl->mutex);
        return 1;
    }
    /* WARMING here means its leader died (we were handed the mutex owner-dead) or forked
     * away: take over. */
    if (WL__ST(s) == WL_WARMING || claimable(sl, s, now, k->ttl_ns, &until)) {
        r = lead(k, s, 0, res);
        return r == -EAGAIN && !k->led ? 1 : r;
    }
    wl__unlock(&sl->mutex);
    return 1;
}

/* READY, but verified longer than max_age ago: one caller re-verifies while the slot stays
 * READY for everyone else. READY verified before the host was suspended (`slept`): one
 * caller re-verifies and the others wait for it (the mutex), since what the host's sleep
 * did to the server and the path to it is unknown. 0 ready (res->epoch), 1: the
 * verification failed and the slot changed (the caller carries on through the slow path),
 * or -ETIMEDOUT (the caller's deadline passed waiting for another's verification). */
static int reverify(struct call *k, uint32_t s, uint64_t epoch, int slept,
                    struct wl_result *res)
{
    struct wl__slot *sl = k->sl;
    struct wl__claim c = {k->seg, sl, s, getpid(), wl__now_ns(), 0};
    int rc, r = wl__lock(&sl->mutex, slept ? k->deadline : 0, repair_slot, sl);

    res->epoch = epoch;
    if (r == -ETIMEDOUT && slept) {
        wl__fmt(res->error, sizeof(res->error), "timed out waiting for the re-verification of "
                "'%.80s' after the host resumed from a suspend", sl->key);
        return -ETIMEDOUT;
    }
    if (r < 0)
        return 0; /* someone holds it (verifying, or deciding): keep the ready path */
    if (atomic_load_explicit(&sl->state, memory_order_acquire) != s) {
        wl__unlock(&sl->mutex);
        return 1;
    }
    if (slept && !slept_since_verified(sl)) {
        wl__unlock(&sl->mutex); /* the caller before us re-verified it */
        return 0;
    }
    res->role = WL_LEADER;
    warming = &c;
    warming_reverify = 1;
    warming_fail_fast = !!(k->flags & WL_FAIL_FAST);
    rc = k->warm ? k->warm(k->arg, res) : 0;
    warming = NULL;
    warming_reverify = warming_fail_fast = 0;
    if (getpid() != c.pid) {
        wl__fmt(res->error, sizeof(res->error), "the re-verification of '%.80s' forked",
                sl->key);
        return -ECHILD;
    }
    atomic_fetch_add_explicit(&sl->attempts, res->attempts, memory_order_relaxed);
    stage_at_end(&c, rc);
    if (rc == 0) {
        mark_verified(sl, wl__now_ns());
        atomic_store_explicit(&sl->down_ns, 0, memory_order_relaxed);
        wl__unlock(&sl->mutex);
        res->role = WL_FOLLOWER;
        res->error[0] = '\0';
        return 0;
    }
    /* The target failed its verification: the epoch is over. Leave the slot STALE (the
     * caller then leads a warm-up, with the outage semantics) or FAILED (permanent). */
    if (rc > 0)
        rc = -EIO;
    if (!res->error[0])
        wl__fmt(res->error, sizeof(res->error), "re-verification of '%.80s' failed: %s",
                sl->key, wl_strerror(rc));
    write_text(sl, rc, res->error, res->sqlstate);
    if (wl__transient(rc)) {
        outage_begins(sl, wl__now_ns());
        atomic_store_explicit(&sl->retry_ns, 0, memory_order_relaxed);
    } else {
        atomic_store_explicit(&sl->failed_ns, wl__now_ns(), memory_order_relaxed);
        atomic_fetch_add_explicit(&sl->failures, 1, memory_order_relaxed);
    }
    /* release: the failure text is seen before the new state */
    if (atomic_compare_exchange_strong_explicit(
            &sl->state, &s, WL__NEXT(s, wl__transient(rc) ? WL_STALE : WL_FAILED),
            memory_order_release, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&sl->invalidations, 1, memory_order_relaxed);
        wl__futex_wake_all(&sl->state);
    }
    wl__unlock(&sl->mutex);
    res->role = WL_FOLLOWER;
    res->error[0] = res->sqlstate[0] = '\0';
    return 1;
}

/* This caller led a warm-up that failed transiently. It carries on (waiting, or probing
 * again when the slot's pacing allows) while it has time left, unless it asked for
 * WL_FAIL_FAST or its warm function said this was its last word (wl__warm_stop). */
static int carry_on(struct call *k, int r)
{
    if (!wl__transient(r) || r == -ECANCELED || (k->flags & WL_FAIL_FAST) || warming_stop)
        return 0;
    if (wl__now_ns() + MIN_CLAIM_NS >= k->deadline)
        return 0; /* the warm-up ran out of the caller's own time: its message says so */
    k->led = 0;
    return 1;
}

static void result_init(struct wl_result *res)
{
    res->role = WL_FOLLOWER;
    res->epoch = 0;
    res->waited_ns = 0;
    res->attempts = 0;
    res->sqlstate[0] = '\0';
    res->error[0] = '\0';
}

/* Does a READY slot need a re-verification for max_age_ms (0: never)? 0 no; AGED its last
 * verification is older than that; SLEPT the host was suspended since it (the monotonic
 * age does not count the time asleep, so only the boot clock's lead shows it). */
enum { FRESH = 0, AGED = 1, SLEPT = 2 };
static int is_aged(struct wl__slot *sl, uint32_t max_age_ms)
{
    uint64_t v = atomic_load_explicit(&sl->verified_ns, memory_order_relaxed), now;
    int64_t gap;

    if (!max_age_ms)
        return FRESH;
    gap = boot_gap(&now);
    if (slept_since(sl, gap))
        return SLEPT;
    return now - v >= (uint64_t)max_age_ms * MS ? AGED : FRESH;
}

static int find_or_allocate(struct wl_segment *seg, const char *key, struct wl__slot **sl,
                            struct wl_result *res)
{
    int r = wl__slot_find(seg, key, 1, sl);
    if (r == -ENOSPC)
        wl__fmt(res->error, sizeof(res->error), "all %u slots of segment %s are in use; "
                "recreate it with more slots or use fewer keys", seg->nslots, seg->name);
    else if (r < 0)
        wl__fmt(res->error, sizeof(res->error), "cannot allocate a slot in %s: %s",
                seg->name, strerror(-r));
    return r;
}

static int ensure_slow(struct wl_segment *seg, struct wl__slot *sl, const char *key,
                       wl_warm_fn warm, void *arg, const struct wl_wait_opts *opts,
                       uint32_t s, int aged, struct wl_result *res);

WL_EXPORT int wl_ensure(struct wl_segment *seg, const char *key, wl_warm_fn warm, void *arg,
                        const struct wl_wait_opts *opts, struct wl_result *res)
{
    struct wl_result scratch;
    struct wl__slot *sl;
    uint32_t s = 0, max_age = opts ? opts->max_age_ms : 0;
    uint64_t epoch, hash;
    size_t len;
    int r, aged = FRESH;

    if (!res)
        res = &scratch;
    result_init(res);
    if (!seg || !key || !*key) {
        wl__fmt(res->error, sizeof(res->error), "wl_ensure: %s", !seg ? "segment is NULL"
                                                                      : "key is empty");
        return -EINVAL;
    }

    /* The ready path: a lookup and atomic loads; no syscall, no lock. */
    len = strlen(key);
    hash = wl__key_hash(key, len);
    r = find_hashed(seg, key, len, hash, 0, &sl);
    if (r == 0) {
        /* acquire: pairs with the leader's release store that published READY */
        s = atomic_load_explicit(&sl->state, memory_order_acquire);
        if (wl__slot_is(sl, s, hash) && ready_epoch(sl, s, &epoch)) {
            res->epoch = epoch;
            if (!max_age || (aged = is_aged(sl, max_age)) == FRESH)
                return 0;
        }
    } else if ((r = find_or_allocate(seg, key, &sl, res)) < 0) {
        return r;
    }
    return ensure_slow(seg, sl, key, warm, arg, opts, s, aged, res);
}

/* The slow path: res->epoch is set when the slot was READY at word s but `aged` (AGED or
 * SLEPT). */
/* A follower that waited for a READY whose leader hands its verifying connection to its
 * caller lets that caller's first query go first: it returns WL__HANDOVER_GRACE_NS after
 * the READY (bounded by its deadline). The herd's logins would otherwise take every core
 * the moment it wakes, and the one connection that is ready would queue behind them. */
static void handover_grace(struct wl__slot *sl, uint64_t now, uint64_t deadline)
{
    uint64_t h = atomic_load_explicit(&sl->handover_ns, memory_order_relaxed), until;
    if (!h || now >= h + WL__HANDOVER_GRACE_NS)
        return;
    until = h + WL__HANDOVER_GRACE_NS < deadline ? h + WL__HANDOVER_GRACE_NS : deadline;
    if (until > now)
        wl__backoff_pause(until - now);
}

static int ensure_slow(struct wl_segment *seg, struct wl__slot *sl, const char *key,
                       wl_warm_fn warm, void *arg, const struct wl_wait_opts *opts,
                       uint32_t s, int aged, struct wl_result *res)
{
    struct wl__token *tok = NULL;
    struct call k;
    uint32_t timeout_ms;
    uint64_t t0, epoch;
    int r, counted = 0, waited = 0;

    timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    t0 = wl__now_ns();
    k.seg = seg;
    k.sl = sl;
    k.hash = wl__key_hash(key, strlen(key));
    k.warm = warm;
    k.arg = arg;
    k.ttl_ns = (uint64_t)(opts && opts->fail_ttl_ms ? opts->fail_ttl_ms : DEFAULT_FAIL_TTL_MS)
               * MS;
    k.deadline = t0 + (uint64_t)timeout_ms * MS;
    k.flags = opts ? opts->flags : 0;
    k.led = 0;

    if (res->epoch) { /* READY but aged: re-verify once */
        if ((r = reverify(&k, s, res->epoch, aged == SLEPT, res)) <= 0) {
            res->waited_ns = wl__now_ns() - t0;
            return r;
        }
        res->epoch = 0;
    }

    for (;;) {
        uint64_t now = wl__now_ns(), until;
        s = atomic_load_explicit(&sl->state, memory_order_acquire);

        if (!wl__slot_is(sl, s, k.hash)) {
            /* The key was forgotten (wl_forget) since this caller found its slot, which may
             * serve another key by now: find (or make) the key's slot again. */
            if (counted) {
                token_give(sl, tok);
                tok = NULL;
                counted = 0;
            }
            if ((r = find_or_allocate(seg, key, &sl, res)) < 0)
                break;
            k.sl = sl;
            continue;
        }
        if (ready_epoch(sl, s, &epoch)) {
            if (waited)
                handover_grace(sl, now, k.deadline);
            res->epoch = epoch;
            res->error[0] = res->sqlstate[0] = '\0'; /* an earlier try of ours failed */
            r = 0;
            break;
        }
        if (WL__ST(s) == WL_FAILED && now - atomic_load_explicit(&sl->failed_ns,
                                                                 memory_order_relaxed) <
                                          k.ttl_ns) {
            if (read_failure(sl, s, res, &r) == 0) {
                res->epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
                break;
            }
            continue; /* torn or changed: look again */
        }
        if (now >= k.deadline) {
            r = fail_timeout(seg, sl, timeout_ms, k.ttl_ns, res);
            break;
        }
        if (!counted) { /* from here on this caller waits (and is counted) until it decides */
            tok = token_take(seg, sl, now ^ (uint64_t)getpid() * 0x9e3779b97f4a7c15ull);
            counted = waited = 1;
        }
        if ((k.flags & WL_FAIL_FAST) && atomic_load_explicit(&sl->down_ns, memory_order_relaxed) &&
            (WL__IS_WARMING(s) || !claimable(sl, s, now, k.ttl_ns, &until))) {
            /* An outage, and someone probes (or probed a moment ago): answer now. */
            r = fail_fast(sl, res);
            break;
        }
        if (!WL__IS_WARMING(s)) {
            if (!claimable(sl, s, now, k.ttl_ns, &until) && until) {
                /* A prober just failed transiently: the next may start at `until`. */
                wl__futex_wait(&sl->state, s, until < k.deadline ? until : k.deadline);
                continue;
            }
            if (k.deadline - now < MIN_CLAIM_NS &&
                (now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) < k.ttl_ns ||
                 atomic_load_explicit(&sl->down_ns, memory_order_relaxed))) {
                /* A warm-up just failed (or the target is down) and ours would have only a
                 * few ms: report that instead of starting one that cannot finish. */
                r = fail_timeout(seg, sl, timeout_ms, k.ttl_ns, res);
                break;
            }
            /* Claimable: take the mutex (blocking: whoever holds it is deciding, or is a
             * leader whose warm-up we then wait out, counted as a waiter meanwhile), then
             * decide under it. */
            r = wl__lock(&sl->mutex, k.deadline, repair_slot, sl);
            if (r >= 0 && counted) { /* deciding, not waiting: a leader is no waiter */
                token_give(sl, tok);
                tok = NULL;
                counted = 0;
            }
            if (r == -ETIMEDOUT) {
                r = fail_timeout(seg, sl, timeout_ms, k.ttl_ns, res);
                break;
            }
            if (r < 0) {
                wl__fmt(res->error, sizeof(res->error), "cannot lock the slot of '%.80s': "
                        "%s", key, strerror(-r));
                break;
            }
            r = decide_locked(&k, res);
            if (k.led && carry_on(&k, r))
                continue;
            if (k.led && (k.flags & WL_FAIL_FAST) && wl__transient(r) && r != -ECANCELED)
                r = fail_fast(sl, res); /* our one attempt failed: say how long it is down */
            if (k.led)
                break;
            continue;
        }

        /* WARMING: follow. */
        r = wl__lock(&sl->watch, 0, repair_none, NULL);
        if (r == -EBUSY && wl__lock(&sl->deputy, 0, repair_none, NULL) >= 0) {
            /* The deputy: block on the watcher's mutex; the kernel hands it over when the
             * watcher dies (or leaves), and the deputy becomes the watcher. */
            r = wl__lock(&sl->watch, k.deadline, repair_none, NULL);
            wl__unlock(&sl->deputy);
            if (r >= 0) /* the deputy's place is free: a sleeper takes it now, not at its
                         * next check */
                wl__futex_wake_all(&sl->state);
            if (r == -ETIMEDOUT) {
                r = fail_timeout(seg, sl, timeout_ms, k.ttl_ns, res);
                break;
            }
        }
        if (r >= 0) {
            /* The watcher: block on the leader's mutex; the kernel hands it over, marked
             * owner-dead, if the leader dies. */
            r = wl__lock(&sl->mutex, k.deadline, repair_slot, sl);
            wl__unlock(&sl->watch);
            if (r >= 0 && counted) { /* deciding now */
                token_give(sl, tok);
                tok = NULL;
                counted = 0;
            }
            if (r < 0) {
                /* Deadline (or an error): let another follower become the watcher. */
                wl__futex_wake_all(&sl->state);
                if (r == -ETIMEDOUT) {
                    r = fail_timeout(seg, sl, timeout_ms, k.ttl_ns, res);
                } else {
                    wl__fmt(res->error, sizeof(res->error), "cannot lock the slot of "
                            "'%.80s': %s", key, strerror(-r));
                }
                break;
            }
            r = decide_locked(&k, res);
            if (k.led && carry_on(&k, r))
                continue;
            if (k.led)
                break;
            continue;
        }
        /* Someone watches: sleep on the state word, waking now and then to check that the
         * watcher is still alive (its death wakes nobody). */
        until = now + probe_interval(now);
        if (until > k.deadline)
            until = k.deadline;
        wl__futex_wait(&sl->state, s, until);
    }

    if (counted)
        token_give(sl, tok);
    res->waited_ns = wl__now_ns() - t0;
    if (r != -ECHILD)
        record_wait(sl, res->waited_ns);
    if (!k.led)
        res->role = WL_FOLLOWER;
    return r;
}

WL_EXPORT int wl_invalidate(struct wl_segment *seg, const char *key, uint64_t epoch)
{
    struct wl__slot *sl;
    uint64_t cur;
    uint32_t s;
    int r;

    if (!seg || !key || !*key)
        return -EINVAL;
    if ((r = wl__slot_find(seg, key, 0, &sl)) < 0)
        return r;
    s = atomic_load_explicit(&sl->state, memory_order_acquire);
    if (!wl__slot_is(sl, s, wl__key_hash(key, strlen(key))) || !ready_epoch(sl, s, &cur) ||
        cur != epoch)
        return 0; /* not READY, or READY at another epoch: an old invalidation is ignored */
    /* release: a caller that sees STALE and claims sees everything before it */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, WL__NEXT(s, WL_STALE),
                                                 memory_order_release, memory_order_relaxed))
        return 0; /* someone else changed it first */
    atomic_store_explicit(&sl->retry_ns, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&sl->invalidations, 1, memory_order_relaxed);
    wl__futex_wake_all(&sl->state);
    return 1;
}

/* ---- prepared keys ---- */

struct wl_key {
    struct wl_segment *seg;
    struct wl__slot *sl;
    uint64_t hash;       /* the key's (wl__slot_is) */
    uint32_t ready_word; /* the READY state word last seen, UINT32_MAX none */
    uint64_t epoch;      /* its epoch */
    uint32_t age_ms;     /* the max_age_ms fresh_ns was computed for */
    uint64_t fresh_ns;   /* CLOCK_MONOTONIC_COARSE before which that epoch is fresh */
    int64_t wall_off;    /* CLOCK_REALTIME_COARSE - CLOCK_MONOTONIC_COARSE when last looked */
    int wall_known;      /* wall_off is set */
    uint64_t wall_tick;  /* the CLOCK_MONOTONIC_COARSE tick at which wall_off was last
                          * confirmed: within that tick it is not read again */
    char key[];
};

static int near_ns(int64_t a, int64_t b)
{
    return a - b < (int64_t)RESUME_NS && b - a < (int64_t)RESUME_NS;
}

/* The slow path found the slot fresh (no suspend since its verification): the wall clock's
 * offset now is the one the ready path compares with. */
static void key_rebase(struct wl_key *k)
{
    uint64_t mono = clock_ns(CLOCK_MONOTONIC_COARSE);
    k->wall_off = (int64_t)(realtime_ns(CLOCK_REALTIME_COARSE) - mono);
    k->wall_known = 1;
    k->wall_tick = mono;
}

/* Is the READY epoch k saw fresh for max_age_ms (0: any age)? On the ready path: a read of
 * the coarse monotonic clock (the vDSO's, no syscall), and of the coarse wall clock once
 * per tick of it (a suspend is seen at the latest one tick after the resume: the first
 * call after it in a tick it has not checked); only past its bound the
 * slot's verification time is read again (a keeper's check moves it without a
 * transition). Only coarse clocks here: the fine ones may read the TSC, which a process
 * can have turned off (seccomp strict mode does), and there is no coarse CLOCK_BOOTTIME.
 * A suspend of the host shows instead as a jump of the wall clock against the monotonic
 * one (the kernel adds the time asleep to the first, not the second): such a jump, since
 * the slow path last confirmed the offset (key_rebase) or else since the slot's
 * verification, sends calls to the slow path, where the boot clock's lead (fine clocks)
 * decides. A step of the wall clock (settimeofday, an NTP step) costs one slow call. The
 * coarse clock trails CLOCK_MONOTONIC by up to one tick, so an epoch may be trusted that
 * much past its age. */
static int key_fresh(struct wl_key *k, uint32_t max_age_ms)
{
    uint64_t mono, v;
    int64_t off, base;
    int moved;

    if (!max_age_ms)
        return 1;
    mono = clock_ns(CLOCK_MONOTONIC_COARSE);
    if (k->age_ms == max_age_ms && mono < k->fresh_ns && mono == k->wall_tick)
        return 1;
    off = (int64_t)(realtime_ns(CLOCK_REALTIME_COARSE) - mono);
    if (k->age_ms == max_age_ms && mono < k->fresh_ns && near_ns(off, k->wall_off)) {
        k->wall_tick = mono;
        return 1;
    }
    /* relaxed: hints for when to re-verify, read again under the slot's rules if stale */
    v = atomic_load_explicit(&k->sl->verified_ns, memory_order_relaxed);
    base = k->wall_known ? k->wall_off
                         : (int64_t)(atomic_load_explicit(&k->sl->verified_rt_ns,
                                                          memory_order_relaxed) - v);
    moved = !near_ns(off, base);
    if (!moved) {
        k->wall_off = off;
        k->wall_known = 1;
        k->wall_tick = mono;
    }
    k->age_ms = max_age_ms;
    k->fresh_ns = v + (uint64_t)max_age_ms * MS;
    return !moved && mono < k->fresh_ns;
}

WL_EXPORT int wl_key_open(struct wl_segment *seg, const char *key, struct wl_key **out)
{
    struct wl_result res;
    struct wl_key *k;
    size_t len;
    int r;

    if (!seg || !key || !*key || !out)
        return -EINVAL;
    len = strlen(key);
    if (!(k = calloc(1, sizeof(*k) + len + 1)))
        return -ENOMEM;
    if ((r = find_or_allocate(seg, key, &k->sl, &res)) < 0) {
        free(k);
        return r;
    }
    k->seg = seg;
    k->hash = wl__key_hash(key, len);
    k->ready_word = UINT32_MAX; /* state 7: no real word matches it */
    memcpy(k->key, key, len + 1);
    *out = k;
    return 0;
}

/* What a ready path answers: a follower's READY at epoch, nothing waited or attempted. */
static inline void ready_result(struct wl_result *res, uint64_t epoch)
{
    if (res) {
        res->role = WL_FOLLOWER;
        res->epoch = epoch;
        res->waited_ns = 0;
        res->attempts = 0;
        res->sqlstate[0] = res->error[0] = '\0';
    }
}

int wl__key_ready(struct wl_key *k, uint32_t max_age_ms, struct wl_result *res)
{
    /* The ready path: one atomic load. The state word changes on every transition, so
     * the READY word we saw last still means the epoch we read with it. acquire: pairs
     * with the leader's release store of READY. */
    uint32_t s = atomic_load_explicit(&k->sl->state, memory_order_acquire);
    if (s != k->ready_word) {
        /* A READY word this key has not seen (another process or handle published it):
         * learn it and its epoch, once per transition. */
        uint64_t epoch;
        if (!wl__slot_is(k->sl, s, k->hash) || !ready_epoch(k->sl, s, &epoch))
            return 0;
        k->ready_word = s;
        k->epoch = epoch;
    }
    if (!key_fresh(k, max_age_ms))
        return 0;
    ready_result(res, k->epoch);
    return 1;
}

static int key_ensure(struct wl_key *k, wl_warm_fn warm, void *arg,
                      const struct wl_wait_opts *opts, struct wl_result *res);

/* The ready path without a max age: the state word this key saw READY, with its epoch. A
 * leaf that sets up no stack frame; everything else is key_ensure's (a tail call). */
WL_EXPORT int wl_key_ensure(struct wl_key *k, wl_warm_fn warm, void *arg,
                            const struct wl_wait_opts *opts, struct wl_result *res)
{
    if (k && !(opts && opts->max_age_ms) &&
        atomic_load_explicit(&k->sl->state, memory_order_acquire) == k->ready_word) {
        ready_result(res, k->epoch);
        return 0;
    }
    return key_ensure(k, warm, arg, opts, res);
}

__attribute__((noinline)) static int key_ensure(struct wl_key *k, wl_warm_fn warm, void *arg,
                                                const struct wl_wait_opts *opts,
                                                struct wl_result *res)
{
    struct wl_result scratch;
    uint32_t s;
    uint64_t epoch;
    int r, aged = FRESH;

    if (!k)
        return -EINVAL;
    if (wl__key_ready(k, opts ? opts->max_age_ms : 0, res))
        return 0;
    s = atomic_load_explicit(&k->sl->state, memory_order_acquire);
    if (!res)
        res = &scratch;
    result_init(res);
    if (!wl__slot_is(k->sl, s, k->hash)) {
        /* The key was forgotten (wl_forget): find (or make) its slot again. */
        if ((r = find_or_allocate(k->seg, k->key, &k->sl, res)) < 0)
            return r;
        k->ready_word = UINT32_MAX;
        k->age_ms = 0;
        s = atomic_load_explicit(&k->sl->state, memory_order_acquire);
    }
    if (wl__slot_is(k->sl, s, k->hash) && ready_epoch(k->sl, s, &epoch)) {
        k->ready_word = s;
        k->epoch = epoch;
        res->epoch = epoch;
        if (!opts || !opts->max_age_ms)
            return 0;
        if ((aged = is_aged(k->sl, opts->max_age_ms)) == FRESH) {
            key_rebase(k);
            return 0;
        }
    }
    r = ensure_slow(k->seg, k->sl, k->key, warm, arg, opts, s, aged, res);
    if (r == 0) {
        s = atomic_load_explicit(&k->sl->state, memory_order_acquire);
        if (wl__slot_is(k->sl, s, k->hash) && ready_epoch(k->sl, s, &epoch) &&
            epoch == res->epoch) {
            k->ready_word = s;
            k->epoch = epoch;
        }
    }
    return r;
}

WL_EXPORT int wl_key_invalidate(struct wl_key *k, uint64_t epoch)
{
    if (!k)
        return -EINVAL;
    return wl_invalidate(k->seg, k->key, epoch);
}

int wl__key_login_take(struct wl_key *k, unsigned budget, uint64_t deadline_ns)
{
    unsigned i, start;
    int r;

    if (budget > WL__LOGIN_TOKENS)
        budget = WL__LOGIN_TOKENS;
    if (budget == 0)
        return -EINVAL;
    /* Spread the processes over the tokens, so that each queue is as short as the next. */
    start = ((unsigned)getpid() ^ (unsigned)((uintptr_t)pthread_self() >> 12)) % budget;
    for (i = 0; i < budget; i++) {
        unsigned t = (start + i) % budget;
        if (wl__lock(&k->sl->logins[t].m, 0, NULL, NULL) >= 0)
            return (int)t;
    }
    if ((r = wl__lock(&k->sl->logins[start].m, deadline_ns, NULL, NULL)) < 0)
        return r == -ETIMEDOUT ? r : -EIO;
    return (int)start;
}

void wl__key_login_give(struct wl_key *k, int token)
{
    if (token >= 0 && token < WL__LOGIN_TOKENS)
        wl__unlock(&k->sl->logins[token].m);
}

const char *wl__key_text(const struct wl_key *k)
{
    return k->key;
}

WL_EXPORT void wl_key_close(struct wl_key *k)
{
    free(k);
}

/* A slot's counters and timings back to a new slot's (wl_reset, wl_forget). Relaxed:
 * statistics, and hints that the next transition's release store orders. */
static void clear_counters(struct wl__slot *sl)
{
    unsigned b;

    atomic_store_explicit(&sl->warmups, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->takeovers, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->attempts, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->failures, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->invalidations, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->wait_count, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->wait_sum_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->ready_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->handover_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->verified_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->verified_rt_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->boot_gap_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->stage, WL_STAGE_NONE, memory_order_relaxed);
    {
        /* the fleet outcome too, behind its seqcount as its writer does it: the odd
         * count visible before the fields change, the even one after */
        uint32_t q = atomic_load_explicit(&sl->fleet_seq, memory_order_relaxed) | 1u;
        atomic_store_explicit(&sl->fleet_seq, q, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);
        sl->fleet_role = WL_FLEET_NONE;
        sl->fleet_pid = 0;
        sl->fleet_host[0] = sl->fleet_app[0] = '\0';
        atomic_store_explicit(&sl->fleet_seq, q + 1, memory_order_release);
    }
    atomic_store_explicit(&sl->down_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->retry_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->streak, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->failed_ns, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->waiters, 0, memory_order_relaxed);
    atomic_store_explicit(&sl->time_to_ready_ns, -1, memory_order_relaxed);
    for (b = 0; b < WL_HIST_BUCKETS; b++)
        atomic_store_explicit(&sl->hist[b], 0, memory_order_relaxed);
}

WL_EXPORT int wl_reset(struct wl_segment *seg, int force)
{
    uint32_t i, n = seg->nslots;
    int busy = 0;

    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[i];
        if (atomic_load_explicit(&sl->key_hash, memory_order_acquire) == 0)
            continue;
        if (WL__IS_WARMING(atomic_load_explicit(&sl->state, memory_order_acquire)) &&
            wl__slot_leader_alive(sl))
            busy++;
    }
    if (busy && !force)
        return -EBUSY;
    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[i];
        uint64_t t_end = wl__now_ns() + PUBLISH_WAIT_NS;
        if (atomic_load_explicit(&sl->key_hash, memory_order_acquire) == 0)
            continue;
        uint32_t s = atomic_load_explicit(&sl->state, memory_order_relaxed);
        /* A new generation: a leader still warming cannot publish into it. A leader in the
         * middle of publishing is waited out (a few instructions; bounded should it be
         * stopped right there). A forgotten slot is nobody's: only the allocator brings
         * it back. */
        for (;;) {
            if ((uint32_t)WL__ST(s) == WL__FORGOTTEN)
                break;
            if ((uint32_t)WL__ST(s) == WL__PUBLISHING && wl__now_ns() < t_end) {
                s = atomic_load_explicit(&sl->state, memory_order_relaxed);
                continue;
            }
            if (atomic_compare_exchange_weak_explicit(&sl->state, &s, WL__NEXT(s, WL_COLD),
                                                      memory_order_release,
                                                      memory_order_relaxed))
                break;
        }
        if ((uint32_t)WL__ST(s) == WL__FORGOTTEN)
            continue;
        clear_counters(sl);
        wl__futex_wake_all(&sl->state);
    }
    return busy;
}

WL_EXPORT int wl_forget(struct wl_segment *seg, const char *key)
{
    struct wl__slot *sl;
    uint32_t s, waiters;
    size_t len;
    uint64_t hash;
    int r;

    if (!seg || !key || !*key)
        return wl__set_error(-EINVAL, "wl_forget: %s", !seg ? "segment is NULL" : "key is empty");
    len = strlen(key);
    hash = wl__key_hash(key, len);
    /* The header lock: no slot is taken (or taken over) meanwhile. */
    if ((r = wl__lock(&seg->hdr->lock, UINT64_MAX, repair_header, NULL)) < 0)
        return wl__set_error(r, "cannot lock the segment: %s", strerror(-r));
    if ((r = find_hashed(seg, key, len, hash, 0, &sl)) < 0) {
        wl__unlock(&seg->hdr->lock);
        return wl__set_error(r, "no slot for this key in the segment");
    }
    /* The slot mutex: no leader warms it, and nobody can claim it while we look. */
    r = wl__lock(&sl->mutex, 0, repair_slot, sl);
    if (r < 0) {
        wl__unlock(&seg->hdr->lock);
        if (r == -EBUSY)
            return wl__set_error(-EBUSY, "a warm-up is in flight (leader pid %d); wait for it "
                                 "to end", (int)atomic_load_explicit(&sl->leader_pid,
                                                                      memory_order_relaxed));
        return wl__set_error(r, "cannot lock the slot: %s", strerror(-r));
    }
    if ((waiters = wl__slot_waiters(seg, sl)) > 0) {
        wl__unlock(&sl->mutex);
        wl__unlock(&seg->hdr->lock);
        return wl__set_error(-EBUSY, "%u process%s waiting for it; forget it once %s done",
                             waiters, waiters == 1 ? " is" : "es are",
                             waiters == 1 ? "it is" : "they are");
    }
    clear_counters(sl);
    atomic_store_explicit(&sl->leader_pid, 0, memory_order_relaxed);
    write_text(sl, 0, "", "");
    /* The epoch is kept: it only grows in a slot, so an epoch of the old key never names
     * one of the key that takes the slot over. The CAS loops because wl_invalidate may turn
     * READY to STALE without the mutex; release: the cleared fields come before the word. */
    s = atomic_load_explicit(&sl->state, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&sl->state, &s, WL__NEXT(s, WL__FORGOTTEN),
                                                  memory_order_release, memory_order_relaxed))
        ;
    atomic_fetch_sub_explicit(&seg->hdr->nused, 1, memory_order_release);
    wl__futex_wake_all(&sl->state); /* a caller about to wait looks again, and finds it gone */
    wl__unlock(&sl->mutex);
    wl__unlock(&seg->hdr->lock);
    return 0;
}
