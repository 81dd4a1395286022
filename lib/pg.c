/*
 * The libpq engine: the leader's warm-up of one PostgreSQL target, without blocking.
 *
 * A probe is a ring task (ring.c) whose one step function, probe_step(), drives
 *
 *   START -> CONNECT (PQconnectStartParams / PQconnectPoll) -> QUERY warm_sql -> QUERY
 *   verify_sql -> DONE, or with hold: IDLE <-> QUERY verify_sql (the check connection)
 *
 * and on a retryable failure SLEEP (the backoff delay, a ring timer) -> CONNECT again,
 * until the deadline or max_attempts. Every wait it asks for is bounded by the attempt's
 * own timeout (PQconnectPoll does not apply connect_timeout) and by the deadline. The task
 * runs on a loop of its own (wl__pg_probe, wl_pg_connect) or on an owner's (the keeper's),
 * and reports failed attempts, verification and its end through hooks (engine.h).
 *
 * libpq attaches no public SQLSTATE to a failed connection. The engine sets
 * PQERRORS_VERBOSE right after PQconnectStartParams: PQconnectStart only opens the socket
 * (and, over a Unix socket, sends the startup packet); the server's ErrorResponse is read
 * by a later PQconnectPoll, which formats it with the connection's verbosity at that time,
 * "...failed: FATAL:  57P03: the database system is starting up". wl__pg_sqlstate_of()
 * reads it back from there.
 *
 * Host names are resolved synchronously by libpq (getaddrinfo inside PQconnectPoll): only
 * the leader does it; hostaddr= or a socket directory keeps its loop non-blocking.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "warmlock/pg.h"

#define MS                         1000000ull
#define DEFAULT_ATTEMPT_TIMEOUT_MS 2000u
#define DEFAULT_VERIFY_SQL         "SELECT 1"
#define DEFAULT_TIMEOUT_MS         30000u

/* ---------------------------------------------------------------- classification */

enum phase_mask { CONNECTING = 1, QUERYING = 2, ANY = 3 };

/*
 * Every failure goes through this one table; the first matching row decides. `state` is a
 * SQLSTATE or a two-character class; NULL matches only a failure without a SQLSTATE (the
 * transport's), "*" any. `errnum` (if set) must appear, as strerror() spells it, in libpq's
 * message; `text` (if set) in the server's message. code 0 = retry after the backoff delay.
 * An attempt that times out is retried (see attempt_failed), and an immediate failure of
 * PQconnectStartParams that is not a connection error is bad conninfo: -EINVAL, no retry
 * (see start_attempt).
 */
static const struct rule {
    const char *state;
    int errnum;
    const char *text;
    int phases;
    int code;
    int refused; /* the server was not there at all (for -ECONNREFUSED at the end) */
} rules[] = {
    {"57P03", 0, NULL, ANY, 0, 0},                   /* starting up, in recovery, shutting down */
    {"57P01", 0, NULL, ANY, 0, 0},                   /* admin shutdown (fast stop, pg_terminate) */
    {"57P02", 0, NULL, ANY, 0, 0},                   /* crash shutdown */
    {"53300", 0, NULL, ANY, 0, 0},                   /* too many connections */
    {"08", 0, NULL, ANY, 0, 0},                      /* connection exception */
    {"28000", 0, "does not exist", ANY, -ENOENT, 0}, /* role "x" does not exist */
    {"28", 0, NULL, ANY, -EACCES, 0},                /* authentication refused */
    {"3D000", 0, NULL, ANY, -ENOENT, 0},             /* database does not exist */
    {"42", 0, NULL, CONNECTING, -EINVAL, 0},         /* bad options=-c ... */
    {"22", 0, NULL, CONNECTING, -EINVAL, 0},
    {NULL, ECONNREFUSED, NULL, CONNECTING, 0, 1}, /* nobody listens on the port */
    {NULL, ENOENT, NULL, CONNECTING, 0, 1},       /* no socket file (yet) */
    {NULL, 0, NULL, ANY, 0, 0},                   /* other transport failures: reset, EOF, DNS */
    {"*", 0, NULL, ANY, -EIO, 0},                 /* any other server error (warm_sql's, ...) */
};

static int state_matches(const char *pat, const char *sqlstate)
{
    if (!pat)
        return !sqlstate[0];
    if (!strcmp(pat, "*"))
        return sqlstate[0] != '\0';
    return sqlstate[0] && !strncmp(pat, sqlstate, strlen(pat));
}

int wl__pg_classify(const char *sqlstate, const char *msg, int connecting, int *refused)
{
    char buf[128];
    size_t i;

    *refused = 0;
    if (!sqlstate)
        sqlstate = "";
    if (!msg)
        msg = "";
    for (i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        const struct rule *r = &rules[i];
        if (!(r->phases & (connecting ? CONNECTING : QUERYING)))
            continue;
        if (!state_matches(r->state, sqlstate))
            continue;
        if (r->errnum) {
            /* strerror_r (GNU) may return a static string instead of filling buf */
            const char *s = strerror_r(r->errnum, buf, sizeof(buf));
            if (!strstr(msg, s))
                continue;
        }
        if (r->text && !strstr(msg, r->text))
            continue;
        *refused = r->refused;
        return r->code;
    }
    return -EIO;
}

