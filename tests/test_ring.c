/* The event loop on both backends (io_uring and poll): fd readiness, the linked per-wait
 * timeout, timers, several tasks at once, a task whose fd changes, removal in flight, the
 * run deadline, backend choice by $WARMLOCK_IO, and the fallback when io_uring is refused
 * (a real seccomp filter in a child). No server needed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "lib/internal.h"
#include "lib/ring.h"
#include "suite.h"

#define MS 1000000ull

static struct wl__loop *new_loop(void **state)
{
    struct wl__loop *l = NULL;
    char err[200];
    int backend = strcmp((const char *)*state, "uring") == 0 ? WL__IO_URING : WL__IO_POLL, r;
    r = wl__loop_new(backend, &l, err, sizeof(err));
    if (r < 0) {
        print_message("cannot create the %s loop: %s\n",
                      backend == WL__IO_URING ? "io_uring" : "poll", err);
        if (backend == WL__IO_URING) {
            print_message("skipped: io_uring unavailable here\n");
            skip();
        }
        fail();
    }
    assert_string_equal(wl__loop_backend(l), backend == WL__IO_URING ? "io_uring" : "poll");
    return l;
}

/* A task that records what happened to it, following a small script. */
struct rec {
    struct wl__task t;
    int fd, fd2;      /* what to wait on (fd2: after the first readiness, if >= 0) */
    uint64_t wait_ns; /* timeout (READ) or timer length (TIMER) */
    int timer_first;  /* first a timer of wait_ns, then write a byte to `poke` */
    int poke;         /* fd to write to when the timer fires */
    int calls, events[16], revents[16];
    uint64_t at[16];
    int order; /* completion order */
};
static int finished;

static int rec_step(struct wl__task *t, int ev, int revents)
{
    struct rec *r = (struct rec *)t;
    uint64_t now = wl__now_ns();
    if (r->calls < 16) {
        r->events[r->calls] = ev;
        r->revents[r->calls] = revents;
        r->at[r->calls] = now;
    }
    r->calls++;
    switch (ev) {
    case WL__EV_START:
        if (r->timer_first) {
            t->deadline_ns = now + r->wait_ns;
            return WL__WANT_TIMER;
        }
        t->fd = r->fd;
        t->deadline_ns = r->wait_ns ? now + r->wait_ns : 0;
        return WL__WANT_READ;
    case WL__EV_TIMER:
        if (r->poke >= 0) {
            assert_int_equal(write(r->poke, "x", 1), 1);
            r->timer_first = 0;
            t->fd = r->fd;
            t->deadline_ns = now + 2000 * MS;
            return WL__WANT_READ;
        }
        r->order = ++finished;
        return WL__WANT_DONE;
    case WL__EV_IO: {
        char c;
        if (read(t->fd, &c, 1) != 1) {
            r->order = ++finished;
            return WL__WANT_FAILED;
        }
        if (r->fd2 >= 0 && t->fd != r->fd2) {
            t->fd = r->fd2; /* the fd changes between steps (like PQsocket) */
            t->deadline_ns = now + 2000 * MS;
            return WL__WANT_READ;
        }
        r->order = ++finished;
        return WL__WANT_DONE;
    }
    case WL__EV_TIMEOUT:
    default: r->order = ++finished; return WL__WANT_FAILED;
    }
}

static void rec_init(struct rec *r, int fd, uint64_t wait_ns)
{
    memset(r, 0, sizeof(*r));
    r->t.step = rec_step;
    r->fd = fd;
    r->fd2 = -1;
    r->poke = -1;
    r->wait_ns = wait_ns;
}

static void test_ring_readable_pipe_wakes_the_task(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec r;
    int p[2];
    uint64_t t0;

    assert_int_equal(pipe(p), 0);
    assert_int_equal(write(p[1], "x", 1), 1);
    rec_init(&r, p[0], 1000 * MS);
    assert_int_equal(wl__loop_add(l, &r.t), 0);
    assert_int_equal(wl__loop_count(l), 1);
    t0 = wl__now_ns();
    assert_int_equal(wl__loop_run_until(l, t0 + 3000 * MS), 0);
    assert_true(wl__now_ns() - t0 < 800 * MS); /* at once, not at its 1 s timeout */
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.events[1], WL__EV_IO);
    assert_true(r.revents[1] & POLLIN);
    assert_int_equal(r.t.want, WL__WANT_DONE);
    assert_int_equal(wl__loop_count(l), 0);
    wl__loop_free(l);
    close(p[0]);
    close(p[1]);
}

static void test_ring_linked_timeout_fires_on_a_silent_fd(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec r;
    int p[2];
    uint64_t t0, el;

    assert_int_equal(pipe(p), 0);
    rec_init(&r, p[0], 60 * MS);
    assert_int_equal(wl__loop_add(l, &r.t), 0);
    t0 = wl__now_ns();
    assert_int_equal(wl__loop_run_until(l, t0 + 3000 * MS), 0);
    el = r.at[1] - r.at[0];
    print_message("timeout after %.1f ms (asked 60)\n", el / 1e6);
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.events[1], WL__EV_TIMEOUT);
    assert_true(el >= 60 * MS);
    assert_true(el < 1000 * MS); /* generous: a loaded machine wakes it late */
    assert_int_equal(r.t.want, WL__WANT_FAILED);
    wl__loop_free(l);
    close(p[0]);
    close(p[1]);
}

