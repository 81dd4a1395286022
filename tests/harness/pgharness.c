/* A throwaway PostgreSQL (and pgbouncer) for tests: see pgharness.h.
 *
 * Sections: utilities; running programs; finding PostgreSQL; process control and clean-up of
 * abandoned servers; the cluster (init, start, wait, stop, crash); the log; psql; the probe;
 * pgbouncer; destroy.
 */
#include "pgharness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SERVER_USER  "postgres" /* OS user the server runs as when we are root */
#define DB_USER      "postgres" /* database superuser created by initdb */
#define READY_LINE   "database system is ready to accept connections"
#define PSQL_TIMEOUT 60000
#define ERRBUF       16384

/* ---------------------------------------------------------------- utilities */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* snprintf that says whether it fit: 0, or -1 on truncation. */
static int fmt(char *buf, size_t size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static int fmt(char *buf, size_t size, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    int n = vsnprintf(buf, size, format, ap);
    va_end(ap);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

/* Append n bytes to a NUL-terminated buffer of `size`, keeping the newest bytes on overflow. */
static void buf_add(char *buf, size_t size, size_t *len, const char *data, size_t n)
{
    if (!buf || size == 0)
        return;
    size_t cap = size - 1;
    if (n >= cap) {
        memcpy(buf, data + (n - cap), cap);
        *len = cap;
    } else {
        if (*len + n > cap) {
            size_t drop = *len + n - cap;
            memmove(buf, buf + drop, *len - drop);
            *len -= drop;
        }
        memcpy(buf + *len, data, n);
        *len += n;
    }
    buf[*len] = '\0';
}

static int env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static int is_exec(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode) && access(path, X_OK) == 0;
}

/* Find an executable in $PATH, then in the sbin directories a non-root PATH lacks. */
static int find_program(const char *name, char *out, size_t size)
{
    const char *path = getenv("PATH");
    char buf[4096];
    if (fmt(buf, sizeof(buf), "%s:/usr/local/sbin:/usr/sbin:/sbin", path ? path : "/usr/bin:/bin"))
        return -1;
    for (char *save = NULL, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (*d && fmt(out, size, "%s/%s", d, name) == 0 && is_exec(out))
            return 0;
    }
    return -1;
}

/* Write a whole file (O_TRUNC keeps an existing file's owner), or append to it. */
static int write_file(const char *path, const char *text, int append, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), mode);
    if (fd < 0) {
        fprintf(stderr, "pgharness: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "pgharness: cannot write %s: %s\n", path, strerror(errno));
            close(fd);
            return -1;
        }
        off += (size_t)n;
    }
    return close(fd) == 0 ? 0 : -1;
}

/* Read up to size-1 bytes of a small file; -1 if it cannot be opened. */
static ssize_t read_small(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len + 1 < size) {
        ssize_t n = read(fd, buf + len, size - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return (ssize_t)len;
}

/* ---------------------------------------------------------------- the server user */

/* Who runs the server: when we are root, `postgres` (dropped to in the child before exec). */
static struct {
    int resolved;
    int drop; /* 1: setgroups/setgid/setuid in the child */
    uid_t uid;
    gid_t gid;
    gid_t groups[64];
    int ngroups;
    const char *problem; /* why the server cannot run as anyone, or NULL */
} g_user;

static void resolve_user(void)
{
    if (g_user.resolved)
        return;
    g_user.resolved = 1;
    g_user.uid = geteuid();
    g_user.gid = getegid();
    if (g_user.uid != 0)
        return;
    struct passwd *pw = getpwnam(SERVER_USER);
    if (!pw) {
        g_user.problem =
            "running as root and there is no '" SERVER_USER
            "' user to run the server as (install postgresql, or useradd " SERVER_USER ")";
        return;
    }
    if (pw->pw_uid == 0) {
        g_user.problem = "the '" SERVER_USER "' user has uid 0; PostgreSQL refuses to run as root";
        return;
    }
    g_user.drop = 1;
    g_user.uid = pw->pw_uid;
    g_user.gid = pw->pw_gid;
    g_user.ngroups = (int)(sizeof(g_user.groups) / sizeof(g_user.groups[0]));
    if (getgrouplist(SERVER_USER, pw->pw_gid, g_user.groups, &g_user.ngroups) < 0) {
        g_user.groups[0] = pw->pw_gid;
        g_user.ngroups = 1;
    }
}

/* Hand a path we created as root to the server user. */
static int give(const char *path)
{
    if (g_user.drop && chown(path, g_user.uid, g_user.gid) < 0) {
        fprintf(stderr, "pgharness: chown %s to " SERVER_USER ": %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- running programs */

struct run {
    const char *const *argv; /* argv[0] is a full path */
    int as_server;           /* run as the server user (when we are root) */
    const char *cwd;         /* chdir there first (the server user may not reach ours) */
    const char *password;    /* PGPASSWORD, or NULL */
    const char *input;       /* stdin (under 64 KiB), or NULL for /dev/null */
    int timeout_ms;
    char *out; /* stdout; NULL: stdout goes to err too */
    size_t outsz;
    char *err; /* stderr (required) */
    size_t errsz;
};

/* The child's environment: ours minus PG* and locale variables, plus C locale messages. */
static char **child_env(const struct run *r)
{
    size_t n = 0;
    while (environ && environ[n])
        n++;
    char **env = calloc(n + 8, sizeof(*env));
    if (!env)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "PG", 2) == 0 || strncmp(e, "LC_", 3) == 0 || strncmp(e, "LANG=", 5) == 0 ||
            strncmp(e, "LANGUAGE=", 9) == 0)
            continue;
        if (r->as_server && g_user.drop &&
            (strncmp(e, "HOME=", 5) == 0 || strncmp(e, "USER=", 5) == 0 ||
             strncmp(e, "LOGNAME=", 8) == 0))
            continue;
        env[k++] = strdup(e);
    }
    env[k++] = strdup("LC_ALL=C");
    env[k++] = strdup("LANG=C");
    if (r->as_server && g_user.drop) {
        char home[PATH_MAX + 8];
        snprintf(home, sizeof(home), "HOME=%s", r->cwd ? r->cwd : "/tmp");
        env[k++] = strdup(home);
        env[k++] = strdup("USER=" SERVER_USER);
        env[k++] = strdup("LOGNAME=" SERVER_USER);
    }
    if (r->password) {
        size_t len = strlen(r->password) + 16;
        char *p = malloc(len);
        if (p)
            snprintf(p, len, "PGPASSWORD=%s", r->password);
        env[k++] = p;
    }
    for (size_t i = 0; i < k; i++) {
        if (!env[i]) {
            for (size_t j = 0; j < k; j++)
                free(env[j]);
            free(env);
            return NULL;
        }
    }
    env[k] = NULL;
    return env;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

static void child_fail(const char *what, const char *arg)
{
    char msg[512];
    int n = snprintf(msg, sizeof(msg), "pgharness child: %s %s: %s\n", what, arg, strerror(errno));
    if (n > 0 && write(2, msg, (size_t)n) < 0)
        _exit(127);
    _exit(127);
}

/* In the child: a clean process that holds none of the test's descriptors or signal state. */
static void child_exec(const struct run *r, int infd, int outfd, int errfd, char **env)
{
    setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    }
    if (infd < 0)
        infd = open("/dev/null", O_RDONLY);
    if (infd < 0 || dup2(infd, 0) < 0 || dup2(outfd, 1) < 0 || dup2(errfd, 2) < 0)
        _exit(127);
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0)
#endif
    {
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
            close((int)fd);
    }
    if (r->cwd && chdir(r->cwd) < 0)
        child_fail("chdir", r->cwd);
    if (r->as_server && g_user.drop) {
        if (setgroups((size_t)g_user.ngroups, g_user.groups) < 0 || setgid(g_user.gid) < 0 ||
            setuid(g_user.uid) < 0)
            child_fail("cannot become", SERVER_USER);
    }
    execve(r->argv[0], (char *const *)r->argv, env);
    child_fail("cannot execute", r->argv[0]);
}

