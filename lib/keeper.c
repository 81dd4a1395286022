/*
 * The keeper: the coordinator's check and re-warm loop, as an object a program (warmlockd)
 * or a test drives in-process. All its state is in struct wl_keeper; it runs on one ring
 * loop (ring.c: io_uring, or poll(2)) in the thread that owns it, with these tasks:
 *
 * - per target, a driver (target_step) that looks at the target's slot and decides what
 *   runs next, and a probe (pg.c, the engine's one libpq state machine) that does it:
 *
 *     DECIDE ──slot READY──▶ HOLDING (check-only probe: connect, verify_sql, hold)
 *       │ ──claimed (wl__claim_try)──▶ WARMING (probe: connect, warm_sql, verify_sql,
 *       │                               retried with backoff, no deadline)
 *       │ ──another process warms it (-EBUSY)──▶ look again after WATCH_MS
 *       └ ──FAILED and fail_ttl not over──▶ look again when it is
 *     WARMING ──verified: publish READY──▶ HOLDING (the same connection, checked)
 *             ──verified, fleet mode: FLEET (the fleet phase, wl__fleet_run, on a thread of
 *               its own; the probe is cancelled) ──ended: publish──▶ HOLDING (a new check
 *               connection), or DECIDE after a failure
 *             ──permanent failure: publish FAILED──▶ DECIDE
 *     HOLDING ──server closed it / a check failed: wl_invalidate──▶ DECIDE (re-warm)
 *             ──the slot is no longer READY (invalidated, reset)──▶ DECIDE
 *
 *   While the server is down the probe of WARMING keeps retrying, holding the claim, so
 *   applications sleep on the futex (no probes of their own) and are released by the
 *   publish of READY; each failed attempt becomes the slot's last error
 *   (wl__claim_progress), which is what status shows. Each check of HOLDING that passes
 *   refreshes the epoch's verification time (wl__slot_touch), so applications' max_age_ms
 *   never sends them to re-verify a target the keeper checks.
 * - a tick every interval: the segment's name still resolves to the mapping (systemd's
 *   RemoveIPC), else reopen and start every target over;
 * - an eventfd for wl_keeper_stop(), and the owner's watched fds.
 *
 * There are no threads but a fleet phase's (it blocks in libpq while it waits for another
 * host's fleet leader; it touches nothing of the keeper's but its job, and the loop learns
 * of its end through an eventfd): a removed target's warm-up is cancelled in place (published
 * -ECANCELED: the slot goes STALE and waiting applications carry on). Conninfos are never
 * reported; events name targets by their key.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"
#include "warmlock/pg.h"

#define MS                  1000000ull
#define DEFAULT_INTERVAL_MS 5000u
#define DEFAULT_FAIL_TTL_MS 1000u
#define DEFAULT_APP_NAME    "warmlock-keeper"
#define WATCH_MS            100u /* looking at a slot that another process warms */
#define RECHECK_FIRST_MS    200u /* a check lost right after verification backs off from here */
#define REPEAT_NS           (30000ull * MS) /* the same failure is reported again after this long */
#define KEYLEN              WL_PG_KEY_MAX
#define MAX_FIELDS          8
#define FLEET_WAIT_MS       30000u /* the least a fleet phase may wait for another host */

enum tstate {
    T_DECIDE,  /* nothing runs: the driver looks at the slot when its timer fires or poked */
    T_WARMING, /* claimed: the probe warms the target up */
    T_HOLDING, /* unclaimed: the probe holds (or opens) the check connection */
    T_FLEET,   /* claimed, the server verified: the fleet phase runs on a thread of its own */
};

struct target;

/* The fleet phase of a claimed warm-up (wl__fleet_run blocks: it waits for another host's
 * fleet leader), on a thread of its own so the loop goes on; done_fd tells the loop. */
struct fleet_job {
    struct wl__task task; /* first: watches done_fd */
    struct target *t;
    pthread_t th;
    int done_fd, abort_fd; /* eventfds */
    char *conninfo, *key, *warm_sql, *verify_sql;
    struct wl__fleet_conf fc;
    struct wl__fleet_out out;
    struct wl_result res; /* the probe's outcome, then the phase's */
    int rc, done;
};

struct target {
    struct wl__task task; /* the driver */
    struct wl_keeper *k;
    struct target *next;
    char *conninfo; /* may hold a password: never reported */
    char key[KEYLEN];
    struct wl__probe *probe;
    enum tstate st;
    struct wl__claim claim;
    int claimed;                      /* claim is held (the slot's mutex, by this thread) */
    int reclaim;                      /* the claimed slot changed under us (reset): start over */
    uint64_t epoch;                   /* the epoch the check connection verifies */
    uint64_t claim_ns;                /* when the current warm-up was claimed */
    uint64_t verified_ns;             /* the probe's last verification */
    uint64_t hold_off;                /* the driver decides no sooner (a check lost right away) */
    struct wl__backoff_state recheck; /* the delays before re-warming after quick losses */
    unsigned quick_losses; /* checks lost within an interval of their verification, in a row */
    int ever_ready;
    int seen;              /* wl_keeper_set_targets' bookkeeping */
    uint32_t flags;        /* WL_PG_FLEET */
    char *fleet_key;       /* wl_pg_key() of conninfo (no password digest: every host's) */
    struct fleet_job *job; /* T_FLEET's */
    char last_err[256];    /* the last failure reported (failure_shape), to keep an outage's log
                            * short */
    uint64_t last_err_ns;
    unsigned repeats;
};

