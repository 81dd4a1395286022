/* The programs, run for real: warmlockd beside `warmlock` processes against a throwaway
 * PostgreSQL, plus a strict Prometheus text-format checker. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"
#include "coordinator/common.h"

#define PASSWORD "Sw0rdf1sh-7c1e"
#define NPROC 32
#define INTERVAL_MS 1000u

static struct pgh H;
static int have_pg;
static const char *pg_reason;
static char CI[1024];          /* the conninfo, with the password */
static char KEY[WL_KEY_MAX + 1024];
static char DIR_[64];          /* the suite's scratch directory */

/* ---------------------------------------------------------------- processes */

/* Run a program to completion (bounded), capturing its output (wlt_run_v). */
#define RUN(r, timeout, ...) WLT_RUN((r), DIR_, (timeout), __VA_ARGS__)

/* ---------------------------------------------------------------- the daemon */

#define MAXD 64
static pid_t daemons[MAXD]; /* every warmlockd started, for the teardown */

struct daemon {
    pid_t pid;
    char log[128];
    char shm[64];
};

/* Start warmlockd --foreground on shm with the suite's target and extra options. */
static void daemon_start(struct daemon *d, const char *shm, const char *const *extra,
                         int keep_fd)
{
    char *argv[32];
    int n = 0;
    static unsigned k;

    snprintf(d->shm, sizeof(d->shm), "%s", shm);
    snprintf(d->log, sizeof(d->log), "%s/warmlockd%u.log", DIR_, k++);
    argv[n++] = (char *)WL_WARMLOCKD;
    argv[n++] = (char *)"--foreground";
    argv[n++] = (char *)"--interval";
    argv[n++] = (char *)"1";
    argv[n++] = (char *)"--shm";
    argv[n++] = d->shm;
    for (; extra && *extra; extra++)
        argv[n++] = (char *)*extra;
    argv[n] = NULL;
    d->pid = wlt_spawn_exec(argv, NULL, d->log, keep_fd);
    for (n = 0; n < MAXD && daemons[n] > 0; n++)
        ;
    if (n < MAXD)
        daemons[n] = d->pid;
}

/* The daemon was reaped: never signal its pid again (it may be reused). */
static void forget(pid_t pid)
{
    for (int i = 0; i < MAXD; i++)
        if (daemons[i] == pid)
            daemons[i] = 0;
}

/* A failed assertion leaves its test early: the suite's teardown ends what it started. */
static void kill_daemons(void)
{
    for (int i = 0; i < MAXD; i++)
        if (daemons[i] > 0) { /* our child, not yet reaped: its pid is still ours */
            kill(daemons[i], SIGKILL);
            waitpid(daemons[i], NULL, 0);
            daemons[i] = 0;
        }
}

static int daemon_stop(struct daemon *d)
{
    int st;
    if (d->pid <= 0)
        return 0;
    kill(d->pid, SIGTERM);
    st = wlt_wait(d->pid, 5000); /* reaps it (SIGKILL after 5 s) */
    forget(d->pid);
    d->pid = 0;
    return st;
}

static void daemon_log(const struct daemon *d, char *buf, size_t len)
{
    wlt_slurp(d->log, buf, len);
}

/* ---------------------------------------------------------------- the segment */

static int slot(const char *shm, const char *key, struct wl_slot_info *out)
{
    static struct wl_slot_info s[64];
    struct wl_segment *seg;
    size_t l = strlen(key);
    int r, n;

    if (wl_open(shm, NULL, &seg) < 0)
        return -1;
    r = wl_lookup(seg, key, out);
    /* a wl_pg_key() key: its slot's key carries the password digest ("?pw=" and 8 hex) */
    if (r == -ENOENT && (n = wl_snapshot(seg, s, 64)) > 0)
        for (int j = 0; j < n && j < 64; j++)
            if (!strncmp(s[j].key, key, l) && strlen(s[j].key) == l + 12 &&
                !strncmp(s[j].key + l + 1, "pw=", 3)) {
                *out = s[j];
                r = 0;
                break;
            }
    wl_close(seg);
    return r < 0 ? -1 : 0;
}

/* Wait until the slot is (want_ready) READY or (!want_ready) not READY; ms taken or -1. */
static int wait_ready(const char *shm, const char *key, int want_ready, unsigned timeout_ms)
{
    uint64_t t0 = wlt_now_ns(), end = t0 + (uint64_t)timeout_ms * 1000000u;
    struct wl_slot_info si;

    for (;;) {
        int r = slot(shm, key, &si) == 0 && si.state == WL_READY;
        if (r == want_ready)
            return (int)((wlt_now_ns() - t0) / 1000000u);
        if (wlt_now_ns() >= end)
            return -1;
        wlt_sleep_ms(5);
    }
}

/* ---------------------------------------------------------------- Prometheus checker */

/* A strict checker of the text exposition format 0.0.4: syntax of every line, HELP/TYPE
 * before and at most once per family, contiguous families, sample names that belong to
 * their family's type, label syntax and escapes, unique series, counters >= 0, and
 * histograms (le buckets increasing and cumulative, +Inf present and equal to _count). It
 * returns the number of problems and prints each; `series` collects counter values. */
struct series {
    char id[1024];
    double v;
    int counter;
};
struct prom {
    struct series s[4096];
    int n;
};

