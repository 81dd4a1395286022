/* The contended cold-start benchmark's shared parts: the run's configuration, the records
 * the workers write, one run's result, and the pieces the driver (coldstart.c), the client
 * strategies (coldstart_clients.c) and the report (coldstart_report.c) share. */
#ifndef WL_BENCH_COLDSTART_H
#define WL_BENCH_COLDSTART_H

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include "proc.h"

#define MAX_N           512
#define MS              1000000LL
#define WARMUP_SLEEP_MS 2500 /* the incident's fixed warm-up */
#define VERIFY_TRIES    3    /* the incident's verification: SELECT 1 up to 3 times ... */
#define VERIFY_GAP_MS   500  /* ... 500 ms apart */
#define RETRY_TRIES     5    /* the incident's retry wrapper: maxRetries = 5 attempts ... */
#define RETRY_INIT_MS   200  /* ... initialDelayMs */
#define RETRY_MAX_MS    3000 /* ... maxDelayMs */
#define CONNECT_TIMEOUT "5"  /* libpq connect_timeout of the baselines' attempts, seconds */
#define WL_TIMEOUT_MS   30000 /* warmlock workers' whole-call deadline (the default) */
#define WL_ATTEMPT_MS   5000  /* warmlock's per-attempt timeout: the baselines' connect_timeout */

#define MAX_RUNS        20   /* --runs */
#define MAX_PLAN        512  /* cells in one run */
#define MAX_RETRIES     8    /* --bouncer-retry settings */
#define DEFAULT_BUDGET  4    /* warmlock-paced's login budget without --login-budget */
#define FATAL_WINDOW_MS 25.0 /* the prober's FATAL budget is per this much recovery */

enum scenario { SC_CLEAN, SC_CRASH, SC_UP, SC_OUTAGE, SC_BOUNCER, SC_COUNT };
extern const char *const sc_name[SC_COUNT];

/* The order of the tables. Every strategy from ST_WARMLOCK on is a warmlock one. */
enum strategy {
    ST_INCIDENT,
    ST_NAIVE,
    ST_NAIVE_AA,   /* naive again: the same code, a control of the measurement's own noise */
    ST_FLOCK,
    ST_WARMLOCK,   /* wl_pg_opts.login_budget 0: the library's default */
    ST_WL_UNPACED, /* login_budget UINT32_MAX */
    ST_WL_PACED,   /* login_budget from --login-budget */
    ST_WL_NOWATCH, /* backoff.flags WL_BACKOFF_NO_WATCH: the paced schedule (busy_ms) only */
    ST_COORD,      /* warmlockd beside ST_WARMLOCK's workers */
    ST_COUNT
};
extern const char *const st_name[ST_COUNT];

static inline int st_warmlock(enum strategy st)
{
    return st >= ST_WARMLOCK;
}

/* ---------------------------------------------------------------- shared with workers */

/* One worker's outcome, written only by that worker, read by the driver after it exited. */
struct worker_rec {
    int64_t t_ok_ns;   /* CLOCK_MONOTONIC ns from T0 to the end of its first successful query */
    int64_t t_rel_ns;  /* warmlock: ns from T0 until wl_pg_ensure returned READY, else -1 */
    uint32_t attempts; /* connection attempts it made itself (warmlock: its own connection) */
    uint32_t errors;   /* errors surfaced: failed attempts an app would log, final failure */
    int32_t ok;        /* 1: it ran its query */
    int32_t leader;    /* warmlock: it was the leader of the epoch */
    int32_t done;      /* 1: it wrote this record */
    char err[160];     /* its last error message */
};

/* The barrier and the records: an anonymous shared mapping made before any fork. */
struct shared {
    _Atomic uint32_t go;  /* futex word: bumped by the driver at T0 */
    int64_t t0_mono_ns;   /* T0 on CLOCK_MONOTONIC, written before go is bumped */
    struct worker_rec w[MAX_N];
};

/* The barrier and the records, mapped before any fork (the driver's). */
extern struct shared *g_sh;
/* Set by SIGINT/SIGTERM/SIGHUP: clean up and leave. */
extern volatile sig_atomic_t g_stop;