/* Run a program to completion (or its timeout) collecting its output. Returns its exit status
 * (0..255), 128+signal if killed, or -1 if it could not be run or timed out (then r->err says
 * why). Stops reading once the program exits, so a daemon it leaves behind holding the pipe does
 * not stall us. */
static int run(struct run *r)
{
    size_t outlen = 0, errlen = 0;
    int e;
    if (r->out && r->outsz)
        r->out[0] = '\0';
    r->err[0] = '\0';
    int op[2] = {-1, -1}, ep[2] = {-1, -1}, ip[2] = {-1, -1};
    if (r->input && (strlen(r->input) >= 65536 || pipe2(ip, O_CLOEXEC) < 0))
        goto fail_errno;
    if (r->out && pipe2(op, O_CLOEXEC) < 0)
        goto fail_errno;
    if (pipe2(ep, O_CLOEXEC) < 0)
        goto fail_errno;
    char **env = child_env(r);
    if (!env) {
        errno = ENOMEM;
        goto fail_errno;
    }
    pid_t pid = fork();
    if (pid < 0) {
        free_env(env);
        goto fail_errno;
    }
    if (pid == 0)
        child_exec(r, ip[0], r->out ? op[1] : ep[1], ep[1], env);
    free_env(env);
    if (r->input) {
        /* It fits in the pipe: write it all, then EOF. */
        close(ip[0]);
        if (write(ip[1], r->input, strlen(r->input)) < 0)
            buf_add(r->err, r->errsz, &errlen, "(could not write stdin)\n", 24);
        close(ip[1]);
        ip[0] = ip[1] = -1;
    }
    if (r->out)
        close(op[1]);
    close(ep[1]);
    op[1] = ep[1] = -1;

    long long deadline = now_ms() + r->timeout_ms;
    int status = -1, exited = 0, timed_out = 0;
    for (;;) {
        struct pollfd pfd[2];
        int n = 0;
        if (op[0] >= 0)
            pfd[n++] = (struct pollfd){.fd = op[0], .events = POLLIN};
        if (ep[0] >= 0)
            pfd[n++] = (struct pollfd){.fd = ep[0], .events = POLLIN};
        if (n == 0 && exited)
            break;
        int wait = exited ? 0 : n ? 10 : 1;
        int pr = n ? poll(pfd, (nfds_t)n, wait) : (sleep_ms(wait), 0);
        for (int i = 0; pr > 0 && i < n; i++) {
            if (!pfd[i].revents)
                continue;
            char chunk[4096];
            ssize_t got = read(pfd[i].fd, chunk, sizeof(chunk));
            if (got < 0 && errno == EINTR)
                continue;
            int is_out = pfd[i].fd == op[0];
            if (got <= 0) {
                close(pfd[i].fd);
                *(is_out ? &op[0] : &ep[0]) = -1;
            } else if (is_out) {
                buf_add(r->out, r->outsz, &outlen, chunk, (size_t)got);
            } else {
                buf_add(r->err, r->errsz, &errlen, chunk, (size_t)got);
            }
        }
        if (exited && pr <= 0)
            break; /* drained what was there; a daemon may keep the pipe open */
        if (!exited) {
            int st;
            pid_t w = waitpid(pid, &st, WNOHANG);
            if (w == pid) {
                exited = 1;
                status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            } else if (w < 0 && errno != EINTR) {
                exited = 1; /* someone else reaped it (SIGCHLD ignored?) */
                status = -1;
            } else if (now_ms() > deadline) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                waitpid(pid, &st, 0);
                timed_out = 1;
                break;
            }
        }
    }
    if (op[0] >= 0)
        close(op[0]);
    if (ep[0] >= 0)
        close(ep[0]);
    if (env_flag("WL_PG_TRACE")) {
        fprintf(stderr, "pgharness: %lld ms, status %d:", now_ms() - (deadline - r->timeout_ms),
                timed_out ? -1 : status);
        for (int i = 0; r->argv[i]; i++)
            fprintf(stderr, " %s", r->argv[i]);
        fputc('\n', stderr);
    }
    if (timed_out) {
        char note[64];
        snprintf(note, sizeof(note), "\n(killed after %d ms)", r->timeout_ms);
        buf_add(r->err, r->errsz, &errlen, note, strlen(note));
        return -1;
    }
    return status;

fail_errno:
    e = errno;
    for (int i = 0; i < 2; i++) {
        if (op[i] >= 0)
            close(op[i]);
        if (ep[i] >= 0)
            close(ep[i]);
        if (ip[i] >= 0)
            close(ip[i]);
    }
    snprintf(r->err, r->errsz, "cannot run %s: %s", r->argv[0], strerror(e));
    return -1;
}

/* Print a failed command and its output on stderr. */
static void report(const struct run *r, int status, const char *out)
{
    fprintf(stderr, "pgharness: command failed (%s%d):", status < 0 ? "" : "exit ", status);
    for (int i = 0; r->argv[i]; i++)
        fprintf(stderr, " %s", r->argv[i]);
    fputc('\n', stderr);
    if (out && *out)
        fprintf(stderr, "%s%s", out, out[strlen(out) - 1] == '\n' ? "" : "\n");
    if (r->err[0])
        fprintf(stderr, "%s%s", r->err, r->err[strlen(r->err) - 1] == '\n' ? "" : "\n");
}

/* Run as the server user in h->dir (with PGPASSWORD=password unless NULL); 0 on exit status
 * 0, else -1 with the output on stderr. */
static int run_as_server(struct pgh *h, const char *const *argv, int timeout_ms,
                         const char *password)
{
    static char err[ERRBUF];
    struct run r = {.argv = argv,
                    .as_server = 1,
                    .cwd = h->dir,
                    .password = password,
                    .timeout_ms = timeout_ms,
                    .err = err,
                    .errsz = sizeof(err)};
    int status = run(&r);
    if (status != 0) {
        report(&r, status, NULL);
        return -1;
    }
    return 0;
}

static int run_server_cmd(struct pgh *h, const char *const *argv, int timeout_ms)
{
    return run_as_server(h, argv, timeout_ms, NULL);
}

/* ---------------------------------------------------------------- finding PostgreSQL */

static char g_bindir[PATH_MAX];
static char g_bouncer[PATH_MAX];

static int has_server_bins(const char *dir)
{
    static const char *const need[] = {"initdb", "pg_ctl", "postgres", "psql"};
    char p[PATH_MAX];
    for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
        if (fmt(p, sizeof(p), "%s/%s", dir, need[i]) || !is_exec(p))
            return 0;
    }
    return 1;
}

static int version_of(const char *dir)
{
    const char *v = strstr(dir, "postgresql/");
    return v ? atoi(v + strlen("postgresql/")) : 0;
}

