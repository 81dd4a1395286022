/*
 * warmlockd: the coordinator. Pre-warms every target through the same single-flight as the
 * applications (wl_pg_ensure), then keeps one idle check connection per target and runs
 * the verification query on it every --interval, on one event loop (lib/ring.c: io_uring,
 * or poll(2) where io_uring is unavailable). A check that fails, or a check connection
 * that the server closes, invalidates the slot's epoch at once and
 * re-warms with backoff; while the server stays down the slot is FAILED, so applications
 * fail fast with the server's reason.
 *
 * Warm-ups block (wl_pg_ensure holds the slot's robust mutex for the whole warm-up), so each
 * runs on a short-lived thread of its own, at most one per target; the loop keeps checking
 * the other targets meanwhile. Signals arrive through a signalfd, finished warm-ups through
 * an eventfd; both are tasks of the loop.
 *
 * Never logs a conninfo (it may hold a password): targets are named by their key.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "warmlock.h"
#include "warmlock/pg.h"
/* after pg.h: internal.h declares the engine's internals over its types */
#include "lib/internal.h"
#include "common.h"

#define EXIT_USAGE 2
#define MS 1000000ull
#define KEYLEN (WL_KEY_MAX + 1024)
#define VERIFY_SQL "SELECT 1"
#define STOP_GRACE_MS 2000u
#define REWARM_FIRST_MS 200u

static const char usage_text[] =
    "usage: warmlockd --target CONNINFO [--target CONNINFO...] [OPTIONS]\n"
    "       warmlockd --config FILE [OPTIONS]\n"
    "\n"
    "Keeps PostgreSQL targets warm and verified in the shared segment, so application\n"
    "processes find them READY (or FAILED with the server's reason) without probing.\n"
    "\n"
    "  --target CONNINFO   a server to keep warm (repeatable; key=value or URI)\n"
    "  --config FILE       more targets, one conninfo per line ('#' comments); re-read on\n"
    "                      SIGHUP. Prefer it (mode 0600) to --target for conninfos that\n"
    "                      hold a password: the command line is visible to every user.\n"
    "  --warm-sql FILE     SQL the leader runs once per epoch (re-read on SIGHUP)\n"
    "  --interval S        seconds between checks of each target (default 5)\n"
    "  --warm-timeout S    deadline of the first warm-up of a target (default 30)\n"
    "  --shm NAME          the segment (default $WARMLOCK_SHM, then /warmlock.<uid>)\n"
    "  --mode MODE         permission bits of a new segment, e.g. 0660 (default 0600)\n"
    "  --notify-fd N       write a newline to fd N and close it once every target is warm\n"
    "  --foreground        stay in the foreground (use it under systemd, s6, docker)\n"
    "  --help, --version\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop (the segment stays), SIGHUP reloads --config and\n"
    "--warm-sql. With $NOTIFY_SOCKET set, sends READY=1 once every target is warm.\n"
    "Logs: logfmt lines on stderr.\n";

enum check { C_NONE, C_CONNECTING, C_IDLE, C_BUSY };

struct target {
    char *conninfo;      /* as given; may hold a password: never logged */
    char key[KEYLEN];    /* the slot's key: what the logs name */
    int from_config;     /* replaced by a reload */
    int removed;         /* dropped by a reload; freed once its warm-up ended */
    int seen;            /* reload bookkeeping */

    /* The check connection, driven by the loop. */
    PGconn *conn;
    char notice[200];    /* the last FATAL the server sent on it */
    enum check cstate;
    int want;            /* POLLIN / POLLOUT */
    uint64_t deadline;   /* of the connect or the query in flight; 0 none */
    uint64_t next_check; /* monotonic ns */

    /* The warm-up, on its own thread. */
    int warming;
    int first_done;      /* the first (long-deadline) warm-up has ended */
    pthread_t thread;
    _Atomic int done;    /* set by the thread just before it signals the eventfd */
    struct wl_segment *wseg;
    char *wsql;          /* the thread's own copy of warm_sql */
    struct wl_pg_opts wopts;
    int wrc;
    struct wl_result wres;
    uint64_t next_warm;  /* monotonic ns of the next warm-up; 0 none scheduled */
    uint32_t backoff_ms;
    uint64_t ready_ns;   /* when this daemon's last warm-up succeeded */
    char last_err[256];  /* the last failure logged, to keep a down server's log short */
    uint64_t last_err_ns;
    unsigned repeats;    /* failures since then with the same message */
    int ever_ready;
    uint64_t epoch;      /* the epoch this daemon last saw READY */
    struct wl__task task; /* in the event loop */
};

