/*
 * Fleet mode (WL_PG_FLEET) against a real PostgreSQL, with real processes: "hosts" are
 * separate segments, each with its own herd of forked processes calling wl_pg_ensure; the
 * host leaders elect one fleet leader through the server. Every case runs on both event
 * loop backends (WARMLOCK_IO=uring and poll).
 *
 * warm_sql inserts one row into fleet_runs, so the rows count the heavy warm-ups that
 * committed. Where a case needs the fleet leader to stay in its warm-up (killed there, or
 * the others waiting for it), warm_sql also takes a shared advisory lock that the test
 * holds exclusively until it lets go: held, not timed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

/* the library's own (the suite links it statically): the fleet lock id of a key */
int64_t wl__fleet_id(const char *key);

WLT_PG_SUITE

#define MAXP      40
#define HOLD_LOCK 4242 /* the test's own advisory lock a held warm_sql waits for */
#define WARM_SQL                                                                                   \
    "INSERT INTO fleet_runs (started) VALUES "                                                     \
    "((extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint); SELECT pg_sleep(0.3)"
#define HELD_WARM_SQL                                                                              \
    "INSERT INTO fleet_runs (started) VALUES "                                                     \
    "((extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint); "                       \
    "SELECT pg_advisory_lock_shared(4242); SELECT pg_advisory_unlock_shared(4242)"

static char NOCREATE_CI[800];
static int quiet_failures; /* a case whose processes are meant to fail */

struct out {
    struct wlt_barrier start;
    int rc[MAXP];
    int role[MAXP];
    char err[MAXP][256];
};

struct run {
    const char *conninfo, *warm_sql, *verify_sql;
    char segs[8][64];
    int per; /* processes per host */
    int fleet;
    struct out *o;
    int n; /* processes in all */
};

static int group_setup(void **state)
{
    (void)state;
    if ((pg_reason = pgh_suite_up(&H, NULL, NULL)))
        return 0;
    have_pg = 1;
    if (pgh_psql(&H, "CREATE TABLE fleet_runs (id serial PRIMARY KEY, started bigint, "
                     "at timestamptz DEFAULT now())") < 0 ||
        pgh_psql(&H, "CREATE ROLE fleet_nocreate LOGIN") < 0 ||
        pgh_psql(&H, "GRANT INSERT, SELECT ON fleet_runs TO fleet_nocreate") < 0 ||
        pgh_psql(&H, "GRANT USAGE ON SEQUENCE fleet_runs_id_seq TO fleet_nocreate") < 0 ||
        pgh_psql(&H, "REVOKE CREATE ON SCHEMA public FROM PUBLIC") < 0) {
        have_pg = 0;
        pg_reason = "cannot set up the fleet tables";
        return 0;
    }
    snprintf(NOCREATE_CI, sizeof(NOCREATE_CI),
             "host=%s port=%d dbname=postgres user=fleet_nocreate", H.sockdir, H.port);
    return 0;
}

/* A process the running test stopped (SIGSTOP), or 0. */
static pid_t stopped;

/* A fresh start: no rows, no record, and nothing a failed test left behind: the process it
 * stopped is killed, and every other session (its own, holding the test's advisory lock, and
 * its hosts') is ended, so this test neither waits for them nor meets their locks. */
static void clean(void)
{
    if (stopped) {
        kill(stopped, SIGKILL);
        kill(stopped, SIGCONT);
        stopped = 0;
    }
    assert_int_equal(pgh_psql(&H, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                  "WHERE backend_type = 'client backend' AND pid <> "
                                  "pg_backend_pid()"),
                     0);
    assert_int_equal(pgh_psql(&H, "TRUNCATE fleet_runs; DROP TABLE IF EXISTS warmlock_fleet"), 0);
}

static long rows(void)
{
    char out[64];
    assert_int_equal(pgh_query(&H, "SELECT count(*) FROM fleet_runs", out, sizeof(out)), 0);
    return strtol(out, NULL, 10);
}