static void find_bindir(void)
{
    const char *env = getenv("WL_PG_BINDIR");
    if (env && *env) {
        if (has_server_bins(env))
            snprintf(g_bindir, sizeof(g_bindir), "%s", env);
        return; /* an explicit choice is not second-guessed */
    }
    char pgc[PATH_MAX];
    if (find_program("pg_config", pgc, sizeof(pgc)) == 0) {
        char out[PATH_MAX], err[1024];
        const char *argv[] = {pgc, "--bindir", NULL};
        struct run r = {.argv = argv,
                        .timeout_ms = 10000,
                        .out = out,
                        .outsz = sizeof(out),
                        .err = err,
                        .errsz = sizeof(err)};
        if (run(&r) == 0) {
            out[strcspn(out, "\r\n")] = '\0';
            if (has_server_bins(out)) {
                snprintf(g_bindir, sizeof(g_bindir), "%s", out);
                return;
            }
        }
    }
    /* pg_config may belong to a newer libpq-dev than the installed server: take the newest
     * version that has the server programs. */
    glob_t g;
    int best = -1;
    if (glob("/usr/lib/postgresql/*/bin", 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            if (has_server_bins(g.gl_pathv[i]) &&
                (best < 0 || version_of(g.gl_pathv[i]) > version_of(g.gl_pathv[best])))
                best = (int)i;
        }
        if (best >= 0)
            snprintf(g_bindir, sizeof(g_bindir), "%s", g.gl_pathv[best]);
        globfree(&g);
        if (best >= 0)
            return;
    }
    char initdb[PATH_MAX];
    if (find_program("initdb", initdb, sizeof(initdb)) == 0) {
        char *slash = strrchr(initdb, '/');
        *slash = '\0';
        if (has_server_bins(initdb))
            snprintf(g_bindir, sizeof(g_bindir), "%s", initdb);
    }
}

const char *pgh_bindir(void)
{
    static int done;
    if (!done) {
        done = 1;
        find_bindir();
    }
    return g_bindir[0] ? g_bindir : NULL;
}

/* bindir/name ("" if it does not fit: execve then fails and says so). */
static void bin_path(char *out, size_t size, const char *name)
{
    if (fmt(out, size, "%s/%s", pgh_bindir() ? pgh_bindir() : ".", name))
        out[0] = '\0';
}

const char *pgh_unavailable(void)
{
    static char why[512];
    if (env_flag("WL_PG_SKIP"))
        return "WL_PG_SKIP is set";
    if (!pgh_bindir()) {
        const char *env = getenv("WL_PG_BINDIR");
        if (env && *env)
            snprintf(why, sizeof(why), "WL_PG_BINDIR=%s lacks initdb, pg_ctl, postgres or psql",
                     env);
        else
            snprintf(why, sizeof(why),
                     "PostgreSQL server programs (initdb, pg_ctl, postgres, psql) not found: "
                     "install postgresql (scripts/setup) or set WL_PG_BINDIR");
        return why;
    }
    resolve_user();
    if (g_user.problem)
        return g_user.problem;
    if (access("/tmp", W_OK | X_OK) < 0)
        return "/tmp is not writable";
    return NULL;
}

const char *pgh_bouncer_unavailable(void)
{
    const char *why = pgh_unavailable();
    if (why)
        return why;
    const char *env = getenv("WL_PGBOUNCER");
    if (env && *env) {
        if (!is_exec(env))
            return "WL_PGBOUNCER is not an executable";
        snprintf(g_bouncer, sizeof(g_bouncer), "%s", env);
        return NULL;
    }
    if (!g_bouncer[0] && find_program("pgbouncer", g_bouncer, sizeof(g_bouncer)) < 0) {
        g_bouncer[0] = '\0';
        return "pgbouncer not found: install pgbouncer (scripts/setup) or set WL_PGBOUNCER";
    }
    return NULL;
}

/* ---------------------------------------------------------------- process control */

/* Alive, and not a zombie: a daemon's zombie lingers until init reaps it, which some container
 * inits do late or never. */
int pgh_pid_alive(pid_t pid)
{
    if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
        return 0;
    char p[64], buf[512], state = '?';
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    if (read_small(p, buf, sizeof(buf)) > 0) {
        char *s = strrchr(buf, ')');
        if (s)
            sscanf(s + 1, " %c", &state);
    }
    return state != 'Z' && state != 'X';
}

static int pid_alive(pid_t pid)
{
    return pgh_pid_alive(pid);
}

/* The first line of a pid file as a pid, or 0. */
static pid_t read_pidfile(const char *path)
{
    char buf[64];
    if (read_small(path, buf, sizeof(buf)) <= 0)
        return 0;
    long v = strtol(buf, NULL, 10);
    return v > 0 && v < INT_MAX ? (pid_t)v : 0;
}

/* Does process `pid` look like it belongs to `path` (an argument equal to or containing it, or
 * its working directory)? Guards against signalling a recycled pid. */
static int pid_belongs(pid_t pid, const char *path)
{
    char p[64], buf[8192];
    snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
    ssize_t n = read_small(p, buf, sizeof(buf));
    for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1) {
        if (strstr(buf + i, path))
            return 1;
    }
    char cwd[PATH_MAX];
    snprintf(p, sizeof(p), "/proc/%d/cwd", (int)pid);
    ssize_t len = readlink(p, cwd, sizeof(cwd) - 1);
    if (len > 0) {
        cwd[len] = '\0';
        if (strncmp(cwd, path, strlen(path)) == 0)
            return 1;
    }
    return 0;
}

/* Field 22 of /proc/pid/stat (start time in clock ticks), or 0. */
static unsigned long long start_time(pid_t pid)
{
    char p[64], buf[1024];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    if (read_small(p, buf, sizeof(buf)) <= 0)
        return 0;
    char *s = strrchr(buf, ')');
    if (!s)
        return 0;
    s++; /* fields from 3 on */
    unsigned long long v = 0;
    for (int field = 3; field <= 22 && s; field++) {
        while (*s == ' ')
            s++;
        if (field == 22)
            v = strtoull(s, NULL, 10);
        s = strchr(s, ' ');
    }
    return v;
}

static int wait_gone(pid_t pid, int timeout_ms)
{
    long long end = now_ms() + timeout_ms;
    while (pid_alive(pid)) {
        if (now_ms() > end)
            return -1;
        sleep_ms(5);
    }
    return 0;
}

/* SIGKILL every process whose parent is `ppid` (a postmaster's backends). */
static void kill_children(pid_t ppid)
{
    DIR *d = opendir("/proc");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        char p[300], buf[1024];
        snprintf(p, sizeof(p), "/proc/%s/stat", e->d_name);
        if (read_small(p, buf, sizeof(buf)) <= 0)
            continue;
        char *s = strrchr(buf, ')');
        int parent = 0;
        char state;
        if (s && sscanf(s + 1, " %c %d", &state, &parent) == 2 && parent == ppid)
            kill((pid_t)atoi(e->d_name), SIGKILL);
    }
    closedir(d);
}

/* Stop whatever runs in `dir` by signals: pgbouncer (SIGTERM), the postmaster (SIGQUIT, the
 * immediate shutdown pg_ctl -m immediate sends), each continued in case a test SIGSTOPped it;
 * SIGKILL after a grace period. */
