/*
 * warmlockd: the coordinator, a thin program on the library's keeper (wl_keeper_*, in
 * warmlock/pg.h), which does the work: pre-warms every target through the same
 * single-flight as the applications, keeps one check connection per target and runs the
 * verification query on it every --interval, invalidates and re-warms when a check fails,
 * and while a server is down keeps one warm-up in flight, so applications wait without
 * probing and are released the moment it answers.
 *
 * This file adds what a program needs around it: options, --config and --warm-sql (re-read
 * on SIGHUP), signals (a signalfd the keeper's loop watches), going to the background,
 * readiness notification, and the keeper's events as logfmt lines on stderr. The keeper
 * never reports a conninfo (it may hold a password): targets are named by their key.
 *
 * Readiness, for supervisors: --notify-fd N (s6) gets a newline once every target is warm.
 * With $NOTIFY_SOCKET (systemd Type=notify; a path, or '@' for the abstract namespace) the
 * datagrams are
 *   STATUS=warming N/M targets; KEY: 57P03 for 4 s   every second while a target is not
 *                                                    READY (N of the M are not), and when
 *                                                    the line changes
 *   EXTEND_TIMEOUT_USEC=10000000                     with each STATUS= until READY=1: the
 *                                                    start timeout then bounds a daemon
 *                                                    that stopped making progress, not a
 *                                                    server that is slow to come up
 *   READY=1                                          once every target is warm
 *   RELOADING=1, MONOTONIC_USEC=...; then READY=1    around a SIGHUP reload (after READY=1)
 *   STOPPING=1                                       on the way out
 * written directly to the socket (no libsystemd).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: warmlockd --target CONNINFO [--target CONNINFO...] [OPTIONS]\n"
    "       warmlockd --config FILE [OPTIONS]\n"
    "\n"
    "Keeps PostgreSQL targets warm and verified in the shared segment, so application\n"
    "processes find them READY without probing. While a server is down it keeps one\n"
    "warm-up in flight: applications wait on it and are released when the server answers.\n"
    "\n"
    "  --target CONNINFO   a server to keep warm (repeatable; key=value or URI)\n"
    "  --config FILE       more targets, one conninfo per line ('#' comments); re-read on\n"
    "                      SIGHUP. Prefer it (mode 0600) to --target for conninfos that\n"
    "                      hold a password: the command line is visible to every user.\n"
    "  --warm-sql FILE     SQL the leader runs once per epoch (re-read on SIGHUP)\n"
    "  --fleet             fleet mode for every target: the --warm-sql runs once per\n"
    "                      server start for all hosts sharing a target (an advisory lock\n"
    "                      elects one; the others wait for it, then only verify). In\n"
    "                      --config, a line 'fleet CONNINFO' sets it for one target\n"
    "  --interval S        seconds between checks of each target (default 5)\n"
    "  --warm-timeout S    accepted for compatibility; a warm-up now lasts until the\n"
    "                      server answers (a permanent failure is published at once)\n"
    "  --shm NAME          the segment (default $WARMLOCK_SHM, then /warmlock.<uid>)\n"
    "  --mode MODE         permission bits of a new segment, e.g. 0660 (default 0600)\n"
    "  --notify-fd N       write a newline to fd N and close it once every target is warm\n"
    "  --foreground        stay in the foreground (use it under systemd, s6, docker)\n"
    "  --help, --version\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop (the segment stays), SIGHUP reloads --config and\n"
    "--warm-sql. With $NOTIFY_SOCKET set (systemd Type=notify), sends STATUS= lines and\n"
    "EXTEND_TIMEOUT_USEC= while warming, READY=1 once every target is warm, RELOADING=1\n"
    "and READY=1 around a reload, STOPPING=1. Logs: logfmt lines on stderr.\n"
    "See warmlockd(8).\n";

static struct {
    /* options */
    const char **cli_targets;
    size_t ncli;
    const char *config, *warm_sql_path, *shm;
    uint32_t interval_ms;
    mode_t mode;
    int notify_fd, foreground, fleet;
    /* state */
    struct wl_keeper *k;
    int sfd;
    /* $NOTIFY_SOCKET: the targets' conninfos and their slot keys in keys_seg (refresh_keys),
     * a 1 s timerfd while it is set, READY=1 sent, the last STATUS= sent */
    char **conninfos, **keys;
    size_t nconninfos, nkeys;
    struct wl_segment *keys_seg;
    int tfd, ready_sent;
    char status[512];
} D = {.interval_ms = 5000, .notify_fd = -1, .sfd = -1, .tfd = -1};

