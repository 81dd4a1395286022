/*
 * Fleet mode: the host leaders of one target (one per segment, on any number of hosts)
 * elect one fleet leader per server start through the server itself, so that warm_sql runs
 * once for the whole fleet instead of once per host.
 *
 * A host leader whose probe has verified the server runs wl__fleet_run() on a connection
 * of its own, the fleet session (never handed to an application):
 *
 *   1. Who am I: the backend's pid, the server's start (pg_postmaster_start_time(), in µs)
 *      and its system identifier where the role may read it; the session's
 *      application_name becomes "warmlock-fleet <hostname> <pid>", so pg_stat_activity
 *      (and every other host's status) names the host and process that leads.
 *   2. Pooler: a direct connection's backend pid is the one libpq got at connect time
 *      (BackendKeyData); a pooler sends its own. Behind one, a second connection opens a
 *      transaction: if it lands on the fleet session's backend, or the fleet session's
 *      backend then changes, the pooler does not keep sessions (transaction pooling), where
 *      session-level advisory locks are meaningless: this host falls back to its own
 *      warm_sql (role LOCAL) with one log line.
 *   3. LISTEN on the target's channel, then pg_try_advisory_lock(id), unless this session
 *      already holds it (only a pooler can hand a new session a backend that holds it: a
 *      second try would stack the lock and lead twice; LOCAL then too).
 *   4. Taken: the record says done for this server start: SKIPPED. Busy: wait for it
 *      (pg_advisory_lock under a lock_timeout of what is left of the deadline); then the
 *      record, or the leader's NOTIFY, says done: WAITED; else the leader died or failed
 *      (its session ended, so did its lock): this host leads (a takeover).
 *   5. Leading: warm_sql in the lock's own session (its loss ends both), then the record,
 *      written only while this session still holds the lock (checked in the same
 *      statement), NOTIFY, unlock.
 *
 * The record is a row of the table warmlock_fleet (created IF NOT EXISTS in the first
 * schema of the role's search_path), keyed on the lock id, holding the server start and
 * system identifier it is valid for: after a restart it no longer matches and the heavy
 * warm-up runs once more. A role that can neither create nor write it still gets the
 * election and the NOTIFY (hosts that wait while the leader works skip), but a host that
 * arrives after the leader is gone finds nothing and leads again.
 *
 * Every statement is bounded: short ones by the attempt timeout, the lock wait and warm_sql
 * by the caller's deadline; the wait also ends when abort_fd (if any) becomes readable.
 * Errors name the lock's holder as pg_locks and pg_stat_activity report it.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "warmlock/pg.h"

#define MS          1000000ull
#define STMT_NS     (2000ull * MS) /* a short statement's bound without attempt timeout */
#define HOLDER_NS   (300ull * MS)  /* kept back from the lock wait to name its holder */
#define FLEET_TABLE "warmlock_fleet"

static const uint8_t id_key[16] = {'w', 'a', 'r', 'm', 'l', 'o', 'c', 'k',
                                   '-', 'f', 'l', 'e', 'e', 't', '-', '1'};

struct fleet {
    const struct wl__fleet_conf *fc;
    PGconn *conn;
    int64_t id;
    char id_s[24], classid_s[16], objid_s[16], chan[40];
    int32_t pid; /* the fleet session's backend */
    char pid_s[16];
    char start_s[24]; /* pg_postmaster_start_time() in µs */
    char sysid_s[24]; /* "" when the role cannot read it */
    char host[64];    /* our client address as the server sees it */
    char app[64];     /* our application_name */
    int norecord;     /* the record table cannot be read or written */
    char err[256];
    char sqlstate[6];
};

/* ---------------------------------------------------------------- statements */

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

static uint64_t stmt_deadline(const struct fleet *f)
{
    uint64_t ns = f->fc->attempt_timeout_ms ? (uint64_t)f->fc->attempt_timeout_ms * MS : STMT_NS;
    return min_u64(wl__now_ns() + ns, f->fc->deadline_ns);
}

/* Wait until conn's socket is ready (want: POLLIN/POLLOUT), abort_fd is readable
 * (-ECANCELED) or deadline passes (-ETIMEDOUT). */
