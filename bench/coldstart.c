/*
 * coldstart: contended cold starts against a real PostgreSQL, strategies side by side.
 *
 * For each scenario x strategy x N the driver forks N worker processes, holds them at a
 * barrier, then at T0 releases them and launches the server start (pgh_start(h, 0)). Each
 * worker must end with one real successful query of its own (connect + SELECT 1), or an
 * error surfaced. Measured per run: each worker's time from T0 to its first successful query,
 * the server's own ready time (its log line "database system is ready to accept connections")
 * and the workers' lag behind it, the connections, FATAL lines and 57P03 rejections the server
 * logged, the errors surfaced to workers, and the workers' CPU time (wait4 rusage).
 *
 * Scenarios:  clean           the server starts from a clean shutdown at T0
 *             crash-recovery  pgh_crash (60 MB of WAL, stop -m immediate), start at T0:
 *                             the server answers 57P03 while it replays
 *             already-up      the server is up before T0 (warmlock: slot READY, the ready path)
 *             outage          the server is down at T0 and starts OUTAGE ms later (8000)
 * Strategies: incident        2.5 s sleep, SELECT 1 up to 3 x 500 ms apart, then up to 5
 *                             attempts 200 ms -> 3000 ms doubling (background/ incident)
 *             naive           the same without the sleep
 *             flock           processes serialise on flock(2) and run the naive loop in turn
 *             warmlock        wl_pg_connect (single-flight warm-up), then SELECT 1
 *             warmlock+coordinator  warmlockd started at T0 beside warmlock workers
 *
 * Output: a Markdown table on stdout, with each row's time-to-all-ready as a ratio of the
 * incident's and naive's in the same run; with --out DIR also CSV files and a gnuplot PNG.
 * A progress line per run on stderr. Exit status: 0; 1 if a run could not be carried out
 * (harness failure, a worker that had to be killed) or if a warmlock worker surfaced an
 * error or had no successful query; 2 usage; 77 PostgreSQL is not available here.
 *
 * Files: coldstart.c the driver (runs, the server, warmlockd, options), coldstart_clients.c
 * the client strategies (one worker process each), coldstart_report.c the table, CSV and
 * plot; coldstart.h what they share.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "warmlock.h"
#include "warmlock/pg.h"

#include "pgharness.h"
#include "coldstart.h"
#include "proc.h"

#ifndef WL_WARMLOCKD
#define WL_WARMLOCKD "warmlockd"
#endif
#ifndef WL_MICRO
#define WL_MICRO "micro"
#endif

const char *const sc_name[SC_COUNT] = {"clean", "crash-recovery", "already-up", "outage"};
const char *const st_name[ST_COUNT] = {"incident", "naive", "flock", "warmlock",
                                       "warmlock+coordinator"};

struct shared *g_sh;

volatile sig_atomic_t g_stop; /* SIGINT/SIGTERM/SIGHUP: clean up and leave */

static void on_stop(int sig)
{
    g_stop = sig;
}

/* ---------------------------------------------------------------- one run */

static struct pgh g_h;
static int g_have_h;
static pid_t g_workers[MAX_N];
static int g_nworkers;
static pid_t g_daemon;
static char g_shm_live[64];
int g_verbose;

static double ms_of(int64_t ns)
{
    return (double)ns / 1e6;
}

