/*
 * warmlock.node: the N-API addon under bindings/node/index.js.
 *
 * Threads and ownership
 * - Segment handles: one per segment name per process (a registry under a mutex, shared by
 *   every Node environment of the process, main thread and workers), never closed.
 * - A target is one (segment, conninfo, warm_sql). Its prepared key (wl_pg_target, opened
 *   on the JS thread: the conninfo parsed and keyed once, the slot allocated) belongs to
 *   that thread, which uses only its ready path (wl_pg_target_ready: one atomic load, no
 *   syscall, never waiting or leading), no thread hop. The calls that were not ready join
 *   the target's queue, served by the
 *   target's waiter threads: one resident thread, which takes everything queued and runs
 *   one wl_pg_ensure for all of it (with the earliest deadline among the calls and
 *   WL_FAIL_FAST if any asked for it), and hands the outcomes back in one batch through a
 *   napi_threadsafe_function. A call that no call in flight can answer in time (a shorter
 *   deadline, or fail-fast behind a call that is not) gets one more thread, up to
 *   MAX_WAITERS per target; those leave when the queue is empty. So waits never block the
 *   event loop and never take a thread of libuv's pool, a hundred concurrent calls on a
 *   target cost one thread, and threads are bounded (MAX_WAITERS x MAX_TARGETS, in practice
 *   one per target). The waiters call wl_pg_ensure rather than the JS thread's prepared
 *   target, which is one thread's at a time (both key the same slot). Checks (pgCheck) are
 *   queued and run by the waiters too.
 * - A target's memory is shared by its JS handle (an external), its waiter threads and its
 *   threadsafe function; the last to let go frees it.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <node_api.h>

#include <warmlock.h>
#include <warmlock/pg.h>

#include "../../coordinator/utf8.h"

#define MAX_TARGETS 64 /* distinct targets per process */
#define MAX_WAITERS 4  /* waiter threads per target */

