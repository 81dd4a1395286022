/*
 * Database faults with a real server, on both event-loop backends
 * (WARMLOCK_IO=uring and poll): herds of forked processes calling wl_pg_ensure and
 * wl_pg_connect while the server
 *
 *   1. is stopped -m immediate while the leader runs warm_sql, then restarted;
 *   2. is stopped -m immediate while the leader runs verify_sql, and stays down;
 *   3. crashes (-m immediate) after READY and restarts into crash recovery (57P03), with a
 *      patient herd whose connections broke and an impatient one on its own segment;
 *   4. has no connection slot left (53300), first for longer than the callers' deadline, then
 *      until slots free up;
 *   5. is down behind a pgbouncer that itself is up, then comes back.
 *
 * Each time every caller ends with success or a clear error (a documented code, one line
 * naming the reason) by its deadline, and nothing wedges: afterwards the slot is not left
 * WARMING (wl_snapshot) and a fresh call succeeds once the server is up.
 *
 * Even workers call wl_pg_ensure, odd ones wl_pg_connect. A follower whose deadline falls
 * at the same instant as its leader's may get the generic "timed out after N ms waiting for
 * ..." (naming the leader pid) instead of the leader's reason: both are accepted here.
 * About 35 s for both backends on a 2-core machine. WL_DBF_ONLY='*pattern*' runs a subset.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define PASSWORD "dbfaults-Pa55word"
#define MAXP     16
#define MS       1000000ull
/* How late after its deadline a call may return: scheduling on a loaded 2-core machine,
 * process exit of a leader's connection, one backoff step's rounding. */
#define SLACK_MS    300u
#define FAIL_TTL_MS 300u
/* The server's connection limit: enough for a herd of 6 plus the harness, small enough
 * that the test fills it quickly for 53300. */
#define MAX_CONNECTIONS 12

WLT_PG_SUITE
static PGconn *held[MAX_CONNECTIONS + 4]; /* connections the 53300 test holds */
static int nheld;
static char segs[64][64]; /* every segment name this run used */
static size_t nsegs;
static char CI[1024];

enum mode {
    M_CALL,   /* barrier, then one call */
    M_BROKEN, /* connect (READY), wait for go, find the connection broken, invalidate, call */
};

struct herd {
    char seg[64];
    char ci[1024];
    char key[512];
    uint32_t n;
    enum mode mode;
    struct wlt_barrier bar;
    struct wl_pg_opts o;
    _Atomic uint32_t connected;
    _Atomic uint32_t go;
    /* per worker: even workers call wl_pg_ensure, odd ones wl_pg_connect */
    int rc[MAXP]; /* wl_pg_ensure's code; wl_pg_connect: 0, or 1 for NULL */
    int role[MAXP], query_ok[MAXP], saw_broken[MAXP], exited[MAXP];
    unsigned attempts[MAXP];
    uint64_t epoch[MAXP], t_call[MAXP], t_done[MAXP];
    char sqlstate[MAXP][6];
    char err[MAXP][256];
};

static int group_setup(void **state)
{
    (void)state;
    char conf[128];
    snprintf(conf, sizeof(conf), "max_connections = %d\nsuperuser_reserved_connections = 0\n",
             MAX_CONNECTIONS);
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, conf)))
        return 0;
    have_pg = 1;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    return 0;
}

/* Connections a failed 53300 test left open (cmocka's failure longjmps past its cleanup). */
static void release_held(void)
{
    while (nheld > 0)
        PQfinish(held[--nheld]);
}

static int group_teardown(void **state)
{
    release_held();
    for (size_t i = 0; i < nsegs; i++)
        wl_unlink(segs[i]); /* -ENOENT for those a passing test removed already */
    return pg_group_teardown(state);
}

static void ensure_running(void)
{
    release_held();
    pg_ensure_up();
}

static double ms_since(uint64_t t0, uint64_t t)
{
    return t > t0 ? (double)(t - t0) / 1e6 : -(double)(t0 - t) / 1e6;
}

