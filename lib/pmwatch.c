/*
 * Knowing when a local server changes state without asking it.
 *
 * A probe of a server that is starting up or in recovery costs it a fork and a FATAL line
 * (57P03), and a probe only every busy_ms leaves the herd waiting up to that long after the
 * server is ready. When the server is on this host, behind a Unix socket, the server says
 * itself when it is ready: the postmaster writes its state ("starting", "standby", "ready",
 * "stopping") into line 8 of postmaster.pid in its data directory, as pg_ctl reads it, and
 * the data directory is line 2 of the socket's lock file (<socket dir>/.s.PGSQL.<port>.lock).
 * The probe watches that directory with inotify (and, while the socket file is missing, the
 * socket directory) and probes when it changes. Reading the data directory needs the
 * server's user, root, or a group-readable data directory (initdb -g); without it nothing
 * is watched and the pace is busy_ms.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"

#define PIDFILE_STATUS_LINE 8 /* postmaster.pid: pid, datadir, start, port, sockdir, listen,
                               * shmem key, status */

/*
 * Closing an inotify descriptor waits for the kernel to free its marks (an RCU grace
 * period: ~10 ms here), and the leader closes its probe's between verifying and serving
 * its own connection. So a probe's descriptor is not closed: its watches are removed
 * (which frees nothing synchronously) and it is kept for the process's next watch. A child
 * after fork() must not read its parent's events: the spare belongs to the process that
 * made it.
 */
static pthread_mutex_t spare_lock = PTHREAD_MUTEX_INITIALIZER;
static int spare_fd = -1;
static pid_t spare_pid;

static int take_fd(void)
{
    int fd = -1;

    pthread_mutex_lock(&spare_lock);
    if (spare_fd >= 0 && spare_pid == getpid()) {
        char buf[4096];
        fd = spare_fd;
        while (read(fd, buf, sizeof(buf)) > 0) /* the old watches' last events */
            ;
    } else if (spare_fd >= 0) {
        close(spare_fd); /* the parent's: its description lives on in the parent */
    }
    spare_fd = -1;
    pthread_mutex_unlock(&spare_lock);
    return fd >= 0 ? fd : inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
}

static void give_fd(struct wl__pmwatch *w)
{
    int old = -1;

    if (w->sock_wd >= 0)
        inotify_rm_watch(w->fd, w->sock_wd);
    if (w->data_wd >= 0)
        inotify_rm_watch(w->fd, w->data_wd);
    pthread_mutex_lock(&spare_lock);
    if (spare_fd >= 0 && spare_pid == getpid())
        old = w->fd; /* one spare is enough */
    else {
        old = spare_fd;
        spare_fd = w->fd;
        spare_pid = getpid();
    }
    pthread_mutex_unlock(&spare_lock);
    if (old >= 0)
        close(old);
}

void wl__pmwatch_init(struct wl__pmwatch *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = w->sock_wd = w->data_wd = -1;
}

void wl__pmwatch_close(struct wl__pmwatch *w)
{
    if (w->fd >= 0)
        give_fd(w);
    wl__pmwatch_init(w);
}

/* Line n (1-based) of a small file into buf, without its newline. 0 or -1. */
static int read_line(const char *path, int n, char *buf, size_t len)
{
    char data[2048];
    ssize_t got;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), line = 1;
    const char *p, *e;

    if (fd < 0)
        return -1;
    got = read(fd, data, sizeof(data) - 1);
    close(fd);
    if (got <= 0)
        return -1;
    data[got] = '\0';
    for (p = data; line < n; line++) {
        if (!(p = strchr(p, '\n')))
            return -1;
        p++;
    }
    e = strchr(p, '\n');
    if (!e)
        return -1; /* a line not yet complete: being written */
    if ((size_t)(e - p) >= len)
        return -1;
    memcpy(buf, p, (size_t)(e - p));
    buf[e - p] = '\0';
    return 0;
}