/* ---------------------------------------------------------------- small things */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void copy_str(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    if (n >= len)
        n = len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Wipe and free a string that may hold a password. */
static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* "ETIMEDOUT" for -ETIMEDOUT. */
static const char *code_name(int code)
{
    const char *n = strerrorname_np(code < 0 ? -code : code);
    return n ? n : "EUNKNOWN";
}

#define CHECK(env, call)                                                                           \
    do {                                                                                           \
        if ((call) != napi_ok)                                                                     \
            return throw_last(env, #call);                                                         \
    } while (0)

/* Throw what the last failed napi call said (unless an exception is already pending). */
static napi_value throw_last(napi_env env, const char *what)
{
    const napi_extended_error_info *info = NULL;
    bool pending = false;
    char msg[300];

    if (napi_is_exception_pending(env, &pending) == napi_ok && pending)
        return NULL;
    napi_get_last_error_info(env, &info);
    snprintf(msg, sizeof(msg), "warmlock addon: %s: %s", what,
             info && info->error_message ? info->error_message : "failed");
    napi_throw_error(env, NULL, msg);
    return NULL;
}

/* An Error with .code (the errno name), .errno (negative), .sqlstate (null if none). */
static napi_value make_error(napi_env env, int code, const char *message, const char *sqlstate)
{
    napi_value msg, err, v, ncode;

    if (napi_create_string_utf8(env, message && *message ? message : wl_strerror(code),
                                NAPI_AUTO_LENGTH, &msg) != napi_ok ||
        napi_create_string_utf8(env, code_name(code), NAPI_AUTO_LENGTH, &ncode) != napi_ok ||
        napi_create_error(env, ncode, msg, &err) != napi_ok)
        return NULL;
    napi_set_named_property(env, err, "code", ncode);
    if (napi_create_int32(env, code < 0 ? code : -code, &v) == napi_ok)
        napi_set_named_property(env, err, "errno", v);
    if (sqlstate && *sqlstate)
        napi_create_string_utf8(env, sqlstate, NAPI_AUTO_LENGTH, &v);
    else
        napi_get_null(env, &v);
    napi_set_named_property(env, err, "sqlstate", v);
    return err;
}

static napi_value throw_code(napi_env env, int code, const char *message)
{
    napi_value err = make_error(env, code, message, NULL);
    if (err)
        napi_throw(env, err);
    return NULL;
}

/* A string argument into a malloc'd buffer (NULL for undefined/null when optional). */
static int get_string(napi_env env, napi_value v, int optional, char **out)
{
    napi_valuetype t;
    size_t n = 0;

    *out = NULL;
    if (napi_typeof(env, v, &t) != napi_ok)
        return -1;
    if (optional && (t == napi_undefined || t == napi_null))
        return 0;
    if (t != napi_string) {
        napi_throw_type_error(env, NULL, "warmlock: expected a string");
        return -1;
    }
    if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok || !(*out = malloc(n + 1)) ||
        napi_get_value_string_utf8(env, v, *out, n + 1, &n) != napi_ok) {
        free(*out);
        *out = NULL;
        throw_code(env, -ENOMEM, "warmlock: out of memory");
        return -1;
    }
    if (strlen(*out) != n) {
        free_secret(*out);
        *out = NULL;
        throw_code(env, -EINVAL, "warmlock: a string argument holds a NUL character");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- segments */

struct seg_ent {
    struct seg_ent *next;
    char name[WL_NAME_MAX + 1];
    struct wl_segment *seg;
};

static pthread_mutex_t segs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct seg_ent *segs;

/* The process's handle of segment `shm` (NULL: the default name), opened once. `existing`:
 * never create it (a read-only user), and make sure the cached handle's name still names
 * its object (else open it anew: status shows what `warmlock status` shows). 0 or -errno,
 * with the reason in err. */
static int get_segment(const char *shm, int existing, struct wl_segment **out, char *err,
                       size_t errlen)
{
    char name[WL_NAME_MAX + 1];
    struct wl_open_opts o = {0};
    struct seg_ent *e;
    int r;

    if (shm)
        copy_str(name, sizeof(name), shm);
    else if ((r = wl_default_name(name, sizeof(name))) < 0) {
        copy_str(err, errlen, "cannot make the default segment name");
        return r;
    }
    pthread_mutex_lock(&segs_lock);
    for (e = segs; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            break;
    if (e && (!existing || wl_check(e->seg) == 0)) {
        *out = e->seg;
        pthread_mutex_unlock(&segs_lock);
        return 0;
    }
    o.flags = existing ? WL_OPEN_EXISTING : 0;
    if ((r = wl_open(name, &o, out)) < 0) {
        copy_str(err, errlen, wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
        pthread_mutex_unlock(&segs_lock);
        return r;
    }
    if (e) {
        /* The name now names another object. The old handle stays open: targets opened
         * on it keep using it. */
        e->seg = *out;
    } else if ((e = calloc(1, sizeof(*e)))) {
        copy_str(e->name, sizeof(e->name), name);
        e->seg = *out;
        e->next = segs;
        segs = e;
    }
    pthread_mutex_unlock(&segs_lock);
    return 0;
}

/* ---------------------------------------------------------------- targets */

struct req {
    struct req *next;
    napi_deferred deferred;
    char *check_sql; /* a check (pgCheck): this SQL on the library's own connection */
    uint64_t deadline_ns;
    uint32_t max_age_ms;
    int fail_fast;
    /* the outcome, filled by the waiter */
    int code;
    int leader;
    uint64_t epoch;
    char sqlstate[6];
    char error[256];
};

struct target {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct req *head, **tail; /* queued for the waiter */
    int stop;                 /* the waiters are to exit */
    int tsfn_dead;            /* the threadsafe function is finalized: never touch it */
    int idle;                 /* the resident waiter sleeps on cv */
    struct {
        int used;             /* a thread has this index */
        int active;           /* it is in a call: */
        int fail_fast;        /* made with WL_FAIL_FAST */
        uint64_t deadline_ns; /* that returns by then */
    } calls[MAX_WAITERS];
    atomic_int refs; /* handle, waiter threads, threadsafe function */

    napi_threadsafe_function tsfn;
    unsigned pending; /* promises not settled yet (JS thread only) */

    struct wl_segment *seg;
    struct wl_pg_target *prepared; /* the JS thread's (ready path) */
    uint32_t max_age_ms;           /* the engine's default re-verification age */
    char *conninfo;
    char *warm_sql;
    uint32_t flags; /* wl_pg_opts.flags: WL_PG_FLEET */
    char key[WL_PG_KEY_MAX];
};

static atomic_int live_targets; /* bounded by MAX_TARGETS */

static void target_unref(struct target *t)
{
    /* acq_rel: the last one out sees every other owner's writes before freeing */
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (t->prepared)
        wl_pg_target_close(t->prepared);
    free_secret(t->conninfo);
    free(t->warm_sql);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
    /* relaxed: a counter with no data behind it */
    atomic_fetch_sub_explicit(&live_targets, 1, memory_order_relaxed);
}

static void free_reqs(struct req *r)
{
    while (r) {
        struct req *next = r->next;
        free(r->check_sql);
        free(r);
        r = next;
    }
}

static int transient(int code)
{
    return code == -ETIMEDOUT || code == -ECONNREFUSED || code == -EAGAIN;
}

/* Hand settled requests to the JS thread (or drop them when it is gone). */
static void deliver(struct target *t, struct req *done)
{
    int sent = 0;

    if (!done)
        return;
    pthread_mutex_lock(&t->mu);
    if (!t->tsfn_dead)
        sent = napi_call_threadsafe_function(t->tsfn, done, napi_tsfn_nonblocking) == napi_ok;
    pthread_mutex_unlock(&t->mu);
    if (!sent)
        free_reqs(done);
}

/* A check: the library's own connection (wl_pg_connect, fail-fast: during an outage it
 * answers at once; a connection that fails where the slot said READY ends the epoch), the
 * request's SQL on it, closed. The library's codes (-ECONNREFUSED when our connection
 * failed after READY), or -EIO (with the SQLSTATE) when the SQL fails, -ECONNRESET when the
 * connection breaks under it. */
static void do_check(const struct target *t, struct req *r)
{
    struct wl_pg_opts o = {0};
    struct wl_result res;
    uint64_t now = now_ns(), left_ms;
    PGconn *c;
    PGresult *q;

    if (now >= r->deadline_ns) {
        r->code = -ETIMEDOUT;
        copy_str(r->error, sizeof(r->error), "check: the deadline passed before it could run");
        return;
    }
    left_ms = (r->deadline_ns - now + 999999u) / 1000000u;
    o.wait.timeout_ms = left_ms > UINT32_MAX ? UINT32_MAX : (uint32_t)left_ms;
    o.wait.flags = WL_FAIL_FAST;
    o.warm_sql = t->warm_sql;
    o.flags = t->flags;
    memset(&res, 0, sizeof(res));
    /* wl_pg_connect says no code: the ensure before it gives the single-flight's, and a
     * failure after it is our own connection's */
    if ((r->code = wl_pg_ensure(t->seg, t->conninfo, &o, &res)) < 0 ||
        !(c = wl_pg_connect(t->seg, t->conninfo, &o, &res))) {
        if (!r->code)
            r->code = now_ns() >= r->deadline_ns ? -ETIMEDOUT : -ECONNREFUSED;
        copy_str(r->error, sizeof(r->error), res.error);
        copy_str(r->sqlstate, sizeof(r->sqlstate), res.sqlstate);
        return;
    }
    r->epoch = res.epoch;
    q = PQexec(c, r->check_sql);
    if (PQresultStatus(q) != PGRES_TUPLES_OK && PQresultStatus(q) != PGRES_COMMAND_OK) {
        const char *st = PQresultErrorField(q, PG_DIAG_SQLSTATE);
        r->code = PQstatus(c) == CONNECTION_OK ? -EIO : -ECONNRESET;
        copy_str(r->error, sizeof(r->error), PQerrorMessage(c));
        r->error[strcspn(r->error, "\n")] = '\0';
        copy_str(r->sqlstate, sizeof(r->sqlstate), st ? st : "");
    }
    PQclear(q);
    PQfinish(c);
}

struct waiter_arg {
    struct target *t;
    unsigned idx; /* its calls[] entry; 0 is the resident waiter */
};

/*
 * A waiter: takes everything queued, runs one wl_pg_ensure for it, settles what that
 * outcome settles, and goes on with the rest (plus what was queued meanwhile).
 * - READY: every request of the call is resolved; the leader's role goes to the oldest.
 * - A permanent failure: every request of the call is rejected with it.
 * - A transient one (the call's deadline, or fail-fast during an outage): it settles the
 *   requests whose deadline has passed, and the fail-fast ones when the call was made
 *   fail-fast; the others wait on in the next call.
 * The resident waiter (idx 0) sleeps when there is nothing to do; the others leave.
 */
static void *waiter_main(void *arg)
{
    struct waiter_arg wa = *(struct waiter_arg *)arg;
    struct target *t = wa.t;
    struct req *batch = NULL, **btail = &batch;

    free(arg);
    pthread_mutex_lock(&t->mu);
    for (;;) {
        t->calls[wa.idx].active = 0;
        while (!t->head && !batch && !t->stop) {
            if (wa.idx != 0)
                goto leave;
            t->idle = 1;
            pthread_cond_wait(&t->cv, &t->mu);
            t->idle = 0;
        }
        if (t->stop)
            break;
        if (t->head) {
            *btail = t->head;
            btail = t->tail;
            t->head = NULL;
            t->tail = &t->head;
        }

        struct wl_pg_opts o = {0};
        struct wl_result res;
        struct req *r, **pp, *done = NULL, **dtail = &done, *checks = NULL, **ctail = &checks;
        uint64_t start = now_ns(), earliest = UINT64_MAX, end, left_ms;
        int ff = 0, first = 1, code = 0;

        for (pp = &batch; (r = *pp);) {
            if (!r->check_sql) {
                pp = &r->next;
                continue;
            }
            *pp = r->next;
            r->next = NULL;
            *ctail = r;
            ctail = &r->next;
        }
        for (r = batch; r; r = r->next) {
            if (r->deadline_ns < earliest)
                earliest = r->deadline_ns;
            ff |= r->fail_fast;
            if (r->max_age_ms && (!o.wait.max_age_ms || r->max_age_ms < o.wait.max_age_ms))
                o.wait.max_age_ms = r->max_age_ms;
        }
        /* in flight until the last check's deadline or the ensure's, whichever is later */
        uint64_t until = batch ? earliest : 0;
        for (r = checks; r; r = r->next)
            if (r->deadline_ns > until)
                until = r->deadline_ns;
        t->calls[wa.idx].active = 1;
        t->calls[wa.idx].fail_fast = ff && !checks;
        t->calls[wa.idx].deadline_ns = until;
        pthread_mutex_unlock(&t->mu);

        /* Checks first (each bounded by its own deadline), so that none waits out a long
         * wait queued beside it. */
        for (r = checks; r; r = r->next)
            do_check(t, r);
        start = now_ns();
        left_ms = earliest > start ? (earliest - start + 999999u) / 1000000u : 1;
        o.wait.timeout_ms = left_ms > UINT32_MAX ? UINT32_MAX : left_ms ? (uint32_t)left_ms : 1;
        o.wait.flags = ff ? WL_FAIL_FAST : 0;
        o.warm_sql = t->warm_sql;
        o.flags = t->flags;
        memset(&res, 0, sizeof(res));
        if (batch)
            code = wl_pg_ensure(t->seg, t->conninfo, &o, &res);
        end = now_ns();

        for (pp = &batch; (r = *pp);) {
            int settle;
            if (code == 0 || !transient(code))
                settle = 1;
            else
                settle = (ff && r->fail_fast) || end + 1000000u >= r->deadline_ns;
            if (!settle) {
                pp = &r->next;
                continue;
            }
            *pp = r->next;
            r->next = NULL;
            r->code = code;
            r->epoch = res.epoch;
            r->leader = code == 0 && first && res.role == WL_LEADER;
            first = 0;
            copy_str(r->sqlstate, sizeof(r->sqlstate), res.sqlstate);
            copy_str(r->error, sizeof(r->error), code ? res.error : "");
            *dtail = r;
            dtail = &r->next;
        }
        btail = &batch;
        while (*btail)
            btail = &(*btail)->next;
        *dtail = checks;
        deliver(t, done);
        /* A transient return that settled nobody before any deadline: do not spin. */
        if (!done && end - start < 1000000u) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        pthread_mutex_lock(&t->mu);
    }
    /* Stopping: the JS side is gone or going; nothing can be settled any more. */
    free_reqs(t->head);
    t->head = NULL;
    t->tail = &t->head;
leave:
    t->calls[wa.idx].used = 0;
    t->calls[wa.idx].active = 0;
    if (!t->tsfn_dead)
        napi_release_threadsafe_function(t->tsfn, napi_tsfn_release);
    pthread_mutex_unlock(&t->mu);
    free_reqs(batch);
    target_unref(t);
    return NULL;
}

/* Start waiter idx (t->mu held, or t not shared yet): it holds a reference to t and, but
 * for the resident one (counted at the tsfn's creation), to the tsfn. 0 or -errno. */
static int start_waiter(struct target *t, unsigned idx)
{
    struct waiter_arg *wa = malloc(sizeof(*wa));
    pthread_t thr;
    int r;

    if (!wa)
        return -ENOMEM;
    wa->t = t;
    wa->idx = idx;
    if (idx && napi_acquire_threadsafe_function(t->tsfn) != napi_ok) {
        free(wa);
        return -ECANCELED;
    }
    /* relaxed: t is handed to the thread by pthread_create, which synchronises */
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    t->calls[idx].used = 1;
    t->calls[idx].active = 0;
    if ((r = pthread_create(&thr, NULL, waiter_main, wa)) != 0) {
        t->calls[idx].used = 0;
        atomic_fetch_sub_explicit(&t->refs, 1, memory_order_relaxed);
        if (idx)
            napi_release_threadsafe_function(t->tsfn, napi_tsfn_release);
        free(wa);
        return -r;
    }
    pthread_detach(thr);
    return 0;
}

/* Can no waiter answer a request with this deadline and fail-fast choice in time (t->mu
 * held)? A call in flight answers it if it returns by then and is fail-fast when it is. */
static int needs_waiter(const struct target *t, uint64_t deadline_ns, int fail_fast)
{
    unsigned i;

    if (t->idle)
        return 0;
    for (i = 0; i < MAX_WAITERS; i++)
        if (t->calls[i].used && (!t->calls[i].active || /* between calls: it takes the queue next */
                                 (t->calls[i].deadline_ns <= deadline_ns + 2000000u &&
                                  (t->calls[i].fail_fast || !fail_fast))))
            return 0;
    return 1;
}

static napi_value role_string(napi_env env, int leader)
{
    napi_value v;
    if (napi_create_string_latin1(env, leader ? "leader" : "follower", NAPI_AUTO_LENGTH, &v) !=
        napi_ok)
        return NULL;
    return v;
}

static napi_value ready_object(napi_env env, uint64_t epoch, int leader)
{
    napi_value o, e, role;
    if (napi_create_object(env, &o) != napi_ok ||
        napi_create_double(env, (double)epoch, &e) != napi_ok ||
        !(role = role_string(env, leader)) ||
        napi_set_named_property(env, o, "epoch", e) != napi_ok ||
        napi_set_named_property(env, o, "role", role) != napi_ok)
        return NULL;
    return o;
}

/* On the JS thread: settle a batch from the waiter. env is NULL at teardown. */
static void call_js(napi_env env, napi_value js_cb, void *context, void *data)
{
    struct target *t = context;
    struct req *r = data;

    (void)js_cb;
    while (r) {
        struct req *next = r->next;
        if (env) {
            napi_handle_scope scope;
            napi_value v;
            napi_open_handle_scope(env, &scope);
            if (r->code == 0 && r->check_sql && napi_get_undefined(env, &v) == napi_ok)
                napi_resolve_deferred(env, r->deferred, v);
            else if (r->code == 0 && (v = ready_object(env, r->epoch, r->leader)))
                napi_resolve_deferred(env, r->deferred, v);
            else if ((v = make_error(env, r->code ? r->code : -ENOMEM, r->error, r->sqlstate)))
                napi_reject_deferred(env, r->deferred, v);
            napi_close_handle_scope(env, scope);
            if (t->pending && --t->pending == 0)
                napi_unref_threadsafe_function(env, t->tsfn);
        }
        free(r->check_sql);
        free(r);
        r = next;
    }
}

/* On the JS thread, once: the waiter released it, or the environment is torn down. */
static void tsfn_finalize(napi_env env, void *data, void *hint)
{
    struct target *t = data;

    (void)env, (void)hint;
    pthread_mutex_lock(&t->mu);
    t->tsfn_dead = 1;
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    target_unref(t);
}

/* The handle was collected (or the environment is torn down): the waiter stops once its
 * current call returns. */
static void handle_finalize(napi_env env, void *data, void *hint)
{
    struct target *t = data;

    (void)env, (void)hint;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    target_unref(t);
}

static struct target *get_target(napi_env env, napi_value v)
{
    void *p = NULL;
    napi_valuetype ty;
    if (napi_typeof(env, v, &ty) != napi_ok || ty != napi_external ||
        napi_get_value_external(env, v, &p) != napi_ok || !p) {
        napi_throw_type_error(env, NULL, "warmlock: not a target handle");
        return NULL;
    }
    return p;
}

static int get_u32(napi_env env, napi_value v, uint32_t *out)
{
    napi_valuetype ty;
    double d;
    if (napi_typeof(env, v, &ty) != napi_ok)
        return -1;
    if (ty == napi_undefined || ty == napi_null) {
        *out = 0;
        return 0;
    }
    if (ty != napi_number || napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0)) {
        napi_throw_range_error(env, NULL, "warmlock: expected a number >= 0");
        return -1;
    }
    *out = d > 4294967295.0 ? UINT32_MAX : (uint32_t)d;
    return 0;
}

/* open(shm, conninfo, warmSql) -> handle. Parses and keys the conninfo (-EINVAL: libpq's
 * message, passwords masked), opens the segment if this process has not yet, and starts
 * the target's waiter thread. */
static napi_value js_open(napi_env env, napi_callback_info info)
{
    size_t argc = 4;
    napi_value argv[4], handle, name;
    char *shm = NULL, err[256] = "";
    struct target *t;
    struct wl_pg_opts o = {0};
    int r;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 3)
        return throw_code(env, -EINVAL, "warmlock: open(shm, conninfo, warmSql)");
    if (!(t = calloc(1, sizeof(*t))))
        return throw_code(env, -ENOMEM, "warmlock: out of memory");
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    t->tail = &t->head;
    atomic_init(&t->refs, 1);
    /* relaxed: a counter with no data behind it */
    atomic_fetch_add_explicit(&live_targets, 1, memory_order_relaxed);
    if (get_string(env, argv[0], 1, &shm) < 0 || get_string(env, argv[1], 0, &t->conninfo) < 0 ||
        get_string(env, argv[2], 1, &t->warm_sql) < 0)
        goto fail;
    if (argc >= 4) { /* fleet (a boolean) */
        bool fleet = false;
        if (napi_get_value_bool(env, argv[3], &fleet) == napi_ok && fleet)
            t->flags = WL_PG_FLEET;
    }
    if (atomic_load_explicit(&live_targets, memory_order_relaxed) > MAX_TARGETS) {
        throw_code(env, -EMFILE, "warmlock: too many distinct targets in this process (64)");
        goto fail;
    }
    if ((r = get_segment(shm, 0, &t->seg, err, sizeof(err))) < 0) {
        throw_code(env, r, err);
        goto fail;
    }
    o.warm_sql = t->warm_sql;
    o.flags = t->flags;
    if ((r = wl_pg_target_open(t->seg, t->conninfo, &o, &t->prepared)) < 0) {
        throw_code(env, r, wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
        goto fail;
    }
    copy_str(t->key, sizeof(t->key), wl_pg_target_key(t->prepared));
    t->max_age_ms = WL_PG_MAX_AGE_MS;
    free(shm);
    shm = NULL;

    if (napi_create_string_latin1(env, "warmlock.pgEnsure", NAPI_AUTO_LENGTH, &name) != napi_ok ||
        napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, t, tsfn_finalize, t, call_js,
                                        &t->tsfn) != napi_ok) {
        throw_last(env, "napi_create_threadsafe_function");
        goto fail;
    }
    atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed); /* the tsfn's */
    napi_unref_threadsafe_function(env, t->tsfn);                 /* idle: keep nothing alive */
    if ((r = start_waiter(t, 0)) < 0) {
        /* the tsfn's finalizer drops its reference */
        napi_release_threadsafe_function(t->tsfn, napi_tsfn_abort);
        target_unref(t);
        return throw_code(env, r, "warmlock: cannot start a waiter thread");
    }
    if (napi_create_external(env, t, handle_finalize, NULL, &handle) != napi_ok) {
        handle_finalize(env, t, NULL);
        return throw_last(env, "napi_create_external");
    }
    return handle;
fail:
    free(shm);
    target_unref(t);
    return NULL;
}

/* Is the target READY, verified within max_age_ms (0: the engine's default)? Never
 * blocks, no syscall: the prepared target's ready path (the JS thread's own target). */
static int peek_ready(struct target *t, uint32_t max_age_ms, uint64_t *epoch)
{
    struct wl_result res;

    if (!t->prepared || !wl_pg_target_ready(t->prepared, max_age_ms, &res))
        return 0;
    *epoch = res.epoch;
    return 1;
}

/* ready(handle[, maxAgeMs]) -> the epoch when the target is READY now (verified within
 * maxAgeMs, default the engine's), else -1. The ready path: on the JS thread, no hop. */
static napi_value js_ready(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], v;
    struct target *t;
    uint32_t max_age_ms = 0;
    uint64_t epoch;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1)
        return throw_code(env, -EINVAL, "warmlock: ready(handle[, maxAgeMs])");
    if (!(t = get_target(env, argv[0])) || (argc > 1 && get_u32(env, argv[1], &max_age_ms) < 0))
        return NULL;
    CHECK(env,
          napi_create_double(env, peek_ready(t, max_age_ms, &epoch) ? (double)epoch : -1.0, &v));
    return v;
}