/* "...FATAL:  57P03: text" (PQERRORS_VERBOSE); several hosts: the last one wins. */
void wl__pg_sqlstate_of(const char *msg, char out[6])
{
    static const char *const sev[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    const char *p;
    size_t i;
    int k;

    out[0] = '\0';
    for (p = msg; p && *p; p++) {
        for (i = 0; i < sizeof(sev) / sizeof(sev[0]); i++) {
            const char *c = p + 8;
            if (strncmp(p, sev[i], 8) != 0)
                continue;
            for (k = 0; k < 5; k++)
                if (!(isdigit((unsigned char)c[k]) || isupper((unsigned char)c[k])))
                    break;
            if (k == 5 && c[5] == ':') {
                memcpy(out, c, 5); /* a later one overwrites: the last host's */
                out[5] = '\0';
            }
        }
    }
}

/* libpq's message as one line, without the LOCATION: lines verbose mode adds. */
static void clean_message(char *dst, size_t len, const char *msg)
{
    char tmp[1024];
    const char *p = msg ? msg : "";
    size_t n = 0;

    while (*p && n + 1 < sizeof(tmp)) {
        const char *eol = strchr(p, '\n');
        size_t l = eol ? (size_t)(eol - p) : strlen(p);
        if (strncmp(p, "LOCATION:", 9) != 0) {
            if (n && n + 1 < sizeof(tmp))
                tmp[n++] = ' ';
            if (l > sizeof(tmp) - 1 - n)
                l = sizeof(tmp) - 1 - n;
            memcpy(tmp + n, p, l);
            n += l;
        }
        p = eol ? eol + 1 : p + l;
    }
    tmp[n] = '\0';
    wl__oneline(tmp);
    wl__copy(dst, len, tmp);
}

/* ---------------------------------------------------------------- conninfo */

/* The keywords and values of conninfo, plus gssencmode=disable unless it sets one, after a
 * slot 0 left for fallback_application_name: one allocation, *val inside it (free *kw only).
 * The arrays point into *parsed. */
static int conn_params(PQconninfoOption **parsed, const char ***kw, const char ***val,
                       char *err, size_t errlen)
{
    PQconninfoOption *o;
    size_t n = 0, i = 1;
    int have_gss = 0;

    *kw = *val = NULL;
    for (o = *parsed; o->keyword; o++)
        n++;
    /* slot 0, the options, gssencmode, the NULL that ends them */
    const char **a = calloc(2 * (n + 3), sizeof(char *));
    if (!a) {
        PQconninfoFree(*parsed);
        *parsed = NULL;
        wl__fmt(err, errlen, "out of memory");
        return -ENOMEM;
    }
    *kw = a;
    *val = a + n + 3;
    for (o = *parsed; o->keyword; o++) {
        if (!o->val)
            continue;
        if (!strcmp(o->keyword, "gssencmode"))
            have_gss = 1;
        (*kw)[i] = o->keyword;
        (*val)[i++] = o->val;
    }
    if (!have_gss && !getenv("PGGSSENCMODE")) {
        /* GSS encryption negotiation can block on a KDC: off unless asked for. */
        (*kw)[i] = "gssencmode";
        (*val)[i++] = "disable";
    }
    return 0;
}

/* ---------------------------------------------------------------- the probe */

/*
 * One state machine for every connection the engine makes: a leader's warm-up (connect,
 * warm_sql, verify_sql, retried with backoff), the caller's own connection of wl_pg_connect
 * (connect_only: the connection is handed over once up), and the keeper's check connection
 * (hold_ms: after verification the connection stays, idle, and verify_sql runs on it every
 * hold_ms; the server closing it, or a check that fails, ends the run).
 */
enum phase {
    PH_START,   /* before the first attempt */
    PH_CONNECT, /* PQconnectPoll */
    PH_QUERY,   /* a query in flight (warm_sql, verify_sql, or a check of the held one) */
    PH_SLEEP,   /* the backoff delay before the next attempt */
    PH_IDLE,    /* hold: verified, the connection kept; the next check at phase_deadline */
};

struct wl__probe {
    struct wl__task task; /* first: the step gets it back as the probe */

    /* parsed once, by wl__probe_new */
    PQconninfoOption *parsed;
    const char **kw, **val; /* kw[0]/val[0] reserved for fallback_application_name */
    uint64_t ct_attempt_ns; /* the conninfo's connect_timeout as an attempt timeout, 0 none */

    /* the run's configuration, by wl__probe_start */
    char *sql[2];
    const char *sql_name[2];
    int nsql;
    int connect_only;
    int keep_conn;
    PQnoticeReceiver own_rcv; /* libpq's, while on_notice is set */
    uint64_t hold_ns;
    const char *app_name;
    struct wl__probe_hooks hooks;
    struct wl_backoff bo_opts;
    uint64_t attempt_ns;
    uint64_t deadline_ns, t0;
    struct wl__backoff_state bo;   /* counts attempts against max_attempts and the deadline */
    struct wl__backoff_state pace; /* the delays; restarts while nothing listens */
    struct wl__loop *loop;
    int running;
    int verified; /* reached verification in this run (with hold: holding it) */
    int stage;    /* WL_STAGE_*: how far the current attempt got */
    int checking; /* the query in flight checks the held connection */

    /* state */
    enum phase phase;
    PGconn *conn;
    int qi; /* index of the query in flight */
    uint64_t phase_deadline;
    uint64_t phase_t0; /* when the phase (connect, or the query in flight) began */
    char qstate[6];    /* the first error of the query in flight */
    char qerr[256];
    int qfailed;
    char notice[200]; /* the last FATAL or PANIC the server sent on the connection */
    struct wl__pmwatch pm; /* a local server's postmaster.pid and socket file, set up at
                            * its first refusal */
    int sleep_watch;       /* the current sleep also ends on these WL__PM_EV_* */

    /* outcome */
    unsigned attempts;
    int rc;           /* 0 ok, or -errno */
    int refused;      /* the last failure was "nobody there" */
    int timed_out;    /* the last attempt ran out of its own time (a slow server, not a gone one) */
    char sqlstate[6]; /* of the last failure */
    char error[256];  /* the last failure */
};

/* NOTICEs of warm_sql are not the engine's business; a FATAL the server sends on an idle
 * connection (57P01 at a shutdown) arrives this way too, and names why it is closing. */
static void on_notice(void *arg, const PGresult *res)
{
    struct wl__probe *p = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC")))
        wl__fmt(p->notice, sizeof(p->notice), "%s:  %s: %s", sev, code ? code : "?",
                msg ? msg : "");
}

static void drop_conn(struct wl__probe *p)
{
    if (p->conn) {
        PQfinish(p->conn);
        p->conn = NULL;
    }
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* The attempt got as far as `stage`: tell the owner when that is further. */
static void reach(struct wl__probe *p, int stage)
{
    if (stage <= p->stage)
        return;
    p->stage = stage;
    if (p->hooks.stage)
        p->hooks.stage(p->hooks.arg, stage);
}

/* An attempt ended short of verification: the owner learns where (it may be less far than
 * the previous attempt got: the server went away meanwhile). */
static void stage_ended(struct wl__probe *p)
{
    if (p->hooks.stage && !p->verified)
        p->hooks.stage(p->hooks.arg, p->stage);
}

/* Has this attempt's socket been accepted (the server listens)? */
static void note_connection(struct wl__probe *p)
{
    ConnStatusType st = PQstatus(p->conn);
    if (st != CONNECTION_STARTED && st != CONNECTION_NEEDED && st != CONNECTION_BAD)
        reach(p, WL_STAGE_REACHABLE);
}

/* The end of the run: code 0 or -errno, no more attempts. */
static int finish(struct wl__probe *p, int code)
{
    p->rc = code;
    if (code < 0)
        stage_ended(p);
    if (code < 0 || !(p->connect_only || p->keep_conn))
        drop_conn(p);
    else if (p->keep_conn && p->conn) {
        /* handed over: as the caller's own connection would be */
        PQsetnonblocking(p->conn, 0);
        PQsetNoticeReceiver(p->conn, p->own_rcv, NULL);
    }
    p->running = 0;
    if (p->hooks.ended)
        p->hooks.ended(p->hooks.arg, code);
    return code < 0 ? WL__WANT_FAILED : WL__WANT_DONE;
}

/* The held connection is gone or failed its check: the run ends with what happened. */
static int lost(struct wl__probe *p, int code, const char *why)
{
    char msg[256];
    wl__copy(msg, sizeof(msg),
             p->notice[0]  ? p->notice
             : why && *why ? why
                           : "the server closed the connection");
    clean_message(p->error, sizeof(p->error), msg);
    if (p->notice[0])
        wl__pg_sqlstate_of(p->notice, p->sqlstate);
    return finish(p, code);
}

/* Attempts ran out or the deadline passed: say what was tried and the last error. */
static int give_up(struct wl__probe *p, int attempts_ran_out)
{
    uint64_t ms = (wl__now_ns() - p->t0) / MS;
    char last[200];
    int code = attempts_ran_out && p->refused ? -ECONNREFUSED : -ETIMEDOUT;

    wl__copy(last, sizeof(last), p->error[0] ? p->error : "none");
    wl__fmt(p->error, sizeof(p->error), "%s after %u attempt%s over %llu ms; last error: %s",
            attempts_ran_out ? "gave up (max_attempts)" : "deadline passed", p->attempts,
            p->attempts == 1 ? "" : "s", (unsigned long long)ms, last);
    return finish(p, code);
}

static void pace_restart(struct wl__probe *p, uint64_t now)
{
    wl__backoff_init(&p->pace, &p->bo_opts, 0, now, 0);
    p->pace.deadline_ns = UINT64_MAX; /* p->bo keeps the deadline */
}

/* Is the last failure the server answering "not now" (57P03 starting up, in recovery or
 * shutting down; class 53 full)? Each such probe costs it a fork and a log line. */
static int server_busy(const struct wl__probe *p)
{
    return !strcmp(p->sqlstate, "57P03") || !strncmp(p->sqlstate, "53", 2);
}

/* The delay before the next attempt, by what the last one cost the server (see struct
 * wl_backoff): nothing while nothing listens, a fork and a log line while it refuses. */
static uint64_t next_delay(struct wl__probe *p, uint64_t now)
{
    uint64_t delay = 0;

    p->sleep_watch = 0;
    if (p->refused) {
        pace_restart(p, now); /* what follows its return starts from initial_ms */
        p->sleep_watch = WL__PM_EV_SOCKET;
        /* No socket file, and its directory watched: its creation wakes us; until then
         * only the cap, as a safety net (a probe could learn nothing new). */
        if (wl__pmwatch_socket_missing(&p->pm))
            return p->pace.max_ns;
        return (uint64_t)(p->bo_opts.refused_ms ? p->bo_opts.refused_ms
                                                : WL__BACKOFF_REFUSED_MS) * MS;
    }
    if (server_busy(p)) {
        pace_restart(p, now);
        if (!strcmp(p->sqlstate, "57P03") && wl__pmwatch_watches_state(&p->pm)) {
            /* The server will say when it is ready: probe then, else only at the cap. */
            p->sleep_watch = WL__PM_EV_STATE;
            return p->pace.max_ns;
        }
        return (uint64_t)(p->bo_opts.busy_ms ? p->bo_opts.busy_ms : WL__BACKOFF_BUSY_MS) * MS;
    }
    wl__backoff_next(&p->pace, now, &delay);
    return delay;
}

/* The first time a server refuses (or its socket is missing), watch it if it is local:
 * 1 when its postmaster.pid already says it is ready (probe again at once). */
static int watch_server(struct wl__probe *p)
{
    const char *host, *list = NULL;
    int st;

    if (!p->conn || (p->bo_opts.flags & WL_BACKOFF_NO_WATCH) ||
        !(p->refused || !strcmp(p->sqlstate, "57P03")))
        return 0;
    if (p->pm.tried) {
        /* the server started since the socket directory was first watched */
        if (p->refused || wl__pmwatch_watches_state(&p->pm) || wl__pmwatch_watch_state(&p->pm) < 0)
            return 0;
        st = wl__pmwatch_state(&p->pm);
        return st == WL__PM_READY || st == WL__PM_STANDBY;
    }
    for (PQconninfoOption *o = p->parsed; o->keyword; o++)
        if (!strcmp(o->keyword, "host"))
            list = o->val;
    host = PQhost(p->conn);
    if ((list && strchr(list, ',')) || wl__pmwatch_setup(&p->pm, host, PQport(p->conn)) < 0) {
        p->pm.tried = 1;
        return 0;
    }
    st = wl__pmwatch_state(&p->pm);
    return !p->refused && (st == WL__PM_READY || st == WL__PM_STANDBY);
}

/* A retryable failure of this attempt has been recorded: sleep, or give up. */
static int retry_later(struct wl__probe *p)
{
    uint64_t now = wl__now_ns(), delay = 0;
    int r, at_once = watch_server(p);

    drop_conn(p);
    stage_ended(p);
    if (p->error[0] && p->hooks.attempt_failed) /* followers and status see how it goes */
        p->hooks.attempt_failed(p->hooks.arg,
                                p->refused     ? -ECONNREFUSED
                                : p->timed_out ? -ETIMEDOUT
                                               : -EAGAIN,
                                p->error, p->sqlstate);
    p->sleep_watch = 0;
    r = wl__backoff_next(&p->bo, now, &delay);
    if (r == -EAGAIN)
        return give_up(p, 1);
    if (r == 0)
        delay = next_delay(p, now);
    if (r == 0 && at_once)
        delay = 0;
    if (r < 0 || now + delay >= p->deadline_ns) {
        if (now >= p->deadline_ns) /* nothing left at all */
            return give_up(p, 0);
        /* Sleep to the deadline, then say so: the caller's budget was spent waiting. */
        delay = p->deadline_ns - now;
    }
    p->phase = PH_SLEEP;
    p->task.deadline_ns = now + delay;
    if (p->sleep_watch && p->pm.fd >= 0) {
        p->task.fd = p->pm.fd;
        return WL__WANT_READ;
    }
    return WL__WANT_TIMER;
}

/* Asleep with the watch: did what woke it end the sleep? */
static int watch_woke(struct wl__probe *p)
{
    int ev = wl__pmwatch_drain(&p->pm) & p->sleep_watch, st;

    if (ev & WL__PM_EV_SOCKET)
        return 1;
    if (ev & WL__PM_EV_STATE) {
        st = wl__pmwatch_state(&p->pm);
        return st == WL__PM_READY || st == WL__PM_STANDBY;
    }
    return 0;
}

/* Record a failure (sqlstate may be ""), classify it, retry or fail. */
static int attempt_failed(struct wl__probe *p, const char *sqlstate, const char *msg,
                          int connecting)
{
    int refused, code;

    code = wl__pg_classify(sqlstate, msg, connecting, &refused);
    if (p->verified) { /* a check of the held connection: any failure ends the run */
        wl__copy(p->sqlstate, sizeof(p->sqlstate), sqlstate ? sqlstate : "");
        return lost(p, code < 0 ? code : -ECONNRESET, msg);
    }
    wl__copy(p->sqlstate, sizeof(p->sqlstate), sqlstate ? sqlstate : "");
    wl__copy(p->error, sizeof(p->error), msg);
    p->refused = refused;
    if (code < 0)
        return finish(p, code);
    return retry_later(p);
}

static int connect_failed(struct wl__probe *p)
{
    char st[6], msg[256];
    const char *m = PQerrorMessage(p->conn);
    wl__pg_sqlstate_of(m, st);
    if (st[0]) /* the server answered (a refusal is an answer) */
        reach(p, WL_STAGE_REACHABLE);
    clean_message(msg, sizeof(msg), m);
    return attempt_failed(p, st, msg, 1);
}

static int timed_out(struct wl__probe *p, const char *doing)
{
    char msg[256];
    p->timed_out = 1;
    if (p->verified) {
        wl__fmt(msg, sizeof(msg), "check timed out after %llu ms while %s",
                (unsigned long long)(p->attempt_ns / MS), doing);
        p->sqlstate[0] = '\0';
        return lost(p, -ETIMEDOUT, msg);
    }
    if (p->phase_deadline < p->phase_t0 + p->attempt_ns) { /* the call's deadline came first */
        p->refused = 0;
        /* A connection attempt cut short learnt nothing about the server: keep the previous
         * attempt's error (and SQLSTATE) as the last one, if there was one. (A query cut
         * short did learn something: the server let us in; say so.) */
        if (p->error[0] && p->phase == PH_CONNECT)
            return retry_later(p);
        wl__fmt(msg, sizeof(msg),
                "cut off by the deadline after %llu ms while %s (attempt "
                "timeout %llu ms)",
                (unsigned long long)((wl__now_ns() - p->phase_t0) / MS), doing,
                (unsigned long long)(p->attempt_ns / MS));
    } else
        wl__fmt(msg, sizeof(msg), "attempt timed out after %llu ms while %s",
                (unsigned long long)(p->attempt_ns / MS), doing);
    /* An attempt that times out is retried (it counts against the deadline anyway). */
    wl__copy(p->sqlstate, sizeof(p->sqlstate), "");
    wl__copy(p->error, sizeof(p->error), msg);
    p->refused = 0;
    return retry_later(p);
}

static int wait_socket(struct wl__probe *p, int want)
{
    p->task.fd = PQsocket(p->conn); /* re-read every step: it can change */
    p->task.deadline_ns = p->phase_deadline;
    return want;
}

/* Is libpq's immediate failure a connection error (worth retrying) or bad conninfo? */
static int is_connection_error(const char *msg)
{
    char b1[128], b2[128];
    const char *s1 = strerror_r(ECONNREFUSED, b1, sizeof(b1));
    const char *s2 = strerror_r(ENOENT, b2, sizeof(b2));
    return strstr(msg, "connection to server") || strstr(msg, "could not translate host") ||
           strstr(msg, s1) || strstr(msg, s2);
}

static int start_attempt(struct wl__probe *p)
{
    uint64_t now = wl__now_ns();

    if (now >= p->deadline_ns)
        return give_up(p, 0);
    p->attempts++;
    p->stage = WL_STAGE_NONE;
    p->notice[0] = '\0';
    p->conn =
        PQconnectStartParams(p->app_name ? p->kw : p->kw + 1, p->app_name ? p->val : p->val + 1, 0);
    if (!p->conn) {
        wl__fmt(p->error, sizeof(p->error), "out of memory");
        return finish(p, -ENOMEM);
    }
    /* Before any PQconnectPoll reads the server's answer: see the file's header. */
    PQsetErrorVerbosity(p->conn, PQERRORS_VERBOSE);
    if (!p->connect_only) /* the caller's own connection keeps libpq's notice processing */
        p->own_rcv = PQsetNoticeReceiver(p->conn, on_notice, p);
    p->phase = PH_CONNECT;
    p->timed_out = 0;
    p->phase_t0 = now;
    p->phase_deadline = min_u64(now + p->attempt_ns, p->deadline_ns);
    if (PQstatus(p->conn) == CONNECTION_BAD) {
        const char *m = PQerrorMessage(p->conn);
        if (!is_connection_error(m)) {
            /* Rejected by libpq before any server contact (invalid sslmode, ...). */
            char msg[256];
            wl__pg_options_message(msg, sizeof(msg), m, p->parsed);
            wl__fmt(p->error, sizeof(p->error), "invalid conninfo: %s", msg);
            p->sqlstate[0] = '\0';
            p->attempts--; /* not an attempt: the server was never contacted */
            return finish(p, -EINVAL);
        }
        return connect_failed(p);
    }
    note_connection(p); /* a Unix socket connects at once */
    /* PQconnectStart succeeded: poll as if PQconnectPoll had said WRITING. */
    return wait_socket(p, WL__WANT_WRITE);
}

static int send_query(struct wl__probe *p)
{
    int f;

    p->qfailed = 0;
    p->qstate[0] = '\0';
    p->qerr[0] = '\0';
    p->phase = PH_QUERY;
    p->phase_t0 = wl__now_ns();
    p->phase_deadline = min_u64(p->phase_t0 + p->attempt_ns, p->deadline_ns);
    if (!PQsendQuery(p->conn, p->sql[p->qi]))
        return connect_failed(p); /* the connection broke: transport, retry */
    f = PQflush(p->conn);
    if (f < 0)
        return connect_failed(p);
    return wait_socket(p, f ? WL__WANT_READ | WL__WANT_WRITE : WL__WANT_READ);
}

/* Hold: the connection stays, watched for the server closing it, until the next check. */
static int go_idle(struct wl__probe *p)
{
    p->phase = PH_IDLE;
    p->checking = 0;
    p->phase_t0 = wl__now_ns();
    p->phase_deadline = p->phase_t0 + p->hold_ns;
    return wait_socket(p, WL__WANT_READ);
}

/* The next query, or done. */
static int next_query(struct wl__probe *p)
{
    if (p->connect_only || p->qi >= p->nsql) {
        p->sqlstate[0] = '\0';
        p->error[0] = '\0';
        if (p->connect_only)
            return finish(p, 0);
        if (p->checking) {
            if (p->hooks.checked)
                p->hooks.checked(p->hooks.arg);
            return go_idle(p);
        }
        reach(p, WL_STAGE_VERIFIED);
        p->verified = 1;
        if (p->hold_ns)
            p->deadline_ns = UINT64_MAX; /* the run's deadline was for reaching this point */
        if (p->hooks.verified)
            p->hooks.verified(p->hooks.arg);
        return p->hold_ns ? go_idle(p) : finish(p, 0);
    }
    return send_query(p);
}

static int step_connect(struct wl__probe *p)
{
    PostgresPollingStatusType ps = PQconnectPoll(p->conn);

    if (ps != PGRES_POLLING_FAILED)
        note_connection(p);
    switch (ps) {
    case PGRES_POLLING_READING: return wait_socket(p, WL__WANT_READ);
    case PGRES_POLLING_WRITING: return wait_socket(p, WL__WANT_WRITE);
    case PGRES_POLLING_OK:
        reach(p, WL_STAGE_AUTHENTICATED);
        if (p->nsql == 1) /* no warm_sql: nothing to warm */
            reach(p, WL_STAGE_WARMED);
        if (!p->connect_only && PQsetnonblocking(p->conn, 1) != 0)
            return connect_failed(p);
        p->qi = 0;
        return next_query(p);
    case PGRES_POLLING_FAILED:
    default: return connect_failed(p);
    }
}

/* The held connection became readable while idle: the server is closing it (shutdown,
 * crash, termination) or sent a notice. */
static int step_idle(struct wl__probe *p, int revents)
{
    PGresult *res;
    char msg[256];

    if (!PQconsumeInput(p->conn) || PQstatus(p->conn) == CONNECTION_BAD) {
        wl__copy(msg, sizeof(msg), PQerrorMessage(p->conn));
        return lost(p, -ECONNRESET, msg);
    }
    while (!PQisBusy(p->conn) && (res = PQgetResult(p->conn))) {
        wl__copy(msg, sizeof(msg), PQresultErrorMessage(res));
        PQclear(res);
        if (msg[0])
            return lost(p, -ECONNRESET, msg);
    }
    if (revents & (POLLHUP | POLLERR | POLLNVAL))
        return lost(p, -ECONNRESET, "the server closed the connection");
    return wait_socket(p, WL__WANT_READ);
}

static void record_query_error(struct wl__probe *p, const PGresult *res)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY);
    const char *prim = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (p->qfailed)
        return; /* keep the first: later ones are consequences */
    p->qfailed = 1;
    wl__copy(p->qstate, sizeof(p->qstate), st ? st : "");
    if (prim)
        wl__fmt(p->qerr, sizeof(p->qerr), "%s failed: %s:  %s%s%s%s", p->sql_name[p->qi],
                sev ? sev : "ERROR", prim, st ? " (SQLSTATE " : "", st ? st : "", st ? ")" : "");
    else
        clean_message(p->qerr, sizeof(p->qerr), PQresultErrorMessage(res));
}

