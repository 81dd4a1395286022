/* warmlockd under supervisors and in deployments, run for real: the systemd notification
 * datagrams on a fake $NOTIFY_SOCKET while a server is held in recovery, reload and stop;
 * one log line for a failure that repeats with changing timings; the warning about a
 * --config readable by others that holds a password; the unit (systemd-analyze verify),
 * the man pages (groff, man -l), the bash completion, and the deployment examples (YAML, the
 * s6 run script with a real notification descriptor). What a tool missing here would check
 * says skipped, with the tool's name. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"

#ifndef WL_TEST_SRCDIR
#error "meson passes WL_TEST_SRCDIR"
#endif

#define PASSWORD "0ps-Sw0rd-9e1f"
#define MS       1000000ull
/* Few connections, so that the test can fill the server (53300) cheaply. */
#define MAX_CONN 8

WLT_PG_SUITE

static char CI[1024]; /* the suite's conninfo, with the password */
static char DIR_[64]; /* scratch directory */
static unsigned nseq; /* for unique file names */

#define RUN(r, timeout, ...) WLT_RUN((r), DIR_, (timeout), __VA_ARGS__)

static int group_setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wltest-ops.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    chmod(DIR_, 0755);
    if (!(pg_reason = pgh_suite_up(&H, PASSWORD,
                                   "max_connections = 8\nsuperuser_reserved_connections = 0\n")))
        have_pg = snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD) > 0;
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[128];
    pg_group_teardown(state);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", DIR_);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", DIR_);
    return 0;
}

/* A program that is there, or NULL: the first of the candidates that is executable. */
static const char *tool(const char *name)
{
    static char buf[4][256];
    static unsigned k;
    const char *dirs[] = {"/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin"};
    char *b = buf[k++ % 4];
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(b, 256, "%s/%s", dirs[i], name);
        if (access(b, X_OK) == 0)
            return b;
    }
    return NULL;
}

#define NEED_TOOL(path, name)                                                                      \
    do {                                                                                           \
        if (!(path)) {                                                                             \
            print_message("skipped: %s is not installed\n", (name));                               \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static int count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    const char *line = text, *nl;
    char buf[4096];
    for (; *line; line = nl + 1) {
        size_t len;
        nl = strchr(line, '\n');
        len = nl ? (size_t)(nl - line) : strlen(line);
        if (len >= sizeof(buf))
            len = sizeof(buf) - 1;
        memcpy(buf, line, len);
        buf[len] = '\0';
        n += strstr(buf, needle) != NULL;
        if (!nl)
            break;
    }
    return n;
}

/* ---------------------------------------------------------------- the daemon */

struct daemon {
    pid_t pid;
    char log[160];
};

/* Start warmlockd --foreground on shm with these options (NULL-terminated), its stderr
 * into a log file; keep_fd stays open in it. */
static void daemon_start(struct daemon *d, const char *shm, const char *const *opts, int keep_fd)
{
    char *argv[32];
    int n = 0;

    snprintf(d->log, sizeof(d->log), "%s/warmlockd%u.log", DIR_, nseq++);
    argv[n++] = (char *)WL_WARMLOCKD;
    argv[n++] = (char *)"--foreground";
    argv[n++] = (char *)"--shm";
    argv[n++] = (char *)shm;
    for (; *opts && n < 31; opts++)
        argv[n++] = (char *)*opts;
    argv[n] = NULL;
    d->pid = wlt_spawn_exec(argv, NULL, d->log, keep_fd);
    assert_true(d->pid > 0);
}

static int daemon_stop(struct daemon *d)
{
    int st;
    if (d->pid <= 0)
        return 0;
    kill(d->pid, SIGTERM);
    st = wlt_wait(d->pid, 10000);
    d->pid = 0;
    return st;
}

/* Wait until the daemon's log holds needle; 0, or -1 after timeout_ms. */
static int log_wait(const struct daemon *d, const char *needle, unsigned timeout_ms)
{
    static char buf[262144];
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * MS;
    do {
        wlt_slurp(d->log, buf, sizeof(buf));
        if (strstr(buf, needle))
            return 0;
        wlt_sleep_ms(10);
    } while (wlt_now_ns() < end);
    return -1;
}

static char *log_read(const struct daemon *d)
{
    char *buf = calloc(1, 262144);
    assert_non_null(buf);
    wlt_slurp(d->log, buf, 262144);
    return buf;
}

/* ---------------------------------------------------------------- a fake $NOTIFY_SOCKET */

struct notify {
    int fd;
    char name[108];   /* as $NOTIFY_SOCKET spells it: "@..." */
    char seen[65536]; /* every datagram, each followed by "\n--\n" */
};

/* A datagram socket in the abstract namespace, as systemd may hand one out. */
static void notify_open(struct notify *n)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    socklen_t len;

    n->seen[0] = '\0';
    snprintf(n->name, sizeof(n->name), "@wltest-notify.%d.%u", (int)getpid(), nseq++);
    len = (socklen_t)strlen(n->name);
    memcpy(sa.sun_path, n->name, len);
    sa.sun_path[0] = '\0';
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(n->fd >= 0);
    assert_int_equal(bind(n->fd, (struct sockaddr *)&sa,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)),
                     0);
}