/* wait(handle, timeoutMs, failFast, maxAgeMs[, checkSql]) -> a Promise settled by the
 * target's waiters (they answer at once if it became READY meanwhile); with checkSql, a
 * check instead (pgCheck), settled with undefined. */
static napi_value js_wait(napi_env env, napi_callback_info info)
{
    size_t argc = 5;
    napi_value argv[5], v, promise;
    char *check_sql = NULL;
    struct target *t;
    struct req *r;
    uint32_t timeout_ms, max_age_ms;
    bool ff = false;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 4)
        return throw_code(env, -EINVAL, "warmlock: wait(handle, timeoutMs, failFast, maxAgeMs)");
    if (!(t = get_target(env, argv[0])) || get_u32(env, argv[1], &timeout_ms) < 0 ||
        get_u32(env, argv[3], &max_age_ms) < 0)
        return NULL;
    CHECK(env, napi_coerce_to_bool(env, argv[2], &v));
    CHECK(env, napi_get_value_bool(env, v, &ff));
    if (argc > 4 && get_string(env, argv[4], 1, &check_sql) < 0)
        return NULL;

    if (!(r = calloc(1, sizeof(*r)))) {
        free(check_sql);
        return throw_code(env, -ENOMEM, "warmlock: out of memory");
    }
    r->check_sql = check_sql;
    r->deadline_ns = now_ns() + (uint64_t)(timeout_ms ? timeout_ms : 30000u) * 1000000u;
    r->fail_fast = ff;
    r->max_age_ms = max_age_ms;
    if (napi_create_promise(env, &r->deferred, &promise) != napi_ok) {
        free(r->check_sql);
        free(r);
        return throw_last(env, "napi_create_promise");
    }
    if (t->pending++ == 0)
        napi_ref_threadsafe_function(env, t->tsfn); /* a pending wait keeps node alive */
    pthread_mutex_lock(&t->mu);
    *t->tail = r;
    t->tail = &r->next;
    if (t->idle) {
        pthread_cond_signal(&t->cv);
    } else if (!t->stop && !t->tsfn_dead && needs_waiter(t, r->deadline_ns, r->fail_fast)) {
        unsigned i;
        for (i = 1; i < MAX_WAITERS && t->calls[i].used; i++)
            ;
        if (i < MAX_WAITERS)
            start_waiter(t, i); /* if it cannot start, the request waits its turn */
    }
    pthread_mutex_unlock(&t->mu);
    return promise;
}