static int step_query(struct wl__probe *p, int revents)
{
    PGresult *res;

    if (revents & POLLOUT) {
        int f = PQflush(p->conn);
        if (f < 0)
            return connect_failed(p);
        if (f > 0)
            return wait_socket(p, WL__WANT_READ | WL__WANT_WRITE);
    }
    if (!PQconsumeInput(p->conn))
        return connect_failed(p);
    while (!PQisBusy(p->conn)) {
        if (!(res = PQgetResult(p->conn))) {
            /* Every result of this query string is in. */
            if (p->qfailed) {
                char msg[256];
                wl__copy(msg, sizeof(msg), p->qerr);
                return attempt_failed(p, p->qstate, msg, 0);
            }
            if (!p->checking && p->qi == 0 && p->nsql == 2)
                reach(p, WL_STAGE_WARMED); /* warm_sql done */
            p->qi++;
            return next_query(p);
        }
        switch (PQresultStatus(res)) {
        case PGRES_COMMAND_OK:
        case PGRES_TUPLES_OK:
        case PGRES_EMPTY_QUERY:
        case PGRES_SINGLE_TUPLE: break;
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
            PQclear(res);
            wl__fmt(p->error, sizeof(p->error), "%s may not use COPY", p->sql_name[p->qi]);
            p->sqlstate[0] = '\0';
            return finish(p, -EINVAL);
        default: record_query_error(p, res); break;
        }
        PQclear(res);
        if (PQstatus(p->conn) == CONNECTION_BAD) {
            if (p->qfailed) {
                char msg[256];
                wl__copy(msg, sizeof(msg), p->qerr);
                return attempt_failed(p, p->qstate, msg, 0);
            }
            return connect_failed(p);
        }
    }
    {
        int f = PQflush(p->conn);
        if (f < 0)
            return connect_failed(p);
        return wait_socket(p, f ? WL__WANT_READ | WL__WANT_WRITE : WL__WANT_READ);
    }
}

