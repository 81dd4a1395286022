/* The contended cold-start benchmark's report: the Markdown tables (one row per cell, its
 * figures the medians over the cell's runs) and headline, and the CSV (one row per run, one
 * per worker), over the cells of coldstart_cells.c. See coldstart.c. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coldstart.h"

struct result *g_res;
int g_nres;

void fmt_ms(char *buf, size_t len, double v)
{
    if (isnan(v))
        snprintf(buf, len, "—");
    else
        snprintf(buf, len, "%.0f", v);
}

/* The median of a figure over the cell's runs, "%.0f" ("—" for none). */
static void fmt_med(char *buf, size_t len, const struct cell *c, enum fig f)
{
    fmt_ms(buf, len, cell_stat(c, f).p50);
}

static int workers_failed(const struct cell *c, int *total)
{
    int failed = 0;
    *total = 0;
    for (int i = 0; i < c->nruns; i++) {
        failed += c->run[i]->n - c->run[i]->ok;
        *total += c->run[i]->n;
    }
    return failed;
}

/* A cell's ratio against a baseline strategy (f = F_VS_INCIDENT, F_VS_NAIVE or F_CPU_NAIVE):
 * the median of its runs' ratios, "" without that baseline in the run, or why there is none. */
static void fmt_ratio(char *buf, size_t len, const struct cell *c, enum fig f)
{
    enum strategy base_st = f == F_VS_INCIDENT ? ST_INCIDENT : ST_NAIVE;
    const struct cell *b = cell_find(c->sc, base_st, c->n, c->retry_s);
    int total;
    if (!b) {
        buf[0] = '\0';
    } else if (f != F_CPU_NAIVE && cell_stat(b, F_ALL).n == 0) {
        int failed = workers_failed(b, &total);
        snprintf(buf, len, "%s: %d/%d failed", st_name[base_st], failed, total);
    } else {
        struct figstat s = cell_stat(c, f);
        if (s.n == 0)
            snprintf(buf, len, "—");
        else
            snprintf(buf, len, "%.2f", s.p50);
    }
}

/* The cell's all-ready median, and how many runs had every worker ready when not all did. */
static void fmt_all(char *buf, size_t len, const struct cell *c)
{
    struct figstat s = cell_stat(c, F_ALL);
    fmt_ms(buf, len, s.p50);
    if (s.n > 0 && s.n < c->nruns)
        snprintf(buf + strlen(buf), len - strlen(buf), " (%d/%d runs)", s.n, c->nruns);
}

/* What a column shows of a cell. */
enum col_kind {
    C_SCENARIO, /* with the pgbouncer setting */
    C_RETRY,    /* the pgbouncer setting alone */
    C_STRATEGY,
    C_N,
    C_RUNS,
    C_OK,       /* workers that ran their query / workers, over the runs */
    C_MED,      /* the median of `f` */
    C_ALL,      /* all ready (fmt_all) */
    C_LAGS,     /* lag p50 / p99 / max, medians */
    C_RELEASED, /* released p50 / max, medians, warmlock only */
    C_ATTEMPTS, /* attempts, + the engine's probes for warmlock */
    C_RATIO,    /* fmt_ratio of `f` */
    C_P50_P99,  /* of `f` over the runs */
    C_MIN_MAX,
    C_P50_MAX,
};

struct column {
    const char *head;
    enum col_kind kind;
    enum fig f;
    int prec; /* decimals of the C_P50_* and C_MIN_MAX kinds */
};

/* "a / b" with `prec` decimals, or "—" when there is nothing. */
static void fmt_pair(char *buf, size_t len, int have, double a, double b, int prec)
{
    if (have)
        snprintf(buf, len, "%.*f / %.*f", prec, a, prec, b);
    else
        snprintf(buf, len, "—");
}

