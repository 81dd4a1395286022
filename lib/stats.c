/* Snapshots of the slots' state and counters, read without locks. */
#include <errno.h>
#include <string.h>

#include "internal.h"

WL_EXPORT const char *wl_stage_name(enum wl_stage stage)
{
    switch (stage) {
    case WL_STAGE_NONE: return "none";
    case WL_STAGE_REACHABLE: return "reachable";
    case WL_STAGE_AUTHENTICATED: return "authenticated";
    case WL_STAGE_WARMED: return "warmed";
    case WL_STAGE_VERIFIED: return "verified";
    }
    return "unknown";
}

/* now: CLOCK_MONOTONIC; gap: the boot gap (wl__boot_gap_ns) read with it. Returns the state
 * word it copied (acquire), read before the key's hash. */
static uint32_t copy_slot(struct wl_segment *seg, struct wl__slot *sl, struct wl_slot_info *o,
                          uint64_t now, int64_t gap)
{
    uint32_t s = atomic_load_explicit(&sl->state, memory_order_acquire);
    uint64_t ready = atomic_load_explicit(&sl->ready_ns, memory_order_relaxed);
    uint64_t verified = atomic_load_explicit(&sl->verified_ns, memory_order_relaxed);
    uint64_t down = atomic_load_explicit(&sl->down_ns, memory_order_relaxed);
    unsigned b, tries;

    memset(o, 0, sizeof(*o));
    memcpy(o->key, sl->key, sizeof(o->key));
    o->key[WL_KEY_MAX] = '\0';
    o->key_hash = atomic_load_explicit(&sl->key_hash, memory_order_acquire);
    o->key_len = sl->key_len;
    o->down_ms = -1;
    /* a leader between its publish and the outcome's store is still warming */
    o->state = WL__IS_WARMING(s) ? WL_WARMING : WL__ST(s);
    o->epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
    o->leader_pid = atomic_load_explicit(&sl->leader_pid, memory_order_relaxed);
    /* Read-only: the mutex word says whether a live thread holds it. A WARMING slot whose
     * leader died is shown as stale (the next caller claims it). */
    o->leader_alive = o->state == WL_WARMING ? wl__mutex_held(&sl->mutex, NULL) : 0;
    if (o->state == WL_WARMING && !o->leader_alive)
        o->state = WL_STALE;
    o->waiters = wl__slot_waiters(seg, sl);
    o->warmups = atomic_load_explicit(&sl->warmups, memory_order_relaxed);
    o->takeovers = atomic_load_explicit(&sl->takeovers, memory_order_relaxed);
    o->attempts = atomic_load_explicit(&sl->attempts, memory_order_relaxed);
    o->failures = atomic_load_explicit(&sl->failures, memory_order_relaxed);
    o->invalidations = atomic_load_explicit(&sl->invalidations, memory_order_relaxed);
    o->ready_age_ms = ready ? (int64_t)((now - ready) / 1000000u) : -1;
    if (verified) {
        /* the monotonic age plus the time the host slept since (the boot clock's lead) */
        int64_t slept = gap - atomic_load_explicit(&sl->boot_gap_ns, memory_order_relaxed);
        o->verified_age_ms = (int64_t)((now - verified) / 1000000u) +
                             (slept > 0 ? slept / 1000000 : 0);
    } else {
        o->verified_age_ms = -1;
    }
    uint32_t stage = atomic_load_explicit(&sl->stage, memory_order_relaxed);
    o->stage = stage <= WL_STAGE_VERIFIED ? (enum wl_stage)stage : WL_STAGE_NONE;
    o->down_ms = down && o->state != WL_READY ? (int64_t)((now - down) / 1000000u) : -1;
    int64_t ttr = atomic_load_explicit(&sl->time_to_ready_ns, memory_order_relaxed);
    o->time_to_ready_ms = ttr < 0 ? -1 : ttr / 1000000;
    for (b = 0; b < WL_HIST_BUCKETS; b++)
        o->wait_hist[b] = atomic_load_explicit(&sl->hist[b], memory_order_relaxed);
    o->wait_count = atomic_load_explicit(&sl->wait_count, memory_order_relaxed);
    o->wait_sum_ns = atomic_load_explicit(&sl->wait_sum_ns, memory_order_relaxed);

    /* The failure text sits behind a seqcount; give up on it (empty) if a writer keeps
     * changing it. */
    for (tries = 0; tries < 100; tries++) {
        uint32_t q = atomic_load_explicit(&sl->info_seq, memory_order_acquire);
        if (q & 1u)
            continue;
        o->last_code = sl->fail_code;
        memcpy(o->last_error, sl->fail_error, sizeof(o->last_error));
        memcpy(o->sqlstate, sl->fail_sqlstate, sizeof(o->sqlstate));
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&sl->info_seq, memory_order_relaxed) == q)
            break;
    }
    if (tries == 100) {
        o->last_code = 0;
        o->last_error[0] = o->sqlstate[0] = '\0';
    }
    o->last_error[sizeof(o->last_error) - 1] = '\0';
    o->sqlstate[sizeof(o->sqlstate) - 1] = '\0';

    /* The fleet outcome, behind its own seqcount (empty if a writer keeps changing it). */
    for (tries = 0; tries < 100; tries++) {
        uint32_t q = atomic_load_explicit(&sl->fleet_seq, memory_order_acquire);
        if (q & 1u)
            continue;
        o->fleet = (int)sl->fleet_role;
        o->fleet_leader_pid = sl->fleet_pid;
        memcpy(o->fleet_leader_host, sl->fleet_host, sizeof(o->fleet_leader_host));
        memcpy(o->fleet_leader_app, sl->fleet_app, sizeof(o->fleet_leader_app));
        /* acquire: the copies above are done before the count is read again */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&sl->fleet_seq, memory_order_relaxed) == q)
            break;
    }
    if (tries == 100 || o->fleet < 0 || o->fleet > WL_FLEET_LOCAL) {
        o->fleet = WL_FLEET_NONE;
        o->fleet_leader_pid = 0;
        o->fleet_leader_host[0] = o->fleet_leader_app[0] = '\0';
    }
    o->fleet_leader_host[sizeof(o->fleet_leader_host) - 1] = '\0';
    o->fleet_leader_app[sizeof(o->fleet_leader_app) - 1] = '\0';
    return s;
}