static void kill_servers_in(const char *dir)
{
    char p[PATH_MAX];
    pid_t pid;
    snprintf(p, sizeof(p), "%s/pgbouncer.pid", dir);
    pid = read_pidfile(p);
    if (pid_alive(pid) && pid_belongs(pid, dir)) {
        kill(pid, SIGTERM);
        kill(pid, SIGCONT);
        if (wait_gone(pid, 5000) < 0)
            kill(pid, SIGKILL);
    }
    snprintf(p, sizeof(p), "%s/data/postmaster.pid", dir);
    pid = read_pidfile(p);
    if (pid_alive(pid) && pid_belongs(pid, dir)) {
        kill(pid, SIGQUIT);
        kill(pid, SIGCONT);
        if (wait_gone(pid, 10000) < 0) {
            fprintf(stderr, "pgharness: postmaster %d in %s ignored SIGQUIT; SIGKILL\n", (int)pid,
                    dir);
            kill_children(pid);
            kill(pid, SIGKILL);
            wait_gone(pid, 2000);
        }
    }
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st;
    (void)type;
    (void)ftw;
    if (remove(path) < 0 && errno != ENOENT)
        fprintf(stderr, "pgharness: cannot remove %s: %s\n", path, strerror(errno));
    return 0;
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* Harnesses of this process still set up, so exit() can stop their servers even when the test
 * forgot or its struct is long gone (a longjmp out of a failed cmocka test). */
#define MAX_LIVE 32
static struct {
    char dir[256];
    pid_t owner;
} g_live[MAX_LIVE];

static void at_exit(void)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (g_live[i].dir[0] && g_live[i].owner == getpid()) {
            kill_servers_in(g_live[i].dir);
            if (!env_flag("WL_PG_KEEP"))
                rm_rf(g_live[i].dir);
            g_live[i].dir[0] = '\0';
        }
    }
}

static void live_add(const char *dir)
{
    static int registered;
    if (!registered && atexit(at_exit) == 0)
        registered = 1;
    for (int i = 0; i < MAX_LIVE; i++) {
        if (!g_live[i].dir[0] || g_live[i].owner != getpid()) {
            snprintf(g_live[i].dir, sizeof(g_live[i].dir), "%s", dir);
            g_live[i].owner = getpid();
            return;
        }
    }
}

static void live_remove(const char *dir)
{
    for (int i = 0; i < MAX_LIVE; i++) {
        if (strcmp(g_live[i].dir, dir) == 0)
            g_live[i].dir[0] = '\0';
    }
}

/* Remove /tmp/wlpg.* left by test processes that died without cleaning up: their "owner" file
 * names a process that is gone (or a recycled pid with another start time). Servers still
 * running there are stopped first. */
static void clean_stale(void)
{
    DIR *d = opendir("/tmp");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "wlpg.", 5) != 0)
            continue;
        char dir[PATH_MAX], p[PATH_MAX + 16], buf[128];
        struct stat st;
        snprintf(dir, sizeof(dir), "/tmp/%s", e->d_name);
        if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode))
            continue;
        if (st.st_uid != geteuid() && !(g_user.drop && st.st_uid == g_user.uid))
            continue;
        snprintf(p, sizeof(p), "%s/owner", dir);
        if (read_small(p, buf, sizeof(buf)) <= 0)
            continue; /* being set up right now, or not ours */
        long pid = 0;
        unsigned long long started = 0;
        if (sscanf(buf, "%ld %llu", &pid, &started) < 1 || pid <= 0)
            continue;
        if (pid_alive((pid_t)pid) && (started == 0 || start_time((pid_t)pid) == started))
            continue;
        kill_servers_in(dir);
        rm_rf(dir);
        fprintf(stderr, "pgharness: removed %s, abandoned by dead process %ld\n", dir, pid);
    }
    closedir(d);
}

/* ---------------------------------------------------------------- the cluster */

/* A TCP port on 127.0.0.1 that is free now, outside the kernel's ephemeral range so outgoing
 * connections do not take it before the server binds it. */
static int free_port(int avoid)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)now_ms() ^ (unsigned)time(NULL);
    for (int attempt = 0; attempt < 500; attempt++) {
        int port = attempt < 400 ? 15000 + (int)(rand_r(&seed) % 17000) : 0;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof(sa);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
            getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
            port = ntohs(sa.sin_port);
            close(fd);
            if (port != avoid)
                return port;
            continue;
        }
        close(fd);
    }
    return -1;
}

static int set_port(struct pgh *h, int port)
{
    h->port = port;
    if (fmt(h->conninfo, sizeof(h->conninfo), "host=%s port=%d dbname=postgres user=" DB_USER,
            h->sockdir, port) ||
        fmt(h->tcp_conninfo, sizeof(h->tcp_conninfo),
            "hostaddr=127.0.0.1 port=%d dbname=postgres user=" DB_USER, port))
        return -1;
    return 0;
}

/* A pristine initdb'd cluster, made once per process and copied by every pgh_init: initdb takes
 * 1-3 s here, a copy 0.2 s. It lives in its own /tmp/wlpg.XXXXXX, removed at exit (or, if the
 * process is killed, by a later clean_stale) like the others. Forked children use their
 * parent's. */
static char g_template[256];

static int make_template(void)
{
    char path[PATH_MAX];
    if (g_template[0] && fmt(path, sizeof(path), "%s/data/PG_VERSION", g_template) == 0 &&
        access(path, R_OK) == 0)
        return 0;
    struct pgh t;
    memset(&t, 0, sizeof(t));
    snprintf(t.dir, sizeof(t.dir), "/tmp/wlpg.XXXXXX");
    if (!mkdtemp(t.dir)) {
        fprintf(stderr, "pgharness: mkdtemp %s: %s\n", t.dir, strerror(errno));
        return -1;
    }
    live_add(t.dir);
    char initdb[PATH_MAX], datadir[PATH_MAX], owner[PATH_MAX], line[64];
    bin_path(initdb, sizeof(initdb), "initdb");
    snprintf(datadir, sizeof(datadir), "%s/data", t.dir);
    snprintf(owner, sizeof(owner), "%s/owner", t.dir);
    snprintf(line, sizeof(line), "%d %llu\n", (int)getpid(), start_time(getpid()));
    const char *argv[] = {initdb,  "-D", datadir, "-U",         DB_USER,     "-A",
                          "trust", "-E", "UTF8",  "--locale=C", "--no-sync", "--no-instructions",
                          NULL};
    if (write_file(owner, line, 0, 0644) || chmod(t.dir, 0755) < 0 || give(t.dir) ||
        run_server_cmd(&t, argv, 120000)) {
        rm_rf(t.dir);
        live_remove(t.dir);
        return -1;
    }
    snprintf(g_template, sizeof(g_template), "%s", t.dir);
    return 0;
}

