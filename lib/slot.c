/*
 * A slot's state machine: election, waiting, takeover, publish, invalidate, reset.
 *
 *   COLD ──claim──▶ WARMING ──ok──▶ READY(epoch+1) ──invalidate──▶ STALE ──claim──▶ WARMING
 *                      │   └─failed──▶ FAILED ──fail_ttl passed, next caller claims──▶ WARMING
 *                      └─leader died (EOWNERDEAD)──▶ WARMING under a new leader
 *
 * Who does what:
 * - The leader holds the slot's robust mutex for the whole warm-up, and publishes by a CAS
 *   from the exact state word it claimed with (its generation): a forked child, or a leader
 *   whose slot was reset, cannot publish.
 * - One follower, the watcher, holds the slot's `watch` mutex and blocks on the slot mutex:
 *   the kernel wakes it when the leader dies (robust-list cleanup wakes one waiter of the
 *   mutex only, never the futex sleepers), and it takes over.
 * - Every other follower sleeps on the state word (futex). Each state change wakes them.
 *   Their sleep is bounded (probe_interval) so that, should the watcher itself die, one of
 *   them finds its `watch` mutex owner-dead and becomes the watcher.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define WATCH_PROBE_NS (50ull * 1000000ull)
#define MAX_PROBE_NS (1000ull * 1000000ull)
#define MIN_CLAIM_NS (50ull * 1000000ull) /* too little time left to start a warm-up */
#define DEADLINE_SLACK_NS (20ull * 1000000ull) /* a timeout this close to it is the deadline's */
#define DEFAULT_TIMEOUT_MS 30000u
#define DEFAULT_FAIL_TTL_MS 1000u

static const uint32_t hist_bounds_ms[WL_HIST_BUCKETS - 1] = WL_HIST_BOUNDS_MS;

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

static int slot_matches(struct wl__slot *sl, uint64_t hash, const char *key, size_t len)
{
    size_t n = len < WL_KEY_MAX ? len : WL_KEY_MAX;
    /* Keys longer than WL_KEY_MAX are told apart by length and hash beyond the prefix. */
    (void)hash;
    return sl->key_len == (uint32_t)len && memcmp(sl->key, key, n) == 0;
}

/* Linear probing from hash % nslots; slots are never freed, so a free slot ends a probe. */
static struct wl__slot *probe(struct wl_segment *seg, uint64_t hash, const char *key,
                              size_t len, struct wl__slot **free_slot)
{
    uint32_t i, n = seg->nslots, start = (uint32_t)(hash % n);

    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[(start + i) % n];
        /* acquire: pairs with the allocator's release store, so key text is complete */
        uint64_t h = atomic_load_explicit(&sl->key_hash, memory_order_acquire);
        if (h == 0) {
            if (free_slot)
                *free_slot = sl;
            return NULL;
        }
        if (h == hash && slot_matches(sl, hash, key, len))
            return sl;
    }
    if (free_slot)
        *free_slot = NULL;
    return NULL;
}

static void repair_header(void *arg)
{
    /* An allocator died under the header lock. A half-written slot still has key_hash 0
     * (it is stored last), so it is simply free; nothing else is guarded. */
    (void)arg;
}

int wl__slot_find(struct wl_segment *seg, const char *key, int allocate,
                  struct wl__slot **out)
{
    size_t len = strlen(key);
    uint64_t hash = wl__key_hash(key, len);
    struct wl__slot *sl, *free_slot = NULL;
    int r;

    if ((sl = probe(seg, hash, key, len, NULL))) {
        *out = sl;
        return 0;
    }
    if (!allocate)
        return -ENOENT;
    if ((r = wl__lock(&seg->hdr->lock, UINT64_MAX, repair_header, NULL)) < 0)
        return r;
    sl = probe(seg, hash, key, len, &free_slot);
    if (!sl && free_slot) {
        sl = free_slot;
        sl->key_len = (uint32_t)len;
        memcpy(sl->key, key, len < WL_KEY_MAX ? len : WL_KEY_MAX);
        sl->key[len < WL_KEY_MAX ? len : WL_KEY_MAX] = '\0';
        /* release: the key text is visible before the slot is seen as taken */
        atomic_store_explicit(&sl->key_hash, hash, memory_order_release);
        atomic_fetch_add_explicit(&seg->hdr->nused, 1, memory_order_release);
    }
    wl__unlock(&seg->hdr->lock);
    if (!sl)
        return -ENOSPC;
    *out = sl;
    return 0;
}

/* The one recovery function for a slot mutex whose owner died: the failure text may be
 * torn, so it is cleared; a warm-up that was in flight counts as a takeover. */