struct watch {
    struct wl__task task;
    struct watch *next;
    void (*fn)(void *);
    void *arg;
};

struct wl_keeper {
    struct wl__loop *loop;
    struct wl_segment *seg;
    struct wl_segment **retired; /* handles replaced after their name vanished */
    size_t nretired;
    struct wl_open_opts open;
    uint32_t interval_ms, fail_ttl_ms, attempt_timeout_ms;
    struct wl_backoff backoff;
    char *verify_sql, *warm_sql, *app_name;
    wl_keeper_event_fn on_event;
    void *event_arg;
    uint32_t flags; /* the targets' default WL_PG_FLEET */
    struct target *targets;
    size_t ntargets;
    struct watch *watches;
    struct wl__task stop_task, tick_task;
    int stop_fd;
    int stopped; /* the stop eventfd was read during this run */
    int all_ready_sent;
    int in_event; /* inside on_event: the keeper's functions refuse (-EDEADLK) */
};

/* ---------------------------------------------------------------- events */

/* An event with (name, value) string pairs ending with NULL; a NULL value skips its pair. */
static void emit(struct wl_keeper *k, const struct target *t, enum wl_keeper_level level,
                 enum wl_keeper_what what, const char *msg, ...)
{
    const char *f[2 * MAX_FIELDS];
    struct wl_keeper_event ev = {level, what, t ? t->key : NULL, msg, f, 0};
    const char *name;
    va_list ap;

    if (!k->on_event)
        return;
    va_start(ap, msg);
    while ((name = va_arg(ap, const char *))) {
        const char *v = va_arg(ap, const char *);
        if (v && ev.nfields < MAX_FIELDS) {
            f[2 * ev.nfields] = name;
            f[2 * ev.nfields + 1] = v;
            ev.nfields++;
        }
    }
    va_end(ap);
    k->in_event++;
    k->on_event(k->event_arg, &ev);
    k->in_event--;
}

static const char *num(char *buf, size_t len, uint64_t v)
{
    wl__fmt(buf, len, "%" PRIu64, v);
    return buf;
}

/* What makes two failures the same one: the event, the code, the SQLSTATE and the message
 * with every run of digits as one '#' ("over 20 ms" and "over 7 ms" are one failure; so are
 * two pids or ports in a server's message). */
static void failure_shape(char *buf, size_t len, enum wl_keeper_what what, int code,
                          const char *sqlstate, const char *err)
{
    size_t n;

    wl__fmt(buf, len, "%d %d %s ", (int)what, code, sqlstate ? sqlstate : "");
    for (n = strlen(buf); *err && n + 1 < len; err++) {
        if (*err >= '0' && *err <= '9') {
            if (buf[n - 1] != '#')
                buf[n++] = '#';
        } else
            buf[n++] = *err;
    }
    buf[n] = '\0';
}

/* A failure, reported when it changes and every REPEAT_NS while it stays the same (as
 * failure_shape sees it). */
static void report(struct target *t, enum wl_keeper_what what, const char *msg, int code,
                   const char *error, const char *sqlstate, const char *retry_ms)
{
    uint64_t now = wl__now_ns();
    char err[256], shape[sizeof(t->last_err)], b[24];

    wl__copy(err, sizeof(err), error && *error ? error : wl_strerror(code));
    wl__oneline(err);
    failure_shape(shape, sizeof(shape), what, code, sqlstate, err);
    if (!strcmp(shape, t->last_err) && now - t->last_err_ns < REPEAT_NS) {
        t->repeats++;
        return;
    }
    emit(t->k, t, WL_KEEPER_WARN, what, msg, "error", err, "code", wl_strerror(code), "sqlstate",
         sqlstate && *sqlstate ? sqlstate : NULL, "retry_ms", retry_ms, "repeats",
         t->repeats ? num(b, sizeof(b), t->repeats) : NULL, (const char *)NULL);
    wl__copy(t->last_err, sizeof(t->last_err), shape);
    t->last_err_ns = now;
    t->repeats = 0;
}

static void check_all_ready(struct wl_keeper *k)
{
    struct target *t;
    if (k->all_ready_sent)
        return;
    for (t = k->targets; t; t = t->next)
        if (!t->ever_ready)
            return;
    k->all_ready_sent = 1;
    emit(k, NULL, WL_KEEPER_INFO, WL_KEEPER_ALL_READY, "every target is warm", (const char *)NULL);
}

static void became_ready(struct target *t, uint64_t epoch)
{
    t->epoch = epoch;
    t->ever_ready = 1;
    t->last_err[0] = '\0';
    t->repeats = 0;
    check_all_ready(t->k);
}

/* ---------------------------------------------------------------- a target's work */

static int target_step(struct wl__task *task, int event, int revents);

/* Run the driver again now (from another task's step, or outside a run). */
static void poke(struct target *t)
{
    wl__loop_remove(t->k->loop, &t->task);
    t->task.step = target_step;
    if (wl__loop_add(t->k->loop, &t->task) < 0)
        emit(t->k, t, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot schedule the target", "error",
             "out of memory", (const char *)NULL);
}

/* End a claimed warm-up with rc (the probe's last error as the reason). */
static int publish(struct target *t, int rc, struct wl_result *res)
{
    struct wl_result scratch;
    int r;

    if (!res) {
        memset(&scratch, 0, sizeof(scratch));
        wl__probe_result(t->probe, &scratch);
        if (!scratch.error[0])
            wl__copy(scratch.error, sizeof(scratch.error), "the keeper's warm-up was cancelled");
        res = &scratch;
    }
    res->role = WL_LEADER;
    t->claimed = 0;
    r = wl__claim_publish(&t->claim, rc, res);
    return r;
}

