/*
 * warmlock: the command-line tool. Reads and steers the shared segment, and gates any
 * program on a warm database (wait, exec) without linking C. Parses options and calls the
 * library; rendering and parsing live in lib/format.c.
 *
 * Exit codes: 0 ready / done, 1 not ready or refused (one line on stderr), 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "warmlock.h"
#include "warmlock/pg.h"
/* after pg.h: internal.h declares the engine's internals over its types */
#include "lib/internal.h"

#define EXIT_NOTREADY 1
#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: warmlock [--shm NAME] COMMAND [OPTIONS] [ARGS]\n"
    "\n"
    "Commands:\n"
    "  status [--json]                 the slots: state, epoch, leader, counters, last error\n"
    "  wait [--timeout S] [--warm-sql FILE] CONNINFO\n"
    "                                  return once CONNINFO's server is warm and verified\n"
    "  exec [--timeout S] [--warm-sql FILE] CONNINFO -- CMD [ARG...]\n"
    "                                  wait, then run CMD with WARMLOCK_EPOCH set\n"
    "  invalidate CONNINFO             mark CONNINFO's current epoch stale (one process\n"
    "                                  re-verifies for all)\n"
    "  metrics                         Prometheus text exposition of every slot\n"
    "  reset [--force]                 return every slot to cold and clear its counters;\n"
    "                                  refused while a warm-up runs unless --force\n"
    "\n"
    "Options (every command):\n"
    "  --shm NAME      the segment (default $WARMLOCK_SHM, then /warmlock.<uid>)\n"
    "  --help          this text\n"
    "  --version       the version\n"
    "\n"
    "--timeout is in seconds (decimals allowed), default 30. Exit status: 0 ready or done,\n"
    "1 not ready or refused (the reason on stderr), 2 usage error; exec exits with CMD's\n"
    "status, or 126/127 if CMD cannot be run.\n";

struct cli {
    const char *cmd;
    const char *shm;
    int json, force;
    uint32_t timeout_ms;
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
    char msg[512];
    wl__copy(msg, sizeof(msg), why);
    fprintf(stderr, "warmlock: %s: %s\n", what, wl__oneline(msg));
    return EXIT_NOTREADY;
}

/* Which options a command takes. */
static int takes(const char *cmd, const char *opt)
{
    if (!strcmp(opt, "--shm"))
        return 1;
    if (!strcmp(cmd, "status"))
        return !strcmp(opt, "--json");
    if (!strcmp(cmd, "reset"))
        return !strcmp(opt, "--force");
    if (!strcmp(cmd, "wait") || !strcmp(cmd, "exec"))
        return !strcmp(opt, "--timeout") || !strcmp(opt, "--warm-sql");
    return 0;
}