static const char *query_doing(const struct wl__probe *p)
{
    if (p->checking)
        return "checking the held connection";
    return p->qi == 0 && p->nsql == 2 ? "running warm_sql" : "running verify_sql";
}

/* The one step function: what happened, what to wait for next. */
static int probe_step(struct wl__task *t, int event, int revents)
{
    struct wl__probe *p = (struct wl__probe *)t;

    switch (p->phase) {
    case PH_START:
    case PH_SLEEP:
        if (event == WL__EV_START || event == WL__EV_TIMER || event == WL__EV_TIMEOUT)
            return start_attempt(p);
        if (event == WL__EV_IO && p->phase == PH_SLEEP && p->pm.fd >= 0) {
            if (watch_woke(p))
                return start_attempt(p);
            p->task.fd = p->pm.fd; /* not yet: sleep on, to the same deadline */
            return WL__WANT_READ;
        }
        return WL__WANT_TIMER; /* spurious: keep sleeping */
    case PH_CONNECT:
        if (event == WL__EV_TIMEOUT || wl__now_ns() >= p->phase_deadline)
            return timed_out(p, "connecting");
        return step_connect(p);
    case PH_QUERY:
        if (event == WL__EV_TIMEOUT || wl__now_ns() >= p->phase_deadline)
            return timed_out(p, query_doing(p));
        return step_query(p, event == WL__EV_IO ? revents : 0);
    case PH_IDLE:
        if (event == WL__EV_IO)
            return step_idle(p, revents);
        if (wl__now_ns() < p->phase_deadline)
            return wait_socket(p, WL__WANT_READ);
        p->checking = 1; /* time for a check: verify_sql on the held connection */
        p->qi = p->nsql - 1;
        return send_query(p);
    }
    return finish(p, -EINVAL);
}