static int is_name(const char *p, size_t n, int colon)
{
    size_t i;
    if (!n)
        return 0;
    for (i = 0; i < n; i++) {
        char c = p[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static int parse_value(const char *p, double *v)
{
    char *end;
    if (!strcmp(p, "+Inf")) {
        *v = INFINITY;
        return 0;
    }
    if (!strcmp(p, "-Inf")) {
        *v = -INFINITY;
        return 0;
    }
    if (!strcmp(p, "NaN")) {
        *v = NAN;
        return 0;
    }
    if (!*p || strchr("0123456789+-.", *p) == NULL)
        return -1;
    *v = strtod(p, &end);
    return *end ? -1 : 0;
}

#define PROB(...)                                                               \
    do {                                                                        \
        fprintf(stderr, "metrics line %d: ", lineno);                           \
        fprintf(stderr, __VA_ARGS__);                                           \
        fputc('\n', stderr);                                                    \
        bad++;                                                                  \
    } while (0)

/* dst += "k=v," (truncating) */
static void append(char *dst, size_t cap, const char *k, const char *v)
{
    size_t n = strlen(dst);
    const char *parts[] = {k, "=", v, ","};
    for (int i = 0; i < 4; i++)
        for (const char *c = parts[i]; *c && n + 1 < cap; c++)
            dst[n++] = *c;
    dst[n] = '\0';
}

struct fam {
    char name[200], type[16];
    int help, typed, closed, has_samples;
};

static int prom_check(const char *text, struct prom *out)
{
    struct fam fams[64];
    int nf = 0, bad = 0, lineno = 0, cur = -1, i;
    const char *line = text;
    /* histogram state for the current label set */
    char hkey[1024] = "";
    double last_le = -INFINITY, last_cum = 0, inf_cum = -1;
    int saw_inf = 1;

    struct prom *own = NULL;
    if (!out)
        out = own = calloc(1, sizeof(*own));
    assert_non_null(out);
    out->n = 0;
    if (*text && text[strlen(text) - 1] != '\n') {
        lineno = 0;
        PROB("the exposition does not end with a newline");
    }
    while (*line) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char buf[2048];
        lineno++;
        if (len >= sizeof(buf)) {
            PROB("line too long");
            goto next;
        }
        memcpy(buf, line, len);
        buf[len] = '\0';
        if (strchr(buf, '\r'))
            PROB("carriage return");
        if (!len)
            goto next;
        if (buf[0] == '#') {
            char kw[8], name[256];
            int off = 0;
            if (sscanf(buf, "# %7s %255s %n", kw, name, &off) < 2 ||
                (strcmp(kw, "HELP") && strcmp(kw, "TYPE")))
                goto next; /* a plain comment */
            if (!is_name(name, strlen(name), 1))
                PROB("bad metric name in %s: %s", kw, name);
            for (i = 0; i < nf && strcmp(fams[i].name, name); i++)
                ;
            if (i == nf) {
                if (nf == 64) {
                    PROB("too many families");
                    goto next;
                }
                memset(&fams[nf], 0, sizeof(fams[nf]));
                snprintf(fams[nf].name, sizeof(fams[nf].name), "%s", name);
                nf++;
            }
            if (fams[i].closed || fams[i].has_samples)
                PROB("%s for %s after its samples", kw, name);
            if (!strcmp(kw, "HELP")) {
                const char *d = buf + off;
                if (fams[i].help++)
                    PROB("second HELP for %s", name);
                for (; *d; d++)
                    if (*d == '\\' && d[1] != '\\' && d[1] != 'n')
                        PROB("bad escape in HELP of %s", name);
                    else if (*d == '\\')
                        d++;
            } else {
                const char *t = buf + off;
                if (fams[i].typed++)
                    PROB("second TYPE for %s", name);
                if (strcmp(t, "counter") && strcmp(t, "gauge") && strcmp(t, "histogram") &&
                    strcmp(t, "summary") && strcmp(t, "untyped"))
                    PROB("bad TYPE '%s' for %s", t, name);
                snprintf(fams[i].type, sizeof(fams[i].type), "%s", t);
            }
            if (cur >= 0 && cur != i)
                fams[cur].closed = fams[cur].has_samples;
            cur = i;
            goto next;
        }
        {
            /* name{labels} value [timestamp] */
            char *p = buf, name[256], lk[64][128], id[1024], base[256], nole[1024];
            size_t nlen = strcspn(p, "{ ");
            int nl_ = 0, f, j;
            double v, le = NAN;
            if (nlen >= sizeof(name) || !is_name(p, nlen, 1)) {
                PROB("bad sample name");
                goto next;
            }
            memcpy(name, p, nlen);
            name[nlen] = '\0';
            p += nlen;
            snprintf(id, sizeof(id), "%s{", name);
            snprintf(nole, sizeof(nole), "{");
            if (*p == '{') {
                p++;
                while (*p != '}') {
                    size_t kl = strcspn(p, "=");
                    char val[1024];
                    size_t vn = 0;
                    if (!p[kl] || !is_name(p, kl, 0) || kl >= 128) {
                        PROB("bad label name");
                        goto next;
                    }
                    if (kl >= 2 && p[0] == '_' && p[1] == '_')
                        PROB("reserved label name");
                    memcpy(lk[nl_], p, kl);
                    lk[nl_][kl] = '\0';
                    for (j = 0; j < nl_; j++)
                        if (!strcmp(lk[j], lk[nl_]))
                            PROB("duplicate label %s", lk[nl_]);
                    p += kl + 1;
                    if (*p++ != '"') {
                        PROB("label value not quoted");
                        goto next;
                    }
                    for (; *p && *p != '"'; p++) {
                        if (*p == '\\') {
                            p++;
                            if (*p != '\\' && *p != '"' && *p != 'n') {
                                PROB("bad escape \\%c in a label value", *p);
                                goto next;
                            }
                        }
                        if (vn < sizeof(val) - 1)
                            val[vn++] = *p;
                    }
                    val[vn] = '\0';
                    if (*p++ != '"') {
                        PROB("unterminated label value");
                        goto next;
                    }
                    if (!strcmp(lk[nl_], "le")) {
                        if (parse_value(val, &le) < 0)
                            PROB("le is not a number: %s", val);
                    } else {
                        append(nole, sizeof(nole), lk[nl_], val);
                    }
                    append(id, sizeof(id), lk[nl_], val);
                    nl_++;
                    if (*p == ',')
                        p++;
                    else if (*p != '}') {
                        PROB("expected , or } after a label");
                        goto next;
                    }
                    if (nl_ == 64) {
                        PROB("too many labels");
                        goto next;
                    }
                }
                p++;
            }
            strcat(id, "}");
            if (*p++ != ' ') {
                PROB("no space before the value");
                goto next;
            }
            {
                char vbuf[64];
                size_t vl = strcspn(p, " ");
                if (vl >= sizeof(vbuf) || parse_value((memcpy(vbuf, p, vl), vbuf[vl] = '\0', vbuf),
                                                      &v) < 0) {
                    PROB("bad value '%.*s'", (int)vl, p);
                    goto next;
                }
                p += vl;
                if (*p == ' ') {
                    char *e;
                    strtoll(p + 1, &e, 10);
                    if (e == p + 1 || *e)
                        PROB("bad timestamp");
                }
            }
            /* which family? */
            snprintf(base, sizeof(base), "%s", name);
            for (f = 0; f < nf && strcmp(fams[f].name, name); f++)
                ;
            if (f == nf) {
                const char *suf[] = {"_bucket", "_sum", "_count"};
                for (j = 0; j < 3 && f == nf; j++) {
                    size_t sl = strlen(suf[j]);
                    if (nlen > sl && !strcmp(name + nlen - sl, suf[j])) {
                        snprintf(base, sizeof(base), "%.*s", (int)(nlen - sl), name);
                        for (f = 0; f < nf && strcmp(fams[f].name, base); f++)
                            ;
                        if (f < nf && strcmp(fams[f].type, "histogram") &&
                            strcmp(fams[f].type, "summary"))
                            f = nf;
                    }
                }
            }
            if (f == nf || !fams[f].typed) {
                PROB("sample %s has no TYPE before it", name);
                goto next;
            }
            if (fams[f].closed)
                PROB("samples of %s are not contiguous", fams[f].name);
            if (cur >= 0 && cur != f)
                fams[cur].closed = fams[cur].has_samples;
            cur = f;
            fams[f].has_samples = 1;
            if (strcmp(fams[f].type, "histogram") == 0) {
                if (!strcmp(name, fams[f].name))
                    PROB("histogram %s has a bare sample", name);
                if (strstr(name, "_bucket") == name + strlen(name) - 7) {
                    if (isnan(le)) {
                        PROB("bucket without le");
                    } else {
                        if (strcmp(nole, hkey)) { /* a new label set */
                            if (!saw_inf)
                                PROB("histogram %s%s has no +Inf bucket", base, hkey);
                            snprintf(hkey, sizeof(hkey), "%s", nole);
                            last_le = -INFINITY;
                            last_cum = 0;
                            saw_inf = 0;
                        }
                        if (!(le > last_le))
                            PROB("le values not increasing");
                        if (v < last_cum)
                            PROB("buckets not cumulative");
                        last_le = le;
                        last_cum = v;
                        if (isinf(le)) {
                            saw_inf = 1;
                            inf_cum = v;
                        }
                    }
                } else if (!isnan(le)) {
                    PROB("le on a non-bucket sample");
                } else if (strstr(name, "_count") == name + strlen(name) - 6) {
                    if (strcmp(nole, hkey) || !saw_inf)
                        PROB("%s without its buckets before it", name);
                    else if (v != inf_cum)
                        PROB("%s = %g but the +Inf bucket is %g", name, v, inf_cum);
                }
            } else if (strcmp(name, fams[f].name) != 0 &&
                       strcmp(fams[f].type, "summary") != 0) {
                PROB("sample %s in family %s", name, fams[f].name);
            }
            if (!strcmp(fams[f].type, "counter") && !(v >= 0))
                PROB("counter %s is negative", name);
            {
                for (j = 0; j < out->n; j++)
                    if (!strcmp(out->s[j].id, id))
                        PROB("duplicate series %s", id);
                if (out->n < 4096) {
                    snprintf(out->s[out->n].id, sizeof(out->s[0].id), "%s", id);
                    out->s[out->n].v = v;
                    out->s[out->n].counter = !strcmp(fams[f].type, "counter") ||
                                             (!strcmp(fams[f].type, "histogram") &&
                                              strcmp(name, fams[f].name));
                    out->n++;
                }
            }
        }
    next:
        line = nl ? nl + 1 : line + len;
    }
    if (!saw_inf) {
        PROB("the last histogram has no +Inf bucket");
    }
    for (i = 0; i < nf; i++)
        if (!fams[i].typed)
            PROB("family %s has HELP but no TYPE", fams[i].name);
    free(own);
    return bad;
}

/* ---------------------------------------------------------------- fixtures */

static int setup(void **state)
{
    char *p;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wltest-cli.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        return 0;
    have_pg = 1;
    /* The harness's conninfo, with the password spelled out (a later keyword wins). */
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    if ((p = strstr(CI, PASSWORD)) == NULL || wl_pg_key(CI, KEY, sizeof(KEY)) < 0)
        return -1;
    if (strstr(KEY, PASSWORD))
        return -1;
    (void)state;
    return 0;
}

static int teardown(void **state)
{
    char cmd[128];
    kill_daemons();
    if (have_pg)
        pgh_destroy(&H);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", DIR_);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", DIR_);
    (void)state;
    return 0;
}

static void ensure_server_up(void)
{
    /* a previous test may have stopped it */
    if (PQping(CI) != PQPING_OK) {
        assert_int_equal(pgh_start(&H, 1), 0);
    }
}

static const char *segname(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "%s", wlt_segname());
    wl_unlink(buf);
    return buf;
}