static void fmt_col(char *buf, size_t len, const struct cell *c, const struct column *col)
{
    char a[32], b[32], d[32];
    struct figstat s = cell_stat(c, col->f);
    int total, failed, aborted = 0;
    switch (col->kind) {
    case C_SCENARIO: cell_label(buf, len, c->sc, c->retry_s); break;
    case C_RETRY: snprintf(buf, len, "%g", c->retry_s); break;
    case C_STRATEGY: snprintf(buf, len, "%s", st_name[c->st]); break;
    case C_N: snprintf(buf, len, "%d", c->n); break;
    case C_RUNS: snprintf(buf, len, "%d", c->nruns); break;
    case C_OK:
        failed = workers_failed(c, &total);
        for (int k = 0; k < c->nruns; k++)
            aborted += c->run[k]->aborted;
        snprintf(buf, len, "%d/%d%s", total - failed, total, aborted ? " (aborted)" : "");
        break;
    case C_MED: fmt_med(buf, len, c, col->f); break;
    case C_ALL: fmt_all(buf, len, c); break;
    case C_LAGS:
        fmt_med(a, sizeof(a), c, F_LAG50);
        fmt_med(b, sizeof(b), c, F_LAG99);
        fmt_med(d, sizeof(d), c, F_LAGMAX);
        snprintf(buf, len, "%s / %s / %s", a, b, d);
        break;
    case C_RELEASED:
        fmt_med(a, sizeof(a), c, F_REL50);
        fmt_med(b, sizeof(b), c, F_RELMAX);
        snprintf(buf, len, "%s / %s", a, b);
        if (!strcmp(a, "—"))
            snprintf(buf, len, "—");
        break;
    case C_ATTEMPTS:
        fmt_med(a, sizeof(a), c, F_ATTEMPTS);
        fmt_med(b, sizeof(b), c, F_PROBES);
        if (st_warmlock(c->st))
            snprintf(buf, len, "%s + %s probes", a, b);
        else
            snprintf(buf, len, "%s", a);
        break;
    case C_RATIO: fmt_ratio(buf, len, c, col->f); break;
    case C_P50_P99: fmt_pair(buf, len, s.n, s.p50, s.p99, col->prec); break;
    case C_MIN_MAX: fmt_pair(buf, len, s.n, s.min, s.max, col->prec); break;
    case C_P50_MAX:
        if (c->nruns > 1 || col->f != F_LIMIT)
            fmt_pair(buf, len, s.n, s.p50, s.max, col->prec);
        else
            snprintf(buf, len, "%.*f", col->prec, s.p50);
        break;
    }
}

/* A Markdown table of the cells `want` accepts (NULL: all), one column per entry. */
static void print_cells(FILE *f, const struct column *cols, size_t ncols,
                        int (*want)(const struct cell *))
{
    int rows = 0;
    for (int i = 0; i < g_ncells; i++) {
        const struct cell *c = &g_cells[i];
        if (want && !want(c))
            continue;
        if (!rows++) {
            for (size_t k = 0; k < ncols; k++)
                fprintf(f, "| %s ", cols[k].head);
            fprintf(f, "|\n");
            for (size_t k = 0; k < ncols; k++) {
                enum col_kind kd = cols[k].kind;
                fprintf(f, "|%s", kd == C_SCENARIO || kd == C_STRATEGY ? "---" : "--:");
            }
            fprintf(f, "|\n");
        }
        for (size_t k = 0; k < ncols; k++) {
            char buf[160];
            fmt_col(buf, sizeof(buf), c, &cols[k]);
            fprintf(f, "| %s ", buf);
        }
        fprintf(f, "|\n");
    }
}

#define NCOLS(a) (sizeof(a) / sizeof((a)[0]))

void print_table(FILE *f)
{
    static const struct column cols[] = {
        {"scenario", C_SCENARIO, 0, 0},
        {"strategy", C_STRATEGY, 0, 0},
        {"N", C_N, 0, 0},
        {"runs", C_RUNS, 0, 0},
        {"ok", C_OK, 0, 0},
        {"p50 ms", C_MED, F_P50, 0},
        {"p99 ms", C_MED, F_P99, 0},
        {"all ready ms", C_ALL, F_ALL, 0},
        {"server ready ms", C_MED, F_SRV, 0},
        {"lag p50/p99/max ms", C_LAGS, 0, 0},
        {"released p50/max ms", C_RELEASED, 0, 0},
        {"attempts", C_ATTEMPTS, 0, 0},
        {"conns logged", C_MED, F_CONNS, 0},
        {"FATAL", C_MED, F_FATAL, 0},
        {"57P03", C_MED, F_REJ57, 0},
        {"errors", C_MED, F_ERRORS, 0},
        {"CPU ms", C_MED, F_CPU, 0},
        {"÷ limit (median / max)", C_P50_MAX, F_LIMIT, 2},
        {"all ready ÷ incident", C_RATIO, F_VS_INCIDENT, 0},
        {"÷ naive", C_RATIO, F_VS_NAIVE, 0},
        {"CPU ÷ naive", C_RATIO, F_CPU_NAIVE, 0},
    };
    print_cells(f, cols, NCOLS(cols), NULL);
}

static int crash_cell(const struct cell *c)
{
    return c->sc == SC_CRASH;
}

