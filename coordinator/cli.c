/*
 * warmlock: the command-line tool. Reads and steers the shared segment, and gates any
 * program on a warm database (wait, exec) without linking C. Parses options and calls the
 * library through its public API; rendering and parsing live in common.c.
 *
 * Exit codes: 0 ready / done, 1 not ready or refused (one line on stderr), 2 usage.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#define EXIT_NOTREADY 1
#define EXIT_USAGE 2

#ifdef WL_PG_KEY_MAX
#define KEY_BUF WL_PG_KEY_MAX
#else
#define KEY_BUF 8192
#endif

static const char usage_text[] =
    "usage: warmlock [--shm NAME] COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "Commands:\n"
    "  status [--json]                 the slots: state, epoch, leader, counters, last error\n"
    "  wait [--timeout S] [--fail-fast] [--max-age S] [--warm-sql FILE] [--fleet] CONNINFO\n"
    "                                  return once CONNINFO's server is warm and verified\n"
    "  exec [--timeout S] [--fail-fast] [--max-age S] [--warm-sql FILE] [--fleet] CONNINFO\n"
    "       -- CMD [ARG...]            wait, then run CMD with WARMLOCK_EPOCH set\n"
    "  check [--max-age S] CONNINFO    0 if CONNINFO is READY (verified within S seconds);\n"
    "                                  reads the segment only\n"
    "  invalidate [--epoch N] CONNINFO mark CONNINFO stale if it is still READY at epoch N\n"
    "                                  (default $WARMLOCK_EPOCH, else the current one); one\n"
    "                                  process re-verifies for all\n"
    "  forget [--key] CONNINFO         free CONNINFO's slot (a target no longer used, a\n"
    "                                  mistyped one); refused while it is warming or has\n"
    "                                  waiters; --key: the argument is a key as status shows it\n"
    "  metrics                         Prometheus text exposition of every slot\n"
    "  reset [--force]                 return every slot to cold and clear its counters;\n"
    "                                  refused while a warm-up runs unless --force\n"
    "  unlink [--force]                remove the segment (also one that is broken); refused\n"
    "                                  while a process has it open unless --force\n"
    "\n"
    "Options (every command):\n"
    "  --shm NAME      the segment (default $WARMLOCK_SHM, then /warmlock.<uid>)\n"
    "  --help          this text\n"
    "  --version       the version\n"
    "\n"
    "--timeout is in seconds (decimals allowed), default 30. --fail-fast: during an outage,\n"
    "fail at once with the current error instead of waiting for the server. --max-age S:\n"
    "READY older than S seconds is re-verified first. --fleet: the --warm-sql runs once per\n"
    "server start for every host sharing the target (a PostgreSQL advisory lock elects one\n"
    "host; the others wait for it, then only verify; see README \"Fleet mode\" for what the\n"
    "role needs). On a terminal, a wait longer than 1 s says on stderr what it waits for.\n"
    "status, metrics and check never create or change a segment. Exit status: 0 ready or\n"
    "done, 1 not ready or refused (the reason on stderr), 2 usage error; exec exits with\n"
    "CMD's status, or 126/127 if CMD cannot be run.\n";

enum { C_STATUS, C_WAIT, C_EXEC, C_CHECK, C_INVALIDATE, C_METRICS, C_RESET, C_UNLINK, C_FORGET,
       C_N };
static const char *const cmd_names[C_N] = {"status", "wait", "exec", "check", "invalidate",
                                           "metrics", "reset", "unlink", "forget"};
#define B(c) (1u << (c))
#define ALL (B(C_N) - 1u)

/* Options: which commands take them, and whether they take a value. */
static const struct opt {
    const char *name;
    unsigned cmds;
    int value;
} options[] = {
    {"--shm", ALL, 1},
    {"--json", B(C_STATUS), 0},
    {"--force", B(C_RESET) | B(C_UNLINK), 0},
    {"--timeout", B(C_WAIT) | B(C_EXEC), 1},
    {"--warm-sql", B(C_WAIT) | B(C_EXEC), 1},
    {"--fail-fast", B(C_WAIT) | B(C_EXEC), 0},
    {"--fleet", B(C_WAIT) | B(C_EXEC), 0},
    {"--max-age", B(C_WAIT) | B(C_EXEC) | B(C_CHECK), 1},
    {"--epoch", B(C_INVALIDATE), 1},
    {"--key", B(C_FORGET), 0},
};

