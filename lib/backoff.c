/*
 * Retry schedules: the delay before the leader's next attempt, and the plain pause the core
 * uses while another process initialises the segment.
 *
 * The leader is the only prober of its server, so its default schedule is fast: 10 ms
 * first delay, doubling up to a 250 ms cap, with full jitter (a uniform draw in [0, base]),
 * unlimited attempts bounded by the deadline. Decorrelated jitter ("AWS architecture blog,
 * exponential backoff and jitter") draws in [initial, 3 x previous], capped. No jitter gives
 * the bare exponential sequence (tests, reproducible runs).
 */
#include <errno.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define MS 1000000ull

void wl__backoff_pause(uint64_t ns)
{
    struct timespec ts;
    wl__ns_to_timespec(ns, &ts);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* xorshift64*: enough for jitter, not for anything secret. */
static uint64_t rnd(struct wl__backoff_state *b)
{
    uint64_t x = b->rng;
    if (!x) /* seeded on first use: most states (one attempt, no jitter) never need it */
        x = (b->start_ns ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)b) | 1u;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

/* Uniform in [lo, hi] (inclusive). */
static uint64_t uniform(struct wl__backoff_state *b, uint64_t lo, uint64_t hi)
{
    if (hi <= lo)
        return lo;
    return lo + rnd(b) % (hi - lo + 1);
}

void wl__backoff_init(struct wl__backoff_state *b, const struct wl_backoff *opts,
                      uint32_t default_deadline_ms, uint64_t now_ns, uint64_t seed)
{
    uint32_t deadline_ms;

    b->initial_ns =
        (uint64_t)(opts && opts->initial_ms ? opts->initial_ms : WL__BACKOFF_INITIAL_MS) * MS;
    b->max_ns = (uint64_t)(opts && opts->max_ms ? opts->max_ms : WL__BACKOFF_MAX_MS) * MS;
    if (b->max_ns < b->initial_ns)
        b->max_ns = b->initial_ns;
    b->max_attempts = opts ? opts->max_attempts : 0;
    deadline_ms = opts && opts->deadline_ms ? opts->deadline_ms : default_deadline_ms;
    if (!deadline_ms)
        deadline_ms = WL__BACKOFF_DEADLINE_MS;
    b->start_ns = now_ns;
    b->deadline_ns = now_ns + (uint64_t)deadline_ms * MS;
    b->jitter = opts && opts->jitter ? opts->jitter : WL__JITTER_FULL;
    b->failures = 0;
    b->prev_ns = b->initial_ns;
    b->rng = seed ? seed | 1u : 0; /* 0: rnd() seeds it; xorshift must not run from 0 */
}

int wl__backoff_next(struct wl__backoff_state *b, uint64_t now_ns, uint64_t *delay_ns)
{
    uint64_t base, d;
    unsigned shift;

    b->failures++;
    if (b->max_attempts && b->failures >= b->max_attempts)
        return -EAGAIN; /* attempts ran out */
    if (now_ns >= b->deadline_ns)
        return -ETIMEDOUT;

    shift = b->failures - 1 < 40 ? b->failures - 1 : 40;
    base = b->initial_ns << shift;
    if (base > b->max_ns || base < b->initial_ns)
        base = b->max_ns;

    switch (b->jitter) {
    case WL__JITTER_NONE: d = base; break;
    case WL__JITTER_DECORRELATED:
        /* min(cap, uniform(initial, 3 * previous)) */
        d = uniform(b, b->initial_ns, b->prev_ns * 3 < b->max_ns ? b->prev_ns * 3 : b->max_ns);
        break;
    case WL__JITTER_FULL:
    default: d = uniform(b, 0, base); break;
    }
    b->prev_ns = d > b->initial_ns ? d : b->initial_ns;
    /* Never sleep past the deadline: the caller wakes at it and gives up there. */
    if (now_ns + d > b->deadline_ns)
        d = b->deadline_ns - now_ns;
    *delay_ns = d;
    return 0;
}