static void job_free(struct fleet_job *j)
{
    if (!j)
        return;
    if (j->done_fd >= 0)
        close(j->done_fd);
    if (j->abort_fd >= 0)
        close(j->abort_fd);
    free(j->conninfo);
    free(j->key);
    free(j->warm_sql);
    free(j->verify_sql);
    free(j);
}

/* End the fleet phase in flight at once (its thread sees abort_fd) and wait for it. */
static void job_stop(struct target *t)
{
    struct fleet_job *j = t->job;
    uint64_t one = 1;

    if (!j)
        return;
    if (write(j->abort_fd, &one, sizeof(one)) < 0) {
        /* an eventfd's counter cannot be full after one write */
    }
    pthread_join(j->th, NULL);
    wl__loop_remove(t->k->loop, &j->task);
    job_free(j);
    t->job = NULL;
}

/* Stop whatever the target runs: a claimed warm-up is published -ECANCELED (STALE). */
static void stop_work(struct target *t)
{
    job_stop(t);
    wl__probe_cancel(t->probe);
    if (t->claimed)
        publish(t, -ECANCELED, NULL);
    t->st = T_DECIDE;
    t->reclaim = 0;
}

static void hook_attempt_failed(void *arg, int code, const char *error, const char *sqlstate)
{
    struct target *t = arg;

    /* A check connection's attempt is its only one: hook_ended reports how it ended. */
    if (!t->claimed)
        return;
    wl__claim_progress(&t->claim, code, error, sqlstate);
    /* acquire: a reset's new generation is seen with the CAS that made it */
    if (atomic_load_explicit(&t->claim.sl->state, memory_order_acquire) != t->claim.gen) {
        t->reclaim = 1; /* reset meanwhile: our publish would be refused; start over */
        poke(t);
    }
    report(t, WL_KEEPER_DOWN, "warm-up attempt failed; retrying", code, error, sqlstate, NULL);
}

/* How far the claimed warm-up's attempt got, for status (a check connection's: nothing). */
static void hook_stage(void *arg, int stage)
{
    struct target *t = arg;

    if (t->claimed)
        wl__claim_stage(&t->claim, stage);
}

/* Is t in fleet mode (with a warm_sql to share)? */
static int fleet_of(const struct target *t)
{
    return (t->flags & WL_PG_FLEET) && t->fleet_key && t->k->warm_sql;
}

static void *job_main(void *arg)
{
    struct fleet_job *j = arg;
    uint64_t one = 1;

    j->rc = wl__fleet_run(&j->fc, NULL, &j->out, &j->res);
    /* the eventfd's write orders the results above before the loop's read of done_fd */
    if (write(j->done_fd, &one, sizeof(one)) < 0) {
        /* cannot fail on a fresh eventfd */
    }
    return NULL;
}

static int timer(struct target *t, uint64_t at);
static int start_check(struct target *t, uint64_t epoch, uint64_t now);