/* ---------------------------------------------------------------- utilities */

/* The harness's clocks as signed ns, for differences. */
static inline int64_t mono_ns(void)
{
    return (int64_t)wlt_now_ns();
}

static inline void sleep_ms(int64_t ms)
{
    if (ms > 0)
        wlt_sleep_ms((unsigned)ms);
}

static inline void copy_str(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src ? src : "");
    for (char *p = dst; *p; p++) { /* one line, no commas (it goes into CSV) */
        if (*p == '\n' || *p == '\r' || *p == '\t' || *p == ',')
            *p = *p == ',' ? ';' : ' ';
    }
    size_t n = strlen(dst);
    while (n > 0 && dst[n - 1] == ' ')
        dst[--n] = '\0';
}

/* In a child the driver forked: default signal dispositions, nothing blocked, and killed
 * with the driver. */
static inline void child_defaults(void)
{
    sigset_t none;
    sigemptyset(&none);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    }
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

/* ---------------------------------------------------------------- the run */

struct run_cfg {
    enum scenario sc;
    enum strategy st;
    int n;
    const char *conninfo;  /* the server's Unix-socket conninfo */
    char base_conn[700];   /* baselines: conninfo + connect_timeout */
    char shm[64];          /* warmlock's segment for this run */
    char lockpath[400];    /* flock's lock file */
    int outage_ms;         /* outage: the server starts this long after T0 */
    int timeout_ms;        /* the run's bound: workers still alive then are killed */
    int wl_backoff_max_ms; /* warmlock leader's backoff cap; 0: the library's default */
    uint32_t login_budget; /* warmlock's wl_pg_opts.login_budget */
    uint32_t backoff_flags; /* warmlock's wl_pg_opts.backoff.flags */
    double retry_s;        /* pgbouncer-restart: pgbouncer's server_login_retry, s */
};

struct result {
    enum scenario sc;
    enum strategy st;
    int n;
    double retry_s;                         /* pgbouncer-restart: server_login_retry, s */
    int round;                              /* which of its cell's runs, from 0 */
    int ok;                                 /* workers that ran their query */
    double p50, p99, max;                   /* time to first successful query, ms (ok ones) */
    double all_ready;                       /* max if every worker is ok, else NAN */
    double server_ready;                    /* the server's ready line, ms after T0 */
    double lag_p50, lag_p99, lag_max;       /* behind max(server ready, T0), ms */
    double rel_p50, rel_max;                /* warmlock: wl_pg_ensure returned, ms after T0 */
    long attempts;                          /* client-side connection attempts */
    long probes;                            /* warmlock: the engine's attempts (snapshot) */
    long warmups;                           /* warmlock: warm-ups run (snapshot) */
    int leaders;                            /* warmlock workers that led an epoch */
    int conns, fatal, rej57;                /* from the server log */
    long errors;                            /* errors surfaced to workers */
    double first_ok;                        /* the first worker's query ended, ms after T0 */
    double release_lag;                     /* first_ok - server_ready; NAN for already-up */
    int fatal_pre, rej57_pre;               /* FATAL, 57P03 lines after T0 before ready */
    double recovery_ms;                     /* first "connection received" (or T0) to ready */
    double react_ms;    /* ready line to the first "connection received" at or after it */
    double fatal_per25;                     /* fatal_pre per FATAL_WINDOW_MS of recovery */
    double wait_ms;                         /* pgbouncer-restart: `warmlock wait` returned
                                             * (ms after T0), NAN if it failed */
    double cpu_ms;                          /* workers' user+sys (+ warmlockd's) */
    int killed;                             /* workers killed at the run's bound */
    int aborted;                            /* the run could not be carried out */
    char err[160];                          /* one worker's error, for the notes */
    double t_ms[MAX_N];                     /* per worker, NAN if not ok */
    double lag_ms[MAX_N];
    double rel_ms[MAX_N];                   /* warmlock: released, NAN otherwise */
    uint32_t w_attempts[MAX_N], w_errors[MAX_N];
};

