/* coldstart --goals: the cells the performance goals are measured on, run in one go, and the
 * table of each goal beside its measurement (from the cells and bench/micro's CSV).
 *
 *   crash-recovery, N=64, 5 runs:   naive, warmlock, warmlock-unpaced, warmlock-paced
 *   crash-recovery, N=256, 3 runs:  warmlock, warmlock-unpaced, warmlock-paced
 *   crash-recovery, N=64, 5 runs:   naive-again (after the others: a control)
 *   already-up, N=256, 5 runs:      naive, warmlock, naive-again
 *   (the driver adds already-up naive at N=64, the limit's reference) and micro's ready path.
 * See coldstart.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coldstart.h"
#include "micro_rows.h"

/* The goals' cells (overridable when compiling, to try the mode on small herds). */
#ifndef LAG_N
#define LAG_N 64
#endif
#ifndef LAG_RUNS
#define LAG_RUNS 5
#endif
#ifndef HERD_N
#define HERD_N 256
#endif
#ifndef HERD_RUNS
#define HERD_RUNS 3
#endif
#ifndef UP_RUNS
#define UP_RUNS 5
#endif

int goals_plan(struct plan *out, int max)
{
    static const struct plan p[] = {
        {SC_CRASH, ST_NAIVE, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_WARMLOCK, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_WL_UNPACED, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_WL_PACED, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_WL_NOWATCH, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_NAIVE_AA, LAG_N, 0, LAG_RUNS},
        {SC_CRASH, ST_WARMLOCK, HERD_N, 0, HERD_RUNS},
        {SC_CRASH, ST_WL_UNPACED, HERD_N, 0, HERD_RUNS},
        {SC_CRASH, ST_WL_PACED, HERD_N, 0, HERD_RUNS},
        {SC_UP, ST_NAIVE, HERD_N, 0, UP_RUNS},
        {SC_UP, ST_WARMLOCK, HERD_N, 0, UP_RUNS},
        {SC_UP, ST_NAIVE_AA, HERD_N, 0, UP_RUNS},
    };
    int n = (int)(sizeof(p) / sizeof(p[0]));
    if (n > max)
        n = max;
    memcpy(out, p, sizeof(p[0]) * (size_t)n);
    return n;
}

/* One micro row read back from its CSV: ours and the baseline (ns). */
struct micro_row {
    int have;
    double ours, base;
};

static struct micro_row micro_find(const char *csv, const char *name)
{
    struct micro_row m = {0, NAN, NAN};
    FILE *f = csv ? fopen(csv, "re") : NULL;
    char line[512];
    size_t len = strlen(name);
    while (f && fgets(line, sizeof(line), f)) {
        if (!strncmp(line, name, len) && line[len] == ',' &&
            sscanf(line + len, ",%*[^,],%lf,%lf", &m.ours, &m.base) == 2) {
            m.have = 1;
            break;
        }
    }
    if (f)
        fclose(f);
    return m;
}

/* "0.93, 0.95, 1.01": a figure of each of the cell's runs; *worst gets the largest (NAN if
 * a run has none). */
static void fmt_runs(char *buf, size_t len, const struct cell *c, enum fig f, const char *fmt,
                     double *worst)
{
    size_t k = 0;
    *worst = c && c->nruns ? -INFINITY : NAN;
    buf[0] = '\0';
    for (int i = 0; c && i < c->nruns && k + 16 < len; i++) {
        double v = fig(c->run[i], f);
        *worst = isnan(v) || isnan(*worst) ? NAN : v > *worst ? v : *worst;
        k += (size_t)snprintf(buf + k, len - k, "%s", i ? ", " : "");
        if (isnan(v))
            k += (size_t)snprintf(buf + k, len - k, "—");
        else
            k += (size_t)snprintf(buf + k, len - k, fmt, v);
    }
    if (!c)
        snprintf(buf, len, "not measured");
}

static const char *met(double v, double goal)
{
    return isnan(v) ? "no (not measured, or a run failed)" : v <= goal ? "yes" : "no";
}

static void row(FILE *f, const char *what, const char *goal, const char *measured,
                const char *verdict)
{
    fprintf(f, "| %s | %s | %s | %s |\n", what, goal, measured, verdict);
}

/* The ready path rows: ratio to the mutex, and both in ns. */
static void micro_goal(FILE *f, const char *csv, const char *name, const char *what,
                       const char *goal_txt, double goal)
{
    struct micro_row m = micro_find(csv, name);
    char buf[160] = "not measured";
    double ratio = m.have && m.base > 0 ? m.ours / m.base : NAN;
    if (m.have)
        snprintf(buf, sizeof(buf), "%.2f (%.1f ns vs %.1f ns)", ratio, m.ours, m.base);
    row(f, what, goal_txt, buf, isnan(goal) ? "—" : met(ratio, goal));
}