static void test_ring_timer_fires_within_bounds(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec r;
    uint64_t el;

    rec_init(&r, -1, 40 * MS);
    r.timer_first = 1;
    assert_int_equal(wl__loop_add(l, &r.t), 0);
    assert_int_equal(wl__loop_run_until(l, 0), 0);
    el = r.at[1] - r.at[0];
    print_message("timer after %.1f ms (asked 40)\n", el / 1e6);
    assert_int_equal(r.events[1], WL__EV_TIMER);
    assert_true(el >= 40 * MS);
    assert_true(el < 1000 * MS); /* generous: a loaded machine wakes it late */
    wl__loop_free(l);
}

/* Four tasks at once: each sleeps (a timer), pokes its socketpair and waits for the byte;
 * they finish in timer order, and the whole run takes as long as the longest. One task's
 * fd changes between steps. */
static void test_ring_drives_several_tasks_at_once(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec r[4];
    int sp[4][2], extra[2], i;
    uint64_t t0, el;

    finished = 0;
    assert_int_equal(pipe(extra), 0);
    for (i = 0; i < 4; i++) {
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sp[i]), 0);
        rec_init(&r[i], sp[i][0], (uint64_t)(80 - 20 * i) * MS);
        r[i].timer_first = 1;
        r[i].poke = sp[i][1];
    }
    r[0].fd2 = extra[0]; /* then waits on a pipe that gets a byte from the test below */
    assert_int_equal(write(extra[1], "y", 1), 1);
    t0 = wl__now_ns();
    for (i = 0; i < 4; i++)
        assert_int_equal(wl__loop_add(l, &r[i].t), 0);
    assert_int_equal(wl__loop_count(l), 4);
    assert_int_equal(wl__loop_run_until(l, t0 + 3000 * MS), 0);
    el = wl__now_ns() - t0;
    print_message("4 tasks done in %.1f ms\n", el / 1e6);
    assert_true(el >= 80 * MS && el < 1500 * MS); /* the longest timer, not the run deadline */
    for (i = 0; i < 4; i++) {
        assert_int_equal(r[i].t.want, WL__WANT_DONE);
        assert_int_equal(r[i].order, 4 - i); /* shortest timer first */
        close(sp[i][0]);
        close(sp[i][1]);
    }
    assert_int_equal(r[0].t.fd, extra[0]);
    assert_int_equal(r[0].calls, 4); /* START, TIMER, IO on sp, IO on the pipe */
    wl__loop_free(l);
    close(extra[0]);
    close(extra[1]);
}

static void test_ring_run_deadline_returns_remaining_tasks(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec a, b;
    int p[2];
    uint64_t t0, el;

    assert_int_equal(pipe(p), 0);
    rec_init(&a, p[0], 0); /* no timeout of its own */
    rec_init(&b, -1, 20 * MS);
    b.timer_first = 1;
    assert_int_equal(wl__loop_add(l, &a.t), 0);
    assert_int_equal(wl__loop_add(l, &b.t), 0);
    t0 = wl__now_ns();
    assert_int_equal(wl__loop_run_until(l, t0 + 80 * MS), 1); /* a is still waiting */
    el = wl__now_ns() - t0;
    assert_true(el >= 80 * MS && el < 1000 * MS); /* the run deadline, generously */
    assert_int_equal(b.t.want, WL__WANT_DONE);
    /* the loop goes on where it stopped */
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_int_equal(wl__loop_run_until(l, wl__now_ns() + 1000 * MS), 0);
    assert_int_equal(a.t.want, WL__WANT_DONE);
    assert_int_equal(a.calls, 2);
    wl__loop_free(l);
    close(p[0]);
    close(p[1]);
}

static void test_ring_removed_task_is_never_called_again(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec a, b;
    int p[2];

    assert_int_equal(pipe(p), 0);
    rec_init(&a, p[0], 50 * MS);
    rec_init(&b, -1, 100 * MS);
    b.timer_first = 1;
    assert_int_equal(wl__loop_add(l, &a.t), 0);
    assert_int_equal(wl__loop_add(l, &b.t), 0);
    /* start both (a arms a 50 ms timeout), then drop a before it fires */
    assert_int_equal(wl__loop_run_until(l, wl__now_ns() + 10 * MS), 2);
    assert_int_equal(a.calls, 1);
    wl__loop_remove(l, &a.t);
    assert_int_equal(wl__loop_count(l), 1);
    memset(&a, 0xff, sizeof(a)); /* the owner may reuse it at once */
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_int_equal(wl__loop_run_until(l, wl__now_ns() + 1000 * MS), 0);
    assert_int_equal(b.t.want, WL__WANT_DONE);
    assert_int_equal(b.calls, 2);
    wl__loop_free(l);
    close(p[0]);
    close(p[1]);
}