static int child(void *arg, int i)
{
    struct run *r = arg;
    struct wl_segment *seg;
    struct wl_pg_opts o;
    struct wl_result res;
    int rc;

    memset(&o, 0, sizeof(o));
    o.warm_sql = r->warm_sql;
    o.verify_sql = r->verify_sql;
    o.flags = r->fleet ? WL_PG_FLEET : 0;
    o.wait.timeout_ms = 20000;
    if (wl_open(r->segs[i / r->per], NULL, &seg) < 0) {
        snprintf(r->o->err[i], sizeof(r->o->err[i]), "wl_open: %s", wl_last_error());
        r->o->rc[i] = -1000;
        return 1;
    }
    wlt_barrier_wait(&r->o->start, (uint32_t)r->n);
    memset(&res, 0, sizeof(res));
    rc = wl_pg_ensure(seg, r->conninfo, &o, &res);
    r->o->rc[i] = rc;
    r->o->role[i] = res.role;
    memcpy(r->o->err[i], res.error, sizeof(res.error));
    return rc == 0 ? 0 : 1;
}

/* Start `hosts` hosts of r->per processes each (the barrier lets them go together). */
static void spawn(struct run *r, int hosts, pid_t *pids)
{
    int i;

    r->n = hosts * r->per;
    assert_true(r->n <= MAXP);
    memset(r->o, 0, sizeof(*r->o));
    for (i = 0; i < hosts; i++)
        snprintf(r->segs[i], sizeof(r->segs[i]), "%s", wlt_segname());
    for (i = 0; i < r->n; i++) {
        r->o->rc[i] = -9999;
        pids[i] = wlt_spawn(child, r, i);
        assert_true(pids[i] > 0);
    }
}

/* Wait for every process (bounded: none may hang); how many returned 0. */
static int reap(struct run *r, pid_t *pids, int killed)
{
    int i, ok = 0;
    for (i = 0; i < r->n; i++) {
        int st = wlt_wait(pids[i], 40000);
        if (pids[i] == killed)
            continue;
        if (st != 0 && !quiet_failures)
            print_message("process %d (host %d): status %d rc %d: %s\n", i, i / r->per, st,
                          r->o->rc[i], r->o->err[i]);
        assert_int_not_equal(st, -1); /* it ended on its own */
        ok += st == 0;
    }
    return ok;
}

static int run_hosts(struct run *r, int hosts)
{
    pid_t pids[MAXP];
    spawn(r, hosts, pids);
    return reap(r, pids, -1);
}

/* The fleet role each host's slot shows (WL_FLEET_*), counted into n[]. */
static void roles(struct run *r, int hosts, int n[5])
{
    int i;
    memset(n, 0, 5 * sizeof(int));
    for (i = 0; i < hosts; i++) {
        struct wl_open_opts oo = {.flags = WL_OPEN_EXISTING};
        struct wl_segment *seg;
        struct wl_slot_info s[4];
        int k;
        if ((k = wl_open(r->segs[i], &oo, &seg)) < 0)
            fail_msg("host %d: wl_open(%s): %d %s", i, r->segs[i], k, wl_last_error());
        k = wl_snapshot(seg, s, 4);
        assert_int_equal(k, 1);
        assert_true(s[0].fleet >= 0 && s[0].fleet <= WL_FLEET_LOCAL);
        n[s[0].fleet]++;
        if (s[0].fleet == WL_FLEET_LED || s[0].fleet == WL_FLEET_WAITED ||
            s[0].fleet == WL_FLEET_SKIPPED) {
            assert_true(s[0].fleet_leader_pid > 0); /* named as the server reports it */
            assert_non_null(strstr(s[0].fleet_leader_app, "warmlock-fleet"));
        }
        wl_close(seg);
    }
}

static void unlink_all(struct run *r, int hosts)
{
    for (int i = 0; i < hosts; i++)
        wl_unlink(r->segs[i]);
}

/* A connection of the test's own. */
static PGconn *own(void)
{
    PGconn *c = PQconnectdb(H.conninfo);
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    return c;
}

static int exec_ok(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK || PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        print_message("%s: %s\n", sql, PQerrorMessage(c));
    PQclear(res);
    return ok;
}

/* A run whose warm_sql will wait on the test's advisory lock 4242: the database cleaned, r
 * set to conninfo, and the test's own connection, holding the lock, returned. */
static PGconn *held_begin(struct run *r, const char *conninfo)
{
    PGconn *c;
    clean();
    r->conninfo = conninfo;
    r->o = wlt_shared(sizeof(struct out));
    c = own();
    assert_true(exec_ok(c, "SELECT pg_advisory_lock(4242)"));
    return c;
}

static long count_of(PGconn *c, const char *sql)
{
    PGresult *res = PQexec(c, sql);
    long n =
        PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) ? atol(PQgetvalue(res, 0, 0)) : -1;
    PQclear(res);
    return n;
}