/* Parse argv into c; returns -1 to go on, else an exit status. */
static int parse(int argc, char **argv, struct cli *c)
{
    static const char *const cmds[] = {"status", "wait", "exec", "invalidate", "metrics",
                                       "reset"};
    const char *pos[2] = {NULL, NULL};
    int i, npos = 0, dashdash = 0;
    size_t k;

    for (i = 1; i < argc; i++) {
        char *a = argv[i], *val = NULL, *eq;
        if (dashdash || a[0] != '-' || !a[1]) {
            if (!c->cmd) {
                for (k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++)
                    if (!strcmp(a, cmds[k]))
                        c->cmd = cmds[k];
                if (!c->cmd)
                    return usage_error("unknown command '%s'%s", a, "");
                continue;
            }
            if (npos == 1 && !strcmp(c->cmd, "exec"))
                return usage_error("exec: put -- between CONNINFO and the command ('%s')%s",
                                   a, "");
            if (npos == 1 || !(strcmp(c->cmd, "wait") == 0 || strcmp(c->cmd, "exec") == 0 ||
                               strcmp(c->cmd, "invalidate") == 0))
                return usage_error("%s: unexpected argument '%s'", c->cmd, a);
            pos[npos++] = a;
            continue;
        }
        if (!strcmp(a, "--")) {
            if (c->cmd && !strcmp(c->cmd, "exec")) {
                if (npos == 0)
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
        if (!takes(c->cmd ? c->cmd : "", a)) {
            if (!strcmp(a, "--shm") || !strcmp(a, "--json") || !strcmp(a, "--force") ||
                !strcmp(a, "--timeout") || !strcmp(a, "--warm-sql"))
                return c->cmd ? usage_error("%s does not apply to %s", a, c->cmd)
                          : usage_error("%s goes after the command%s", a, "");
            return usage_error("unknown option %s%s", a, "");
        }
        if (!strcmp(a, "--json") || !strcmp(a, "--force")) {
            if (val)
                return usage_error("%s takes no value%s", a, "");
            *(!strcmp(a, "--json") ? &c->json : &c->force) = 1;
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
            if (wl__parse_seconds(val, 1, 86400u * 1000u, &c->timeout_ms) < 0)
                return usage_error("bad --timeout '%s': want seconds between 0.001 and "
                                   "86400%s", val, "");
        }
    }
    if (!c->cmd)
        return usage_error("no command given%s%s", "", "");
    if (!strcmp(c->cmd, "wait") || !strcmp(c->cmd, "exec") || !strcmp(c->cmd, "invalidate")) {
        if (npos == 0)
            return usage_error("%s: CONNINFO is missing%s", c->cmd, "");
        c->conninfo = pos[0];
    }
    if (!strcmp(c->cmd, "exec") && (!c->argv || !c->argv[0]))
        return usage_error("exec: no command after --%s%s", "", "");
    return -1;
}

/* Open the segment only if it exists (status, metrics, invalidate and reset should not
 * create one). Returns 0, 1 if there is none, or an exit status after printing why. */
static int open_existing(const struct cli *c, struct wl_segment **seg, char *name, size_t len)
{
    int fd, r;

    *seg = NULL;
    if (c->shm)
        wl__copy(name, len, c->shm);
    else if ((r = wl_default_name(name, len)) < 0)
        return fail("cannot name the segment", wl_strerror(r));
    fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0 && errno == ENOENT)
        return 1;
    if (fd >= 0)
        close(fd);
    if ((r = wl_open(name, NULL, seg)) < 0) {
        char what[WL_NAME_MAX + 32];
        wl__fmt(what, sizeof(what), "cannot open segment %s", name);
        return fail(what, wl_last_error()[0] ? wl_last_error() : wl_strerror(r));
    }
    return 0;
}

static int cmd_show(const struct cli *c)
{
    char name[WL_NAME_MAX + 1];
    struct wl_segment *seg;
    struct wl_slot_info *s = NULL;
    int n = 0, r;

    r = open_existing(c, &seg, name, sizeof(name));
    if (r > 1)
        return r;
    if (r == 1 && !strcmp(c->cmd, "status"))
        return fail("status", "no segment (nothing has used warmlock here yet, or it was "
                              "removed)");
    if (seg && (n = wl__snapshot_all(seg, &s)) < 0) {
        wl_close(seg);
        return fail("cannot read the segment", wl_strerror(n));
    }
    if (!strcmp(c->cmd, "metrics"))
        r = wl__format_prometheus(stdout, name, s, (size_t)n);
    else if (c->json)
        r = wl__format_json(stdout, name, s, (size_t)n);
    else
        r = wl__format_table(stdout, s, (size_t)n);
    free(s);
    wl_close(seg);
    if (r < 0)
        return fail("cannot write the output", strerror(-r));
    return 0;
}

static int cmd_reset(const struct cli *c)
{
    char name[WL_NAME_MAX + 1];
    struct wl_segment *seg;
    int r = open_existing(c, &seg, name, sizeof(name));

    if (r > 1)
        return r;
    if (r == 1)
        return fail("reset", "no segment; nothing to reset");
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

static int cmd_invalidate(const struct cli *c)
{
    char name[WL_NAME_MAX + 1], key[WL_KEY_MAX + 1024];
    struct wl_segment *seg;
    struct wl_slot_info *s = NULL;
    int n, i, r;

    if ((r = wl_pg_key(c->conninfo, key, sizeof(key))) < 0)
        return fail("invalid CONNINFO", key);
    r = open_existing(c, &seg, name, sizeof(name));
    if (r > 1)
        return r;
    if (r == 1)
        return fail("invalidate", "no segment; nothing to invalidate");
    if ((n = wl__snapshot_all(seg, &s)) < 0) {
        wl_close(seg);
        return fail("cannot read the segment", wl_strerror(n));
    }
    i = wl__find_slot(s, (size_t)n, key);
    if (i < 0) {
        free(s);
        wl_close(seg);
        return fail("invalidate", "no slot for this target in the segment");
    }
    if (s[i].state != WL_READY) {
        printf("%s is %s; nothing to invalidate\n", key, wl_state_name(s[i].state));
        r = 0;
    } else {
        r = wl_invalidate(seg, key, s[i].epoch);
        if (r == 1)
            printf("%s: epoch %" PRIu64 " invalidated\n", key, s[i].epoch);
        else if (r == 0)
            printf("%s: epoch %" PRIu64 " had already changed; nothing to invalidate\n", key,
                   s[i].epoch);
    }
    free(s);
    wl_close(seg);
    if (r < 0)
        return fail("invalidate", wl_strerror(r));
    return 0;
}

static int cmd_ensure(const struct cli *c)
{
    struct wl_pg_opts opts;
    struct wl_result res;
    struct wl_segment *seg;
    char *warm_sql = NULL, err[512], epoch[32];
    int r;

    memset(&opts, 0, sizeof(opts));
    opts.wait.timeout_ms = c->timeout_ms;
    if (c->warm_sql_path) {
        if (wl__read_file(c->warm_sql_path, &warm_sql, err, sizeof(err)) < 0)
            return fail("--warm-sql", err);
        opts.warm_sql = warm_sql;
    }
    if ((r = wl_open(c->shm, NULL, &seg)) < 0) {
        free(warm_sql);
        return fail("cannot open the segment", wl_last_error()[0] ? wl_last_error()
                                                                  : wl_strerror(r));
    }
    r = wl_pg_ensure(seg, c->conninfo, &opts, &res);
    wl_close(seg);
    free(warm_sql);
    if (r < 0)
        return fail(c->cmd, res.error[0] ? res.error : wl_strerror(r));
    if (!strcmp(c->cmd, "wait"))
        return 0;

    wl__fmt(epoch, sizeof(epoch), "%" PRIu64, res.epoch);
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
    if ((r = parse(argc, argv, &c)) >= 0)
        return r;
    if (!strcmp(c.cmd, "status") || !strcmp(c.cmd, "metrics"))
        return cmd_show(&c);
    if (!strcmp(c.cmd, "reset"))
        return cmd_reset(&c);
    if (!strcmp(c.cmd, "invalidate"))
        return cmd_invalidate(&c);
    return cmd_ensure(&c);
}
