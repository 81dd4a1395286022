#include "proc.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void *wlt_shared(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        abort();
    }
    return p;
}

static pid_t segname_owner;

/* At the exit of the process that made names: every /dev/shm/wltest.<its pid>.* (the names it
 * made and those tests derived from them), so the suites leave no segment behind. Children
 * that fork from it and call exit() leave them alone. */
static void remove_segnames(void)
{
    char prefix[32];
    if (getpid() != segname_owner)
        return;
    int len = snprintf(prefix, sizeof(prefix), "wltest.%d.", (int)segname_owner);
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, prefix, (size_t)len) == 0) {
            char name[300];
            snprintf(name, sizeof(name), "/%s", e->d_name);
            shm_unlink(name);
        }
    }
    closedir(d);
}

const char *wlt_segname(void)
{
    static char buf[64];
    static unsigned n;
    if (segname_owner != getpid()) {
        if (!segname_owner)
            atexit(remove_segnames);
        segname_owner = getpid(); /* a forked child that makes names of its own owns them */
    }
    snprintf(buf, sizeof(buf), "/wltest.%d.%u", (int)getpid(), n++);
    return buf;
}

uint64_t wlt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wlt_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void wlt_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

pid_t wlt_spawn(int (*fn)(void *arg, int index), void *arg, int index)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0)
        _exit(fn(arg, index) & 0xff);
    return pid;
}

pid_t wlt_spawn_exec(char *const argv[], const char *out, const char *err, int keep_fd)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        abort();
    }
    if (pid == 0) {
        int o = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int n = open("/dev/null", O_RDONLY);
        dup2(n, 0);
        dup2(o, 1);
        dup2(e, 2);
        for (int fd = 3; fd < 256; fd++)
            if (fd != keep_fd)
                close(fd);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int wlt_wait(pid_t pid, unsigned timeout_ms)
{
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * 1000000u;
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (wlt_now_ns() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        wlt_sleep_ms(1);
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    return 128 + WTERMSIG(st);
}

int wlt_wait_stopped(pid_t pid, unsigned timeout_ms)
{
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * 1000000u;
    for (;;) {
        siginfo_t si = {0};
        if (waitid(P_PID, (id_t)pid, &si, WSTOPPED | WNOHANG | WNOWAIT) < 0 && errno != EINTR)
            return -1;
        if (si.si_pid == pid)
            return si.si_code == CLD_STOPPED ? 0 : -1;
        if (wlt_now_ns() >= end)
            return -1;
        wlt_sleep_ms(1);
    }
}

size_t wlt_slurp(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    size_t n = 0;
    if (f) {
        n = fread(buf, 1, len - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return n;
}

void wlt_run_v(struct wlt_run *r, const char *dir, unsigned timeout_ms, char *const argv[])
{
    char out[320], err[320];
    static unsigned n;
    uint64_t t0 = wlt_now_ns();
    snprintf(out, sizeof(out), "%s/run%d.%u.out", dir, (int)getpid(), n);
    snprintf(err, sizeof(err), "%s/run%d.%u.err", dir, (int)getpid(), n++);
    r->status = wlt_wait(wlt_spawn_exec(argv, out, err, -1), timeout_ms);
    r->ms = (wlt_now_ns() - t0) / 1000000u;
    wlt_slurp(out, r->out, sizeof(r->out));
    wlt_slurp(err, r->err, sizeof(r->err));
    unlink(out);
    unlink(err);
}

#if defined(__x86_64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* Make io_uring_setup fail with err; everything else is allowed. 0, or -errno. */
int wlt_deny_io_uring(int err)
{
#ifdef THIS_AUDIT_ARCH
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -errno;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0 ? -errno : 0;
#else
    (void)err;
    return -ENOTSUP;
#endif
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

void wlt_barrier_wait(struct wlt_barrier *b, uint32_t n)
{
    if (atomic_fetch_add(&b->arrived, 1) + 1 == n) {
        atomic_store(&b->go, 1);
        futex(&b->go, FUTEX_WAKE, INT_MAX, NULL);
        return;
    }
    while (atomic_load(&b->go) == 0)
        futex(&b->go, FUTEX_WAIT, 0, NULL);
}

int wlt_wait_change(_Atomic uint32_t *word, uint32_t value, unsigned timeout_ms)
{
    if (timeout_ms == WLT_FOREVER) {
        while (atomic_load(word) == value)
            futex(word, FUTEX_WAIT, value, NULL);
        return 0;
    }
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (atomic_load(word) == value) {
        uint64_t now = wlt_now_ns();
        if (now >= end)
            return -1;
        struct timespec ts = {(time_t)((end - now) / 1000000000u),
                              (long)((end - now) % 1000000000u)};
        futex(word, FUTEX_WAIT, value, &ts);
    }
    return 0;
}

void wlt_wake(_Atomic uint32_t *word)
{
    futex(word, FUTEX_WAKE, INT_MAX, NULL);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

void wlt_sort_u64(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_u64);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void wlt_sort_double(double *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_double);
}