/* invalidate(handle, epoch) -> boolean: the slot was READY at epoch and is now stale. */
static napi_value js_invalidate(napi_env env, napi_callback_info info)
{
    size_t argc = 2;
    napi_value argv[2], v;
    struct target *t;
    napi_valuetype ty;
    uint64_t epoch = 0;
    int r;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 2 || !(t = get_target(env, argv[0])))
        return argc < 2 ? throw_code(env, -EINVAL, "warmlock: invalidate(handle, epoch)") : NULL;
    CHECK(env, napi_typeof(env, argv[1], &ty));
    if (ty == napi_bigint) {
        bool lossless;
        CHECK(env, napi_get_value_bigint_uint64(env, argv[1], &epoch, &lossless));
    } else if (ty == napi_number) {
        double d;
        CHECK(env, napi_get_value_double(env, argv[1], &d));
        if (!(d >= 0))
            return throw_code(env, -EINVAL, "warmlock: epoch must be a number >= 0");
        epoch = (uint64_t)d;
    } else {
        napi_throw_type_error(env, NULL, "warmlock: epoch must be a number or a bigint");
        return NULL;
    }
    r = wl_invalidate(t->seg, t->key, epoch);
    if (r < 0 && r != -ENOENT)
        return throw_code(env, r, wl_strerror(r));
    CHECK(env, napi_get_boolean(env, r == 1, &v));
    return v;
}

