/* The contended cold-start benchmark's report: the Markdown table and headline, the CSV, the
 * gnuplot chart, over the driver's results. See coldstart.c. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "coldstart.h"
/* ---------------------------------------------------------------- output */

struct result *g_res;
int g_nres;

static const struct result *find_res(enum scenario sc, enum strategy st, int n)
{
    for (int i = 0; i < g_nres; i++) {
        if (g_res[i].sc == sc && g_res[i].st == st && g_res[i].n == n)
            return &g_res[i];
    }
    return NULL;
}

void fmt_ms(char *buf, size_t len, double v)
{
    if (isnan(v))
        snprintf(buf, len, "—");
    else
        snprintf(buf, len, "%.0f", v);
}

/* "0.72" (ours / baseline's time to all ready), or why there is none. */
static void fmt_ratio(char *buf, size_t len, const struct result *r, enum strategy base_st)
{
    const struct result *b = find_res(r->sc, base_st, r->n);
    if (!b)
        buf[0] = '\0';
    else if (isnan(b->all_ready))
        snprintf(buf, len, "%s: %d/%d failed", st_name[base_st], b->n - b->ok, b->n);
    else if (isnan(r->all_ready))
        snprintf(buf, len, "—");
    else
        snprintf(buf, len, "%.2f", r->all_ready / b->all_ready);
}

void print_table(FILE *f)
{
    fprintf(f, "| scenario | strategy | N | ok | p50 ms | p99 ms | all ready ms | server ready ms "
               "| lag p50/p99/max ms | released p50/max ms | attempts | conns logged | FATAL | 57P03 | errors "
               "| CPU ms | all ready ÷ incident | ÷ naive |\n");
    fprintf(f, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        char p50[32], p99[32], all[32], srv[32], l1[32], l2[32], l3[32], ri[64], rn[64], att[48];
        char rel[48] = "—";
        if (!isnan(r->rel_p50))
            snprintf(rel, sizeof(rel), "%.0f / %.0f", r->rel_p50, r->rel_max);
        fmt_ms(p50, sizeof(p50), r->p50);
        fmt_ms(p99, sizeof(p99), r->p99);
        fmt_ms(all, sizeof(all), r->all_ready);
        fmt_ms(srv, sizeof(srv), r->server_ready);
        fmt_ms(l1, sizeof(l1), r->lag_p50);
        fmt_ms(l2, sizeof(l2), r->lag_p99);
        fmt_ms(l3, sizeof(l3), r->lag_max);
        fmt_ratio(ri, sizeof(ri), r, ST_INCIDENT);
        fmt_ratio(rn, sizeof(rn), r, ST_NAIVE);
        if (r->st == ST_WARMLOCK || r->st == ST_COORD)
            snprintf(att, sizeof(att), "%ld + %ld probes", r->attempts, r->probes);
        else
            snprintf(att, sizeof(att), "%ld", r->attempts);
        fprintf(f, "| %s | %s | %d | %d/%d%s | %s | %s | %s | %s | %s / %s / %s | %s | %s | %d | %d "
                   "| %d | %ld | %.0f | %s | %s |\n",
                sc_name[r->sc], st_name[r->st], r->n, r->ok, r->n, r->aborted ? " (aborted)" : "",
                p50, p99, all, srv, l1, l2, l3, rel, att, r->conns, r->fatal, r->rej57, r->errors,
                r->cpu_ms, ri, rn);
    }
}

