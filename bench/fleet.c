/*
 * The fleet benchmark: H hosts (separate segment names) of N processes each start at the
 * same instant as the server after a restart, each needing the target warm; warm_sql is
 * heavy (pg_sleep plus a row written). Per host count H and per mode (per-host warm-ups,
 * and fleet mode, WL_PG_FLEET), it reports the heavy warm-ups the server ran (the rows
 * written: H is the baseline, 1 the goal) and the time until every process was ready,
 * from the server's start and from its own "ready to accept connections" log line, side by
 * side, with fleet mode's ratio against the per-host cell of the same run.
 *
 * Output: a Markdown table on stdout (and CSV with --csv FILE). Exit 0; 1 if a worker
 * failed or the warm-ups counted differ from the goal; 2 usage; 77 PostgreSQL is not
 * available here.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pgharness.h"
#include "proc.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define MAXH 64
#define MAXP 1024
#define MS   1000000ull

static const char usage_text[] =
    "usage: bench/fleet [--hosts LIST] [--procs N] [--warm-sleep S] [--runs R] [--csv FILE]\n"
    "\n"
    "Fleet mode against a real PostgreSQL that the benchmark starts itself: for each host\n"
    "count H, H hosts (separate segment names) of N processes each start together with the\n"
    "server after a restart; warm_sql is 'SELECT pg_sleep(S)' plus a row written. Each H runs\n"
    "twice, per-host warm-ups and fleet mode (WL_PG_FLEET). Reported: the heavy warm-ups the\n"
    "server ran (rows written; H without fleet mode, 1 the goal with it) and the time until\n"
    "every process was ready, from the server's start and from its 'ready to accept\n"
    "connections' line (median over the runs).\n"
    "\n"
    "  --hosts LIST     host counts, comma-separated (default 1,4,8; at most 64)\n"
    "  --procs N        processes per host (default 16; H*N at most 1024)\n"
    "  --warm-sleep S   seconds of pg_sleep in warm_sql (default 0.5)\n"
    "  --runs R         runs per cell (default 1)\n"
    "  --csv FILE       also write the cells as CSV\n"
    "  --help\n"
    "\n"
    "Exit status: 0; 1 a worker failed, or fleet mode ran other than one heavy warm-up;\n"
    "2 usage; 77 PostgreSQL is not available.\n";

struct shared {
    struct wlt_barrier start;
    int rc[MAXP];
    uint64_t ready_rt[MAXP]; /* CLOCK_REALTIME when ensure returned */
    char err[MAXP][256];
};

struct cell {
    int hosts, procs, fleet;
    const char *conninfo, *warm_sql;
    char segs[MAXH][64];
    struct shared *sh;
};

static int worker(void *arg, int i)
{
    struct cell *c = arg;
    struct wl_segment *seg;
    struct wl_pg_opts o;
    struct wl_result res;
    int rc, r;

    memset(&o, 0, sizeof(o));
    o.warm_sql = c->warm_sql;
    o.flags = c->fleet ? WL_PG_FLEET : 0;
    o.wait.timeout_ms = 120000;
    r = wl_open(c->segs[i / c->procs], NULL, &seg);
    wlt_barrier_wait(&c->sh->start, (uint32_t)(c->hosts * c->procs + 1));
    if (r < 0) {
        snprintf(c->sh->err[i], sizeof(c->sh->err[i]), "wl_open: %s", wl_last_error());
        c->sh->rc[i] = -1;
        return 1;
    }
    rc = wl_pg_ensure(seg, c->conninfo, &o, &res);
    c->sh->ready_rt[i] = wlt_realtime_ns();
    c->sh->rc[i] = rc;
    if (rc < 0)
        snprintf(c->sh->err[i], sizeof(c->sh->err[i]), "%s", res.error);
    return rc < 0;
}