/* ---------------------------------------------------------------- tests */

/* 7. Usage errors exit 2 with one line; --help and --version exit 0. */
static void test_usage_errors_exit_2_with_one_line(void **state)
{
    static const char *const cases[][8] = {
        {WL_WARMLOCK, "status", "--frobnicate"},
        {WL_WARMLOCK, "wait"},
        {WL_WARMLOCK, "exec", "host=/nowhere", "--"},
        {WL_WARMLOCK, "exec", "host=/nowhere"},
        {WL_WARMLOCK, "wait", "--timeout", "soon", "host=/nowhere"},
        {WL_WARMLOCK, "wait", "--timeout"},
        {WL_WARMLOCK, "invalidate"},
        {WL_WARMLOCK, "explode"},
        {WL_WARMLOCK},
        {WL_WARMLOCK, "status", "extra"},
        {WL_WARMLOCK, "metrics", "--json"},
        {WL_WARMLOCKD, "--target", "host=/nowhere", "--interval", "0"},
        {WL_WARMLOCKD, "--target", "host=/nowhere", "--interval", "often"},
        {WL_WARMLOCKD, "--target", "host=/nowhere", "--frobnicate"},
        {WL_WARMLOCKD},
        {WL_WARMLOCKD, "--target"},
        {WL_WARMLOCKD, "--target", "host=/nowhere", "--mode", "999"},
        {WL_WARMLOCKD, "--target", "host=/nowhere", "--notify-fd", "77"},
    };
    struct wlt_run *r = wlt_newrun();
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        wlt_run_v(r, DIR_, 5000, (char *const *)cases[i]);
        if (r->status != 2 || wlt_count_lines(r->err) != 1 || r->out[0])
            fail_msg("case %zu (%s %s %s): status %d, stderr '%s', stdout '%s'", i,
                     cases[i][1] ? cases[i][1] : "", cases[i][2] ? cases[i][2] : "",
                     cases[i][3] ? cases[i][3] : "", r->status, r->err, r->out);
    }
    RUN(r, 5000, WL_WARMLOCK, "--help");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "status"));
    RUN(r, 5000, WL_WARMLOCK, "--version");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, WL_VERSION_STRING));
    RUN(r, 5000, WL_WARMLOCKD, "--help");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "--target"));
    RUN(r, 5000, WL_WARMLOCKD, "--version");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, WL_VERSION_STRING));
    /* not usage errors: a missing segment is exit 1 with one line */
    RUN(r, 5000, WL_WARMLOCK, "status", "--shm", "/wltest-cli-nosuch");
    assert_int_equal(r->status, 1);
    assert_int_equal(wlt_count_lines(r->err), 1);
    free(r);
    (void)state;
}

/* 1. With warmlockd running and the target warm, 32 concurrent `warmlock exec CONNINFO --
 * true` all exit 0 and none of them runs a warm-up. SIGTERM leaves the segment READY. */
static void test_exec_beside_warm_daemon_runs_no_warmup(void **state)
{
    const char *shm = segname();
    struct daemon d;
    struct wl_slot_info before, after;
    struct wlt_run *r = wlt_newrun();
    pid_t pids[NPROC];
    char epoch[64];
    int i;

    NEED_PG();
    ensure_server_up();
    daemon_start(&d, shm, (const char *const[]){"--target", CI, NULL}, -1);
    assert_true(wait_ready(shm, KEY, 1, 15000) >= 0);
    assert_int_equal(slot(shm, KEY, &before), 0);

    for (i = 0; i < NPROC; i++) {
        char *const argv[] = {(char *)WL_WARMLOCK, "--shm", (char *)shm, "exec", CI, "--",
                              "true", NULL};
        pids[i] = wlt_spawn_exec(argv, NULL, NULL, -1);
    }
    for (i = 0; i < NPROC; i++)
        assert_int_equal(wlt_wait(pids[i], 15000), 0);
    assert_int_equal(slot(shm, KEY, &after), 0);
    assert_int_equal(after.warmups, before.warmups);
    assert_int_equal(after.state, WL_READY);

    /* exec passes the epoch it observed */
    snprintf(epoch, sizeof(epoch), "test \"$WARMLOCK_EPOCH\" = %llu",
             (unsigned long long)after.epoch);
    RUN(r, 10000, WL_WARMLOCK, "exec", "--shm", (char *)shm, CI, "--", "/bin/sh", "-c", epoch);
    assert_int_equal(r->status, 0);
    RUN(r, 10000, WL_WARMLOCK, "exec", "--shm", (char *)shm, CI, "--", "/nonexistent/cmd");
    assert_int_equal(r->status, 127);

    /* SIGTERM: a clean exit, and the segment stays valid and READY for the applications */
    assert_int_equal(daemon_stop(&d), 0);
    assert_int_equal(slot(shm, KEY, &after), 0);
    assert_int_equal(after.state, WL_READY);
    RUN(r, 10000, WL_WARMLOCK, "wait", "--shm", (char *)shm, CI);
    assert_int_equal(r->status, 0);
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* 2. warmlockd started together with 32 `warmlock wait` while the server is still
 * starting: exactly one warm-up, all 32 exit 0. */
static void test_daemon_and_waiters_at_server_start_share_one_warmup(void **state)
{
    const char *shm = segname();
    struct daemon d;
    struct wl_slot_info si;
    pid_t pids[NPROC];
    int i;

    NEED_PG();
    ensure_server_up();
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pgh_start(&H, 0), 0); /* do not wait: it is still starting */
    daemon_start(&d, shm, (const char *const[]){"--target", CI, NULL}, -1);
    for (i = 0; i < NPROC; i++) {
        char *const argv[] = {(char *)WL_WARMLOCK, "wait", "--timeout", "30", "--shm",
                              (char *)shm, CI, NULL};
        pids[i] = wlt_spawn_exec(argv, NULL, NULL, -1);
    }
    for (i = 0; i < NPROC; i++)
        assert_int_equal(wlt_wait(pids[i], 40000), 0);
    assert_int_equal(slot(shm, KEY, &si), 0);
    assert_int_equal(si.state, WL_READY);
    assert_int_equal(si.warmups, 1);
    assert_int_equal(si.failures, 0);
    assert_int_equal(daemon_stop(&d), 0);
    wl_unlink(shm);
    (void)state;
}

