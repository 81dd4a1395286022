/*
 * io_uring forced unavailable: the libpq engine against a real PostgreSQL, in children
 * under a seccomp filter that makes io_uring_setup fail with EPERM (Docker's default
 * profile, kernel.io_uring_disabled) or ENOSYS (a kernel built without it). With
 * WARMLOCK_IO unset the engine runs on poll(2) and logs the reason once; with
 * WARMLOCK_IO=poll it never tries io_uring; with WARMLOCK_IO=uring it fails at once with
 * an error naming io_uring and the reason, and never hangs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define MS               1000000ull
#define CHILD_TIMEOUT_MS 20000u
#define CALL_TIMEOUT_MS  10000u
#define NHERD            6
#define FALLBACK_MSG     "msg=\"io_uring unavailable, using poll\""

WLT_PG_SUITE

/* What a child reports back through shared memory. */
struct outcome {
    int stage;     /* 0 ran; else where it stopped (see child_main) */
    int denied;    /* the errno io_uring_setup gave under the filter */
    int rc[NHERD]; /* wl_pg_ensure's */
    int role[NHERD];
    uint64_t ms[NHERD];
    char error[NHERD][256];
    char why[256]; /* stage != 0: what went wrong */
};

struct scenario {
    int deny_errno; /* EPERM or ENOSYS */
    const char *io; /* WARMLOCK_IO, or NULL for unset */
    int n;          /* processes calling wl_pg_ensure on one key */
    char seg[64];
    struct outcome *out;
};

/* One caller: open the segment, wl_pg_ensure, record. Runs in a process of its own. */
static int caller(void *arg, int i)
{
    struct scenario *sc = arg;
    struct wl_pg_opts o;
    struct wl_segment *seg;
    struct wl_result r;
    uint64_t t0 = wlt_now_ns();

    memset(&o, 0, sizeof(o));
    o.wait.timeout_ms = CALL_TIMEOUT_MS;
    if (wl_open(sc->seg, NULL, &seg) < 0) {
        snprintf(sc->out->error[i], sizeof(sc->out->error[i]), "wl_open: %s", wl_last_error());
        sc->out->rc[i] = -999;
        return 1;
    }
    sc->out->rc[i] = wl_pg_ensure(seg, H.conninfo, &o, &r);
    sc->out->ms[i] = (wlt_now_ns() - t0) / MS;
    sc->out->role[i] = r.role;
    memcpy(sc->out->error[i], r.error, sizeof(r.error));
    wl_close(seg);
    return 0;
}

/* The child: stderr to the pipe, the filter, the environment, then the callers (the
 * filter is inherited by their processes). */
static int child_main(struct scenario *sc, int errfd)
{
    struct outcome *out = sc->out;
    pid_t pids[NHERD];
    int r;

    if (dup2(errfd, 2) < 0)
        return 1;
    if ((r = wlt_deny_io_uring(sc->deny_errno)) < 0) {
        out->stage = 77;
        snprintf(out->why, sizeof(out->why), "cannot install a seccomp filter: %s", strerror(-r));
        return 0;
    }
    /* The filter answers before the kernel looks at the arguments. */
    errno = 0;
    if (syscall(__NR_io_uring_setup, 0, NULL) != -1 || errno != sc->deny_errno) {
        out->stage = 2;
        snprintf(out->why, sizeof(out->why), "io_uring_setup under the filter gave %s, not %s",
                 strerrorname_np(errno), strerrorname_np(sc->deny_errno));
        return 0;
    }
    out->denied = errno;
    if (sc->io)
        setenv("WARMLOCK_IO", sc->io, 1);
    else
        unsetenv("WARMLOCK_IO");
    if (sc->n == 1)
        return caller(sc, 0);
    for (int i = 0; i < sc->n; i++)
        pids[i] = wlt_spawn(caller, sc, i);
    for (int i = 0; i < sc->n; i++)
        if (wlt_wait(pids[i], CHILD_TIMEOUT_MS) != 0) {
            out->stage = 3;
            snprintf(out->why, sizeof(out->why), "caller %d did not end cleanly", i);
        }
    return 0;
}

/* Run the scenario in a child; its stderr goes to err. Fails the test on a hang. */
static void run(struct scenario *sc, char *err, size_t errlen)
{
    uint64_t deadline = wlt_now_ns() + (uint64_t)CHILD_TIMEOUT_MS * MS;
    size_t len = 0;
    int p[2], st;
    pid_t pid;

    snprintf(sc->seg, sizeof(sc->seg), "%s", wlt_segname());
    sc->out = wlt_shared(sizeof(*sc->out));
    assert_non_null(sc->out);
    assert_int_equal(pipe(p), 0);
    fflush(stdout);
    fflush(stderr);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        _exit(child_main(sc, p[1]));
    }
    close(p[1]);
    for (;;) { /* read its stderr until EOF (all its processes ended), bounded */
        struct pollfd pf = {p[0], POLLIN, 0};
        uint64_t now = wlt_now_ns();
        ssize_t n;
        if (now >= deadline)
            break;
        if (poll(&pf, 1, (int)((deadline - now) / MS) + 1) <= 0)
            continue;
        n = read(p[0], err + len, errlen - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == errlen - 1)
            len = 0; /* keep reading: a full buffer must not block the child */
    }
    err[len] = '\0';
    close(p[0]);
    st = wlt_wait(pid, 1000);
    print_message("child's stderr:\n%s", err);
    wl_unlink(sc->seg);
    assert_int_not_equal(st, -1); /* it did not end in time: a hang */
    assert_int_equal(st, 0);
    if (sc->out->stage == 77) {
        print_message("skipped: %s\n", sc->out->why);
        skip();
    }
    if (sc->out->stage != 0)
        fail_msg("%s", sc->out->why);
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (; (s = strstr(s, needle)); s++)
        n++;
    return n;
}