static int init_cluster(struct pgh *h, const char *auth, const char *password,
                        const char *extra_conf)
{
    if (!auth || strcmp(auth, "trust") == 0) {
        h->scram = 0;
    } else if (strcmp(auth, "scram") == 0 || strcmp(auth, "scram-sha-256") == 0) {
        if (!password || !*password || strlen(password) >= sizeof(h->password) ||
            strpbrk(password, "\n\r")) {
            fprintf(stderr, "pgharness: auth scram needs a one-line password under %zu bytes\n",
                    sizeof(h->password));
            return -1;
        }
        h->scram = 1;
        snprintf(h->password, sizeof(h->password), "%s", password);
    } else {
        fprintf(stderr, "pgharness: unknown auth '%s' (trust or scram)\n", auth);
        return -1;
    }

    int port = free_port(0);
    if (port < 0) {
        fprintf(stderr, "pgharness: no free TCP port on 127.0.0.1\n");
        return -1;
    }
    if (fmt(h->datadir, sizeof(h->datadir), "%s/data", h->dir) ||
        fmt(h->sockdir, sizeof(h->sockdir), "%s", h->dir) ||
        fmt(h->logpath, sizeof(h->logpath), "%s/server.log", h->dir) ||
        fmt(h->bouncer_logpath, sizeof(h->bouncer_logpath), "%s/pgbouncer.log", h->dir) ||
        set_port(h, port))
        return -1;

    if (make_template() < 0)
        return -1;
    char cp[PATH_MAX], src[PATH_MAX];
    if (find_program("cp", cp, sizeof(cp)) < 0 || fmt(src, sizeof(src), "%s/data", g_template)) {
        fprintf(stderr, "pgharness: no cp(1)\n");
        return -1;
    }
    const char *copy[] = {cp, "-a", src, h->datadir, NULL};
    if (run_server_cmd(h, copy, 120000))
        return -1;

    /* The superuser's password is set in single-user mode, before the server first listens, so
     * there is no window in which it runs with trust but should not. */
    if (h->scram) {
        char postgres[PATH_MAX], sql[400];
        size_t n = (size_t)snprintf(sql, sizeof(sql), "ALTER ROLE " DB_USER " PASSWORD '");
        for (const char *c = h->password; *c && n + 8 < sizeof(sql); c++) {
            if (*c == '\'')
                sql[n++] = '\'';
            sql[n++] = *c;
        }
        snprintf(sql + n, sizeof(sql) - n, "';\n");
        bin_path(postgres, sizeof(postgres), "postgres");
        const char *argv[] = {postgres,   "--single",  "-D", h->datadir,
                              "-c",       "fsync=off", "-c", "password_encryption=scram-sha-256",
                              "postgres", NULL};
        static char out[ERRBUF];
        struct run r = {.argv = argv,
                        .as_server = 1,
                        .cwd = h->dir,
                        .input = sql,
                        .timeout_ms = 60000,
                        .err = out,
                        .errsz = sizeof(out)};
        int status = run(&r);
        if (status != 0 || strstr(out, "ERROR") || strstr(out, "FATAL")) {
            report(&r, status, NULL);
            return -1;
        }
    }

    const char *method = h->scram ? "scram-sha-256" : "trust";
    char hba[1024], path[PATH_MAX];
    snprintf(hba, sizeof(hba),
             "# written by pgharness\n"
             "local all         all                 %s\n"
             "host  all         all   127.0.0.1/32  %s\n"
             "host  all         all   ::1/128       %s\n"
             "local replication all                 %s\n"
             "host  replication all   127.0.0.1/32  %s\n",
             method, method, method, method, method);
    snprintf(path, sizeof(path), "%s/pg_hba.conf", h->datadir);
    if (write_file(path, hba, 0, 0600))
        return -1;

    /* checkpoint_timeout and max_wal_size keep checkpoints out of the way of pgh_crash's WAL;
     * fsync off and --no-sync make it quick; lc_messages C keeps log lines greppable. */
    char conf[2048];
    if (fmt(conf, sizeof(conf),
            "\n# pgharness\n"
            "listen_addresses = '127.0.0.1'\n"
            "port = %d\n"
            "unix_socket_directories = '%s'\n"
            "logging_collector = off\n"
            "log_connections = on\n"
            "log_line_prefix = '%%m [%%p] '\n"
            "log_timezone = 'UTC'\n"
            "lc_messages = 'C'\n"
            "password_encryption = 'scram-sha-256'\n"
            "fsync = off\n"
            "full_page_writes = on\n"
            "checkpoint_timeout = '1d'\n"
            "max_wal_size = '4GB'\n",
            h->port, h->sockdir))
        return -1;
    snprintf(path, sizeof(path), "%s/postgresql.conf", h->datadir);
    if (write_file(path, conf, 1, 0600))
        return -1;
    if (extra_conf && *extra_conf) {
        if (write_file(path, "# extra_conf\n", 1, 0600) || write_file(path, extra_conf, 1, 0600) ||
            write_file(path, "\n", 1, 0600))
            return -1;
    }
    return 0;
}

int pgh_init(struct pgh *h, const char *auth, const char *password, const char *extra_conf)
{
    memset(h, 0, sizeof(*h));
    const char *why = pgh_unavailable();
    if (why) {
        fprintf(stderr, "pgharness: PostgreSQL unavailable: %s\n", why);
        return -1;
    }
    clean_stale();
    snprintf(h->dir, sizeof(h->dir), "/tmp/wlpg.XXXXXX");
    if (!mkdtemp(h->dir)) {
        fprintf(stderr, "pgharness: mkdtemp %s: %s\n", h->dir, strerror(errno));
        h->dir[0] = '\0';
        return -1;
    }
    h->owner = getpid();
    live_add(h->dir);
    char owner[PATH_MAX], line[64];
    snprintf(owner, sizeof(owner), "%s/owner", h->dir);
    snprintf(line, sizeof(line), "%d %llu\n", (int)h->owner, start_time(h->owner));
    /* 0755: the server user owns it, and clients of other users may reach the sockets. */
    if (write_file(owner, line, 0, 0644) || chmod(h->dir, 0755) < 0 || give(h->dir) ||
        init_cluster(h, auth, password, extra_conf)) {
        pgh_destroy(h);
        return -1;
    }
    return 0;
}

/* Append a port line (the last one wins) for a retry after a port was taken meanwhile. */
static int move_port(struct pgh *h)
{
    int port = free_port(h->port);
    char path[PATH_MAX], line[64];
    if (port < 0)
        return -1;
    snprintf(path, sizeof(path), "%s/postgresql.conf", h->datadir);
    snprintf(line, sizeof(line), "port = %d # port was taken\n", port);
    if (write_file(path, line, 1, 0600))
        return -1;
    return set_port(h, port);
}

#define STANDBY_SIGNAL "standby.signal"

/* Remove the standby.signal a held start wrote, so the next start is a normal one. */
static void drop_standby_signal(struct pgh *h)
{
    char path[PATH_MAX];
    if (fmt(path, sizeof(path), "%s/" STANDBY_SIGNAL, h->datadir) == 0 && unlink(path) < 0 &&
        errno != ENOENT)
        fprintf(stderr, "pgharness: cannot remove %s: %s\n", path, strerror(errno));
}

/* pg_ctl start; `held` adds "-c hot_standby=off" (the caller wrote standby.signal). */
static int start_server(struct pgh *h, int wait, int held)
{
    if (!h->dir[0]) {
        fprintf(stderr, "pgharness: pgh_start without pgh_init\n");
        return -1;
    }
    char pg_ctl[PATH_MAX];
    bin_path(pg_ctl, sizeof(pg_ctl), "pg_ctl");
    for (int attempt = 0;; attempt++) {
        h->start_mark = pgh_log_mark(h);
        const char *argv[] = {pg_ctl, "-D", h->datadir, "-l",  h->logpath,
                              wait ? "-w" : "-W",
                              "-t",   "60", "start",    held ? "-o" : NULL,
                              "-c hot_standby=off", NULL};
        static char err[ERRBUF];
        struct run r = {.argv = argv,
                        .as_server = 1,
                        .cwd = h->dir,
                        .timeout_ms = 90000,
                        .err = err,
                        .errsz = sizeof(err)};
        int status = run(&r);
        if (status == 0) {
            h->running = 1;
            return 0;
        }
        if (wait && attempt < 3 &&
            pgh_count_log_since(h, h->start_mark, "could not create any TCP/IP sockets") > 0) {
            int taken = h->port;
            if (move_port(h) == 0) {
                fprintf(stderr, "pgharness: port %d was taken; starting on %d\n", taken, h->port);
                continue;
            }
        }
        report(&r, status, NULL);
        fprintf(stderr, "pgharness: server log since this start:\n");
        pgh_dump_log(h, h->start_mark);
        return -1;
    }
}