struct outcome {
    long warmups;    /* heavy warm-ups the server ran */
    double ready_ms; /* all ready, from pgh_start */
    double lag_ms;   /* all ready, from the server's ready line */
    int errors;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int run_cell(struct pgh *h, struct cell *c, struct outcome *out)
{
    pid_t pids[MAXP];
    uint64_t t0_rt, last = 0;
    long mark;
    long long ready_rt;
    char buf[64];
    int n = c->hosts * c->procs, i;

    memset(out, 0, sizeof(*out));
    memset(c->sh, 0, sizeof(*c->sh));
    if (pgh_psql(h, "TRUNCATE fleet_bench_runs") < 0 || pgh_stop(h, "fast") < 0)
        return -1;
    for (i = 0; i < c->hosts; i++)
        snprintf(c->segs[i], sizeof(c->segs[i]), "%s", wlt_segname());
    for (i = 0; i < n; i++)
        if ((pids[i] = wlt_spawn(worker, c, i)) < 0)
            return -1;
    mark = pgh_log_mark(h);
    wlt_barrier_wait(&c->sh->start, (uint32_t)(n + 1));
    t0_rt = wlt_realtime_ns();
    if (pgh_start(h, 0) < 0)
        return -1;
    for (i = 0; i < n; i++) {
        int st = wlt_wait(pids[i], 180000);
        if (st != 0) {
            out->errors++;
            fprintf(stderr, "fleet: worker %d (host %d): status %d: %s\n", i, i / c->procs, st,
                    c->sh->err[i]);
        } else if (c->sh->ready_rt[i] > last) {
            last = c->sh->ready_rt[i];
        }
    }
    if (pgh_wait_ready(h, 60000) < 0)
        return -1;
    ready_rt = pgh_log_ready_realtime_ns(h, mark);
    out->ready_ms = last ? (double)(last - t0_rt) / 1e6 : -1;
    out->lag_ms = last && ready_rt ? ((double)last - (double)ready_rt) / 1e6 : -1;
    if (pgh_query(h, "SELECT count(*) FROM fleet_bench_runs", buf, sizeof(buf)) < 0)
        return -1;
    out->warmups = strtol(buf, NULL, 10);
    for (i = 0; i < c->hosts; i++)
        wl_unlink(c->segs[i]);
    return 0;
}

static int parse_hosts(const char *s, int *v, int *n)
{
    char *end;
    *n = 0;
    while (*s) {
        long x = strtol(s, &end, 10);
        if (end == s || x < 1 || x > MAXH || *n >= 16)
            return -1;
        v[(*n)++] = (int)x;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *n ? 0 : -1;
}

int main(int argc, char **argv)
{
    int hosts[16] = {1, 4, 8}, nh = 3, procs = 16, runs = 1, i, r, bad = 0;
    double sleep_s = 0.5;
    const char *csv = NULL, *why;
    char warm_sql[256];
    struct pgh h;
    struct cell c;
    FILE *cf = NULL;

    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "fleet: %s needs a value (try --help)\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--hosts")) {
            if (parse_hosts(v, hosts, &nh) < 0) {
                fprintf(stderr, "fleet: bad --hosts '%s': want e.g. 1,4,8 (1..%d)\n", v, MAXH);
                return 2;
            }
        } else if (!strcmp(a, "--procs")) {
            procs = atoi(v);
        } else if (!strcmp(a, "--warm-sleep")) {
            sleep_s = atof(v);
        } else if (!strcmp(a, "--runs")) {
            runs = atoi(v);
        } else if (!strcmp(a, "--csv")) {
            csv = v;
        } else {
            fprintf(stderr, "fleet: unknown option %s (try --help)\n", a);
            return 2;
        }
    }
    if (procs < 1 || runs < 1 || runs > 99 || sleep_s < 0 || sleep_s > 60) {
        fprintf(stderr, "fleet: bad --procs, --runs or --warm-sleep (try --help)\n");
        return 2;
    }
    for (i = 0; i < nh; i++)
        if (hosts[i] * procs > MAXP) {
            fprintf(stderr, "fleet: %d hosts x %d processes is more than %d\n", hosts[i], procs,
                    MAXP);
            return 2;
        }
    if ((why = pgh_unavailable())) {
        printf("skipped: %s\n", why);
        return 77;
    }
    if (pgh_init(&h, NULL, NULL, NULL) < 0 || pgh_start(&h, 1) < 0 ||
        pgh_psql(&h, "CREATE TABLE fleet_bench_runs (id serial, at timestamptz DEFAULT now())") <
            0) {
        pgh_destroy(&h);
        return 1;
    }
    snprintf(warm_sql, sizeof(warm_sql),
             "SELECT pg_sleep(%.3f); INSERT INTO fleet_bench_runs DEFAULT VALUES", sleep_s);
    memset(&c, 0, sizeof(c));
    c.conninfo = h.conninfo;
    c.warm_sql = warm_sql;
    c.procs = procs;
    c.sh = wlt_shared(sizeof(struct shared));
    if (csv && !(cf = fopen(csv, "w"))) {
        fprintf(stderr, "fleet: cannot write %s: %s\n", csv, strerror(errno));
        pgh_destroy(&h);
        return 1;
    }
    if (cf)
        fprintf(cf,
                "hosts,procs,mode,run,heavy_warmups,all_ready_ms,after_server_ready_ms,errors\n");
    printf("fleet: %d process%s per host, warm_sql = %s, %d run%s per cell, after a restart\n\n",
           procs, procs == 1 ? "" : "es", warm_sql, runs, runs == 1 ? "" : "s");
    printf("| H | N | mode | heavy warm-ups | all ready from start (ms) | all ready from server "
           "ready (ms) | errors |\n| ---: | ---: | --- | ---: | ---: | ---: | ---: |\n");
    for (i = 0; i < nh; i++) {
        double med[2][2] = {{0}};
        long wu[2] = {0, 0};
        int errs[2] = {0, 0};
        for (int mode = 0; mode < 2; mode++) {
            double ready[100], lag[100];
            c.hosts = hosts[i];
            c.fleet = mode;
            for (int k = 0; k < runs; k++) {
                struct outcome o;
                if ((r = run_cell(&h, &c, &o)) < 0) {
                    fprintf(stderr, "fleet: the cell H=%d %s could not run\n", hosts[i],
                            mode ? "fleet" : "per-host");
                    pgh_destroy(&h);
                    return 1;
                }
                ready[k] = o.ready_ms;
                lag[k] = o.lag_ms;
                if (o.warmups > wu[mode])
                    wu[mode] = o.warmups;
                errs[mode] += o.errors;
                if (cf)
                    fprintf(cf, "%d,%d,%s,%d,%ld,%.1f,%.1f,%d\n", hosts[i], procs,
                            mode ? "fleet" : "per-host", k, o.warmups, o.ready_ms, o.lag_ms,
                            o.errors);
            }
            qsort(ready, (size_t)runs, sizeof(double), cmp_double);
            qsort(lag, (size_t)runs, sizeof(double), cmp_double);
            med[mode][0] = ready[runs / 2];
            med[mode][1] = lag[runs / 2];
            printf("| %d | %d | %s | %ld | %.0f | %.0f | %d |\n", hosts[i], procs,
                   mode ? "fleet" : "per-host", wu[mode], med[mode][0], med[mode][1], errs[mode]);
            fflush(stdout);
            bad |= errs[mode] != 0 || (mode == 1 && wu[1] != 1);
        }
        printf("| %d | %d | fleet ÷ per-host | %.2f | %.2f | %.2f | |\n", hosts[i], procs,
               wu[0] ? (double)wu[1] / (double)wu[0] : 0.0,
               med[0][0] > 0 ? med[1][0] / med[0][0] : 0.0,
               med[0][1] > 0 ? med[1][1] / med[0][1] : 0.0);
    }
    if (cf)
        fclose(cf);
    pgh_destroy(&h);
    return bad ? 1 : 0;
}