/* Nearest-rank percentile of a sorted array. */
static double pct(const double *v, int n, double p)
{
    if (n <= 0)
        return NAN;
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

static void kill_daemon(struct rusage *ru)
{
    if (g_daemon <= 0)
        return;
    int st;
    kill(g_daemon, SIGTERM);
    for (int i = 0; i < 400; i++) { /* 2 s */
        if (wait4(g_daemon, &st, WNOHANG, ru) == g_daemon) {
            g_daemon = 0;
            return;
        }
        sleep_ms(5);
    }
    kill(g_daemon, SIGKILL);
    wait4(g_daemon, &st, 0, ru);
    g_daemon = 0;
}

static void kill_workers(void)
{
    for (int i = 0; i < g_nworkers; i++) {
        if (g_workers[i] > 0)
            kill(g_workers[i], SIGKILL);
    }
    for (int i = 0; i < g_nworkers; i++) {
        if (g_workers[i] > 0)
            waitpid(g_workers[i], NULL, 0);
        g_workers[i] = 0;
    }
    g_nworkers = 0;
}

/* Every exit path: workers, the daemon, the segment, the server. */
static void cleanup(void)
{
    kill_workers();
    kill_daemon(NULL);
    if (g_shm_live[0]) {
        wl_unlink(g_shm_live);
        g_shm_live[0] = '\0';
    }
    if (g_have_h) {
        pgh_destroy(&g_h);
        g_have_h = 0;
    }
}

static pid_t spawn_daemon(const struct run_cfg *cfg)
{
    char logpath[400];
    snprintf(logpath, sizeof(logpath), "%s/warmlockd.log", g_h.dir);
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    child_defaults();
    int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
    int nul = open("/dev/null", O_RDWR);
    if (nul >= 0) {
        dup2(nul, 0);
        dup2(nul, 1);
    }
    execl(WL_WARMLOCKD, "warmlockd", "--foreground", "--shm", cfg->shm, "--target",
          cfg->conninfo, (char *)NULL);
    dprintf(2, "coldstart: cannot execute %s: %s\n", WL_WARMLOCKD, strerror(errno));
    _exit(127);
}

/* Put the server in the state the scenario starts from; for warmlock in already-up, warm the
 * slot. 0 or -1. */
static int prepare(const struct run_cfg *cfg)
{
    switch (cfg->sc) {
    case SC_CLEAN:
    case SC_OUTAGE:
        if (g_h.running && pgh_stop(&g_h, "fast") < 0)
            return -1;
        return 0;
    case SC_CRASH:
        if (!g_h.running && pgh_start(&g_h, 1) < 0)
            return -1;
        if (pgh_wait_ready(&g_h, 60000) < 0)
            return -1;
        return pgh_crash(&g_h);
    case SC_UP:
        if (!g_h.running && pgh_start(&g_h, 1) < 0)
            return -1;
        if (pgh_wait_ready(&g_h, 60000) < 0)
            return -1;
        if (cfg->st == ST_WARMLOCK || cfg->st == ST_COORD) {
            struct wl_segment *seg;
            struct wl_result res;
            if (wl_open(cfg->shm, NULL, &seg) < 0) {
                fprintf(stderr, "coldstart: %s\n", wl_last_error());
                return -1;
            }
            if (wl_pg_ensure(seg, cfg->conninfo, NULL, &res) < 0) {
                fprintf(stderr, "coldstart: pre-warming the slot: %s\n", res.error);
                return -1;
            }
        }
        return 0;
    default: return -1;
    }
}

static void note(struct result *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct result *res, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->err, sizeof(res->err), fmt, ap);
    va_end(ap);
}