static int wait_sock(struct fleet *f, PGconn *c, short want, uint64_t deadline)
{
    struct pollfd p[2];
    uint64_t now = wl__now_ns();
    int n = 1, r;

    if (now >= deadline)
        return -ETIMEDOUT;
    p[0].fd = PQsocket(c);
    p[0].events = want;
    p[0].revents = 0;
    if (f->fc->abort_fd >= 0) {
        p[1].fd = f->fc->abort_fd;
        p[1].events = POLLIN;
        p[1].revents = 0;
        n = 2;
    }
    r = poll(p, (nfds_t)n, (int)((deadline - now + MS - 1) / MS));
    if (r < 0)
        return errno == EINTR ? 0 : -errno;
    if (n == 2 && p[1].revents)
        return -ECANCELED;
    return r == 0 && wl__now_ns() >= deadline ? -ETIMEDOUT : 0;
}

/* A failure of a statement: its code as the engine classifies it (0: transient, mapped
 * to -EAGAIN), the message into f->err. */
static int failed(struct fleet *f, const char *what, const char *sqlstate, const char *msg)
{
    int refused, code;

    wl__copy(f->sqlstate, sizeof(f->sqlstate), sqlstate ? sqlstate : "");
    wl__fmt(f->err, sizeof(f->err), "fleet: %s failed: %s", what, msg && *msg ? msg : "?");
    wl__oneline(f->err);
    code = wl__pg_classify(f->sqlstate, msg, 0, &refused);
    return code < 0 ? code : -EAGAIN;
}

/*
 * Run sql on c (params: nparams values, or the simple protocol when nparams < 0, for
 * warm_sql's several statements) until deadline. 0 with *out the last result (the caller
 * clears it; NULL for none), or -errno with f->err. Notifications stay queued in c.
 */
static int exec(struct fleet *f, PGconn *c, const char *what, const char *sql, int nparams,
                const char *const *params, uint64_t deadline, PGresult **out)
{
    PGresult *res, *last = NULL;
    char err[256] = "", st[6] = "";
    int ok, r;

    *out = NULL;
    ok = nparams < 0 ? PQsendQuery(c, sql)
                     : PQsendQueryParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!ok)
        return failed(f, what, "", PQerrorMessage(c));
    for (;;) {
        int fl = PQflush(c);
        if (fl < 0)
            return failed(f, what, "", PQerrorMessage(c));
        if (fl == 0)
            break;
        if ((r = wait_sock(f, c, POLLIN | POLLOUT, deadline)) < 0)
            goto cut;
        if (!PQconsumeInput(c))
            return failed(f, what, "", PQerrorMessage(c));
    }
    for (;;) {
        while (!PQisBusy(c)) {
            if (!(res = PQgetResult(c))) {
                if (err[0]) {
                    PQclear(last);
                    return failed(f, what, st, err);
                }
                *out = last;
                return 0;
            }
            switch (PQresultStatus(res)) {
            case PGRES_COMMAND_OK:
            case PGRES_TUPLES_OK:
            case PGRES_EMPTY_QUERY:
                PQclear(last);
                last = res;
                continue;
            default:
                if (!err[0]) { /* the first error: the later ones are its consequences */
                    const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
                    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
                    const char *v = PQresultErrorField(res, PG_DIAG_SEVERITY);
                    wl__copy(st, sizeof(st), s ? s : "");
                    wl__fmt(err, sizeof(err), "%s:  %s%s%s%s", v ? v : "ERROR",
                            m ? m : PQresultErrorMessage(res), s ? " (SQLSTATE " : "", s ? s : "",
                            s ? ")" : "");
                    if (PQresultStatus(res) == PGRES_COPY_IN ||
                        PQresultStatus(res) == PGRES_COPY_OUT)
                        wl__copy(err, sizeof(err), "COPY is not allowed here");
                }
                PQclear(res);
                if (PQstatus(c) == CONNECTION_BAD) {
                    PQclear(last);
                    return failed(f, what, st, err);
                }
                continue;
            }
        }
        if ((r = wait_sock(f, c, POLLIN, deadline)) < 0)
            goto cut;
        if (!PQconsumeInput(c)) {
            PQclear(last);
            return failed(f, what, "", PQerrorMessage(c));
        }
    }
