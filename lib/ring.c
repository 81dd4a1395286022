/*
 * The event loop: tasks are state machines with one step function; the loop
 * only turns each answer (readable, writable, a timer, done, failed) into a request and
 * calls step again when it completes. Two backends share everything but that request:
 *
 * - io_uring: READ/WRITE is an IORING_OP_POLL_ADD on the fd linked to an
 *   IORING_OP_LINK_TIMEOUT at the task's deadline (absolute, CLOCK_MONOTONIC); TIMER is an
 *   IORING_OP_TIMEOUT. POLL_ADD is one-shot, so every step re-arms (the fd may change).
 * - poll(2): every turn builds a pollfd array from the tasks and sleeps in ppoll(2) until
 *   the nearest deadline.
 *
 * Completions carry (kind, task index, sequence) in user_data; a completion whose sequence
 * is not the task's current one (a stale link timeout, a removed task) is ignored, so a task
 * can be freed as soon as the loop has dropped it. Sequence numbers come from the loop, not
 * the task: a new task given a removed one's index never matches its stale completions. liburing returns -errno and never sets
 * errno.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "ring.h"

#define RING_ENTRIES 64

enum kind { K_IGNORE = 0, K_POLL = 1, K_LINK = 2, K_TIMER = 3 };

struct wl__loop {
    int backend; /* WL__IO_URING or WL__IO_POLL */
    struct io_uring ring;
    struct wl__task **tasks; /* by index; NULL: free */
    uint32_t cap, count;
    uint32_t gen;       /* the last sequence number given to a task's request */
    int brk;            /* wl__loop_break: the run in progress returns */
    struct pollfd *pfd; /* poll backend: scratch, cap entries */
    uint32_t *pidx;     /* poll backend: task index of each pfd */
};

_Static_assert(sizeof(((struct wl__task *)0)->ts_) == sizeof(struct __kernel_timespec),
               "the task's timespec storage must hold a __kernel_timespec");

static uint64_t ud(enum kind k, const struct wl__task *t)
{
    return (uint64_t)k << 62 | (uint64_t)(t->seq_ & 0x3fffffffu) << 32 | t->idx_;
}

/* ---- Backend choice ---- */

static const char *errname(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "unknown";
}

static void log_fallback_once(int err)
{
    static _Atomic int logged;
    int expect = 0;
    /* relaxed: only "once" matters, nothing is published through it */
    if (atomic_compare_exchange_strong_explicit(&logged, &expect, 1, memory_order_relaxed,
                                                memory_order_relaxed))
        wl__log_info("io_uring unavailable, using poll", "reason", errname(err));
}

int wl__loop_new(int backend, struct wl__loop **out, char *err, size_t errlen)
{
    struct wl__loop *l;
    const char *env;
    int r, forced = 0;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (backend == WL__IO_AUTO && (env = getenv("WARMLOCK_IO")) && *env) {
        if (!strcmp(env, "uring") || !strcmp(env, "io_uring"))
            backend = WL__IO_URING;
        else if (!strcmp(env, "poll"))
            backend = WL__IO_POLL;
        else {
            wl__fmt(err, errlen, "WARMLOCK_IO='%.40s' is not one of uring, poll", env);
            return -EINVAL;
        }
        forced = 1;
    } else if (backend != WL__IO_AUTO) {
        forced = 1;
    }
    if (backend != WL__IO_AUTO && backend != WL__IO_URING && backend != WL__IO_POLL) {
        wl__fmt(err, errlen, "unknown event loop backend %d", backend);
        return -EINVAL;
    }
    if (!(l = calloc(1, sizeof(*l)))) {
        wl__fmt(err, errlen, "out of memory");
        return -ENOMEM;
    }
    l->backend = WL__IO_POLL;
    if (backend != WL__IO_POLL) {
        r = io_uring_queue_init(RING_ENTRIES, &l->ring, 0); /* -errno, errno untouched */
        if (r == 0) {
            l->backend = WL__IO_URING;
        } else if (forced) {
            wl__fmt(err, errlen, "io_uring forced by WARMLOCK_IO but unavailable: %s (%s)",
                    errname(-r), strerror(-r));
            free(l);
            return r;
        } else {
            log_fallback_once(-r);
        }
    }
    *out = l;
    return 0;
}

const char *wl__loop_backend(const struct wl__loop *l)
{
    return l->backend == WL__IO_URING ? "io_uring" : "poll";
}

int wl__loop_count(const struct wl__loop *l)
{
    return (int)l->count;
}

void wl__loop_free(struct wl__loop *l)
{
    uint32_t i;
    if (!l)
        return;
    for (i = 0; i < l->cap; i++)
        if (l->tasks[i])
            l->tasks[i]->loop_ = NULL;
    if (l->backend == WL__IO_URING)
        io_uring_queue_exit(&l->ring); /* cancels whatever is in flight */
    free(l->tasks);
    free(l->pfd);
    free(l->pidx);
    free(l);
}

/* ---- Tasks ---- */

