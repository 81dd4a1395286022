/* The contended cold-start benchmark's cells: a run's results gathered by scenario, strategy,
 * N and pgbouncer setting, the figures a table shows of one run (ratios against baselines and
 * against the physical limit), and their statistics over a cell's runs. See coldstart.c. */
#include <math.h>
#include <stdlib.h>

#include "coldstart.h"

struct cell *g_cells;
int g_ncells;

double pct(const double *v, int n, double p)
{
    if (n <= 0)
        return NAN;
    int k = (int)ceil(p / 100.0 * n) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

static int same_cell(const struct cell *c, enum scenario sc, enum strategy st, int n,
                     double retry_s)
{
    return c->sc == sc && c->st == st && c->n == n && c->retry_s == retry_s;
}

void cells_build(void)
{
    free(g_cells);
    g_ncells = 0;
    g_cells = calloc((size_t)(g_nres > 0 ? g_nres : 1), sizeof(*g_cells));
    if (!g_cells)
        return;
    for (int i = 0; i < g_nres; i++) {
        const struct result *r = &g_res[i];
        struct cell *c = (struct cell *)cell_find(r->sc, r->st, r->n, r->retry_s);
        if (!c) {
            c = &g_cells[g_ncells++];
            c->sc = r->sc;
            c->st = r->st;
            c->n = r->n;
            c->retry_s = r->retry_s;
        }
        if (c->nruns < MAX_RUNS)
            c->run[c->nruns++] = r;
    }
}

const struct cell *cell_find(enum scenario sc, enum strategy st, int n, double retry_s)
{
    for (int i = 0; i < g_ncells; i++) {
        if (same_cell(&g_cells[i], sc, st, n, retry_s))
            return &g_cells[i];
    }
    return NULL;
}

void cell_label(char *buf, size_t len, enum scenario sc, double retry_s)
{
    if (sc == SC_BOUNCER)
        snprintf(buf, len, "%s (retry %g s)", sc_name[sc], retry_s);
    else
        snprintf(buf, len, "%s", sc_name[sc]);
}

double uplimit_ms(int n)
{
    const struct cell *c = cell_find(SC_UP, ST_NAIVE, n, 0);
    return c ? cell_stat(c, F_ALL).p50 : NAN;
}

/* A baseline's figure for run r: its run of the same round, else its cell's median. */
static double base_fig(const struct result *r, enum strategy base_st, enum fig f)
{
    const struct cell *b = cell_find(r->sc, base_st, r->n, r->retry_s);
    if (!b)
        return NAN;
    for (int i = 0; i < b->nruns; i++) {
        if (b->run[i]->round == r->round)
            return fig(b->run[i], f);
    }
    return cell_stat(b, f).p50;
}

double fig(const struct result *r, enum fig f)
{
    switch (f) {
    case F_P50: return r->p50;
    case F_P99: return r->p99;
    case F_MAX: return r->max;
    case F_ALL: return r->all_ready;
    case F_SRV: return r->server_ready;
    case F_LAG50: return r->lag_p50;
    case F_LAG99: return r->lag_p99;
    case F_LAGMAX: return r->lag_max;
    case F_REL50: return r->rel_p50;
    case F_RELMAX: return r->rel_max;
    case F_CPU: return r->cpu_ms;
    case F_RLAG: return r->release_lag;
    /* before ready: only when the server started and said when it was ready */
    case F_FATAL_PRE: return r->sc == SC_UP || isnan(r->server_ready) ? NAN : r->fatal_pre;
    case F_REJ57_PRE: return r->sc == SC_UP || isnan(r->server_ready) ? NAN : r->rej57_pre;
    case F_PER25: return r->fatal_per25;
    case F_RECOVERY: return r->recovery_ms;
    case F_REACT: return r->react_ms;
    case F_AFTER_REACT: return r->release_lag - r->react_ms;
    case F_FATAL: return r->fatal;
    case F_REJ57: return r->rej57;
    case F_CONNS: return r->conns;
    case F_ERRORS: return (double)r->errors;
    case F_ATTEMPTS: return (double)r->attempts;
    case F_PROBES: return (double)r->probes;
    case F_WAIT_AFTER: return r->wait_ms - r->server_ready;
    case F_ALL_AFTER: return r->all_ready - r->server_ready;
    case F_LIMIT: {
        double up = uplimit_ms(r->n);
        double srv = r->sc == SC_UP ? 0 : r->server_ready;
        return r->all_ready / (srv + up);
    }
    case F_VS_INCIDENT: return r->all_ready / base_fig(r, ST_INCIDENT, F_ALL);
    case F_VS_NAIVE: return r->all_ready / base_fig(r, ST_NAIVE, F_ALL);
    case F_CPU_NAIVE: return r->cpu_ms / base_fig(r, ST_NAIVE, F_CPU);
    }
    return NAN;
}

struct figstat cell_stat(const struct cell *c, enum fig f)
{
    double v[MAX_RUNS];
    struct figstat s = {0, NAN, NAN, NAN, NAN};
    for (int i = 0; i < c->nruns; i++) {
        double x = fig(c->run[i], f);
        if (!isnan(x))
            v[s.n++] = x;
    }
    if (s.n == 0)
        return s;
    wlt_sort_double(v, (size_t)s.n);
    s.p50 = pct(v, s.n, 50);
    s.p99 = pct(v, s.n, 99);
    s.min = v[0];
    s.max = v[s.n - 1];
    return s;
}