static struct {
    /* options */
    char **cli_targets;
    size_t ncli;
    const char *config, *warm_sql_path, *shm;
    uint32_t interval_ms, warm_timeout_ms;
    mode_t mode;
    int notify_fd, foreground;
    /* state */
    char *warm_sql;
    struct target **t;
    size_t nt;
    struct wl_segment *seg;
    struct wl_segment **retired; /* handles replaced after the name vanished */
    size_t nretired;
    int efd, sfd;
    int notified;
} D = {.interval_ms = 5000, .warm_timeout_ms = 30000, .notify_fd = -1};

static struct wl__loop *L; /* the event loop, while it runs */

static const char *tkey(const struct target *t)
{
    return t ? t->key : NULL;
}
#define LOG(level, t, msg, ...) wlc_logfmt(stderr, level, tkey(t), msg, __VA_ARGS__)

static const char *num(char *buf, size_t len, uint64_t v)
{
    wl__fmt(buf, len, "%" PRIu64, v);
    return buf;
}

static const char *one(char *buf, size_t len, const char *s)
{
    wl__copy(buf, len, s);
    return wlc_oneline(buf);
}

/* ---- options ---- */

static int usage_error(const char *fmt, const char *a)
{
    fputs("warmlockd: ", stderr);
    fprintf(stderr, fmt, a);
    fputs(" (try warmlockd --help)\n", stderr);
    return EXIT_USAGE;
}

static int parse(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        char *a = argv[i], *val = NULL, *eq;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("warmlockd %s (libwarmlock %s)\n", WL_VERSION_STRING, wl_version());
            return 0;
        }
        if (!strcmp(a, "--foreground")) {
            D.foreground = 1;
            continue;
        }
        if (a[0] != '-')
            return usage_error("unexpected argument '%s'; targets are given with --target",
                               a);
        if ((eq = strchr(a, '='))) {
            *eq = '\0';
            val = eq + 1;
        }
        if (strcmp(a, "--target") && strcmp(a, "--config") && strcmp(a, "--warm-sql") &&
            strcmp(a, "--interval") && strcmp(a, "--warm-timeout") && strcmp(a, "--shm") &&
            strcmp(a, "--mode") && strcmp(a, "--notify-fd"))
            return usage_error("unknown option %s", a);
        if (!val) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", a);
            val = argv[++i];
        }
        if (!strcmp(a, "--target")) {
            char **nv;
            if (!*val)
                return usage_error("--target needs a conninfo%s", "");
            nv = realloc(D.cli_targets, (D.ncli + 1) * sizeof(*nv));
            if (!nv)
                return usage_error("out of memory%s", "");
            D.cli_targets = nv;
            D.cli_targets[D.ncli++] = val;
        } else if (!strcmp(a, "--config")) {
            D.config = val;
        } else if (!strcmp(a, "--warm-sql")) {
            D.warm_sql_path = val;
        } else if (!strcmp(a, "--interval")) {
            if (wlc_parse_seconds(val, 100, 86400u * 1000u, &D.interval_ms) < 0)
                return usage_error("bad --interval '%s': want seconds between 0.1 and 86400",
                                   val);
        } else if (!strcmp(a, "--warm-timeout")) {
            if (wlc_parse_seconds(val, 100, 86400u * 1000u, &D.warm_timeout_ms) < 0)
                return usage_error("bad --warm-timeout '%s': want seconds between 0.1 and "
                                   "86400", val);
        } else if (!strcmp(a, "--shm")) {
            if (!*val)
                return usage_error("--shm needs a name%s", "");
            D.shm = val;
        } else if (!strcmp(a, "--mode")) {
            if (wlc_parse_mode(val, &D.mode) < 0)
                return usage_error("bad --mode '%s': want octal permission bits like 0660",
                                   val);
        } else if (!strcmp(a, "--notify-fd")) {
            unsigned long fd;
            if (wlc_parse_uint(val, 65535, &fd) < 0 || fd < 3)
                return usage_error("bad --notify-fd '%s': want an open descriptor >= 3", val);
            if (fcntl((int)fd, F_GETFD) < 0)
                return usage_error("--notify-fd %s is not an open descriptor", val);
            D.notify_fd = (int)fd;
        }
    }
    if (!D.ncli && !D.config)
        return usage_error("no target: give --target CONNINFO or --config FILE%s", "");
    return -1;
}

/* ---- targets ---- */

static void free_target(struct target *t)
{
    if (t->conn)
        PQfinish(t->conn);
    free(t->wsql);
    free(t->conninfo);
    free(t);
}

static struct target *find_key(const char *key)
{
    size_t i;
    for (i = 0; i < D.nt; i++)
        if (!D.t[i]->removed && !strcmp(D.t[i]->key, key))
            return D.t[i];
    return NULL;
}