struct watch {
    _Atomic uint32_t armed;
    _Atomic uint64_t seen_ns;
};
static struct watch *W;

static int watch_not_ready(void *arg, int index)
{
    atomic_store(&W->armed, 1);
    if (wait_ready(arg, KEY, 0, 20000) < 0)
        return 1;
    atomic_store(&W->seen_ns, wlt_now_ns());
    (void)index;
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    return *(const int *)a - *(const int *)b;
}

/* 3. Stop the server: within one interval (+1 s) status shows the target not ready, and
 * `warmlock wait --timeout 2` exits 1 within about 2 s with the last error. Start it: READY
 * again within one interval (+1 s), without a restart. Five rounds; prints the medians. */
static void test_server_stop_is_seen_and_recovery_needs_no_restart(void **state)
{
    const char *shm = segname();
    struct daemon d;
    struct wlt_run *r = wlt_newrun();
    int stop_ms[5], seen_ms[5], back_ms[5], round;

    NEED_PG();
    ensure_server_up();
    if (!W)
        W = wlt_shared(sizeof(*W));
    daemon_start(&d, shm, (const char *const[]){"--target", CI, NULL}, -1);
    assert_true(wait_ready(shm, KEY, 1, 15000) >= 0);

    for (round = 0; round < 5; round++) {
        uint64_t t0;
        pid_t watcher;
        int seen;
        /* a watcher polls the segment while pg_ctl stop runs, like an operator's status */
        atomic_store(&W->armed, 0);
        watcher = wlt_spawn(watch_not_ready, (void *)shm, 0);
        while (!atomic_load(&W->armed))
            wlt_sleep_ms(1);
        t0 = wlt_now_ns();
        assert_int_equal(pgh_stop(&H, "fast"), 0);
        stop_ms[round] = (int)((wlt_now_ns() - t0) / 1000000u);
        assert_int_equal(wlt_wait(watcher, INTERVAL_MS + 1000), 0);
        seen = (int)((atomic_load(&W->seen_ns) - t0) / 1000000u);
        assert_true(seen <= stop_ms[round] + (int)INTERVAL_MS + 1000);
        seen_ms[round] = seen; /* from the stop command */
        /* the CLI agrees */
        RUN(r, 5000, WL_WARMLOCK, "status", "--shm", (char *)shm);
        assert_int_equal(r->status, 0);
        assert_null(strstr(r->out, " ready "));
        if (round == 0) {
            RUN(r, 10000, WL_WARMLOCK, "wait", "--timeout", "2", "--shm", (char *)shm, CI);
            assert_int_equal(r->status, 1);
            assert_true(r->ms <= 3000);
            assert_int_equal(wlt_count_lines(r->err), 1);
            assert_true(strlen(r->err) > strlen("warmlock: wait: ") + 10);
            print_message("wait while down: %llu ms: %s", (unsigned long long)r->ms, r->err);
        }
        assert_int_equal(pgh_start(&H, 1), 0);
        back_ms[round] = wait_ready(shm, KEY, 1, INTERVAL_MS + 1000);
        assert_true(back_ms[round] >= 0);
    }
    /* the same daemon all along */
    assert_int_equal(kill(d.pid, 0), 0);
    qsort(stop_ms, 5, sizeof(int), cmp_int);
    qsort(seen_ms, 5, sizeof(int), cmp_int);
    qsort(back_ms, 5, sizeof(int), cmp_int);
    print_message("server stop -> slot not ready: median %d ms (max %d) after the stop "
                  "command began (pg_ctl stop itself took a median %d ms); start -> READY: "
                  "median %d ms (max %d) after pg_ctl start returned\n", seen_ms[2],
                  seen_ms[4], stop_ms[2], back_ms[2], back_ms[4]);
    assert_int_equal(daemon_stop(&d), 0);
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* 4. status --json parses and holds every field of the table; the password appears in
 * none of status, status --json, metrics and the daemon's log. */
static void test_status_json_parses_and_no_password_anywhere(void **state)
{
    static const char *const fields[] = {"key", "state", "epoch", "leader_pid", "waiters",
                                         "warmups", "takeovers", "attempts", "failures",
                                         "last_error", "sqlstate", "ready_age_ms",
                                         "time_to_ready_ms"};
    static const char *const columns[] = {"KEY", "STATE", "EPOCH", "LEADER", "WAITERS",
                                          "WARMUPS", "TAKEOVERS", "ATTEMPTS", "FAILURES",
                                          "READY_AGE", "TTR", "SQLSTATE", "LAST_ERROR"};
    const char *shm = segname();
    struct daemon d;
    struct wlt_run *r = wlt_newrun();
    char cmd[2048], *log = calloc(1, 65536), badci[1200];
    size_t i;

    NEED_PG();
    ensure_server_up();
    /* a second target whose password is wrong, so that a failure is published too */
    snprintf(badci, sizeof(badci), "%s dbname=template1 password=%s-wrong", H.conninfo,
             PASSWORD);
    daemon_start(&d, shm, (const char *const[]){"--target", CI, "--target", badci, NULL}, -1);
    assert_true(wait_ready(shm, KEY, 1, 15000) >= 0);
    {
        /* until the wrong password's failure is published */
        static char badkey[WL_KEY_MAX + 1024];
        struct wl_slot_info bi;
        uint64_t end = wlt_now_ns() + 15000000000ull;
        assert_true(wl_pg_key(badci, badkey, sizeof(badkey)) > 0);
        while (!(slot(shm, badkey, &bi) == 0 && bi.last_error[0])) {
            assert_true(wlt_now_ns() < end);
            wlt_sleep_ms(5);
        }
    }

    RUN(r, 5000, WL_WARMLOCK, "status", "--json", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_null(strstr(r->out, PASSWORD));
    for (i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        char q[64];
        snprintf(q, sizeof(q), "\"%s\":", fields[i]);
        if (!strstr(r->out, q))
            fail_msg("status --json lacks %s: %s", fields[i], r->out);
    }
    /* a real JSON parser */
    snprintf(cmd, sizeof(cmd), "command -v python3 >/dev/null && '%s' status --json --shm %s "
             "| python3 -m json.tool >/dev/null || '%s' status --json --shm %s | jq . "
             ">/dev/null", WL_WARMLOCK, shm, WL_WARMLOCK, shm);
    assert_int_equal(system(cmd), 0);

    RUN(r, 5000, WL_WARMLOCK, "status", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_null(strstr(r->out, PASSWORD));
    for (i = 0; i < sizeof(columns) / sizeof(columns[0]); i++)
        assert_non_null(strstr(r->out, columns[i]));
    assert_int_equal(wlt_count_lines(r->out), 3); /* header + 2 slots */

    RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_null(strstr(r->out, PASSWORD));

    assert_int_equal(daemon_stop(&d), 0);
    daemon_log(&d, log, 65536);
    assert_non_null(strstr(log, "level=info"));
    assert_null(strstr(log, PASSWORD));
    /* every log line is logfmt: starts with ts= and has level= and msg= */
    for (char *l = log; *l;) {
        char *e = strchr(l, '\n');
        if (!e)
            fail_msg("log line without a newline: %s", l);
        *e = '\0';
        if (strncmp(l, "ts=", 3) || !strstr(l, " level=") || !strstr(l, " msg="))
            fail_msg("not a logfmt line: %s", l);
        l = e + 1;
    }
    free(log);
    free(r);
    wl_unlink(shm);
    (void)state;
}

static double series_value(const struct prom *p, const char *id, int *found)
{
    int i;
    for (i = 0; i < p->n; i++)
        if (!strcmp(p->s[i].id, id)) {
            *found = 1;
            return p->s[i].v;
        }
    *found = 0;
    return 0;
}

/* 5. metrics is accepted by a strict text-format checker, and its counters never decrease
 * across scrapes while slots are invalidated, re-warmed and fail. */
static void test_metrics_are_valid_and_counters_never_decrease(void **state)
{
    const char *shm = segname();
    struct daemon d;
    struct wlt_run *r = wlt_newrun();
    struct prom *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    int i, j, found, counters = 0;

    NEED_PG();
    ensure_server_up();
    daemon_start(&d, shm, (const char *const[]){"--target", CI, NULL}, -1);
    assert_true(wait_ready(shm, KEY, 1, 15000) >= 0);
    RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_int_equal(prom_check(r->out, a), 0);

    for (i = 0; i < 4; i++) {
        /* activity: an invalidation and a re-warm, waiters, a failing key */
        RUN(r, 5000, WL_WARMLOCK, "invalidate", "--shm", (char *)shm, CI);
        assert_int_equal(r->status, 0);
        RUN(r, 10000, WL_WARMLOCK, "wait", "--shm", (char *)shm, CI);
        assert_int_equal(r->status, 0);
        RUN(r, 10000, WL_WARMLOCK, "wait", "--timeout", "0.2", "--shm", (char *)shm,
            "host=/nonexistent-dir port=1 dbname=x");
        assert_int_equal(r->status, 1);
        RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
        assert_int_equal(r->status, 0);
        assert_int_equal(prom_check(r->out, b), 0);
        for (j = 0; j < a->n; j++) {
            double now;
            if (!a->s[j].counter)
                continue;
            now = series_value(b, a->s[j].id, &found);
            assert_true(found);
            counters++;
            if (now < a->s[j].v)
                fail_msg("counter %s went from %g to %g", a->s[j].id, a->s[j].v, now);
        }
        memcpy(a, b, sizeof(*a));
    }
    assert_true(counters > 10);
    /* the activity shows */
    assert_non_null(strstr(r->out, "warmlock_invalidations_total{key="));
    assert_int_equal(daemon_stop(&d), 0);
    free(a);
    free(b);
    free(r);
    wl_unlink(shm);
    (void)state;
}

/* The checker itself rejects what it should, and accepts nasty keys rendered by the
 * library (quotes, backslashes, newlines, invalid UTF-8). */
static void test_prometheus_checker_is_strict(void **state)
{
    static const char *const bad[] = {
        "x 1\n",                                              /* no TYPE */
        "# TYPE x gauge\nx{a=\"1\"} one\n",                   /* bad value */
        "# TYPE x gauge\nx{a=\"\\t\"} 1\n",                   /* bad escape */
        "# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1\n",             /* duplicate label */
        "# TYPE x gauge\nx 1\nx 2\n",                         /* duplicate series */
        "# TYPE x gauge\n# TYPE y gauge\nx 1\ny 1\nx{a=\"b\"} 1\n", /* not contiguous */
        "# TYPE x counter\nx -1\n",                           /* negative counter */
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n", /* no +Inf */
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
        "# TYPE x gauge\nx 1",                                 /* no final newline */
        "# TYPE x gauge\n9x 1\n",                             /* bad name */
        "# TYPE x gauge\nx{a=\"1\"}1\n",                      /* no space */
    };
    struct wl_slot_info s[3];
    char *buf = NULL;
    size_t len = 0, i;
    FILE *f;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (prom_check(bad[i], NULL) == 0)
            fail_msg("the checker accepted bad case %zu: %s", i, bad[i]);
    assert_int_equal(prom_check("# HELP x a \\\\ b\n# TYPE x gauge\nx{a=\"q\\\"\\\\\\n\"} 1 "
                                "1700000000000\n",
                                NULL),
                     0);

    memset(s, 0, sizeof(s));
    snprintf(s[0].key, sizeof(s[0].key), "host=/tmp/a\"b\\c\nd dbname=\xff\xfe");
    s[0].state = WL_FAILED;
    s[0].ready_age_ms = s[0].time_to_ready_ms = -1;
    snprintf(s[1].key, sizeof(s[1].key), "host=h port=1 dbname=\xc3\xa9t\xc3\xa9");
    s[1].state = WL_READY;
    s[1].warmups = 3;
    s[1].wait_hist[0] = 5;
    s[1].wait_hist[WL_HIST_BUCKETS - 1] = 2;
    s[1].wait_count = 7;
    s[1].wait_sum_ns = 12345678901ull;
    s[1].ready_age_ms = 1500;
    s[1].time_to_ready_ms = 20;
    snprintf(s[2].key, sizeof(s[2].key), "k");
    s[2].ready_age_ms = s[2].time_to_ready_ms = -1;
    f = open_memstream(&buf, &len);
    assert_int_equal(wlc_format_prometheus(f, "/seg\"x", s, 3), 0);
    fclose(f);
    if (prom_check(buf, NULL) != 0)
        fail_msg("rendered metrics rejected:\n%s", buf);
    assert_non_null(strstr(buf, "warmlock_wait_seconds_count{key=\"host=h port=1 dbname=\xc3\xa9t"
                                "\xc3\xa9\"} 7\n"));
    free(buf);
    (void)state;
}

/* 6. SIGKILL warmlockd while it leads a warm-up: an application process takes over;
 * restarted, warmlockd adopts the segment without losing counters. */
static void test_killed_daemon_is_taken_over_and_restart_adopts(void **state)
{
    const char *shm = segname();
    struct daemon d;
    struct wlt_run *r = wlt_newrun();
    struct wl_slot_info si, si2;
    char sql[128], *log = calloc(1, 65536);
    uint64_t end;
    pid_t app;
    int fd, st;

    NEED_PG();
    ensure_server_up();
    snprintf(sql, sizeof(sql), "%s/slow.sql", DIR_);
    fd = open(sql, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_true(write(fd, "SELECT pg_sleep(3);\n", 20) == 20);
    close(fd);

    daemon_start(&d, shm, (const char *const[]){"--target", CI, "--warm-sql", sql, NULL}, -1);
    /* the daemon is the leader, warming */
    end = wlt_now_ns() + 10000000000ull;
    while (!(slot(shm, KEY, &si) == 0 && si.state == WL_WARMING && si.leader_pid == d.pid)) {
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(5);
    }
    /* reset is refused while it warms */
    RUN(r, 5000, WL_WARMLOCK, "reset", "--shm", (char *)shm);
    assert_int_equal(r->status, 1);
    assert_int_equal(wlt_count_lines(r->err), 1);
    {
        char *const argv[] = {(char *)WL_WARMLOCK, "wait", "--timeout", "20", "--shm",
                              (char *)shm, CI, NULL};
        app = wlt_spawn_exec(argv, NULL, NULL, -1);
    }
    while (!(slot(shm, KEY, &si) == 0 && si.waiters >= 1)) {
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(5);
    }
    assert_int_equal(kill(d.pid, SIGKILL), 0);
    st = wlt_wait(d.pid, 5000);
    forget(d.pid);
    assert_int_equal(st, 128 + SIGKILL);
    assert_int_equal(wlt_wait(app, 20000), 0);
    assert_int_equal(slot(shm, KEY, &si), 0);
    assert_int_equal(si.state, WL_READY);
    assert_int_equal(si.takeovers, 1);
    assert_int_equal(si.warmups, 2);
    assert_true(si.leader_pid != d.pid);

    /* restart: adopts the segment, READY as it is, counters kept */
    daemon_start(&d, shm, (const char *const[]){"--target", CI, NULL}, -1);
    end = wlt_now_ns() + 10000000000ull;
    for (;;) {
        daemon_log(&d, log, 65536);
        if (strstr(log, "every target is warm"))
            break;
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(10);
    }
    wlt_sleep_ms(INTERVAL_MS + 200); /* one check */
    assert_int_equal(slot(shm, KEY, &si2), 0);
    assert_int_equal(si2.state, WL_READY);
    assert_int_equal(si2.warmups, si.warmups);
    assert_int_equal(si2.takeovers, si.takeovers);
    assert_int_equal(si2.epoch, si.epoch);
    assert_int_equal(daemon_stop(&d), 0);
    free(log);
    free(r);
    wl_unlink(shm);
    (void)state;
}

/* Readiness: READY=1 on $NOTIFY_SOCKET and a newline on --notify-fd, once warm. */
static void test_daemon_notifies_readiness(void **state)
{
    const char *shm = segname();
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    struct daemon d;
    char buf[256], fdarg[16];
    int sock, p[2];
    struct pollfd pf;
    ssize_t n;

    NEED_PG();
    ensure_server_up();
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", DIR_);
    sock = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(sock >= 0);
    assert_int_equal(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(pipe(p), 0);
    snprintf(fdarg, sizeof(fdarg), "%d", p[1]);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    daemon_start(&d, shm, (const char *const[]){"--target", CI, "--notify-fd", fdarg, NULL},
                 p[1]);
    unsetenv("NOTIFY_SOCKET");
    close(p[1]);

    /* STATUS= datagrams come first while it warms */
    do {
        pf = (struct pollfd){.fd = sock, .events = POLLIN};
        assert_int_equal(poll(&pf, 1, 15000), 1);
        n = recv(sock, buf, sizeof(buf) - 1, 0);
        assert_true(n > 0);
        buf[n] = '\0';
    } while (!strstr(buf, "READY=1"));
    assert_true(wait_ready(shm, KEY, 1, 0) >= 0); /* READY=1 came after READY */
    /* the notify fd: one newline, then EOF */
    assert_int_equal(read(p[0], buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], '\n');
    assert_int_equal(read(p[0], buf, sizeof(buf)), 0);
    close(p[0]);
    assert_int_equal(daemon_stop(&d), 0);
    close(sock);
    unlink(sa.sun_path);
    wl_unlink(shm);
    (void)state;
}

/* SIGHUP re-reads --config: a target added to the file becomes READY, a removed one is
 * dropped; the segment's name vanishing (RemoveIPC) makes the daemon reopen and re-warm. */
static void test_daemon_reloads_config_and_survives_name_removal(void **state)
{
    const char *shm = segname();
    struct daemon d;
    char conf[128], ci2[1200], key2[WL_KEY_MAX + 1024], *log = calloc(1, 65536);
    FILE *f;
    struct stat st;

    NEED_PG();
    ensure_server_up();
    snprintf(ci2, sizeof(ci2), "%s dbname=template1", CI);
    assert_true(wl_pg_key(ci2, key2, sizeof(key2)) > 0);
    snprintf(conf, sizeof(conf), "%s/targets.conf", DIR_);
    f = fopen(conf, "w");
    fprintf(f, "# the app database\n%s\n\n", CI);
    fclose(f);
    daemon_start(&d, shm, (const char *const[]){"--config", conf, NULL}, -1);
    assert_true(wait_ready(shm, KEY, 1, 15000) >= 0);

    f = fopen(conf, "w");
    fprintf(f, "%s\n   %s   \n", CI, ci2);
    fclose(f);
    kill(d.pid, SIGHUP);
    assert_true(wait_ready(shm, key2, 1, 5000) >= 0);

    /* the name vanishes: the daemon notices within an interval and makes a new one */
    assert_int_equal(wl_unlink(shm), 0);
    {
        char path[128];
        uint64_t end = wlt_now_ns() + (uint64_t)(INTERVAL_MS + 3000) * 1000000u;
        snprintf(path, sizeof(path), "/dev/shm%s", shm);
        while (stat(path, &st) != 0) {
            assert_true(wlt_now_ns() < end);
            wlt_sleep_ms(20);
        }
    }
    assert_true(wait_ready(shm, KEY, 1, 5000) >= 0);
    assert_true(wait_ready(shm, key2, 1, 5000) >= 0);
    assert_int_equal(daemon_stop(&d), 0);
    daemon_log(&d, log, 65536);
    assert_non_null(strstr(log, "reloading"));
    assert_non_null(strstr(log, "vanished"));
    assert_null(strstr(log, PASSWORD));
    free(log);
    wl_unlink(shm);
    (void)state;
}


/* ---------------------------------------------------------------- hostile segments */

static void shm_path(char *buf, size_t len, const char *shm)
{
    snprintf(buf, len, "/dev/shm%s", shm);
}

/* Run `warmlock CMD --shm shm [ARG]`: it must end within the bound with `want`, print one
 * line on stderr holding `needle`, and nothing on stdout. */
static void expect_one_line(struct wlt_run *r, const char *cmd, const char *shm, const char *arg,
                            int want, const char *needle)
{
    RUN(r, 10000, WL_WARMLOCK, (char *)cmd, "--shm", (char *)shm, (char *)arg);
    if (r->status != want || wlt_count_lines(r->err) != 1 || r->out[0] ||
        (needle && !strstr(r->err, needle)))
        fail_msg("warmlock %s --shm %s: status %d after %llu ms (want %d), stderr '%s' "
                 "(want one line with '%s'), stdout '%s'", cmd, shm, r->status,
                 (unsigned long long)r->ms, want, r->err, needle ? needle : "", r->out);
}

/* Every command a user may point at a name, conninfo given to those that need one. */
static const char *const every_cmd[][2] = {
    {"status", NULL}, {"metrics", NULL}, {"reset", NULL}, {"check", "host=/nowhere"},
    {"invalidate", "host=/nowhere"}, {"wait", "host=/nowhere"},
};

/* A FIFO planted at the name (any local user can, /dev/shm is world-writable): every
 * command returns at once with EPERM's one line; none of them waits for a writer. */
static void test_fifo_at_the_name_hangs_no_command(void **state)
{
    const char *shm = segname();
    char path[128];
    struct wlt_run *r = wlt_newrun();
    size_t i;

    shm_path(path, sizeof(path), shm);
    assert_int_equal(mkfifo(path, 0600), 0);
    for (i = 0; i < sizeof(every_cmd) / sizeof(every_cmd[0]); i++)
        expect_one_line(r, every_cmd[i][0], shm, every_cmd[i][1], 1,
                        "not a regular shared-memory object (a FIFO)");
    unlink(path);
    free(r);
    (void)state;
}

/* A 10-byte object of zeros is "not a warmlock segment" for every command and stays as it
 * is: the read-only commands never write, and nobody re-initialises it. */
static void test_short_zero_object_is_left_untouched(void **state)
{
    const char *shm = segname();
    unsigned char zero[10] = {0}, got[64];
    char path[128];
    struct wlt_run *r = wlt_newrun();
    struct stat st;
    size_t i;
    int fd;

    shm_path(path, sizeof(path), shm);
    fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, zero, sizeof(zero)), (ssize_t)sizeof(zero));
    close(fd);
    for (i = 0; i < sizeof(every_cmd) / sizeof(every_cmd[0]); i++)
        expect_one_line(r, every_cmd[i][0], shm, every_cmd[i][1], 1, "not a warmlock segment");
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 10);
    fd = open(path, O_RDONLY);
    assert_int_equal(read(fd, got, sizeof(got)), 10);
    close(fd);
    assert_memory_equal(got, zero, 10);
    /* the advice given works */
    RUN(r, 5000, WL_WARMLOCK, "unlink", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_int_equal(stat(path, &st), -1);
    free(r);
    (void)state;
}

/* An empty object (a creator that died before sizing it): read-only commands leave it
 * empty and say so; the next process that uses it finishes it. */
static void test_empty_object_is_finished_by_a_user_not_a_reader(void **state)
{
    const char *shm = segname();
    char path[128];
    struct wlt_run *r = wlt_newrun();
    struct stat st;
    struct wl_segment *seg;
    int fd;

    shm_path(path, sizeof(path), shm);
    fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    close(fd);
    expect_one_line(r, "status", shm, NULL, 1, "empty");
    RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
    assert_int_equal(r->status, 0); /* as for no segment: an empty exposition */
    assert_non_null(strstr(r->out, "warmlock_segment_slots"));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, 0);
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "k", NULL, NULL, NULL, NULL), 0);
    wl_close(seg);
    RUN(r, 5000, WL_WARMLOCK, "status", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "ready"));
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* A segment of another uid: metrics, status, reset and invalidate print the real reason on
 * one line and exit 1 (metrics prints no "0 slots" exposition that a monitor would take for
 * an empty segment). Runs the commands as `nobody`, so it needs root. */