/* Receive datagrams until one contains every needle (NULL-terminated list), bounded by
 * timeout_ms; that datagram into out. 0, or -1 on timeout. */
static int notify_until(struct notify *n, unsigned timeout_ms, char *out, size_t outlen, ...)
{
    uint64_t end = wlt_now_ns() + (uint64_t)timeout_ms * MS;
    char buf[4096];

    for (;;) {
        struct pollfd pf = {.fd = n->fd, .events = POLLIN};
        uint64_t now = wlt_now_ns();
        ssize_t len;
        const char *needle;
        int all = 1;
        va_list ap;

        if (now >= end || poll(&pf, 1, (int)((end - now) / MS) + 1) != 1)
            return -1;
        if ((len = recv(n->fd, buf, sizeof(buf) - 1, 0)) <= 0)
            return -1;
        buf[len] = '\0';
        if (strlen(n->seen) + (size_t)len + 8 < sizeof(n->seen)) {
            strcat(n->seen, buf);
            strcat(n->seen, "\n--\n");
        }
        va_start(ap, outlen);
        while ((needle = va_arg(ap, const char *)))
            all &= strstr(buf, needle) != NULL;
        va_end(ap);
        if (all) {
            snprintf(out, outlen, "%s", buf);
            return 0;
        }
    }
}

static uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* 1. While a server is held in recovery, the notify socket gets STATUS= lines naming the
 * target, its 57P03 and how long it has been down, each with EXTEND_TIMEOUT_USEC=, and no
 * READY=1; --notify-fd gets nothing. Released: READY=1, and the newline on --notify-fd.
 * SIGHUP: RELOADING=1 with MONOTONIC_USEC= (the time it began), then READY=1. SIGTERM:
 * STOPPING=1. */