static int query_one(PGconn *c)
{
    PGresult *r = PQexec(c, "SELECT 1");
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    PQclear(r);
    return ok;
}

static void quiet(void *arg, const char *msg)
{
    (void)arg;
    (void)msg;
}

/* One call of worker i, recorded. */
static void call(struct herd *h, struct wl_segment *seg, int i)
{
    struct wl_result r;
    memset(&r, 0, sizeof(r));
    h->t_call[i] = wlt_now_ns();
    if (i % 2 == 0) {
        h->rc[i] = wl_pg_ensure(seg, h->ci, &h->o, &r);
        h->t_done[i] = wlt_now_ns();
    } else {
        PGconn *c = wl_pg_connect(seg, h->ci, &h->o, &r);
        h->t_done[i] = wlt_now_ns();
        h->rc[i] = c ? 0 : 1;
        h->query_ok[i] = c && query_one(c);
        PQfinish(c);
    }
    h->role[i] = r.role;
    h->epoch[i] = r.epoch;
    h->attempts[i] = r.attempts;
    memcpy(h->sqlstate[i], r.sqlstate, sizeof(r.sqlstate));
    memcpy(h->err[i], r.error, sizeof(r.error));
}

static int worker(void *arg, int i)
{
    struct herd *h = arg;
    struct wl_segment *seg;

    if (wl_open(h->seg, NULL, &seg) < 0)
        return 90;
    if (h->mode == M_BROKEN) {
        struct wl_pg_opts o = h->o;
        struct wl_result r;
        o.wait.timeout_ms = 20000;
        PGconn *c = wl_pg_connect(seg, h->ci, &o, &r);
        if (!c)
            return 91;
        PQsetNoticeProcessor(c, quiet, NULL); /* "terminating connection due to immediate..." */
        uint64_t epoch = r.epoch;
        atomic_fetch_add(&h->connected, 1);
        wlt_wake(&h->connected);
        wlt_wait_change(&h->go, 0, 60000);
        if (!query_one(c)) { /* the server went away under us: tell everyone */
            char k[WL_PG_KEY_MAX];
            h->saw_broken[i] = 1;
            if (wl_pg_slot_key(seg, h->ci, k, sizeof(k)) > 0)
                wl_invalidate(seg, k, epoch);
        }
        PQfinish(c);
    } else if (h->n > 1) {
        wlt_barrier_wait(&h->bar, h->n);
    }
    call(h, seg, i);
    h->exited[i] = 1;
    wl_close(seg);
    return 0;
}

static struct herd *new_herd(uint32_t n, const char *ci, uint32_t timeout_ms)
{
    struct herd *h = wlt_shared(sizeof(*h));
    assert_true(n <= MAXP);
    h->n = n;
    snprintf(h->seg, sizeof(h->seg), "%s", wlt_segname());
    if (nsegs < sizeof(segs) / sizeof(segs[0])) /* unlinked at the end, even after a failure */
        snprintf(segs[nsegs++], sizeof(segs[0]), "%s", h->seg);
    snprintf(h->ci, sizeof(h->ci), "%s", ci);
    assert_true(wl_pg_key(ci, h->key, sizeof(h->key)) > 0);
    h->o.wait.timeout_ms = timeout_ms;
    h->o.wait.fail_ttl_ms = FAIL_TTL_MS;
    return h;
}

static void spawn(struct herd *h, pid_t *pids)
{
    for (uint32_t i = 0; i < h->n; i++)
        pids[i] = wlt_spawn(worker, h, (int)i);
}

static void reap(struct herd *h, pid_t *pids)
{
    for (uint32_t i = 0; i < h->n; i++) {
        int st = wlt_wait(pids[i], 60000);
        if (st != 0)
            fail_msg("worker %u ended with status %d (-1: still running after 60 s: wedged)", i,
                     st);
    }
}