struct cli {
    int cmd; /* C_*, -1 none yet */
    const char *shm;
    int json, force, fail_fast, have_epoch, fleet, by_key;
    uint32_t timeout_ms, max_age_ms;
    uint64_t epoch;
    const char *warm_sql_path;
    const char *conninfo;
    char **argv; /* exec: the command */
};

static int usage_error(const char *fmt, const char *a, const char *b)
{
    fputs("warmlock: ", stderr);
    fprintf(stderr, fmt, a, b);
    fputs(" (try warmlock --help)\n", stderr);
    return EXIT_USAGE;
}

static int fail(const char *what, const char *why)
{
    char msg[1024];
    wlc_copy(msg, sizeof(msg), why);
    fprintf(stderr, "warmlock: %s: %s\n", what, wlc_oneline(msg));
    return EXIT_NOTREADY;
}

/* The key of conninfo's slot in seg, the key the engine itself uses. */
static int slot_key(struct wl_segment *seg, const char *conninfo, char *buf, size_t len)
{
    return wl_pg_slot_key(seg, conninfo, buf, len);
}

static int parse_epoch(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return *end || errno ? -EINVAL : 0;
}

static int takes_conninfo(int cmd)
{
    return cmd == C_WAIT || cmd == C_EXEC || cmd == C_CHECK || cmd == C_INVALIDATE ||
           cmd == C_FORGET;
}