static void test_notify_socket_status_extend_ready_through_a_held_recovery(void **state)
{
    const char *shm = wlt_segname();
    struct notify *n = calloc(1, sizeof(*n));
    struct daemon d;
    char dg[4096], fdarg[16], key[WL_PG_KEY_MAX], expect[WL_PG_KEY_MAX + 64];
    struct wl_segment *seg;
    unsigned long long usec;
    uint64_t t0, t1;
    const char *p;
    int pfd[2];

    (void)state;
    NEED_PG();
    pg_ensure_up();
    assert_non_null(n);
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    assert_int_equal(pgh_start_held(&H), 0);

    notify_open(n);
    assert_int_equal(pipe(pfd), 0); /* not O_CLOEXEC: the daemon inherits pfd[1] */
    snprintf(fdarg, sizeof(fdarg), "%d", pfd[1]);
    setenv("NOTIFY_SOCKET", n->name, 1);
    daemon_start(
        &d, shm,
        (const char *const[]){"--interval", "0.5", "--target", CI, "--notify-fd", fdarg, NULL},
        pfd[1]);
    unsetenv("NOTIFY_SOCKET");
    close(pfd[1]);

    /* the target's slot key, as the STATUS= line names it */
    assert_int_equal(log_wait(&d, "msg=started", 10000), 0);
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, CI, key, sizeof(key)) > 0);
    wl_close(seg);
    snprintf(expect, sizeof(expect), "STATUS=warming 1/1 target; %s: 57P03 for ", key);

    if (notify_until(n, 20000, dg, sizeof(dg), expect, "EXTEND_TIMEOUT_USEC=", NULL) < 0) {
        print_message("datagrams:\n%s", n->seen);
        pgh_dump_log(&H, 0);
        fail_msg("no STATUS= line with 57P03 and EXTEND_TIMEOUT_USEC= while held");
    }
    print_message("while held: %s\n", dg);
    assert_non_null(strstr(dg, "EXTEND_TIMEOUT_USEC=10000000"));
    assert_null(strstr(n->seen, "READY=1"));
    assert_null(strstr(n->seen, PASSWORD));
    {
        struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
        assert_int_equal(poll(&pf, 1, 0), 0); /* --notify-fd: nothing yet */
    }

    assert_int_equal(pgh_release(&H, 0), 0);
    if (notify_until(n, 30000, dg, sizeof(dg), "READY=1", NULL) < 0) {
        print_message("datagrams:\n%s", n->seen);
        fail_msg("no READY=1 after the release");
    }
    assert_non_null(strstr(dg, "STATUS=every target is warm (1)"));
    assert_null(strstr(n->seen, PASSWORD));
    /* the s6 convention, beside it: one newline, then EOF */
    assert_int_equal(read(pfd[0], dg, sizeof(dg)), 1);
    assert_int_equal(dg[0], '\n');
    assert_int_equal(read(pfd[0], dg, sizeof(dg)), 0);
    close(pfd[0]);

    /* reload: RELOADING=1 stamped with the time it began, then READY=1 */
    t0 = monotonic_us();
    kill(d.pid, SIGHUP);
    assert_int_equal(notify_until(n, 10000, dg, sizeof(dg), "RELOADING=1", NULL), 0);
    t1 = monotonic_us();
    assert_non_null(p = strstr(dg, "MONOTONIC_USEC="));
    usec = strtoull(p + strlen("MONOTONIC_USEC="), NULL, 10);
    assert_true(usec >= t0 && usec <= t1);
    assert_int_equal(notify_until(n, 10000, dg, sizeof(dg), "READY=1", NULL), 0);

    kill(d.pid, SIGTERM);
    assert_int_equal(notify_until(n, 10000, dg, sizeof(dg), "STOPPING=1", NULL), 0);
    assert_int_equal(daemon_stop(&d), 0);
    close(n->fd);
    free(n);
    wl_unlink(shm);
}

/* 2. A check connection refused for want of room (53300) again and again: libpq's message
 * for it holds the attempt's duration ("after 1 attempt over 7 ms"), which changes every
 * time. The daemon logs it once (then every 30 s), not once per check. */
static void test_a_refusal_with_changing_timings_is_logged_once(void **state)
{
    const char *shm = wlt_segname();
    struct wlt_run *r = wlt_newrun();
    PGconn *fill[4 * MAX_CONN];
    int nfill = 0, refused = 0, i, lines, st;
    struct daemon d;
    uint64_t end;
    char *log;
    long mark;

    (void)state;
    NEED_PG();
    pg_ensure_up();
    /* READY before the daemon starts: it then opens a check connection, no warm-up */
    RUN(r, 30000, WL_WARMLOCK, "--shm", (char *)shm, "wait", "--timeout", "20", CI);
    assert_int_equal(r->status, 0);
    /* fill the server */
    while (nfill < (int)(sizeof(fill) / sizeof(fill[0]))) {
        PGconn *c = PQconnectdb(CI);
        if (PQstatus(c) != CONNECTION_OK) {
            assert_non_null(strstr(PQerrorMessage(c), "too many clients"));
            PQfinish(c);
            break;
        }
        fill[nfill++] = c;
    }
    assert_true(nfill <= MAX_CONN);
    mark = pgh_log_mark(&H);
    daemon_start(&d, shm, (const char *const[]){"--interval", "0.1", "--target", CI, NULL}, -1);
    /* six refused checks, as the server saw them */
    end = wlt_now_ns() + 30000 * MS;
    while ((refused = pgh_count_log_since(&H, mark, "too many clients")) < 6 && wlt_now_ns() < end)
        wlt_sleep_ms(20);
    st = daemon_stop(&d);
    for (i = 0; i < nfill; i++) /* first: the next tests need the room */
        PQfinish(fill[i]);
    assert_int_equal(st, 0);
    log = log_read(&d);
    lines = count_lines_with(log, "check connection refused");
    print_message("%d checks refused by the server, %d log lines about it\n", refused, lines);
    if (refused < 6 || lines != 1)
        print_message("%s", log);
    assert_true(refused >= 6);
    assert_int_equal(lines, 1);
    assert_non_null(strstr(log, "sqlstate=53300"));
    free(log);
    free(r);
    wl_unlink(shm);
}