/* What a scenario expects of each caller. */
struct expect {
    int may_succeed, may_fail;
    /* a failed caller's message must contain one of these (NULL-terminated list) */
    const char *why[6];
};

static int has_any(const char *s, const char *const *needles)
{
    for (; *needles; needles++)
        if (strstr(s, *needles))
            return 1;
    return 0;
}

/* Check every caller: an allowed outcome, by its deadline, a one-line meaningful error.
 * Prints each distinct outcome once. Returns how many succeeded. */
static int check_herd(const char *what, struct herd *h, const struct expect *e)
{
    uint32_t timeout = h->o.wait.timeout_ms;
    int ok = 0;
    double worst = 0;

    for (uint32_t i = 0; i < h->n; i++) {
        const char *fn = i % 2 ? "wl_pg_connect" : "wl_pg_ensure";
        double took = ms_since(h->t_call[i], h->t_done[i]);
        int printed = 0;

        if (!h->exited[i])
            fail_msg("%s: worker %u did not finish its call", what, i);
        worst = took > worst ? took : worst;
        if (took > timeout + SLACK_MS)
            fail_msg("%s: worker %u (%s) returned after %.0f ms, deadline %u ms", what, i, fn, took,
                     timeout);
        for (uint32_t j = 0; j < i; j++) /* print one line per distinct outcome */
            if (j % 2 == i % 2 && h->rc[j] == h->rc[i] && h->role[j] == h->role[i] &&
                !strncmp(h->err[j], h->err[i], 40))
                printed = 1;
        if (!printed)
            print_message("  %s w%u %s %s: %s after %.0f ms, attempts %u, sqlstate '%s'%s%s\n",
                          what, i, fn, h->role[i] == WL_LEADER ? "leader" : "follower",
                          h->rc[i] == 0   ? "ok"
                          : h->rc[i] == 1 ? "NULL"
                                          : wl_strerror(h->rc[i]),
                          took, h->attempts[i], h->sqlstate[i], h->err[i][0] ? ": " : "",
                          h->err[i]);
        if (h->rc[i] == 0) {
            if (!e->may_succeed)
                fail_msg("%s: worker %u (%s) succeeded where a failure was expected", what, i, fn);
            if (i % 2 && !h->query_ok[i])
                fail_msg("%s: worker %u: the connection wl_pg_connect returned cannot query", what,
                         i);
            if (h->err[i][0])
                fail_msg("%s: worker %u succeeded with an error text '%s'", what, i, h->err[i]);
            ok++;
            continue;
        }
        if (!e->may_fail)
            fail_msg("%s: worker %u (%s) failed: %d %s", what, i, fn, h->rc[i], h->err[i]);
        /* documented codes only */
        if (i % 2 == 0 && h->rc[i] != -ETIMEDOUT && h->rc[i] != -ECONNREFUSED)
            fail_msg("%s: worker %u: undocumented code %d for this fault: %s", what, i, h->rc[i],
                     h->err[i]);
        /* a deadline error comes at the deadline, not before */
        if (h->rc[i] == -ETIMEDOUT && took < timeout * 0.9)
            fail_msg("%s: worker %u: -ETIMEDOUT after %.0f ms, before its %u ms deadline", what, i,
                     took, timeout);
        /* one line, meaningful */
        size_t len = strlen(h->err[i]);
        if (len < 20)
            fail_msg("%s: worker %u: message too short to say anything: '%s'", what, i, h->err[i]);
        if (strchr(h->err[i], '\n') || strchr(h->err[i], '\r') || strchr(h->err[i], '\t'))
            fail_msg("%s: worker %u: message is not one line: '%s'", what, i, h->err[i]);
        if (!has_any(h->err[i], e->why))
            fail_msg("%s: worker %u: message does not say why: '%s'", what, i, h->err[i]);
    }
    print_message("  %s: %d of %u succeeded; slowest call %.0f ms (deadline %u ms)\n", what, ok,
                  h->n, worst, timeout);
    return ok;
}