int wl__probe_new(const char *conninfo, struct wl__probe **out, char *err, size_t errlen)
{
    PQconninfoOption *parsed;
    char *perr = NULL;

    *out = NULL;
    if (!(parsed = PQconninfoParse(conninfo ? conninfo : "", &perr))) {
        char m[256];
        int r = perr ? -EINVAL : -ENOMEM;
        wl__pg_conninfo_message(m, sizeof(m), perr ? perr : "out of memory", conninfo);
        wl__fmt(err, errlen, "invalid conninfo: %s", m);
        PQfreemem(perr);
        return r;
    }
    return wl__probe_new_parsed(parsed, out, err, errlen);
}

int wl__probe_new_parsed(PQconninfoOption *parsed, struct wl__probe **out, char *err,
                         size_t errlen)
{
    struct wl__probe *p;
    PQconninfoOption *o;
    const char *ct = NULL;
    long secs;
    int r;

    *out = NULL;
    if (!(p = calloc(1, sizeof(*p)))) {
        PQconninfoFree(parsed);
        wl__fmt(err, errlen, "out of memory");
        return -ENOMEM;
    }
    p->task.fd = -1;
    wl__pmwatch_init(&p->pm);
    p->parsed = parsed;
    if ((r = conn_params(&p->parsed, &p->kw, &p->val, err, errlen)) < 0) {
        free(p);
        return r;
    }
    /* slot 0 first: a fallback_application_name in the conninfo (later) wins over it */
    p->kw[0] = "fallback_application_name";
    /* The conninfo's connect_timeout (libpq's minimum of 2 s applies to it) bounds each
     * attempt unless attempt_timeout_ms is set; PQconnectPoll applies none of its own. */
    for (o = p->parsed; o->keyword; o++)
        if (!strcmp(o->keyword, "connect_timeout"))
            ct = o->val;
    if (!ct)
        ct = getenv("PGCONNECT_TIMEOUT");
    secs = ct ? strtol(ct, NULL, 10) : 0;
    p->ct_attempt_ns = secs > 0 ? (uint64_t)(secs < 2 ? 2 : secs) * 1000u * MS : 0;
    *out = p;
    return 0;
}

