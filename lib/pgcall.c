/*
 * The libpq engine's public calls: wl_pg_ensure and wl_pg_connect, and the prepared
 * targets they are made of.
 *
 * A target is a conninfo parsed and keyed once: its slot's wl_key (the ready path is one
 * acquire load), its options copied, and a probe that holds the parsed conninfo for the
 * caller's own connections. wl_pg_ensure and wl_pg_connect open one for the call and close
 * it at the end; a program that calls them often opens one and keeps it.
 *
 * The caller's own connection (wl_pg_connect) is one connect-only run of the probe on a
 * poll(2) loop: one socket, so an io_uring would cost its set-up and give nothing. With a
 * login budget it first takes one of the slot's login tokens, so that a herd released at
 * once logs in at most that many at a time.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "internal.h"
#include "warmlock/pg.h"

#define MS                 1000000ull
#define DEFAULT_TIMEOUT_MS 30000u
/* wl_pg_connect re-verifies a stale epoch only with at least this much time left. */
#define MIN_REVERIFY_NS (50 * MS)

struct wl_pg_target {
    struct wl_segment *seg;
    struct wl_key *key;
    char *conninfo;           /* for the leader's probe; may hold a password: wiped at close */
    struct wl_pg_opts opts;   /* warm_sql and verify_sql point at the copies below */
    char *warm_sql, *verify_sql;
    struct wl_wait_opts wait; /* opts.wait with the engine's max_age default applied */
    unsigned login_budget;    /* 0: unpaced */
    char *fleet_key;          /* WL_PG_FLEET with a warm_sql: wl_pg_key(), else NULL */
    struct wl__probe *own;    /* the caller's own connections, parsed once (on first use) */
};

/* ---------------------------------------------------------------- the warm-up */

struct warm_ctx {
    const struct wl_pg_target *t;
    uint64_t deadline_ns; /* the caller's whole-call deadline */
    int want_conn;        /* wl_pg_connect: keep the leader's verified connection... */
    PGconn *kept;         /* ...here, as the caller's own */
};

/* The leader's probe; with want_conn and no warm_sql to run, its verified connection is
 * kept as the caller's own (a session warm_sql touched is never handed over). */
static int probe(struct warm_ctx *c, const struct wl_pg_opts *opts, struct wl_result *res)
{
    if (c->kept) { /* a connection kept by an earlier run of this call: superseded */
        PQfinish(c->kept);
        c->kept = NULL;
    }
    if (c->want_conn && !(opts->warm_sql && *opts->warm_sql)) {
        int r = wl__pg_probe_keep(c->t->conninfo, opts, c->deadline_ns, res, &c->kept);
        if (r == 0 && c->kept)
            wl__warm_hands_over(); /* the followers let our caller's first query go first */
        return r;
    }
    return wl__pg_probe(c->t->conninfo, opts, c->deadline_ns, res);
}

/* Fleet mode: the probe without warm_sql (it waits out an outage), then the fleet phase on
 * its verified connection, where warm_sql runs if this host leads the fleet. */
static int fleet_warm(struct warm_ctx *c, const struct wl_pg_opts *opts, struct wl_result *res,
                      int *stop)
{
    static _Atomic int norecord_logged;
    const struct wl_pg_target *t = c->t;
    struct wl_pg_opts o = *opts;
    struct wl__fleet_conf fc;
    struct wl__fleet_out out;
    PGconn *conn = NULL;
    int r, expect = 0;

    if (c->kept) {
        PQfinish(c->kept);
        c->kept = NULL;
    }
    /* The probe checks that the server is up and lets us in (verify_sql may need what
     * warm_sql makes: it runs after the fleet phase) */
    o.warm_sql = NULL;
    o.verify_sql = NULL;
    if ((r = wl__pg_probe_keep(t->conninfo, &o, c->deadline_ns, res, &conn)) < 0)
        return r;
    /* the probe verified the server; the warm-up itself is the fleet phase's */
    wl__warm_stage(WL_STAGE_AUTHENTICATED);
    memset(&fc, 0, sizeof(fc));
    fc.conninfo = t->conninfo;
    fc.key = t->fleet_key;
    fc.warm_sql = opts->warm_sql;
    fc.verify_sql = opts->verify_sql;
    fc.deadline_ns = c->deadline_ns;
    fc.attempt_timeout_ms = opts->attempt_timeout_ms;
    fc.abort_fd = -1;
    r = wl__fleet_run(&fc, conn, &out, res);
    *stop = (out.flags & WL__FLEET_DEADLINE) != 0;
    if (r == 0) {
        wl__fleet_note(t->seg, wl__key_text(t->key), &out);
        res->error[0] = res->sqlstate[0] = '\0';
    }
    /* relaxed: only "once per process" matters */
    if ((out.flags & WL__FLEET_NORECORD) &&
        atomic_compare_exchange_strong_explicit(&norecord_logged, &expect, 1,
                                                memory_order_relaxed, memory_order_relaxed))
        wl__log_info("fleet: the table warmlock_fleet cannot be created or written by this role; "
                     "hosts waiting for the fleet leader skip warm_sql, hosts that come after "
                     "it run warm_sql again (grant CREATE on a schema, or create the table)",
                     "fleet", "norecord");
    return r;
}