static int count_leaders(struct herd *h)
{
    int n = 0;
    for (uint32_t i = 0; i < h->n; i++)
        n += h->role[i] == WL_LEADER;
    return n;
}

static unsigned leader_attempts(struct herd *h)
{
    unsigned a = 0;
    for (uint32_t i = 0; i < h->n; i++)
        if (h->role[i] == WL_LEADER)
            a += h->attempts[i];
    return a;
}

static uint64_t last_done(struct herd *h)
{
    uint64_t t = 0;
    for (uint32_t i = 0; i < h->n; i++)
        t = h->t_done[i] > t ? h->t_done[i] : t;
    return t;
}

/* The herd's slot: not WARMING once every caller has returned. */
static void snapshot(struct herd *h, struct wl_slot_info *info)
{
    struct wl_segment *seg;
    assert_int_equal(wl_open(h->seg, NULL, &seg), 0);
    assert_int_equal(wl_snapshot(seg, info, 1), 1);
    wl_close(seg);
    print_message("  slot: %s epoch %llu warmups %llu failures %llu attempts %llu "
                  "invalidations %llu waiters %u%s%s\n",
                  wl_state_name(info->state), (unsigned long long)info->epoch,
                  (unsigned long long)info->warmups, (unsigned long long)info->failures,
                  (unsigned long long)info->attempts, (unsigned long long)info->invalidations,
                  info->waiters, info->last_error[0] ? "; last error: " : "", info->last_error);
    if (info->state == WL_WARMING)
        fail_msg("slot left WARMING (leader pid %d, alive %d) after every caller returned",
                 (int)info->leader_pid, info->leader_alive);
    assert_int_equal(info->waiters, 0);
}

/* Nothing wedged: with the server up, a fresh caller (default options but the deadline)
 * succeeds through both calls, and the slot ends READY. */
static void fresh_call_succeeds(struct herd *h, const char *ci)
{
    struct wl_segment *seg;
    struct wl_pg_opts o;
    struct wl_result r;
    struct wl_slot_info info;

    ensure_running();
    wlt_sleep_ms(FAIL_TTL_MS); /* a published failure is served for fail_ttl: let it pass */
    memset(&o, 0, sizeof(o));
    o.wait.timeout_ms = 10000;
    o.wait.fail_ttl_ms = FAIL_TTL_MS;
    assert_int_equal(wl_open(h->seg, NULL, &seg), 0);
    uint64_t t0 = wlt_now_ns();
    int rc = wl_pg_ensure(seg, ci, &o, &r);
    if (rc != 0)
        fail_msg("fresh wl_pg_ensure after the fault: %d %s", rc, r.error);
    PGconn *c = wl_pg_connect(seg, ci, &o, &r);
    if (!c)
        fail_msg("fresh wl_pg_connect after the fault: %s", r.error);
    assert_true(query_one(c));
    PQfinish(c);
    print_message("  fresh call after the fault: ok in %.0f ms\n", ms_since(t0, wlt_now_ns()));
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.state, WL_READY);
    wl_close(seg);
    wl_unlink(h->seg);
}

/* Wait until a backend other than ours runs a query containing `tag`; 0 or -1. */
static int wait_active(const char *tag, unsigned timeout_ms)
{
    char sql[256];
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * MS;
    PGconn *c = PQconnectdb(CI);
    int found = 0;

    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
             "pid <> pg_backend_pid() AND query LIKE '%%%s%%'",
             tag);
    while (PQstatus(c) == CONNECTION_OK && !found && wlt_now_ns() < end) {
        PGresult *r = PQexec(c, sql);
        found = PQresultStatus(r) == PGRES_TUPLES_OK && atoi(PQgetvalue(r, 0, 0)) > 0;
        PQclear(r);
        if (!found)
            wlt_sleep_ms(10);
    }
    if (PQstatus(c) != CONNECTION_OK)
        print_message("wait_active: %s", PQerrorMessage(c));
    PQfinish(c);
    return found ? 0 : -1;
}