WL_EXPORT int wl_snapshot(struct wl_segment *seg, struct wl_slot_info *out, size_t max)
{
    int64_t gap = wl__boot_gap_ns();
    uint64_t now = wl__now_ns();
    uint32_t i;
    size_t n = 0;

    if (!seg || (max && !out))
        return -EINVAL;
    for (i = 0; i < seg->nslots; i++) {
        struct wl__slot *sl = &seg->slots[i];
        if (atomic_load_explicit(&sl->key_hash, memory_order_acquire) == 0)
            continue;
        /* relaxed: a forgotten slot is nobody's; one forgotten during the copy is a key
         * that was there a moment ago */
        if ((uint32_t)WL__ST(atomic_load_explicit(&sl->state, memory_order_relaxed)) ==
            WL__FORGOTTEN)
            continue;
        if (n < max)
            copy_slot(seg, sl, &out[n], now, gap);
        n++;
    }
    return (int)n;
}

WL_EXPORT int wl_lookup(struct wl_segment *seg, const char *key, struct wl_slot_info *out)
{
    struct wl__slot *sl;
    int r;

    if (!seg || !key || !*key || !out)
        return -EINVAL;
    /* A slot forgotten (and perhaps taken over by another key) between the probe and the
     * copy shows another hash, or the forgotten state: look again. */
    for (int tries = 0; tries < 8; tries++) {
        if ((r = wl__slot_find(seg, key, 0, &sl)) < 0)
            return r;
        int64_t gap = wl__boot_gap_ns();
        uint32_t s = copy_slot(seg, sl, out, wl__now_ns(), gap);
        if (wl__slot_is(sl, s, wl__key_hash(key, strlen(key))) &&
            out->key_hash == wl__key_hash(key, strlen(key)))
            return 0;
    }
    return -ENOENT;
}