cut:
    PQclear(last);
    f->sqlstate[0] = '\0';
    wl__fmt(f->err, sizeof(f->err), "fleet: %s %s", what,
            r == -ECANCELED ? "cancelled" : "cut off by the deadline");
    return r;
}

/* exec() of a statement expecting one row: its field i (NULL when absent or null). */
static const char *field(const PGresult *res, int i)
{
    if (!res || PQntuples(res) < 1 || PQnfields(res) <= i || PQgetisnull(res, 0, i))
        return NULL;
    return PQgetvalue(res, 0, i);
}

/* The statement ran on the fleet session's own backend (field 0 is pg_backend_pid())? */
static int same_backend(const struct fleet *f, const PGresult *res)
{
    const char *p = field(res, 0);
    return p && strtol(p, NULL, 10) == f->pid;
}

/* ---------------------------------------------------------------- connecting */

/* The fleet session's notices (a FATAL at a shutdown) are not printed: its errors say. */
static void quiet(void *arg, const PGresult *res)
{
    (void)arg;
    (void)res;
}

static int connect_fleet(struct fleet *f, PGconn **out, uint64_t deadline)
{
    const char *kw[4], *val[4];
    int n = 0, r;
    PGconn *c;

    *out = NULL;
    if (!getenv("PGGSSENCMODE")) { /* before dbname: the conninfo's own setting wins */
        kw[n] = "gssencmode";
        val[n++] = "disable";
    }
    kw[n] = "dbname";
    val[n++] = f->fc->conninfo;
    kw[n] = NULL;
    val[n] = NULL;
    if (!(c = PQconnectStartParams(kw, val, 1)))
        return wl__fmt(f->err, sizeof(f->err), "fleet: out of memory"), -ENOMEM;
    for (;;) {
        PostgresPollingStatusType st;
        if (PQstatus(c) == CONNECTION_BAD)
            st = PGRES_POLLING_FAILED;
        else
            st = PQconnectPoll(c);
        if (st == PGRES_POLLING_OK)
            break;
        if (st == PGRES_POLLING_FAILED) {
            char msg[256];
            wl__copy(msg, sizeof(msg), PQerrorMessage(c));
            PQfinish(c);
            wl__oneline(msg);
            r = failed(f, "connecting", "", msg);
            return r == -EIO ? -EAGAIN : r;
        }
        if ((r = wait_sock(f, c, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) < 0) {
            PQfinish(c);
            wl__fmt(f->err, sizeof(f->err), "fleet: connecting %s",
                    r == -ECANCELED ? "cancelled" : "timed out");
            return r;
        }
    }
    if (PQsetnonblocking(c, 1) != 0) {
        PQfinish(c);
        return wl__fmt(f->err, sizeof(f->err), "fleet: cannot make the connection non-blocking"),
               -EAGAIN;
    }
    PQsetNoticeReceiver(c, quiet, NULL);
    *out = c;
    return 0;
}

/* ---------------------------------------------------------------- steps */

static void log_line(const char *msg, const char *key)
{
    char when[40], k[WL_PG_KEY_MAX];
    struct timespec ts;
    struct tm tm;
    size_t i, j = 0;

    /* the key quoted for logfmt: \ and " escaped */
    for (i = 0; key[i] && j + 3 < sizeof(k); i++) {
        if (key[i] == '"' || key[i] == '\\')
            k[j++] = '\\';
        k[j++] = (unsigned char)key[i] < 0x20 ? ' ' : key[i];
    }
    k[j] = '\0';
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=warn target=\"%s\" msg=\"%s\"\n", when,
            ts.tv_nsec / 1000000L, k, msg);
    fflush(stderr);
}