static int run_one(struct run_cfg *cfg, struct result *res, int seq)
{
    memset(res, 0, sizeof(*res));
    res->sc = cfg->sc;
    res->st = cfg->st;
    res->n = cfg->n;
    res->all_ready = res->server_ready = NAN;
    snprintf(cfg->shm, sizeof(cfg->shm), "/wlbench.%d.%d", (int)getpid(), seq);
    snprintf(cfg->lockpath, sizeof(cfg->lockpath), "%s/flock.%d", g_h.dir, seq);
    snprintf(g_shm_live, sizeof(g_shm_live), "%s", cfg->shm);
    wl_unlink(cfg->shm);

    if (prepare(cfg) < 0) {
        res->aborted = 1;
        note(res, "could not prepare the server for %s", sc_name[cfg->sc]);
        return -1;
    }

    memset(g_sh->w, 0, sizeof(g_sh->w[0]) * (size_t)cfg->n);
    uint32_t gen = atomic_load(&g_sh->go);
    sigset_t chld, old;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &old);
    fflush(NULL);
    for (int i = 0; i < cfg->n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "coldstart: fork: %s\n", strerror(errno));
            kill_workers();
            sigprocmask(SIG_SETMASK, &old, NULL);
            res->aborted = 1;
            note(res, "fork failed");
            return -1;
        }
        if (pid == 0)
            worker_main(cfg, i, gen);
        g_workers[g_nworkers++] = pid;
    }
    sleep_ms(cfg->n / 4 + 20); /* let them reach the barrier */

    long mark = pgh_log_mark(&g_h);
    struct rusage ru_sum;
    memset(&ru_sum, 0, sizeof(ru_sum));

    /* T0: release the workers and launch the server start. */
    int64_t t0_real = (int64_t)wlt_realtime_ns();
    g_sh->t0_mono_ns = mono_ns();
    atomic_fetch_add_explicit(&g_sh->go, 1, memory_order_release);
    wlt_wake(&g_sh->go);
    if (cfg->st == ST_COORD)
        g_daemon = spawn_daemon(cfg);
    int start_pending = cfg->sc != SC_UP;
    int64_t start_at = g_sh->t0_mono_ns + (cfg->sc == SC_OUTAGE ? cfg->outage_ms * MS : 0);
    int64_t deadline = g_sh->t0_mono_ns + (int64_t)cfg->timeout_ms * MS;
    int alive = cfg->n, start_failed = 0;

    while ((alive > 0 || start_pending) && !g_stop) {
        int64_t now = mono_ns();
        if (start_pending && now >= start_at) {
            start_pending = 0;
            if (pgh_start(&g_h, 0) < 0)
                start_failed = 1;
            continue;
        }
        if (now >= deadline) {
            for (int i = 0; i < g_nworkers; i++) {
                if (g_workers[i] > 0) {
                    kill(g_workers[i], SIGKILL);
                    res->killed++;
                }
            }
            for (int i = 0; i < g_nworkers; i++) {
                struct rusage ru;
                if (g_workers[i] > 0 && wait4(g_workers[i], NULL, 0, &ru) > 0) {
                    ru_sum.ru_utime.tv_sec += ru.ru_utime.tv_sec;
                    ru_sum.ru_utime.tv_usec += ru.ru_utime.tv_usec;
                    ru_sum.ru_stime.tv_sec += ru.ru_stime.tv_sec;
                    ru_sum.ru_stime.tv_usec += ru.ru_stime.tv_usec;
                }
                g_workers[i] = 0;
            }
            alive = 0;
            break;
        }
        int64_t wake = deadline;
        if (start_pending && start_at < wake)
            wake = start_at;
        int64_t wait_ns = wake - now;
        if (wait_ns > 100 * MS)
            wait_ns = 100 * MS;
        struct timespec ts = {(time_t)(wait_ns / 1000000000LL), (long)(wait_ns % 1000000000LL)};
        sigtimedwait(&chld, NULL, &ts);
        for (;;) {
            int st;
            struct rusage ru;
            pid_t pid = wait4(-1, &st, WNOHANG, &ru);
            if (pid <= 0)
                break;
            if (pid == g_daemon) { /* the daemon died early */
                g_daemon = 0;
                note(res, "warmlockd exited early (status %d)", st);
                continue;
            }
            for (int i = 0; i < g_nworkers; i++) {
                if (g_workers[i] == pid) {
                    g_workers[i] = 0;
                    alive--;
                    ru_sum.ru_utime.tv_sec += ru.ru_utime.tv_sec;
                    ru_sum.ru_utime.tv_usec += ru.ru_utime.tv_usec;
                    ru_sum.ru_stime.tv_sec += ru.ru_stime.tv_sec;
                    ru_sum.ru_stime.tv_usec += ru.ru_stime.tv_usec;
                    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                        res->killed++;
                    break;
                }
            }
        }
    }
    if (g_stop) {
        kill_workers(); /* and reap them */
        sigprocmask(SIG_SETMASK, &old, NULL);
        return -1;
    }
    g_nworkers = 0;
    struct rusage ru_d;
    memset(&ru_d, 0, sizeof(ru_d));
    kill_daemon(&ru_d);
    sigprocmask(SIG_SETMASK, &old, NULL);
    res->cpu_ms = (double)(ru_sum.ru_utime.tv_sec + ru_sum.ru_stime.tv_sec + ru_d.ru_utime.tv_sec +
                           ru_d.ru_stime.tv_sec) * 1000.0 +
                  (double)(ru_sum.ru_utime.tv_usec + ru_sum.ru_stime.tv_usec +
                           ru_d.ru_utime.tv_usec + ru_d.ru_stime.tv_usec) / 1000.0;

    if (start_failed || (g_h.running && pgh_wait_ready(&g_h, 60000) < 0)) {
        res->aborted = 1;
        note(res, "the server did not start");
    }

    /* The server's side. */
    int64_t ready_real = cfg->sc == SC_UP ? 0 : (int64_t)pgh_log_ready_realtime_ns(&g_h, mark);
    res->server_ready = cfg->sc == SC_UP ? 0.0
                        : ready_real  ? ms_of(ready_real - t0_real)
                                      : NAN;
    res->conns = pgh_count_log_since(&g_h, mark, "connection received");
    res->fatal = pgh_count_log_since(&g_h, mark, "FATAL:");
    res->rej57 = pgh_count_log_57P03_since(&g_h, mark);

    /* The workers' side. */
    double sorted[MAX_N], lags[MAX_N], rels[MAX_N];
    int nok = 0, nrel = 0;
    double base = isnan(res->server_ready) || res->server_ready < 0 ? 0 : res->server_ready;
    for (int i = 0; i < cfg->n; i++) {
        const struct worker_rec *w = &g_sh->w[i];
        res->attempts += w->attempts;
        res->errors += w->errors;
        res->leaders += w->leader;
        res->w_attempts[i] = w->attempts;
        res->w_errors[i] = w->errors;
        res->rel_ms[i] = w->done && w->t_rel_ns >= 0 ? ms_of(w->t_rel_ns) : NAN;
        if (!isnan(res->rel_ms[i]))
            rels[nrel++] = res->rel_ms[i];
        if (w->done && w->ok) {
            res->t_ms[i] = ms_of(w->t_ok_ns);
            res->lag_ms[i] = res->t_ms[i] - base;
            sorted[nok] = res->t_ms[i];
            lags[nok++] = res->lag_ms[i];
        } else {
            res->t_ms[i] = res->lag_ms[i] = NAN;
            if (!w->done)
                res->errors++; /* killed before it could say anything */
            if (!res->err[0])
                note(res, "%s", w->done ? w->err : "killed at the run's bound");
        }
    }
    res->ok = nok;
    wlt_sort_double(sorted, (size_t)nok);
    wlt_sort_double(lags, (size_t)nok);
    res->p50 = pct(sorted, nok, 50);
    res->p99 = pct(sorted, nok, 99);
    res->max = nok ? sorted[nok - 1] : NAN;
    res->all_ready = nok == cfg->n ? res->max : NAN;
    res->lag_p50 = pct(lags, nok, 50);
    res->lag_p99 = pct(lags, nok, 99);
    res->lag_max = nok ? lags[nok - 1] : NAN;
    wlt_sort_double(rels, (size_t)nrel);
    res->rel_p50 = pct(rels, nrel, 50);
    res->rel_max = nrel ? rels[nrel - 1] : NAN;

    if (cfg->st == ST_WARMLOCK || cfg->st == ST_COORD) {
        struct wl_segment *seg;
        struct wl_slot_info info[4];
        if (wl_open(cfg->shm, NULL, &seg) == 0) {
            int k = wl_snapshot(seg, info, 4);
            for (int i = 0; i < k && i < 4; i++) {
                res->probes += (long)info[i].attempts;
                res->warmups += (long)info[i].warmups;
            }
        }
    }
    wl_unlink(cfg->shm);
    g_shm_live[0] = '\0';
    unlink(cfg->lockpath);
    return 0;
}