/* Paced against unpaced at N: p50 and all ready (medians over the runs). */
static void pacing_row(FILE *f, int n)
{
    const struct cell *p = cell_find(SC_CRASH, ST_WL_PACED, n, 0);
    const struct cell *u = cell_find(SC_CRASH, ST_WL_UNPACED, n, 0);
    const struct cell *d = cell_find(SC_CRASH, ST_WARMLOCK, n, 0);
    char what[160], buf[320] = "not measured";
    snprintf(what, sizeof(what),
             "login pacing, crash-recovery N=%d: p50 / all ready ms, paced (budget %u) vs "
             "unpaced, median of the runs",
             n, g_login_budget);
    if (p && u) {
        double pp = cell_stat(p, F_P50).p50, pa = cell_stat(p, F_ALL).p50;
        double up = cell_stat(u, F_P50).p50, ua = cell_stat(u, F_ALL).p50;
        int k = snprintf(buf, sizeof(buf),
                         "paced %.0f / %.0f, unpaced %.0f / %.0f: paced ÷ "
                         "unpaced %.2f / %.2f",
                         pp, pa, up, ua, pp / up, pa / ua);
        if (d && k > 0 && (size_t)k < sizeof(buf))
            snprintf(buf + k, sizeof(buf) - (size_t)k, "; library default %.0f / %.0f",
                     cell_stat(d, F_P50).p50, cell_stat(d, F_ALL).p50);
    }
    row(f, what, "on by default only if it wins", buf, "—");
}

/* The median over the runs of a ratio, with the control's median and spread beside it. */
static void ratio_median_row(FILE *f, const struct cell *c, const struct cell *aa, enum fig fg,
                             const char *what, double goal)
{
    char buf[200] = "not measured";
    double m = NAN;
    if (c) {
        struct figstat s = cell_stat(c, fg);
        m = s.p50;
        int k = snprintf(buf, sizeof(buf), "%.2f", m);
        if (aa && k > 0) {
            struct figstat a = cell_stat(aa, fg);
            snprintf(buf + k, sizeof(buf) - (size_t)k, " (control %.2f, %.2f–%.2f)", a.p50,
                     a.min, a.max);
        }
    }
    row(f, what, "reported", buf, isnan(m) ? "—" : m <= goal ? "within the goal" : "above it");
}

static struct figstat stat_of(const struct cell *c, enum fig f)
{
    return c ? cell_stat(c, f) : (struct figstat){0, NAN, NAN, NAN, NAN};
}

