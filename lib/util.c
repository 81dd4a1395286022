/* Clocks, messages and the names of codes. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "internal.h"

static _Thread_local char last_error[512];

uint64_t wl__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t wl__realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void wl__ns_to_timespec(uint64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / 1000000000u);
    ts->tv_nsec = (long)(ns % 1000000000u);
}

void wl__fmt(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (len == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

void wl__copy(char *dst, size_t len, const char *src)
{
    size_t n;
    if (len == 0)
        return;
    n = strnlen(src, len - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

char *wl__dup_or_null(const char *s, int *oom)
{
    char *d;
    if (!s)
        return NULL;
    if (!(d = strdup(s)))
        *oom = 1;
    return d;
}

int wl__set_error(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return code;
}

WL_EXPORT const char *wl_last_error(void)
{
    return last_error;
}

WL_EXPORT const char *wl_version(void)
{
    return WL_VERSION_STRING;
}

WL_EXPORT const char *wl_state_name(enum wl_state state)
{
    switch (state) {
    case WL_COLD: return "cold";
    case WL_WARMING: return "warming";
    case WL_READY: return "ready";
    case WL_STALE: return "stale";
    case WL_FAILED: return "failed";
    }
    return "unknown";
}

WL_EXPORT const char *wl_strerror(int code)
{
    switch (code < 0 ? -code : code) {
    case 0: return "success";
    case ETIMEDOUT: return "ETIMEDOUT: deadline passed before the key became ready";
    case EACCES: return "EACCES: authentication refused (SQLSTATE class 28)";
    case ENOENT: return "ENOENT: database, role or segment does not exist";
    case ECONNREFUSED: return "ECONNREFUSED: server not reachable (nothing listens)";
    case EAGAIN: return "EAGAIN: the server answers but is not ready (starting up, in recovery, full)";
    case EINVAL: return "EINVAL: invalid argument, name, key or conninfo";
    case EPROTO: return "EPROTO: incompatible or corrupt segment";
    case EPERM: return "EPERM: not permitted (a segment owned by another user or unsafe, or io_uring blocked)";
    case EIO: return "EIO: the warm-up or verification query failed";
    case ENOSPC: return "ENOSPC: every slot of the segment is in use";
    case ECHILD: return "ECHILD: a forked child of the leader may not publish";
    case ECANCELED: return "ECANCELED: the slot was reset while warming";
    case EBUSY: return "EBUSY: a warm-up is in flight";
    case ESTALE: return "ESTALE: the segment's name now refers to another object";
    case ENAMETOOLONG: return "ENAMETOOLONG: name too long";
    case ENOMEM: return "ENOMEM: out of memory";
    case ENOSYS: return "ENOSYS: not supported by this kernel";
    default: return strerror(code < 0 ? -code : code);
    }
}

char *wl__oneline(char *s)
{
    char *r = s, *w = s;
    int space = 0;

    for (; *r; r++) {
        if (*r == '\n' || *r == '\r' || *r == '\t' || *r == ' ') {
            space = w != s;
            continue;
        }
        if (space)
            *w++ = ' ';
        space = 0;
        *w++ = *r;
    }
    *w = '\0';
    return s;
}

/* The library's own log lines (rare: the io_uring fallback). The programs format theirs
 * with the coordinator's helpers. */
void wl__log_info(const char *msg, const char *key, const char *value)
{
    struct timespec ts;
    struct tm tm;
    char when[40];

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "ts=%s.%03ldZ level=info msg=\"%s\" %s=%s\n", when,
            ts.tv_nsec / 1000000L, msg, key, value);
    fflush(stderr);
}