int wl__loop_add(struct wl__loop *l, struct wl__task *t)
{
    uint32_t i;

    for (i = 0; i < l->cap && l->tasks[i]; i++)
        ;
    if (i == l->cap) {
        uint32_t ncap = l->cap ? l->cap * 2 : 8;
        struct wl__task **nt = realloc(l->tasks, ncap * sizeof(*nt));
        struct pollfd *np;
        uint32_t *ni;
        if (!nt)
            return -ENOMEM;
        l->tasks = nt;
        memset(nt + l->cap, 0, (ncap - l->cap) * sizeof(*nt));
        if (!(np = realloc(l->pfd, ncap * sizeof(*np))))
            return -ENOMEM;
        l->pfd = np;
        if (!(ni = realloc(l->pidx, ncap * sizeof(*ni))))
            return -ENOMEM;
        l->pidx = ni;
        l->cap = ncap;
    }
    t->loop_ = l;
    t->idx_ = i;
    t->seq_ = ++l->gen;
    t->started_ = 0;
    t->want = 0;
    l->tasks[i] = t;
    l->count++;
    return 0;
}

static struct io_uring_sqe *get_sqe(struct wl__loop *l)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
    if (!sqe) {
        io_uring_submit(&l->ring); /* make room */
        sqe = io_uring_get_sqe(&l->ring);
    }
    return sqe;
}

static void cancel_inflight(struct wl__loop *l, struct wl__task *t)
{
    struct io_uring_sqe *sqe;
    enum kind k;

    if (l->backend != WL__IO_URING || !t->started_)
        return;
    if (t->want & (WL__WANT_READ | WL__WANT_WRITE))
        k = K_POLL;
    else if (t->want & WL__WANT_TIMER)
        k = K_TIMER;
    else
        return;
    /* Best effort: its completion, if any, is ignored (the task's slot is cleared). */
    if ((sqe = get_sqe(l))) {
        io_uring_prep_cancel64(sqe, ud(k, t), 0);
        io_uring_sqe_set_data64(sqe, 0);
    }
}

static void detach(struct wl__loop *l, struct wl__task *t)
{
    l->tasks[t->idx_] = NULL;
    l->count--;
    t->loop_ = NULL;
}

void wl__loop_remove(struct wl__loop *l, struct wl__task *t)
{
    if (!l || t->loop_ != l || l->tasks[t->idx_] != t)
        return;
    cancel_inflight(l, t);
    detach(l, t);
}

static void set_ts(struct wl__task *t, uint64_t ns)
{
    t->ts_.sec = (int64_t)(ns / 1000000000u);
    t->ts_.nsec = (int64_t)(ns % 1000000000u);
}

/* io_uring: turn the task's answer into requests. -errno if the ring is unusable. */
static int arm_uring(struct wl__loop *l, struct wl__task *t)
{
    struct io_uring_sqe *sqe;
    struct __kernel_timespec *ts = (struct __kernel_timespec *)&t->ts_;

    t->seq_ = ++l->gen;
    if (t->want & (WL__WANT_READ | WL__WANT_WRITE)) {
        unsigned mask =
            (t->want & WL__WANT_READ ? POLLIN : 0) | (t->want & WL__WANT_WRITE ? POLLOUT : 0);
        if (!(sqe = get_sqe(l)))
            return -EBUSY;
        io_uring_prep_poll_add(sqe, t->fd, mask);
        io_uring_sqe_set_data64(sqe, ud(K_POLL, t));
        if (t->deadline_ns) {
            sqe->flags |= IOSQE_IO_LINK;
            if (!(sqe = get_sqe(l)))
                return -EBUSY;
            set_ts(t, t->deadline_ns);
            io_uring_prep_link_timeout(sqe, ts, IORING_TIMEOUT_ABS);
            io_uring_sqe_set_data64(sqe, ud(K_LINK, t));
        }
    } else {
        if (!(sqe = get_sqe(l)))
            return -EBUSY;
        set_ts(t, t->deadline_ns);
        io_uring_prep_timeout(sqe, ts, 0, IORING_TIMEOUT_ABS);
        io_uring_sqe_set_data64(sqe, ud(K_TIMER, t));
    }
    /* Submit now: the kernel copies the timespec at submission, and the task may be
     * freed by its owner as soon as the loop drops it. */
    return io_uring_submit(&l->ring) < 0 ? -EIO : 0;
}

/* Call the task's step and act on its answer. */
static int deliver(struct wl__loop *l, struct wl__task *t, int event, int revents)
{
    int want, guard = 0;

    for (;;) {
        want = t->step(t, event, revents);
        t->want = want;
        t->started_ = 1;
        if (want & (WL__WANT_DONE | WL__WANT_FAILED) || !want) {
            detach(l, t);
            return 0;
        }
        /* A wait on no fd would never complete: tell the step at once (bounded). */
        if ((want & (WL__WANT_READ | WL__WANT_WRITE)) && t->fd < 0 && guard++ < 8) {
            event = WL__EV_IO;
            revents = POLLNVAL;
            continue;
        }
        break;
    }
    if (l->backend == WL__IO_URING)
        return arm_uring(l, t);
    return 0;
}