static void repair_slot(void *arg)
{
    struct wl__slot *sl = arg;
    uint32_t seq = atomic_load_explicit(&sl->info_seq, memory_order_relaxed);

    if (seq & 1u) {
        sl->fail_error[0] = '\0';
        sl->fail_sqlstate[0] = '\0';
        atomic_store_explicit(&sl->info_seq, seq + 1, memory_order_release);
    }
    if (WL__ST(atomic_load_explicit(&sl->state, memory_order_acquire)) == WL_WARMING)
        atomic_fetch_add_explicit(&sl->takeovers, 1, memory_order_relaxed);
}

static void repair_watch(void *arg)
{
    (void)arg; /* the watch mutex guards no data */
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

/* A consistent copy of the failure text, whatever the state (0, or -EAGAIN if a writer
 * kept changing it). */
static int read_info(struct wl__slot *sl, struct wl_result *out)
{
    for (int tries = 0; tries < 100; tries++) {
        uint32_t q = atomic_load_explicit(&sl->info_seq, memory_order_acquire);
        if (q & 1u)
            continue;
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

/* The slot this thread is warming (set by lead() around warm()), for wl__warm_progress. */
static _Thread_local struct wl__slot *warming;

void wl__warm_progress(int code, const char *error, const char *sqlstate)
{
    (void)code;
    /* We hold its mutex, so we are the only writer; a child forked inside warm() is not. */
    if (warming && atomic_load_explicit(&warming->leader_pid, memory_order_relaxed) == getpid())
        write_text(warming, warming->fail_code, error, sqlstate ? sqlstate : "");
}

static void write_failure(struct wl__slot *sl, int code, const struct wl_result *res)
{
    write_text(sl, code, res->error, res->sqlstate);
}

static const char *pidns_note(struct wl_segment *seg, struct wl__slot *sl)
{
    uint64_t ns = atomic_load_explicit(&sl->leader_pidns, memory_order_relaxed);
    return ns && seg->pidns && ns != seg->pidns ? " (in another PID namespace)" : "";
}

static int read_failure(struct wl__slot *sl, uint32_t s, struct wl_result *res, int *code);

/*
 * The caller's deadline passed. A failure the leader published is passed on as it is; else
 * the message names the stuck leader, or the last leader's error when its own deadline cut
 * its warm-up short.
 */
static int fail_timeout(struct wl_segment *seg, struct wl__slot *sl, uint32_t timeout_ms,
                        uint64_t ttl_ns, struct wl_result *res)
{
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
    int pid = atomic_load_explicit(&sl->leader_pid, memory_order_relaxed), code;
    uint64_t claimed = atomic_load_explicit(&sl->claimed_ns, memory_order_relaxed);
    uint64_t failed = atomic_load_explicit(&sl->failed_ns, memory_order_relaxed);
    uint64_t now = wl__now_ns();
    struct wl_result last;

    if (WL__ST(s) == WL_FAILED && now - failed < ttl_ns && read_failure(sl, s, res, &code) == 0)
        return code;
    if (WL__ST(s) == WL_WARMING) {
        int n = snprintf(res->error, sizeof(res->error), "timed out after %u ms waiting for "
                         "'%.80s': leader pid %d%s has been warming for %llu ms", timeout_ms,
                         sl->key, pid, pidns_note(seg, sl),
                         (unsigned long long)(now > claimed ? (now - claimed) / 1000000u : 0));
        if (read_info(sl, &last) == 0 && last.error[0] && n > 0 &&
            (size_t)n < sizeof(res->error)) {
            wl__fmt(res->error + n, sizeof(res->error) - (size_t)n, "; its last attempt: %s",
                    last.error);
            memcpy(res->sqlstate, last.sqlstate, sizeof(res->sqlstate));
        }
    } else if (failed && now - failed < ttl_ns && read_failure(sl, s, &last, &code) == 0 &&
               last.error[0]) {
        wl__fmt(res->error, sizeof(res->error), "timed out after %u ms; the last warm-up "
                "(pid %d) ended: %.160s", timeout_ms, pid, last.error);
        memcpy(res->sqlstate, last.sqlstate, sizeof(res->sqlstate));
    } else {
        wl__fmt(res->error, sizeof(res->error), "timed out after %u ms waiting for '%.80s' "
                "(state %s, last leader pid %d%s)", timeout_ms, sl->key,
                wl_state_name(WL__ST(s)), pid, pidns_note(seg, sl));
    }
    return -ETIMEDOUT;
}

static void record_wait(struct wl__slot *sl, uint64_t ns)
{
    uint64_t ms = ns / 1000000u;
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

/*
 * How long a follower sleeps before checking the watcher: about 50 ms times waiters/4
 * (capped at 1 s), jittered by +-50%. With many followers the first of them to wake
 * still finds a dead watcher within ~12 ms on average, while the herd as a whole wakes
 * about 80 times a second however large it is.
 */
static uint64_t probe_interval(struct wl__slot *sl, uint64_t now)
{
    static _Thread_local uint64_t rng;
    uint32_t n = atomic_load_explicit(&sl->waiters, memory_order_relaxed);
    uint64_t base = WATCH_PROBE_NS * (n > 4 ? n / 4 : 1);

    if (base > MAX_PROBE_NS)
        base = MAX_PROBE_NS;
    if (rng == 0)
        rng = now ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;
    rng ^= rng << 13; /* xorshift64 */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return base / 2 + rng % base;
}

/*
 * The leader's part, entered holding sl->mutex with the state word s (not READY). Claims,
 * runs warm(), publishes by CAS from its own generation, wakes everyone, unlocks.
 */
static int lead(struct wl_segment *seg, struct wl__slot *sl, uint32_t s, wl_warm_fn warm,
                void *arg, uint64_t deadline, struct wl_result *res)
{
    pid_t me = getpid();
    uint32_t gen = WL__NEXT(s, WL_WARMING), done;
    uint64_t t0 = wl__now_ns(), epoch;
    int rc;

    atomic_store_explicit(&sl->leader_pid, (int32_t)me, memory_order_relaxed);
    atomic_store_explicit(&sl->leader_pidns, seg->pidns, memory_order_relaxed);
    atomic_store_explicit(&sl->claimed_ns, t0, memory_order_relaxed);
    /* release: leader fields are visible to whoever sees WARMING at this generation */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, gen, memory_order_release,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        return -EAGAIN; /* invalidated or reset meanwhile: decide again */
    }
    atomic_fetch_add_explicit(&sl->warmups, 1, memory_order_relaxed);
    wl__futex_wake_all(&sl->state); /* followers see the new generation; one becomes watcher */

    res->role = WL_LEADER;
    res->attempts = 0;
    res->error[0] = '\0';
    res->sqlstate[0] = '\0';
    warming = sl;
    rc = warm ? warm(arg, res) : 0;
    warming = NULL;

    if (getpid() != me) {
        /* A child forked inside warm(): it does not own the mutex, and the slot has a
         * new leader once the parent is gone. Publish nothing, unlock nothing. */
        wl__fmt(res->error, sizeof(res->error), "the warm-up of '%.80s' forked; only the "
                "process that claimed it (pid %d) may publish", sl->key, (int)me);
        return -ECHILD;
    }
    atomic_fetch_add_explicit(&sl->attempts, res->attempts, memory_order_relaxed);
    if (rc == 0) {
        epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed) + 1;
        atomic_store_explicit(&sl->epoch, epoch, memory_order_relaxed);
        uint64_t now = wl__now_ns();
        atomic_store_explicit(&sl->time_to_ready_ns, (int64_t)(now - t0), memory_order_relaxed);
        atomic_store_explicit(&sl->ready_ns, now, memory_order_relaxed);
        done = WL__NEXT(gen, WL_READY);
        res->epoch = epoch;
    } else {
        if (rc > 0)
            rc = -EIO;
        if (!res->error[0])
            wl__fmt(res->error, sizeof(res->error), "warm-up of '%.80s' failed: %s", sl->key,
                    wl_strerror(rc));
        write_failure(sl, rc, res);
        uint64_t now = wl__now_ns();
        atomic_store_explicit(&sl->failed_ns, now, memory_order_relaxed);
        atomic_fetch_add_explicit(&sl->failures, 1, memory_order_relaxed);
        /* A warm-up cut off by this caller's own deadline says nothing final about the
         * target: leave the slot STALE (the error kept for messages), so callers with time
         * left carry on probing instead of being served our timeout. */
        if (rc == -ETIMEDOUT && now + DEADLINE_SLACK_NS >= deadline)
            done = WL__NEXT(gen, WL_STALE);
        else
            done = WL__NEXT(gen, WL_FAILED);
        res->epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
    }
    /* release: READY (or FAILED) is never seen before the epoch and failure text */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &gen, done, memory_order_release,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        wl__fmt(res->error, sizeof(res->error), "the slot of '%.80s' was reset while this "
                "process warmed it; its result was discarded", sl->key);
        return -ECANCELED;
    }
    wl__futex_wake_all(&sl->state);
    wl__unlock(&sl->mutex);
    return rc;
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

/* What a caller does with a state word that is neither READY nor WARMING nor a fresh
 * failure: it may lead. */
static int claimable(struct wl__slot *sl, uint32_t s, uint64_t now, uint64_t ttl_ns)
{
    switch (WL__ST(s)) {
    case WL_COLD:
    case WL_STALE:
        return 1;
    case WL_FAILED:
        return now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) >= ttl_ns;
    default:
        return 0;
    }
}

/*
 * Holding sl->mutex: decide. Returns 1 if the caller should loop (and has unlocked),
 * otherwise the result of leading.
 */
static int decide_locked(struct wl_segment *seg, struct wl__slot *sl, uint64_t ttl_ns,
                         wl_warm_fn warm, void *arg, uint64_t deadline, struct wl_result *res,
                         int *led)
{
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
    uint64_t now = wl__now_ns();
    int r;

    /* The mutex came too late to lead a warm-up that could finish: the caller reports its
     * deadline instead (the slot stays claimable for the next caller). */
    if (now >= deadline ||
        (deadline - now < MIN_CLAIM_NS &&
         now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) < ttl_ns)) {
        wl__unlock(&sl->mutex);
        return 1;
    }
    /* WARMING here means its leader died (we were handed the mutex owner-dead) or forked
     * away: take over. */
    if (WL__ST(s) == WL_WARMING || claimable(sl, s, now, ttl_ns)) {
        r = lead(seg, sl, s, warm, arg, deadline, res);
        if (r == -EAGAIN)
            return 1;
        *led = 1;
        return r;
    }
    wl__unlock(&sl->mutex);
    return 1;
}