/* 3. A --config holding a password, readable by group or others: one warning line naming
 * the file and its mode, never the password; none when the file is 0600 or holds no
 * password. No server needed: the targets point nowhere. */
static void config_case(const char *text, mode_t mode, int want)
{
    const char *shm = wlt_segname();
    char conf[128];
    struct daemon d;
    char *log;
    int n;

    snprintf(conf, sizeof(conf), "%s/targets%u.conf", DIR_, nseq++);
    wlt_write_file(conf, mode, text);
    daemon_start(&d, shm, (const char *const[]){"--config", conf, NULL}, -1);
    assert_int_equal(log_wait(&d, "msg=started", 10000), 0);
    assert_int_equal(daemon_stop(&d), 0);
    log = log_read(&d);
    n = count_lines_with(log, "readable by group or others");
    if (n != want)
        print_message("mode %04o, want %d warning(s):\n%s", (unsigned)mode, want, log);
    assert_int_equal(n, want);
    if (want) {
        char m[32];
        snprintf(m, sizeof(m), "mode=%04o", (unsigned)mode);
        assert_non_null(strstr(log, m));
        assert_non_null(strstr(log, conf));
    }
    assert_null(strstr(log, "Secr3t"));
    free(log);
    wl_unlink(shm);
}

static void test_config_with_a_password_readable_by_others_warns_once(void **state)
{
    (void)state;
    config_case("# two targets, one password\n"
                "host=/nonexistent-wlt port=1 dbname=a password=Secr3t-kv\n"
                "host=/nonexistent-wlt port=1 dbname=b\n",
                0644, 1);
    config_case("postgresql://u:Secr3t-uri@/c?host=/nonexistent-wlt&port=1\n", 0640, 1);
    config_case("host=/nonexistent-wlt port=1 dbname=a password=Secr3t-kv\n", 0600, 0);
    config_case("host=/nonexistent-wlt port=1 dbname=a\n", 0644, 0);
}

/* ---------------------------------------------------------------- files that ship */

#define BUILD_UNIT WL_TEST_BUILDDIR "/coordinator/warmlockd.service"
#define BUILD_MAN1 WL_TEST_BUILDDIR "/doc/warmlock.1"
#define BUILD_MAN8 WL_TEST_BUILDDIR "/doc/warmlockd.8"

static void copy_file(const char *from, const char *to)
{
    static char buf[262144];
    size_t n = wlt_slurp(from, buf, sizeof(buf));
    assert_true(n > 0);
    wlt_write_file(to, 0644, buf);
}

/* 4. The generated unit: ExecStart is the prefix's sbindir (no placeholder left), it names
 * the man page that ships, WARMLOCK_SHM for the segment, SIGHUP for reload; and
 * `systemd-analyze verify` accepts it, the man pages found where the unit says (the
 * ExecStart path pointed at the built daemon, since nothing is installed here). */