/* The micro-benchmarks (bench/micro), their table passed through. Bounded: 5 min, then its
 * whole process group is killed.
 *
 * micro opens its segment "/warmlock-bench.<its pid>" with default options, which give 64 slots
 * (WL_DEFAULT_SLOTS), but its full takeover round uses 100 keys ("tk-0".."tk-99"): from the 65th
 * on, wl_ensure returns -ENOSPC, the would-be leader exits, and micro waits forever for it. Until
 * micro sizes its own segment, the child creates that segment with 256 slots before exec;
 * micro's wl_open then takes the existing segment's slot count. */
static int run_micro(const char *outdir, int quick)
{
    char csv[600];
    if (outdir)
        snprintf(csv, sizeof(csv), "%s/micro.csv", outdir);
    else
        snprintf(csv, sizeof(csv), "/dev/null");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        char name[64];
        struct wl_segment *seg;
        struct wl_open_opts o = {.mode = 0600, .slots = 256};
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        snprintf(name, sizeof(name), "/warmlock-bench.%d", (int)getpid());
        wl_unlink(name);
        if (wl_open(name, &o, &seg) < 0)
            fprintf(stderr, "coldstart: cannot pre-create %s: %s\n", name, wl_last_error());
        if (quick)
            execl(WL_MICRO, "micro", "--quick", "--csv", csv, (char *)NULL);
        else
            execl(WL_MICRO, "micro", "--csv", csv, (char *)NULL);
        fprintf(stderr, "coldstart: cannot execute %s: %s\n", WL_MICRO, strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        return -1;
    setpgid(pid, pid);
    char name[64];
    snprintf(name, sizeof(name), "/warmlock-bench.%d", (int)pid);
    int64_t end = mono_ns() + 300 * 1000 * MS;
    int st = 0, rc = -1;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid) {
            rc = WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
            break;
        }
        if (g_stop || mono_ns() > end) {
            fprintf(stderr, "coldstart: micro %s; killing it\n",
                    g_stop ? "interrupted" : "took over 5 min");
            break;
        }
        sleep_ms(50);
    }
    kill(-pid, SIGKILL); /* its forked children too (they share its process group) */
    if (rc < 0)
        waitpid(pid, &st, 0);
    wl_unlink(name);
    return rc;
}