WL_EXPORT int wl_ensure(struct wl_segment *seg, const char *key, wl_warm_fn warm, void *arg,
                        const struct wl_wait_opts *opts, struct wl_result *res)
{
    struct wl_result scratch;
    struct wl__slot *sl;
    uint32_t timeout_ms, s;
    uint64_t t0, deadline, ttl_ns, epoch;
    int r, counted = 0, led = 0;

    if (!res)
        res = &scratch;
    result_init(res);
    if (!seg || !key || !*key) {
        wl__fmt(res->error, sizeof(res->error), "wl_ensure: %s", !seg ? "segment is NULL"
                                                                      : "key is empty");
        return -EINVAL;
    }

    /* The ready path: a lookup and atomic loads; no syscall, no lock. */
    r = wl__slot_find(seg, key, 0, &sl);
    if (r == 0) {
        /* acquire: pairs with the leader's release CAS that published READY */
        s = atomic_load_explicit(&sl->state, memory_order_acquire);
        if (ready_epoch(sl, s, &epoch)) {
            res->epoch = epoch;
            return 0;
        }
    } else if ((r = wl__slot_find(seg, key, 1, &sl)) < 0) {
        if (r == -ENOSPC)
            wl__fmt(res->error, sizeof(res->error), "all %u slots of segment %s are in use; "
                    "recreate it with more slots or use fewer keys", seg->nslots, seg->name);
        else
            wl__fmt(res->error, sizeof(res->error), "cannot allocate a slot in %s: %s",
                    seg->name, strerror(-r));
        return r;
    }

    timeout_ms = opts && opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    ttl_ns = (uint64_t)(opts && opts->fail_ttl_ms ? opts->fail_ttl_ms : DEFAULT_FAIL_TTL_MS)
             * 1000000u;
    t0 = wl__now_ns();
    deadline = t0 + (uint64_t)timeout_ms * 1000000u;

    for (;;) {
        uint64_t now = wl__now_ns();
        s = atomic_load_explicit(&sl->state, memory_order_acquire);

        if (ready_epoch(sl, s, &epoch)) {
            res->epoch = epoch;
            r = 0;
            break;
        }
        if (WL__ST(s) == WL_FAILED && !claimable(sl, s, now, ttl_ns)) {
            if (read_failure(sl, s, res, &r) == 0) {
                res->epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
                break;
            }
            continue; /* torn or changed: look again */
        }
        if (now >= deadline) {
            r = fail_timeout(seg, sl, timeout_ms, ttl_ns, res);
            break;
        }
        if (WL__ST(s) != WL_WARMING && deadline - now < MIN_CLAIM_NS &&
            now - atomic_load_explicit(&sl->failed_ns, memory_order_relaxed) < ttl_ns) {
            /* A warm-up just failed (or ran out of its time) and ours would have only a
             * few ms: report that instead of starting one that cannot finish. */
            r = fail_timeout(seg, sl, timeout_ms, ttl_ns, res);
            break;
        }
        if (WL__ST(s) != WL_WARMING) {
            /* Claimable: take the mutex (blocking: whoever holds it is deciding, or is a
             * leader whose warm-up we then wait out), then decide under it. */
            r = wl__lock(&sl->mutex, deadline, repair_slot, sl);
            if (r == -ETIMEDOUT) {
                r = fail_timeout(seg, sl, timeout_ms, ttl_ns, res);
                break;
            }
            if (r < 0) {
                wl__fmt(res->error, sizeof(res->error), "cannot lock the slot of '%.80s': "
                        "%s", key, strerror(-r));
                break;
            }
            r = decide_locked(seg, sl, ttl_ns, warm, arg, deadline, res, &led);
            if (led)
                break;
            continue;
        }

        /* WARMING: follow. */
        if (!counted) {
            atomic_fetch_add_explicit(&sl->waiters, 1, memory_order_relaxed);
            counted = 1;
        }
        r = wl__lock(&sl->watch, 0, repair_watch, NULL);
        if (r >= 0) {
            /* The watcher: block on the leader's mutex; the kernel hands it over, marked
             * owner-dead, if the leader dies. */
            r = wl__lock(&sl->mutex, deadline, repair_slot, sl);
            wl__unlock(&sl->watch);
            if (r < 0) {
                /* Deadline (or an error): let another follower become the watcher. */
                wl__futex_wake_all(&sl->state);
                if (r == -ETIMEDOUT) {
                    r = fail_timeout(seg, sl, timeout_ms, ttl_ns, res);
                } else {
                    wl__fmt(res->error, sizeof(res->error), "cannot lock the slot of "
                            "'%.80s': %s", key, strerror(-r));
                }
                break;
            }
            r = decide_locked(seg, sl, ttl_ns, warm, arg, deadline, res, &led);
            if (led)
                break;
            continue;
        }
        /* Someone watches: sleep on the state word, waking now and then to check that the
         * watcher is still alive (its death wakes nobody). */
        uint64_t until = now + probe_interval(sl, now);
        if (until > deadline)
            until = deadline;
        wl__futex_wait(&sl->state, s, until);
    }

    if (counted)
        atomic_fetch_sub_explicit(&sl->waiters, 1, memory_order_relaxed);
    res->waited_ns = wl__now_ns() - t0;
    if (r != -ECHILD)
        record_wait(sl, res->waited_ns);
    if (!led)
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
    if (!ready_epoch(sl, s, &cur) || cur != epoch)
        return 0; /* not READY, or READY at another epoch: an old invalidation is ignored */
    /* release: a caller that sees STALE and claims sees everything before it */
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, WL__NEXT(s, WL_STALE),
                                                 memory_order_release, memory_order_relaxed))
        return 0; /* someone else changed it first */
    atomic_fetch_add_explicit(&sl->invalidations, 1, memory_order_relaxed);
    wl__futex_wake_all(&sl->state);
    return 1;
}