int pgh_start(struct pgh *h, int wait)
{
    if (h->dir[0])
        drop_standby_signal(h);
    h->held = 0;
    return start_server(h, wait, 0);
}

/* Is `pid` a child of `ppid` whose command line starts with `prefix`? */
static int child_named(pid_t pid, pid_t ppid, const char *prefix)
{
    char p[64], buf[1024], state;
    int parent = 0;
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    if (read_small(p, buf, sizeof(buf)) <= 0)
        return 0;
    char *s = strrchr(buf, ')');
    if (!s || sscanf(s + 1, " %c %d", &state, &parent) != 2 || parent != ppid)
        return 0;
    snprintf(p, sizeof(p), "/proc/%d/cmdline", (int)pid);
    return read_small(p, buf, sizeof(buf)) > 0 && strncmp(buf, prefix, strlen(prefix)) == 0;
}

pid_t pgh_startup_pid(const struct pgh *h)
{
    pid_t pm = pgh_postmaster_pid(h), found = 0;
    DIR *d = pm ? opendir("/proc") : NULL;
    if (!d)
        return 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (isdigit((unsigned char)e->d_name[0]) &&
            child_named((pid_t)atoi(e->d_name), pm, "postgres: startup"))
            found = (pid_t)atoi(e->d_name);
    }
    closedir(d);
    return found;
}

int pgh_start_held(struct pgh *h)
{
    if (!h->dir[0]) {
        fprintf(stderr, "pgharness: pgh_start_held without pgh_init\n");
        return -1;
    }
    char path[PATH_MAX];
    if (fmt(path, sizeof(path), "%s/" STANDBY_SIGNAL, h->datadir) ||
        write_file(path, "", 0, 0600) || give(path))
        return -1;
    /* pg_ctl -w returns once the pid file says "standby": the sockets listen and recovery has
     * begun. With hot_standby off and nothing to stream from, it never ends by itself. */
    if (start_server(h, 1, 1) < 0) {
        drop_standby_signal(h);
        return -1;
    }
    h->held = 1;
    long long end = now_ms() + 10000;
    while (!pgh_startup_pid(h)) {
        if (now_ms() > end) {
            fprintf(stderr, "pgharness: held server in %s has no startup process; log:\n",
                    h->dir);
            pgh_dump_log(h, h->start_mark);
            return -1;
        }
        sleep_ms(2);
    }
    return 0;
}

int pgh_release(struct pgh *h, int wait)
{
    if (!h->held || !h->running) {
        fprintf(stderr, "pgharness: pgh_release without a held server\n");
        return -1;
    }
    /* What pg_ctl promote does, without its check that the control file already says "in
     * archive recovery": while the crash's WAL is still being replayed it says "in crash
     * recovery", and pg_ctl refuses. The startup process looks for the file once it is past
     * that WAL, so the promotion happens then. */
    char path[PATH_MAX];
    pid_t pm = pgh_postmaster_pid(h);
    if (!pm || fmt(path, sizeof(path), "%s/promote", h->datadir) ||
        write_file(path, "", 0, 0600) || give(path) || kill(pm, SIGUSR1) < 0) {
        fprintf(stderr, "pgharness: cannot promote the server in %s\n", h->dir);
        return -1;
    }
    h->held = 0;
    return wait ? pgh_wait_ready(h, 60000) : 0;
}

int pgh_up(struct pgh *h)
{
    if (h->held && h->running && pgh_release(h, 0) < 0)
        return -1;
    if (!h->running && pgh_start(h, 1) < 0)
        return -1;
    return pgh_wait_ready(h, 60000);
}

const char *pgh_suite_up(struct pgh *h, const char *password, const char *extra_conf)
{
    const char *why = pgh_unavailable();
    if (why)
        return why;
    if (pgh_init(h, password ? "scram" : "trust", password, extra_conf) < 0 ||
        pgh_start(h, 1) < 0)
        return "the throwaway PostgreSQL did not start";
    return NULL;
}

/* Does the text from `*pos` on hold a complete line with `needle`? Advances *pos past the
 * complete lines read, so polling a growing log costs only its new part. */
static int log_has_since(const struct pgh *h, long *pos, const char *needle)
{
    FILE *f = fopen(h->logpath, "re");
    if (!f)
        return 0;
    int found = 0;
    if (fseek(f, *pos, SEEK_SET) == 0) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (!found && (n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] != '\n')
                break; /* partial: read it again next time */
            *pos += n;
            found = strstr(line, needle) != NULL;
        }
        free(line);
    }
    fclose(f);
    return found;
}

int pgh_wait_ready(struct pgh *h, int timeout_ms)
{
    long long start = now_ms(), end = start + timeout_ms;
    long pos = h->start_mark;
    char pidpath[PATH_MAX];
    snprintf(pidpath, sizeof(pidpath), "%s/postmaster.pid", h->datadir);
    for (;;) {
        if (log_has_since(h, &pos, READY_LINE))
            return 0;
        /* Dead: the pid file names a dead process (given the new postmaster time to replace
         * a stale file), or there is still no pid file after 3 s. */
        pid_t pid = read_pidfile(pidpath);
        long long elapsed = now_ms() - start;
        int dead = pid ? !pid_alive(pid) && elapsed > 500 : elapsed > 3000;
        if (dead || now_ms() > end) {
            fprintf(stderr, "pgharness: server in %s %s after %lld ms; log since start:\n", h->dir,
                    dead ? "is not running" : "not ready", now_ms() - start);
            pgh_dump_log(h, h->start_mark);
            return -1;
        }
        sleep_ms(5);
    }
}

int pgh_stop(struct pgh *h, const char *mode)
{
    if (!h->dir[0] || !mode ||
        (strcmp(mode, "fast") && strcmp(mode, "immediate") && strcmp(mode, "smart"))) {
        fprintf(stderr, "pgharness: pgh_stop: bad mode or harness\n");
        return -1;
    }
    pid_t pid = pgh_postmaster_pid(h);
    if (pid)
        kill(pid, SIGCONT);
    char pg_ctl[PATH_MAX];
    bin_path(pg_ctl, sizeof(pg_ctl), "pg_ctl");
    const char *argv[] = {pg_ctl, "-D", h->datadir, "-m", mode, "-w", "-t", "60", "stop", NULL};
    if (run_server_cmd(h, argv, 90000))
        return -1;
    h->running = 0;
    if (h->held)
        drop_standby_signal(h);
    h->held = 0;
    return 0;
}