static void test_unit_is_generated_and_passes_systemd_analyze_verify(void **state)
{
    const char *sa = tool("systemd-analyze");
    static char unit[16384], fixed[20000];
    char dir[128], path[192], manpath[160], *exec, *end;
    struct wlt_run *r;

    (void)state;
    assert_true(wlt_slurp(BUILD_UNIT, unit, sizeof(unit)) > 0);
    assert_null(strstr(unit, "@sbindir@"));
    assert_null(strstr(unit, "@prefix@"));
    assert_non_null(strstr(unit, "Documentation=man:warmlockd(8)"));
    assert_non_null(strstr(unit, "Environment=WARMLOCK_SHM="));
    assert_non_null(strstr(unit, "ExecReload=/bin/kill -HUP $MAINPID"));
    assert_non_null(strstr(unit, "Type=notify"));
    assert_non_null(exec = strstr(unit, "\nExecStart=/"));
    exec += strlen("\nExecStart=");
    assert_non_null(end = strchr(exec, ' '));
    assert_true(end - exec > 10 && !strncmp(end - 10, "/warmlockd", 10));
    print_message("ExecStart: %.*s\n", (int)(end - exec), exec);
    NEED_TOOL(sa, "systemd-analyze");

    snprintf(dir, sizeof(dir), "%s/unit%u", DIR_, nseq++);
    assert_int_equal(mkdir(dir, 0755), 0);
    snprintf(fixed, sizeof(fixed), "%.*s%s%s", (int)(exec - unit), unit, WL_WARMLOCKD, end);
    snprintf(path, sizeof(path), "%s/warmlockd.service", dir);
    wlt_write_file(path, 0644, fixed);
    snprintf(manpath, sizeof(manpath), "%s/man", dir);
    assert_int_equal(mkdir(manpath, 0755), 0);
    snprintf(path, sizeof(path), "%s/man8", manpath);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof(path), "%s/man8/warmlockd.8", manpath);
    copy_file(BUILD_MAN8, path);
    snprintf(path, sizeof(path), "%s/man1", manpath);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof(path), "%s/man1/warmlock.1", manpath);
    copy_file(BUILD_MAN1, path);

    setenv("MANPATH", manpath, 1);
    snprintf(path, sizeof(path), "%s/warmlockd.service", dir);
    r = wlt_newrun();
    RUN(r, 60000, (char *)sa, "verify", "--man=yes", path);
    unsetenv("MANPATH");
    print_message("systemd-analyze verify: exit %d%s%s", r->status, r->err[0] ? "\n" : "\n",
                  r->err);
    assert_int_equal(r->status, 0);
    assert_string_equal(r->err, "");
    free(r);
}

/* The commands listed under "Commands:" in warmlock --help, one per line, into out. */
static void help_commands(char *out, size_t len)
{
    struct wlt_run *r = wlt_newrun();
    const char *p;
    size_t n = 0;

    RUN(r, 10000, WL_WARMLOCK, "--help");
    assert_int_equal(r->status, 0);
    assert_non_null(p = strstr(r->out, "\nCommands:\n"));
    for (p = strchr(p + 1, '\n') + 1; *p == ' '; p = strchr(p, '\n') + 1) {
        if (p[0] == ' ' && p[1] == ' ' && p[2] >= 'a' && p[2] <= 'z') {
            size_t k = strcspn(p + 2, " \n");
            assert_true(n + k + 2 < len);
            memcpy(out + n, p + 2, k);
            n += k;
            out[n++] = '\n';
        }
    }
    out[n] = '\0';
    assert_true(n > 0);
    free(r);
}

/* Every --option in a program's --help, as roff spells it ("\-\-warm\-sql"), is in page. */
static void options_documented(const char *prog, const char *page_path)
{
    static char page[131072];
    struct wlt_run *r = wlt_newrun();
    const char *p;
    int missing = 0;

    assert_true(wlt_slurp(page_path, page, sizeof(page)) > 0);
    RUN(r, 10000, (char *)prog, "--help");
    assert_int_equal(r->status, 0);
    for (p = r->out; (p = strstr(p, "--")); p += 2) {
        char roff[128];
        size_t n = 0;
        const char *q = p;
        if (q[2] < 'a' || q[2] > 'z')
            continue;
        for (; (*q == '-' || (*q >= 'a' && *q <= 'z')) && n + 3 < sizeof(roff); q++) {
            if (*q == '-')
                roff[n++] = '\\';
            roff[n++] = *q;
        }
        roff[n] = '\0';
        if (!strstr(page, roff)) {
            print_message("%s: %s is not in %s\n", prog, roff, page_path);
            missing++;
        }
    }
    assert_int_equal(missing, 0);
    free(r);
}