/* Parse argv into c; returns -1 to go on, else an exit status. */
static int parse(int argc, char **argv, struct cli *c)
{
    const char *pos = NULL;
    int i, k, dashdash = 0;

    for (i = 1; i < argc; i++) {
        char *a = argv[i], *val = NULL, *eq;
        const struct opt *o = NULL;

        if (dashdash || a[0] != '-' || !a[1]) {
            if (c->cmd < 0) {
                for (k = 0; k < C_N; k++)
                    if (!strcmp(a, cmd_names[k]))
                        c->cmd = k;
                if (c->cmd < 0)
                    return usage_error("unknown command '%s'%s", a, "");
                continue;
            }
            if (pos && c->cmd == C_EXEC)
                return usage_error("exec: put -- between CONNINFO and the command ('%s')%s",
                                   a, "");
            if (pos || !takes_conninfo(c->cmd))
                return usage_error("%s: unexpected argument '%s'", cmd_names[c->cmd], a);
            pos = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            if (c->cmd == C_EXEC) {
                if (!pos)
                    return usage_error("exec: CONNINFO is missing before --%s%s", "", "");
                c->argv = &argv[i + 1];
                break;
            }
            dashdash = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (!strcmp(a, "--version")) {
            printf("warmlock %s (libwarmlock %s)\n", WL_VERSION_STRING, wl_version());
            return 0;
        }
        if ((eq = strchr(a, '='))) {
            *eq = '\0';
            val = eq + 1;
        }
        for (k = 0; k < (int)(sizeof(options) / sizeof(options[0])); k++)
            if (!strcmp(a, options[k].name))
                o = &options[k];
        if (!o)
            return usage_error("unknown option %s%s", a, "");
        if (c->cmd < 0 && o->cmds != ALL)
            return usage_error("%s goes after the command%s", a, "");
        if (c->cmd >= 0 && !(o->cmds & B(c->cmd)))
            return usage_error("%s does not apply to %s", a, cmd_names[c->cmd]);
        if (!o->value) {
            if (val)
                return usage_error("%s takes no value%s", a, "");
            *(!strcmp(a, "--json")    ? &c->json
              : !strcmp(a, "--force") ? &c->force
              : !strcmp(a, "--fleet") ? &c->fleet
              : !strcmp(a, "--key")   ? &c->by_key
                                      : &c->fail_fast) = 1;
            continue;
        }
        if (!val) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value%s", a, "");
            val = argv[++i];
        }
        if (!strcmp(a, "--shm")) {
            if (!*val)
                return usage_error("--shm needs a name%s%s", "", "");
            c->shm = val;
        } else if (!strcmp(a, "--warm-sql")) {
            c->warm_sql_path = val;
        } else if (!strcmp(a, "--timeout")) {
            if (wlc_parse_seconds(val, 1, 86400u * 1000u, &c->timeout_ms) < 0)
                return usage_error("bad --timeout '%s': want seconds between 0.001 and "
                                   "86400%s", val, "");
        } else if (!strcmp(a, "--max-age")) {
            if (wlc_parse_seconds(val, 1, 86400u * 1000u, &c->max_age_ms) < 0)
                return usage_error("bad --max-age '%s': want seconds between 0.001 and "
                                   "86400%s", val, "");
        } else if (!strcmp(a, "--epoch")) {
            if (parse_epoch(val, &c->epoch) < 0)
                return usage_error("bad --epoch '%s': want a whole number%s", val, "");
            c->have_epoch = 1;
        }
    }
    if (c->cmd < 0)
        return usage_error("no command given%s%s", "", "");
    if (takes_conninfo(c->cmd)) {
        if (!pos)
            return usage_error("%s: CONNINFO is missing%s", cmd_names[c->cmd], "");
        c->conninfo = pos;
    }
    if (c->cmd == C_EXEC && (!c->argv || !c->argv[0]))
        return usage_error("exec: no command after --%s%s", "", "");
    if (c->cmd == C_INVALIDATE && !c->have_epoch) {
        const char *env = getenv("WARMLOCK_EPOCH");
        if (env && *env) {
            if (parse_epoch(env, &c->epoch) < 0)
                return usage_error("bad $WARMLOCK_EPOCH '%s': want a whole number%s", env,
                                   "");
            c->have_epoch = 1;
        }
    }
    return -1;
}

/*
 * Open the segment: `existing` never creates one. On failure prints the library's one-line
 * reason and returns the exit status (2 for a bad name: it came from the command line or
 * $WARMLOCK_SHM). ENOENT is left to the caller (*seg NULL, returns -1) when quiet_enoent.
 */