/* Add a target (or mark an existing one as seen); 0, or -1 after logging why not. */
static int add_target(const char *conninfo, int from_config)
{
    char key[KEYLEN], msg[512];
    struct target *t, **nv;

    if (wl_pg_slot_key(D.seg, conninfo, key, sizeof(key)) < 0) {
        /* libpq's message names the bad part; it never echoes a password value */
        LOG("error", NULL, "invalid target conninfo; skipped", "error", one(msg, sizeof(msg), key),
            "from", from_config ? D.config : "--target", NULL);
        return -1;
    }
    if ((t = find_key(key))) {
        if (t->seen)
            LOG("warn", t, "duplicate target (same key); using the first", NULL);
        t->seen = 1;
        return 0;
    }
    t = calloc(1, sizeof(*t));
    nv = realloc(D.t, (D.nt + 1) * sizeof(*nv));
    if (!t || !nv || !(t->conninfo = strdup(conninfo))) {
        free(t);
        if (nv)
            D.t = nv;
        LOG("error", NULL, "out of memory adding a target", NULL);
        return -1;
    }
    D.t = nv;
    wl__copy(t->key, sizeof(t->key), key);
    t->from_config = from_config;
    t->seen = 1;
    t->next_warm = wl__now_ns(); /* warmed by the loop at once (at start: by main) */
    D.t[D.nt++] = t;
    LOG("info", t, "target added", NULL);
    return 0;
}

static int load_warm_sql(void)
{
    char err[512], *sql = NULL;
    if (D.warm_sql_path && wlc_read_file(D.warm_sql_path, &sql, err, sizeof(err)) < 0) {
        LOG("error", NULL, "cannot read --warm-sql; keeping the previous one", "error", err,
            NULL);
        return -1;
    }
    free(D.warm_sql);
    D.warm_sql = sql;
    return 0;
}

/* Build the target list (at start and on SIGHUP). */
static int load_targets(int reload)
{
    char **lines = NULL, err[512];
    size_t n = 0, i;

    if (D.config && wlc_read_targets(D.config, &lines, &n, err, sizeof(err)) < 0) {
        LOG("error", NULL, reload ? "cannot read --config; keeping the current targets"
                                  : "cannot read --config", "error", err, NULL);
        return -1;
    }
    for (i = 0; i < D.nt; i++)
        D.t[i]->seen = 0;
    for (i = 0; i < D.ncli; i++)
        add_target(D.cli_targets[i], 0);
    for (i = 0; i < n; i++)
        add_target(lines[i], 1);
    wlc_free_lines(lines, n);
    for (i = 0; i < D.nt; i++) {
        struct target *t = D.t[i];
        if (!t->seen && !t->removed) {
            LOG("info", t, "target removed", NULL);
            t->removed = 1;
            if (t->conn)
                PQfinish(t->conn);
            t->conn = NULL;
            t->cstate = C_NONE;
        }
    }
    return 0;
}

/* Free removed targets whose warm-up is over. */
static void sweep(void)
{
    size_t i, j = 0;
    for (i = 0; i < D.nt; i++) {
        if (D.t[i]->removed && !D.t[i]->warming) {
            wl__loop_remove(L, &D.t[i]->task);
            free_target(D.t[i]);
        }
        else
            D.t[j++] = D.t[i];
    }
    D.nt = j;
}

/* ---- readiness notification ---- */

static void maybe_notify(void)
{
    size_t i;
    int r;

    if (D.notified)
        return;
    for (i = 0; i < D.nt; i++)
        if (!D.t[i]->removed && !D.t[i]->ever_ready)
            return;
    D.notified = 1;
    LOG("info", NULL, "every target is warm", NULL);
    if ((r = wlc_sd_notify("READY=1\nSTATUS=every target is warm")) < 0)
        LOG("warn", NULL, "cannot notify $NOTIFY_SOCKET", "error", strerror(-r), NULL);
    if (D.notify_fd >= 0) {
        if ((r = wlc_notify_fd(D.notify_fd)) < 0)
            LOG("warn", NULL, "cannot write to --notify-fd", "error", strerror(-r), NULL);
        D.notify_fd = -1;
    }
}

/* ---- warm-ups (one thread per warm-up in flight) ---- */

static void *warm_main(void *arg)
{
    struct target *t = arg;
    uint64_t one_ = 1;

    t->wrc = wl_pg_ensure(t->wseg, t->conninfo, &t->wopts, &t->wres);
    /* release: the result is complete before the loop sees done */
    atomic_store_explicit(&t->done, 1, memory_order_release);
    while (write(D.efd, &one_, sizeof(one_)) < 0 && errno == EINTR)
        ;
    return NULL;
}