/* Step 1: the session's identity and the server start. */
static int whoami(struct fleet *f)
{
    static const char sql[] = "SELECT pg_backend_pid(),"
                              " (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint,"
                              " has_function_privilege('pg_control_system()', 'EXECUTE'),"
                              " coalesce(host(inet_client_addr()), 'local'),"
                              " set_config('application_name', $1, false)";
    const char *p[1] = {f->app};
    PGresult *res;
    int r;

    if ((r = exec(f, f->conn, "reading the server start", sql, 1, p, stmt_deadline(f), &res)) < 0)
        return r;
    if (!field(res, 0) || !field(res, 1)) {
        PQclear(res);
        wl__copy(f->err, sizeof(f->err), "fleet: the server start could not be read");
        return -EIO;
    }
    f->pid = (int32_t)strtol(field(res, 0), NULL, 10);
    wl__fmt(f->pid_s, sizeof(f->pid_s), "%d", (int)f->pid);
    wl__copy(f->start_s, sizeof(f->start_s), field(res, 1));
    wl__copy(f->host, sizeof(f->host), field(res, 3) ? field(res, 3) : "local");
    r = field(res, 2) && field(res, 2)[0] == 't';
    PQclear(res);
    f->sysid_s[0] = '\0';
    if (r) {
        if ((r = exec(f, f->conn, "reading the system identifier",
                      "SELECT pg_backend_pid(), system_identifier FROM pg_control_system()", 0,
                      NULL, stmt_deadline(f), &res)) < 0)
            return r;
        if (field(res, 1))
            wl__copy(f->sysid_s, sizeof(f->sysid_s), field(res, 1));
        PQclear(res);
    }
    return 0;
}

/* Step 2: 1 when a pooler that does not keep sessions sits between us and the server. */
static int transaction_pooler(struct fleet *f)
{
    PGresult *res = NULL;
    PGconn *d = NULL;
    int pooled = 0, r;

    if (PQbackendPID(f->conn) == f->pid)
        return 0; /* the backend's own BackendKeyData: no pooler */
    if (connect_fleet(f, &d, stmt_deadline(f)) < 0)
        return 0; /* cannot tell: the lock checks below still guard */
    r = exec(f, d, "checking the pooler", "BEGIN; SELECT pg_backend_pid()", -1, NULL,
             stmt_deadline(f), &res);
    if (r == 0 && same_backend(f, res))
        pooled = 1; /* another client got our backend: sessions are not kept */
    PQclear(res);
    res = NULL;
    if (!pooled &&
        exec(f, f->conn, "checking the pooler", "SELECT pg_backend_pid()", 0, NULL,
             stmt_deadline(f), &res) == 0 &&
        !same_backend(f, res))
        pooled = 1; /* our backend changed between two statements */
    PQclear(res);
    PQfinish(d);
    return pooled;
}

/* Who holds the lock, as the server reports it, into out (pid, host, app); 0 if found. */
static int holder(struct fleet *f, struct wl__fleet_out *out)
{
    static const char sql[] =
        "SELECT a.pid, coalesce(host(a.client_addr), 'local'), coalesce(a.application_name, ''),"
        " coalesce(a.state, ''), (extract(epoch FROM now() - a.backend_start) * 1000)::bigint"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid"
        " AND l.objid = $2::oid AND l.objsubid = 1 LIMIT 1";
    const char *p[2] = {f->classid_s, f->objid_s};
    uint64_t deadline = min_u64(wl__now_ns() + HOLDER_NS, f->fc->deadline_ns + HOLDER_NS);
    PGresult *res;

    if (exec(f, f->conn, "naming the lock holder", sql, 2, p, deadline, &res) < 0)
        return -1;
    if (!field(res, 0)) {
        PQclear(res);
        return -1;
    }
    out->leader_pid = (int32_t)strtol(field(res, 0), NULL, 10);
    wl__copy(out->leader_host, sizeof(out->leader_host), field(res, 1));
    wl__copy(out->leader_app, sizeof(out->leader_app), field(res, 2) ? field(res, 2) : "");
    PQclear(res);
    return 0;
}

/* The leader's NOTIFY for this server start among the queued notifications: 1 (and the
 * leader named in out), else 0. Payload: "<server start> <pid> <host> <application_name>". */
static int notified(struct fleet *f, struct wl__fleet_out *out)
{
    PGnotify *n;
    int done = 0;

    PQconsumeInput(f->conn);
    while ((n = PQnotifies(f->conn))) {
        char start[24], host[64];
        int pid, off = 0;
        if (!strcmp(n->relname, f->chan) && n->extra &&
            sscanf(n->extra, "%23s %d %63s %n", start, &pid, host, &off) == 3 &&
            !strcmp(start, f->start_s)) {
            done = 1;
            out->leader_pid = pid;
            wl__copy(out->leader_host, sizeof(out->leader_host), host);
            wl__copy(out->leader_app, sizeof(out->leader_app), off ? n->extra + off : "");
        }
        PQfreemem(n);
    }
    return done;
}