void print_goals(FILE *f, const char *micro_csv)
{
    char buf[320], what[160];
    double worst;
    fprintf(f, "| figure | goal | measured | met |\n|---|---|---|---|\n");

    /* warmlock (the library's schedule, watching the local server's postmaster.pid) and
     * warmlock-nowatch (the paced schedule a remote server gets) */
    static const enum strategy lag_st[] = {ST_WARMLOCK, ST_WL_NOWATCH};
    for (size_t i = 0; i < sizeof(lag_st) / sizeof(lag_st[0]); i++) {
        const struct cell *lag = cell_find(SC_CRASH, lag_st[i], LAG_N, 0);
        if (!lag)
            continue;
        struct figstat l = stat_of(lag, F_RLAG);
        snprintf(what, sizeof(what),
                 "release lag, crash-recovery N=%d, %s: median of %d runs (min–max)", LAG_N,
                 st_name[lag_st[i]], l.n);
        snprintf(buf, sizeof(buf), "%.0f ms (%.0f–%.0f)", l.p50, l.min, l.max);
        row(f, what, "≤ 15 ms", buf, met(l.p50, 15));
        snprintf(buf, sizeof(buf), "%.0f ms", l.p99);
        row(f, "… p99 over those runs", "≤ 50 ms", buf, met(l.p99, 50));
        /* The server's log says when the first login after its ready line arrived: what
         * comes before it is the client's reaction, what comes after it the server's first
         * backend (after a crash it rebuilds the caches the crash threw away) and the
         * queries, which no client can shorten. */
        struct figstat re = stat_of(lag, F_REACT), af = stat_of(lag, F_AFTER_REACT);
        snprintf(buf, sizeof(buf), "%.0f ms (%.0f–%.0f) / %.0f ms (%.0f–%.0f)", re.p50, re.min,
                 re.max, af.p50, af.min, af.max);
        row(f, "… of which: ready line → the first login the server received (the client's "
               "reaction) / that login → the first query done (the server's first backend), "
               "medians (min–max)",
            "reported", buf, "—");
        struct figstat fp = stat_of(lag, F_FATAL_PRE), per = stat_of(lag, F_PER25);
        snprintf(buf, sizeof(buf), "%.0f (%.0f–%.0f)", fp.p50, fp.min, fp.max);
        row(f, "… FATAL lines caused by the prober during that recovery: median (min–max)",
            "reported", buf, "—");
        snprintf(buf, sizeof(buf), "%.2f (median %.2f)", per.max, per.p50);
        row(f, "… per 25 ms of recovery, worst run", "≤ 1", buf, met(per.max, 1.0));
    }

    micro_goal(f, micro_csv, MICRO_ROW_ENSURE,
               "ready path of wl_ensure ÷ pshared mutex "
               "lock+unlock (bench/micro)",
               "reported", NAN);
    micro_goal(f, micro_csv, MICRO_ROW_KEY,
               "ready path of wl_key_ensure (prepared key) ÷ the "
               "mutex",
               "≤ 0.5", 0.5);
    micro_goal(f, micro_csv, MICRO_ROW_TARGET,
               "ready path of wl_pg_target_ensure (prepared "
               "target) ÷ the mutex",
               "≤ 1.0", 1.0);
    micro_goal(f, micro_csv, MICRO_ROW_PG,
               "ready path of wl_pg_ensure (parses the conninfo) ÷ "
               "the mutex",
               "reported", NAN);

    const struct cell *crash = cell_find(SC_CRASH, ST_WARMLOCK, HERD_N, 0);
    fmt_runs(buf, sizeof(buf), crash, F_LIMIT, "%.2f", &worst);
    snprintf(what, sizeof(what),
             "N=%d crash-recovery all ready ÷ (server ready + already-up "
             "naive N=%d), warmlock, each run",
             HERD_N, HERD_N);
    row(f, what, "≤ 1.0 in every run", buf, met(worst, 1.0));

    /* Each ratio to naive beside the same ratio of naive-again, the same code run once more
     * in the same round: what the measurement itself spreads, so a goal tighter than that
     * spread is read against it. */
    const struct cell *up = cell_find(SC_UP, ST_WARMLOCK, HERD_N, 0);
    const struct cell *up_aa = cell_find(SC_UP, ST_NAIVE_AA, HERD_N, 0);
    const struct cell *lag_wl = cell_find(SC_CRASH, ST_WARMLOCK, LAG_N, 0);
    const struct cell *lag_aa = cell_find(SC_CRASH, ST_NAIVE_AA, LAG_N, 0);
    fmt_runs(buf, sizeof(buf), up, F_VS_NAIVE, "%.2f", &worst);
    snprintf(what, sizeof(what), "already-up N=%d: warmlock all ready ÷ naive, each run", HERD_N);
    row(f, what, "≤ 1.02 in every run", buf, met(worst, 1.02));
    ratio_median_row(f, up, up_aa, F_VS_NAIVE, "… median of the runs, warmlock ÷ naive",
                     1.02);
    fmt_runs(buf, sizeof(buf), up_aa, F_VS_NAIVE, "%.2f", &worst);
    row(f, "… control: naive-again ÷ naive, each run", "the measurement's own spread", buf,
        "—");

    fmt_runs(buf, sizeof(buf), up, F_CPU_NAIVE, "%.2f", &worst);
    snprintf(what, sizeof(what), "workers' CPU, warmlock ÷ naive, already-up N=%d, each run",
             HERD_N);
    row(f, what, "≤ 1.05", buf, met(worst, 1.05));
    ratio_median_row(f, up, up_aa, F_CPU_NAIVE, "… median of the runs, warmlock ÷ naive", 1.05);
    fmt_runs(buf, sizeof(buf), up_aa, F_CPU_NAIVE, "%.2f", &worst);
    row(f, "… control: naive-again ÷ naive, each run", "the measurement's own spread", buf,
        "—");
    fmt_runs(buf, sizeof(buf), lag_wl, F_CPU_NAIVE, "%.2f", &worst);
    snprintf(what, sizeof(what), "workers' CPU, warmlock ÷ naive, crash-recovery N=%d, each run",
             LAG_N);
    row(f, what, "≤ 1.05", buf, met(worst, 1.05));
    ratio_median_row(f, lag_wl, lag_aa, F_CPU_NAIVE, "… median of the runs, warmlock ÷ naive",
                     1.05);
    fmt_runs(buf, sizeof(buf), lag_aa, F_CPU_NAIVE, "%.2f", &worst);
    row(f, "… control: naive-again ÷ naive, each run", "the measurement's own spread", buf,
        "—");

    pacing_row(f, LAG_N);
    pacing_row(f, HERD_N);
}