static void start_warm(struct target *t, const char *why)
{
    uint32_t dl;
    int r;

    if (t->warming || t->removed)
        return;
    /* The first warm-up of a target may wait out a server that is still starting, like the
     * applications that start with it; later ones are short, so that a server that is down
     * is published FAILED (applications fail fast) and retried with backoff. */
    if (!t->first_done) {
        dl = D.warm_timeout_ms;
    } else {
        dl = D.interval_ms / 2;
        dl = dl < 250 ? 250 : dl > 2000 ? 2000 : dl;
    }
    free(t->wsql);
    t->wsql = D.warm_sql ? strdup(D.warm_sql) : NULL;
    memset(&t->wopts, 0, sizeof(t->wopts));
    t->wopts.warm_sql = t->wsql;
    t->wopts.attempt_timeout_ms = dl < 2000 ? dl : 2000;
    t->wopts.backoff.deadline_ms = dl;
    if (t->first_done)
        t->wopts.backoff.max_attempts = 4; /* a down server is published FAILED quickly */
    t->wopts.wait.timeout_ms = dl;
    t->wopts.wait.fail_ttl_ms = 1; /* always re-probe a published failure ourselves */
    memset(&t->wres, 0, sizeof(t->wres));
    t->wseg = D.seg;
    atomic_store_explicit(&t->done, 0, memory_order_relaxed);
    t->next_warm = 0;
    if ((r = pthread_create(&t->thread, NULL, warm_main, t)) != 0) {
        LOG("error", t, "cannot start a warm-up thread; retrying", "error", strerror(r),
            NULL);
        t->next_warm = wl__now_ns() + (uint64_t)D.interval_ms * MS;
        return;
    }
    t->warming = 1;
    (void)why;
}

static void check_connect(struct target *t);

static void warm_done(struct target *t)
{
    char b1[32], b2[32], b3[32], err[300];
    uint64_t now = wl__now_ns();

    pthread_join(t->thread, NULL);
    t->warming = 0;
    if (t->removed)
        return;
    t->first_done = 1;
    if (t->wrc == 0) {
        t->epoch = t->wres.epoch;
        t->backoff_ms = 0;
        t->ready_ns = now;
        t->last_err[0] = '\0';
        t->repeats = 0;
        t->ever_ready = 1;
        if (t->wres.role == WL_LEADER)
            LOG("info", t, "ready", "epoch", num(b1, sizeof(b1), t->wres.epoch), "ms",
                num(b2, sizeof(b2), t->wres.waited_ns / MS), "attempts",
                num(b3, sizeof(b3), t->wres.attempts), NULL);
        else if (t->wres.waited_ns < MS)
            LOG("info", t, "ready (already warm)", "epoch", num(b1, sizeof(b1), t->wres.epoch),
                NULL);
        else
            LOG("info", t, "ready (warmed by another process)", "epoch",
                num(b1, sizeof(b1), t->wres.epoch), "ms",
                num(b2, sizeof(b2), t->wres.waited_ns / MS), NULL);
        maybe_notify();
        /* Open the check connection now: its loss is how a stop is seen at once. */
        if (t->cstate == C_NONE)
            check_connect(t);
        t->next_check = now + (uint64_t)D.interval_ms * MS;
        return;
    }
    t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : REWARM_FIRST_MS;
    if (t->backoff_ms > D.interval_ms)
        t->backoff_ms = D.interval_ms;
    t->next_warm = now + (uint64_t)t->backoff_ms * MS;
    one(err, sizeof(err), t->wres.error[0] ? t->wres.error : wl_strerror(t->wrc));
    /* While a server stays down, log its failure when it changes and every 30 s. */
    if (strcmp(err, t->last_err) != 0 || now - t->last_err_ns >= 30000 * MS) {
        LOG("warn", t, "warm-up failed", "error", err, "code", wl_strerror(t->wrc),
            "sqlstate", t->wres.sqlstate[0] ? t->wres.sqlstate : NULL, "role",
            t->wres.role == WL_LEADER ? "leader" : "follower", "retry_ms",
            num(b1, sizeof(b1), t->backoff_ms), "repeats",
            t->repeats ? num(b2, sizeof(b2), t->repeats) : NULL, NULL);
        wl__copy(t->last_err, sizeof(t->last_err), err);
        t->last_err_ns = now;
        t->repeats = 0;
    } else {
        t->repeats++;
    }
}

/* ---- checks ---- */

static void close_check(struct target *t)
{
    if (t->conn)
        PQfinish(t->conn);
    t->conn = NULL;
    t->cstate = C_NONE;
    t->deadline = 0;
    t->want = 0;
    t->notice[0] = '\0';
}

/* Errors the server sends on an idle connection (FATAL 57P01 at shutdown) arrive as
 * notices; keep the last one for the log instead of libpq's default print to stderr. */