/* Spawn the herd and wait until its leader runs the query tagged `tag`. */
static void spawn_until_active(struct herd *h, pid_t *pids, const char *tag)
{
    spawn(h, pids);
    if (wait_active(tag, 5000) < 0) {
        reap(h, pids);
        fail_msg("the query tagged %s never showed up in pg_stat_activity", tag);
    }
}

/* ------------------------------------------------------------------------ scenarios */

/* 1. Immediate stop while the leader runs warm_sql; the server restarts 300 ms later (crash
 * recovery of a short WAL): the leader retries through refused connections and 57P03, runs
 * warm_sql again and everyone succeeds in one epoch. */
static void test_immediate_stop_mid_warmup_then_restart(void **state)
{
    wlt_backend(state);
    NEED_PG();
    ensure_running();
    struct herd *h = new_herd(6, CI, 10000);
    h->o.warm_sql = "SELECT pg_sleep(0.5) /* wl-dbf-warm */";
    pid_t pids[MAXP];
    spawn_until_active(h, pids, "wl-dbf-warm");
    uint64_t t_stop = wlt_now_ns();
    assert_int_equal(pgh_stop(&H, "immediate"), 0);
    wlt_sleep_ms(300);
    uint64_t t_start = wlt_now_ns();
    assert_int_equal(pgh_start(&H, 0), 0);
    reap(h, pids);
    static const struct expect e = {1, 0, {NULL}};
    assert_int_equal(check_herd("mid-warm-up", h, &e), (int)h->n);
    assert_int_equal(count_leaders(h), 1);
    for (uint32_t i = 1; i < h->n; i++)
        assert_int_equal(h->epoch[i], h->epoch[0]);
    assert_true(leader_attempts(h) >= 2); /* the broken attempt, then one that worked */
    print_message("mid-warm-up: stop at +0, restart at +%.0f ms, all ready at +%.0f ms; "
                  "leader attempts %u\n",
                  ms_since(t_stop, t_start), ms_since(t_stop, last_done(h)), leader_attempts(h));
    struct wl_slot_info info;
    snapshot(h, &info);
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.warmups, 1);
    assert_int_equal(info.failures, 0);
    fresh_call_succeeds(h, CI);
}

/* 2. Immediate stop while the leader runs verify_sql; the server stays down past every
 * deadline: everyone gets -ETIMEDOUT at its deadline saying so (the leader's message, also
 * published to followers, names the attempts and the last error). Then the server comes
 * back and a fresh call succeeds. */
static void test_immediate_stop_mid_verify_server_stays_down(void **state)
{
    wlt_backend(state);
    NEED_PG();
    ensure_running();
    struct herd *h = new_herd(6, CI, 2000);
    h->o.verify_sql = "SELECT pg_sleep(0.5) /* wl-dbf-verify */";
    pid_t pids[MAXP];
    spawn_until_active(h, pids, "wl-dbf-verify");
    assert_int_equal(pgh_stop(&H, "immediate"), 0);
    reap(h, pids);
    static const struct expect e = {0, 1, {"deadline passed", "timed out after", NULL}};
    check_herd("mid-verify, server down", h, &e);
    /* A leader cut off by its own deadline leaves the slot to callers with time left, so
     * with staggered deadlines more than one may lead in turn. */
    assert_true(count_leaders(h) >= 1);
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->role[i] != WL_LEADER)
            continue;
        /* the leader says what it did and what went wrong last */
        assert_int_equal(h->rc[i], i % 2 ? 1 : -ETIMEDOUT);
        if (!strstr(h->err[i], "attempts") || !strstr(h->err[i], "last error: "))
            fail_msg("leader's message does not say what was tried: '%s'", h->err[i]);
    }
    struct wl_slot_info info;
    snapshot(h, &info);
    /* a warm-up cut off by its caller's deadline leaves the slot STALE (not FAILED: it says
     * nothing final), with its error kept */
    assert_int_equal(info.state, WL_STALE);
    assert_int_equal(info.last_code, -ETIMEDOUT);
    fresh_call_succeeds(h, CI);
}