/* warmlock against incident and naive at each scenario's largest N. */
void print_headline(FILE *f, int nmax)
{
    int any = 0;
    for (int sc = 0; sc < SC_COUNT; sc++) {
        const struct result *w = find_res((enum scenario)sc, ST_WARMLOCK, nmax);
        const struct result *inc = find_res((enum scenario)sc, ST_INCIDENT, nmax);
        const struct result *nai = find_res((enum scenario)sc, ST_NAIVE, nmax);
        if (!w || (!inc && !nai))
            continue;
        if (!any++) {
            fprintf(f, "\n| scenario, N=%d | warmlock all ready ms | ÷ incident | ÷ naive "
                       "| FATAL warmlock / incident / naive | errors warmlock / incident / naive |\n"
                       "|---|--:|--:|--:|--:|--:|\n",
                    nmax);
        }
        char all[32], ri[64] = "—", rn[64] = "—", fi[16] = "—", fn[16] = "—", ei[24] = "—",
                                                   en[24] = "—";
        fmt_ms(all, sizeof(all), w->all_ready);
        if (inc) {
            fmt_ratio(ri, sizeof(ri), w, ST_INCIDENT);
            snprintf(fi, sizeof(fi), "%d", inc->fatal);
            snprintf(ei, sizeof(ei), "%ld", inc->errors);
        }
        if (nai) {
            fmt_ratio(rn, sizeof(rn), w, ST_NAIVE);
            snprintf(fn, sizeof(fn), "%d", nai->fatal);
            snprintf(en, sizeof(en), "%ld", nai->errors);
        }
        fprintf(f, "| %s | %s | %s | %s | %d / %s / %s | %ld / %s / %s |\n", sc_name[sc], all, ri,
                rn, w->fatal, fi, fn, w->errors, ei, en);
    }
}

int write_csv(const char *dir)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/coldstart.csv", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "coldstart: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "scenario,strategy,n,ok,p50_ms,p99_ms,max_ms,all_ready_ms,server_ready_ms,"
               "lag_p50_ms,lag_p99_ms,lag_max_ms,released_p50_ms,released_max_ms,attempts,probes,warmups,leaders,conns_logged,"
               "fatal,rej_57p03,errors,cpu_ms,killed,aborted,ratio_vs_incident,ratio_vs_naive,"
               "note\n");
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        const struct result *inc = find_res(r->sc, ST_INCIDENT, r->n);
        const struct result *nai = find_res(r->sc, ST_NAIVE, r->n);
        double ri = inc ? r->all_ready / inc->all_ready : NAN;
        double rn = nai ? r->all_ready / nai->all_ready : NAN;
        char note_txt[160];
        copy_str(note_txt, sizeof(note_txt), r->err);
        fprintf(f, "%s,%s,%d,%d,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%ld,%ld,%ld,%d,%d,"
                   "%d,%d,%ld,%.1f,%d,%d,%.3f,%.3f,%s\n",
                sc_name[r->sc], st_name[r->st], r->n, r->ok, r->p50, r->p99, r->max, r->all_ready,
                r->server_ready, r->lag_p50, r->lag_p99, r->lag_max, r->rel_p50, r->rel_max,
                r->attempts, r->probes,
                r->warmups, r->leaders, r->conns, r->fatal, r->rej57, r->errors, r->cpu_ms,
                r->killed, r->aborted, ri, rn, note_txt);
    }
    fclose(f);
    snprintf(path, sizeof(path), "%s/coldstart-workers.csv", dir);
    if (!(f = fopen(path, "w"))) {
        fprintf(stderr, "coldstart: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "scenario,strategy,n,worker,ok,t_ms,lag_ms,released_ms,attempts,errors\n");
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        for (int k = 0; k < r->n; k++)
            fprintf(f, "%s,%s,%d,%d,%d,%.2f,%.2f,%.2f,%u,%u\n", sc_name[r->sc], st_name[r->st],
                    r->n, k, !isnan(r->t_ms[k]), r->t_ms[k], r->lag_ms[k], r->rel_ms[k],
                    r->w_attempts[k],
                    r->w_errors[k]);
    }
    fclose(f);
    return 0;
}

/* A PNG (gnuplot, pngcairo): one panel per scenario, time until all N workers ran their query
 * against N, one line per strategy, and the server's own ready time. The script is kept beside
 * it (coldstart.gp) with its data inline. */