/* ---------------------------------------------------------------- main */

static const char usage_text[] =
    "usage: coldstart [--quick | --smoke | --demo] [OPTIONS]\n"
    "Contended cold starts against a throwaway PostgreSQL: N worker processes start with the\n"
    "server, each needs one query; strategies side by side. Markdown table on stdout.\n"
    "  (no preset)         the full run: every scenario, strategy and N in 1,8,64,256, then\n"
    "                      the micro-benchmarks (about 10 min); lists below narrow it\n"
    "  --quick             clean, crash-recovery, already-up; N 8,64; no micro (< 3 min)\n"
    "  --smoke             crash-recovery, N 8, naive and warmlock (< 30 s; for scripts/test)\n"
    "  --demo              crash-recovery, N 64, incident, naive and warmlock\n"
    "  --scenarios LIST    comma-separated: clean,crash-recovery,already-up,outage\n"
    "  --strategies LIST   comma-separated: incident,naive,flock,warmlock,warmlock+coordinator\n"
    "  --n LIST            comma-separated worker counts (at most 512)\n"
    "  --outage-ms MS      how long the server stays down in the outage scenario (8000)\n"
    "  --wl-backoff-max-ms MS  cap of warmlock's leader backoff (default: the library's, 250)\n"
    "  --out DIR           also write DIR/coldstart.csv, coldstart-workers.csv, micro.csv,\n"
    "                      coldstart.gp and coldstart.png (gnuplot)\n"
    "  --micro, --no-micro run bench/micro after the cold starts (default: the full run only)\n"
    "  --verbose           the harness's and gnuplot's chatter on stderr\n"
    "Exit: 0; 1 a run could not be carried out, or a warmlock worker surfaced an error;\n"
    "2 usage; 77 PostgreSQL unavailable.\n";

static int parse_list(const char *arg, const char *const *names, int count, int *out)
{
    char buf[512];
    int k = 0;
    snprintf(buf, sizeof(buf), "%s", arg);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int found = -1;
        for (int i = 0; i < count; i++) {
            if (!strcmp(t, names[i]) || (i == SC_CRASH && names == sc_name && !strcmp(t, "crash")))
                found = i;
        }
        if (found < 0) {
            fprintf(stderr, "coldstart: unknown name '%s' (try --help)\n", t);
            return -1;
        }
        out[k++] = found;
        if (k >= 16)
            break;
    }
    return k;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static double elapsed_s(int64_t since)
{
    return (double)(mono_ns() - since) / 1e9;
}