static int pg_warm(void *arg, struct wl_result *res)
{
    struct warm_ctx *c = arg;
    const struct wl_pg_opts *opts = &c->t->opts;
    struct wl_pg_opts o;

    if (c->t->fleet_key && !wl__warm_reverifying()) {
        int r, stop = 0;
        o = *opts;
        if (wl__warm_fail_fast())
            o.backoff.max_attempts = 1;
        r = fleet_warm(c, &o, res, &stop);
        /* the caller's own max_attempts ran out, or its deadline went on waiting for the
         * fleet leader: that is its answer */
        if (r < 0 && (opts->backoff.max_attempts || stop))
            wl__warm_stop();
        return r;
    }
    if (!wl__warm_reverifying() && !wl__warm_fail_fast()) {
        int r = probe(c, opts, res);
        /* The caller's own max_attempts ran out: that is its answer (-ECONNREFUSED). */
        if (r < 0 && opts->backoff.max_attempts)
            wl__warm_stop();
        return r;
    }
    /* A re-verification of a READY epoch runs verify_sql once (the warm-up of this epoch
     * is done); a fail-fast caller wants one attempt, not a retry loop. */
    o = *opts;
    if (wl__warm_reverifying())
        o.warm_sql = NULL;
    o.backoff.max_attempts = 1;
    return probe(c, &o, res);
}

static uint64_t call_deadline(const struct wl_pg_target *t)
{
    return wl__now_ns() + (uint64_t)(t->opts.wait.timeout_ms ? t->opts.wait.timeout_ms
                                                             : DEFAULT_TIMEOUT_MS) * MS;
}

/* The single-flight for what remains of the caller's deadline (wl_pg_connect may come
 * here more than once in a call). */
static int ensure_until(struct wl_pg_target *t, const struct wl_wait_opts *wait,
                        uint64_t deadline_ns, struct wl_result *res, PGconn **conn)
{
    struct warm_ctx ctx = {t, deadline_ns, conn != NULL, NULL};
    struct wl_wait_opts w = *wait;
    uint64_t now = wl__now_ns();
    int r;

    w.timeout_ms = deadline_ns > now ? (uint32_t)((deadline_ns - now + MS - 1) / MS) : 1;
    r = wl_key_ensure(t->key, pg_warm, &ctx, &w, res);
    if (conn && r == 0 && res->role == WL_LEADER)
        *conn = ctx.kept; /* the epoch it published was verified on this connection */
    else if (ctx.kept)
        PQfinish(ctx.kept);
    return r;
}

/* ---------------------------------------------------------------- targets */

static uint32_t max_age_of(uint32_t ms)
{
    return ms == UINT32_MAX ? 0 : ms; /* UINT32_MAX: never re-verify */
}