/* 5. Both man pages render without a warning (groff -ww, and man -l), and document every
 * command and option the programs' --help lists. */
static void test_man_pages_render_and_cover_the_help(void **state)
{
    const char *groff = tool("groff"), *man = tool("man");
    const char *pages[] = {BUILD_MAN1, BUILD_MAN8};
    static char page[131072];
    char cmds[1024], *c, *nl;

    (void)state;
    help_commands(cmds, sizeof(cmds));
    assert_true(wlt_slurp(BUILD_MAN1, page, sizeof(page)) > 0);
    for (c = cmds; (nl = strchr(c, '\n')); c = nl + 1) {
        char b[64];
        *nl = '\0';
        snprintf(b, sizeof(b), "\n.B %.50s", c);
        if (!strstr(page, b))
            fail_msg("warmlock(1) does not document the command '%s'", c);
    }
    options_documented(WL_WARMLOCK, BUILD_MAN1);
    options_documented(WL_WARMLOCKD, BUILD_MAN8);

    if (!groff && !man) {
        print_message("skipped: neither groff nor man is installed\n");
        skip();
    }
    setenv("LC_ALL", "C.UTF-8", 1);
    setenv("MANWIDTH", "80", 1);
    for (size_t i = 0; i < 2; i++) {
        struct wlt_run *r = wlt_newrun();
        if (groff) {
            RUN(r, 30000, (char *)groff, "-man", "-Tutf8", "-ww", "-z", (char *)pages[i]);
            if (r->status != 0 || r->err[0])
                fail_msg("groff on %s: exit %d\n%s", pages[i], r->status, r->err);
        }
        if (man) {
            RUN(r, 30000, (char *)man, "--warnings", "-l", (char *)pages[i]);
            if (r->status != 0 || r->err[0] || strlen(r->out) < 1000)
                fail_msg("man -l %s: exit %d, %zu bytes\n%s", pages[i], r->status, strlen(r->out),
                         r->err);
            assert_non_null(strstr(r->out, i ? "warmlockd" : "warmlock"));
            assert_non_null(strstr(r->out, "NAME"));
        }
        print_message("%s renders (%s%s)\n", pages[i], groff ? "groff " : "", man ? "man" : "");
        free(r);
    }
    unsetenv("LC_ALL");
    unsetenv("MANWIDTH");
}

/* 6. The bash completion loads in a plain bash and completes the commands of
 * `warmlock --help`, a command's options, and warmlockd's options. */
static void test_bash_completion_completes_the_commands(void **state)
{
    const char *bash = tool("bash");
    char cmds[1024], script[4096], *c, *nl;
    struct wlt_run *r;

    (void)state;
    NEED_TOOL(bash, "bash");
    help_commands(cmds, sizeof(cmds));
    snprintf(script, sizeof(script),
             "set -e; source '%s/doc/warmlock.bash'\n"
             "complete -p warmlock >/dev/null; complete -p warmlockd >/dev/null\n"
             "t() { COMP_WORDS=(\"$@\"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); $F; "
             "echo \"$*: ${COMPREPLY[*]}\"; }\n"
             "F=_warmlock; t '%s' ''; t '%s' w; t '%s' --shm /x ch; t '%s' check --\n"
             "F=_warmlockd; t '%s' --no\n",
             WL_TEST_SRCDIR, WL_WARMLOCK, WL_WARMLOCK, WL_WARMLOCK, WL_WARMLOCK, WL_WARMLOCKD);
    r = wlt_newrun();
    RUN(r, 30000, (char *)bash, "--norc", "--noprofile", "-c", script);
    print_message("%s%s", r->out, r->err);
    assert_int_equal(r->status, 0);
    {
        char *all = strstr(r->out, " : "), *eol;
        assert_non_null(all);
        eol = strchr(all, '\n');
        assert_non_null(eol);
        *eol = '\0';
        for (c = cmds; (nl = strchr(c, '\n')); c = nl + 1) {
            char w[64];
            *nl = '\0';
            snprintf(w, sizeof(w), " %.50s", c);
            if (!strstr(all, w))
                fail_msg("completion of '' lacks '%s': %s", c, all);
        }
        *eol = '\n';
    }
    assert_non_null(strstr(r->out, " w: wait\n"));
    assert_non_null(strstr(r->out, " ch: check\n"));
    assert_non_null(strstr(r->out, "check --: --max-age --shm --help\n"));
    assert_non_null(strstr(r->out, " --no: --notify-fd\n"));
    free(r);
}