/* scripts/demo's table: the crash-recovery cells, the columns it explains below it. */
void print_demo_table(FILE *f)
{
    static const struct column cols[] = {
        {"strategy", C_STRATEGY, 0, 0},
        {"ok", C_OK, 0, 0},
        {"all ready ms", C_ALL, F_ALL, 0},
        {"server ready ms", C_MED, F_SRV, 0},
        {"lag p50 / p99 / max ms", C_LAGS, 0, 0},
        {"FATAL", C_MED, F_FATAL, 0},
        {"errors", C_MED, F_ERRORS, 0},
        {"CPU ms", C_MED, F_CPU, 0},
        {"÷ limit", C_P50_MAX, F_LIMIT, 2},
    };
    print_cells(f, cols, NCOLS(cols), crash_cell);
    fputs(
        "\n"
        "T0: the processes are released and the server's start is launched at the same instant;\n"
        "the server replays the WAL of a crash first, answering every login 57P03 (\"the database\n"
        "system is starting up\") meanwhile. Each process needs one successful query.\n"
        "\n"
        "  strategy         incident: the incident's policy (sleep 2.5 s, SELECT 1 up to 3 times\n"
        "                   500 ms apart, then 5 retries 200 ms -> 3000 ms); naive: the same\n"
        "                   without the sleep; warmlock: one process of the host (the leader)\n"
        "                   probes, the others sleep on the segment's futex until it has run a\n"
        "                   real query, then each opens its own connection\n"
        "  ok               processes that ran their query / processes\n"
        "  all ready ms     when the last process ran its first query, from T0\n"
        "  server ready ms  when the server logged \"ready to accept connections\", from T0\n"
        "  lag ms           a process's first query after the server's ready line: the median\n"
        "                   process, the 99th percentile, the last one\n"
        "  FATAL            FATAL lines in the server's log: logins it refused (57P03) while it\n"
        "                   recovered. warmlock's few come from its single prober, the leader:\n"
        "                   its first login, refused with 57P03, then one every 250 ms at most\n"
        "                   (a safety net) while it waits for the server's postmaster.pid to say\n"
        "                   ready; the other processes sleep and never reach the server before\n"
        "                   then\n"
        "  errors           failures the processes saw (what a real app would log as warnings\n"
        "                   and errors): one per failed attempt of theirs\n"
        "  CPU ms           the processes' CPU time, summed\n"
        "  ÷ limit          all ready ÷ the physical limit: the server's own ready time plus\n"
        "                   what the same processes take to connect and query a server that\n"
        "                   is already up (measured in this run); 1.00 is the limit\n",
        f);
}

static int server_starts(const struct cell *c)
{
    return c->sc != SC_UP;
}

/* Every cell whose server starts: the release lag over its runs, beside the FATAL lines
 * logged before the server's ready line (for warmlock: its prober's) and their rate. */
void print_release_table(FILE *f)
{
    static const struct column cols[] = {
        {"scenario", C_SCENARIO, 0, 0},
        {"strategy", C_STRATEGY, 0, 0},
        {"N", C_N, 0, 0},
        {"runs", C_RUNS, 0, 0},
        {"server ready ms", C_MED, F_SRV, 0},
        {"release lag p50 / p99 ms", C_P50_P99, F_RLAG, 0},
        {"min / max ms", C_MIN_MAX, F_RLAG, 0},
        {"first login after ready ms", C_MED, F_REACT, 0},
        {"lag after that login ms", C_MED, F_AFTER_REACT, 0},
        {"FATAL before ready", C_MED, F_FATAL_PRE, 0},
        {"57P03 before ready", C_MED, F_REJ57_PRE, 0},
        {"recovery ms", C_MED, F_RECOVERY, 0},
        {"FATAL per 25 ms p50 / max", C_P50_MAX, F_PER25, 2},
    };
    print_cells(f, cols, NCOLS(cols), server_starts);
}

static int behind_bouncer(const struct cell *c)
{
    return c->sc == SC_BOUNCER;
}

/* pgbouncer-restart: per server_login_retry setting, how long after the server's ready line
 * `warmlock wait` through pgbouncer returned and every worker was ready. */
void print_bouncer_table(FILE *f)
{
    static const struct column cols[] = {
        {"server_login_retry s", C_RETRY, 0, 0},
        {"strategy", C_STRATEGY, 0, 0},
        {"N", C_N, 0, 0},
        {"runs", C_RUNS, 0, 0},
        {"ok", C_OK, 0, 0},
        {"server ready ms", C_MED, F_SRV, 0},
        {"`warmlock wait` − server ready ms", C_MED, F_WAIT_AFTER, 0},
        {"all ready − server ready ms", C_MED, F_ALL_AFTER, 0},
        {"FATAL", C_MED, F_FATAL, 0},
        {"errors", C_MED, F_ERRORS, 0},
    };
    print_cells(f, cols, NCOLS(cols), behind_bouncer);
}

