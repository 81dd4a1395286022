/* The event loop (ring.c): io_uring, or poll(2) where io_uring is unavailable. Private to
 * the library; not installed. */
#ifndef WL_RING_H
#define WL_RING_H

#include <stddef.h>
#include <stdint.h>

/* ring.c: the event loop. A task is a state machine with one step function that says what
 * it waits for next; the loop turns the answer into an io_uring POLL_ADD with a linked
 * LINK_TIMEOUT, an io_uring TIMEOUT, or a ppoll(2) entry, and calls step again when that
 * happens. Both backends run the same step code. One loop drives any number of tasks;
 * tasks may be added (and removed) from inside a step. A loop belongs to one thread. */
enum wl__want {
    WL__WANT_READ = 1,    /* wake when t->fd is readable, or at t->deadline_ns */
    WL__WANT_WRITE = 2,   /* wake when t->fd is writable (may be or'ed with READ) */
    WL__WANT_TIMER = 4,   /* wake at t->deadline_ns */
    WL__WANT_DONE = 8,    /* finished: the loop drops the task */
    WL__WANT_FAILED = 16, /* finished with a failure: the loop drops the task */
};
enum wl__event {
    WL__EV_START = 0,   /* first call, from the loop after wl__loop_add */
    WL__EV_IO = 1,      /* the fd is ready; revents has the poll(2) bits */
    WL__EV_TIMEOUT = 2, /* READ/WRITE wait reached t->deadline_ns first */
    WL__EV_TIMER = 3,   /* TIMER reached t->deadline_ns */
};
enum wl__io { WL__IO_AUTO = 0, WL__IO_URING = 1, WL__IO_POLL = 2 };
struct wl__loop;
struct wl__task;
/* Returns a WL__WANT_* answer, having set t->fd (READ/WRITE) and t->deadline_ns. */
typedef int (*wl__step_fn)(struct wl__task *t, int event, int revents);
struct wl__task {
    wl__step_fn step;
    void *arg;            /* the owner's */
    int fd;               /* set by step for READ/WRITE; may change between steps */
    uint64_t deadline_ns; /* set by step: CLOCK_MONOTONIC; 0 = no timeout (READ/WRITE) */
    int want;             /* the last answer of step */
    /* The loop's: */
    struct wl__loop *loop_;
    uint32_t idx_, seq_;
    int started_;
    struct { int64_t sec, nsec; } ts_; /* a __kernel_timespec, alive until submitted */
};
/* backend WL__IO_AUTO: $WARMLOCK_IO (uring|poll) if set, else io_uring when
 * io_uring_queue_init succeeds, else poll(2) (logged once per process on stderr). 0 or
 * -errno with a message in err: a forced io_uring that cannot start gives its init error
 * (-EPERM, -ENOSYS, -ENOMEM), a bad $WARMLOCK_IO -EINVAL. */
int wl__loop_new(int backend, struct wl__loop **out, char *err, size_t errlen);
/* Add a task (fill step, arg first); its first step runs inside the next run. 0, -ENOMEM. */
int wl__loop_add(struct wl__loop *l, struct wl__task *t);
/* Drop a task without calling it again (its in-flight requests are cancelled). */
void wl__loop_remove(struct wl__loop *l, struct wl__task *t);
/* Run until every task has finished (returns 0) or deadline_ns (CLOCK_MONOTONIC; 0 none)
 * passed (returns how many tasks remain), or -errno. Blocks. */
int wl__loop_run_until(struct wl__loop *l, uint64_t deadline_ns);
/* Make the wl__loop_run_until in progress return (with the number of tasks left) once the
 * current step is over. For the loop's own thread (a step); tasks stay in the loop. */
void wl__loop_break(struct wl__loop *l);
/* Number of tasks in the loop. */
int wl__loop_count(const struct wl__loop *l);
/* "io_uring" or "poll". */
const char *wl__loop_backend(const struct wl__loop *l);
void wl__loop_free(struct wl__loop *l);

#endif
