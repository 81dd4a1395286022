/* Test helpers: real child processes, shared memory between them, and timing. */
#ifndef WL_TEST_PROC_H
#define WL_TEST_PROC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Anonymous memory shared with children forked later (zeroed). */
void *wlt_shared(size_t size);
/* A unique segment name for this test process: "/wltest.<pid>.<n>". Every /wltest.<pid>.*
 * is unlinked when that process exits (exit(), not _exit()). */
const char *wlt_segname(void);
/* CLOCK_MONOTONIC and CLOCK_REALTIME in ns. */
uint64_t wlt_now_ns(void);
uint64_t wlt_realtime_ns(void);
void wlt_sleep_ms(unsigned ms);

/* Fork a child running fn(arg, index); its return value is the exit status. */
pid_t wlt_spawn(int (*fn)(void *arg, int index), void *arg, int index);
/* Fork and execv(argv) with stdin from /dev/null, stdout and stderr into the files out and
 * err (NULL: /dev/null), and every other descriptor but keep_fd (-1: none) closed. */
pid_t wlt_spawn_exec(char *const argv[], const char *out, const char *err, int keep_fd);
/* Wait for pid up to timeout_ms; returns its exit status (0..255), 128+signal if killed by
 * a signal, or -1 if it did not end in time (it is then SIGKILLed and reaped). */
int wlt_wait(pid_t pid, unsigned timeout_ms);

/* Wait up to timeout_ms until child pid is stopped by a signal (SIGSTOP, raise(SIGSTOP)); it
 * stays stopped and unreaped. 0, or -1 if it ended or did not stop in time. */
int wlt_wait_stopped(pid_t pid, unsigned timeout_ms);

/* A program run to completion: see wlt_run_v. */
struct wlt_run {
    int status; /* exit status, 128+signal, or -1 if it did not end in time (then SIGKILLed) */
    uint64_t ms; /* how long it ran */
    char out[65536];
    char err[16384];
};
/* Run argv (argv[0] a path; NULL-terminated) to completion, bounded by timeout_ms, its stdout
 * and stderr captured (as much as fits) through files in dir, removed afterwards. */
void wlt_run_v(struct wlt_run *r, const char *dir, unsigned timeout_ms, char *const argv[]);
#define WLT_RUN(r, dir, timeout, ...)                                                              \
    do {                                                                                           \
        char *const argv_[] = {__VA_ARGS__, NULL};                                                 \
        wlt_run_v((r), (dir), (timeout), argv_);                                                   \
    } while (0)
/* Read up to len-1 bytes of a file into buf, NUL-terminated ("" if it cannot be read);
 * returns the length. */
size_t wlt_slurp(const char *path, char *buf, size_t len);

/* In the calling process (and its later children), for good: make io_uring_setup fail with
 * err (EPERM: what Docker's default seccomp profile and kernel.io_uring_disabled do; ENOSYS:
 * an old kernel), everything else allowed. 0, or -errno (-ENOTSUP on an unknown arch). */
int wlt_deny_io_uring(int err);

/* A start line for n processes: each calls wlt_barrier_wait; all leave together. */
struct wlt_barrier {
    _Atomic uint32_t arrived;
    _Atomic uint32_t go;
};
void wlt_barrier_wait(struct wlt_barrier *b, uint32_t n);
/* Wait (futex) until *word != value or timeout_ms passes (WLT_FOREVER: no timeout, a plain
 * FUTEX_WAIT); 0 or -1 on timeout. */
#define WLT_FOREVER 0xffffffffu
int wlt_wait_change(_Atomic uint32_t *word, uint32_t value, unsigned timeout_ms);
void wlt_wake(_Atomic uint32_t *word);

/* Sort helpers for latency figures. */
void wlt_sort_u64(uint64_t *v, size_t n);
void wlt_sort_double(double *v, size_t n);

#endif