int main(int argc, char **argv)
{
    int scs[16] = {SC_CLEAN, SC_CRASH, SC_UP, SC_OUTAGE}, nsc = 4;
    int sts[16] = {ST_INCIDENT, ST_NAIVE, ST_FLOCK, ST_WARMLOCK, ST_COORD}, nst = 5;
    int ns[16] = {1, 8, 64, 256}, nn = 4;
    int outage_ms = 8000, micro = -1, quick_micro = 0, wl_backoff_max_ms = 0;
    const char *outdir = NULL, *preset = "full";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--quick")) {
            preset = "quick";
            scs[0] = SC_CLEAN, scs[1] = SC_CRASH, scs[2] = SC_UP, nsc = 3;
            ns[0] = 8, ns[1] = 64, nn = 2;
            micro = micro < 0 ? 0 : micro;
        } else if (!strcmp(a, "--smoke")) {
            preset = "smoke";
            scs[0] = SC_CRASH, nsc = 1;
            sts[0] = ST_NAIVE, sts[1] = ST_WARMLOCK, nst = 2;
            ns[0] = 8, nn = 1;
            micro = micro < 0 ? 0 : micro;
        } else if (!strcmp(a, "--demo")) {
            preset = "demo";
            scs[0] = SC_CRASH, nsc = 1;
            sts[0] = ST_INCIDENT, sts[1] = ST_NAIVE, sts[2] = ST_WARMLOCK, nst = 3;
            ns[0] = 64, nn = 1;
            micro = micro < 0 ? 0 : micro;
        } else if (!strcmp(a, "--micro")) {
            micro = 1;
        } else if (!strcmp(a, "--no-micro")) {
            micro = 0;
        } else if (!strcmp(a, "--verbose")) {
            g_verbose = 1;
        } else if (!strcmp(a, "--scenarios") || !strcmp(a, "--strategies") ||
                   !strcmp(a, "--n") || !strcmp(a, "--outage-ms") || !strcmp(a, "--out") ||
                   !strcmp(a, "--wl-backoff-max-ms")) {
            if (!val) {
                fprintf(stderr, "coldstart: %s needs a value (try --help)\n", a);
                return 2;
            }
            i++;
            if (!strcmp(preset, "full") && strcmp(a, "--out") && strcmp(a, "--outage-ms") &&
                strcmp(a, "--wl-backoff-max-ms"))
                preset = "custom";
            if (!strcmp(a, "--scenarios")) {
                if ((nsc = parse_list(val, sc_name, SC_COUNT, scs)) <= 0)
                    return 2;
            } else if (!strcmp(a, "--strategies")) {
                if ((nst = parse_list(val, st_name, ST_COUNT, sts)) <= 0)
                    return 2;
            } else if (!strcmp(a, "--n")) {
                char buf[256];
                nn = 0;
                snprintf(buf, sizeof(buf), "%s", val);
                for (char *s = NULL, *t = strtok_r(buf, ",", &s); t && nn < 16;
                     t = strtok_r(NULL, ",", &s)) {
                    char *end;
                    long v = strtol(t, &end, 10);
                    if (*end || v < 1 || v > MAX_N) {
                        fprintf(stderr, "coldstart: bad N '%s': want 1..%d\n", t, MAX_N);
                        return 2;
                    }
                    ns[nn++] = (int)v;
                }
                if (nn == 0) {
                    fprintf(stderr, "coldstart: --n needs at least one count\n");
                    return 2;
                }
            } else if (!strcmp(a, "--outage-ms")) {
                char *end;
                long v = strtol(val, &end, 10);
                if (*end || v < 0 || v > 60000) {
                    fprintf(stderr, "coldstart: bad --outage-ms '%s': want 0..60000\n", val);
                    return 2;
                }
                outage_ms = (int)v;
            } else if (!strcmp(a, "--wl-backoff-max-ms")) {
                char *end;
                long v = strtol(val, &end, 10);
                if (*end || v < 1 || v > 60000) {
                    fprintf(stderr, "coldstart: bad --wl-backoff-max-ms '%s': want 1..60000\n",
                            val);
                    return 2;
                }
                wl_backoff_max_ms = (int)v;
            } else {
                outdir = val;
            }
        } else {
            fprintf(stderr, "coldstart: unknown argument '%s' (try --help)\n", a);
            return 2;
        }
    }
    if (micro < 0)
        micro = !strcmp(preset, "full");
    quick_micro = strcmp(preset, "full") != 0;
    qsort(ns, (size_t)nn, sizeof(int), cmp_int);

    const char *why = pgh_unavailable();
    if (why) {
        fprintf(stderr, "coldstart: skipped: PostgreSQL unavailable: %s\n", why);
        return 77;
    }
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(cleanup);

    g_sh = wlt_shared(sizeof(*g_sh));
    int total = nsc * nst * nn;
    g_res = calloc((size_t)total, sizeof(*g_res));
    if (!g_res) {
        perror("coldstart: calloc");
        return 1;
    }

    int64_t t_start = mono_ns();
    fprintf(stderr, "coldstart: %s run: %d scenario(s) x %d strateg%s x %d N = %d runs\n", preset,
            nsc, nst, nst == 1 ? "y" : "ies", nn, total);
    if (!g_verbose)
        setenv("WL_PG_TRACE", "0", 1);
    if (pgh_init(&g_h, "trust", NULL,
                 "max_connections = 400\nlog_timezone = 'UTC'\n") < 0) {
        fprintf(stderr, "coldstart: cannot set up PostgreSQL\n");
        return 1;
    }
    g_have_h = 1;

    int failed = 0, seq = 0;
    for (int a = 0; a < nsc && !g_stop; a++) {
        for (int b = 0; b < nn && !g_stop; b++) {
            for (int c = 0; c < nst && !g_stop; c++) {
                struct run_cfg cfg;
                memset(&cfg, 0, sizeof(cfg));
                cfg.sc = (enum scenario)scs[a];
                cfg.st = (enum strategy)sts[c];
                cfg.n = ns[b];
                cfg.conninfo = g_h.conninfo;
                snprintf(cfg.base_conn, sizeof(cfg.base_conn), "%s connect_timeout=" CONNECT_TIMEOUT,
                         g_h.conninfo);
                cfg.outage_ms = outage_ms;
                cfg.wl_backoff_max_ms = wl_backoff_max_ms;
                cfg.timeout_ms = 60000 + (cfg.sc == SC_OUTAGE ? outage_ms : 0);
                fprintf(stderr, "coldstart: [%d/%d %5.1fs] %s %s N=%d ...\n", seq + 1, total,
                        elapsed_s(t_start), sc_name[cfg.sc], st_name[cfg.st], cfg.n);
                struct result *r = &g_res[g_nres];
                int rc = run_one(&cfg, r, seq++);
                if (g_stop)
                    break;
                g_nres++;
                char all[32];
                fmt_ms(all, sizeof(all), r->all_ready);
                fprintf(stderr,
                        "coldstart: [%d/%d %5.1fs] %s %s N=%d: %d/%d ok, all ready %s ms, server "
                        "ready %.0f ms, %d FATAL, %ld errors%s%s\n",
                        seq, total, elapsed_s(t_start), sc_name[cfg.sc], st_name[cfg.st], cfg.n,
                        r->ok, r->n, all, r->server_ready, r->fatal, r->errors,
                        r->err[0] ? "; e.g. " : "", r->err);
                int wl = cfg.st == ST_WARMLOCK || cfg.st == ST_COORD;
                if (rc < 0 || r->aborted || r->killed || (wl && (r->errors || r->ok != r->n))) {
                    failed = 1;
                    fprintf(stderr, "coldstart: FAILED: %s %s N=%d: %s\n", sc_name[cfg.sc],
                            st_name[cfg.st], cfg.n,
                            r->aborted ? "the run could not be carried out"
                            : r->killed ? "workers had to be killed"
                                        : "warmlock surfaced errors");
                }
            }
        }
    }
    if (g_stop) {
        fprintf(stderr, "coldstart: interrupted (signal %d); cleaning up\n", (int)g_stop);
        cleanup();
        return 130;
    }
    pgh_destroy(&g_h);
    g_have_h = 0;

    printf("## Cold starts (%s run, %d workers max)\n\n", preset, ns[nn - 1]);
    print_table(stdout);
    print_headline(stdout, ns[nn - 1]);
    fflush(stdout);
    if (outdir) {
        mkdir(outdir, 0755);
        if (write_csv(outdir) < 0)
            failed = 1;
        else if (write_plot(outdir, ns, nn) < 0)
            fprintf(stderr, "coldstart: no plot (gnuplot missing or failed)\n");
    }
    if (micro && !g_stop) {
        fprintf(stderr, "coldstart: [%5.1fs] micro-benchmarks ...\n", elapsed_s(t_start));
        printf("\n## Micro-benchmarks\n\n");
        if (run_micro(outdir, quick_micro) < 0)
            failed = 1;
    }
    fprintf(stderr, "coldstart: done in %.1f s%s\n", elapsed_s(t_start),
            failed ? "; some runs FAILED (see above)" : "");
    return failed ? 1 : 0;
}
