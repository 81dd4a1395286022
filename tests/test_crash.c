/*
 * Crash injection: in a loop, 8-32 processes call wl_ensure on one key while the test
 * SIGKILLs the current leader (or any process) at a random moment: during segment creation,
 * while claiming, inside the warm-up, while publishing; sometimes twice in a row.
 * Invariants checked every iteration:
 *   - never two warm functions running at once (at its start, every earlier warm-up that did
 *     not finish belongs to a dead process);
 *   - every surviving process returns 0 before its deadline;
 *   - no slot is left WARMING without a live leader, and the next caller succeeds;
 *   - ENOTRECOVERABLE never appears (any code other than 0 fails the test);
 *   - counters stay consistent: warm-ups started by the warm function <= warmups <= those
 *     plus kills; takeovers >= leaders killed inside warm(), <= kills.
 * WARMLOCK_CRASH_ITERATIONS sets the count (default 300; e.g. 5000 for a long run).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/internal.h"
#include "proc.h"
#include "warmlock.h"

#define MAXP 32
#define MAXCALLS 64

struct crash {
    char name[64];
    _Atomic uint32_t go;    /* futex: the start line */
    _Atomic uint32_t calls;
    _Atomic uint32_t started; /* futex: bumped at each warm start */
    _Atomic int32_t pid[MAXCALLS];
    _Atomic uint32_t ended[MAXCALLS];
    _Atomic uint32_t overlap; /* set when a warm-up found a live unfinished predecessor */
    char overlap_msg[128];
    uint32_t warm_us;
    int rc[MAXP];
    char err[MAXP][200]; /* wl_open's message when it failed */
    _Atomic uint32_t returned[MAXP];
};

static struct crash *C;

/* Is pid gone: dead, a zombie, or exiting (PF_EXITING: the kernel releases a dying task's
 * robust mutexes early in do_exit, before it becomes a zombie)? */
static int pid_dead(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[2] == 'Z' || p[2] == 'X')
        return 1;
    /* after ")": state ppid pgrp session tty_nr tpgid flags */
    unsigned long flags = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %lu", &flags) == 1 && (flags & 0x4))
        return 1;
    return 0;
}

static int warm(void *arg, struct wl_result *res)
{
    struct crash *c = arg;
    uint32_t i = atomic_fetch_add(&c->calls, 1);
    (void)res;
    if (i >= MAXCALLS)
        return 0;
    for (uint32_t j = 0; j < i; j++) {
        pid_t p = atomic_load(&c->pid[j]);
        if (p && !atomic_load(&c->ended[j]) && !pid_dead(p)) {
            snprintf(c->overlap_msg, sizeof(c->overlap_msg),
                     "warm-up %u (pid %d) started while %u (pid %d) still ran", i,
                     (int)getpid(), j, (int)p);
            atomic_store(&c->overlap, 1);
        }
    }
    atomic_store(&c->pid[i], getpid());
    atomic_fetch_add(&c->started, 1);
    wlt_wake(&c->started);
    usleep(c->warm_us);
    atomic_store(&c->ended[i], 1);
    return 0;
}

static int worker(void *arg, int idx)
{
    struct crash *c = arg;
    struct wl_segment *seg;
    struct wl_wait_opts w = {.timeout_ms = 3000};
    wlt_wait_change(&c->go, 0, 10000);
    int r = wl_open(c->name, NULL, &seg);
    if (r == 0)
        r = wl_ensure(seg, "crash", warm, c, &w, NULL);
    else
        snprintf(c->err[idx], sizeof(c->err[idx]), "%s", wl_last_error());
    c->rc[idx] = r;
    atomic_store(&c->returned[idx], 1);
    return 0;
}

static unsigned iterations(void)
{
    const char *e = getenv("WARMLOCK_CRASH_ITERATIONS");
    return e && atoi(e) > 0 ? (unsigned)atoi(e) : 300;
}