static int start_new(struct wl__loop *l)
{
    uint32_t i;
    int r;
    for (i = 0; i < l->cap; i++) {
        struct wl__task *t = l->tasks[i];
        if (t && !t->started_ && (r = deliver(l, t, WL__EV_START, 0)) < 0)
            return r;
    }
    return 0;
}

/* ---- io_uring backend ---- */

static int turn_uring(struct wl__loop *l, uint64_t deadline_ns)
{
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts;
    int r;

    if (deadline_ns) {
        uint64_t now = wl__now_ns();
        uint64_t left = deadline_ns > now ? deadline_ns - now : 0;
        ts.tv_sec = (long long)(left / 1000000000u);
        ts.tv_nsec = (long long)(left % 1000000000u);
        r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, &ts, NULL);
    } else {
        r = io_uring_submit_and_wait(&l->ring, 1);
    }
    if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY)
        return r;

    while (io_uring_peek_cqe(&l->ring, &cqe) == 0) {
        uint64_t u = io_uring_cqe_get_data64(cqe);
        int res = cqe->res;
        enum kind k = (enum kind)(u >> 62);
        uint32_t idx = (uint32_t)u, seq = (uint32_t)(u >> 32) & 0x3fffffffu;
        struct wl__task *t;

        io_uring_cqe_seen(&l->ring, cqe);
        if (k == K_IGNORE || k == K_LINK || idx >= l->cap || !(t = l->tasks[idx]) ||
            (t->seq_ & 0x3fffffffu) != seq)
            continue; /* stale, or a link timeout's own completion */
        if (k == K_POLL) {
            if (res >= 0)
                r = deliver(l, t, WL__EV_IO, res);
            else if (res == -ECANCELED)
                r = deliver(l, t, WL__EV_TIMEOUT, 0); /* the linked timeout fired */
            else
                r = deliver(l, t, WL__EV_IO, POLLERR | POLLNVAL);
        } else {
            r = deliver(l, t, WL__EV_TIMER, 0);
        }
        if (r < 0)
            return r;
    }
    return 0;
}

/* ---- poll(2) backend ---- */

static int turn_poll(struct wl__loop *l, uint64_t deadline_ns)
{
    struct timespec ts, *tsp = NULL;
    uint64_t wake = deadline_ns, now;
    uint32_t i, n = 0, cap = l->cap;
    int r;

    for (i = 0; i < cap; i++) {
        struct wl__task *t = l->tasks[i];
        if (!t || !t->started_)
            continue;
        if (t->want & (WL__WANT_READ | WL__WANT_WRITE)) {
            l->pfd[n].fd = t->fd;
            l->pfd[n].events = (short)((t->want & WL__WANT_READ ? POLLIN : 0) |
                                       (t->want & WL__WANT_WRITE ? POLLOUT : 0));
            l->pfd[n].revents = 0;
            l->pidx[n++] = i;
        }
        if (t->deadline_ns && (!wake || t->deadline_ns < wake))
            wake = t->deadline_ns;
    }
    if (wake) {
        now = wl__now_ns();
        wl__ns_to_timespec(wake > now ? wake - now : 0, &ts);
        tsp = &ts;
    }
    r = ppoll(l->pfd, n, tsp, NULL);
    if (r < 0 && errno != EINTR)
        return -errno;

    now = wl__now_ns();
    /* Ready fds first, then the deadlines (of tasks the fd did not wake, or whose new
     * deadline has already passed). Slots are re-read: a step may add or drop tasks. */
    for (i = 0; r > 0 && i < n; i++) {
        struct wl__task *t = l->tasks[l->pidx[i]];
        int e;
        if (l->pfd[i].revents && t && t->started_ &&
            (e = deliver(l, t, WL__EV_IO, l->pfd[i].revents)) < 0)
            return e;
    }
    for (i = 0; i < cap && i < l->cap; i++) {
        struct wl__task *t = l->tasks[i];
        int e;
        if (!t || !t->started_ || !t->deadline_ns || now < t->deadline_ns)
            continue;
        e = deliver(l, t, t->want & WL__WANT_TIMER ? WL__EV_TIMER : WL__EV_TIMEOUT, 0);
        if (e < 0)
            return e;
    }
    return 0;
}

void wl__loop_break(struct wl__loop *l)
{
    l->brk = 1;
}

int wl__loop_run_until(struct wl__loop *l, uint64_t deadline_ns)
{
    int r;
    for (;;) {
        if ((r = start_new(l)) < 0)
            return r;
        if (!l->count)
            return 0;
        if (l->brk) {
            l->brk = 0;
            return (int)l->count;
        }
        if (deadline_ns && wl__now_ns() >= deadline_ns)
            return (int)l->count;
        r = l->backend == WL__IO_URING ? turn_uring(l, deadline_ns) : turn_poll(l, deadline_ns);
        if (r < 0)
            return r;
    }
}