static void on_notice(void *arg, const PGresult *res)
{
    struct target *t = arg;
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);

    if (sev && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC")))
        wl__fmt(t->notice, sizeof(t->notice), "%s: %s (SQLSTATE %s)", sev, msg ? msg : "",
                code ? code : "?");
}

/* The epoch this daemon should invalidate: the slot's, if it is READY now. */
static int slot_info(struct target *t, struct wl_slot_info *out)
{
    struct wl_slot_info *s;
    int n = wlc_snapshot_all(D.seg, &s), i;
    if (n < 0)
        return n;
    i = wlc_find_slot(s, (size_t)n, t->key);
    if (i >= 0)
        *out = s[i];
    free(s);
    return i < 0 ? -ENOENT : 0;
}

static void check_failed(struct target *t, const char *why_)
{
    struct wl_slot_info si;
    char err[300], b1[32], why[300];

    /* why_ may point into the connection: copy it before closing; prefer the message the
     * server sent before it closed the connection (57P01 terminating connection ...) */
    wl__copy(why, sizeof(why), t->notice[0] ? t->notice : why_);
    if (!why[0])
        wl__copy(why, sizeof(why), "the check connection failed");
    close_check(t);
    if (slot_info(t, &si) == 0 && si.state == WL_READY) {
        int r = wl_invalidate(D.seg, t->key, si.epoch);
        LOG("warn", t, r == 1 ? "check failed; epoch invalidated" : "check failed", "error",
            one(err, sizeof(err), why), "epoch", num(b1, sizeof(b1), si.epoch), NULL);
    } else {
        LOG("warn", t, "check failed", "error", one(err, sizeof(err), why), NULL);
    }
    /* A check that fails right after a warm-up succeeded (say the server takes warm-ups
     * but refuses a further connection) must not turn into a warm-up loop: back off. */
    if (t->ready_ns && wl__now_ns() - t->ready_ns < (uint64_t)D.interval_ms * MS) {
        t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : REWARM_FIRST_MS;
        if (t->backoff_ms > D.interval_ms)
            t->backoff_ms = D.interval_ms;
        t->next_warm = wl__now_ns() + (uint64_t)t->backoff_ms * MS;
        return;
    }
    t->backoff_ms = 0;
    start_warm(t, "check failed");
}

static void check_connect(struct target *t)
{
    const char *kw[] = {"gssencmode", "fallback_application_name", "dbname", NULL};
    const char *val[] = {"disable", "warmlockd", t->conninfo, NULL};

    close_check(t);
    /* Later keywords win: a gssencmode in the conninfo overrides the default above. */
    t->conn = PQconnectStartParams(kw, val, 1);
    if (!t->conn || PQstatus(t->conn) == CONNECTION_BAD) {
        char msg[300];
        wl__copy(msg, sizeof(msg), t->conn ? PQerrorMessage(t->conn) : "out of memory");
        check_failed(t, msg);
        return;
    }
    PQsetNoticeReceiver(t->conn, on_notice, t);
    t->cstate = C_CONNECTING;
    t->want = POLLOUT;
    t->deadline = wl__now_ns() + (uint64_t)(D.interval_ms < 2000 ? 2000 : D.interval_ms) * MS;
}

static void send_check(struct target *t)
{
    if (!PQsendQuery(t->conn, VERIFY_SQL)) {
        check_failed(t, PQerrorMessage(t->conn));
        return;
    }
    t->cstate = C_BUSY;
    t->want = PQflush(t->conn) == 1 ? POLLIN | POLLOUT : POLLIN;
    t->deadline = wl__now_ns() + (uint64_t)(D.interval_ms < 2000 ? 2000 : D.interval_ms) * MS;
}