static uint32_t broken_count(struct herd *h)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < h->n; i++)
        n += h->saw_broken[i];
    return n;
}

/* 3. After READY the server crashes (immediate stop with WAL to replay) and restarts into
 * crash recovery: every worker's connection breaks; they invalidate, one re-verifies through
 * refused connections and 57P03, the rest wait; all succeed in the next epoch. Meanwhile, with
 * the server held in recovery, an impatient herd on another segment, with a 500 ms deadline,
 * gets -ETIMEDOUT naming 57P03; then the server is released. */
static void test_crash_after_ready_restart_into_recovery(void **state)
{
    wlt_backend(state);
    NEED_PG();
    ensure_running();
    struct herd *h = new_herd(6, CI, 15000);
    struct herd *q = new_herd(4, CI, 500);
    h->mode = M_BROKEN;
    pid_t pids[MAXP], qpids[MAXP];
    spawn(h, pids);
    for (int i = 0; i < 3000 && atomic_load(&h->connected) < h->n; i++)
        wlt_sleep_ms(5);
    assert_int_equal(atomic_load(&h->connected), h->n);
    struct wl_slot_info before, info;
    snapshot(h, &before);
    assert_int_equal(before.state, WL_READY);

    assert_int_equal(pgh_crash(&H), 0);
    long mark = pgh_log_mark(&H);
    atomic_store(&h->go, 1); /* they find their connections broken while the server is down */
    wlt_wake(&h->go);
    for (int i = 0; i < 2000 && broken_count(h) < h->n; i++)
        wlt_sleep_ms(5);
    assert_int_equal(broken_count(h), h->n);
    /* Held in recovery until the impatient herd is done: it answers 57P03 throughout, however
     * fast replay is on this machine. */
    uint64_t t_start = wlt_now_ns();
    assert_int_equal(pgh_start_held(&H), 0);
    spawn(q, qpids);
    reap(q, qpids);
    uint64_t t_release = wlt_now_ns();
    assert_int_equal(pgh_release(&H, 0), 0);
    reap(h, pids);
    int n57 = pgh_count_log_57P03_since(&H, mark);

    static const struct expect patient = {1, 0, {NULL}};
    check_herd("after READY + recovery", h, &patient);
    for (uint32_t i = 0; i < h->n; i++) {
        assert_true(h->saw_broken[i]);
        assert_int_equal(h->epoch[i], before.epoch + 1);
    }
    snapshot(h, &info);
    assert_int_equal(info.state, WL_READY);
    assert_int_equal(info.warmups, before.warmups + 1); /* one re-verification for all */
    assert_true(info.invalidations >= 1);

    static const struct expect impatient = {0, 1, {"57P03", "timed out after", NULL}};
    check_herd("during recovery, 500 ms deadline", q, &impatient);
    int named = 0;
    for (uint32_t i = 0; i < q->n; i++) {
        if (q->role[i] == WL_LEADER && !strstr(q->err[i], "57P03"))
            fail_msg("impatient leader's message does not name 57P03: '%s'", q->err[i]);
        named += !strcmp(q->sqlstate[i], "57P03");
    }
    assert_true(named >= 1);
    snapshot(q, &info);
    print_message("crash recovery: restart at +0, released at +%.0f ms, patient herd ready at "
                  "+%.0f ms (leader attempts %u); server refused %d connections with 57P03\n",
                  ms_since(t_start, t_release), ms_since(t_start, last_done(h)),
                  leader_attempts(h), n57);
    assert_true(n57 >= 1);
    wl_unlink(q->seg);
    fresh_call_succeeds(h, CI);
}