static void run_as_nobody(struct wlt_run *r, char *const argv[])
{
    char out[128], err[128];
    static unsigned n;
    uint64_t t0 = wlt_now_ns();
    pid_t pid;

    snprintf(out, sizeof(out), "%s/nobody%u.out", DIR_, n);
    snprintf(err, sizeof(err), "%s/nobody%u.err", DIR_, n++);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int o = open(out, O_CREAT | O_TRUNC | O_WRONLY, 0666);
        int e = open(err, O_CREAT | O_TRUNC | O_WRONLY, 0666);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
            _exit(120);
        if (setgroups(0, NULL) < 0 || setgid(65534) < 0 || setuid(65534) < 0)
            _exit(121);
        execv(argv[0], argv);
        _exit(122);
    }
    r->status = wlt_wait(pid, 10000);
    r->ms = (wlt_now_ns() - t0) / 1000000u;
    wlt_slurp(out, r->out, sizeof(r->out));
    wlt_slurp(err, r->err, sizeof(r->err));
    unlink(out);
    unlink(err);
}

static void test_other_uids_segment_is_an_error_not_an_empty_one(void **state)
{
    const char *shm = segname();
    struct wl_segment *seg;
    struct wlt_run *r = wlt_newrun();
    size_t i;

    if (geteuid() != 0) {
        free(r);
        printf("# skipped: needs root to run the commands as another uid (nobody)\n");
        skip();
    }
    assert_int_equal(chmod(DIR_, 0777), 0);
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "k", NULL, NULL, NULL, NULL), 0);
    {
        char *const probe[] = {(char *)WL_WARMLOCK, "--version", NULL};
        run_as_nobody(r, probe);
        if (r->status != 0) {
            wl_close(seg);
            wl_unlink(shm);
            printf("# skipped: nobody cannot run %s (status %d: %s)\n", WL_WARMLOCK,
                   r->status, r->err);
            free(r);
            skip();
        }
    }
    for (i = 0; i < 4; i++) {
        char *const argv[] = {(char *)WL_WARMLOCK, (char *)every_cmd[i][0], "--shm",
                              (char *)shm, (char *)every_cmd[i][1], NULL};
        run_as_nobody(r, argv);
        if (r->status != 1 || wlt_count_lines(r->err) != 1 || r->out[0] ||
            !strstr(r->err, "not accessible to uid 65534"))
            fail_msg("warmlock %s as nobody: status %d, stderr '%s', stdout '%s'",
                     every_cmd[i][0], r->status, r->err, r->out);
    }
    wl_close(seg);
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* A broken segment's message gives a command that removes it, and that command works;
 * it refuses while a process has the segment open, unless --force. */