/* The check connection's socket is ready (or its deadline passed: timed_out). */
static void check_step(struct target *t, short revents, int timed_out)
{
    PGresult *res;
    char msg[300];
    int ok;

    if (timed_out) {
        check_failed(t, t->cstate == C_CONNECTING ? "check connection timed out"
                                                  : "check query timed out");
        return;
    }
    switch (t->cstate) {
    case C_CONNECTING:
        switch (PQconnectPoll(t->conn)) {
        case PGRES_POLLING_READING: t->want = POLLIN; return;
        case PGRES_POLLING_WRITING: t->want = POLLOUT; return;
        case PGRES_POLLING_OK:
            PQsetnonblocking(t->conn, 1);
            t->cstate = C_IDLE;
            t->want = POLLIN;
            t->deadline = 0;
            send_check(t);
            return;
        default:
            check_failed(t, PQerrorMessage(t->conn));
            return;
        }
    case C_IDLE:
        /* Nothing is expected: the server is closing the connection (shutdown, crash,
         * termination), or sent a notice. */
        if (!PQconsumeInput(t->conn) || PQstatus(t->conn) == CONNECTION_BAD) {
            check_failed(t, PQerrorMessage(t->conn));
            return;
        }
        while (!PQisBusy(t->conn) && (res = PQgetResult(t->conn))) {
            wl__copy(msg, sizeof(msg), PQresultErrorMessage(res));
            PQclear(res);
            if (msg[0]) {
                check_failed(t, msg);
                return;
            }
        }
        if (revents & (POLLHUP | POLLERR)) {
            check_failed(t, "the server closed the check connection");
            return;
        }
        return;
    case C_BUSY:
        if ((revents & POLLOUT) && PQflush(t->conn) < 0) {
            check_failed(t, PQerrorMessage(t->conn));
            return;
        }
        if (!PQconsumeInput(t->conn)) {
            check_failed(t, PQerrorMessage(t->conn));
            return;
        }
        ok = 1;
        msg[0] = '\0';
        while (!PQisBusy(t->conn)) {
            if (!(res = PQgetResult(t->conn))) {
                if (!ok) {
                    check_failed(t, msg);
                    return;
                }
                t->cstate = C_IDLE;
                t->want = POLLIN;
                t->deadline = 0;
                return;
            }
            if (PQresultStatus(res) != PGRES_TUPLES_OK &&
                PQresultStatus(res) != PGRES_COMMAND_OK) {
                ok = 0;
                wl__copy(msg, sizeof(msg), PQresultErrorMessage(res));
            }
            PQclear(res);
        }
        if (PQstatus(t->conn) == CONNECTION_BAD)
            check_failed(t, PQerrorMessage(t->conn));
        else
            t->want = PQflush(t->conn) == 1 ? POLLIN | POLLOUT : POLLIN;
        return;
    case C_NONE:
        return;
    }
}

/* ---- the segment ---- */

static int open_segment(void)
{
    struct wl_open_opts o = {.mode = D.mode};
    return wl_open(D.shm, &o, &D.seg);
}

/* DESIGN pitfall 6: the name may vanish (RemoveIPC) or be replaced; reopen, re-warm all. */
static void check_segment(void)
{
    struct wl_segment **nv, *old = D.seg;
    size_t i;
    int r = wl_check(D.seg);

    if (r == 0)
        return;
    LOG("error", NULL, r == -ENOENT ? "the segment's name vanished; reopening"
                                    : "the segment's name now refers to another object; "
                                      "reopening",
        "segment", wl_name(old), "error", wl_strerror(r), NULL);
    nv = realloc(D.retired, (D.nretired + 1) * sizeof(*nv));
    if (!nv)
        return;
    D.retired = nv;
    if ((r = open_segment()) < 0) {
        D.seg = old;
        LOG("error", NULL, "cannot reopen the segment", "error", wl_last_error(), NULL);
        return;
    }
    D.retired[D.nretired++] = old; /* warm-ups in flight may still use it */
    for (i = 0; i < D.nt; i++) {
        /* the new segment's salt: the same targets, new password digests */
        wl_pg_slot_key(D.seg, D.t[i]->conninfo, D.t[i]->key, sizeof(D.t[i]->key));
        D.t[i]->first_done = 0;
        D.t[i]->next_warm = 0;
        D.t[i]->backoff_ms = 0;
        start_warm(D.t[i], "segment reopened");
    }
}

/* The periodic pass: segment name, then every target's slot and check. */
static void tick(uint64_t now)
{
    struct wl_slot_info *s = NULL;
    char b1[32];
    int n;
    size_t i;

    check_segment();
    n = wlc_snapshot_all(D.seg, &s);
    for (i = 0; i < D.nt; i++) {
        struct target *t = D.t[i];
        int k = n > 0 ? wlc_find_slot(s, (size_t)n, t->key) : -1;
        if (t->removed || t->warming)
            continue;
        if (k < 0 || s[k].state != WL_READY) {
            /* Invalidated by an application, reset, failed: re-warm (with backoff). */
            if (!t->next_warm) {
                LOG("info", t, "slot not ready; warming", "state",
                    k < 0 ? "absent" : wl_state_name(s[k].state), NULL);
                t->next_warm = now;
            }
            continue;
        }
        t->next_warm = 0; /* READY, whoever warmed it */
        if (s[k].epoch != t->epoch) {
            LOG("info", t, "ready at a new epoch (warmed by another process)", "epoch",
                num(b1, sizeof(b1), s[k].epoch), NULL);
            t->epoch = s[k].epoch;
            t->ever_ready = 1;
        }
        if (now < t->next_check)
            continue;
        t->next_check = now + (uint64_t)D.interval_ms * MS;
        if (t->cstate == C_IDLE)
            send_check(t);
        else if (t->cstate == C_NONE)
            check_connect(t);
    }
    free(s);
    maybe_notify();
}

