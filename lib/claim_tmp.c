/* TEMPORARY stand-in for the non-blocking claim API (the lead's slot.c implements it);
 * deleted once main has it. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void tmp_repair(void *arg)
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

static void tmp_text(struct wl__slot *sl, int code, const char *error, const char *sqlstate)
{
    uint32_t q = atomic_load_explicit(&sl->info_seq, memory_order_relaxed);
    atomic_store_explicit(&sl->info_seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    sl->fail_code = code;
    wl__copy(sl->fail_error, sizeof(sl->fail_error), error ? error : "");
    wl__copy(sl->fail_sqlstate, sizeof(sl->fail_sqlstate), sqlstate ? sqlstate : "");
    atomic_store_explicit(&sl->info_seq, q + 2, memory_order_release);
}

int wl__transient(int code)
{
    return code == -ECONNREFUSED || code == -EAGAIN || code == -ETIMEDOUT || code == -ECANCELED;
}

int wl__claim_try(struct wl_segment *seg, const char *key, struct wl__claim *c)
{
    struct wl__slot *sl;
    uint32_t s, gen;
    int r;

    memset(c, 0, sizeof(*c));
    if ((r = wl__slot_find(seg, key, 1, &sl)) < 0)
        return r;
    s = atomic_load_explicit(&sl->state, memory_order_acquire);
    if (WL__ST(s) == WL_READY)
        return -EALREADY;
    r = wl__lock(&sl->mutex, 0, tmp_repair, sl);
    if (r == -EBUSY)
        return -EBUSY;
    if (r < 0)
        return r;
    s = atomic_load_explicit(&sl->state, memory_order_acquire);
    if (WL__ST(s) == WL_READY) {
        wl__unlock(&sl->mutex);
        return -EALREADY;
    }
    gen = WL__NEXT(s, WL_WARMING);
    atomic_store_explicit(&sl->leader_pid, (int32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&sl->leader_pidns, seg->pidns, memory_order_relaxed);
    c->t0 = wl__now_ns();
    atomic_store_explicit(&sl->claimed_ns, c->t0, memory_order_relaxed);
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &s, gen, memory_order_release,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        return -EBUSY;
    }
    atomic_fetch_add_explicit(&sl->warmups, 1, memory_order_relaxed);
    wl__futex_wake_all(&sl->state);
    c->seg = seg;
    c->sl = sl;
    c->gen = gen;
    c->pid = getpid();
    return 0;
}

void wl__claim_progress(struct wl__claim *c, int code, const char *error, const char *sqlstate)
{
    if (c->sl && c->pid == getpid())
        tmp_text(c->sl, code, error, sqlstate);
}

int wl__claim_publish(struct wl__claim *c, int rc, struct wl_result *res)
{
    struct wl__slot *sl = c->sl;
    uint32_t gen = c->gen, done;
    uint64_t now = wl__now_ns();

    if (!sl)
        return -EINVAL;
    if (c->pid != getpid())
        return -ECHILD;
    atomic_fetch_add_explicit(&sl->attempts, res ? res->attempts : 0, memory_order_relaxed);
    if (rc == 0) {
        uint64_t epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed) + 1;
        atomic_store_explicit(&sl->epoch, epoch, memory_order_relaxed);
        atomic_store_explicit(&sl->time_to_ready_ns, (int64_t)(now - c->t0),
                              memory_order_relaxed);
        atomic_store_explicit(&sl->ready_ns, now, memory_order_relaxed);
        done = WL__NEXT(gen, WL_READY);
        if (res)
            res->epoch = epoch;
    } else {
        tmp_text(sl, rc, res ? res->error : "", res ? res->sqlstate : "");
        atomic_store_explicit(&sl->failed_ns, now, memory_order_relaxed);
        atomic_fetch_add_explicit(&sl->failures, 1, memory_order_relaxed);
        done = WL__NEXT(gen, wl__transient(rc) ? WL_STALE : WL_FAILED);
    }
    c->sl = NULL;
    if (!atomic_compare_exchange_strong_explicit(&sl->state, &gen, done, memory_order_release,
                                                 memory_order_relaxed)) {
        wl__unlock(&sl->mutex);
        return -ECANCELED;
    }
    wl__futex_wake_all(&sl->state);
    wl__unlock(&sl->mutex);
    return rc;
}
