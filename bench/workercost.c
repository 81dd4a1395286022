/*
 * What one worker costs on a server that is already up (its slot READY): a forked process
 * that needs one query, naive (PQconnectdb, SELECT 1) against warmlock (wl_open,
 * wl_pg_target_open, wl_pg_target_ensure, wl_pg_target_connect, SELECT 1), the way
 * bench/coldstart's workers do it, but one worker at a time so nothing contends.
 *
 * Printed per strategy, over K forked workers interleaved naive / floor / warmlock (the
 * floor: naive after touching the pages a warmlock worker cannot avoid, see worker_touch):
 *   - CPU of a worker (wait4's rusage, user + system), which includes fork and exit;
 *   - minor page faults and system calls of a worker: exact counts, the same on any machine
 *     (system calls counted with --syscalls, through strace, when it is installed);
 *   - user-mode instructions: run the program under callgrind, which counts them exactly:
 *       valgrind --tool=callgrind --collect-atstart=no --toggle-collect=worker_naive \
 *         --toggle-collect=worker_warmlock build/bench/workercost --callgrind
 *     (--callgrind: 4 workers a strategy, one file per worker; see bench/README.md).
 *
 * Usage: workercost [-k K] [--syscalls] [--callgrind]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "lib/layout.h"
#include "pgharness.h"
#include "warmlock.h"
#include "warmlock/pg.h"

static const char *conninfo;
/* The naive worker's: bench/coldstart's baselines' conninfo, with their connect_timeout */
static char naive_conninfo[1200];
static const char *shm = "/warmlock-workercost";

/* Each worker's query, checked: a worker whose query failed exits 1. */
static int select_one(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT 1");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    PQfinish(c);
    return ok ? 0 : 1;
}

/* Not inlined: callgrind's --toggle-collect names them. */
int worker_naive(void);
int worker_touch(void);
int worker_warmlock(void);

/* The pages any worker that uses the segment must touch, inherited from the parent: the
 * segment's header and the target's slot (set before the workers are forked). */
static const volatile uint32_t *touch_header, *touch_slot;

__attribute__((noinline)) int worker_naive(void)
{
    PGconn *c = PQconnectdb(naive_conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return 1;
    }
    return select_one(c);
}

/* The floor of a worker that uses the library at all: naive, after touching what a
 * warmlock worker cannot avoid touching in a fresh process: the library's code and its
 * read-only data (one call that returns one of its strings), the segment's header and the
 * target's slot. What warmlock costs beyond this is its own code's. */
__attribute__((noinline)) int worker_touch(void)
{
    const volatile char *msg = wl_strerror(-ENOENT);
    if (!msg[0] || !*touch_header || *touch_slot == UINT32_MAX)
        return 1;
    return worker_naive();
}

__attribute__((noinline)) int worker_warmlock(void)
{
    struct wl_segment *seg;
    struct wl_pg_target *t;
    struct wl_result res;
    struct wl_pg_opts o;
    memset(&o, 0, sizeof(o));
    /* as bench/coldstart's warmlock workers: its deadline, the baselines' attempt timeout */
    o.wait.timeout_ms = 30000;
    o.attempt_timeout_ms = 5000;
    if (wl_open(shm, NULL, &seg) < 0 || wl_pg_target_open(seg, conninfo, &o, &t) < 0)
        return 1;
    PGconn *c = wl_pg_target_connect(t, &res);
    return c ? select_one(c) : 1;
}

struct tally {
    const char *name;
    int (*fn)(void);
    long n, failed;
    double cpu_us, faults;
};

static int one(struct tally *t)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0)
        _exit(t->fn());
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid)
        return -1;
    t->n++;
    t->failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    t->cpu_us += (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                 (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    t->faults += (double)ru.ru_minflt;
    return 0;
}

/* System calls of one worker of each strategy, counted by strace -f -c on this program
 * itself (a child run with --one-naive / --one-warmlock), or -1 without strace. */
static long count_syscalls(const char *self, const char *which)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "strace -f -c -o /dev/stdout %s --one-%s '%s' 2>/dev/null | awk '$NF == \"total\" "
             "{ print $(NF-2) }'",
             self, which, conninfo);
    FILE *p = popen(cmd, "r");
    long n = -1;
    if (p && fscanf(p, "%ld", &n) != 1)
        n = -1;
    if (p)
        pclose(p);
    return n;
}