/* ---- the loop (lib/ring.c: io_uring, or poll(2) where io_uring is unavailable) ----
 *
 * Tasks: one per target (its check connection's socket and deadlines, its next warm-up),
 * the signalfd, the eventfd the warm-up threads signal, and the periodic tick. A task
 * whose state another task changed is re-armed by poke() (remove, add: it is stepped
 * afresh). */

static struct wl__task sig_task, efd_task, tick_task;
static int stopping;

static int target_step(struct wl__task *task, int event, int revents);

static void poke(struct target *t)
{
    int r;
    wl__loop_remove(L, &t->task);
    if (t->removed || stopping)
        return;
    t->task.step = target_step;
    t->task.arg = t;
    if ((r = wl__loop_add(L, &t->task)) < 0)
        LOG("error", t, "cannot add the target to the event loop", "error", strerror(-r),
            NULL);
}

static void poke_all(void)
{
    size_t i;
    for (i = 0; i < D.nt; i++)
        poke(D.t[i]);
}

static int target_step(struct wl__task *task, int event, int revents)
{
    struct target *t = task->arg;
    uint64_t now = wl__now_ns(), wake = 0;
    int want = 0;

    if (event == WL__EV_IO && t->cstate != C_NONE) {
        short ev = (short)((revents & POLLNVAL) ? POLLERR : revents);
        check_step(t, ev, 0);
    }
    now = wl__now_ns();
    if (t->cstate != C_NONE && t->deadline && t->deadline <= now)
        check_step(t, 0, 1);
    if (!t->warming && t->next_warm && t->next_warm <= now)
        start_warm(t, t->first_done ? "retry" : "start");

    if (!t->warming && t->next_warm)
        wake = t->next_warm;
    if (t->cstate != C_NONE && t->deadline && (!wake || t->deadline < wake))
        wake = t->deadline;
    task->deadline_ns = wake;
    /* the socket can change between PQconnectPoll calls: look it up at every step */
    if (t->cstate != C_NONE && t->conn && PQsocket(t->conn) >= 0) {
        task->fd = PQsocket(t->conn);
        want = (t->want & POLLIN ? WL__WANT_READ : 0) | (t->want & POLLOUT ? WL__WANT_WRITE : 0);
        return want ? want : WL__WANT_READ;
    }
    task->fd = -1;
    /* Nothing to watch: a timer for the next warm-up, else done until a poke. */
    return wake ? WL__WANT_TIMER : WL__WANT_DONE;
}

static void stop_loop(void)
{
    size_t i;
    stopping = 1;
    for (i = 0; i < D.nt; i++)
        wl__loop_remove(L, &D.t[i]->task);
    wl__loop_remove(L, &efd_task);
    wl__loop_remove(L, &tick_task);
}

static int sig_step(struct wl__task *task, int event, int revents)
{
    struct signalfd_siginfo si;
    (void)event;
    (void)revents;
    while (read(D.sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            LOG("info", NULL, "SIGHUP: reloading", NULL);
            load_warm_sql();
            load_targets(1);
            poke_all();
        } else {
            LOG("info", NULL, si.ssi_signo == SIGTERM ? "SIGTERM: stopping"
                                                      : "SIGINT: stopping", NULL);
            stop_loop();
            return WL__WANT_DONE;
        }
    }
    task->fd = D.sfd;
    task->deadline_ns = 0;
    return WL__WANT_READ;
}