/* key(handle) -> the slot's key (no password in it). */
static napi_value js_key(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], v;
    struct target *t;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc < 1 || !(t = get_target(env, argv[0])))
        return argc < 1 ? throw_code(env, -EINVAL, "warmlock: key(handle)") : NULL;
    CHECK(env, napi_create_string_utf8(env, t->key, NAPI_AUTO_LENGTH, &v));
    return v;
}

/* ---------------------------------------------------------------- status */


/* A JS string of s, each byte of invalid UTF-8 replaced by U+FFFD. */
static napi_status text_value(napi_env env, const char *s, napi_value *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s), o = 0;
    char *buf = malloc(left * 3 + 1);
    napi_status st;

    if (!buf)
        return napi_generic_failure;
    while (left) {
        size_t n = wlc_utf8_len(p, left);
        if (n == 0) {
            memcpy(buf + o, "\xef\xbf\xbd", 3);
            o += 3, p++, left--;
            continue;
        }
        memcpy(buf + o, p, n);
        o += n, p += n, left -= n;
    }
    st = napi_create_string_utf8(env, buf, o, out);
    free(buf);
    return st;
}

static napi_status set_num(napi_env env, napi_value o, const char *name, double d)
{
    napi_value v;
    napi_status st = napi_create_double(env, d, &v);
    return st != napi_ok ? st : napi_set_named_property(env, o, name, v);
}