/* 7. The Kubernetes pod and the compose file are well-formed YAML, and say what makes them
 * work: in the pod, one emptyDir (medium: Memory) mounted at /dev/shm in both containers,
 * the same WARMLOCK_SHM, a user for the pod, warmlock check probes naming the sidecar's own
 * target; in compose, the app in warmlockd's IPC namespace, the same user, and a
 * `warmlock check` healthcheck naming warmlockd's target, which the app waits for. */
static void test_examples_are_well_formed_yaml(void **state)
{
    const char *py = tool("python3");
    static const char check[] =
        "import sys, yaml\n"
        "src = sys.argv[1]\n"
        "pod = yaml.safe_load(open(src + '/examples/kubernetes/pod.yaml'))\n"
        "assert pod['kind'] == 'Pod'\n"
        "spec = pod['spec']\n"
        "shm = [v['name'] for v in spec['volumes'] if v.get('emptyDir', {}).get('medium') == "
        "'Memory']\n"
        "assert len(shm) == 1, shm\n"
        "side = [c for c in spec['initContainers'] if c.get('restartPolicy') == 'Always']\n"
        "assert len(side) == 1\n"
        "side = side[0]\n"
        "both = [side] + spec['containers']\n"
        "assert len(both) == 2\n"
        "for c in both:\n"
        "    m = [v for v in c['volumeMounts'] if v['mountPath'] == '/dev/shm']\n"
        "    assert len(m) == 1 and m[0]['name'] == shm[0], c['name']\n"
        "env = [{e['name']: e.get('value', e.get('valueFrom')) for e in c['env']} for c in "
        "both]\n"
        "assert env[0]['WARMLOCK_SHM'] == env[1]['WARMLOCK_SHM']\n"
        "assert env[0]['PGPASSWORD'] == env[1]['PGPASSWORD']\n"
        "assert spec['securityContext']['runAsUser']\n"
        "args = side['command'] + side['args']\n"
        "assert args[0] == 'warmlockd' and '--foreground' in args\n"
        "target = args[args.index('--target') + 1]\n"
        "for p in ('startupProbe', 'readinessProbe'):\n"
        "    cmd = side[p]['exec']['command']\n"
        "    assert cmd[:2] == ['warmlock', 'check'] and cmd[-1] == target, cmd\n"
        "cf = yaml.safe_load(open(src + '/examples/compose/compose.yaml'))\n"
        "s = cf['services']\n"
        "d, app = s['warmlockd'], s['app']\n"
        "assert d['ipc'] == 'shareable' and app['ipc'] == 'service:warmlockd'\n"
        "assert d['user'] == app['user']\n"
        "assert d['environment']['PGPASSFILE'] == app['environment']['PGPASSFILE']\n"
        "t = d['healthcheck']['test']\n"
        "assert t[:3] == ['CMD', 'warmlock', 'check'], t\n"
        "assert t[-1] == d['command'][d['command'].index('--target') + 1], t\n"
        "assert app['depends_on']['warmlockd']['condition'] == 'service_healthy'\n"
        "print('examples ok')\n";
    struct wlt_run *r;

    (void)state;
    NEED_TOOL(py, "python3");
    r = wlt_newrun();
    RUN(r, 30000, (char *)py, "-c", "import yaml");
    if (r->status != 0) {
        free(r);
        print_message("skipped: python3 has no yaml module (PyYAML)\n");
        skip();
    }
    RUN(r, 30000, (char *)py, "-c", (char *)check, WL_TEST_SRCDIR);
    print_message("%s%s", r->out, r->err);
    assert_int_equal(r->status, 0);
    free(r);
}