static void expect_fallback_and_success(int deny)
{
    struct scenario sc = {.deny_errno = deny, .io = NULL, .n = 1};
    char err[8192], reason[32];

    NEED_PG();
    run(&sc, err, sizeof(err));
    if (sc.out->rc[0] != 0)
        fail_msg("wl_pg_ensure on the poll backend: %d %s", sc.out->rc[0], sc.out->error[0]);
    assert_int_equal(sc.out->role[0], WL_LEADER);
    /* one line, with the reason */
    snprintf(reason, sizeof(reason), "reason=%s", strerrorname_np(deny));
    assert_int_equal(count(err, FALLBACK_MSG), 1);
    const char *line = strstr(err, FALLBACK_MSG);
    while (line > err && line[-1] != '\n')
        line--;
    const char *eol = strchr(line, '\n');
    assert_non_null(eol);
    char one[512];
    snprintf(one, sizeof(one), "%.*s", (int)(eol - line), line);
    assert_non_null(strstr(one, "level=info"));
    assert_non_null(strstr(one, reason));
}

static void test_nouring_eperm_falls_back_to_poll_and_logs_the_reason(void **state)
{
    (void)state;
    expect_fallback_and_success(EPERM);
}

static void test_nouring_enosys_falls_back_to_poll_and_logs_the_reason(void **state)
{
    (void)state;
    expect_fallback_and_success(ENOSYS);
}

static void expect_forced_failure(int deny)
{
    struct scenario sc = {.deny_errno = deny, .io = "uring", .n = 1};
    char err[8192];

    NEED_PG();
    run(&sc, err, sizeof(err));
    print_message("wl_pg_ensure: %d (%s) after %llu ms: %s\n", sc.out->rc[0],
                  wl_strerror(sc.out->rc[0]), (unsigned long long)sc.out->ms[0], sc.out->error[0]);
    assert_int_equal(sc.out->rc[0], -deny);
    assert_non_null(strstr(sc.out->error[0], "io_uring"));
    assert_non_null(strstr(sc.out->error[0], "WARMLOCK_IO"));
    assert_non_null(strstr(sc.out->error[0], strerrorname_np(deny)));
    assert_true(sc.out->ms[0] < 2000);             /* at once, not at the deadline */
    assert_int_equal(count(err, FALLBACK_MSG), 0); /* forced: no silent fallback */
}

static void test_nouring_forced_uring_under_eperm_fails_at_once_saying_why(void **state)
{
    (void)state;
    expect_forced_failure(EPERM);
}

static void test_nouring_forced_uring_under_enosys_fails_at_once_saying_why(void **state)
{
    (void)state;
    expect_forced_failure(ENOSYS);
}

static void test_nouring_forced_poll_never_tries_io_uring(void **state)
{
    struct scenario sc = {.deny_errno = EPERM, .io = "poll", .n = 1};
    char err[8192];
    (void)state;

    NEED_PG();
    run(&sc, err, sizeof(err));
    if (sc.out->rc[0] != 0)
        fail_msg("wl_pg_ensure with WARMLOCK_IO=poll: %d %s", sc.out->rc[0], sc.out->error[0]);
    assert_int_equal(count(err, "io_uring"), 0);
}

static void test_nouring_herd_has_one_leader_on_poll(void **state)
{
    struct scenario sc = {.deny_errno = EPERM, .io = NULL, .n = NHERD};
    char err[16384];
    int leaders = 0;
    (void)state;

    NEED_PG();
    run(&sc, err, sizeof(err));
    for (int i = 0; i < NHERD; i++) {
        if (sc.out->rc[i] != 0)
            fail_msg("caller %d: %d %s", i, sc.out->rc[i], sc.out->error[i]);
        leaders += sc.out->role[i] == WL_LEADER;
    }
    assert_int_equal(leaders, 1);
    /* only the leader runs the engine's loop, so only it falls back (once) */
    assert_int_equal(count(err, FALLBACK_MSG), 1);
}

static int group_setup(void **state)
{
    (void)state;
    have_pg = (pg_reason = pgh_suite_up(&H, NULL, NULL)) == NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nouring_eperm_falls_back_to_poll_and_logs_the_reason),
        cmocka_unit_test(test_nouring_enosys_falls_back_to_poll_and_logs_the_reason),
        cmocka_unit_test(test_nouring_forced_uring_under_eperm_fails_at_once_saying_why),
        cmocka_unit_test(test_nouring_forced_uring_under_enosys_fails_at_once_saying_why),
        cmocka_unit_test(test_nouring_forced_poll_never_tries_io_uring),
        cmocka_unit_test(test_nouring_herd_has_one_leader_on_poll),
    };
    return cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
}