/* Wait until sql counts at least n (bounded). */
static void wait_count(PGconn *c, const char *sql, long n)
{
    uint64_t end = wlt_now_ns() + 30000ull * 1000000u;
    while (count_of(c, sql) < n) {
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(10);
    }
}

#define WAITING_ON_HOLD                                                                            \
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = 4242"
/* Host leaders waiting for the fleet lock (any other advisory lock not granted). */
#define WAITING_ON_FLEET                                                                           \
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid <> 4242"

/* ---------------------------------------------------------------- 1 */

static void test_one_heavy_warmup_for_four_hosts(void **state)
{
    struct run r = {.warm_sql = WARM_SQL, .per = 8, .fleet = 1};
    int n[5];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    r.conninfo = H.conninfo;
    r.o = wlt_shared(sizeof(struct out));
    assert_int_equal(run_hosts(&r, 4), 32);
    assert_int_equal(rows(), 1);
    roles(&r, 4, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    assert_int_equal(n[WL_FLEET_WAITED] + n[WL_FLEET_SKIPPED], 3);
    /* wl_reset forgets the fleet outcome with the rest of the slot's history */
    for (int i = 0; i < 4; i++) {
        struct wl_segment *seg;
        assert_int_equal(wl_open(r.segs[i], NULL, &seg), 0);
        assert_int_equal(wl_reset(seg, 0), 0);
        wl_close(seg);
    }
    roles(&r, 4, n);
    assert_int_equal(n[WL_FLEET_NONE], 4);
    unlink_all(&r, 4);

    /* without fleet mode: one per host */
    clean();
    r.fleet = 0;
    assert_int_equal(run_hosts(&r, 4), 32);
    assert_int_equal(rows(), 4);
    roles(&r, 4, n);
    assert_int_equal(n[WL_FLEET_NONE], 4);
    unlink_all(&r, 4);
}

/* ---------------------------------------------------------------- 2 */

static void test_late_hosts_skip_and_a_restart_warms_again(void **state)
{
    struct run r = {.warm_sql = WARM_SQL, .per = 3, .fleet = 1};
    int n[5];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    r.conninfo = H.conninfo;
    r.o = wlt_shared(sizeof(struct out));
    assert_int_equal(run_hosts(&r, 2), 6);
    assert_int_equal(rows(), 1);
    unlink_all(&r, 2);

    /* two more hosts later in the same server start: they skip it (one of them may find
     * the other checking the record, and wait for it a moment) */
    assert_int_equal(run_hosts(&r, 2), 6);
    assert_int_equal(rows(), 1);
    roles(&r, 2, n);
    assert_int_equal(n[WL_FLEET_LED], 0);
    assert_true(n[WL_FLEET_SKIPPED] >= 1);
    assert_int_equal(n[WL_FLEET_SKIPPED] + n[WL_FLEET_WAITED], 2);
    unlink_all(&r, 2);

    /* a new server start: once more, once */
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pgh_start(&H, 1), 0);
    assert_int_equal(run_hosts(&r, 3), 9);
    assert_int_equal(rows(), 2);
    roles(&r, 3, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    {
        char out[64];
        assert_int_equal(
            pgh_query(&H, "SELECT count(DISTINCT started) FROM fleet_runs", out, sizeof(out)), 0);
        assert_string_equal(out, "2");
    }
    unlink_all(&r, 3);
}

/* ---------------------------------------------------------------- 3 */

static void test_killed_fleet_leader_is_replaced(void **state)
{
    struct run r = {.warm_sql = HELD_WARM_SQL, .per = 2, .fleet = 1};
    PGconn *c;
    PGresult *res;
    pid_t pids[MAXP], victim = 0;
    int i, n[5];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    c = held_begin(&r, H.conninfo);
    spawn(&r, 4, pids);
    /* the fleet leader is in its warm-up (waiting for our lock) */
    wait_count(c, WAITING_ON_HOLD, 1);
    res = PQexec(c, "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted "
                    "AND l.objid = 4242");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    assert_int_equal(sscanf(PQgetvalue(res, 0, 0), "warmlock-fleet %*s %d", &victim), 1);
    PQclear(res);
    for (i = 0; i < r.n; i++)
        if (pids[i] == victim)
            break;
    assert_true(i < r.n); /* one of ours */
    assert_int_equal(kill(victim, SIGKILL), 0);
    /* let the warm-ups go: the killed leader's backend finishes its statement and ends */
    assert_true(exec_ok(c, "SELECT pg_advisory_unlock(4242)"));
    assert_int_equal(reap(&r, pids, victim), r.n - 1);
    /* one completed run recorded, and the killed one's row if its backend committed it */
    assert_true(rows() >= 1 && rows() <= 2);
    assert_int_equal(count_of(c, "SELECT count(*) FROM warmlock_fleet"), 1);
    roles(&r, 4, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    PQfinish(c);
    unlink_all(&r, 4);
}

/* ---------------------------------------------------------------- 4 */

static void test_transaction_pooler_falls_back_per_host(void **state)
{
    struct run r = {.warm_sql = WARM_SQL, .per = 3, .fleet = 1};
    const char *why;
    int n[5], i;

    NEED_PG();
    if ((why = pgh_bouncer_unavailable()))
        PGH_NEED(0, why);
    wlt_backend(state);
    pg_ensure_up();
    clean();
    assert_int_equal(pgh_bouncer_start_with(&H, NULL, "pool_mode = transaction\n"), 0);
    r.conninfo = H.bouncer_conninfo;
    r.o = wlt_shared(sizeof(struct out));
    /* hosts one after another: each sees the pooler and warms up itself */
    for (i = 0; i < 2; i++) {
        assert_int_equal(run_hosts(&r, 1), 3);
        roles(&r, 1, n);
        assert_int_equal(n[WL_FLEET_LOCAL], 1);
        unlink_all(&r, 1);
    }
    assert_int_equal(rows(), 2);
    /* hosts at once: every process answers, none hangs */
    assert_int_equal(run_hosts(&r, 3), 9);
    assert_true(rows() >= 3 && rows() <= 5);
    unlink_all(&r, 3);
    pgh_bouncer_stop(&H);
}

/* ---------------------------------------------------------------- 5 */

static void test_role_without_create_elects_but_late_hosts_repeat(void **state)
{
    struct run r = {.warm_sql = HELD_WARM_SQL, .per = 2, .fleet = 1};
    PGconn *c;
    pid_t pids[MAXP];
    int n[5];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    c = held_begin(&r, NOCREATE_CI);
    spawn(&r, 3, pids);
    /* the fleet leader in its warm-up, the two other host leaders waiting for it */
    wait_count(c, WAITING_ON_HOLD, 1);
    wait_count(c, WAITING_ON_FLEET, 2);
    assert_true(exec_ok(c, "SELECT pg_advisory_unlock(4242)"));
    assert_int_equal(reap(&r, pids, -1), 6);
    assert_int_equal(rows(), 1);
    roles(&r, 3, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    assert_int_equal(n[WL_FLEET_WAITED], 2);
    /* nothing could be recorded: a host that comes later runs it again */
    assert_int_equal(count_of(c, "SELECT count(*) FROM pg_tables WHERE tablename = "
                                 "'warmlock_fleet'"),
                     0);
    unlink_all(&r, 3);
    r.warm_sql = WARM_SQL;
    assert_int_equal(run_hosts(&r, 1), 2);
    assert_int_equal(rows(), 2);
    roles(&r, 1, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    unlink_all(&r, 1);
    PQfinish(c);
}

/* ---------------------------------------------------------------- faults */

/* The fleet leader's pid (a process of ours) from its fleet session's application_name,
 * once it is in its held warm-up. */
static pid_t held_leader(PGconn *c)
{
    PGresult *res;
    pid_t pid = 0;

    wait_count(c, WAITING_ON_HOLD, 1);
    res = PQexec(c, "SELECT a.application_name, a.pid FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND NOT l.granted "
                    "AND l.objid = 4242");
    assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
    assert_int_equal(PQntuples(res), 1);
    assert_int_equal(sscanf(PQgetvalue(res, 0, 0), "warmlock-fleet %*s %d", &pid), 1);
    PQclear(res);
    return pid;
}

/* A stopped (hung) fleet leader: a host with a short deadline gets -ETIMEDOUT naming the
 * lock's holder as the server reports it; once it runs again everyone finishes. */
static void test_hung_fleet_leader_bounds_the_wait_and_is_named(void **state)
{
    struct run r = {.warm_sql = HELD_WARM_SQL, .per = 1, .fleet = 1};
    struct wl_segment *seg;
    struct wl_pg_opts o;
    struct wl_result res;
    PGconn *c;
    pid_t pids[MAXP], victim;
    uint64_t t0;
    int rc;

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    c = held_begin(&r, H.conninfo);
    spawn(&r, 1, pids);
    victim = held_leader(c);
    assert_int_equal(kill(victim, SIGSTOP), 0);
    stopped = victim;
    {
        /* the leader's host shows how far it got: in, its warm-up not done */
        struct wl_open_opts oo = {.flags = WL_OPEN_EXISTING};
        struct wl_segment *lseg;
        struct wl_slot_info si[2];
        assert_int_equal(wl_open(r.segs[0], &oo, &lseg), 0);
        assert_int_equal(wl_snapshot(lseg, si, 2), 1);
        assert_int_equal(si[0].state, WL_WARMING);
        assert_int_equal(si[0].stage, WL_STAGE_AUTHENTICATED);
        wl_close(lseg);
    }
    /* another host, with 1.5 s to live */
    assert_int_equal(wl_open(wlt_segname(), NULL, &seg), 0);
    memset(&o, 0, sizeof(o));
    o.warm_sql = HELD_WARM_SQL;
    o.flags = WL_PG_FLEET;
    o.wait.timeout_ms = 1500;
    t0 = wlt_now_ns();
    rc = wl_pg_ensure(seg, H.conninfo, &o, &res);
    assert_int_equal(rc, -ETIMEDOUT);
    assert_true(wlt_now_ns() - t0 < 4000ull * 1000000u); /* bounded by its deadline */
    print_message("%s\n", res.error);
    assert_non_null(strstr(res.error, "fleet leader"));
    assert_non_null(strstr(res.error, "warmlock-fleet"));
    assert_non_null(strstr(res.error, "backend pid"));
    kill(victim, SIGCONT);
    stopped = 0;
    assert_true(exec_ok(c, "SELECT pg_advisory_unlock(4242)"));
    assert_int_equal(reap(&r, pids, -1), 1);
    o.wait.timeout_ms = 20000;
    assert_int_equal(wl_pg_ensure(seg, H.conninfo, &o, &res), 0);
    assert_int_equal(rows(), 1);
    wl_close(seg);
    PQfinish(c);
    unlink_all(&r, 1);
}

/* The fleet leader's session is terminated mid-warm-up: its lock goes with it, another host
 * takes over, and the first host then waits for that one. */
static void test_lost_fleet_session_hands_over(void **state)
{
    struct run r = {.warm_sql = HELD_WARM_SQL, .per = 2, .fleet = 1};
    PGconn *c;
    pid_t pids[MAXP];
    int n[5];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    c = held_begin(&r, H.conninfo);
    spawn(&r, 3, pids);
    held_leader(c);
    wait_count(c, WAITING_ON_FLEET, 2);
    {
        char sql[160];
        long pid = count_of(c, "SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' "
                               "AND NOT l.granted AND l.objid = 4242");
        assert_true(pid > 0);
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_terminate_backend(%ld) t WHERE t", pid);
        assert_int_equal(count_of(c, sql), 1);
        /* gone, and the next fleet leader in its warm-up: let it finish */
        snprintf(sql, sizeof(sql),
                 "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = %ld) "
                 "THEN 0 ELSE 1 END",
                 pid);
        wait_count(c, sql, 1);
    }
    wait_count(c, WAITING_ON_HOLD, 1);
    assert_true(exec_ok(c, "SELECT pg_advisory_unlock(4242)"));
    assert_int_equal(reap(&r, pids, -1), 6);
    assert_int_equal(rows(), 1); /* the terminated one's row was rolled back */
    roles(&r, 3, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    assert_int_equal(n[WL_FLEET_WAITED] + n[WL_FLEET_SKIPPED], 2);
    PQfinish(c);
    unlink_all(&r, 3);
}

/* The server restarts during the fleet warm-up: after it, the warm-up runs once, for the
 * new server start. */
static void test_restart_during_fleet_warmup(void **state)
{
    struct run r = {.warm_sql = HELD_WARM_SQL, .per = 2, .fleet = 1};
    PGconn *c;
    pid_t pids[MAXP];
    char out[64];

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    c = held_begin(&r, H.conninfo);
    spawn(&r, 3, pids);
    held_leader(c);
    /* still held while the server stops (a fast stop ends every session, ours too) */
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    PQfinish(c);
    assert_int_equal(pgh_start(&H, 1), 0);
    assert_int_equal(reap(&r, pids, -1), 6);
    assert_int_equal(pgh_query(&H,
                               "SELECT count(*) FROM fleet_runs WHERE started = (extract(epoch "
                               "FROM pg_postmaster_start_time()) * 1000000)::bigint",
                               out, sizeof(out)),
                     0);
    assert_string_equal(out, "1");
    assert_int_equal(rows(), 1);
    unlink_all(&r, 3);
}

/* Through pgbouncer in session mode fleet mode works as it does directly. */
static void test_session_pooler_keeps_fleet_mode(void **state)
{
    struct run r = {.warm_sql = WARM_SQL, .per = 3, .fleet = 1};
    const char *why;
    int n[5];

    NEED_PG();
    if ((why = pgh_bouncer_unavailable()))
        PGH_NEED(0, why);
    wlt_backend(state);
    pg_ensure_up();
    clean();
    assert_int_equal(pgh_bouncer_start(&H, NULL), 0);
    r.conninfo = H.bouncer_conninfo;
    r.o = wlt_shared(sizeof(struct out));
    assert_int_equal(run_hosts(&r, 3), 9);
    assert_int_equal(rows(), 1);
    roles(&r, 3, n);
    assert_int_equal(n[WL_FLEET_LED], 1);
    assert_int_equal(n[WL_FLEET_LOCAL], 0);
    unlink_all(&r, 3);
    pgh_bouncer_stop(&H);
}

/* A warm_sql that fails is a permanent failure for the fleet leader's host (served to its
 * processes), and the next host in line leads and fails the same way: nobody hangs, and
 * nothing is recorded. */
static void test_failing_warm_sql_fails_every_host(void **state)
{
    struct run r = {.warm_sql = "SELECT * FROM fleet_no_such_table", .per = 2, .fleet = 1};
    int i;

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    r.conninfo = H.conninfo;
    r.o = wlt_shared(sizeof(struct out));
    quiet_failures = 1;
    assert_int_equal(run_hosts(&r, 2), 0);
    quiet_failures = 0;
    for (i = 0; i < r.n; i++) {
        assert_int_equal(r.o->rc[i], -EIO);
        assert_non_null(strstr(r.o->err[i], "warm_sql failed: ERROR: relation "
                                            "\"fleet_no_such_table\" does not exist"));
    }
    {
        char out[16];
        assert_int_equal(pgh_query(&H,
                                   "SELECT count(*) FROM pg_tables WHERE tablename = "
                                   "'warmlock_fleet'",
                                   out, sizeof(out)),
                         0);
        assert_string_equal(out, "0"); /* nothing recorded */
    }
    unlink_all(&r, 2);
}

/* A verify_sql that needs what warm_sql made passes on every host: it runs after the fleet
 * phase, not before it. */
static void test_verify_sql_runs_after_the_fleet_warmup(void **state)
{
    struct run r = {.warm_sql = WARM_SQL, .per = 2, .fleet = 1};

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    r.conninfo = H.conninfo;
    r.verify_sql = "SELECT 1 / (SELECT count(*) FROM fleet_runs)::int";
    r.o = wlt_shared(sizeof(struct out));
    assert_int_equal(run_hosts(&r, 3), 6);
    assert_int_equal(rows(), 1);
    unlink_all(&r, 3);
}

/* ---------------------------------------------------------------- the programs */

static const char *write_file(const char *name, const char *text)
{
    static char path[8][400];
    static int k;
    char *p = path[k++ % 8];
    FILE *f;
    snprintf(p, 400, "%s/%s", H.dir, name);
    assert_non_null(f = fopen(p, "w"));
    fputs(text, f);
    fclose(f);
    return p;
}

/* warmlock wait --fleet on three hosts: one heavy warm-up; status (table and --json) says
 * who led, who waited or skipped, and names the fleet leader. */
static void test_cli_wait_fleet_and_status(void **state)
{
    const char *sql = write_file("fleet.sql", WARM_SQL);
    char shm[3][64];
    pid_t pids[3];
    struct wlt_run *out = wlt_shared(sizeof(struct wlt_run));
    int i, led = 0, other = 0;

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    for (i = 0; i < 3; i++) {
        snprintf(shm[i], sizeof(shm[i]), "%s", wlt_segname());
        char *const argv[] = {
            (char *)WL_WARMLOCK, "--shm",     shm[i], "wait",     "--fleet", "--warm-sql",
            (char *)sql,         "--timeout", "20",   H.conninfo, NULL};
        pids[i] = wlt_spawn_exec(argv, NULL, NULL, -1);
    }
    for (i = 0; i < 3; i++)
        assert_int_equal(wlt_wait(pids[i], 30000), 0);
    assert_int_equal(rows(), 1);
    for (i = 0; i < 3; i++) {
        WLT_RUN(out, H.dir, 10000, (char *)WL_WARMLOCK, "--shm", shm[i], "status", "--json");
        assert_int_equal(out->status, 0);
        assert_non_null(strstr(out->out, "\"fleet_leader_pid\": "));
        assert_non_null(strstr(out->out, "\"fleet_leader_app\": \"warmlock-fleet "));
        led += strstr(out->out, "\"fleet\": \"led\"") != NULL;
        other += strstr(out->out, "\"fleet\": \"waited\"") != NULL ||
                 strstr(out->out, "\"fleet\": \"skipped\"") != NULL;
        WLT_RUN(out, H.dir, 10000, (char *)WL_WARMLOCK, "--shm", shm[i], "status");
        assert_int_equal(out->status, 0);
        assert_non_null(strstr(out->out, "FLEET"));
        assert_non_null(strstr(out->out, "FLEET_LEADER"));
        assert_non_null(strstr(out->out, "@local"));
        wl_unlink(shm[i]);
    }
    assert_int_equal(led, 1);
    assert_int_equal(other, 2);
    WLT_RUN(out, H.dir, 10000, (char *)WL_WARMLOCK, "--help");
    assert_non_null(strstr(out->out, "--fleet"));
}

/* warmlockd in fleet mode on two hosts (one with --fleet, one with the config keyword):
 * one heavy warm-up, and applications find the targets READY. */
static void test_daemons_share_one_warmup(void **state)
{
    const char *sql = write_file("fleetd.sql", WARM_SQL);
    char cfg_text[800], shm[2][64], log[2][400];
    const char *cfg;
    pid_t d[2];
    struct wlt_run *out = wlt_shared(sizeof(struct wlt_run));
    int i;

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    snprintf(cfg_text, sizeof(cfg_text), "# fleet target\nfleet %s\n", H.conninfo);
    cfg = write_file("fleetd.conf", cfg_text);
    for (i = 0; i < 2; i++) {
        snprintf(shm[i], sizeof(shm[i]), "%s", wlt_segname());
        snprintf(log[i], sizeof(log[i]), "%s/fleetd%d.log", H.dir, i);
    }
    {
        char *const a0[] = {(char *)WL_WARMLOCKD, "--foreground", "--shm",    shm[0],     "--fleet",
                            "--warm-sql",         (char *)sql,    "--target", H.conninfo, NULL};
        char *const a1[] = {(char *)WL_WARMLOCKD, "--foreground", "--shm",     shm[1], "--warm-sql",
                            (char *)sql,          "--config",     (char *)cfg, NULL};
        d[0] = wlt_spawn_exec(a0, NULL, log[0], -1);
        d[1] = wlt_spawn_exec(a1, NULL, log[1], -1);
    }
    /* the daemons warm their targets up (applications would wait for them meanwhile) */
    for (i = 0; i < 2; i++) {
        uint64_t end = wlt_now_ns() + 30000ull * 1000000u;
        for (;;) {
            struct wl_open_opts oo = {.flags = WL_OPEN_EXISTING};
            struct wl_segment *seg;
            struct wl_slot_info s[2];
            int ready = 0;
            if (wl_open(shm[i], &oo, &seg) == 0) {
                ready = wl_snapshot(seg, s, 2) == 1 && s[0].state == WL_READY;
                if (ready)
                    assert_true(s[0].fleet == WL_FLEET_LED || s[0].fleet == WL_FLEET_WAITED ||
                                s[0].fleet == WL_FLEET_SKIPPED);
                wl_close(seg);
            }
            if (ready)
                break;
            assert_true(wlt_now_ns() < end);
            wlt_sleep_ms(20);
        }
    }
    for (i = 0; i < 2; i++) {
        char *const argv[] = {(char *)WL_WARMLOCK, "--shm", shm[i],     "wait",
                              "--timeout",         "20",    H.conninfo, NULL};
        wlt_run_v(out, H.dir, 30000, argv);
        assert_int_equal(out->status, 0);
    }
    assert_int_equal(rows(), 1);
    for (i = 0; i < 2; i++) {
        char text[16384];
        kill(d[i], SIGTERM);
        assert_int_equal(wlt_wait(d[i], 10000), 0);
        wlt_slurp(log[i], text, sizeof(text));
        assert_non_null(strstr(text, "fleet warm-up"));
        wl_unlink(shm[i]);
    }
    WLT_RUN(out, H.dir, 10000, (char *)WL_WARMLOCKD, "--help");
    assert_non_null(strstr(out->out, "--fleet"));
}

/* warmlockd waiting for another host's fleet leader keeps its other targets going (the
 * fleet phase runs beside its loop), and stops at once when told to. */
static void test_daemon_fleet_wait_blocks_nothing(void **state)
{
    const char *sql = write_file("fleetw.sql", "SELECT pg_sleep(0.05)");
    char cfg_text[1600], shm[64], log[400], key[WL_PG_KEY_MAX], lock[128], other[700];
    const char *cfg;
    PGconn *c;
    pid_t d;
    uint64_t t0, end;
    int st;

    NEED_PG();
    wlt_backend(state);
    pg_ensure_up();
    clean();
    /* another host's fleet leader, as far as the daemon can tell: we hold its lock */
    assert_true(wl_pg_key(H.conninfo, key, sizeof(key)) > 0);
    snprintf(lock, sizeof(lock), "SELECT pg_advisory_lock(%lld)", (long long)wl__fleet_id(key));
    c = own();
    assert_true(exec_ok(c, lock));
    snprintf(other, sizeof(other), "host=%s port=%d dbname=template1 user=postgres", H.sockdir,
             H.port);
    snprintf(cfg_text, sizeof(cfg_text), "fleet %s\n%s\n", H.conninfo, other);
    cfg = write_file("fleetw.conf", cfg_text);
    snprintf(shm, sizeof(shm), "%s", wlt_segname());
    snprintf(log, sizeof(log), "%s/fleetw.log", H.dir);
    {
        char *const a[] = {(char *)WL_WARMLOCKD, "--foreground", "--shm",     shm, "--warm-sql",
                           (char *)sql,          "--config",     (char *)cfg, NULL};
        d = wlt_spawn_exec(a, NULL, log, -1);
    }
    /* the other target is READY while the fleet target waits for the lock we hold */
    end = wlt_now_ns() + 30000ull * 1000000u;
    for (;;) {
        struct wl_open_opts oo = {.flags = WL_OPEN_EXISTING};
        struct wl_segment *seg;
        struct wl_slot_info s[4];
        int i, n = 0, ready_other = 0, warming_fleet = 0;
        if (wl_open(shm, &oo, &seg) == 0) {
            n = wl_snapshot(seg, s, 4);
            for (i = 0; i < n && i < 4; i++) {
                if (strstr(s[i].key, "template1"))
                    ready_other = s[i].state == WL_READY;
                else
                    warming_fleet = s[i].state == WL_WARMING;
            }
            wl_close(seg);
        }
        if (ready_other && warming_fleet)
            break;
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(20);
    }
    t0 = wlt_now_ns();
    kill(d, SIGTERM);
    st = wlt_wait(d, 10000);
    assert_int_equal(st, 0);
    assert_true(wlt_now_ns() - t0 < 5000ull * 1000000u); /* not after the fleet wait */
    PQfinish(c);
    wl_unlink(shm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WLT_BOTH(test_one_heavy_warmup_for_four_hosts),
        WLT_BOTH(test_late_hosts_skip_and_a_restart_warms_again),
        WLT_BOTH(test_killed_fleet_leader_is_replaced),
        WLT_BOTH(test_transaction_pooler_falls_back_per_host),
        WLT_BOTH(test_role_without_create_elects_but_late_hosts_repeat),
        WLT_BOTH(test_hung_fleet_leader_bounds_the_wait_and_is_named),
        WLT_BOTH(test_lost_fleet_session_hands_over),
        WLT_BOTH(test_restart_during_fleet_warmup),
        WLT_BOTH(test_session_pooler_keeps_fleet_mode),
        WLT_BOTH(test_failing_warm_sql_fails_every_host),
        WLT_BOTH(test_verify_sql_runs_after_the_fleet_warmup),
        WLT_BOTH(test_cli_wait_fleet_and_status),
        WLT_BOTH(test_daemons_share_one_warmup),
        WLT_BOTH(test_daemon_fleet_wait_blocks_nothing),
    };
    return cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
}