static void test_unlink_removes_a_broken_segment_and_spares_one_in_use(void **state)
{
    const char *shm = segname();
    char path[128], want[160];
    unsigned char junk[4096];
    struct wlt_run *r = wlt_newrun();
    struct wl_segment *seg;
    struct stat st;
    int fd;

    shm_path(path, sizeof(path), shm);
    memset(junk, 0xa5, sizeof(junk));
    fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
    snprintf(want, sizeof(want), "warmlock unlink --shm %s", shm);
    expect_one_line(r, "status", shm, NULL, 1, want);
    expect_one_line(r, "reset", shm, NULL, 1, want);
    RUN(r, 5000, WL_WARMLOCK, "unlink", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_int_equal(stat(path, &st), -1);

    assert_int_equal(wl_open(shm, NULL, &seg), 0); /* this process has it open */
    expect_one_line(r, "unlink", shm, NULL, 1, "in use");
    assert_int_equal(stat(path, &st), 0);
    RUN(r, 5000, WL_WARMLOCK, "unlink", "--force", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_int_equal(stat(path, &st), -1);
    expect_one_line(r, "unlink", shm, NULL, 1, "does not exist");
    wl_close(seg);
    free(r);
    (void)state;
}

/* Keys with CR, tab, 0x01, a newline, a quote and a backslash, and two keys longer than
 * WL_KEY_MAX that share their first 420 bytes: `warmlock metrics` is valid text for a
 * strict parser (promtool too, where it is installed) and every series is unique. */
static void test_metrics_are_valid_for_odd_and_long_keys(void **state)
{
    const char *shm = segname();
    static char longa[WL_KEY_MAX + 64], longb[WL_KEY_MAX + 64];
    const char *keys[] = {"cr\rhere", "tab\there", "one\x01here", "nl\nhere", "q\"b\\s",
                          "cr\x02here", longa, longb};
    size_t nk = sizeof(keys) / sizeof(keys[0]), i;
    struct wl_segment *seg;
    struct prom *p = calloc(1, sizeof(*p));
    struct wlt_run *r = wlt_newrun();
    int states = 0;

    memset(longa, 'p', sizeof(longa) - 1);
    memcpy(longb, longa, sizeof(longb));
    longa[sizeof(longa) - 2] = 'A';
    longb[sizeof(longb) - 2] = 'C';
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    for (i = 0; i < nk; i++)
        assert_int_equal(wl_ensure(seg, keys[i], NULL, NULL, NULL, NULL), 0);
    RUN(r, 5000, WL_WARMLOCK, "metrics", "--shm", (char *)shm);
    assert_int_equal(r->status, 0);
    assert_int_equal(prom_check(r->out, p), 0);
    for (i = 0; i < (size_t)p->n; i++)
        states += !strncmp(p->s[i].id, "warmlock_state{", 15);
    assert_int_equal(states, (int)(5 * nk));
    if (system("command -v promtool >/dev/null 2>&1") == 0) {
        char file[128], cmd[300];
        FILE *f;
        snprintf(file, sizeof(file), "%s/metrics.txt", DIR_);
        f = fopen(file, "w");
        assert_non_null(f);
        fputs(r->out, f);
        fclose(f);
        /* exit 1 is a parse error; 3 only lint advice */
        snprintf(cmd, sizeof(cmd), "promtool check metrics < %s >/dev/null 2>&1; test $? != 1",
                 file);
        assert_int_equal(system(cmd), 0);
    } else {
        print_message("promtool not installed; the strict checker above stands in\n");
    }
    wl_close(seg);
    wl_unlink(shm);
    free(p);
    free(r);
    (void)state;
}

/* Two conninfos whose keys are longer than WL_KEY_MAX and share a prefix: invalidate finds
 * exactly its own slot (A goes stale, C stays ready), and check tells them apart. */
static void long_conninfo(char *buf, size_t len, char tail)
{
    char opt[600];
    memset(opt, 'x', 500);
    opt[500] = tail;
    opt[501] = '\0';
    snprintf(buf, len, "host=/nowhere port=5 dbname=d user=u options='-c search_path=%s'", opt);
}

static void test_invalidate_matches_long_keys_exactly(void **state)
{
    const char *shm = segname();
    static char ca[1024], cc[1024], ka[4096], kc[4096];
    struct wl_segment *seg;
    struct wl_slot_info ia, ic;
    struct wlt_run *r = wlt_newrun();

    long_conninfo(ca, sizeof(ca), 'A');
    long_conninfo(cc, sizeof(cc), 'C');
    assert_true(wl_pg_key(ca, ka, sizeof(ka)) > WL_KEY_MAX);
    assert_true(wl_pg_key(cc, kc, sizeof(kc)) > WL_KEY_MAX);
    assert_int_equal(memcmp(ka, kc, WL_KEY_MAX), 0);
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, kc, NULL, NULL, NULL, NULL), 0); /* C first in the table */
    assert_int_equal(wl_ensure(seg, ka, NULL, NULL, NULL, NULL), 0);
    RUN(r, 5000, WL_WARMLOCK, "invalidate", "--shm", (char *)shm, ca);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "invalidated"));
    assert_int_equal(wl_lookup(seg, ka, &ia), 0);
    assert_int_equal(wl_lookup(seg, kc, &ic), 0);
    assert_int_equal(ia.state, WL_STALE);
    assert_int_equal(ic.state, WL_READY);
    RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, cc);
    assert_int_equal(r->status, 0);
    RUN(r, 5000, WL_WARMLOCK, "check", "--shm", (char *)shm, ca);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->err, "stale"));
    wl_close(seg);
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* invalidate --epoch N (default $WARMLOCK_EPOCH): an old epoch changes nothing. */
static void test_invalidate_epoch_ignores_an_old_epoch(void **state)
{
    const char *shm = segname();
    const char *ci = "host=/nowhere port=5 dbname=epochs";
    char key[1024];
    struct wl_segment *seg;
    struct wl_slot_info si;
    struct wl_result res;
    struct wlt_run *r = wlt_newrun();

    assert_true(wl_pg_key(ci, key, sizeof(key)) > 0);
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, key, NULL, NULL, NULL, &res), 0);
    assert_int_equal(wl_invalidate(seg, key, res.epoch), 1);
    assert_int_equal(wl_ensure(seg, key, NULL, NULL, NULL, &res), 0);
    assert_int_equal(res.epoch, 2);

    RUN(r, 5000, WL_WARMLOCK, "invalidate", "--epoch", "1", "--shm", (char *)shm, (char *)ci);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "nothing changed"));
    assert_int_equal(wl_lookup(seg, key, &si), 0);
    assert_int_equal(si.state, WL_READY);

    setenv("WARMLOCK_EPOCH", "1", 1);
    RUN(r, 5000, WL_WARMLOCK, "invalidate", "--shm", (char *)shm, (char *)ci);
    unsetenv("WARMLOCK_EPOCH");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "nothing changed"));
    assert_int_equal(wl_lookup(seg, key, &si), 0);
    assert_int_equal(si.state, WL_READY);

    RUN(r, 5000, WL_WARMLOCK, "invalidate", "--epoch", "2", "--shm", (char *)shm, (char *)ci);
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "epoch 2 invalidated"));
    assert_int_equal(wl_lookup(seg, key, &si), 0);
    assert_int_equal(si.state, WL_STALE);

    RUN(r, 5000, WL_WARMLOCK, "invalidate", "--epoch", "two", "--shm", (char *)shm,
        (char *)ci);
    assert_int_equal(r->status, 2);
    wl_close(seg);
    wl_unlink(shm);
    free(r);
    (void)state;
}