int pgh_crash_rows(struct pgh *h, long rows)
{
    if (!h->running || h->held || rows < 0) {
        fprintf(stderr, "pgharness: pgh_crash needs a running server out of recovery\n");
        return -1;
    }
    /* CHECKPOINT first, so recovery replays exactly the WAL written here. */
    char insert[256];
    snprintf(insert, sizeof(insert),
             "INSERT INTO wl_crash SELECT g, repeat('x', 100) FROM generate_series(1, %ld) g",
             rows);
    char psql[PATH_MAX];
    bin_path(psql, sizeof(psql), "psql");
    const char *argv[] = {psql,
                          "-X",
                          "-q",
                          "-v",
                          "ON_ERROR_STOP=1",
                          "-d",
                          h->conninfo,
                          "-c",
                          "SET client_min_messages = warning",
                          "-c",
                          "CHECKPOINT",
                          "-c",
                          "DROP TABLE IF EXISTS wl_crash",
                          "-c",
                          "CREATE TABLE wl_crash (id int, pad text)",
                          "-c",
                          insert,
                          NULL};
    if (run_as_server(h, argv, 300000, h->password[0] ? h->password : NULL))
        return -1;
    return pgh_stop(h, "immediate");
}

int pgh_crash(struct pgh *h)
{
    const char *env = getenv("WL_PG_CRASH_ROWS");
    long rows = env && *env ? strtol(env, NULL, 10) : PGH_CRASH_ROWS;
    return pgh_crash_rows(h, rows > 0 ? rows : PGH_CRASH_ROWS);
}

pid_t pgh_postmaster_pid(const struct pgh *h)
{
    char p[PATH_MAX];
    if (!h->dir[0] || fmt(p, sizeof(p), "%s/postmaster.pid", h->datadir))
        return 0;
    pid_t pid = read_pidfile(p);
    return pid_alive(pid) ? pid : 0;
}

/* ---------------------------------------------------------------- the log */

long pgh_log_mark(const struct pgh *h)
{
    struct stat st;
    return h->dir[0] && stat(h->logpath, &st) == 0 ? (long)st.st_size : 0;
}

int pgh_count_log_since(const struct pgh *h, long mark, const char *needle)
{
    if (!h->dir[0])
        return 0;
    FILE *f = fopen(h->logpath, "re");
    if (!f)
        return 0;
    int count = 0;
    if (fseek(f, mark, SEEK_SET) == 0) {
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0) {
            if (strstr(line, needle))
                count++;
        }
        free(line);
    }
    fclose(f);
    return count;
}

int pgh_count_log(const struct pgh *h, const char *needle)
{
    return pgh_count_log_since(h, 0, needle);
}

int pgh_count_log_57P03_since(const struct pgh *h, long mark)
{
    return pgh_count_log_since(h, mark, PGH_LOG_STARTING_UP) +
           pgh_count_log_since(h, mark, PGH_LOG_NOT_YET_ACCEPTING) +
           pgh_count_log_since(h, mark, PGH_LOG_NOT_ACCEPTING);
}

long long pgh_log_ready_realtime_ns(const struct pgh *h, long mark)
{
    FILE *f = h->dir[0] ? fopen(h->logpath, "re") : NULL;
    if (!f)
        return 0;
    long long t = 0;
    char *line = NULL;
    size_t cap = 0;
    if (fseek(f, mark, SEEK_SET) == 0) {
        while (!t && getline(&line, &cap, f) > 0) {
            struct tm tm;
            int msec = 0;
            memset(&tm, 0, sizeof(tm));
            if (strstr(line, READY_LINE) &&
                sscanf(line, "%d-%d-%d %d:%d:%d.%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                       &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &msec) == 7) {
                tm.tm_year -= 1900;
                tm.tm_mon -= 1;
                t = (long long)timegm(&tm) * 1000000000LL + (long long)msec * 1000000LL;
            }
        }
    }
    free(line);
    fclose(f);
    return t;
}

int pgh_wait_57P03_since(const struct pgh *h, long mark, int n, int timeout_ms)
{
    long long end = now_ms() + timeout_ms;
    while (pgh_count_log_57P03_since(h, mark) < n) {
        if (now_ms() > end)
            return -1;
        sleep_ms(2);
    }
    return 0;
}

void pgh_dump_log(const struct pgh *h, long mark)
{
    enum { TAIL = 16384 };
    long end = pgh_log_mark(h);
    FILE *f = h->dir[0] ? fopen(h->logpath, "re") : NULL;
    if (!f) {
        fprintf(stderr, "  (no server log)\n");
        return;
    }
    if (end - mark > TAIL) {
        fprintf(stderr, "  (... %ld bytes skipped)\n", end - mark - TAIL);
        mark = end - TAIL;
    }
    char *line = NULL;
    size_t cap = 0;
    if (fseek(f, mark, SEEK_SET) == 0) {
        while (getline(&line, &cap, f) > 0)
            fprintf(stderr, "  | %s", line);
    }
    free(line);
    fclose(f);
}

/* ---------------------------------------------------------------- psql */

static int psql_run(struct pgh *h, const char *conninfo, const char *password, const char *sql,
                    char *out, size_t outsz, char *err, size_t errsz, struct run *r,
                    const char **argv)
{
    static char psql[PATH_MAX];
    bin_path(psql, sizeof(psql), "psql");
    const char *args[] = {psql, "-X",     "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-d", conninfo, "-c", sql,  NULL};
    memcpy(argv, args, sizeof(args));
    *r = (struct run){.argv = argv,
                      .as_server = 1,
                      .cwd = h->dir,
                      .password = password,
                      .timeout_ms = PSQL_TIMEOUT,
                      .out = out,
                      .outsz = outsz,
                      .err = err,
                      .errsz = errsz};
    return run(r);
}

int pgh_psql_conn(struct pgh *h, const char *conninfo, const char *password, const char *sql,
                  char *out, size_t outsz)
{
    static char scratch[ERRBUF];
    const char *argv[12];
    struct run r;
    if (!h->dir[0])
        return -1;
    if (!out || outsz == 0) {
        out = scratch;
        outsz = sizeof(scratch);
    }
    return psql_run(h, conninfo, password, sql, NULL, 0, out, outsz, &r, argv);
}

int pgh_query(struct pgh *h, const char *sql, char *out, size_t outsz)
{
    static char err[ERRBUF];
    const char *argv[12];
    struct run r;
    if (!h->dir[0])
        return -1;
    int status = psql_run(h, h->conninfo, h->password[0] ? h->password : NULL, sql, out, outsz, err,
                          sizeof(err), &r, argv);
    if (status != 0) {
        report(&r, status, out);
        return -1;
    }
    size_t n = strlen(out);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        out[--n] = '\0';
    return 0;
}

int pgh_psql(struct pgh *h, const char *sql)
{
    static char out[ERRBUF];
    return pgh_query(h, sql, out, sizeof(out));
}

/* ---------------------------------------------------------------- the probe */

static int io_full(int fd, char *buf, size_t len, int writing, long long deadline)
{
    size_t off = 0;
    while (off < len) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
        int pr = poll(&p, 1, (int)left);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            return -1;
        ssize_t n = writing ? send(fd, buf + off, len - off, MSG_NOSIGNAL)
                            : recv(fd, buf + off, len - off, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

static void put32(char *p, uint32_t v)
{
    v = htonl(v);
    memcpy(p, &v, 4);
}

enum pgh_probe_result pgh_probe(const struct pgh *h, int port, char *sqlstate, int timeout_ms)
{
    if (sqlstate)
        sqlstate[0] = '\0';
    if (!h->dir[0])
        return PGH_PROBE_ERROR;
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fmt(sa.sun_path, sizeof(sa.sun_path), "%s/.s.PGSQL.%d", h->sockdir, port ? port : h->port))
        return PGH_PROBE_ERROR;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PGH_PROBE_ERROR;
    /* A blocking connect bounded by SO_SNDTIMEO: a Unix socket whose backlog is full makes a
     * non-blocking connect fail with EAGAIN rather than wait. */
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = errno;
        close(fd);
        return e == ENOENT || e == ECONNREFUSED ? PGH_PROBE_NOSERVER : PGH_PROBE_ERROR;
    }
    static const char params[] = "user\0" DB_USER "\0database\0postgres\0"
                                 "application_name\0pgh_probe\0";
    char pkt[128];
    uint32_t len = 8 + (uint32_t)sizeof(params); /* sizeof counts the final terminator */
    put32(pkt, len);
    put32(pkt + 4, 196608); /* protocol 3.0 */
    memcpy(pkt + 8, params, sizeof(params));
    enum pgh_probe_result res = PGH_PROBE_ERROR;
    char head[5];
    if (io_full(fd, pkt, len, 1, deadline) < 0 || io_full(fd, head, 5, 0, deadline) < 0)
        goto out;
    uint32_t blen;
    memcpy(&blen, head + 1, 4);
    blen = ntohl(blen);
    if (blen < 4 || blen > 65536)
        goto out;
    char *body = malloc(blen - 4 + 1);
    if (!body)
        goto out;
    if (io_full(fd, body, blen - 4, 0, deadline) < 0) {
        free(body);
        goto out;
    }
    body[blen - 4] = '\0';
    if (head[0] == 'R' && blen >= 8) {
        uint32_t code;
        memcpy(&code, body, 4);
        res = PGH_PROBE_ACCEPTED;
        if (ntohl(code) == 0) {
            /* AuthenticationOk: say goodbye so the server logs no EOF. An authentication request
             * is left unanswered: the server then ends the backend without a message. */
            char bye[5] = {'X'};
            put32(bye + 1, 4);
            io_full(fd, bye, 5, 1, deadline);
        }
    } else if (head[0] == 'E') {
        res = PGH_PROBE_REJECTED;
        for (size_t i = 0; i < blen - 4 && body[i];) {
            char type = body[i++];
            const char *val = body + i;
            if (type == 'C' && sqlstate)
                snprintf(sqlstate, 6, "%s", val);
            i += strlen(val) + 1;
        }
    }
    free(body);
out:
    close(fd);
    return res;
}

/* ---------------------------------------------------------------- pgbouncer */

/* Wait until pgbouncer accepts on its Unix socket (connect only: no server connection). */
static int bouncer_listening(struct pgh *h, pid_t *pid)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/pgbouncer.pid", h->dir);
    *pid = read_pidfile(p);
    if (!pid_alive(*pid))
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fmt(sa.sun_path, sizeof(sa.sun_path), "%s/.s.PGSQL.%d", h->dir, h->bouncer_port))
        return 0;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