/* Step 4: is the heavy part done for this server start? 1 yes (leader in out), 0 no,
 * -errno when the server could not be asked. */
static int done_already(struct fleet *f, struct wl__fleet_out *out)
{
    static const char sql[] =
        "SELECT pg_backend_pid(), leader_pid, leader_host, leader_app FROM " FLEET_TABLE
        " WHERE lock_id = $1::bigint AND server_start = $2::bigint"
        " AND system_identifier IS NOT DISTINCT FROM $3::bigint";
    const char *p[3] = {f->id_s, f->start_s, f->sysid_s[0] ? f->sysid_s : NULL};
    PGresult *res;
    int r;

    r = exec(f, f->conn, "reading the record", sql, 3, p, stmt_deadline(f), &res);
    if (r == -EIO || r == -EINVAL || r == -EACCES) {
        /* no table (42P01), or the role may not read it (42501): nothing recorded */
        f->norecord = 1;
        return notified(f, out);
    }
    if (r < 0)
        return r;
    if (field(res, 1)) {
        out->leader_pid = (int32_t)strtol(field(res, 1), NULL, 10);
        wl__copy(out->leader_host, sizeof(out->leader_host), field(res, 2) ? field(res, 2) : "");
        wl__copy(out->leader_app, sizeof(out->leader_app), field(res, 3) ? field(res, 3) : "");
        PQclear(res);
        notified(f, out); /* drained; the record's word stands */
        return 1;
    }
    PQclear(res);
    return notified(f, out);
}

/* Step 5, after warm_sql: the record, while this session holds the lock. 1 recorded,
 * 0 not (the lock was lost, or no table can be had: said in f->err), -errno. */
static int record(struct fleet *f)
{
    static const char create[] =
        "CREATE TABLE IF NOT EXISTS " FLEET_TABLE " ("
        " lock_id bigint PRIMARY KEY, key text NOT NULL, system_identifier bigint,"
        " server_start bigint NOT NULL, done_at timestamptz NOT NULL,"
        " leader_pid integer NOT NULL, leader_host text NOT NULL, leader_app text NOT NULL)";
    static const char ins[] =
        "INSERT INTO " FLEET_TABLE " (lock_id, key, system_identifier, server_start, done_at,"
        " leader_pid, leader_host, leader_app)"
        " SELECT $1::bigint, $2, $3::bigint, $4::bigint, now(), pg_backend_pid(), $5, $6"
        " WHERE pg_backend_pid() = $7::integer AND EXISTS (SELECT 1 FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        " AND classid = $8::oid AND objid = $9::oid AND objsubid = 1)"
        " ON CONFLICT (lock_id) DO UPDATE SET key = EXCLUDED.key,"
        " system_identifier = EXCLUDED.system_identifier, server_start = EXCLUDED.server_start,"
        " done_at = EXCLUDED.done_at, leader_pid = EXCLUDED.leader_pid,"
        " leader_host = EXCLUDED.leader_host, leader_app = EXCLUDED.leader_app RETURNING 1";
    const char *p[9] = {f->id_s,    f->fc->key,   f->sysid_s[0] ? f->sysid_s : NULL,
                        f->start_s, f->host,      f->app,
                        f->pid_s,   f->classid_s, f->objid_s};
    PGresult *res;
    int r, tries;

    for (tries = 0; tries < 2; tries++) {
        if (f->norecord || tries) {
            r = exec(f, f->conn, "creating " FLEET_TABLE, create, 0, NULL, stmt_deadline(f), &res);
            PQclear(res);
            /* a concurrent CREATE of another target's fleet: the table is there now */
            if (r < 0 && strcmp(f->sqlstate, "23505") && strcmp(f->sqlstate, "42P07")) {
                if (r == -EAGAIN || r == -ETIMEDOUT || r == -ECANCELED)
                    return r;
                f->norecord = 1;
                return 0; /* 42501: may not create; f->err says so */
            }
        }
        r = exec(f, f->conn, "recording the warm-up", ins, 9, p, stmt_deadline(f), &res);
        if (r == 0) {
            int n = PQntuples(res);
            PQclear(res);
            f->norecord = 0;
            if (n == 1)
                return 1;
            wl__copy(f->err, sizeof(f->err),
                     "fleet: the session no longer holds the fleet lock; not recorded");
            return 0;
        }
        if (r == -EAGAIN || r == -ETIMEDOUT || r == -ECANCELED)
            return r;
        if (strcmp(f->sqlstate, "42P01")) { /* not "no table": may not write it */
            f->norecord = 1;
            return 0;
        }
    }
    f->norecord = 1;
    return 0;
}