static void test_ring_task_can_be_added_again_after_it_finished(void **state)
{
    struct wl__loop *l = new_loop(state);
    struct rec b;
    int p[2];
    (void)p;
    rec_init(&b, -1, 10 * MS);
    b.timer_first = 1;
    assert_int_equal(wl__loop_add(l, &b.t), 0);
    assert_int_equal(wl__loop_run_until(l, 0), 0);
    /* and again, on the same loop, with the same task: re-adding works */
    rec_init(&b, -1, 10 * MS);
    b.timer_first = 1;
    assert_int_equal(wl__loop_add(l, &b.t), 0);
    assert_int_equal(wl__loop_run_until(l, 0), 0);
    assert_int_equal(b.calls, 2);
    wl__loop_free(l);
}

/* ---- backend choice ---- */

static void test_ring_env_forces_the_backend(void **state)
{
    struct wl__loop *l;
    char err[200];
    (void)state;
    setenv("WARMLOCK_IO", "poll", 1);
    assert_int_equal(wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)), 0);
    assert_string_equal(wl__loop_backend(l), "poll");
    wl__loop_free(l);
    setenv("WARMLOCK_IO", "uring", 1);
    if (wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)) == 0) {
        assert_string_equal(wl__loop_backend(l), "io_uring");
        wl__loop_free(l);
    } else {
        print_message("io_uring unavailable here: %s\n", err);
    }
    setenv("WARMLOCK_IO", "epoll", 1);
    assert_int_equal(wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "WARMLOCK_IO"));
    assert_null(l);
    unsetenv("WARMLOCK_IO");
    /* an explicit backend wins over the environment */
    setenv("WARMLOCK_IO", "uring", 1);
    assert_int_equal(wl__loop_new(WL__IO_POLL, &l, err, sizeof(err)), 0);
    assert_string_equal(wl__loop_backend(l), "poll");
    wl__loop_free(l);
    unsetenv("WARMLOCK_IO");
}

/* In a child: make io_uring_setup fail with EPERM (what Docker's default seccomp profile
 * and kernel.io_uring_disabled do), capture stderr, and check the fallback. */
static int fallback_child(int out)
{
    struct wl__loop *l;
    char err[200];
    struct rec r;
    if (dup2(out, 2) < 0 || wlt_deny_io_uring(EPERM) < 0)
        return 10;
    unsetenv("WARMLOCK_IO");
    if (wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)) != 0)
        return 11;
    if (strcmp(wl__loop_backend(l), "poll") != 0)
        return 12;
    /* the fallback loop works */
    rec_init(&r, -1, 5 * MS);
    r.timer_first = 1;
    if (wl__loop_add(l, &r.t) != 0 || wl__loop_run_until(l, 0) != 0 || r.t.want != WL__WANT_DONE)
        return 13;
    wl__loop_free(l);
    if (wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)) != 0) /* logs nothing this time */
        return 14;
    wl__loop_free(l);
    setenv("WARMLOCK_IO", "uring", 1);
    if (wl__loop_new(WL__IO_AUTO, &l, err, sizeof(err)) != -EPERM)
        return 15;
    if (!strstr(err, "EPERM"))
        return 16;
    return 0;
}

static void test_ring_falls_back_to_poll_when_io_uring_is_refused(void **state)
{
    int p[2], st;
    char buf[2048];
    ssize_t n, len = 0;
    pid_t pid;
    (void)state;
    assert_int_equal(pipe(p), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        _exit(fallback_child(p[1]));
    }
    close(p[1]);
    while ((n = read(p[0], buf + len, sizeof(buf) - 1 - (size_t)len)) > 0)
        len += n;
    buf[len] = '\0';
    close(p[0]);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    print_message("child's stderr: %s", buf);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_non_null(strstr(buf, "level=info"));
    assert_non_null(strstr(buf, "msg=\"io_uring unavailable, using poll\""));
    assert_non_null(strstr(buf, "reason=EPERM"));
    /* logged once, although two loops fell back */
    assert_null(strstr(strstr(buf, "io_uring unavailable") + 1, "io_uring unavailable"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WLT_BOTH(test_ring_readable_pipe_wakes_the_task),
        WLT_BOTH(test_ring_linked_timeout_fires_on_a_silent_fd),
        WLT_BOTH(test_ring_timer_fires_within_bounds),
        WLT_BOTH(test_ring_drives_several_tasks_at_once),
        WLT_BOTH(test_ring_run_deadline_returns_remaining_tasks),
        WLT_BOTH(test_ring_removed_task_is_never_called_again),
        WLT_BOTH(test_ring_task_can_be_added_again_after_it_finished),
        cmocka_unit_test(test_ring_env_forces_the_backend),
        cmocka_unit_test(test_ring_falls_back_to_poll_when_io_uring_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