/* Fill the server's connection slots from the test; returns how many are held. */
static int fill_connections(void)
{
    int max = (int)(sizeof(held) / sizeof(held[0]));
    while (nheld < max) {
        PGconn *c = PQconnectdb(CI);
        if (PQstatus(c) != CONNECTION_OK) {
            char m[512];
            snprintf(m, sizeof(m), "%s", PQerrorMessage(c));
            PQfinish(c);
            if (!strstr(m, "too many clients"))
                fail_msg("filling connections: unexpected failure: %s", m);
            return nheld;
        }
        held[nheld++] = c;
    }
    fail_msg("the server took %d connections without 53300", max);
    return nheld;
}

/* 4. 53300: every connection slot is taken. (a) for longer than the deadline: everyone gets
 * -ETIMEDOUT, the leader's (published) message names 53300; (b) one slot frees 500 ms into
 * the calls and the rest 1 s later: the leader retries and everyone succeeds. */
static void test_too_many_connections_53300(void **state)
{
    wlt_backend(state);
    NEED_PG();
    ensure_running();
    int n = fill_connections();
    print_message("53300: the test holds %d connections\n", n);
    assert_true(n >= 2);

    struct herd *h = new_herd(6, CI, 1500);
    pid_t pids[MAXP];
    spawn(h, pids);
    reap(h, pids);
    static const struct expect full = {
        0, 1, {"53300", "too many clients", "timed out after", NULL}};
    check_herd("53300 throughout", h, &full);
    for (uint32_t i = 0; i < h->n; i++) {
        if (h->role[i] != WL_LEADER)
            continue;
        assert_int_equal(h->rc[i], i % 2 ? 1 : -ETIMEDOUT);
        assert_string_equal(h->sqlstate[i], "53300");
        if (!strstr(h->err[i], "53300") || !strstr(h->err[i], "too many clients"))
            fail_msg("leader's message does not name 53300: '%s'", h->err[i]);
    }
    struct wl_slot_info info;
    snapshot(h, &info);
    assert_int_equal(info.state, WL_STALE); /* cut off by the deadline: see above */
    assert_string_equal(info.sqlstate, "53300");
    wl_unlink(h->seg);

    struct herd *g = new_herd(6, CI, 8000);
    spawn(g, pids);
    wlt_sleep_ms(500);
    uint64_t t_free = wlt_now_ns();
    PQfinish(held[--nheld]); /* one slot: enough for the leader's probe */
    wlt_sleep_ms(1000);
    release_held(); /* the rest: the connecting followers need one each */
    reap(g, pids);
    static const struct expect freed = {1, 0, {NULL}};
    check_herd("53300 then free", g, &freed);
    print_message("53300: first slot freed at +0, all done at +%.0f ms; leader attempts %u\n",
                  ms_since(t_free, last_done(g)), leader_attempts(g));
    snapshot(g, &info);
    assert_int_equal(info.state, WL_READY);
    fresh_call_succeeds(g, CI);
}

/* One herd through the bouncer while the server is down (deadline 1.5 s: all fail with a
 * message from `why`), then one while it comes back 500 ms into the calls (all succeed). */