/* warmlock against incident and naive at each scenario's largest N. */
void print_headline(FILE *f, int nmax)
{
    int any = 0;
    for (int i = 0; i < g_ncells; i++) {
        const struct cell *w = &g_cells[i];
        if (w->st != ST_WARMLOCK || w->n != nmax)
            continue;
        const struct cell *inc = cell_find(w->sc, ST_INCIDENT, nmax, w->retry_s);
        const struct cell *nai = cell_find(w->sc, ST_NAIVE, nmax, w->retry_s);
        if (!inc && !nai)
            continue;
        if (!any++) {
            fprintf(f, "\n| scenario, N=%d | warmlock all ready ms | ÷ incident | ÷ naive "
                       "| FATAL warmlock / incident / naive | errors warmlock / incident / naive |\n"
                       "|---|--:|--:|--:|--:|--:|\n",
                    nmax);
        }
        char sc[64], all[48], ri[64] = "—", rn[64] = "—", fw[32], fi[32] = "—", fn[32] = "—",
                              ew[32], ei[32] = "—", en[32] = "—";
        cell_label(sc, sizeof(sc), w->sc, w->retry_s);
        fmt_all(all, sizeof(all), w);
        fmt_med(fw, sizeof(fw), w, F_FATAL);
        fmt_med(ew, sizeof(ew), w, F_ERRORS);
        if (inc) {
            fmt_ratio(ri, sizeof(ri), w, F_VS_INCIDENT);
            fmt_med(fi, sizeof(fi), inc, F_FATAL);
            fmt_med(ei, sizeof(ei), inc, F_ERRORS);
        }
        if (nai) {
            fmt_ratio(rn, sizeof(rn), w, F_VS_NAIVE);
            fmt_med(fn, sizeof(fn), nai, F_FATAL);
            fmt_med(en, sizeof(en), nai, F_ERRORS);
        }
        fprintf(f, "| %s | %s | %s | %s | %s / %s / %s | %s / %s / %s |\n", sc, all, ri, rn, fw, fi,
                fn, ew, ei, en);
    }
}

static FILE *open_out(const char *dir, const char *name)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f)
        fprintf(stderr, "coldstart: cannot write %s: %s\n", path, strerror(errno));
    return f;
}

int write_csv(const char *dir)
{
    FILE *f = open_out(dir, "coldstart.csv");
    if (!f)
        return -1;
    fprintf(f, "scenario,strategy,n,retry_s,round,ok,p50_ms,p99_ms,max_ms,all_ready_ms,"
               "server_ready_ms,lag_p50_ms,lag_p99_ms,lag_max_ms,released_p50_ms,"
               "released_max_ms,first_ok_ms,release_lag_ms,fatal_before_ready,"
               "rej_57p03_before_ready,recovery_ms,fatal_per_25ms,wait_ms,attempts,probes,"
               "warmups,leaders,conns_logged,fatal,rej_57p03,errors,cpu_ms,killed,aborted,"
               "uplimit_ms,ratio_vs_limit,ratio_vs_incident,ratio_vs_naive,cpu_vs_naive,note\n");
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        char note_txt[160];
        copy_str(note_txt, sizeof(note_txt), r->err);
        fprintf(f,
                "%s,%s,%d,%g,%d,%d,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,"
                "%.1f,%d,%d,%.1f,%.3f,%.1f,%ld,%ld,%ld,%d,%d,%d,%d,%ld,%.1f,%d,%d,%.1f,%.3f,"
                "%.3f,%.3f,%.3f,%s\n",
                sc_name[r->sc], st_name[r->st], r->n, r->retry_s, r->round, r->ok, r->p50, r->p99,
                r->max, r->all_ready, r->server_ready, r->lag_p50, r->lag_p99, r->lag_max,
                r->rel_p50, r->rel_max, r->first_ok, r->release_lag, r->fatal_pre, r->rej57_pre,
                r->recovery_ms, r->fatal_per25, r->wait_ms, r->attempts, r->probes, r->warmups,
                r->leaders, r->conns, r->fatal, r->rej57, r->errors, r->cpu_ms, r->killed,
                r->aborted, uplimit_ms(r->n), fig(r, F_LIMIT), fig(r, F_VS_INCIDENT),
                fig(r, F_VS_NAIVE), fig(r, F_CPU_NAIVE), note_txt);
    }
    fclose(f);
    if (!(f = open_out(dir, "coldstart-workers.csv")))
        return -1;
    fprintf(f, "scenario,strategy,n,retry_s,round,worker,ok,t_ms,lag_ms,released_ms,attempts,"
               "errors\n");
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        for (int k = 0; k < r->n; k++)
            fprintf(f, "%s,%s,%d,%g,%d,%d,%d,%.2f,%.2f,%.2f,%u,%u\n", sc_name[r->sc],
                    st_name[r->st], r->n, r->retry_s, r->round, k, !isnan(r->t_ms[k]), r->t_ms[k],
                    r->lag_ms[k], r->rel_ms[k], r->w_attempts[k], r->w_errors[k]);
    }
    fclose(f);
    return 0;
}