static napi_status set_ms(napi_env env, napi_value o, const char *name, int64_t ms)
{
    napi_value v;
    napi_status st;
    if (ms < 0)
        st = napi_get_null(env, &v);
    else
        st = napi_create_double(env, (double)ms, &v);
    return st != napi_ok ? st : napi_set_named_property(env, o, name, v);
}

static napi_status set_text(napi_env env, napi_value o, const char *name, const char *s)
{
    napi_value v;
    napi_status st = text_value(env, s, &v);
    return st != napi_ok ? st : napi_set_named_property(env, o, name, v);
}

/* The CLI prints ns / 1e6 with %.3f: the same digits. */
static double wait_sum_ms(uint64_t ns)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%.3f", (double)ns / 1e6);
    return strtod(buf, NULL);
}

/* wl_slot_info.fleet by name, as status --json spells it. */
static const char *fleet_name(int role)
{
    static const char *const names[] = {"none", "led", "waited", "skipped", "local"};
    return role >= 0 && role <= WL_FLEET_LOCAL ? names[role] : "none";
}

/* One slot as `warmlock status --json` renders it: the same fields, names and values. */
static napi_value slot_object(napi_env env, const struct wl_slot_info *x)
{
    static const uint32_t bounds[WL_HIST_BUCKETS - 1] = WL_HIST_BOUNDS_MS;
    napi_value o, v, hist, b;
    char hash[24];
    unsigned i;

    snprintf(hash, sizeof(hash), "%016" PRIx64, x->key_hash);
    if (napi_create_object(env, &o) != napi_ok || set_text(env, o, "key", x->key) != napi_ok ||
        set_num(env, o, "key_len", x->key_len ? x->key_len : (double)strlen(x->key)) != napi_ok ||
        set_text(env, o, "key_hash", hash) != napi_ok ||
        set_text(env, o, "state", wl_state_name(x->state)) != napi_ok ||
        set_text(env, o, "stage", wl_stage_name(x->stage)) != napi_ok ||
        set_num(env, o, "epoch", (double)x->epoch) != napi_ok ||
        set_num(env, o, "leader_pid", x->leader_pid) != napi_ok ||
        napi_get_boolean(env, x->leader_alive, &v) != napi_ok ||
        napi_set_named_property(env, o, "leader_alive", v) != napi_ok ||
        set_num(env, o, "waiters", x->waiters) != napi_ok ||
        set_num(env, o, "warmups", (double)x->warmups) != napi_ok ||
        set_num(env, o, "takeovers", (double)x->takeovers) != napi_ok ||
        set_num(env, o, "attempts", (double)x->attempts) != napi_ok ||
        set_num(env, o, "failures", (double)x->failures) != napi_ok ||
        set_num(env, o, "invalidations", (double)x->invalidations) != napi_ok ||
        set_text(env, o, "last_error", x->last_error) != napi_ok ||
        set_num(env, o, "last_code", x->last_code) != napi_ok ||
        set_text(env, o, "sqlstate", x->sqlstate) != napi_ok ||
        set_ms(env, o, "ready_age_ms", x->ready_age_ms) != napi_ok ||
        set_ms(env, o, "time_to_ready_ms", x->time_to_ready_ms) != napi_ok ||
        set_ms(env, o, "down_ms", x->down_ms) != napi_ok ||
        set_text(env, o, "fleet", fleet_name(x->fleet)) != napi_ok ||
        set_ms(env, o, "fleet_leader_pid", x->fleet_leader_pid ? x->fleet_leader_pid : -1) !=
            napi_ok ||
        set_text(env, o, "fleet_leader_host", x->fleet_leader_host) != napi_ok ||
        set_text(env, o, "fleet_leader_app", x->fleet_leader_app) != napi_ok ||
        set_num(env, o, "wait_count", (double)x->wait_count) != napi_ok ||
        set_num(env, o, "wait_sum_ms", wait_sum_ms(x->wait_sum_ns)) != napi_ok ||
        napi_create_array_with_length(env, WL_HIST_BUCKETS, &hist) != napi_ok)
        return NULL;
    for (i = 0; i < WL_HIST_BUCKETS; i++) {
        if (napi_create_object(env, &b) != napi_ok)
            return NULL;
        if (i < WL_HIST_BUCKETS - 1) {
            if (set_num(env, b, "lt_ms", bounds[i]) != napi_ok)
                return NULL;
        } else if (napi_get_null(env, &v) != napi_ok ||
                   napi_set_named_property(env, b, "lt_ms", v) != napi_ok) {
            return NULL;
        }
        if (set_num(env, b, "count", (double)x->wait_hist[i]) != napi_ok ||
            napi_set_element(env, hist, i, b) != napi_ok)
            return NULL;
    }
    if (napi_set_named_property(env, o, "wait_hist", hist) != napi_ok)
        return NULL;
    return o;
}