#define STATUS_TICK_S 1
/* The start timeout a STATUS= tick extends to: ten ticks, so a loop that stops ticking for
 * ten seconds is a hung daemon to systemd, one that ticks is still warming. */
#define EXTEND_TIMEOUT_USEC 10000000ull

#define LOG(level, msg, ...) wlc_logfmt(stderr, level, NULL, msg, __VA_ARGS__)

/* ---- options ---- */

static int usage_error(const char *fmt, const char *a)
{
    fputs("warmlockd: ", stderr);
    fprintf(stderr, fmt, a);
    fputs(" (try warmlockd --help)\n", stderr);
    return EXIT_USAGE;
}

/* One option with its value; 0, or the exit code of a usage error. */
static int option(const char *a, const char *val)
{
    if (!strcmp(a, "--target")) {
        const char **nv;
        if (!*val)
            return usage_error("--target needs a conninfo%s", "");
        if (!(nv = realloc(D.cli_targets, (D.ncli + 1) * sizeof(*nv))))
            return usage_error("out of memory%s", "");
        D.cli_targets = nv;
        D.cli_targets[D.ncli++] = val;
    } else if (!strcmp(a, "--config")) {
        D.config = val;
    } else if (!strcmp(a, "--warm-sql")) {
        D.warm_sql_path = val;
    } else if (!strcmp(a, "--interval")) {
        if (wlc_parse_seconds(val, 100, 86400u * 1000u, &D.interval_ms) < 0)
            return usage_error("bad --interval '%s': want seconds between 0.1 and 86400", val);
    } else if (!strcmp(a, "--warm-timeout")) {
        uint32_t ignored;
        if (wlc_parse_seconds(val, 100, 86400u * 1000u, &ignored) < 0)
            return usage_error("bad --warm-timeout '%s': want seconds between 0.1 and 86400", val);
    } else if (!strcmp(a, "--shm")) {
        if (!*val)
            return usage_error("--shm needs a name%s", "");
        D.shm = val;
    } else if (!strcmp(a, "--mode")) {
        if (wlc_parse_mode(val, &D.mode) < 0)
            return usage_error("bad --mode '%s': want octal permission bits like 0660", val);
    } else if (!strcmp(a, "--notify-fd")) {
        unsigned long fd;
        if (wlc_parse_uint(val, 65535, &fd) < 0 || fd < 3)
            return usage_error("bad --notify-fd '%s': want an open descriptor >= 3", val);
        if (fcntl((int)fd, F_GETFD) < 0)
            return usage_error("--notify-fd %s is not an open descriptor", val);
        D.notify_fd = (int)fd;
    } else {
        return usage_error("unknown option %s", a);
    }
    return 0;
}

/* -1 to go on, else the exit code (0 after --help or --version). */
static int parse(int argc, char **argv)
{
    static const char *const with_value[] = {"--target",   "--config",       "--warm-sql",
                                             "--interval", "--warm-timeout", "--shm",
                                             "--mode",     "--notify-fd"};
    int i, r;

    for (i = 1; i < argc; i++) {
        char *a = argv[i], *val = NULL, *eq;
        size_t j;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("warmlockd %s (libwarmlock %s)\n", WL_VERSION_STRING, wl_version());
            return 0;
        }
        if (!strcmp(a, "--fleet")) {
            D.fleet = 1;
            continue;
        }
        if (!strcmp(a, "--foreground")) {
            D.foreground = 1;
            continue;
        }
        if (a[0] != '-')
            return usage_error("unexpected argument '%s'; targets are given with --target", a);
        if ((eq = strchr(a, '='))) {
            *eq = '\0';
            val = eq + 1;
        }
        for (j = 0; j < sizeof(with_value) / sizeof(with_value[0]); j++)
            if (!strcmp(a, with_value[j]))
                break;
        if (j == sizeof(with_value) / sizeof(with_value[0]))
            return usage_error("unknown option %s", a);
        if (!val) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", a);
            val = argv[++i];
        }
        if ((r = option(a, val)))
            return r;
    }
    if (!D.ncli && !D.config)
        return usage_error("no target: give --target CONNINFO or --config FILE%s", "");
    return -1;
}