/* After a recorded (or unrecordable) warm-up: tell the waiting hosts, and let go. */
static int announce(struct fleet *f)
{
    static const char sql[] =
        "SELECT pg_notify($1, $2) WHERE pg_backend_pid() = $3::integer AND EXISTS (SELECT 1"
        " FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        " AND classid = $4::oid AND objid = $5::oid AND objsubid = 1)";
    char payload[200];
    const char *p[5] = {f->chan, payload, f->pid_s, f->classid_s, f->objid_s};
    const char *u[1] = {f->id_s};
    PGresult *res;
    int r;

    wl__fmt(payload, sizeof(payload), "%s %s %s %s", f->start_s, f->pid_s, f->host, f->app);
    if ((r = exec(f, f->conn, "notifying the fleet", sql, 5, p, stmt_deadline(f), &res)) < 0)
        return r;
    PQclear(res);
    r = exec(f, f->conn, "releasing the fleet lock", "SELECT pg_advisory_unlock($1::bigint)", 1, u,
             stmt_deadline(f), &res);
    PQclear(res);
    return r;
}

/* After a pooler moved us: unlock the fleet lock on backend pid (a string) if a statement
 * lands there (a few tries; a transaction pool hands out its last released connection
 * first). Best effort: the pooler closing that connection releases it too. */
static void release_on(struct fleet *f, const char *pid)
{
    static const char sql[] = "SELECT CASE WHEN pg_backend_pid() = $2::integer"
                              " THEN pg_advisory_unlock($1::bigint) END";
    const char *p[2] = {f->id_s, pid};
    PGresult *res;
    int i;

    for (i = 0; i < 3; i++) {
        if (exec(f, f->conn, "releasing the fleet lock", sql, 2, p, stmt_deadline(f), &res) < 0)
            return;
        if (field(res, 0)) {
            PQclear(res);
            return;
        }
        PQclear(res);
    }
}

/* After the fleet phase, the caller's own verify_sql (the probe ran it before the phase):
 * a check that needs what warm_sql made must see it. The default needs no second run. */
static int verify(struct fleet *f)
{
    PGresult *res;
    int r;

    if (!f->fc->verify_sql || !*f->fc->verify_sql)
        return 0;
    r = exec(f, f->conn, "verify_sql", f->fc->verify_sql, -1, NULL, stmt_deadline(f), &res);
    PQclear(res);
    return r;
}

/* warm_sql in the fleet session, bounded by the deadline. */
static int run_warm(struct fleet *f, struct wl_result *res)
{
    PGresult *out;
    int r = exec(f, f->conn, "warm_sql", f->fc->warm_sql, -1, NULL, f->fc->deadline_ns, &out);

    PQclear(out);
    if (r < 0 && res)
        res->attempts++;
    return r;
}

/* ---------------------------------------------------------------- the run */

int64_t wl__fleet_id(const char *key)
{
    return (int64_t)wl__siphash24(id_key, key, strlen(key));
}

static void own_app(char *buf, size_t len)
{
    char host[64];
    if (gethostname(host, sizeof(host)) != 0)
        wl__copy(host, sizeof(host), "?");
    host[sizeof(host) - 1] = '\0';
    for (char *c = host; *c; c++)
        if (*c == ' ' || (unsigned char)*c < 0x20)
            *c = '_';
    /* NAMEDATALEN: the server keeps 63 bytes of it */
    wl__fmt(buf, len, "warmlock-fleet %.30s %ld", host, (long)getpid());
}