int wl__pmwatch_setup(struct wl__pmwatch *w, const char *host, const char *port)
{
    long pnum;
    char *end;

    if (w->tried)
        return w->fd >= 0 ? 0 : -1;
    w->tried = 1;
    if (!host || host[0] != '/' || !port || !*port)
        return -1;
    pnum = strtol(port, &end, 10);
    if (*end || pnum <= 0 || pnum > 65535)
        return -1;
    if (strlen(host) >= sizeof(w->sockdir))
        return -1;
    wl__copy(w->sockdir, sizeof(w->sockdir), host);
    snprintf(w->sockname, sizeof(w->sockname), ".s.PGSQL.%ld", pnum);
    if ((w->fd = take_fd()) < 0)
        return -1;
    /* the socket directory: the socket file appearing */
    w->sock_wd = inotify_add_watch(w->fd, host, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
    if (w->sock_wd < 0) {
        give_fd(w);
        w->fd = -1;
        return -1;
    }
    wl__pmwatch_watch_state(w);
    return 0;
}

/* The data directory, from the socket's lock file (there once the server has started):
 * postmaster.pid's rewrites. A few tries, as the server may not have started yet. */
int wl__pmwatch_watch_state(struct wl__pmwatch *w)
{
    char lock[PATH_MAX], datadir[PATH_MAX];

    if (w->fd < 0)
        return -1;
    if (w->data_wd >= 0)
        return 0;
    if (w->state_tries >= 8)
        return -1;
    w->state_tries++;
    snprintf(lock, sizeof(lock), "%s/%s.lock", w->sockdir, w->sockname);
    if (read_line(lock, 2, datadir, sizeof(datadir)) < 0 || datadir[0] != '/' ||
        strlen(datadir) + sizeof("/postmaster.pid") > sizeof(w->pidfile))
        return -1;
    w->data_wd = inotify_add_watch(w->fd, datadir,
                                   IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
    if (w->data_wd < 0)
        return -1;
    snprintf(w->pidfile, sizeof(w->pidfile), "%s/postmaster.pid", datadir);
    return 0;
}

int wl__pmwatch_socket_missing(const struct wl__pmwatch *w)
{
    char path[sizeof(w->sockdir) + sizeof(w->sockname) + 1];
    struct stat st;

    if (w->fd < 0 || w->sock_wd < 0)
        return 0;
    snprintf(path, sizeof(path), "%s/%s", w->sockdir, w->sockname);
    return stat(path, &st) < 0 && errno == ENOENT;
}

int wl__pmwatch_watches_state(const struct wl__pmwatch *w)
{
    return w->fd >= 0 && w->data_wd >= 0;
}

int wl__pmwatch_state(const struct wl__pmwatch *w)
{
    char st[64];
    if (!w->pidfile[0] || read_line(w->pidfile, PIDFILE_STATUS_LINE, st, sizeof(st)) < 0)
        return WL__PM_UNKNOWN;
    if (!strncmp(st, "ready", 5))
        return WL__PM_READY;
    if (!strncmp(st, "standby", 7))
        return WL__PM_STANDBY;
    if (!strncmp(st, "starting", 8))
        return WL__PM_STARTING;
    if (!strncmp(st, "stopping", 8))
        return WL__PM_STOPPING;
    return WL__PM_UNKNOWN;
}

int wl__pmwatch_drain(struct wl__pmwatch *w)
{
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    int what = 0;
    ssize_t n;

    while ((n = read(w->fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (ev->len && ev->wd == w->sock_wd && !strcmp(ev->name, w->sockname))
                what |= WL__PM_EV_SOCKET;
            if (ev->len && ev->wd == w->data_wd && !strcmp(ev->name, "postmaster.pid"))
                what |= WL__PM_EV_STATE;
            if (ev->mask & IN_Q_OVERFLOW)
                what |= WL__PM_EV_SOCKET | WL__PM_EV_STATE;
            p += sizeof(*ev) + ev->len;
        }
    }
    return what;
}