/* ---- readiness: systemd's datagrams, --notify-fd ---- */

/* The targets' slot keys, made as the keeper makes them when a target is added (a key
 * holds a digest of the password salted by the segment: made again when the keeper has
 * reopened a vanished segment, and when the targets change). NULL: a conninfo the keeper
 * refused too. */
static void refresh_keys(struct wl_segment *seg)
{
    char key[WL_PG_KEY_MAX];
    size_t i;

    if (D.keys && D.keys_seg == seg)
        return;
    wlc_free_lines(D.keys, D.nkeys);
    D.nkeys = 0;
    D.keys_seg = seg;
    if (!(D.keys = calloc(D.nconninfos + 1, sizeof(*D.keys))))
        return;
    D.nkeys = D.nconninfos;
    for (i = 0; i < D.nconninfos; i++)
        if (wl_pg_slot_key(seg, D.conninfos[i], key, sizeof(key)) > 0)
            D.keys[i] = strdup(key); /* NULL if out of memory: the target is left out */
}

/* The status of the targets, from their slots: "warming N/M targets; KEY: WHAT for S s"
 * while N of the M are not READY (KEY the one down the longest; WHAT its last SQLSTATE,
 * else the name of its error code, else "connecting"), else "every target is warm (M)".
 * Keys hold no password. */
static void status_line(char *buf, size_t len)
{
    struct wl_segment *seg = wl_keeper_segment(D.k);
    struct wl_slot_info si, worst;
    char what[32];
    size_t i, m = 0, down = 0;
    int have_worst = 0;

    refresh_keys(seg);
    for (i = 0; i < D.nkeys; i++) {
        const char *key = D.keys[i];
        if (!key)
            continue;
        m++;
        if (wl_lookup(seg, key, &si) == 0) {
            if (si.state == WL_READY)
                continue;
        } else { /* no slot yet */
            memset(&si, 0, sizeof(si));
            wlc_copy(si.key, sizeof(si.key), key);
            si.down_ms = -1;
        }
        down++;
        if (!have_worst || si.down_ms > worst.down_ms) {
            worst = si;
            have_worst = 1;
        }
    }
    if (!down) {
        wlc_fmt(buf, len, "every target is warm (%zu)", m);
        return;
    }
    if (worst.sqlstate[0])
        wlc_copy(what, sizeof(what), worst.sqlstate);
    else if (worst.last_code) {
        wlc_copy(what, sizeof(what), wl_strerror(worst.last_code));
        what[strcspn(what, ":")] = '\0';
    } else
        wlc_copy(what, sizeof(what), "connecting");
    if (worst.down_ms >= 0)
        wlc_fmt(buf, len, "warming %zu/%zu target%s; %.200s: %s for %lld s", down, m,
                m == 1 ? "" : "s", worst.key, what, (long long)(worst.down_ms / 1000));
    else
        wlc_fmt(buf, len, "warming %zu/%zu target%s; %.200s: %s", down, m, m == 1 ? "" : "s",
                worst.key, what);
}

static void sd_send(const char *state)
{
    int r;
    if ((r = wlc_sd_notify(state)) < 0)
        LOG("warn", "cannot notify $NOTIFY_SOCKET", "error", strerror(-r), NULL);
}

/* Every tick, and at start: STATUS= when it changed, always with EXTEND_TIMEOUT_USEC=
 * until READY=1 was sent. */