int wl__fleet_run(const struct wl__fleet_conf *fc, PGconn *conn, struct wl__fleet_out *out,
                  struct wl_result *res)
{
    static const char lock_sql[] =
        "SELECT pg_backend_pid(), CASE WHEN EXISTS (SELECT 1 FROM pg_locks"
        " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
        " AND classid = $2::oid AND objid = $3::oid AND objsubid = 1)"
        " OR pg_backend_pid() <> $4::integer"
        " THEN NULL ELSE pg_try_advisory_lock($1::bigint) END";
    struct fleet f;
    PGresult *pr;
    const char *got;
    char listen[80];
    int r, lead = 0, waited = 0;

    memset(out, 0, sizeof(*out));
    memset(&f, 0, sizeof(f));
    f.fc = fc;
    f.conn = conn;
    f.id = wl__fleet_id(fc->key);
    wl__fmt(f.id_s, sizeof(f.id_s), "%" PRId64, f.id);
    wl__fmt(f.classid_s, sizeof(f.classid_s), "%u", (unsigned)((uint64_t)f.id >> 32));
    wl__fmt(f.objid_s, sizeof(f.objid_s), "%u", (unsigned)((uint64_t)f.id & 0xffffffffu));
    wl__fmt(f.chan, sizeof(f.chan), "warmlock_fleet_%016" PRIx64, (uint64_t)f.id);
    own_app(f.app, sizeof(f.app));

    if (!f.conn && (r = connect_fleet(&f, &f.conn, stmt_deadline(&f))) < 0)
        goto out;
    if (f.conn)
        PQsetNoticeReceiver(f.conn, quiet, NULL);
    if (f.conn && PQsetnonblocking(f.conn, 1) != 0) {
        r = -EAGAIN;
        wl__copy(f.err, sizeof(f.err), "fleet: cannot make the connection non-blocking");
        goto out;
    }
    if ((r = whoami(&f)) < 0)
        goto out;
    if (transaction_pooler(&f)) {
        log_line("fleet mode off: a pooler that does not keep sessions (transaction pooling) "
                 "is in the way, so advisory locks cannot elect a fleet leader; this host "
                 "runs warm_sql itself (point the fleet at the server or a session pool)",
                 fc->key);
        goto local;
    }
    wl__fmt(listen, sizeof(listen), "LISTEN %s", f.chan);
    r = exec(&f, f.conn, "listening", listen, 0, NULL, stmt_deadline(&f), &pr);
    PQclear(pr);
    /* a hot standby refuses LISTEN (and NOTIFY): the election works without it */
    if (r < 0 && wl__transient(r))
        goto out;
    {
        const char *p[4] = {f.id_s, f.classid_s, f.objid_s, f.pid_s};
        if ((r = exec(&f, f.conn, "taking the fleet lock", lock_sql, 4, p, stmt_deadline(&f),
                      &pr)) < 0)
            goto out;
    }
    got = field(pr, 1);
    if (!same_backend(&f, pr) || !got) {
        PQclear(pr);
        log_line("fleet mode off: the fleet session's backend changed or already held the "
                 "fleet lock (a pooler that does not keep sessions); this host runs warm_sql "
                 "itself",
                 fc->key);
        goto local;
    }
    lead = got[0] == 't';
    PQclear(pr);