static void test_crash_injection_keeps_invariants(void **state)
{
    unsigned iters = iterations(), kills = 0, leader_kills = 0, takeovers = 0;
    unsigned seed = (unsigned)getpid();
    uint64_t worst_takeover = 0;
    char segbase[48];
    (void)state;

    C = wlt_shared(sizeof(*C));
    snprintf(segbase, sizeof(segbase), "%s", wlt_segname());
    for (unsigned it = 0; it < iters; it++) {
        pid_t pids[MAXP];
        int n = 8 + (int)(rand_r(&seed) % 25);
        int fresh = rand_r(&seed) % 4 == 0; /* a new segment: kills can land in creation */
        memset(C, 0, sizeof(*C));
        snprintf(C->name, sizeof(C->name), "%s%s", segbase, fresh ? "n" : "");
        if (fresh)
            shm_unlink(C->name);
        C->warm_us = 1000 + (uint32_t)(rand_r(&seed) % 20000);

        for (int i = 0; i < n; i++)
            pids[i] = wlt_spawn(worker, C, i);
        atomic_store(&C->go, 1);
        wlt_wake(&C->go);

        int nkill = 1 + (rand_r(&seed) % 4 == 0); /* sometimes twice in a row */
        int killed[MAXP] = {0};
        int victim_call[2] = {-1, -1}; /* the warm call a victim was running, if any */
        unsigned killed_in_warm = 0, my_kills = 0;
        for (int k = 0; k < nkill; k++) {
            unsigned mode = (unsigned)rand_r(&seed) % 3;
            pid_t victim = 0;
            if (mode == 0) {
                /* A random process at a random early moment: creation, claiming... */
                usleep((unsigned)rand_r(&seed) % 3000);
                int v = (int)((unsigned)rand_r(&seed) % (unsigned)n);
                victim = pids[v];
            } else {
                /* The current leader, inside warm() (mode 1) or about to publish (2). */
                if (wlt_wait_change(&C->started, 0, 2000) != 0)
                    continue;
                uint32_t idx = atomic_load(&C->calls) - 1;
                if (idx >= MAXCALLS || atomic_load(&C->ended[idx]))
                    continue;
                if (mode == 2)
                    usleep(C->warm_us > 300 ? C->warm_us - 300 : 0);
                else
                    usleep((unsigned)rand_r(&seed) % (C->warm_us / 2 + 1));
                victim = atomic_load(&C->pid[idx]);
                victim_call[k] = (int)idx;
            }
            int vi = -1;
            for (int i = 0; i < n; i++)
                if (pids[i] == victim)
                    vi = i;
            if (vi < 0 || killed[vi] || atomic_load(&C->returned[vi])) {
                victim_call[k] = -1;
                continue;
            }
            uint64_t t0 = wlt_now_ns();
            uint32_t st = atomic_load(&C->started);
            kill(victim, SIGKILL);
            killed[vi] = 1;
            my_kills++;
            if (mode != 0 && !atomic_load(&C->ended[victim_call[k]]) &&
                wlt_wait_change(&C->started, st, 500) == 0) {
                uint64_t lat = wlt_now_ns() - t0;
                if (lat > worst_takeover)
                    worst_takeover = lat;
            }
        }
        for (int i = 0; i < n; i++) {
            int st = wlt_wait(pids[i], 10000);
            if (killed[i]) {
                if (st != 128 + SIGKILL && st != 0)
                    fail_msg("iteration %u: killed process %d ended with %d", it, i, st);
                continue;
            }
            if (st != 0)
                fail_msg("iteration %u: process %d did not end by its deadline (%d)", it, i,
                         st);
            if (C->rc[i] != 0)
                fail_msg("iteration %u: process %d returned %d (%s) %s", it, i, C->rc[i],
                         wl_strerror(C->rc[i]), C->err[i]);
        }
        /* Reaped: a victim whose warm call never ended died inside warm(). */
        for (int k = 0; k < 2; k++)
            if (victim_call[k] >= 0 && !atomic_load(&C->ended[victim_call[k]]))
                killed_in_warm++;
        if (atomic_load(&C->overlap))
            fail_msg("iteration %u: %s", it, C->overlap_msg);

        struct wl_segment *seg;
        struct wl_slot_info info;
        assert_int_equal(wl_open(C->name, NULL, &seg), 0);
        int ns = wl_snapshot(seg, &info, 1);
        if (ns == 1) {
            if (info.state == WL_WARMING)
                fail_msg("iteration %u: slot left WARMING with leader %d", it, info.leader_pid);
            uint32_t calls = atomic_load(&C->calls);
            if (info.warmups < calls || info.warmups > calls + my_kills)
                fail_msg("iteration %u: warmups %llu, warm calls %u, kills %u", it,
                         (unsigned long long)info.warmups, calls, my_kills);
            if (info.takeovers < killed_in_warm || info.takeovers > my_kills)
                fail_msg("iteration %u: takeovers %llu, leaders killed in warm %u, kills %u",
                         it, (unsigned long long)info.takeovers, killed_in_warm, my_kills);
            takeovers += (unsigned)info.takeovers;
            /* Everyone has ended, the killed too: nobody waits, so nobody is counted. */
            if (info.waiters != 0)
                fail_msg("iteration %u: %u waiters counted after every process ended", it,
                         info.waiters);
        }
        /* The next caller always gets an answer (a fast one). */
        assert_int_equal(wl_ensure(seg, "crash", warm, C, NULL, NULL), 0);
        /* Reset counters for the next iteration on the same segment. */
        assert_true(wl_reset(seg, 0) >= 0);
        wl_close(seg);
        kills += my_kills;
        leader_kills += killed_in_warm;
        if (fresh)
            shm_unlink(C->name);
    }
    shm_unlink(segbase);
    printf("# crash injection: %u iterations, %u kills delivered, %u leaders killed inside "
           "warm(), %u takeovers observed, worst takeover %.3f ms\n", iters, kills,
           leader_kills, takeovers, worst_takeover / 1e6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crash_injection_keeps_invariants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