/* The job's loop task: its thread is done; the driver takes it from there. */
static int job_step(struct wl__task *task, int event, int revents)
{
    struct fleet_job *j = (struct fleet_job *)task;
    uint64_t v;

    (void)revents;
    if (event == WL__EV_IO && read(j->done_fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
        j->done = 1;
        poke(j->t);
        return WL__WANT_DONE;
    }
    task->fd = j->done_fd;
    task->deadline_ns = 0;
    return WL__WANT_READ;
}

/* Start the fleet phase of a claimed warm-up whose probe verified the server (it ran
 * without warm_sql): a connection of its own, on a thread of its own, bounded. */
static int job_start(struct target *t, const struct wl_result *probe_res)
{
    struct wl_keeper *k = t->k;
    uint32_t ms = k->interval_ms > FLEET_WAIT_MS ? k->interval_ms : FLEET_WAIT_MS;
    struct fleet_job *j;
    int oom = 0, r;

    if (!(j = calloc(1, sizeof(*j))))
        return -ENOMEM;
    j->done_fd = j->abort_fd = -1;
    j->t = t;
    j->res = *probe_res;
    j->conninfo = wl__dup_or_null(t->conninfo, &oom);
    j->key = wl__dup_or_null(t->fleet_key, &oom);
    j->warm_sql = wl__dup_or_null(k->warm_sql, &oom);
    j->verify_sql = wl__dup_or_null(k->verify_sql, &oom);
    if (oom || (j->done_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        (j->abort_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        job_free(j);
        return -ENOMEM;
    }
    j->fc.conninfo = j->conninfo;
    j->fc.key = j->key;
    j->fc.warm_sql = j->warm_sql;
    j->fc.verify_sql = j->verify_sql;
    j->fc.deadline_ns = wl__now_ns() + (uint64_t)ms * MS;
    j->fc.attempt_timeout_ms = k->attempt_timeout_ms;
    j->fc.abort_fd = j->abort_fd;
    j->task.step = job_step;
    j->task.fd = -1;
    if ((r = wl__loop_add(k->loop, &j->task)) < 0) {
        job_free(j);
        return r;
    }
    if ((r = -pthread_create(&j->th, NULL, job_main, j)) < 0) {
        wl__loop_remove(k->loop, &j->task);
        job_free(j);
        return r;
    }
    t->job = j;
    t->st = T_FLEET;
    /* the probe verified the server; the warm-up itself is the fleet phase's */
    if (t->claimed)
        wl__claim_stage(&t->claim, WL_STAGE_AUTHENTICATED);
    return 0;
}

/* The fleet phase ended (the driver, in T_FLEET): publish its outcome. */
static int job_finish(struct target *t, uint64_t now)
{
    struct wl_keeper *k = t->k;
    struct fleet_job *j = t->job;
    struct wl_result res;
    struct wl__fleet_out out;
    char b1[24], b2[24], b3[24];
    int r;

    pthread_join(j->th, NULL);
    wl__loop_remove(k->loop, &j->task);
    r = j->rc;
    res = j->res;
    out = j->out;
    job_free(j);
    t->job = NULL;
    t->st = T_DECIDE;
    if (r < 0) {
        publish(t, r, &res);
        report(t, wl__transient(r) ? WL_KEEPER_DOWN : WL_KEEPER_FAILED,
               "fleet warm-up failed; retrying", r, res.error, res.sqlstate,
               num(b1, sizeof(b1), wl__transient(r) ? RECHECK_FIRST_MS : k->fail_ttl_ms));
        if (wl__transient(r))
            t->hold_off = now + (uint64_t)RECHECK_FIRST_MS * MS;
        return timer(t, t->hold_off > now ? t->hold_off : now);
    }
    wl__fleet_note(k->seg, t->key, &out);
    res.error[0] = res.sqlstate[0] = '\0';
    emit(k, t, WL_KEEPER_INFO, WL_KEEPER_NOTE,
         out.role == WL_FLEET_LED       ? "fleet warm-up led"
         : out.role == WL_FLEET_WAITED  ? "fleet warm-up done by another host (waited)"
         : out.role == WL_FLEET_SKIPPED ? "fleet warm-up already done (skipped)"
                                        : "fleet mode off (transaction pooler): warmed up alone",
         "fleet_leader_pid", out.leader_pid ? num(b1, sizeof(b1), (uint64_t)out.leader_pid) : NULL,
         "fleet_leader_host", out.leader_host[0] ? out.leader_host : NULL, "fleet_leader_app",
         out.leader_app[0] ? out.leader_app : NULL, "record",
         (out.flags & WL__FLEET_NORECORD) ? "none (the role cannot create or write "
                                            "warmlock_fleet)"
                                          : NULL,
         (const char *)NULL);
    if ((r = publish(t, 0, &res)) == 0) {
        emit(k, t, WL_KEEPER_INFO, WL_KEEPER_READY, "ready", "epoch",
             num(b2, sizeof(b2), res.epoch), "ms", num(b3, sizeof(b3), (now - t->claim_ns) / MS),
             (const char *)NULL);
        became_ready(t, res.epoch);
        return start_check(t, res.epoch, now); /* a check connection of its own */
    }
    emit(k, t, WL_KEEPER_WARN, WL_KEEPER_NOTE, "warm-up discarded", "error", res.error,
         (const char *)NULL);
    t->epoch = 0;
    return timer(t, now);
}

static void hook_verified(void *arg)
{
    struct target *t = arg;
    struct wl_keeper *k = t->k;
    struct wl_result res;
    char b1[24], b2[24], b3[24];
    uint64_t now = wl__now_ns();
    int r;

    t->verified_ns = now;
    if (!t->claimed) { /* the check connection of a slot already READY */
        wl__slot_touch(k->seg, t->key, t->epoch);
        return;
    }
    memset(&res, 0, sizeof(res));
    wl__probe_result(t->probe, &res);
    if (fleet_of(t)) {
        /* The fleet phase next, on its thread; the driver cancels this probe (its
         * connection is not needed) and publishes when the phase ends. */
        if ((r = job_start(t, &res)) < 0) {
            publish(t, -ECANCELED, NULL);
            emit(k, t, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot start the fleet phase", "error",
                 strerror(-r), (const char *)NULL);
            t->hold_off = now + (uint64_t)k->interval_ms * MS;
            t->reclaim = 1;
        }
        poke(t);
        return;
    }
    t->st = T_HOLDING;
    if ((r = publish(t, 0, &res)) == 0) {
        emit(k, t, WL_KEEPER_INFO, WL_KEEPER_READY, "ready", "epoch",
             num(b1, sizeof(b1), res.epoch), "ms", num(b2, sizeof(b2), (now - t->claim_ns) / MS),
             "attempts", num(b3, sizeof(b3), res.attempts), (const char *)NULL);
        became_ready(t, res.epoch);
    } else {
        emit(k, t, WL_KEEPER_WARN, WL_KEEPER_NOTE, "warm-up discarded", "error", res.error,
             (const char *)NULL);
        t->epoch = 0;
    }
    poke(t); /* the driver's checks of the slot start from now */
}

/* The held connection passed its check: the epoch it verifies counts as verified now, so
 * applications with a max_age_ms find it fresh and do not re-verify it themselves. */
static void hook_checked(void *arg)
{
    struct target *t = arg;
    wl__slot_touch(t->k->seg, t->key, t->epoch);
}

static void hook_ended(void *arg, int rc)
{
    struct target *t = arg;
    struct wl_keeper *k = t->k;
    struct wl_result res;
    uint64_t now = wl__now_ns();
    char b1[24], b2[24];

    memset(&res, 0, sizeof(res));
    wl__probe_result(t->probe, &res);
    if (t->claimed) {
        /* Before verification: a permanent failure (the probe retries everything else). */
        publish(t, rc, &res);
        report(t, WL_KEEPER_FAILED, "warm-up failed", rc, res.error, res.sqlstate,
               num(b1, sizeof(b1), k->fail_ttl_ms));
    } else if (t->st == T_HOLDING && !wl__probe_verified(t->probe) &&
               !strncmp(res.sqlstate, "53", 2)) {
        /* The check connection was refused for want of room (53300): a full server is not
         * a stale one; keep the epoch and try again at the next interval. */
        report(t, WL_KEEPER_LOST, "check connection refused; epoch kept", rc, res.error,
               res.sqlstate, num(b1, sizeof(b1), k->interval_ms));
        t->hold_off = now + (uint64_t)k->interval_ms * MS;
    } else if (t->st == T_HOLDING) {
        int r = wl_invalidate(k->seg, t->key, t->epoch);
        emit(k, t, WL_KEEPER_WARN, WL_KEEPER_LOST,
             r == 1 ? "check failed; epoch invalidated" : "check failed", "error",
             res.error[0] ? res.error : wl_strerror(rc), "epoch", num(b2, sizeof(b2), t->epoch),
             (const char *)NULL);
        /* Checks lost again and again right after a verification (say the server takes a
         * warm-up but drops the connection at once) must not become a warm-up loop: from
         * the second in a row, back off. The first is re-warmed at once (the warm-up
         * itself retries with backoff while the server is down). */
        if (now - t->verified_ns < (uint64_t)k->interval_ms * MS) {
            uint64_t delay = 0;
            if (!t->quick_losses++) {
                struct wl_backoff b = {
                    .initial_ms = RECHECK_FIRST_MS, .max_ms = k->interval_ms, .jitter = -1};
                wl__backoff_init(&t->recheck, &b, 0, now, 0);
                t->recheck.deadline_ns = UINT64_MAX;
            } else if (wl__backoff_next(&t->recheck, now, &delay) == 0) {
                t->hold_off = now + delay;
            }
        } else {
            t->quick_losses = 0;
        }
    }
    t->st = T_DECIDE;
    poke(t);
}

static void base_conf(struct target *t, struct wl__probe_conf *c)
{
    const struct wl_keeper *k = t->k;

    memset(c, 0, sizeof(*c));
    c->verify_sql = k->verify_sql;
    c->attempt_timeout_ms = k->attempt_timeout_ms;
    c->backoff = k->backoff;
    c->hold_ms = k->interval_ms;
    c->application_name = k->app_name;
    c->hooks.arg = t;
    c->hooks.attempt_failed = hook_attempt_failed;
    c->hooks.verified = hook_verified;
    c->hooks.checked = hook_checked;
    c->hooks.ended = hook_ended;
    c->hooks.stage = hook_stage;
}

static int timer(struct target *t, uint64_t at)
{
    t->task.deadline_ns = at;
    return WL__WANT_TIMER;
}

/* Claimed: warm it up, for as long as the server needs. */
static int start_warm(struct target *t, uint64_t now)
{
    struct wl_keeper *k = t->k;
    struct wl__probe_conf c;
    int r;

    base_conf(t, &c);
    if (fleet_of(t)) {
        /* warm_sql, then verify_sql, run in the fleet phase (verify_sql may need what
         * warm_sql makes); this probe, and the checks of its held connection, run the
         * default verification */
        c.warm_sql = NULL;
        c.verify_sql = NULL;
    } else {
        c.warm_sql = k->warm_sql;
    }
    c.backoff.max_attempts = 0;
    c.deadline_ns = UINT64_MAX; /* no deadline while the keeper runs */
    t->claimed = 1;
    t->claim_ns = now;
    t->st = T_WARMING;
    if ((r = wl__probe_start(t->probe, k->loop, &c)) < 0) {
        publish(t, -ECANCELED, NULL);
        t->st = T_DECIDE;
        emit(k, t, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot start a warm-up", "error", strerror(-r),
             (const char *)NULL);
        return timer(t, now + (uint64_t)k->interval_ms * MS);
    }
    /* re-probes of a failure that stays are not news */
    emit(k, t, t->last_err[0] ? WL_KEEPER_DEBUG : WL_KEEPER_INFO, WL_KEEPER_NOTE, "warming",
         (const char *)NULL);
    return WL__WANT_DONE; /* the probe's hooks poke the driver */
}

/* The slot is READY at epoch: hold a check connection to it. */
static int start_check(struct target *t, uint64_t epoch, uint64_t now)
{
    struct wl_keeper *k = t->k;
    struct wl__probe_conf c;
    char b[24];
    int r;

    base_conf(t, &c);
    c.backoff.max_attempts = 1; /* a check connection that cannot be made is a failed check */
    if (epoch != t->epoch || !t->ever_ready) {
        emit(k, t, WL_KEEPER_INFO, WL_KEEPER_READY, "ready (warmed by another process)", "epoch",
             num(b, sizeof(b), epoch), (const char *)NULL);
        became_ready(t, epoch);
    }
    t->st = T_HOLDING;
    if ((r = wl__probe_start(t->probe, k->loop, &c)) < 0) {
        t->st = T_DECIDE;
        emit(k, t, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot start a check", "error", strerror(-r),
             (const char *)NULL);
    }
    return timer(t, now + (uint64_t)k->interval_ms * MS);
}

/* The driver: what the target does next, from its slot's state. */
static int decide(struct target *t)
{
    struct wl_keeper *k = t->k;
    uint64_t now = wl__now_ns(), epoch = 0, ttl = (uint64_t)k->fail_ttl_ms * MS;
    struct wl__slot *sl = NULL;
    uint32_t s = 0;
    int r;

    if (t->st == T_FLEET) {
        if (wl__probe_running(t->probe))
            wl__probe_cancel(t->probe); /* the verified connection: the phase has its own */
        if (!t->job->done)
            return WL__WANT_DONE; /* the job pokes the driver when it ends */
        return job_finish(t, now);
    }
    if (t->st == T_WARMING) {
        if (!t->reclaim)
            return WL__WANT_DONE; /* the probe pokes the driver when something happens */
        stop_work(t);
    }
    if (wl__slot_find(k->seg, t->key, 0, &sl) == 0) {
        /* acquire: pairs with the publisher's release CAS (READY's epoch) */
        s = atomic_load_explicit(&sl->state, memory_order_acquire);
        epoch = atomic_load_explicit(&sl->epoch, memory_order_relaxed);
    }
    if (t->st == T_HOLDING) {
        if (sl && WL__ST(s) == WL_READY) {
            if (epoch != t->epoch && wl__probe_verified(t->probe)) {
                char b[24];
                emit(k, t, WL_KEEPER_INFO, WL_KEEPER_READY,
                     "ready at a new epoch (warmed by another process)", "epoch",
                     num(b, sizeof(b), epoch), (const char *)NULL);
                t->epoch = epoch;
            }
            return timer(t, now + (uint64_t)k->interval_ms * MS);
        }
        /* The epoch we hold was invalidated by someone else, or the slot reset. */
        emit(k, t, WL_KEEPER_INFO, WL_KEEPER_NOTE, "slot not ready; warming", "state",
             sl ? wl_state_name(WL__ST(s)) : "absent", (const char *)NULL);
        stop_work(t);
    }
    if (now < t->hold_off)
        return timer(t, t->hold_off);
    if (sl && WL__ST(s) == WL_READY)
        return start_check(t, epoch, now);
    if (sl && WL__ST(s) == WL_FAILED) {
        /* a permanent failure is tried again no sooner than callers stop being served it */
        uint64_t failed = atomic_load_explicit(&sl->failed_ns, memory_order_relaxed);
        if (now < failed + ttl)
            return timer(t, failed + ttl);
    }
    r = wl__claim_try(k->seg, t->key, &t->claim);
    if (r == 0)
        return start_warm(t, now);
    if (r == -EALREADY && wl__slot_find(k->seg, t->key, 0, &sl) == 0)
        return start_check(t, atomic_load_explicit(&sl->epoch, memory_order_relaxed), now);
    if (r == -EBUSY || r == -EALREADY) /* another process warms it: watch */
        return timer(t,
                     now + (uint64_t)(k->interval_ms < WATCH_MS ? k->interval_ms : WATCH_MS) * MS);
    emit(k, t, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot claim the slot", "error", wl_strerror(r),
         (const char *)NULL);
    return timer(t, now + (uint64_t)k->interval_ms * MS);
}

static int target_step(struct wl__task *task, int event, int revents)
{
    (void)event;
    (void)revents;
    return decide((struct target *)task);
}

/* ---------------------------------------------------------------- the keeper's tasks */

static int key_of(struct wl_keeper *k, const char *conninfo, char *key, size_t len, int quiet);

static void reopen(struct wl_keeper *k, int why)
{
    struct wl_segment **nv, *seg;
    struct target *t;
    char name[WL_NAME_MAX + 1];

    wl__copy(name, sizeof(name), wl_name(k->seg));
    emit(k, NULL, WL_KEEPER_ERROR, WL_KEEPER_NOTE,
         why == -ENOENT ? "the segment's name vanished; reopening"
                        : "the segment's name now refers to another object; reopening",
         "segment", name, "error", wl_strerror(why), (const char *)NULL);
    if (!(nv = realloc(k->retired, (k->nretired + 1) * sizeof(*nv))))
        return;
    k->retired = nv;
    if (wl_open(name, &k->open, &seg) < 0) {
        emit(k, NULL, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "cannot reopen the segment", "error",
             wl_last_error(), (const char *)NULL);
        return;
    }
    for (t = k->targets; t; t = t->next)
        stop_work(t); /* claims on the old segment are published there */
    k->retired[k->nretired++] = k->seg;
    k->seg = seg;
    for (t = k->targets; t; t = t->next) {
        char key[KEYLEN];
        /* a new segment has a new salt: a key with a password digest changes with it */
        if (key_of(k, t->conninfo, key, sizeof(key), 1) >= 0)
            wl__copy(t->key, sizeof(t->key), key);
        t->epoch = 0;
        t->hold_off = 0;
        poke(t);
    }
}

static int tick_step(struct wl__task *task, int event, int revents)
{
    struct wl_keeper *k =
        (struct wl_keeper *)((char *)task - offsetof(struct wl_keeper, tick_task));
    int r;

    (void)revents;
    if (event != WL__EV_START && (r = wl_check(k->seg)) != 0)
        reopen(k, r);
    check_all_ready(k); /* no targets at all is ready at once */
    task->deadline_ns = wl__now_ns() + (uint64_t)k->interval_ms * MS;
    return WL__WANT_TIMER;
}

static int stop_step(struct wl__task *task, int event, int revents)
{
    struct wl_keeper *k =
        (struct wl_keeper *)((char *)task - offsetof(struct wl_keeper, stop_task));
    uint64_t v;

    (void)revents;
    if (event == WL__EV_IO && read(k->stop_fd, &v, sizeof(v)) == (ssize_t)sizeof(v)) {
        k->stopped = 1;
        wl__loop_break(k->loop);
    }
    task->fd = k->stop_fd;
    task->deadline_ns = 0;
    return WL__WANT_READ;
}

static int watch_step(struct wl__task *task, int event, int revents)
{
    struct watch *w = (struct watch *)task;

    (void)revents;
    if (event == WL__EV_IO)
        w->fn(w->arg);
    task->deadline_ns = 0;
    return WL__WANT_READ;
}

/* ---------------------------------------------------------------- the API */

WL_EXPORT int wl_keeper_new(const struct wl_keeper_opts *opts, struct wl_keeper **out)
{
    static const struct wl_keeper_opts none;
    struct wl_keeper *k;
    char err[256];
    int r, oom = 0;

    if (!out)
        return -EINVAL;
    *out = NULL;
    if (!opts)
        opts = &none;
    if (!(k = calloc(1, sizeof(*k))))
        return -ENOMEM;
    k->stop_fd = -1;
    k->open = opts->open;
    k->interval_ms = opts->interval_ms ? opts->interval_ms : DEFAULT_INTERVAL_MS;
    k->fail_ttl_ms = opts->fail_ttl_ms ? opts->fail_ttl_ms : DEFAULT_FAIL_TTL_MS;
    k->attempt_timeout_ms = opts->attempt_timeout_ms;
    k->backoff = opts->backoff;
    k->backoff.deadline_ms = 0;
    k->verify_sql = wl__dup_or_null(opts->verify_sql, &oom);
    k->app_name =
        wl__dup_or_null(opts->application_name ? opts->application_name : DEFAULT_APP_NAME, &oom);
    k->on_event = opts->on_event;
    k->event_arg = opts->event_arg;
    k->flags = opts->flags;
    if (oom) {
        wl_keeper_free(k);
        return -ENOMEM;
    }
    if ((r = wl__loop_new(WL__IO_AUTO, &k->loop, err, sizeof(err))) < 0) {
        wl__set_error(r, "cannot start the event loop: %s", err);
        wl_keeper_free(k);
        return r;
    }
    if ((r = wl_open(opts->shm, &k->open, &k->seg)) < 0) {
        wl_keeper_free(k);
        return r;
    }
    if ((k->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        r = -errno;
        wl_keeper_free(k);
        return r;
    }
    k->stop_task.step = stop_step;
    k->tick_task.step = tick_step;
    if ((r = wl__loop_add(k->loop, &k->stop_task)) < 0 ||
        (r = wl__loop_add(k->loop, &k->tick_task)) < 0) {
        wl_keeper_free(k);
        return r;
    }
    *out = k;
    return 0;
}

static struct target *find(struct wl_keeper *k, const char *key, struct target ***link)
{
    struct target **p;
    for (p = &k->targets; *p; p = &(*p)->next)
        if (!strcmp((*p)->key, key)) {
            if (link)
                *link = p;
            return *p;
        }
    return NULL;
}

static void free_target(struct wl_keeper *k, struct target *t)
{
    stop_work(t);
    wl__loop_remove(k->loop, &t->task);
    wl__probe_free(t->probe);
    free(t->conninfo);
    free(t->fleet_key);
    free(t);
}

/* The slot key of conninfo in the keeper's segment (with its salt's password digest) into
 * key; on a bad conninfo an event says why. */
static int key_of(struct wl_keeper *k, const char *conninfo, char *key, size_t len, int quiet)
{
    int r = wl_pg_slot_key(k->seg, conninfo, key, len);
    if (r < 0 && !quiet) {
        /* libpq's message names the bad part, every password in it masked */
        wl__oneline(key);
        emit(k, NULL, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "invalid target conninfo; skipped", "error",
             key, (const char *)NULL);
    }
    return r;
}

WL_EXPORT int wl_keeper_add_target(struct wl_keeper *k, const char *conninfo)
{
    char key[KEYLEN], err[256];
    struct target *t;
    int r;

    if (!k || !conninfo)
        return -EINVAL;
    if (k->in_event)
        return -EDEADLK;
    if ((r = key_of(k, conninfo, key, sizeof(key), 0)) < 0)
        return r < -1 ? r : -EINVAL;
    if ((t = find(k, key, NULL))) {
        if (t->seen)
            emit(k, t, WL_KEEPER_WARN, WL_KEEPER_NOTE,
                 "duplicate target (same key); using the first", (const char *)NULL);
        t->seen = 1;
        return 1;
    }
    if (!(t = calloc(1, sizeof(*t))) || !(t->conninfo = strdup(conninfo))) {
        free(t);
        return -ENOMEM;
    }
    if ((r = wl__probe_new(conninfo, &t->probe, err, sizeof(err))) < 0) {
        free(t->conninfo);
        free(t);
        emit(k, NULL, WL_KEEPER_ERROR, WL_KEEPER_NOTE, "invalid target conninfo; skipped", "error",
             err, (const char *)NULL);
        return r;
    }
    wl__copy(t->key, sizeof(t->key), key);
    t->k = k;
    t->seen = 1;
    t->flags = k->flags;
    {
        char fk[KEYLEN];
        if (wl_pg_key(conninfo, fk, sizeof(fk)) >= 0)
            t->fleet_key = strdup(fk); /* NULL (out of memory): no fleet mode for it */
    }
    t->task.step = target_step;
    if ((r = wl__loop_add(k->loop, &t->task)) < 0) {
        wl__probe_free(t->probe);
        free(t->conninfo);
        free(t);
        return r;
    }
    t->next = k->targets;
    k->targets = t;
    k->ntargets++;
    emit(k, t, WL_KEEPER_INFO, WL_KEEPER_NOTE, "target added", (const char *)NULL);
    return 0;
}

static void remove_one(struct wl_keeper *k, struct target **link)
{
    struct target *t = *link;
    emit(k, t, WL_KEEPER_INFO, WL_KEEPER_NOTE, "target removed", (const char *)NULL);
    *link = t->next;
    k->ntargets--;
    free_target(k, t);
}

WL_EXPORT int wl_keeper_remove_target(struct wl_keeper *k, const char *conninfo)
{
    char key[KEYLEN];
    struct target **link;

    if (!k || !conninfo)
        return -EINVAL;
    if (k->in_event)
        return -EDEADLK;
    if (key_of(k, conninfo, key, sizeof(key), 1) < 0 || !find(k, key, &link))
        return -ENOENT;
    remove_one(k, link);
    return 0;
}

WL_EXPORT int wl_keeper_set_targets(struct wl_keeper *k, const char *const *conninfos, size_t n)
{
    struct target *t, **link;
    size_t i;

    if (!k || (n && !conninfos))
        return -EINVAL;
    if (k->in_event)
        return -EDEADLK;
    for (t = k->targets; t; t = t->next)
        t->seen = 0;
    for (i = 0; i < n; i++)
        if (wl_keeper_add_target(k, conninfos[i]) == -ENOMEM)
            return -ENOMEM;
    for (link = &k->targets; *link;) {
        if (!(*link)->seen)
            remove_one(k, link);
        else
            link = &(*link)->next;
    }
    check_all_ready(k);
    return (int)k->ntargets;
}

WL_EXPORT int wl_keeper_set_target_flags(struct wl_keeper *k, const char *conninfo, uint32_t flags)
{
    char key[KEYLEN];
    struct target *t;

    if (!k || !conninfo || (flags & ~WL_PG_FLEET))
        return -EINVAL;
    if (key_of(k, conninfo, key, sizeof(key), 1) < 0 || !(t = find(k, key, NULL)))
        return -ENOENT;
    t->flags = flags;
    return 0;
}

WL_EXPORT int wl_keeper_set_warm_sql(struct wl_keeper *k, const char *sql)
{
    char *s = NULL;

    if (!k)
        return -EINVAL;
    if (sql && *sql && !(s = strdup(sql)))
        return -ENOMEM;
    free(k->warm_sql);
    k->warm_sql = s;
    return 0;
}

WL_EXPORT int wl_keeper_watch_fd(struct wl_keeper *k, int fd, void (*fn)(void *arg), void *arg)
{
    struct watch *w;
    int r;

    if (!k || fd < 0 || !fn)
        return -EINVAL;
    if (!(w = calloc(1, sizeof(*w))))
        return -ENOMEM;
    w->task.step = watch_step;
    w->task.fd = fd;
    w->fn = fn;
    w->arg = arg;
    if ((r = wl__loop_add(k->loop, &w->task)) < 0) {
        free(w);
        return r;
    }
    w->next = k->watches;
    k->watches = w;
    return 0;
}

WL_EXPORT int wl_keeper_run(struct wl_keeper *k, int timeout_ms)
{
    uint64_t deadline = 0;
    int r;

    if (!k)
        return -EINVAL;
    if (k->in_event)
        return -EDEADLK;
    if (timeout_ms >= 0)
        deadline = wl__now_ns() + (uint64_t)timeout_ms * MS + 1;
    k->stopped = 0;
    r = wl__loop_run_until(k->loop, deadline);
    if (r < 0)
        return r;
    return k->stopped ? 1 : 0;
}

WL_EXPORT void wl_keeper_stop(struct wl_keeper *k)
{
    uint64_t one = 1;
    /* write(2) on an eventfd: thread- and async-signal-safe */
    if (k && k->stop_fd >= 0 && write(k->stop_fd, &one, sizeof(one)) < 0) {
        /* the counter is full: a stop is pending anyway */
    }
}

WL_EXPORT struct wl_segment *wl_keeper_segment(const struct wl_keeper *k)
{
    return k ? k->seg : NULL;
}

WL_EXPORT const char *wl_keeper_backend(const struct wl_keeper *k)
{
    return k && k->loop ? wl__loop_backend(k->loop) : "none";
}

WL_EXPORT size_t wl_keeper_count(const struct wl_keeper *k)
{
    return k ? k->ntargets : 0;
}

WL_EXPORT void wl_keeper_free(struct wl_keeper *k)
{
    size_t i;

    if (!k)
        return;
    while (k->targets) {
        struct target *t = k->targets;
        k->targets = t->next;
        free_target(k, t);
    }
    while (k->watches) {
        struct watch *w = k->watches;
        k->watches = w->next;
        if (k->loop)
            wl__loop_remove(k->loop, &w->task);
        free(w);
    }
    if (k->loop) {
        wl__loop_remove(k->loop, &k->stop_task);
        wl__loop_remove(k->loop, &k->tick_task);
        wl__loop_free(k->loop);
    }
    if (k->stop_fd >= 0)
        close(k->stop_fd);
    for (i = 0; i < k->nretired; i++)
        wl_close(k->retired[i]);
    free(k->retired);
    if (k->seg)
        wl_close(k->seg);
    free(k->verify_sql);
    free(k->warm_sql);
    free(k->app_name);
    free(k);
}