int wl__probe_start(struct wl__probe *p, struct wl__loop *l, const struct wl__probe_conf *c)
{
    uint64_t now = wl__now_ns();
    const char *verify;
    int i;

    if (p->running || p->task.loop_)
        return -EBUSY;
    for (i = 0; i < 2; i++) {
        free(p->sql[i]);
        p->sql[i] = NULL;
    }
    p->nsql = 0;
    if (c->warm_sql && *c->warm_sql && !c->connect_only) {
        if (!(p->sql[p->nsql] = strdup(c->warm_sql)))
            return -ENOMEM;
        p->sql_name[p->nsql++] = "warm_sql";
    }
    verify = c->verify_sql && *c->verify_sql ? c->verify_sql : DEFAULT_VERIFY_SQL;
    if (!(p->sql[p->nsql] = strdup(verify)))
        return -ENOMEM;
    p->sql_name[p->nsql++] = "verify_sql";
    p->connect_only = c->connect_only;
    p->keep_conn = c->keep_conn && !c->hold_ms;
    p->hold_ns = (uint64_t)c->hold_ms * MS;
    p->app_name = c->application_name;
    p->val[0] = c->application_name;
    p->hooks = c->hooks;
    p->bo_opts = c->backoff;
    p->attempt_ns = c->attempt_timeout_ms ? (uint64_t)c->attempt_timeout_ms * MS
                    : p->ct_attempt_ns    ? p->ct_attempt_ns
                                          : (uint64_t)DEFAULT_ATTEMPT_TIMEOUT_MS * MS;
    p->t0 = now;
    wl__backoff_init(&p->bo, &c->backoff, DEFAULT_TIMEOUT_MS, now, 0);
    if (c->deadline_ns) /* UINT64_MAX: none */
        p->bo.deadline_ns = c->deadline_ns;
    p->deadline_ns = p->bo.deadline_ns;
    pace_restart(p, now);
    p->verified = p->checking = 0;
    p->phase = PH_START;
    p->attempts = 0;
    p->rc = 0;
    p->refused = p->timed_out = 0;
    p->sqlstate[0] = p->error[0] = '\0';
    p->task.step = probe_step;
    p->task.fd = -1;
    p->loop = l;
    if ((i = wl__loop_add(l, &p->task)) < 0)
        return i;
    p->running = 1;
    return 0;
}

