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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "engine.h"
#include "internal.h"

#define PIDFILE_STATUS_LINE 8 /* postmaster.pid: pid, datadir, start, port, sockdir, listen,
                               * shmem key, status */

void wl__pmwatch_init(struct wl__pmwatch *w)
{
    memset(w, 0, sizeof(*w));
    w->fd = w->sock_wd = w->data_wd = -1;
}

void wl__pmwatch_close(struct wl__pmwatch *w)
{
    if (w->fd >= 0)
        close(w->fd);
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
    char lock[PATH_MAX], datadir[PATH_MAX];
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
    if ((w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC)) < 0)
        return -1;
    /* the socket directory: the socket file appearing */
    w->sock_wd = inotify_add_watch(w->fd, host, IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
    /* the data directory, from the lock file: postmaster.pid's rewrites */
    snprintf(lock, sizeof(lock), "%s/%s.lock", host, w->sockname);
    if (read_line(lock, 2, datadir, sizeof(datadir)) == 0 && datadir[0] == '/' &&
        strlen(datadir) + sizeof("/postmaster.pid") <= sizeof(w->pidfile)) {
        w->data_wd = inotify_add_watch(w->fd, datadir,
                                       IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
        if (w->data_wd >= 0)
            snprintf(w->pidfile, sizeof(w->pidfile), "%s/postmaster.pid", datadir);
    }
    if (w->sock_wd < 0 && w->data_wd < 0) {
        close(w->fd);
        w->fd = -1;
        return -1;
    }
    return 0;
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