    if (!lead) {
        /* Another host leads: wait for its lock, naming it meanwhile. */
        char tmo[32];
        const char *p1[1] = {tmo};
        const char *p2[1] = {f.id_s};
        uint64_t now = wl__now_ns(), left;

        holder(&f, out);
        left = fc->deadline_ns > now + HOLDER_NS ? fc->deadline_ns - now - HOLDER_NS : 1 * MS;
        wl__fmt(tmo, sizeof(tmo), "%llums", (unsigned long long)(left / MS ? left / MS : 1));
        if ((r = exec(&f, f.conn, "setting lock_timeout",
                      "SELECT set_config('lock_timeout', $1, false)", 1, p1, stmt_deadline(&f),
                      &pr)) < 0)
            goto out;
        PQclear(pr);
        r = exec(&f, f.conn, "waiting for the fleet leader",
                 "SELECT pg_backend_pid(), pg_advisory_lock($1::bigint)", 1, p2,
                 fc->deadline_ns + HOLDER_NS / 2, &pr);
        if (r < 0) {
            uint64_t ms = (wl__now_ns() - now) / MS;
            if (!strcmp(f.sqlstate, "55P03") || r == -ETIMEDOUT) {
                struct wl__fleet_out h;
                memset(&h, 0, sizeof(h));
                if (r != -ETIMEDOUT && holder(&f, &h) == 0)
                    *out = h;
                if (out->leader_pid)
                    wl__fmt(f.err, sizeof(f.err),
                            "fleet: deadline passed after %llu ms waiting for the fleet leader, "
                            "backend pid %d at %s (%s), which still holds the fleet lock",
                            (unsigned long long)ms, (int)out->leader_pid, out->leader_host,
                            out->leader_app[0] ? out->leader_app : "no application_name");
                else
                    wl__fmt(f.err, sizeof(f.err),
                            "fleet: deadline passed after %llu ms waiting for the fleet lock",
                            (unsigned long long)ms);
                r = -ETIMEDOUT;
                out->flags |= WL__FLEET_DEADLINE;
            }
            goto out;
        }
        if (!same_backend(&f, pr)) {
            /* taken on another backend than ours: give it back there if we can */
            char other[16];
            wl__copy(other, sizeof(other), field(pr, 0) ? field(pr, 0) : "0");
            PQclear(pr);
            release_on(&f, other);
            log_line("fleet mode off: the fleet session's backend changed (a pooler that does "
                     "not keep sessions); this host runs warm_sql itself",
                     fc->key);
            goto local;
        }
        PQclear(pr);
        waited = 1;
    }
    /* The lock is ours: is the heavy part done for this server start? */
    if ((r = done_already(&f, out)) < 0)
        goto out;
    if (r == 1) {
        const char *p[1] = {f.id_s};
        out->role = waited ? WL_FLEET_WAITED : WL_FLEET_SKIPPED;
        r = exec(&f, f.conn, "releasing the fleet lock", "SELECT pg_advisory_unlock($1::bigint)", 1,
                 p, stmt_deadline(&f), &pr);
        PQclear(pr);
        goto verified; /* done either way; closing the session lets go of the lock too */
    }
    /* Lead (also after a leader that died or failed). */
    out->role = WL_FLEET_LED;
    out->leader_pid = f.pid;
    wl__copy(out->leader_host, sizeof(out->leader_host), f.host);
    wl__copy(out->leader_app, sizeof(out->leader_app), f.app);
    if ((r = run_warm(&f, res)) < 0)
        goto out;
    if ((r = record(&f)) < 0)
        goto out;
    announce(&f); /* a failure here: closing the session lets go of the lock anyway */
    goto verified;

local:
    out->role = WL_FLEET_LOCAL;
    out->leader_pid = 0;
    if ((r = run_warm(&f, res)) == 0)
        r = verify(&f);
    goto out;
verified:
    r = verify(&f);
out:
    if (f.norecord)
        out->flags |= WL__FLEET_NORECORD;
    if (r < 0 && res) {
        wl__copy(res->error, sizeof(res->error), f.err);
        wl__copy(res->sqlstate, sizeof(res->sqlstate), f.sqlstate);
    }
    if (f.conn)
        PQfinish(f.conn);
    return r;
}

/* ---------------------------------------------------------------- the slot's record */

void wl__fleet_note(struct wl_segment *seg, const char *slot_key, const struct wl__fleet_out *o)
{
    struct wl__slot *sl;
    uint32_t q;

    if (!seg || wl__slot_find(seg, slot_key, 0, &sl) < 0)
        return;
    /* The leader writes under the slot's mutex; readers copy behind the seqcount. */
    q = atomic_load_explicit(&sl->fleet_seq, memory_order_relaxed);
    /* relaxed store + release fence: the odd count is visible before the fields change */
    atomic_store_explicit(&sl->fleet_seq, q + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    sl->fleet_role = (uint32_t)o->role;
    sl->fleet_pid = o->leader_pid;
    wl__copy(sl->fleet_host, sizeof(sl->fleet_host), o->leader_host);
    wl__copy(sl->fleet_app, sizeof(sl->fleet_app), o->leader_app);
    /* release: the fields are complete before the even count says so */
    atomic_store_explicit(&sl->fleet_seq, q + 2, memory_order_release);
}