WL_EXPORT int wl_reset(struct wl_segment *seg, int force)
{
    uint32_t i, n = seg->nslots;
    int busy = 0;

    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[i];
        if (atomic_load_explicit(&sl->key_hash, memory_order_acquire) == 0)
            continue;
        if (WL__ST(atomic_load_explicit(&sl->state, memory_order_acquire)) == WL_WARMING &&
            wl__slot_leader_alive(sl))
            busy++;
    }
    if (busy && !force)
        return -EBUSY;
    for (i = 0; i < n; i++) {
        struct wl__slot *sl = &seg->slots[i];
        unsigned b;
        if (atomic_load_explicit(&sl->key_hash, memory_order_acquire) == 0)
            continue;
        uint32_t s = atomic_load_explicit(&sl->state, memory_order_relaxed);
        /* A new generation: a leader still warming cannot publish into it. */
        while (!atomic_compare_exchange_weak_explicit(&sl->state, &s, WL__NEXT(s, WL_COLD),
                                                      memory_order_release,
                                                      memory_order_relaxed))
            ;
        atomic_store_explicit(&sl->warmups, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->takeovers, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->attempts, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->failures, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->invalidations, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->wait_count, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->wait_sum_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->ready_ns, 0, memory_order_relaxed);
        atomic_store_explicit(&sl->time_to_ready_ns, -1, memory_order_relaxed);
        for (b = 0; b < WL_HIST_BUCKETS; b++)
            atomic_store_explicit(&sl->hist[b], 0, memory_order_relaxed);
        wl__futex_wake_all(&sl->state);
    }
    return busy;
}
