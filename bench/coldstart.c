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
 *             pgbouncer-restart  pgbouncer (session mode, the cell's server_login_retry) in
 *                             front of a server stopped before T0 and started at T0; the
 *                             workers and a `warmlock wait` (its own segment) go through it
 * Strategies: incident        2.5 s sleep, SELECT 1 up to 3 x 500 ms apart, then up to 5
 *                             attempts 200 ms -> 3000 ms doubling (background/ incident)
 *             naive           the same without the sleep
 *             flock           processes serialise on flock(2) and run the naive loop in turn
 *             warmlock        a prepared target: wl_pg_target_ensure, wl_pg_target_connect,
 *                             SELECT 1; the library's login budget
 *             warmlock-unpaced, warmlock-paced  the same, login budget UINT32_MAX or
 *                             --login-budget
 *             warmlock-nowatch  the same without the postmaster.pid watch (WL_BACKOFF_NO_WATCH):
 *                             the paced schedule a server on another host gets
 *             warmlock+coordinator  warmlockd started at T0 beside warmlock workers
 *
 * The plan: every cell (scenario, pgbouncer setting, N, strategy) --runs times, in rounds;
 * every N also gets already-up naive, the reference of its physical limit (all ready /
 * (server ready + that)). --goals runs the performance goals' cells instead
 * (coldstart_goals.c).
 *
 * Output: Markdown tables on stdout, one row per cell (medians over its runs), with ratios to
 * the limit, the incident's and naive's; the release lag (first worker's query - the server's
 * ready line) beside the FATAL lines before ready; with --out DIR also CSV files (one row per
 * run, one per worker) and two gnuplot PNGs. A progress line per run on stderr. Exit status:
 * 0; 1 if a run could not be carried out (harness failure, a worker that had to be killed) or
 * if a warmlock worker surfaced an error or had no successful query; 2 usage; 77 PostgreSQL is
 * not available here.
 *
 * Files: coldstart.c the driver (the plan, runs, the server and its log, warmlockd, options),
 * coldstart_clients.c the client strategies (one worker process each), coldstart_cells.c a
 * run's cells and their figures, coldstart_report.c the tables and CSV, coldstart_plot.c the
 * plots, coldstart_goals.c --goals; coldstart.h what they share.
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
#ifndef WL_CLI
#define WL_CLI "warmlock"
#endif

const char *const sc_name[SC_COUNT] = {"clean", "crash-recovery", "already-up", "outage",
                                       "pgbouncer-restart"};
const char *const st_name[ST_COUNT] = {"incident",
                                       "naive",
                                       "naive-again",
                                       "flock",
                                       "warmlock",
                                       "warmlock-unpaced",
                                       "warmlock-paced",
                                       "warmlock-nowatch",
                                       "warmlock+coordinator"};
unsigned g_login_budget = DEFAULT_BUDGET;

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
static pid_t g_waiter; /* pgbouncer-restart: `warmlock wait` */
static char g_shm_live[64], g_wait_shm_live[80];
int g_verbose;

static double ms_of(int64_t ns)
{
    return (double)ns / 1e6;
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

static void kill_waiter(void)
{
    if (g_waiter > 0) {
        kill(g_waiter, SIGKILL);
        waitpid(g_waiter, NULL, 0);
    }
    g_waiter = 0;
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

static void unlink_live(char *name)
{
    if (name[0]) {
        wl_unlink(name);
        name[0] = '\0';
    }
}

/* Every exit path: workers, the daemon, `warmlock wait`, the segments, the server. */
static void cleanup(void)
{
    kill_workers();
    kill_daemon(NULL);
    kill_waiter();
    unlink_live(g_shm_live);
    unlink_live(g_wait_shm_live);
    if (g_have_h) {
        pgh_destroy(&g_h);
        g_have_h = 0;
    }
}

/* One of the project's programs, started at T0: stderr appended to <server dir>/<log>,
 * stdin and stdout /dev/null. */
static pid_t spawn_tool(const char *log, const char *const argv[])
{
    char logpath[400];
    snprintf(logpath, sizeof(logpath), "%s/%s", g_h.dir, log);
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
    execv(argv[0], (char *const *)argv);
    dprintf(2, "coldstart: cannot execute %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

/* The baselines' conninfo: the run's, plus their connect_timeout. */
static void set_conninfo(struct run_cfg *cfg, const char *conninfo)
{
    cfg->conninfo = conninfo;
    snprintf(cfg->base_conn, sizeof(cfg->base_conn), "%s connect_timeout=" CONNECT_TIMEOUT,
             conninfo);
}

/* Put the server in the state the scenario starts from; for warmlock in already-up, warm the
 * slot; for pgbouncer-restart, a fresh pgbouncer with the run's server_login_retry in front
 * of the stopped server (the workers' conninfo becomes pgbouncer's). 0 or -1. */
static int prepare(struct run_cfg *cfg)
{
    if (cfg->sc != SC_BOUNCER)
        pgh_bouncer_stop(&g_h); /* its server connections would show in the log */
    switch (cfg->sc) {
    case SC_CLEAN:
    case SC_OUTAGE:
        if (g_h.running && pgh_stop(&g_h, "fast") < 0)
            return -1;
        return 0;
    case SC_BOUNCER: {
        char settings[64];
        snprintf(settings, sizeof(settings), "server_login_retry = %g\n", cfg->retry_s);
        pgh_bouncer_stop(&g_h);
        if (g_h.running && pgh_stop(&g_h, "fast") < 0)
            return -1;
        if (pgh_bouncer_start_with(&g_h, NULL, settings) < 0)
            return -1;
        set_conninfo(cfg, g_h.bouncer_conninfo);
        return 0;
    }
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
        if (st_warmlock(cfg->st)) {
            struct wl_segment *seg;
            struct wl_result res;
            if (wl_open(cfg->shm, NULL, &seg) < 0) {
                fprintf(stderr, "coldstart: %s\n", wl_last_error());
                return -1;
            }
            int rc = wl_pg_ensure(seg, cfg->conninfo, NULL, &res);
            wl_close(seg);
            if (rc < 0) {
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

static void add_ru(struct rusage *sum, const struct rusage *ru)
{
    sum->ru_utime.tv_sec += ru->ru_utime.tv_sec;
    sum->ru_utime.tv_usec += ru->ru_utime.tv_usec;
    sum->ru_stime.tv_sec += ru->ru_stime.tv_sec;
    sum->ru_stime.tv_usec += ru->ru_stime.tv_usec;
}

static double ru_ms(const struct rusage *ru)
{
    return (double)(ru->ru_utime.tv_sec + ru->ru_stime.tv_sec) * 1000.0 +
           (double)(ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1000.0;
}

/* What the server's log says between T0 and its ready line. */
struct log_scan {
    int fatal_pre;           /* FATAL lines stamped before the ready line */
    int rej57_pre;           /* of them, 57P03 refusals while starting */
    long long first_conn_ns; /* the first "connection received" (CLOCK_REALTIME), or 0 */
    long long conn_after_ns; /* the first "connection received" stamped at or after ready */
};

/* The log's '%m' stamp at the start of a line ("2026-12-01 23:12:44.123 UTC"), as
 * CLOCK_REALTIME ns, or 0. */
static long long line_stamp_ns(const char *line)
{
    struct tm tm;
    int msec;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(line, "%d-%d-%d %d:%d:%d.%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &msec) != 7)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long)timegm(&tm) * 1000000000LL + (long long)msec * 1000000LL;
}

/* Scan the log from `mark` up to the line stamped `ready_ns` (0: to its end). */
static void scan_log(long mark, long long ready_ns, struct log_scan *out)
{
    memset(out, 0, sizeof(*out));
    FILE *f = fopen(g_h.logpath, "re");
    char *line = NULL;
    size_t cap = 0;
    if (!f)
        return;
    if (fseek(f, mark, SEEK_SET) == 0) {
        while (getline(&line, &cap, f) > 0) {
            long long t = line_stamp_ns(line);
            if (ready_ns && t >= ready_ns) {
                /* after the ready line only the first login it received counts */
                if (t && strstr(line, "connection received")) {
                    out->conn_after_ns = t;
                    break;
                }
                continue;
            }
            if (!out->first_conn_ns && t && strstr(line, "connection received"))
                out->first_conn_ns = t;
            if (strstr(line, "FATAL:")) {
                out->fatal_pre++;
                out->rej57_pre += strstr(line, PGH_LOG_STARTING_UP) ||
                                  strstr(line, PGH_LOG_NOT_YET_ACCEPTING) ||
                                  strstr(line, PGH_LOG_NOT_ACCEPTING);
            }
        }
    }
    free(line);
    fclose(f);
}

/* The server's side of a run: its ready time, what its log says, and before the ready line
 * the FATAL lines (for warmlock: its prober's) and their rate over the recovery. */
static void server_side(const struct run_cfg *cfg, struct result *res, long mark, int64_t t0_real)
{
    int64_t ready_real = cfg->sc == SC_UP ? 0 : (int64_t)pgh_log_ready_realtime_ns(&g_h, mark);
    res->server_ready = cfg->sc == SC_UP ? 0.0 : ready_real ? ms_of(ready_real - t0_real) : NAN;
    res->conns = pgh_count_log_since(&g_h, mark, "connection received");
    res->fatal = pgh_count_log_since(&g_h, mark, "FATAL:");
    res->rej57 = pgh_count_log_57P03_since(&g_h, mark);
    if (cfg->sc == SC_UP || !ready_real)
        return;
    struct log_scan ls;
    scan_log(mark, ready_real, &ls);
    res->fatal_pre = ls.fatal_pre;
    /* the log stamps milliseconds: a login in the ready line's millisecond reads 0 */
    res->react_ms = ls.conn_after_ns ? ms_of(ls.conn_after_ns - ready_real) : NAN;
    res->rej57_pre = ls.rej57_pre;
    int64_t from = ls.first_conn_ns > t0_real ? ls.first_conn_ns : t0_real;
    res->recovery_ms = ms_of(ready_real - from);
    /* a recovery shorter than one window counts as one window */
    res->fatal_per25 = res->fatal_pre * FATAL_WINDOW_MS /
                       (res->recovery_ms > FATAL_WINDOW_MS ? res->recovery_ms : FATAL_WINDOW_MS);
}

/* The workers' side: their records into the result's figures. */
static void workers_side(const struct run_cfg *cfg, struct result *res)
{
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
    res->first_ok = nok ? sorted[0] : NAN;
    res->release_lag = cfg->sc == SC_UP ? NAN : res->first_ok - res->server_ready;
    res->lag_p50 = pct(lags, nok, 50);
    res->lag_p99 = pct(lags, nok, 99);
    res->lag_max = nok ? lags[nok - 1] : NAN;
    wlt_sort_double(rels, (size_t)nrel);
    res->rel_p50 = pct(rels, nrel, 50);
    res->rel_max = nrel ? rels[nrel - 1] : NAN;
}

/* Reap what exited: workers (their CPU into ru_sum), warmlockd (early: noted), `warmlock
 * wait` (its return time). Returns how many workers exited. */
static int reap(struct result *res, struct rusage *ru_sum)
{
    int gone = 0;
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
        if (pid == g_waiter) {
            g_waiter = 0;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                res->wait_ms = ms_of(mono_ns() - g_sh->t0_mono_ns);
            else
                note(res, "warmlock wait failed (status %d; see warmlock-wait.log)", st);
            continue;
        }
        for (int i = 0; i < g_nworkers; i++) {
            if (g_workers[i] == pid) {
                g_workers[i] = 0;
                gone++;
                add_ru(ru_sum, &ru);
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                    res->killed++;
                break;
            }
        }
    }
    return gone;
}

/* At the run's bound: kill what is left (workers counted as killed). */
static void kill_at_bound(struct result *res, struct rusage *ru_sum)
{
    for (int i = 0; i < g_nworkers; i++) {
        if (g_workers[i] > 0) {
            kill(g_workers[i], SIGKILL);
            res->killed++;
        }
    }
    for (int i = 0; i < g_nworkers; i++) {
        struct rusage ru;
        if (g_workers[i] > 0 && wait4(g_workers[i], NULL, 0, &ru) > 0)
            add_ru(ru_sum, &ru);
        g_workers[i] = 0;
    }
    if (g_waiter > 0)
        note(res, "warmlock wait killed at the run's bound");
    kill_waiter();
}

static int run_one(struct run_cfg *cfg, struct result *res, int seq)
{
    memset(res, 0, sizeof(*res));
    res->sc = cfg->sc;
    res->st = cfg->st;
    res->n = cfg->n;
    res->retry_s = cfg->retry_s;
    res->all_ready = res->server_ready = res->first_ok = res->release_lag = NAN;
    res->react_ms = NAN;
    res->recovery_ms = res->fatal_per25 = res->wait_ms = NAN;
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
    if (cfg->st == ST_COORD) {
        const char *argv[] = {WL_WARMLOCKD, "--foreground", "--shm", cfg->shm,
                              "--target",   cfg->conninfo,  NULL};
        g_daemon = spawn_tool("warmlockd.log", argv);
    }
    if (cfg->sc == SC_BOUNCER) { /* its own segment: the single prober through pgbouncer */
        snprintf(g_wait_shm_live, sizeof(g_wait_shm_live), "%s.wait", cfg->shm);
        wl_unlink(g_wait_shm_live);
        const char *argv[] = {WL_CLI,      "--shm", g_wait_shm_live, "wait",
                              "--timeout", "60",    cfg->conninfo,   NULL};
        g_waiter = spawn_tool("warmlock-wait.log", argv);
    }
    int start_pending = cfg->sc != SC_UP;
    int64_t start_at = g_sh->t0_mono_ns + (cfg->sc == SC_OUTAGE ? cfg->outage_ms * MS : 0);
    int64_t deadline = g_sh->t0_mono_ns + (int64_t)cfg->timeout_ms * MS;
    int alive = cfg->n, start_failed = 0;

    while ((alive > 0 || start_pending || g_waiter > 0) && !g_stop) {
        int64_t now = mono_ns();
        if (start_pending && now >= start_at) {
            start_pending = 0;
            if (pgh_start(&g_h, 0) < 0)
                start_failed = 1;
            continue;
        }
        if (now >= deadline) {
            kill_at_bound(res, &ru_sum);
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
        alive -= reap(res, &ru_sum);
    }
    if (g_stop) {
        kill_workers(); /* and reap them */
        kill_waiter();
        sigprocmask(SIG_SETMASK, &old, NULL);
        return -1;
    }
    g_nworkers = 0;
    struct rusage ru_d;
    memset(&ru_d, 0, sizeof(ru_d));
    kill_daemon(&ru_d);
    sigprocmask(SIG_SETMASK, &old, NULL);
    res->cpu_ms = ru_ms(&ru_sum) + ru_ms(&ru_d);

    if (start_failed || (g_h.running && pgh_wait_ready(&g_h, 60000) < 0)) {
        res->aborted = 1;
        note(res, "the server did not start");
    }
    server_side(cfg, res, mark, t0_real);
    workers_side(cfg, res);

    if (st_warmlock(cfg->st)) {
        struct wl_segment *seg;
        struct wl_slot_info info[4];
        if (wl_open(cfg->shm, NULL, &seg) == 0) {
            int k = wl_snapshot(seg, info, 4);
            for (int i = 0; i < k && i < 4; i++) {
                res->probes += (long)info[i].attempts;
                res->warmups += (long)info[i].warmups;
            }
            wl_close(seg);
        }
    }
    unlink_live(g_shm_live);
    unlink_live(g_wait_shm_live);
    unlink(cfg->lockpath);
    return 0;
}

/* The micro-benchmarks (bench/micro), their table passed through, their CSV to `csv`. mode:
 * NULL the full set, else micro's option (--quick, --ready-only). Bounded: 5 min, then its
 * whole process group is killed.
 *
 * micro opens its segment "/warmlock-bench.<its pid>" with default options, which give 64 slots
 * (WL_DEFAULT_SLOTS), but its full takeover round uses 100 keys ("tk-0".."tk-99"): from the 65th
 * on, wl_ensure returns -ENOSPC, the would-be leader exits, and micro waits forever for it. Until
 * micro sizes its own segment, the child creates that segment with 256 slots before exec;
 * micro's wl_open then takes the existing segment's slot count. */
static int run_micro(const char *csv, const char *mode)
{
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
        if (mode)
            execl(WL_MICRO, "micro", mode, "--csv", csv, (char *)NULL);
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

/* ---------------------------------------------------------------- the plan */

static struct plan g_plan[MAX_PLAN];
static int g_nplan;

/* Add a cell to the plan (or raise its runs); at the front when `front`. */
static void plan_add(enum scenario sc, enum strategy st, int n, double retry_s, int runs, int front)
{
    for (int i = 0; i < g_nplan; i++) {
        struct plan *p = &g_plan[i];
        if (p->sc == sc && p->st == st && p->n == n && p->retry_s == retry_s) {
            p->runs = runs > p->runs ? runs : p->runs;
            return;
        }
    }
    if (g_nplan >= MAX_PLAN)
        return;
    if (front)
        memmove(&g_plan[1], &g_plan[0], sizeof(g_plan[0]) * (size_t)g_nplan);
    g_plan[front ? 0 : g_nplan] = (struct plan){sc, st, n, retry_s, runs};
    g_nplan++;
}

/* The physical limit's reference: already-up naive at every N of the plan, as many runs as
 * the most at that N, run first in each round. */
static void plan_add_limits(void)
{
    int ns[MAX_PLAN], runs[MAX_PLAN], k = 0;
    for (int i = 0; i < g_nplan; i++) {
        int j = 0;
        while (j < k && ns[j] != g_plan[i].n)
            j++;
        if (j == k) {
            ns[k] = g_plan[i].n;
            runs[k++] = 0;
        }
        runs[j] = g_plan[i].runs > runs[j] ? g_plan[i].runs : runs[j];
    }
    for (int j = k - 1; j >= 0; j--)
        plan_add(SC_UP, ST_NAIVE, ns[j], 0, runs[j], 1);
}

/* ---------------------------------------------------------------- main */

static const char usage_text[] =
    "usage: coldstart [--quick | --smoke | --demo | --goals | --pooler] [OPTIONS]\n"
    "Contended cold starts against a throwaway PostgreSQL: N worker processes start with the\n"
    "server, each needs one query; strategies side by side. Markdown tables on stdout.\n"
    "  (no preset)         the full run: scenarios clean, crash-recovery, already-up, outage;\n"
    "                      strategies incident, naive, flock, warmlock, warmlock+coordinator;\n"
    "                      N in 1,8,64,256; then the micro-benchmarks (about 10 min); the\n"
    "                      lists below narrow or widen it\n"
    "  --quick             clean, crash-recovery, already-up; N 8,64; no micro (< 3 min)\n"
    "  --smoke             crash-recovery, N 8, naive and warmlock (< 10 s; for scripts/test)\n"
    "  --demo              crash-recovery, N 64, incident, naive and warmlock\n"
    "  --goals             the performance goals' table, every figure measured in this run\n"
    "                      (2 min quiet): crash-recovery N=64 x 5 runs (naive, warmlock,\n"
    "                      warmlock-unpaced, warmlock-paced, warmlock-nowatch, naive-again),\n"
    "                      crash-recovery N=256 x 3 runs (warmlock, -unpaced, -paced),\n"
    "                      already-up N=256 x 5 runs (naive, warmlock, naive-again: the\n"
    "                      control), micro's ready path\n"
    "  --pooler            pgbouncer-restart, N 64, naive and warmlock, server_login_retry\n"
    "                      15,1,0.25,0.1 (about 1.5 min)\n"
    "  --scenarios LIST    comma-separated: clean,crash-recovery,already-up,outage,\n"
    "                      pgbouncer-restart\n"
    "  --strategies LIST   comma-separated: incident,naive,naive-again (naive once more: a\n"
    "                      control of the measurement's spread),flock,warmlock,warmlock-unpaced,\n"
    "                      warmlock-nowatch (no postmaster.pid watch: the paced schedule),\n"
    "                      warmlock-paced,warmlock+coordinator\n"
    "  --n LIST            comma-separated worker counts (at most 512)\n"
    "  --runs K            run every cell K times (1; at most 20): tables show medians over\n"
    "                      the runs, the release lag its p50/p99/min/max, the CSV every run\n"
    "  --login-budget K    warmlock-paced's concurrent logins per target, 1..16 (4)\n"
    "  --bouncer-retry LIST  pgbouncer-restart's server_login_retry settings, seconds\n"
    "                      (15,1,0.25,0.1)\n"
    "  --outage-ms MS      how long the server stays down in the outage scenario (8000)\n"
    "  --wl-backoff-max-ms MS  cap of warmlock's leader backoff (default: the library's)\n"
    "  --out DIR           also write DIR/coldstart.csv, coldstart-workers.csv, micro.csv,\n"
    "                      coldstart.gp, coldstart.png, coldstart-lag.gp and coldstart-lag.png\n"
    "  --micro, --no-micro run bench/micro after the cold starts (default: the full run only)\n"
    "  --verbose           the harness's and gnuplot's chatter on stderr\n"
    "Every scenario x N is measured against the same N's already-up naive time in the same\n"
    "run (added to the plan when missing): '÷ limit' = all ready / (server ready + that).\n"
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

/* Comma-separated numbers in [lo, hi] into out (at most max); how many, or -1. */
static int parse_numbers(const char *opt, const char *arg, double lo, double hi, double *out,
                         int max)
{
    char buf[256];
    int k = 0;
    snprintf(buf, sizeof(buf), "%s", arg);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && k < max;
         t = strtok_r(NULL, ",", &save)) {
        char *end;
        double v = strtod(t, &end);
        if (*end || end == t || !(v >= lo && v <= hi)) {
            fprintf(stderr, "coldstart: bad %s '%s': want %g..%g\n", opt, t, lo, hi);
            return -1;
        }
        out[k++] = v;
    }
    if (k == 0)
        fprintf(stderr, "coldstart: %s needs at least one value\n", opt);
    return k ? k : -1;
}

/* One integer option value in [lo, hi], or -1 (said why). */
static long parse_int(const char *opt, const char *arg, long lo, long hi)
{
    double v;
    if (parse_numbers(opt, arg, (double)lo, (double)hi, &v, 1) != 1)
        return -1;
    if (v != (double)(long)v) {
        fprintf(stderr, "coldstart: %s wants a whole number %ld..%ld\n", opt, lo, hi);
        return -1;
    }
    return (long)v;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

static double elapsed_s(int64_t since)
{
    return (double)(mono_ns() - since) / 1e9;
}

/* The options. */
struct opts {
    int scs[16], nsc, sts[16], nst, ns[16], nn;
    double retries[MAX_RETRIES];
    int nretries;
    int runs, outage_ms, micro, wl_backoff_max_ms;
    const char *outdir, *preset;
};

static void preset(struct opts *o, const char *name, const int *scs, int nsc, const int *sts,
                   int nst, const int *ns, int nn)
{
    o->preset = name;
    if (nsc)
        memcpy(o->scs, scs, sizeof(int) * (size_t)(o->nsc = nsc));
    if (nst)
        memcpy(o->sts, sts, sizeof(int) * (size_t)(o->nst = nst));
    if (nn)
        memcpy(o->ns, ns, sizeof(int) * (size_t)(o->nn = nn));
    if (o->micro < 0 && strcmp(name, "goals"))
        o->micro = 0;
}

/* 0, 1 (--help printed), or 2 (usage error, said why). */
static int parse_args(int argc, char **argv, struct opts *o)
{
    static const int crash[] = {SC_CRASH}, quick_sc[] = {SC_CLEAN, SC_CRASH, SC_UP},
                     bouncer[] = {SC_BOUNCER}, smoke_st[] = {ST_NAIVE, ST_WARMLOCK},
                     demo_st[] = {ST_INCIDENT, ST_NAIVE, ST_WARMLOCK}, n8[] = {8}, n64[] = {64},
                     quick_n[] = {8, 64};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 1;
        } else if (!strcmp(a, "--quick")) {
            preset(o, "quick", quick_sc, 3, NULL, 0, quick_n, 2);
        } else if (!strcmp(a, "--smoke")) {
            preset(o, "smoke", crash, 1, smoke_st, 2, n8, 1);
        } else if (!strcmp(a, "--demo")) {
            preset(o, "demo", crash, 1, demo_st, 3, n64, 1);
        } else if (!strcmp(a, "--pooler")) {
            preset(o, "pooler", bouncer, 1, smoke_st, 2, n64, 1);
        } else if (!strcmp(a, "--goals")) {
            preset(o, "goals", NULL, 0, NULL, 0, NULL, 0);
        } else if (!strcmp(a, "--micro")) {
            o->micro = 1;
        } else if (!strcmp(a, "--no-micro")) {
            o->micro = 0;
        } else if (!strcmp(a, "--verbose")) {
            g_verbose = 1;
        } else if (!strcmp(a, "--scenarios") || !strcmp(a, "--strategies") || !strcmp(a, "--n") ||
                   !strcmp(a, "--outage-ms") || !strcmp(a, "--out") ||
                   !strcmp(a, "--wl-backoff-max-ms") || !strcmp(a, "--runs") ||
                   !strcmp(a, "--login-budget") || !strcmp(a, "--bouncer-retry")) {
            if (!val) {
                fprintf(stderr, "coldstart: %s needs a value (try --help)\n", a);
                return 2;
            }
            i++;
            long v = 0;
            double d[16];
            int k = 0;
            if (!strcmp(o->preset, "full") &&
                (!strcmp(a, "--scenarios") || !strcmp(a, "--strategies") || !strcmp(a, "--n")))
                o->preset = "custom";
            if (!strcmp(a, "--scenarios")) {
                if ((o->nsc = parse_list(val, sc_name, SC_COUNT, o->scs)) <= 0)
                    return 2;
            } else if (!strcmp(a, "--strategies")) {
                if ((o->nst = parse_list(val, st_name, ST_COUNT, o->sts)) <= 0)
                    return 2;
            } else if (!strcmp(a, "--n")) {
                if ((k = parse_numbers(a, val, 1, MAX_N, d, 16)) < 0)
                    return 2;
                for (o->nn = 0; o->nn < k; o->nn++) {
                    if (d[o->nn] != (int)d[o->nn]) {
                        fprintf(stderr, "coldstart: --n wants whole numbers\n");
                        return 2;
                    }
                    o->ns[o->nn] = (int)d[o->nn];
                }
            } else if (!strcmp(a, "--bouncer-retry")) {
                if ((o->nretries = parse_numbers(a, val, 0, 60, o->retries, MAX_RETRIES)) < 0)
                    return 2;
            } else if (!strcmp(a, "--outage-ms")) {
                if ((v = parse_int(a, val, 0, 60000)) < 0)
                    return 2;
                o->outage_ms = (int)v;
            } else if (!strcmp(a, "--wl-backoff-max-ms")) {
                if ((v = parse_int(a, val, 1, 60000)) < 0)
                    return 2;
                o->wl_backoff_max_ms = (int)v;
            } else if (!strcmp(a, "--runs")) {
                if ((v = parse_int(a, val, 1, MAX_RUNS)) < 0)
                    return 2;
                o->runs = (int)v;
            } else if (!strcmp(a, "--login-budget")) {
                if ((v = parse_int(a, val, 1, 16)) < 0) /* the library's most */
                    return 2;
                g_login_budget = (unsigned)v;
            } else {
                o->outdir = val;
            }
        } else {
            fprintf(stderr, "coldstart: unknown argument '%s' (try --help)\n", a);
            return 2;
        }
    }
    if (o->micro < 0)
        o->micro = !strcmp(o->preset, "full") || !strcmp(o->preset, "goals");
    qsort(o->ns, (size_t)o->nn, sizeof(int), cmp_int);
    return 0;
}

/* The plan: the goals', or every scenario (and pgbouncer setting) x N x strategy, each
 * `runs` times; then the limit's references. */
static void make_plan(const struct opts *o)
{
    if (!strcmp(o->preset, "goals")) {
        g_nplan = goals_plan(g_plan, MAX_PLAN);
    } else {
        const char *no_bouncer = pgh_bouncer_unavailable();
        for (int a = 0; a < o->nsc; a++) {
            int bouncer = o->scs[a] == SC_BOUNCER;
            if (bouncer && no_bouncer) {
                fprintf(stderr, "coldstart: skipping %s: %s\n", sc_name[SC_BOUNCER], no_bouncer);
                continue;
            }
            for (int r = 0; r < (bouncer ? o->nretries : 1); r++)
                for (int b = 0; b < o->nn; b++)
                    for (int c = 0; c < o->nst; c++)
                        plan_add((enum scenario)o->scs[a], (enum strategy)o->sts[c], o->ns[b],
                                 bouncer ? o->retries[r] : 0, o->runs, 0);
        }
    }
    plan_add_limits();
}

static uint32_t login_budget_of(enum strategy st)
{
    return st == ST_WL_UNPACED ? UINT32_MAX : st == ST_WL_PACED ? g_login_budget : 0;
}

/* Every round of the plan; 1 if some run failed (said why on stderr). */
static int run_plan(const struct opts *o, int64_t t_start)
{
    int total = 0, rounds = 0, failed = 0, seq = 0;
    for (int i = 0; i < g_nplan; i++) {
        total += g_plan[i].runs;
        rounds = g_plan[i].runs > rounds ? g_plan[i].runs : rounds;
    }
    fprintf(stderr, "coldstart: %s run: %d cells, %d runs in %d round(s)\n", o->preset, g_nplan,
            total, rounds);
    for (int round = 0; round < rounds && !g_stop; round++) {
        for (int i = 0; i < g_nplan && !g_stop; i++) {
            const struct plan *p = &g_plan[i];
            if (p->runs <= round)
                continue;
            struct run_cfg cfg;
            char sc[64];
            memset(&cfg, 0, sizeof(cfg));
            cfg.sc = p->sc;
            cfg.st = p->st;
            cfg.n = p->n;
            cfg.retry_s = p->retry_s;
            set_conninfo(&cfg, g_h.conninfo);
            cfg.outage_ms = o->outage_ms;
            cfg.wl_backoff_max_ms = o->wl_backoff_max_ms;
            cfg.login_budget = login_budget_of(p->st);
            cfg.backoff_flags = p->st == ST_WL_NOWATCH ? WL_BACKOFF_NO_WATCH : 0;
            cfg.timeout_ms = 60000 + (cfg.sc == SC_OUTAGE ? o->outage_ms : 0);
            cell_label(sc, sizeof(sc), cfg.sc, cfg.retry_s);
            fprintf(stderr, "coldstart: [%d/%d %5.1fs] %s %s N=%d run %d ...\n", seq + 1, total,
                    elapsed_s(t_start), sc, st_name[cfg.st], cfg.n, round + 1);
            struct result *r = &g_res[g_nres];
            int rc = run_one(&cfg, r, seq++);
            if (g_stop)
                break;
            r->round = round;
            g_nres++;
            char all[32], lag[32];
            fmt_ms(all, sizeof(all), r->all_ready);
            fmt_ms(lag, sizeof(lag), r->release_lag);
            fprintf(stderr,
                    "coldstart: [%d/%d %5.1fs] %s %s N=%d run %d: %d/%d ok, all ready %s ms, "
                    "server ready %.0f ms, release lag %s ms, %d FATAL (%d before ready), %ld "
                    "errors%s%s\n",
                    seq, total, elapsed_s(t_start), sc, st_name[cfg.st], cfg.n, round + 1, r->ok,
                    r->n, all, r->server_ready, lag, r->fatal, r->fatal_pre, r->errors,
                    r->err[0] ? "; e.g. " : "", r->err);
            int wl = st_warmlock(cfg.st);
            if (rc < 0 || r->aborted || r->killed || (wl && (r->errors || r->ok != r->n))) {
                failed = 1;
                fprintf(stderr, "coldstart: FAILED: %s %s N=%d: %s\n", sc, st_name[cfg.st], cfg.n,
                        r->aborted  ? "the run could not be carried out"
                        : r->killed ? "workers had to be killed"
                                    : "warmlock surfaced errors");
            }
        }
    }
    return failed;
}

/* The tables on stdout; with an output directory the CSV and the plots. 0 or -1. */
static int report(const struct opts *o, const char *micro_csv)
{
    int nmax = 0, failed = 0;
    for (int i = 0; i < g_ncells; i++)
        nmax = g_cells[i].n > nmax ? g_cells[i].n : nmax;
    if (!strcmp(o->preset, "goals")) {
        printf("## Goals (one run)\n\n");
        print_goals(stdout, micro_csv);
        printf("\n");
    }
    if (!strcmp(o->preset, "demo")) {
        printf("## Crash-recovery start, %d processes\n\n", nmax);
        print_demo_table(stdout);
    } else {
        printf("## Cold starts (%s run, %d workers max)\n\n", o->preset, nmax);
        print_table(stdout);
        print_headline(stdout, nmax);
        printf("\n### Release after the server's ready line\n\n");
        print_release_table(stdout);
    }
    for (int i = 0; i < g_ncells; i++) {
        if (g_cells[i].sc == SC_BOUNCER) {
            printf("\n### pgbouncer in front of a restarting server\n\n");
            print_bouncer_table(stdout);
            break;
        }
    }
    fflush(stdout);
    if (o->outdir) {
        int ns[MAX_PLAN], nn = 0;
        for (int i = 0; i < g_ncells; i++) {
            int j = 0;
            while (j < nn && ns[j] != g_cells[i].n)
                j++;
            if (j == nn)
                ns[nn++] = g_cells[i].n;
        }
        qsort(ns, (size_t)nn, sizeof(int), cmp_int);
        if (write_csv(o->outdir) < 0)
            failed = -1;
        else if (write_plot(o->outdir, ns, nn) < 0 || write_lag_plot(o->outdir) < 0)
            fprintf(stderr, "coldstart: no plot (gnuplot missing or failed)\n");
    }
    return failed;
}

int main(int argc, char **argv)
{
    struct opts o = {
        .scs = {SC_CLEAN, SC_CRASH, SC_UP, SC_OUTAGE},
        .nsc = 4,
        .sts = {ST_INCIDENT, ST_NAIVE, ST_FLOCK, ST_WARMLOCK, ST_COORD},
        .nst = 5,
        .ns = {1, 8, 64, 256},
        .nn = 4,
        .retries = {15, 1, 0.25, 0.1},
        .nretries = 4,
        .runs = 1,
        .outage_ms = 8000,
        .micro = -1,
        .preset = "full",
    };
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 1 ? 0 : 2;

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

    make_plan(&o);
    int total = 0;
    for (int i = 0; i < g_nplan; i++)
        total += g_plan[i].runs;
    g_sh = wlt_shared(sizeof(*g_sh));
    g_res = calloc((size_t)(total ? total : 1), sizeof(*g_res));
    if (!g_res) {
        perror("coldstart: calloc");
        return 1;
    }

    int64_t t_start = mono_ns();
    if (!g_verbose)
        setenv("WL_PG_TRACE", "0", 1);
    if (pgh_init(&g_h, "trust", NULL, "max_connections = 400\nlog_timezone = 'UTC'\n") < 0) {
        fprintf(stderr, "coldstart: cannot set up PostgreSQL\n");
        return 1;
    }
    g_have_h = 1;
    int failed = run_plan(&o, t_start);
    if (g_stop) {
        fprintf(stderr, "coldstart: interrupted (signal %d); cleaning up\n", (int)g_stop);
        cleanup();
        return 130;
    }
    pgh_destroy(&g_h);
    g_have_h = 0;
    cells_build();

    /* micro before the report: the goals table reads its CSV */
    char micro_csv[600] = "";
    if (o.micro && !g_stop) {
        int goals = !strcmp(o.preset, "goals");
        if (o.outdir) {
            mkdir(o.outdir, 0755);
            snprintf(micro_csv, sizeof(micro_csv), "%s/micro.csv", o.outdir);
        } else {
            snprintf(micro_csv, sizeof(micro_csv), "/tmp/coldstart-micro.%d.csv", (int)getpid());
        }
        fprintf(stderr, "coldstart: [%5.1fs] micro-benchmarks ...\n", elapsed_s(t_start));
        printf("## Micro-benchmarks\n\n");
        if (run_micro(micro_csv, goals                       ? "--ready-only"
                                 : !strcmp(o.preset, "full") ? NULL
                                                             : "--quick") < 0)
            failed = 1;
        printf("\n");
    }
    if (o.outdir)
        mkdir(o.outdir, 0755);
    if (report(&o, micro_csv[0] ? micro_csv : NULL) < 0)
        failed = 1;
    if (micro_csv[0] && !o.outdir)
        unlink(micro_csv);
    fprintf(stderr, "coldstart: done in %.1f s%s\n", elapsed_s(t_start),
            failed ? "; some runs FAILED (see above)" : "");
    return failed ? 1 : 0;
}