static void wipe_free(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

WL_EXPORT void wl_pg_target_close(struct wl_pg_target *t)
{
    if (!t)
        return;
    wl__probe_free(t->own);
    wl_key_close(t->key);
    wipe_free(t->conninfo);
    free(t->warm_sql);
    free(t->verify_sql);
    free(t->fleet_key);
    free(t);
}

/* wl_pg_target_open with the message into err (passwords masked). */
static int target_open(struct wl_segment *seg, const char *conninfo,
                       const struct wl_pg_opts *opts, int connects, struct wl_pg_target **out,
                       char *err, size_t errlen)
{
    struct wl_pg_target *t;
    PQconninfoOption *parsed;
    char key[WL_PG_KEY_MAX];
    int r, oom = 0;

    *out = NULL;
    if (!seg) {
        wl__copy(err, errlen, "no segment");
        return -EINVAL;
    }
    if ((r = wl__pg_slot_key_parsed(seg, conninfo, key, sizeof(key), &parsed)) < 0) {
        wl__copy(err, errlen, key);
        return r;
    }
    if (!(t = calloc(1, sizeof(*t)))) {
        if (parsed)
            PQconninfoFree(parsed);
        wl__copy(err, errlen, "out of memory");
        return -ENOMEM;
    }
    /* the caller's own connections reuse the key's parse (else they parse on first use) */
    if (parsed && connects && wl__probe_new_parsed(parsed, &t->own, err, errlen) < 0)
        t->own = NULL;
    else if (parsed && !connects)
        PQconninfoFree(parsed);
    t->seg = seg;
    if (opts)
        t->opts = *opts;
    t->conninfo = wl__dup_or_null(conninfo ? conninfo : "", &oom);
    t->warm_sql = wl__dup_or_null(t->opts.warm_sql, &oom);
    t->verify_sql = wl__dup_or_null(t->opts.verify_sql, &oom);
    t->opts.warm_sql = t->warm_sql;
    t->opts.verify_sql = t->verify_sql;
    if (oom) {
        wl_pg_target_close(t);
        wl__copy(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->wait = t->opts.wait;
    t->wait.max_age_ms = t->wait.max_age_ms ? max_age_of(t->wait.max_age_ms) : WL_PG_MAX_AGE_MS;
    t->login_budget = t->opts.login_budget == UINT32_MAX ? 0
                      : t->opts.login_budget            ? t->opts.login_budget
                                                        : WL_PG_LOGIN_BUDGET;
    if ((t->opts.flags & WL_PG_FLEET) && t->warm_sql && *t->warm_sql) {
        char fk[WL_PG_KEY_MAX];
        if ((r = wl_pg_key(conninfo, fk, sizeof(fk))) < 0) {
            wl__copy(err, errlen, fk);
            wl_pg_target_close(t);
            return r;
        }
        if (!(t->fleet_key = strdup(fk))) {
            wl_pg_target_close(t);
            wl__copy(err, errlen, "out of memory");
            return -ENOMEM;
        }
    }
    if ((r = wl_key_open(seg, key, &t->key)) < 0) {
        if (r == -ENOSPC)
            wl__fmt(err, errlen, "no free slot for %s: recreate the segment with more slots "
                    "or use fewer targets", key);
        else
            wl__fmt(err, errlen, "cannot prepare %s: %s", key, strerror(-r));
        wl_pg_target_close(t);
        return r;
    }
    *out = t;
    return 0;
}

WL_EXPORT int wl_pg_target_open(struct wl_segment *seg, const char *conninfo,
                                const struct wl_pg_opts *opts, struct wl_pg_target **out)
{
    char err[256];
    int r;

    if (!out)
        return wl__set_error(-EINVAL, "wl_pg_target_open: out is NULL");
    if ((r = target_open(seg, conninfo, opts, 1, out, err, sizeof(err))) < 0)
        wl__set_error(r, "%s", err);
    return r;
}

WL_EXPORT const char *wl_pg_target_key(const struct wl_pg_target *t)
{
    return t ? wl__key_text(t->key) : NULL;
}

WL_EXPORT int wl_pg_target_invalidate(struct wl_pg_target *t, uint64_t epoch)
{
    return t ? wl_key_invalidate(t->key, epoch) : -EINVAL;
}

/* Not the ready path: wait, lead or re-verify. */
__attribute__((noinline)) static int target_ensure_slow(struct wl_pg_target *t,
                                                        struct wl_result *res)
{
    struct wl_result scratch;

    if (!res)
        res = &scratch;
    memset(res, 0, sizeof(*res));
    return ensure_until(t, &t->wait, call_deadline(t), res, NULL);
}

WL_EXPORT int wl_pg_target_ensure(struct wl_pg_target *t, struct wl_result *res)
{
    if (!t)
        return -EINVAL;
    if (wl__key_ready(t->key, t->wait.max_age_ms, res))
        return 0;
    return target_ensure_slow(t, res);
}

WL_EXPORT int wl_pg_target_ready(struct wl_pg_target *t, uint32_t max_age_ms,
                                 struct wl_result *res)
{
    if (!t)
        return 0;
    return wl__key_ready(t->key, max_age_ms ? max_age_of(max_age_ms) : t->wait.max_age_ms, res);
}

WL_EXPORT int wl_pg_target_ensure_opts(struct wl_pg_target *t, const struct wl_wait_opts *wait,
                                       struct wl_result *res)
{
    struct wl_result scratch;
    struct wl_wait_opts w;
    uint32_t timeout_ms;

    if (!t)
        return -EINVAL;
    if (!wait)
        return wl_pg_target_ensure(t, res);
    w = t->wait;
    if (wait->max_age_ms)
        w.max_age_ms = max_age_of(wait->max_age_ms);
    if (wait->fail_ttl_ms)
        w.fail_ttl_ms = wait->fail_ttl_ms;
    if (wait->flags)
        w.flags = wait->flags;
    if (wl__key_ready(t->key, w.max_age_ms, res))
        return 0;
    if (!res)
        res = &scratch;
    memset(res, 0, sizeof(*res));
    timeout_ms = wait->timeout_ms      ? wait->timeout_ms
                 : t->wait.timeout_ms ? t->wait.timeout_ms
                                      : DEFAULT_TIMEOUT_MS;
    return ensure_until(t, &w, wl__now_ns() + (uint64_t)timeout_ms * MS, res, NULL);
}

/* ---------------------------------------------------------------- own connections */

/* wl_pg_connect's deadline passed while the server refused our own connection as full:
 * name the deadline and the 53300, not the last (cut short) attempt's few ms. */
static PGconn *connect_deadline(struct wl_result *res, uint64_t t0, unsigned own,
                                const char *full)
{
    const char *l = strstr(res->error, "last error: ");
    char last[120];
    wl__copy(last, sizeof(last), l ? l + 12 : res->error);
    wl__fmt(res->error, sizeof(res->error), "deadline of %llu ms passed while the server "
            "refused %u connection attempt%s of ours as full (53300: %.90s); last: %s",
            (unsigned long long)((wl__now_ns() - t0 + MS / 2) / MS), own, own == 1 ? "" : "s",
            full, last);
    wl__copy(res->sqlstate, sizeof(res->sqlstate), "53300");
    return NULL;
}

/* One attempt at the caller's own connection, within the login budget: 0 with *conn, or
 * the probe's -errno with res's error, sqlstate and attempts. */
static int own_attempt(struct wl_pg_target *t, uint64_t deadline, PGconn **conn, int *slow,
                       struct wl_result *res)
{
    struct wl__probe_conf c;
    uint64_t now = wl__now_ns();
    int r, token = -1;

    *conn = NULL;
    *slow = 0;
    if (!t->own) {
        char err[256];
        if ((r = wl__probe_new(t->conninfo, &t->own, err, sizeof(err))) < 0) {
            wl__copy(res->error, sizeof(res->error), err);
            return r;
        }
    }
    if (t->login_budget)
        token = wl__key_login_take(t->key, t->login_budget, deadline);
    wl__pg_conf(&c, &t->opts, deadline);
    c.connect_only = 1;
    c.backoff.max_attempts = 1;
    /* The server was just verified, so a slow login is a queue (a herd connecting at
     * once), not a dead server: an attempt timeout would send us to the back of that
     * queue again and again. Our own connection may take what is left of the deadline. */
    now = wl__now_ns();
    c.attempt_timeout_ms = deadline > now + MS ? (uint32_t)((deadline - now) / MS) : 1;
    r = wl__probe_run(t->own, &c, WL__IO_POLL);
    wl__key_login_give(t->key, token);
    if (r == 0) {
        *conn = wl__probe_take_conn(t->own);
        return 0;
    }
    wl__probe_result(t->own, res);
    *slow = wl__probe_timed_out(t->own);
    return r;
}

WL_EXPORT PGconn *wl_pg_target_connect(struct wl_pg_target *t, struct wl_result *res)
{
    struct wl_result scratch;
    uint64_t t0 = wl__now_ns(), deadline;
    char full[200] = ""; /* the server's last "too many connections" refusal */
    unsigned own = 0;    /* connection attempts of our own */
    int r;

    if (!res)
        res = &scratch;
    memset(res, 0, sizeof(*res));
    if (!t) {
        wl__copy(res->error, sizeof(res->error), "no target");
        return NULL;
    }
    deadline = call_deadline(t);
    for (;;) {
        struct wl_result mine;
        PGconn *conn;
        uint64_t now;
        int slow;

        conn = NULL;
        if (!wl__key_ready(t->key, t->wait.max_age_ms, res) &&
            (r = ensure_until(t, &t->wait, deadline, res, &conn)) < 0)
            return NULL;
        if (conn) { /* we led: the connection that verified the epoch is ours */
            PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
            res->waited_ns = wl__now_ns() - t0;
            return conn;
        }
        memset(&mine, 0, sizeof(mine));
        r = own_attempt(t, deadline, &conn, &slow, &mine);
        if (r == 0) {
            PQsetErrorVerbosity(conn, PQERRORS_DEFAULT);
            res->waited_ns = wl__now_ns() - t0;
            return conn;
        }
        wl__copy(res->sqlstate, sizeof(res->sqlstate), mine.sqlstate);
        wl__copy(res->error, sizeof(res->error), mine.error);
        own += mine.attempts;
        now = wl__now_ns();
        /* The probe's give_up wraps a retryable last error into -ECONNREFUSED/-ETIMEDOUT
         * (max_attempts is 1): the epoch the leader verified is gone for us too. */
        if (r != -ECONNREFUSED && r != -ETIMEDOUT)
            return NULL; /* class 28, 3D000, bad conninfo...: as is */
        if (!mine.attempts) /* our deadline was spent before we tried: nothing learnt */
            return full[0] ? connect_deadline(res, t0, own, full) : NULL;
        if (slow) {
            /* Our attempt ran out of time: the server is slow (overloaded), not gone.
             * Invalidating would send one more prober at it; just try again. */
            if (now + MIN_REVERIFY_NS >= deadline)
                return full[0] ? connect_deadline(res, t0, own, full) : NULL;
            continue;
        }
        if (!strncmp(res->sqlstate, "53", 2)) {
            /* Class 53 (53300 too many connections): a full server is not a stale one.
             * Keep the epoch (a re-verification would need one more connection of the
             * full server) and try our own connection again after a short pause, jittered:
             * every process of the herd retries on its own. */
            uint64_t pause = 20 * MS + (now & 0xfffff) % (30 * MS);
            const char *l = strstr(res->error, "FATAL:");
            if (!l && (l = strstr(res->error, "last error: ")))
                l += 12;
            wl__copy(full, sizeof(full), l ? l : res->error);
            if (now + pause >= deadline)
                return connect_deadline(res, t0, own, full);
            wl__backoff_pause(pause);
            continue;
        }
        wl_key_invalidate(t->key, res->epoch);
        /* Too little time left for a re-verification: do not lead one that can only fail
         * (its failure would be published to everyone for fail_ttl_ms). */
        if (now + MIN_REVERIFY_NS >= deadline)
            return NULL;
    }
}

/* ---------------------------------------------------------------- one-call forms */

WL_EXPORT int wl_pg_ensure(struct wl_segment *seg, const char *conninfo,
                           const struct wl_pg_opts *opts, struct wl_result *res)
{
    struct wl_result scratch;
    struct wl_pg_target *t;
    int r;

    if (!res)
        res = &scratch;
    memset(res, 0, sizeof(*res));
    if ((r = target_open(seg, conninfo, opts, 0, &t, res->error, sizeof(res->error))) < 0)
        return r;
    r = wl_pg_target_ensure(t, res);
    wl_pg_target_close(t);
    return r;
}

WL_EXPORT PGconn *wl_pg_connect(struct wl_segment *seg, const char *conninfo,
                                const struct wl_pg_opts *opts, struct wl_result *res)
{
    struct wl_result scratch;
    struct wl_pg_target *t;
    PGconn *conn;

    if (!res)
        res = &scratch;
    memset(res, 0, sizeof(*res));
    if (target_open(seg, conninfo, opts, 1, &t, res->error, sizeof(res->error)) < 0)
        return NULL;
    conn = wl_pg_target_connect(t, res);
    wl_pg_target_close(t);
    return conn;
}