static void reap_warmups(void)
{
    uint64_t v;
    size_t i;
    if (read(D.efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        return;
    for (i = 0; i < D.nt; i++)
        if (D.t[i]->warming && atomic_load_explicit(&D.t[i]->done, memory_order_acquire)) {
            warm_done(D.t[i]);
            if (L)
                poke(D.t[i]);
        }
}

static int efd_step(struct wl__task *task, int event, int revents)
{
    (void)revents;
    if (event == WL__EV_IO)
        reap_warmups();
    task->fd = D.efd;
    task->deadline_ns = 0;
    return WL__WANT_READ;
}

static int tick_step(struct wl__task *task, int event, int revents)
{
    uint64_t now = wl__now_ns();
    (void)event;
    (void)revents;
    tick(now);
    sweep(); /* removed targets whose warm-up ended; their tasks are out of the loop */
    poke_all();
    task->deadline_ns = now + (uint64_t)D.interval_ms * MS;
    return WL__WANT_TIMER;
}

static int run(void)
{
    char err[256];
    int r;

    if ((r = wl__loop_new(WL__IO_AUTO, &L, err, sizeof(err))) < 0) {
        LOG("error", NULL, "cannot start the event loop", "error", err, NULL);
        return 1;
    }
    LOG("info", NULL, "event loop", "backend", wl__loop_backend(L), NULL);
    sig_task.step = sig_step;
    efd_task.step = efd_step;
    tick_task.step = tick_step;
    if (wl__loop_add(L, &sig_task) < 0 || wl__loop_add(L, &efd_task) < 0 ||
        wl__loop_add(L, &tick_task) < 0) {
        LOG("error", NULL, "out of memory", NULL);
        wl__loop_free(L);
        L = NULL;
        return 1;
    }
    poke_all();
    r = wl__loop_run_until(L, 0);
    if (r < 0)
        LOG("error", NULL, "the event loop failed", "error", strerror(-r), NULL);
    wl__loop_free(L);
    L = NULL;
    return r < 0 ? 1 : 0;
}

/* Wait a little for warm-ups in flight; 0 if none is left. */
static int drain(void)
{
    uint64_t end = wl__now_ns() + (uint64_t)STOP_GRACE_MS * MS;
    size_t i, left;

    for (;;) {
        struct pollfd p = {.fd = D.efd, .events = POLLIN};
        uint64_t now;
        reap_warmups();
        for (i = 0, left = 0; i < D.nt; i++)
            left += D.t[i]->warming;
        now = wl__now_ns();
        if (!left || now >= end)
            return (int)left;
        poll(&p, 1, (int)((end - now) / MS) + 1);
    }
}

/* Without --foreground: fork, and let the parent exit once the child has its segment
 * open (its exit status says whether it could). */
static int background(int *report_fd)
{
    int p[2], st;
    pid_t pid;
    char c;

    if (pipe2(p, O_CLOEXEC) < 0)
        return -errno;
    if ((pid = fork()) < 0)
        return -errno;
    if (pid > 0) {
        close(p[1]);
        if (read(p[0], &c, 1) == 1)
            _exit(0);
        waitpid(pid, &st, 0);
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
    }
    close(p[0]);
    setsid();
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    *report_fd = p[1];
    return 0;
}

int main(int argc, char **argv)
{
    sigset_t mask;
    int r, report_fd = -1, rc = 0;
    size_t i;

    if ((r = parse(argc, argv)) >= 0) {
        free(D.cli_targets);
        return r;
    }
    if (!D.foreground && (r = background(&report_fd)) < 0) {
        fprintf(stderr, "warmlockd: cannot go to the background: %s\n", strerror(-r));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    /* blocked before any thread starts, so every warm-up thread inherits the mask */
    sigprocmask(SIG_BLOCK, &mask, NULL);
    D.sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    D.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (D.sfd < 0 || D.efd < 0) {
        fprintf(stderr, "warmlockd: cannot create its event descriptors: %s\n",
                strerror(errno));
        return 1;
    }
    if ((r = open_segment()) < 0) {
        char name[WL_NAME_MAX + 1];
        if (D.shm)
            wl__copy(name, sizeof(name), D.shm);
        else if (wl_default_name(name, sizeof(name)) < 0)
            wl__copy(name, sizeof(name), "(default)");
        fprintf(stderr, "warmlockd: cannot open segment %s: %s\n", name,
                wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
        return 1;
    }
    if ((D.warm_sql_path && load_warm_sql() < 0) || load_targets(0) < 0) {
        fprintf(stderr, "warmlockd: cannot start: see the log line above\n");
        rc = 1;
        goto out;
    }
    if (report_fd >= 0) {
        if (write(report_fd, "k", 1) < 0) { /* the parent exits 0 */
        }
        close(report_fd);
    }
    LOG("info", NULL, "started", "segment", wl_name(D.seg), "pid",
        num((char[24]){0}, 24, (uint64_t)getpid()), "interval_ms",
        num((char[24]){0}, 24, D.interval_ms), NULL);
    for (i = 0; i < D.nt; i++)
        start_warm(D.t[i], "start");
    maybe_notify(); /* no targets (an empty --config) is ready at once */
    rc = run();
    wlc_sd_notify("STOPPING=1");
    for (i = 0; i < D.nt; i++)
        close_check(D.t[i]);
    if (drain() > 0) {
        /* A warm-up still holds its slot's robust mutex: leaving it to the kernel makes
         * the next caller take over, which is exactly what a crash would do. */
        LOG("warn", NULL, "leaving warm-ups in flight to other processes; stopped", NULL);
        fflush(stderr);
        _exit(rc);
    }
    LOG("info", NULL, "stopped", NULL);
out:
    for (i = 0; i < D.nt; i++)
        free_target(D.t[i]);
    free(D.t);
    for (i = 0; i < D.nretired; i++)
        wl_close(D.retired[i]);
    free(D.retired);
    wl_close(D.seg);
    free(D.warm_sql);
    free(D.cli_targets);
    close(D.sfd);
    close(D.efd);
    return rc;
}