void wl__probe_cancel(struct wl__probe *p)
{
    if (!p)
        return;
    if (p->loop && p->task.loop_)
        wl__loop_remove(p->loop, &p->task);
    drop_conn(p);
    p->running = 0;
    p->phase = PH_START;
}

int wl__probe_running(const struct wl__probe *p)
{
    return p->running;
}

int wl__probe_verified(const struct wl__probe *p)
{
    return p->verified;
}

void wl__probe_result(const struct wl__probe *p, struct wl_result *res)
{
    res->attempts = p->attempts;
    wl__copy(res->sqlstate, sizeof(res->sqlstate), p->sqlstate);
    wl__copy(res->error, sizeof(res->error), p->error);
}

int wl__probe_timed_out(const struct wl__probe *p)
{
    return p->timed_out;
}

PGconn *wl__probe_take_conn(struct wl__probe *p)
{
    PGconn *c = p->running || p->rc < 0 ? NULL : p->conn;
    if (c)
        p->conn = NULL;
    return c;
}

void wl__probe_free(struct wl__probe *p)
{
    if (!p)
        return;
    wl__probe_cancel(p);
    free(p->sql[0]);
    free(p->sql[1]);
    free(p->kw); /* p->val lies inside it */
    wl__pmwatch_close(&p->pm);
    if (p->parsed)
        PQconninfoFree(p->parsed);
    free(p);
}