int main(int argc, char **argv)
{
    long k = 400;
    int syscalls = 0, callgrind = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-k") && i + 1 < argc) {
            k = strtol(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--syscalls")) {
            syscalls = 1;
        } else if (!strcmp(argv[i], "--callgrind")) {
            callgrind = 1;
        } else if (!strncmp(argv[i], "--one-", 6) && i + 1 < argc) {
            /* One worker, for strace: the slot is READY already (the parent made it so);
             * fork first so the count holds what a forked worker does, not this start. */
            conninfo = argv[i + 1];
            snprintf(naive_conninfo, sizeof(naive_conninfo), "%s connect_timeout=5", conninfo);
            /* mapped before the fork, as in the main run: the worker inherits the mapping */
            struct wl_segment *mapped;
            if (wl_open(shm, NULL, &mapped) < 0)
                return 1;
            pid_t pid = fork();
            if (pid == 0)
                _exit(!strcmp(argv[i] + 6, "naive") ? worker_naive() : worker_warmlock());
            int st = 1;
            waitpid(pid, &st, 0);
            return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
        } else {
            fprintf(stderr,
                    "usage: workercost [-k K] [--syscalls] [--callgrind]\n"
                    "What one worker costs, naive against warmlock, on a server already up "
                    "(bench/README.md).\n");
            return !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ? 0 : 2;
        }
    }
    if (k < 1 || k > 100000) {
        fprintf(stderr, "workercost: -k must be 1..100000\n");
        return 2;
    }
    if (callgrind)
        k = 4;

    static struct pgh h;
    const char *why = pgh_suite_up(&h, NULL, "max_connections = 100\n");
    if (why) {
        fprintf(stderr, "workercost: skipped: %s\n", why);
        return 77;
    }
    conninfo = h.conninfo;
    snprintf(naive_conninfo, sizeof(naive_conninfo), "%s connect_timeout=5", conninfo);
    wl_unlink(shm);
    /* The slot READY before any worker: every worker takes the ready path. */
    struct wl_segment *seg;
    struct wl_pg_opts o;
    struct wl_result res;
    memset(&o, 0, sizeof(o));
    if (wl_open(shm, NULL, &seg) < 0 || wl_pg_ensure(seg, conninfo, &o, &res) < 0) {
        fprintf(stderr, "workercost: the first warm-up failed: %s\n", res.error);
        pgh_stop(&h, "fast");
        return 1;
    }
    /* the slot, found by its key text (the layout is in lib/layout.h; the library's own
     * lookup is not exported) */
    char key[WL_PG_KEY_MAX];
    struct wl__slot *sl = NULL;
    if (wl_pg_slot_key(seg, conninfo, key, sizeof(key)) >= 0)
        for (uint32_t i = 0; i < seg->nslots && !sl; i++)
            if (!strcmp(seg->slots[i].key, key))
                sl = &seg->slots[i];
    if (!sl) {
        fprintf(stderr, "workercost: the target's slot is not there\n");
        pgh_stop(&h, "fast");
        return 1;
    }
    touch_header = &seg->hdr->layout_version;
    touch_slot = (const volatile uint32_t *)&sl->state;
    enum { NAIVE, TOUCH, WARMLOCK, NKIND };
    struct tally t[NKIND] = {{"naive", worker_naive, 0, 0, 0, 0},
                             {"naive + the pages warmlock must touch", worker_touch, 0, 0, 0, 0},
                             {"warmlock", worker_warmlock, 0, 0, 0, 0}};
    int rc = 0;
    for (long i = 0; i < k && rc == 0; i++)
        for (int s = 0; s < NKIND && rc == 0; s++)
            rc = one(&t[s]);
    long sc[NKIND] = {-1, -1, -1};
    if (syscalls && rc == 0) {
        sc[NAIVE] = count_syscalls(argv[0], "naive");
        sc[WARMLOCK] = count_syscalls(argv[0], "warmlock");
    }
    pgh_stop(&h, "fast");
    wl_unlink(shm);
    if (rc < 0) {
        fprintf(stderr, "workercost: fork/wait failed: %s\n", strerror(errno));
        return 1;
    }
    printf("| worker (%ld each, interleaved) | CPU µs (rusage) | minor faults | system calls |\n"
           "|---|---|---|---|\n",
           k);
    double cpu[NKIND], flt[NKIND];
    for (int s = 0; s < NKIND; s++) {
        char sys[32] = "—";
        if (sc[s] >= 0)
            snprintf(sys, sizeof(sys), "%ld", sc[s]);
        cpu[s] = t[s].cpu_us / (double)t[s].n;
        flt[s] = t[s].faults / (double)t[s].n;
        printf("| %s | %.0f | %.1f | %s |\n", t[s].name, cpu[s], flt[s], sys);
    }
    printf("| warmlock ÷ naive | %.3f | %.3f | |\n", cpu[WARMLOCK] / cpu[NAIVE],
           flt[WARMLOCK] / flt[NAIVE]);
    printf("| the floor: naive + those pages ÷ naive | %.3f | %.3f | |\n", cpu[TOUCH] / cpu[NAIVE],
           flt[TOUCH] / flt[NAIVE]);
    printf("| warmlock ÷ the floor | %.3f | %.3f | |\n", cpu[WARMLOCK] / cpu[TOUCH],
           flt[WARMLOCK] / flt[TOUCH]);
    if (t[NAIVE].failed || t[TOUCH].failed || t[WARMLOCK].failed) {
        fprintf(stderr, "workercost: %ld naive, %ld floor and %ld warmlock workers failed\n",
                t[NAIVE].failed, t[TOUCH].failed, t[WARMLOCK].failed);
        return 1;
    }
    return 0;
}