static int open_seg(const struct cli *c, int existing, int quiet_enoent, struct wl_segment **seg)
{
    struct wl_open_opts o = {0};
    int r;

    o.flags = existing ? WL_OPEN_EXISTING : 0;
    if ((r = wl_open(c->shm, &o, seg)) == 0)
        return 0;
    *seg = NULL;
    if (r == -ENOENT && quiet_enoent)
        return -1;
    fail(cmd_names[c->cmd], wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
    return r == -EINVAL ? EXIT_USAGE : EXIT_NOTREADY;
}

static int cmd_show(const struct cli *c)
{
    char name[WL_NAME_MAX + 1], missing[512];
    struct wl_segment *seg;
    struct wl_slot_info *s = NULL;
    int n = 0, r;

    /* metrics on a name with no segment: an empty exposition (nothing to report yet);
     * status --json: an object with no slots, so that a reader always parses JSON, and
     * still exit 1 with the reason on stderr, as the table does */
    r = open_seg(c, 1, c->cmd == C_METRICS || c->json, &seg);
    if (r > 0)
        return r;
    wlc_copy(missing, sizeof(missing), seg ? "" : wl_last_error());
    if (seg) {
        wlc_copy(name, sizeof(name), wl_name(seg));
        if ((n = wlc_snapshot_all(seg, &s)) < 0) {
            wl_close(seg);
            return fail("cannot read the segment", wl_strerror(n));
        }
    } else if (c->shm) {
        wlc_copy(name, sizeof(name), c->shm);
    } else if (wl_default_name(name, sizeof(name)) < 0) {
        name[0] = '\0';
    }
    if (c->cmd == C_METRICS)
        r = wlc_format_prometheus(stdout, name, s, (size_t)n);
    else if (c->json)
        r = wlc_format_json(stdout, name, s, (size_t)n);
    else
        r = wlc_format_table(stdout, s, (size_t)n);
    free(s);
    wl_close(seg);
    if (r < 0)
        return fail("cannot write the output", strerror(-r));
    if (!seg && c->cmd == C_STATUS)
        return fail("status", missing[0] ? missing : wl_strerror(-ENOENT));
    return 0;
}

static int cmd_reset(const struct cli *c)
{
    struct wl_segment *seg;
    int r = open_seg(c, 1, 0, &seg);

    if (r > 0)
        return r;
    r = wl_reset(seg, c->force);
    wl_close(seg);
    if (r == -EBUSY)
        return fail("reset", "a warm-up is in flight; wait for it or use --force (its "
                             "leader's result is then discarded)");
    if (r < 0)
        return fail("reset", wl_strerror(r));
    if (r > 0)
        fprintf(stderr, "warmlock: reset: %d warm-up(s) were in flight and are discarded\n",
                r);
    return 0;
}

static int cmd_unlink(const struct cli *c)
{
    char name[WL_NAME_MAX + 1];
    int r;

    if (c->shm)
        wlc_copy(name, sizeof(name), c->shm);
    else if ((r = wl_default_name(name, sizeof(name))) < 0)
        return fail("unlink", wl_strerror(r));
    r = c->force ? wl_unlink(name) : wl_unlink_unused(name);
    if (r == -EBUSY) {
        char msg[1024];
        wlc_fmt(msg, sizeof(msg), "%s (--force removes it anyway)", wl_last_error());
        return fail("unlink", msg);
    }
    if (r < 0) {
        fail("unlink", wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
        return r == -EINVAL ? EXIT_USAGE : EXIT_NOTREADY;
    }
    printf("removed %s\n", name);
    return 0;
}

/* The slot of c->conninfo in an existing segment: 0 with *seg open and the key in key[];
 * else the exit status, after one line on stderr. */
static int find_target(const struct cli *c, struct wl_segment **seg, char *key, size_t keylen,
                       struct wl_slot_info *info)
{
    int r = open_seg(c, 1, 0, seg);

    if (r > 0)
        return r;
    if ((r = slot_key(*seg, c->conninfo, key, keylen)) < 0) {
        wl_close(*seg);
        return fail("invalid CONNINFO", key);
    }
    if ((r = wl_lookup(*seg, key, info)) < 0) {
        wl_close(*seg);
        return fail(cmd_names[c->cmd], r == -ENOENT ? "no slot for this target in the segment"
                                                    : wl_strerror(r));
    }
    return 0;
}

static int cmd_invalidate(const struct cli *c)
{
    static char key[KEY_BUF];
    struct wl_segment *seg;
    struct wl_slot_info info;
    uint64_t epoch;
    int r;

    if ((r = find_target(c, &seg, key, sizeof(key), &info)) != 0)
        return r;
    epoch = c->have_epoch ? c->epoch : info.epoch;
    if (info.state != WL_READY) {
        printf("%s is %s; nothing to invalidate\n", key, wl_state_name(info.state));
        r = 0;
    } else if (epoch < info.epoch) {
        printf("%s: epoch %" PRIu64 " is older than the current epoch %" PRIu64
               "; nothing changed\n", key, epoch, info.epoch);
        r = 0;
    } else {
        r = wl_invalidate(seg, key, epoch);
        if (r == 1)
            printf("%s: epoch %" PRIu64 " invalidated\n", key, epoch);
        else if (r == 0)
            printf("%s: epoch %" PRIu64 " is not the current one; nothing changed\n", key,
                   epoch);
    }
    wl_close(seg);
    if (r < 0)
        return fail("invalidate", wl_strerror(r));
    return 0;
}

/* Free the target's slot: the library refuses while a leader warms it or callers wait. */
static int cmd_forget(const struct cli *c)
{
    static char key[KEY_BUF];
    struct wl_segment *seg;
    int r = open_seg(c, 1, 0, &seg);

    if (r > 0)
        return r;
    if (c->by_key)
        wlc_copy(key, sizeof(key), c->conninfo);
    else if (slot_key(seg, c->conninfo, key, sizeof(key)) < 0) {
        wl_close(seg);
        return fail("invalid CONNINFO", key);
    }
    r = wl_forget(seg, key);
    wl_close(seg);
    if (r < 0) {
        char msg[KEY_BUF + 512];
        wlc_fmt(msg, sizeof(msg), "%s: %s", key, wl_last_error()[0] ? wl_last_error()
                                                                      : wl_strerror(r));
        return fail("forget", msg);
    }
    printf("forgot %s; its slot is free\n", key);
    return 0;
}

/* The healthcheck: the segment only (never the database, never creating anything). 0 when
 * READY, and with --max-age verified within it (the time the host slept since counts);
 * else 1 with the state, the stage, the outage and the last error on one line. */
static int cmd_check(const struct cli *c)
{
    static char key[KEY_BUF];
    struct wl_segment *seg;
    struct wl_slot_info info;
    char msg[1024], down[48] = "";
    int r;

    if ((r = find_target(c, &seg, key, sizeof(key), &info)) != 0)
        return r;
    wl_close(seg);
    if (info.state == WL_READY && (!c->max_age_ms || (info.verified_age_ms >= 0 &&
                                                      info.verified_age_ms <= c->max_age_ms))) {
        printf("ready (epoch %" PRIu64 ", verified %lld ms ago)\n", info.epoch,
               (long long)info.verified_age_ms);
        return 0;
    }
    if (info.down_ms >= 0)
        wlc_fmt(down, sizeof(down), ", down for %lld ms", (long long)info.down_ms);
    if (info.state == WL_READY)
        wlc_fmt(msg, sizeof(msg), "ready, but last verified %lld ms ago (more than --max-age "
                "%u ms): nothing has checked it since", (long long)info.verified_age_ms,
                c->max_age_ms);
    else
        wlc_fmt(msg, sizeof(msg), "%s (stage %s%s)%s%s", wl_state_name(info.state),
                wl_stage_name(info.stage), down, info.last_error[0] ? "; last error: " : "",
                info.last_error);
    return fail("check", msg);
}

/*
 * wait and exec on a terminal: one line on stderr if the wait lasts longer than
 * PROGRESS_MS, so a person knows what it waits for (nothing is printed when stderr is a
 * pipe or a file, nor when the target is ready in time). A thread of its own, since the
 * wait is one blocking call; it is joined before anything else is printed.
 */
#define PROGRESS_MS 1000
struct progress {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, running;
    pthread_t th;
    struct wl_segment *seg;
    const struct cli *c;
};

static void *progress_main(void *arg)
{
    static char key[KEY_BUF];
    struct progress *p = arg;
    struct wl_slot_info info;
    struct timespec at;
    char err[160], msg[KEY_BUF + 512], down[48] = "";
    int r = 0;

    clock_gettime(CLOCK_MONOTONIC, &at);
    at.tv_sec += PROGRESS_MS / 1000;
    at.tv_nsec += (long)(PROGRESS_MS % 1000) * 1000000L;
    if (at.tv_nsec >= 1000000000L) {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&p->mu);
    while (!p->done && r != ETIMEDOUT)
        r = pthread_cond_timedwait(&p->cv, &p->mu, &at);
    r = p->done;
    pthread_mutex_unlock(&p->mu);
    if (r)
        return NULL;
    if (slot_key(p->seg, p->c->conninfo, key, sizeof(key)) < 0 ||
        wl_lookup(p->seg, key, &info) < 0) {
        fprintf(stderr, "warmlock: %s: waiting for the target (up to %.3g s)...\n",
                cmd_names[p->c->cmd], (p->c->timeout_ms ? p->c->timeout_ms : 30000) / 1000.0);
        return NULL;
    }
    wlc_copy(err, sizeof(err), info.last_error);
    wlc_oneline(err);
    if (info.down_ms >= 0)
        wlc_fmt(down, sizeof(down), ", down for %.1f s", info.down_ms / 1000.0);
    wlc_fmt(msg, sizeof(msg), "waiting for %s (up to %.3g s): %s%s%s%s%s", key,
            (p->c->timeout_ms ? p->c->timeout_ms : 30000) / 1000.0, wl_state_name(info.state),
            info.leader_alive && info.leader_pid != getpid() ? " by another process" : "",
            down, err[0] ? "; last error: " : "", err);
    fprintf(stderr, "warmlock: %s: %s\n", cmd_names[p->c->cmd], msg);
    return NULL;
}

static void progress_start(struct progress *p, struct wl_segment *seg, const struct cli *c)
{
    pthread_condattr_t ca;

    memset(p, 0, sizeof(*p));
    if (!isatty(STDERR_FILENO))
        return;
    p->seg = seg;
    p->c = c;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    p->running = pthread_create(&p->th, NULL, progress_main, p) == 0;
}

static void progress_stop(struct progress *p)
{
    if (!p->running)
        return;
    pthread_mutex_lock(&p->mu);
    p->done = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->th, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    p->running = 0;
}

static int cmd_ensure(const struct cli *c)
{
    struct progress prog;
    struct wl_pg_opts opts;
    struct wl_result res;
    struct wl_segment *seg;
    char *warm_sql = NULL, err[512], epoch[32];
    int r;

    memset(&opts, 0, sizeof(opts));
    opts.wait.timeout_ms = c->timeout_ms;
    opts.wait.max_age_ms = c->max_age_ms;
    if (c->fail_fast)
        opts.wait.flags |= WL_FAIL_FAST;
    if (c->fleet)
        opts.flags |= WL_PG_FLEET;
    if (c->warm_sql_path) {
        if (wlc_read_file(c->warm_sql_path, &warm_sql, err, sizeof(err)) < 0)
            return fail("--warm-sql", err);
        opts.warm_sql = warm_sql;
    }
    if ((r = open_seg(c, 0, 0, &seg)) > 0) {
        free(warm_sql);
        return r;
    }
    progress_start(&prog, seg, c);
    r = wl_pg_ensure(seg, c->conninfo, &opts, &res);
    progress_stop(&prog);
    wl_close(seg);
    free(warm_sql);
    if (r < 0)
        return fail(cmd_names[c->cmd], res.error[0] ? res.error : wl_strerror(r));
    if (c->cmd == C_WAIT)
        return 0;

    wlc_fmt(epoch, sizeof(epoch), "%" PRIu64, res.epoch);
    if (setenv("WARMLOCK_EPOCH", epoch, 1) < 0)
        return fail("exec", strerror(errno));
    fflush(stdout);
    execvp(c->argv[0], c->argv);
    r = errno;
    fprintf(stderr, "warmlock: exec: cannot run %s: %s\n", c->argv[0], strerror(r));
    return r == ENOENT ? 127 : 126;
}

int main(int argc, char **argv)
{
    struct cli c;
    int r;

    memset(&c, 0, sizeof(c));
    c.cmd = -1;
    if ((r = parse(argc, argv, &c)) >= 0)
        return r;
    switch (c.cmd) {
    case C_STATUS:
    case C_METRICS:
        return cmd_show(&c);
    case C_RESET:
        return cmd_reset(&c);
    case C_UNLINK:
        return cmd_unlink(&c);
    case C_INVALIDATE:
        return cmd_invalidate(&c);
    case C_CHECK:
        return cmd_check(&c);
    case C_FORGET:
        return cmd_forget(&c);
    default:
        return cmd_ensure(&c);
    }
}