static void status_update(int force)
{
    char line[512], msg[640];

    if (D.tfd < 0)
        return;
    status_line(line, sizeof(line));
    if (D.ready_sent && !force && !strcmp(line, D.status))
        return;
    wlc_copy(D.status, sizeof(D.status), line);
    if (D.ready_sent)
        wlc_fmt(msg, sizeof(msg), "STATUS=%s", line);
    else
        wlc_fmt(msg, sizeof(msg), "STATUS=%s\nEXTEND_TIMEOUT_USEC=%llu", line, EXTEND_TIMEOUT_USEC);
    sd_send(msg);
}

static void on_tick(void *arg)
{
    uint64_t n;

    (void)arg;
    if (read(D.tfd, &n, sizeof(n)) < 0) { /* EAGAIN: nothing expired; nothing to do */
    }
    status_update(0);
}

/* With $NOTIFY_SOCKET set: the 1 s tick of status_update, and the first STATUS= line. */
static int status_start(void)
{
    struct itimerspec its = {{STATUS_TICK_S, 0}, {STATUS_TICK_S, 0}};
    const char *ns = getenv("NOTIFY_SOCKET");
    int r;

    if (!ns || !*ns)
        return 0;
    if ((D.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)) < 0 ||
        timerfd_settime(D.tfd, 0, &its, NULL) < 0) {
        LOG("warn", "cannot create the status timer; no STATUS= lines", "error", strerror(errno),
            NULL);
        if (D.tfd >= 0)
            close(D.tfd);
        D.tfd = -1;
        return 0;
    }
    if ((r = wl_keeper_watch_fd(D.k, D.tfd, on_tick, NULL)) < 0) {
        LOG("error", "cannot watch the status timer", "error", strerror(-r), NULL);
        return r;
    }
    status_update(1);
    return 0;
}

static void notify_ready(void)
{
    char msg[640];
    int r;

    D.ready_sent = 1;
    if (D.tfd >= 0) {
        status_line(D.status, sizeof(D.status));
        wlc_fmt(msg, sizeof(msg), "READY=1\nSTATUS=%s", D.status);
        sd_send(msg);
    } else
        sd_send("READY=1\nSTATUS=every target is warm");
    if (D.notify_fd >= 0) {
        if ((r = wlc_notify_fd(D.notify_fd)) < 0)
            LOG("warn", "cannot write to --notify-fd", "error", strerror(-r), NULL);
        D.notify_fd = -1;
    }
}

/* ---- the keeper's events, as logfmt lines ---- */

static void on_event(void *arg, const struct wl_keeper_event *ev)
{
    static const char *const level[] = {"debug", "info", "warn", "error"};
    const char *n[8], *v[8];
    size_t i;

    (void)arg;
    if (ev->level == WL_KEEPER_DEBUG)
        return;
    for (i = 0; i < 8; i++) { /* a NULL value skips its pair */
        n[i] = i < ev->nfields ? ev->fields[2 * i] : "-";
        v[i] = i < ev->nfields ? ev->fields[2 * i + 1] : NULL;
    }
    wlc_logfmt(stderr, level[ev->level <= WL_KEEPER_ERROR ? ev->level : WL_KEEPER_ERROR],
               ev->target, ev->msg, n[0], v[0], n[1], v[1], n[2], v[2], n[3], v[3], n[4], v[4],
               n[5], v[5], n[6], v[6], n[7], v[7], (const char *)NULL);
    if (ev->what == WL_KEEPER_ALL_READY)
        notify_ready();
}

/* ---- targets and warm_sql ---- */

static int load_warm_sql(void)
{
    char err[512], *sql = NULL;
    int r;

    if (!D.warm_sql_path)
        return 0;
    if (wlc_read_file(D.warm_sql_path, &sql, err, sizeof(err)) < 0) {
        LOG("error", "cannot read --warm-sql; keeping the previous one", "error", err, NULL);
        return -1;
    }
    r = wl_keeper_set_warm_sql(D.k, sql);
    free(sql);
    return r < 0 ? -1 : 0;
}