int pgh_bouncer_start(struct pgh *h, int *port)
{
    return pgh_bouncer_start_with(h, port, NULL);
}

int pgh_bouncer_start_with(struct pgh *h, int *port, const char *settings)
{
    static char log[ERRBUF];
    const char *why = pgh_bouncer_unavailable();
    if (why) {
        fprintf(stderr, "pgharness: pgbouncer unavailable: %s\n", why);
        return -1;
    }
    if (!h->dir[0])
        return -1;
    if (h->bouncer_running) {
        if (port)
            *port = h->bouncer_port;
        return 0;
    }
    int bport = free_port(h->port);
    if (bport < 0)
        return -1;
    h->bouncer_port = bport;
    char users[PATH_MAX], ini[PATH_MAX], text[4096], quoted[300];
    size_t q = 0;
    for (const char *s = h->password; *s && q + 3 < sizeof(quoted); s++) {
        if (*s == '"')
            quoted[q++] = '"';
        quoted[q++] = *s;
    }
    quoted[q] = '\0';
    snprintf(users, sizeof(users), "%s/userlist.txt", h->dir);
    snprintf(text, sizeof(text), "\"" DB_USER "\" \"%s\"\n", quoted);
    if (write_file(users, text, 0, 0600) || give(users))
        return -1;
    snprintf(ini, sizeof(ini), "%s/pgbouncer.ini", h->dir);
    if (fmt(text, sizeof(text),
            "[databases]\n"
            "* = host=%s port=%d\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            "listen_port = %d\n"
            "unix_socket_dir = %s\n"
            "auth_type = %s\n"
            "auth_file = %s\n"
            "pool_mode = session\n"
            "max_client_conn = 1000\n"
            "default_pool_size = 80\n"
            "admin_users = " DB_USER "\n"
            "ignore_startup_parameters = extra_float_digits\n"
            "logfile = %s\n"
            "pidfile = %s/pgbouncer.pid\n"
            "%s",
            h->sockdir, h->port, bport, h->dir, h->scram ? "scram-sha-256" : "trust", users,
            h->bouncer_logpath, h->dir, settings ? settings : "") ||
        write_file(ini, text, 0, 0644) || give(ini))
        return -1;
    if (fmt(h->bouncer_conninfo, sizeof(h->bouncer_conninfo),
            "host=%s port=%d dbname=postgres user=" DB_USER, h->dir, bport) ||
        fmt(h->bouncer_tcp_conninfo, sizeof(h->bouncer_tcp_conninfo),
            "hostaddr=127.0.0.1 port=%d dbname=postgres user=" DB_USER, bport))
        return -1;

    const char *argv[] = {g_bouncer, "-d", ini, NULL};
    if (run_server_cmd(h, argv, 20000))
        goto fail;
    long long end = now_ms() + 10000;
    pid_t pid = 0;
    while (!bouncer_listening(h, &pid)) {
        if (now_ms() > end || (pid && !pid_alive(pid)))
            goto fail;
        sleep_ms(5);
    }
    h->bouncer_running = 1;
    if (port)
        *port = bport;
    return 0;
fail:
    fprintf(stderr, "pgharness: pgbouncer did not come up on port %d; its log:\n%s\n", bport,
            read_small(h->bouncer_logpath, log, sizeof(log)) > 0 ? log : "(empty)");
    pgh_bouncer_stop(h);
    return -1;
}

void pgh_bouncer_stop(struct pgh *h)
{
    if (!h->dir[0] || h->owner != getpid())
        return;
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/pgbouncer.pid", h->dir);
    pid_t pid = read_pidfile(p);
    if (pid_alive(pid) && pid_belongs(pid, h->dir)) {
        kill(pid, SIGTERM);
        kill(pid, SIGCONT);
        if (wait_gone(pid, 5000) < 0) {
            kill(pid, SIGKILL);
            wait_gone(pid, 2000);
        }
    }
    h->bouncer_running = 0;
}

/* ---------------------------------------------------------------- destroy */

void pgh_destroy(struct pgh *h)
{
    if (!h->dir[0] || h->owner != getpid())
        return;
    pgh_bouncer_stop(h);
    kill_servers_in(h->dir);
    live_remove(h->dir);
    if (env_flag("WL_PG_KEEP"))
        fprintf(stderr, "pgharness: WL_PG_KEEP: kept %s\n", h->dir);
    else
        rm_rf(h->dir);
    h->dir[0] = '\0';
    h->running = 0;
    h->bouncer_running = 0;
}