int wl__probe_run(struct wl__probe *p, const struct wl__probe_conf *c, int backend)
{
    struct wl__loop *l;
    char err[200];
    int r;

    if ((r = wl__loop_new(backend, &l, err, sizeof(err))) < 0) {
        wl__copy(p->error, sizeof(p->error), err);
        return p->rc = r;
    }
    if ((r = wl__probe_start(p, l, c)) == 0)
        r = wl__loop_run_until(l, 0);
    wl__loop_free(l);
    p->loop = NULL;
    if (r < 0) {
        wl__fmt(p->error, sizeof(p->error), "event loop failed: %s", strerror(-r));
        drop_conn(p);
        p->running = 0;
        return p->rc = r;
    }
    return p->rc;
}

void wl__pg_conf(struct wl__probe_conf *c, const struct wl_pg_opts *opts, uint64_t deadline_ns)
{
    uint64_t now = wl__now_ns(), ms;

    memset(c, 0, sizeof(*c));
    if (opts) {
        c->warm_sql = opts->warm_sql;
        c->verify_sql = opts->verify_sql;
        c->attempt_timeout_ms = opts->attempt_timeout_ms;
        c->backoff = opts->backoff;
    }
    ms = opts && opts->backoff.deadline_ms ? opts->backoff.deadline_ms
         : opts && opts->wait.timeout_ms   ? opts->wait.timeout_ms
                                           : DEFAULT_TIMEOUT_MS;
    c->deadline_ns = now + ms * MS;
    if (deadline_ns && deadline_ns < c->deadline_ns)
        c->deadline_ns = deadline_ns;
}

static void warm_progress(void *arg, int code, const char *error, const char *sqlstate)
{
    (void)arg;
    wl__warm_progress(code, error, sqlstate);
}

static void warm_stage(void *arg, int stage)
{
    (void)arg;
    wl__warm_stage(stage);
}

int wl__pg_probe(const char *conninfo, const struct wl_pg_opts *opts, uint64_t deadline_ns,
                 struct wl_result *res)
{
    return wl__pg_probe_keep(conninfo, opts, deadline_ns, res, NULL);
}

int wl__pg_probe_keep(const char *conninfo, const struct wl_pg_opts *opts, uint64_t deadline_ns,
                      struct wl_result *res, PGconn **conn)
{
    struct wl__probe_conf c;
    struct wl__probe *p;
    char err[256];
    int r;

    if (conn)
        *conn = NULL;
    if ((r = wl__probe_new(conninfo, &p, err, sizeof(err))) < 0) {
        if (res) {
            res->attempts = 0;
            res->sqlstate[0] = '\0';
            wl__copy(res->error, sizeof(res->error), err);
        }
        return r;
    }
    wl__pg_conf(&c, opts, deadline_ns);
    c.hooks.attempt_failed = warm_progress;
    c.hooks.stage = warm_stage;
    c.keep_conn = conn != NULL;
    r = wl__probe_run(p, &c, WL__IO_AUTO);
    if (res) {
        wl__probe_result(p, res);
        if (r == 0)
            res->sqlstate[0] = res->error[0] = '\0';
    }
    if (conn && r == 0)
        *conn = wl__probe_take_conn(p);
    wl__probe_free(p);
    return r;
}