/* 1 if conninfo sets a password (key=value or URI), else 0. */
static int has_password(const char *conninfo)
{
    PQconninfoOption *o, *opts = PQconninfoParse(conninfo, NULL);
    int yes = 0;

    for (o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val && *o->val)
            yes = 1;
    PQconninfoFree(opts);
    return yes;
}

/* A --config that holds a password should be readable by its owner alone: one line says
 * so (without the password) each time it is read so. */
static void check_config_mode(char **lines, size_t n)
{
    struct stat st;
    char mode[8];
    size_t i;

    if (stat(D.config, &st) < 0 || !(st.st_mode & (S_IRGRP | S_IROTH)))
        return;
    for (i = 0; i < n && !has_password(lines[i]); i++)
        ;
    if (i == n)
        return;
    wlc_fmt(mode, sizeof(mode), "%04o", (unsigned)(st.st_mode & 07777));
    LOG("warn",
        "--config holds a password and is readable by group or others; chmod 0600 it "
        "(or keep passwords in a password file)",
        "config", D.config, "mode", mode, NULL);
}

/* Keep a copy of the targets' conninfos (for status_line). */
static void keep_conninfos(const char *const *all, size_t n)
{
    char **v = calloc(n + 1, sizeof(*v));
    size_t i;

    if (!v)
        return; /* the status keeps the previous targets */
    for (i = 0; i < n; i++)
        if (!(v[i] = strdup(all[i]))) {
            wlc_free_lines(v, i);
            return;
        }
    wlc_free_lines(D.conninfos, D.nconninfos);
    D.conninfos = v;
    D.nconninfos = n;
    wlc_free_lines(D.keys, D.nkeys); /* made again for these */
    D.keys = NULL;
    D.nkeys = 0;
}

/* The targets of --target and --config, handed to the keeper (at start and on SIGHUP). */
static int load_targets(int reload)
{
    char **lines = NULL, err[512];
    const char **all;
    size_t n = 0, i;
    int r;

    if (D.config && wlc_read_targets(D.config, &lines, &n, err, sizeof(err)) < 0) {
        LOG("error",
            reload ? "cannot read --config; keeping the current targets" : "cannot read --config",
            "error", err, NULL);
        return -1;
    }
    if (D.config)
        check_config_mode(lines, n);
    if (!(all = calloc(D.ncli + n + 1, sizeof(*all)))) {
        wlc_free_lines(lines, n);
        LOG("error", "out of memory reading the targets", NULL);
        return -1;
    }
    for (i = 0; i < D.ncli; i++)
        all[i] = D.cli_targets[i];
    for (i = 0; i < n; i++) {
        /* "fleet CONNINFO": that target in fleet mode (no conninfo starts with the word) */
        char *l = lines[i];
        if (!strncmp(l, "fleet", 5) && (l[5] == ' ' || l[5] == '\t')) {
            for (l += 5; *l == ' ' || *l == '\t'; l++)
                ;
        }
        all[D.ncli + i] = l;
    }
    r = wl_keeper_set_targets(D.k, all, D.ncli + n);
    if (r >= 0)
        keep_conninfos(all, D.ncli + n);
    for (i = 0; r >= 0 && i < D.ncli + n; i++)
        wl_keeper_set_target_flags(
            D.k, all[i], D.fleet || (i >= D.ncli && all[i] != lines[i - D.ncli]) ? WL_PG_FLEET : 0);
    free(all);
    wlc_free_lines(lines, n);
    if (r < 0) {
        LOG("error", "cannot set the targets", "error", wl_strerror(r), NULL);
        return -1;
    }
    return 0;
}

/* ---- signals: a signalfd on the keeper's loop ---- */

/* systemd's reload protocol, once READY=1 was sent (before it, a reload is part of the
 * start): RELOADING=1 with the CLOCK_MONOTONIC time it began, then READY=1 when the new
 * configuration is in place. */