int write_plot(const char *dir, const int *ns, int nn)
{
    char gp[600], png[600];
    snprintf(gp, sizeof(gp), "%s/coldstart.gp", dir);
    snprintf(png, sizeof(png), "%s/coldstart.png", dir);
    FILE *f = fopen(gp, "w");
    if (!f) {
        fprintf(stderr, "coldstart: cannot write %s: %s\n", gp, strerror(errno));
        return -1;
    }
    int scs[SC_COUNT], nsc = 0;
    for (int sc = 0; sc < SC_COUNT; sc++) {
        for (int i = 0; i < g_nres; i++) {
            if (g_res[i].sc == (enum scenario)sc) {
                scs[nsc++] = sc;
                break;
            }
        }
    }
    fprintf(f, "# generated by bench/coldstart; run: gnuplot %s\n", gp);
    for (int k = 0; k < nsc; k++) {
        for (int st = 0; st < ST_COUNT; st++) {
            fprintf(f, "$d%d_%d << EOD\n", scs[k], st);
            for (int j = 0; j < nn; j++) {
                const struct result *r = find_res((enum scenario)scs[k], (enum strategy)st, ns[j]);
                if (r && !isnan(r->all_ready))
                    fprintf(f, "%d %.3f\n", ns[j], r->all_ready / 1000.0);
            }
            fprintf(f, "EOD\n");
        }
        fprintf(f, "$s%d << EOD\n", scs[k]);
        for (int j = 0; j < nn; j++) { /* the server's ready time: median over the strategies */
            double v[ST_COUNT];
            int m = 0;
            for (int st = 0; st < ST_COUNT; st++) {
                const struct result *r = find_res((enum scenario)scs[k], (enum strategy)st, ns[j]);
                if (r && !isnan(r->server_ready))
                    v[m++] = r->server_ready;
            }
            wlt_sort_double(v, (size_t)m);
            if (m)
                fprintf(f, "%d %.3f\n", ns[j], v[(m - 1) / 2] / 1000.0);
        }
        fprintf(f, "EOD\n");
    }
    fprintf(f, "set terminal pngcairo size 1400,%d font ',10'\n", nsc > 2 ? 1000 : 520);
    fprintf(f, "set output '%s'\n", png);
    fprintf(f, "set multiplot layout %d,2 title 'warmlock cold-start benchmark: time from T0 until "
               "all N workers ran their first query (s); failed runs have no point'\n",
            (nsc + 1) / 2);
    fprintf(f, "set logscale x 2\nset xtics (");
    for (int j = 0; j < nn; j++)
        fprintf(f, "%s%d", j ? ", " : "", ns[j]);
    fprintf(f, ")\nset xrange [%g:%g]\nset yrange [0:*]\nset grid\nset key top left font ',9'\n",
            ns[0] / 1.4, ns[nn - 1] * 1.4);
    fprintf(f, "set xlabel 'N worker processes'\nset ylabel 's'\n");
    static const char *const colors[ST_COUNT] = {"#d62728", "#ff7f0e", "#8c564b", "#1f77b4",
                                                 "#2ca02c"};
    for (int k = 0; k < nsc; k++) {
        fprintf(f, "set title '%s start'\nplot ", sc_name[scs[k]]);
        for (int st = 0; st < ST_COUNT; st++)
            fprintf(f, "$d%d_%d with linespoints lw 2 pt 7 lc rgb '%s' title '%s', \\\n     ",
                    scs[k], st, colors[st], st_name[st]);
        fprintf(f, "$s%d with lines dt 2 lw 1 lc rgb 'black' title 'server ready'\n", scs[k]);
    }
    fprintf(f, "unset multiplot\n");
    fclose(f);
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", O_WRONLY);
        if (nul >= 0 && !g_verbose)
            dup2(nul, 2); /* "Skipping data file with no valid points" for all-failed lines */
        execlp("gnuplot", "gnuplot", gp, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "coldstart: gnuplot failed (status %d); the script is %s\n", st, gp);
        return -1;
    }
    return 0;
}