/* The client strategies (coldstart_clients.c): a worker process's life, from the barrier to
 * its record; never returns. */
void worker_main(const struct run_cfg *cfg, int idx, uint32_t gen) __attribute__((noreturn));

/* One line of the run's plan: a cell (scenario, strategy, N, pgbouncer setting) and how many
 * times it runs. The driver runs round 0 of every cell, then round 1 ..., so that a cell's
 * k-th run and its baseline's are neighbours in time. */
struct plan {
    enum scenario sc;
    enum strategy st;
    int n;
    double retry_s;
    int runs;
};

/* A cell's runs, gathered after the run (coldstart_cells.c). */
struct cell {
    enum scenario sc;
    enum strategy st;
    int n;
    double retry_s;
    int nruns;
    const struct result *run[MAX_RUNS];
};

/* What a table can show of one run. Ratios pair a run with its baseline's run of the same
 * round (or, without one, the baseline cell's median). */
enum fig {
    F_P50,
    F_P99,
    F_MAX,
    F_ALL,
    F_SRV,
    F_LAG50,
    F_LAG99,
    F_LAGMAX,
    F_REL50,
    F_RELMAX,
    F_CPU,
    F_RLAG,
    F_FATAL_PRE,
    F_REJ57_PRE,
    F_PER25,
    F_RECOVERY,
    F_REACT,     /* ready line to the first login the server received after it */
    F_AFTER_REACT, /* release lag - F_REACT: that login, its backend's start, the queries */
    F_FATAL,
    F_REJ57,
    F_CONNS,
    F_ERRORS,
    F_ATTEMPTS,
    F_PROBES,
    F_WAIT_AFTER,  /* pgbouncer-restart: `warmlock wait` returned, ms after the server's ready */
    F_ALL_AFTER,   /* all ready, ms after the server's ready */
    F_LIMIT,       /* all ready / (server ready + the same N's already-up naive all ready) */
    F_VS_INCIDENT, /* all ready / the incident's */
    F_VS_NAIVE,    /* all ready / naive's */
    F_CPU_NAIVE,   /* workers' CPU / naive's */
};

/* Over a cell's runs, NANs left out (n = how many were not). */
struct figstat {
    int n;
    double p50, p99, min, max;
};

extern struct result *g_res; /* every run, in the order they ran */
extern int g_nres;
extern struct cell *g_cells; /* after cells_build() */
extern int g_ncells;
extern int g_verbose;
extern unsigned g_login_budget; /* warmlock-paced's wl_pg_opts.login_budget */

/* coldstart_cells.c */
void cells_build(void);
const struct cell *cell_find(enum scenario sc, enum strategy st, int n, double retry_s);
double fig(const struct result *r, enum fig f);
struct figstat cell_stat(const struct cell *c, enum fig f);
/* The physical limit's herd part: the median all-ready of already-up naive at n (NAN if the
 * run has none). */
double uplimit_ms(int n);
/* Nearest-rank percentile of a sorted array. */
double pct(const double *v, int n, double p);
/* "pgbouncer-restart (retry 15 s)", or the scenario's name. */
void cell_label(char *buf, size_t len, enum scenario sc, double retry_s);

/* coldstart_report.c: the tables and the CSV. */
void fmt_ms(char *buf, size_t len, double v);
void print_table(FILE *f);
void print_demo_table(FILE *f);
void print_release_table(FILE *f);
void print_bouncer_table(FILE *f);
void print_headline(FILE *f, int nmax);
int write_csv(const char *dir);

/* coldstart_plot.c: coldstart.png (all ready against N) and coldstart-lag.png (release lag
 * against the FATAL lines before ready, one point per run), each with its .gp. */
int write_plot(const char *dir, const int *ns, int nn);
int write_lag_plot(const char *dir);

/* coldstart_goals.c: --goals, the performance goals' plan and their table. */
int goals_plan(struct plan *out, int max);
/* The goals table from the cells and micro's CSV (NULL: no micro rows). */
void print_goals(FILE *f, const char *micro_csv);

#endif