static void reloading(void)
{
    struct timespec ts;
    char msg[96];

    if (!D.ready_sent)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    wlc_fmt(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
            (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    sd_send(msg);
}

static void reloaded(void)
{
    char msg[640];

    if (!D.ready_sent)
        return;
    if (D.tfd >= 0) {
        status_line(D.status, sizeof(D.status));
        wlc_fmt(msg, sizeof(msg), "READY=1\nSTATUS=%s", D.status);
        sd_send(msg);
    } else
        sd_send("READY=1");
}

static void on_signal(void *arg)
{
    struct signalfd_siginfo si;

    (void)arg;
    while (read(D.sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            LOG("info", "SIGHUP: reloading", NULL);
            reloading();
            load_warm_sql();
            load_targets(1);
            reloaded();
        } else {
            LOG("info", si.ssi_signo == SIGTERM ? "SIGTERM: stopping" : "SIGINT: stopping", NULL);
            wl_keeper_stop(D.k);
        }
    }
}

/* ---- the background ---- */

/* Without --foreground: fork, and let the parent exit once the child has its segment
 * open (its exit status says whether it could). */
static int background(int *report_fd)
{
    int p[2], st, null;
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
    if ((null = open("/dev/null", O_RDWR | O_CLOEXEC)) >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        if (null > 2)
            close(null);
    }
    *report_fd = p[1];
    return 0;
}

static void report_started(int report_fd)
{
    if (report_fd < 0)
        return;
    if (write(report_fd, "k", 1) < 0) { /* the parent then exits 0 */
    }
    close(report_fd);
}

/* ---- main ---- */

static int start_keeper(void)
{
    struct wl_keeper_opts o = {
        .shm = D.shm,
        .open = {.mode = D.mode},
        .interval_ms = D.interval_ms,
        .application_name = "warmlockd",
        .on_event = on_event,
    };
    char name[WL_NAME_MAX + 1];
    int r;

    if ((r = wl_keeper_new(&o, &D.k)) == 0)
        return 0;
    if (D.shm)
        snprintf(name, sizeof(name), "%s", D.shm);
    else if (wl_default_name(name, sizeof(name)) < 0)
        snprintf(name, sizeof(name), "(default)");
    fprintf(stderr, "warmlockd: cannot open segment %s: %s\n", name,
            wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
    return -1;
}

int main(int argc, char **argv)
{
    sigset_t mask;
    char pid[24], iv[24];
    int r, report_fd = -1, rc = 0;

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
    sigprocmask(SIG_BLOCK, &mask, NULL);
    if ((D.sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
        fprintf(stderr, "warmlockd: cannot create its signal descriptor: %s\n", strerror(errno));
        return 1;
    }
    if (start_keeper() < 0) {
        rc = 1;
        goto out;
    }
    if (load_warm_sql() < 0 || load_targets(0) < 0 ||
        (r = wl_keeper_watch_fd(D.k, D.sfd, on_signal, NULL)) < 0 || status_start() < 0) {
        fprintf(stderr, "warmlockd: cannot start: see the log line above\n");
        rc = 1;
        goto out;
    }
    report_started(report_fd);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    snprintf(iv, sizeof(iv), "%" PRIu32, D.interval_ms);
    LOG("info", "started", "segment", wl_name(wl_keeper_segment(D.k)), "pid", pid, "interval_ms",
        iv, "backend", wl_keeper_backend(D.k), NULL);
    if ((r = wl_keeper_run(D.k, -1)) < 0) {
        LOG("error", "the event loop failed", "error", strerror(-r), NULL);
        rc = 1;
    }
    wlc_sd_notify("STOPPING=1\nSTATUS=stopping");
    /* Warm-ups in flight are cancelled: their slots go STALE, so applications with time
     * left carry on (one of them probes); READY slots stay READY. */
    wl_keeper_free(D.k);
    D.k = NULL;
    LOG("info", "stopped", NULL);
out:
    wl_keeper_free(D.k);
    free(D.cli_targets);
    wlc_free_lines(D.conninfos, D.nconninfos);
    wlc_free_lines(D.keys, D.nkeys);
    if (D.tfd >= 0)
        close(D.tfd);
    close(D.sfd);
    return rc;
}
