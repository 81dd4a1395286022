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
static void fmt_ratio(char *buf, size_t len, const struct cell *c, enum strategy base_st,
                      enum fig f)
{
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

/* ÷ limit: the median, and the worst run when there are several. */
static void fmt_limit(char *buf, size_t len, const struct cell *c)
{
    struct figstat s = cell_stat(c, F_LIMIT);
    if (s.n == 0)
        snprintf(buf, len, "—");
    else if (c->nruns > 1)
        snprintf(buf, len, "%.2f (max %.2f)", s.p50, s.max);
    else
        snprintf(buf, len, "%.2f", s.p50);
}

/* The cell's all-ready median, and how many runs had every worker ready when not all did. */
static void fmt_all(char *buf, size_t len, const struct cell *c)
{
    struct figstat s = cell_stat(c, F_ALL);
    fmt_ms(buf, len, s.p50);
    if (s.n > 0 && s.n < c->nruns)
        snprintf(buf + strlen(buf), len - strlen(buf), " (%d/%d runs)", s.n, c->nruns);
}

void print_table(FILE *f)
{
    fprintf(f, "| scenario | strategy | N | runs | ok | p50 ms | p99 ms | all ready ms "
               "| server ready ms | lag p50/p99/max ms | released p50/max ms | attempts "
               "| conns logged | FATAL | 57P03 | errors | CPU ms | ÷ limit "
               "| all ready ÷ incident | ÷ naive | CPU ÷ naive |\n");
    fprintf(f, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:"
               "|--:|--:|\n");
    for (int i = 0; i < g_ncells; i++) {
        const struct cell *c = &g_cells[i];
        char sc[64], p50[32], p99[32], all[48], srv[32], l1[32], l2[32], l3[32], r1[32],
            r2[32], at[32], pr[32], cn[32], fa[32], rj[32], er[32], cpu[32], lim[48], ri[64],
            rn[64], rc[32], att[80], rel[80] = "—";
        int total, failed = workers_failed(c, &total);
        cell_label(sc, sizeof(sc), c->sc, c->retry_s);
        fmt_med(p50, sizeof(p50), c, F_P50);
        fmt_med(p99, sizeof(p99), c, F_P99);
        fmt_all(all, sizeof(all), c);
        fmt_med(srv, sizeof(srv), c, F_SRV);
        fmt_med(l1, sizeof(l1), c, F_LAG50);
        fmt_med(l2, sizeof(l2), c, F_LAG99);
        fmt_med(l3, sizeof(l3), c, F_LAGMAX);
        fmt_med(r1, sizeof(r1), c, F_REL50);
        fmt_med(r2, sizeof(r2), c, F_RELMAX);
        fmt_med(at, sizeof(at), c, F_ATTEMPTS);
        fmt_med(pr, sizeof(pr), c, F_PROBES);
        fmt_med(cn, sizeof(cn), c, F_CONNS);
        fmt_med(fa, sizeof(fa), c, F_FATAL);
        fmt_med(rj, sizeof(rj), c, F_REJ57);
        fmt_med(er, sizeof(er), c, F_ERRORS);
        fmt_med(cpu, sizeof(cpu), c, F_CPU);
        fmt_limit(lim, sizeof(lim), c);
        fmt_ratio(ri, sizeof(ri), c, ST_INCIDENT, F_VS_INCIDENT);
        fmt_ratio(rn, sizeof(rn), c, ST_NAIVE, F_VS_NAIVE);
        fmt_ratio(rc, sizeof(rc), c, ST_NAIVE, F_CPU_NAIVE);
        if (strcmp(r1, "—"))
            snprintf(rel, sizeof(rel), "%s / %s", r1, r2);
        if (st_warmlock(c->st))
            snprintf(att, sizeof(att), "%s + %s probes", at, pr);
        else
            snprintf(att, sizeof(att), "%s", at);
        int aborted = 0;
        for (int k = 0; k < c->nruns; k++)
            aborted += c->run[k]->aborted;
        fprintf(f, "| %s | %s | %d | %d | %d/%d%s | %s | %s | %s | %s | %s / %s / %s | %s | %s "
                   "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
                sc, st_name[c->st], c->n, c->nruns, total - failed, total,
                aborted ? " (aborted)" : "", p50, p99, all, srv, l1, l2, l3, rel, att, cn, fa,
                rj, er, cpu, lim, ri, rn, rc);
    }
}

/* "a / b" with `prec` decimals, or "—" when there is nothing. */
static void fmt_pair(char *buf, size_t len, int have, double a, double b, int prec)
{
    if (have)
        snprintf(buf, len, "%.*f / %.*f", prec, a, prec, b);
    else
        snprintf(buf, len, "—");
}

/* Every cell whose server starts: the release lag over its runs, beside the FATAL lines
 * logged before the server's ready line (for warmlock: its prober's) and their rate. */
void print_release_table(FILE *f)
{
    int any = 0;
    for (int i = 0; i < g_ncells; i++) {
        const struct cell *c = &g_cells[i];
        if (c->sc == SC_UP)
            continue;
        if (!any++)
            fprintf(f, "| scenario | strategy | N | runs | server ready ms "
                       "| release lag p50 / p99 ms | min / max ms | FATAL before ready "
                       "| 57P03 before ready | recovery ms | FATAL per 25 ms p50 / max |\n"
                       "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        char sc[64], srv[32], lag[64], mm[64], fa[32], rj[32], rec[32], per[64];
        struct figstat l = cell_stat(c, F_RLAG), p = cell_stat(c, F_PER25);
        cell_label(sc, sizeof(sc), c->sc, c->retry_s);
        fmt_med(srv, sizeof(srv), c, F_SRV);
        fmt_med(fa, sizeof(fa), c, F_FATAL_PRE);
        fmt_med(rj, sizeof(rj), c, F_REJ57_PRE);
        fmt_med(rec, sizeof(rec), c, F_RECOVERY);
        fmt_pair(lag, sizeof(lag), l.n, l.p50, l.p99, 0);
        fmt_pair(mm, sizeof(mm), l.n, l.min, l.max, 0);
        fmt_pair(per, sizeof(per), p.n, p.p50, p.max, 2);
        fprintf(f, "| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s |\n", sc,
                st_name[c->st], c->n, c->nruns, srv, lag, mm, fa, rj, rec, per);
    }
}

/* pgbouncer-restart: per server_login_retry setting, how long after the server's ready line
 * `warmlock wait` through pgbouncer returned and every worker was ready. */
void print_bouncer_table(FILE *f)
{
    int any = 0;
    for (int i = 0; i < g_ncells; i++) {
        const struct cell *c = &g_cells[i];
        if (c->sc != SC_BOUNCER)
            continue;
        if (!any++)
            fprintf(f, "| server_login_retry s | strategy | N | runs | ok | server ready ms "
                       "| `warmlock wait` − server ready ms | all ready − server ready ms "
                       "| FATAL | errors |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        char srv[32], wt[32], al[32], fa[32], er[32];
        int total, failed = workers_failed(c, &total);
        fmt_med(srv, sizeof(srv), c, F_SRV);
        fmt_med(wt, sizeof(wt), c, F_WAIT_AFTER);
        fmt_med(al, sizeof(al), c, F_ALL_AFTER);
        fmt_med(fa, sizeof(fa), c, F_FATAL);
        fmt_med(er, sizeof(er), c, F_ERRORS);
        fprintf(f, "| %g | %s | %d | %d | %d/%d | %s | %s | %s | %s | %s |\n", c->retry_s,
                st_name[c->st], c->n, c->nruns, total - failed, total, srv, wt, al, fa, er);
    }
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
            fmt_ratio(ri, sizeof(ri), w, ST_INCIDENT, F_VS_INCIDENT);
            fmt_med(fi, sizeof(fi), inc, F_FATAL);
            fmt_med(ei, sizeof(ei), inc, F_ERRORS);
        }
        if (nai) {
            fmt_ratio(rn, sizeof(rn), w, ST_NAIVE, F_VS_NAIVE);
            fmt_med(fn, sizeof(fn), nai, F_FATAL);
            fmt_med(en, sizeof(en), nai, F_ERRORS);
        }
        fprintf(f, "| %s | %s | %s | %s | %s / %s / %s | %s / %s / %s |\n", sc, all, ri, rn, fw,
                fi, fn, ew, ei, en);
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
        fprintf(f, "%s,%s,%d,%g,%d,%d,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,"
                   "%.1f,%d,%d,%.1f,%.3f,%.1f,%ld,%ld,%ld,%d,%d,%d,%d,%ld,%.1f,%d,%d,%.1f,%.3f,"
                   "%.3f,%.3f,%.3f,%s\n",
                sc_name[r->sc], st_name[r->st], r->n, r->retry_s, r->round, r->ok, r->p50,
                r->p99, r->max, r->all_ready, r->server_ready, r->lag_p50, r->lag_p99,
                r->lag_max, r->rel_p50, r->rel_max, r->first_ok, r->release_lag, r->fatal_pre,
                r->rej57_pre, r->recovery_ms, r->fatal_per25, r->wait_ms, r->attempts,
                r->probes, r->warmups, r->leaders, r->conns, r->fatal, r->rej57, r->errors,
                r->cpu_ms, r->killed, r->aborted, uplimit_ms(r->n), fig(r, F_LIMIT),
                fig(r, F_VS_INCIDENT), fig(r, F_VS_NAIVE), fig(r, F_CPU_NAIVE), note_txt);
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
                    st_name[r->st], r->n, r->retry_s, r->round, k, !isnan(r->t_ms[k]),
                    r->t_ms[k], r->lag_ms[k], r->rel_ms[k], r->w_attempts[k], r->w_errors[k]);
    }
    fclose(f);
    return 0;
}