static void bouncer_round(const char *what, const char *bci, const struct expect *down,
                          const char *leader_says)
{
    char label[96];
    pid_t pids[MAXP];
    struct wl_slot_info info;

    struct herd *h = new_herd(6, bci, 1500);
    h->o.attempt_timeout_ms = 400; /* a login or query held by the bouncer: retry sooner */
    spawn(h, pids);
    reap(h, pids);
    snprintf(label, sizeof(label), "%s, server down", what);
    check_herd(label, h, down);
    assert_true(count_leaders(h) >= 1); /* a leader cut off by its deadline leaves the slot to others */
    for (uint32_t i = 0; i < h->n; i++)
        if (h->role[i] == WL_LEADER && !strstr(h->err[i], leader_says))
            fail_msg("%s: the leader's message does not say '%s': '%s'", label, leader_says,
                     h->err[i]);
    snapshot(h, &info);
    assert_int_equal(info.state, WL_STALE); /* cut off by the deadline */
    wl_unlink(h->seg);

    struct herd *g = new_herd(6, bci, 10000);
    g->o.attempt_timeout_ms = 400;
    spawn(g, pids);
    wlt_sleep_ms(500);
    uint64_t t_start = wlt_now_ns();
    assert_int_equal(pgh_start(&H, 0), 0);
    reap(g, pids);
    static const struct expect up = {1, 0, {NULL}};
    snprintf(label, sizeof(label), "%s, server back", what);
    check_herd(label, g, &up);
    assert_int_equal(count_leaders(g), 1);
    print_message("%s: server start at +0, all ready at +%.0f ms; leader attempts %u\n", label,
                  ms_since(t_start, last_done(g)), leader_attempts(g));
    snapshot(g, &info);
    assert_int_equal(info.state, WL_READY);
    fresh_call_succeeds(g, bci);
}

/* 5. pgbouncer in front of a server that is down, then up.
 * (a) A bouncer that has not reached the server yet holds the client's login until it can
 *     (it has no server parameters to answer with): the attempt is cut by the attempt timeout
 *     or the deadline, and retried; once the server is back, the leader gets through.
 * (b) A bouncer that has served before logs clients in from its cache and fails their first
 *     query: FATAL 08P01 "pgbouncer cannot connect to server". That is class 08, retried; the
 *     error while down names it; once the server is back, the leader gets through.
 * pgbouncer waits server_login_retry (default 15 s) after a failed server login before it
 * tries again: set to 1 s here through its admin console, to keep the suite short. */
static void test_pgbouncer_server_down_then_up(void **state)
{
    wlt_backend(state);
    NEED_PG();
    const char *why = pgh_bouncer_unavailable();
    if (why) {
        print_message("skipped: %s\n", why);
        skip();
    }
    ensure_running();
    pgh_bouncer_stop(&H); /* a fresh bouncer: it has never reached the server */
    assert_int_equal(pgh_bouncer_start(&H, NULL), 0);
    char bci[1024], admin[1024], out[512];
    snprintf(bci, sizeof(bci), "%s password=%s", H.bouncer_conninfo, PASSWORD);
    snprintf(admin, sizeof(admin), "host=%s port=%d dbname=pgbouncer user=postgres", H.dir,
             H.bouncer_port);
    int st = pgh_psql_conn(&H, admin, PASSWORD, "SET server_login_retry = 1", out, sizeof(out));
    if (st != 0)
        fail_msg("pgbouncer admin console: SET server_login_retry failed (%d): %s", st, out);

    assert_int_equal(pgh_stop(&H, "fast"), 0);
    static const struct expect cold = {0, 1, {"while connecting", "timed out after", NULL}};
    bouncer_round("cold pgbouncer", bci, &cold, "while connecting");

    /* the bouncer has served now; the server goes away under it */
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    static const struct expect warm = {
        0,
        1,
        {"pgbouncer cannot connect to server", "server_login_retry", "timed out after", NULL}};
    bouncer_round("warm pgbouncer", bci, &warm, "08P01");
    pgh_bouncer_stop(&H);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WLT_BOTH(test_immediate_stop_mid_warmup_then_restart),
        WLT_BOTH(test_immediate_stop_mid_verify_server_stays_down),
        WLT_BOTH(test_crash_after_ready_restart_into_recovery),
        WLT_BOTH(test_too_many_connections_53300),
        WLT_BOTH(test_pgbouncer_server_down_then_up),
    };
    /* WL_DBF_ONLY=pattern runs only the matching tests (cmocka's filter, '*' wildcards). */
    if (getenv("WL_DBF_ONLY"))
        cmocka_set_test_filter(getenv("WL_DBF_ONLY"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