/* status(shm) -> array of slots. Never creates a segment: ENOENT when there is none. */
static napi_value js_status(napi_env env, napi_callback_info info)
{
    size_t argc = 1;
    napi_value argv[1], arr, o;
    char *shm = NULL, err[256] = "";
    struct wl_segment *seg;
    struct wl_slot_info *s = NULL;
    int n, m, r;
    size_t i;

    CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
    if (argc >= 1 && get_string(env, argv[0], 1, &shm) < 0)
        return NULL;
    r = get_segment(shm, 1, &seg, err, sizeof(err));
    free(shm);
    if (r < 0)
        return throw_code(env, r, err);
    /* Slots are only ever added: copy again if one appeared between counting and copying. */
    for (;;) {
        if ((n = wl_snapshot(seg, NULL, 0)) < 0)
            return throw_code(env, n, "warmlock: cannot read the segment");
        free(s);
        if (!(s = calloc(n ? (size_t)n : 1, sizeof(*s))))
            return throw_code(env, -ENOMEM, "warmlock: out of memory");
        if ((m = wl_snapshot(seg, s, (size_t)n)) < 0) {
            free(s);
            return throw_code(env, m, "warmlock: cannot read the segment");
        }
        if (m <= n)
            break;
    }
    if (napi_create_array_with_length(env, (size_t)m, &arr) != napi_ok) {
        free(s);
        return throw_last(env, "napi_create_array_with_length");
    }
    for (i = 0; i < (size_t)m; i++) {
        if (!(o = slot_object(env, &s[i])) ||
            napi_set_element(env, arr, (uint32_t)i, o) != napi_ok) {
            free(s);
            return throw_last(env, "status");
        }
    }
    free(s);
    return arr;
}

/* ---------------------------------------------------------------- module */

static napi_value init(napi_env env, napi_value exports)
{
    static const struct {
        const char *name;
        napi_callback fn;
    } fns[] = {
        {"open", js_open}, {"ready", js_ready},   {"wait", js_wait}, {"invalidate", js_invalidate},
        {"key", js_key},   {"status", js_status},
    };
    napi_value f, v;
    size_t i;

    for (i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
        if (napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f) !=
                napi_ok ||
            napi_set_named_property(env, exports, fns[i].name, f) != napi_ok)
            return throw_last(env, "init");
    }
    if (napi_create_string_utf8(env, wl_version(), NAPI_AUTO_LENGTH, &v) == napi_ok)
        napi_set_named_property(env, exports, "version", v);
    return exports;
}

NAPI_MODULE_INIT()
{
    return init(env, exports);
}