/* 8. The s6 service directory: notification-fd says 3, and its run script, run as
 * s6-supervise would (descriptor 3 open on a pipe), starts warmlockd, which writes one
 * newline to it once the target is warm, and then closes it. */
static void test_s6_run_script_notifies_on_fd_3(void **state)
{
    const char *sh = tool("sh"), *shm = wlt_segname();
    char conf[128], fd[16], bindir[256], buf[64], key[WL_PG_KEY_MAX], logp[160];
    struct wlt_run *r = wlt_newrun();
    struct wl_segment *seg;
    struct wl_slot_info si;
    struct stat st;
    int p[2], logfd;
    pid_t pid;

    (void)state;
    NEED_TOOL(sh, "sh");
    assert_int_equal(
        wlt_slurp(WL_TEST_SRCDIR "/examples/s6/warmlockd/notification-fd", fd, sizeof(fd)), 2);
    assert_string_equal(fd, "3\n");
    assert_int_equal(stat(WL_TEST_SRCDIR "/examples/s6/warmlockd/run", &st), 0);
    assert_true(st.st_mode & S_IXUSR);
    NEED_PG();
    pg_ensure_up();

    snprintf(conf, sizeof(conf), "%s/s6-targets%u.conf", DIR_, nseq++);
    {
        char text[1200];
        snprintf(text, sizeof(text), "%s\n", CI);
        wlt_write_file(conf, 0600, text);
    }
    snprintf(bindir, sizeof(bindir), "%s", WL_WARMLOCKD);
    *strrchr(bindir, '/') = '\0';
    snprintf(logp, sizeof(logp), "%s/s6-run%u.log", DIR_, nseq++);
    assert_int_equal(pipe(p), 0);
    if ((pid = fork()) == 0) {
        char path[1024];
        snprintf(path, sizeof(path), "%s:/usr/bin:/bin", bindir);
        setenv("PATH", path, 1);
        setenv("WARMLOCKD_CONFIG", conf, 1);
        setenv("WARMLOCK_SHM", shm, 1);
        if (chdir(WL_TEST_SRCDIR "/examples/s6/warmlockd") < 0)
            _exit(126);
        close(p[0]);
        if (p[1] != 3) {
            dup2(p[1], 3);
            close(p[1]);
        }
        logfd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(logfd, 1);
        dup2(logfd, 2);
        execl(sh, "sh", "./run", (char *)NULL);
        _exit(127);
    }
    assert_true(pid > 0);
    close(p[1]);
    {
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        if (poll(&pf, 1, 20000) != 1) {
            wlt_slurp(logp, r->out, sizeof(r->out));
            kill(pid, SIGKILL);
            wlt_wait(pid, 5000);
            fail_msg("no readiness on fd 3 within 20 s; log:\n%s", r->out);
        }
    }
    assert_int_equal(read(p[0], buf, sizeof(buf)), 1);
    assert_int_equal(buf[0], '\n');
    assert_int_equal(read(p[0], buf, sizeof(buf)), 0);
    close(p[0]);
    /* ready means READY in the segment named by WARMLOCK_SHM */
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, CI, key, sizeof(key)) > 0);
    assert_int_equal(wl_lookup(seg, key, &si), 0);
    assert_int_equal(si.state, WL_READY);
    wl_close(seg);
    kill(pid, SIGTERM);
    assert_int_equal(wlt_wait(pid, 10000), 0);
    wlt_slurp(logp, r->out, sizeof(r->out));
    assert_non_null(strstr(r->out, "msg=ready")); /* stderr went to stdout (exec 2>&1) */
    free(r);
    wl_unlink(shm);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify_socket_status_extend_ready_through_a_held_recovery),
        cmocka_unit_test(test_a_refusal_with_changing_timings_is_logged_once),
        cmocka_unit_test(test_config_with_a_password_readable_by_others_warns_once),
        cmocka_unit_test(test_unit_is_generated_and_passes_systemd_analyze_verify),
        cmocka_unit_test(test_man_pages_render_and_cover_the_help),
        cmocka_unit_test(test_bash_completion_completes_the_commands),
        cmocka_unit_test(test_examples_are_well_formed_yaml),
        cmocka_unit_test(test_s6_run_script_notifies_on_fd_3),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