/* Directories where a file or a segment belongs get one clean line each; a bad --shm name
 * is a usage error (exit 2) that names it, for wait as for the others. */
static void test_directories_and_bad_names_get_clean_errors(void **state)
{
    const char *shm = segname();
    char path[128];
    struct wlt_run *r = wlt_newrun();
    size_t i;

    RUN(r, 5000, WL_WARMLOCK, "wait", "--warm-sql", DIR_, "host=/nowhere");
    assert_int_equal(r->status, 1);
    assert_int_equal(wlt_count_lines(r->err), 1);
    assert_non_null(strstr(r->err, "is a directory"));
    RUN(r, 5000, WL_WARMLOCKD, "--foreground", "--shm", (char *)shm, "--config", DIR_);
    assert_int_not_equal(r->status, 0);
    assert_non_null(strstr(r->err, "is a directory"));
    assert_null(strstr(r->err, "Input/output error"));
    wl_unlink(shm); /* the daemon may have made it before reading its --config */

    shm_path(path, sizeof(path), shm);
    assert_int_equal(mkdir(path, 0700), 0);
    for (i = 0; i < sizeof(every_cmd) / sizeof(every_cmd[0]); i++) {
        expect_one_line(r, every_cmd[i][0], shm, every_cmd[i][1], 1,
                        "not a regular shared-memory object (a directory)");
        /* said once, not "cannot open segment X: cannot open segment X: ..." */
        assert_null(strstr(r->err, "cannot open segment"));
    }
    rmdir(path);

    for (i = 0; i < sizeof(every_cmd) / sizeof(every_cmd[0]); i++)
        expect_one_line(r, every_cmd[i][0], "noslash", every_cmd[i][1], 2, "'noslash'");
    /* the new options are accepted (not usage errors) */
    RUN(r, 10000, WL_WARMLOCK, "wait", "--fail-fast", "--max-age", "2", "--timeout", "0.2",
        "--shm", (char *)shm, "host=/nonexistent-dir port=1 dbname=x");
    assert_int_equal(r->status, 1);
    assert_int_equal(wlt_count_lines(r->err), 1);
    wl_unlink(shm);
    free(r);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fifo_at_the_name_hangs_no_command),
        cmocka_unit_test(test_short_zero_object_is_left_untouched),
        cmocka_unit_test(test_empty_object_is_finished_by_a_user_not_a_reader),
        cmocka_unit_test(test_other_uids_segment_is_an_error_not_an_empty_one),
        cmocka_unit_test(test_unlink_removes_a_broken_segment_and_spares_one_in_use),
        cmocka_unit_test(test_metrics_are_valid_for_odd_and_long_keys),
        cmocka_unit_test(test_invalidate_matches_long_keys_exactly),
        cmocka_unit_test(test_invalidate_epoch_ignores_an_old_epoch),
        cmocka_unit_test(test_directories_and_bad_names_get_clean_errors),
        cmocka_unit_test(test_usage_errors_exit_2_with_one_line),
        cmocka_unit_test(test_prometheus_checker_is_strict),
        cmocka_unit_test(test_exec_beside_warm_daemon_runs_no_warmup),
        cmocka_unit_test(test_daemon_and_waiters_at_server_start_share_one_warmup),
        cmocka_unit_test(test_server_stop_is_seen_and_recovery_needs_no_restart),
        cmocka_unit_test(test_status_json_parses_and_no_password_anywhere),
        cmocka_unit_test(test_metrics_are_valid_and_counters_never_decrease),
        cmocka_unit_test(test_killed_daemon_is_taken_over_and_restart_adopts),
        cmocka_unit_test(test_daemon_notifies_readiness),
        cmocka_unit_test(test_daemon_reloads_config_and_survives_name_removal),
    };
    if (getenv("WL_CLI_ONLY"))
        cmocka_set_test_filter(getenv("WL_CLI_ONLY"));
    return cmocka_run_group_tests_name("cli", tests, setup, teardown);
}
