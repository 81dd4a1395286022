/*
 * Rendering of wl_snapshot() results (table, JSON, Prometheus text exposition) and the
 * small pieces of logic the two programs share: parsing of durations, modes and target
 * files, logfmt lines, and the systemd/s6 readiness notifications. The programs in
 * coordinator/ only parse options and call these, so the tests can reach all of it. Built
 * on the library's public API only.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "utf8.h"

static const uint32_t hist_bounds_ms[WL_HIST_BUCKETS - 1] = WL_HIST_BOUNDS_MS;

void wlc_fmt(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    if (!len)
        return;
    va_start(ap, fmt);
    if (vsnprintf(buf, len, fmt, ap) < 0)
        buf[0] = '\0';
    va_end(ap);
}

void wlc_copy(char *dst, size_t len, const char *src)
{
    size_t n = strlen(src);
    if (!len)
        return;
    if (n >= len)
        n = len - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

int wlc_snapshot_all(struct wl_segment *seg, struct wl_slot_info **out)
{
    struct wl_slot_info *v = NULL;
    int n, m;

    *out = NULL;
    /* Slots are only ever added; retry if one appeared between counting and copying. */
    for (;;) {
        if ((n = wl_snapshot(seg, NULL, 0)) < 0)
            return n;
        free(v);
        v = calloc(n ? (size_t)n : 1, sizeof(*v));
        if (!v)
            return -ENOMEM;
        if ((m = wl_snapshot(seg, v, (size_t)n)) < 0) {
            free(v);
            return m;
        }
        if (m <= n)
            break;
    }
    *out = v;
    return m;
}

int wlc_find_slot(const struct wl_slot_info *s, size_t n, const char *key)
{
    size_t i, len = strlen(key);
    for (i = 0; i < n; i++) {
        size_t have = s[i].key_len ? s[i].key_len : strlen(s[i].key);
        if (have == len && strncmp(s[i].key, key, WL_KEY_MAX) == 0)
            return (int)i;
    }
    return -ENOENT;
}

/* ---- text escaping ---- */


enum esc { ESC_JSON, ESC_PROM, ESC_LOGFMT };

/* Write s escaped for a JSON string, a Prometheus label value or a logfmt quoted value
 * (without the quotes). Invalid UTF-8 becomes U+FFFD, so every output is valid UTF-8; so
 * does, in a Prometheus label, a control character other than a newline. */
static void put_escaped(FILE *f, const char *s, enum esc how)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t left = strlen(s);

    while (left) {
        size_t n = wlc_utf8_len(p, left);
        unsigned char c = *p;
        if (n == 0 || (how == ESC_PROM && n == 1 && ((c < 0x20 && c != '\n') || c == 0x7f))) {
            /* invalid UTF-8; or, in Prometheus, which has no escapes but \\, \" and \n,
             * any other control character */
            fputs("\xef\xbf\xbd", f);
            p++, left--;
            continue;
        }
        if (n > 1) {
            fwrite(p, 1, n, f);
            p += n, left -= n;
            continue;
        }
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, how == ESC_JSON ? "\\u%04x" : "\\x%02x", c);
        else
            fputc(c, f);
        p++, left--;
    }
}

/* Does the snapshot hold only part of the key, or can a format not show it as it is (a
 * control character, or invalid UTF-8, which the table and the Prometheus text replace)?
 * Then renderers add the whole key's hash. */
static int key_needs_hash(const struct wl_slot_info *x)
{
    const unsigned char *p = (const unsigned char *)x->key;
    size_t left = strlen(x->key);

    if (x->key_len > left)
        return 1;
    while (left) {
        size_t n = wlc_utf8_len(p, left);
        if (n == 0 || (n == 1 && (*p < 0x20 || *p == 0x7f)))
            return 1;
        p += n, left -= n;
    }
    return 0;
}

static void key_hash_suffix(char *buf, size_t len, const struct wl_slot_info *x)
{
    if (key_needs_hash(x))
        wlc_fmt(buf, len, "#%016" PRIx64, x->key_hash);
    else
        buf[0] = '\0';
}

static int finish(FILE *f)
{
    if (fflush(f) != 0 || ferror(f))
        return -EIO;
    return 0;
}

/* ---- the status table ---- */

/* wl_slot_info.fleet by name, as status and status --json show it. */
static const char *fleet_name(int role)
{
    switch (role) {
    case WL_FLEET_LED: return "led";
    case WL_FLEET_WAITED: return "waited";
    case WL_FLEET_SKIPPED: return "skipped";
    case WL_FLEET_LOCAL: return "local";
    default: return "none";
    }
}

static void fmt_ms(char *buf, size_t len, int64_t ms)
{
    if (ms < 0)
        wlc_copy(buf, len, "-");
    else if (ms < 10000)
        wlc_fmt(buf, len, "%lldms", (long long)ms);
    else if (ms < 10ll * 60 * 1000)
        wlc_fmt(buf, len, "%.1fs", (double)ms / 1000.0);
    else if (ms < 48ll * 3600 * 1000)
        wlc_fmt(buf, len, "%.1fh", (double)ms / 3600000.0);
    else
        wlc_fmt(buf, len, "%.1fd", (double)ms / 86400000.0);
}

/* One line per slot: control characters (newlines in a server message) become spaces. */
static void fputs_plain(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? ' ' : *s, f);
}

int wlc_format_table(FILE *f, const struct wl_slot_info *s, size_t n)
{
    int kw = 3;
    size_t i;
    char suf[24];

    for (i = 0; i < n; i++) {
        key_hash_suffix(suf, sizeof(suf), &s[i]);
        int l = (int)(strlen(s[i].key) + strlen(suf));
        if (l > kw)
            kw = l;
    }
    fprintf(f, "%-*s  %-7s %-13s %6s %8s %7s %7s %9s %8s %8s %9s %8s %8s %-7s %-16s %-8s %s\n",
            kw, "KEY", "STATE", "STAGE", "EPOCH", "LEADER", "WAITERS", "WARMUPS", "TAKEOVERS",
            "ATTEMPTS", "FAILURES", "READY_AGE", "TTR", "DOWN", "FLEET", "FLEET_LEADER",
            "SQLSTATE", "LAST_ERROR");
    for (i = 0; i < n; i++) {
        const struct wl_slot_info *x = &s[i];
        char age[32], ttr[32], down[32], pid[24], fl[96];
        fmt_ms(age, sizeof(age), x->state == WL_READY ? x->ready_age_ms : -1);
        fmt_ms(ttr, sizeof(ttr), x->time_to_ready_ms);
        fmt_ms(down, sizeof(down), x->down_ms);
        key_hash_suffix(suf, sizeof(suf), x);
        if (x->leader_pid)
            wlc_fmt(pid, sizeof(pid), "%d%s", (int)x->leader_pid, x->leader_alive ? "*" : "");
        else
            wlc_copy(pid, sizeof(pid), "-");
        /* the fleet leader as the server reports it: backend pid @ client address */
        if (x->fleet_leader_pid)
            wlc_fmt(fl, sizeof(fl), "%d@%s", (int)x->fleet_leader_pid, x->fleet_leader_host);
        else
            wlc_copy(fl, sizeof(fl), "-");
        fputs_plain(f, x->key);
        fputs(suf, f);
        fprintf(f, "%*s  %-7s %-13s %6llu %8s %7u %7llu %9llu %8llu %8llu %9s %8s %8s %-7s ",
                kw - (int)(strlen(x->key) + strlen(suf)), "", wl_state_name(x->state),
                wl_stage_name(x->stage), (unsigned long long)x->epoch, pid, x->waiters,
                (unsigned long long)x->warmups, (unsigned long long)x->takeovers,
                (unsigned long long)x->attempts, (unsigned long long)x->failures, age, ttr,
                down, fleet_name(x->fleet));
        fputs_plain(f, fl);
        fprintf(f, "%*s %-8s ", (int)strlen(fl) < 16 ? 16 - (int)strlen(fl) : 0, "",
                x->sqlstate[0] ? x->sqlstate : "-");
        fputs_plain(f, x->last_error[0] ? x->last_error : "-");
        fputc('\n', f);
    }
    return finish(f);
}

/* ---- JSON ---- */

static void json_str(FILE *f, const char *name, const char *v, int comma)
{
    fprintf(f, "\"%s\": \"", name);
    put_escaped(f, v, ESC_JSON);
    fputs(comma ? "\", " : "\"", f);
}

static void json_ms(FILE *f, const char *name, int64_t ms)
{
    if (ms < 0)
        fprintf(f, "\"%s\": null, ", name);
    else
        fprintf(f, "\"%s\": %lld, ", name, (long long)ms);
}

int wlc_format_json(FILE *f, const char *segname, const struct wl_slot_info *s, size_t n)
{
    size_t i;
    unsigned b;

    fputs("{", f);
    json_str(f, "segment", segname ? segname : "", 1);
    fputs("\"slots\": [", f);
    for (i = 0; i < n; i++) {
        const struct wl_slot_info *x = &s[i];
        fputs(i ? ",\n  {" : "\n  {", f);
        json_str(f, "key", x->key, 1);
        fprintf(f, "\"key_len\": %u, \"key_hash\": \"%016" PRIx64 "\", ",
                x->key_len ? x->key_len : (unsigned)strlen(x->key), x->key_hash);
        json_str(f, "state", wl_state_name(x->state), 1);
        json_str(f, "stage", wl_stage_name(x->stage), 1);
        fprintf(f, "\"epoch\": %llu, \"leader_pid\": %d, \"leader_alive\": %s, "
                   "\"waiters\": %u, \"warmups\": %llu, \"takeovers\": %llu, "
                   "\"attempts\": %llu, \"failures\": %llu, \"invalidations\": %llu, ",
                (unsigned long long)x->epoch, (int)x->leader_pid,
                x->leader_alive ? "true" : "false", x->waiters, (unsigned long long)x->warmups,
                (unsigned long long)x->takeovers, (unsigned long long)x->attempts,
                (unsigned long long)x->failures, (unsigned long long)x->invalidations);
        json_str(f, "last_error", x->last_error, 1);
        fprintf(f, "\"last_code\": %d, ", x->last_code);
        json_str(f, "sqlstate", x->sqlstate, 1);
        json_ms(f, "ready_age_ms", x->ready_age_ms);
        json_ms(f, "time_to_ready_ms", x->time_to_ready_ms);
        json_ms(f, "down_ms", x->down_ms);
        json_str(f, "fleet", fleet_name(x->fleet), 1);
        json_ms(f, "fleet_leader_pid", x->fleet_leader_pid ? x->fleet_leader_pid : -1);
        json_str(f, "fleet_leader_host", x->fleet_leader_host, 1);
        json_str(f, "fleet_leader_app", x->fleet_leader_app, 1);
        fprintf(f, "\"wait_count\": %llu, \"wait_sum_ms\": %.3f, \"wait_hist\": [",
                (unsigned long long)x->wait_count, (double)x->wait_sum_ns / 1e6);
        for (b = 0; b < WL_HIST_BUCKETS; b++) {
            if (b < WL_HIST_BUCKETS - 1)
                fprintf(f, "%s{\"lt_ms\": %u, \"count\": %llu}", b ? ", " : "",
                        hist_bounds_ms[b], (unsigned long long)x->wait_hist[b]);
            else
                fprintf(f, ", {\"lt_ms\": null, \"count\": %llu}",
                        (unsigned long long)x->wait_hist[b]);
        }
        fputs("]}", f);
    }
    fputs(n ? "\n]}\n" : "]}\n", f);
    return finish(f);
}

/* ---- Prometheus text exposition format 0.0.4 ---- */

static void prom_head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{key="..." : the key's label, unique per slot (see key_hash_suffix) */
static void prom_key(FILE *f, const char *name, const struct wl_slot_info *x)
{
    char suf[24];
    key_hash_suffix(suf, sizeof(suf), x);
    fprintf(f, "%s{key=\"", name);
    put_escaped(f, x->key, ESC_PROM);
    fputs(suf, f);
    fputc('"', f);
}

typedef uint64_t (*u64_field)(const struct wl_slot_info *);
#define FIELD(fn, expr) \
    static uint64_t fn(const struct wl_slot_info *x) { return (uint64_t)(expr); }
FIELD(f_epoch, x->epoch)
FIELD(f_waiters, x->waiters)
FIELD(f_pid, x->leader_pid)
FIELD(f_warmups, x->warmups)
FIELD(f_takeovers, x->takeovers)
FIELD(f_attempts, x->attempts)
FIELD(f_failures, x->failures)
FIELD(f_invalidations, x->invalidations)
#undef FIELD

static const struct {
    const char *name, *type, *help;
    u64_field get;
} prom_u64[] = {
    {"warmlock_epoch", "gauge", "Readiness epoch of the last READY.", f_epoch},
    {"warmlock_waiters", "gauge", "Callers waiting for the slot now.", f_waiters},
    {"warmlock_leader_pid", "gauge", "Current or last leader's pid (0: none yet).", f_pid},
    {"warmlock_warmups_total", "counter", "Warm-ups started.", f_warmups},
    {"warmlock_takeovers_total", "counter", "Warm-ups taken over from a dead leader.",
     f_takeovers},
    {"warmlock_attempts_total", "counter", "Connection and query attempts by leaders.",
     f_attempts},
    {"warmlock_failures_total", "counter", "Failed warm-ups.", f_failures},
    {"warmlock_invalidations_total", "counter", "READY to STALE transitions.",
     f_invalidations},
};

int wlc_format_prometheus(FILE *f, const char *segname, const struct wl_slot_info *s,
                          size_t n)
{
    static const enum wl_state states[] = {WL_COLD, WL_WARMING, WL_READY, WL_STALE,
                                           WL_FAILED};
    static const enum wl_stage stages[] = {WL_STAGE_NONE, WL_STAGE_REACHABLE,
                                           WL_STAGE_AUTHENTICATED, WL_STAGE_WARMED,
                                           WL_STAGE_VERIFIED};
    size_t i, k;
    unsigned b;

    prom_head(f, "warmlock_segment_slots", "gauge", "Slots in use in the segment.");
    fputs("warmlock_segment_slots{segment=\"", f);
    put_escaped(f, segname ? segname : "", ESC_PROM);
    fprintf(f, "\"} %zu\n", n);

    prom_head(f, "warmlock_state", "gauge", "1 for the slot's current state, 0 for the others.");
    for (i = 0; i < n; i++)
        for (k = 0; k < sizeof(states) / sizeof(states[0]); k++) {
            prom_key(f, "warmlock_state", &s[i]);
            fprintf(f, ",state=\"%s\"} %d\n", wl_state_name(states[k]),
                    s[i].state == states[k]);
        }
    prom_head(f, "warmlock_stage", "gauge",
              "1 for how far the slot's last warm-up got, 0 for the other stages.");
    for (i = 0; i < n; i++)
        for (k = 0; k < sizeof(stages) / sizeof(stages[0]); k++) {
            prom_key(f, "warmlock_stage", &s[i]);
            fprintf(f, ",stage=\"%s\"} %d\n", wl_stage_name(stages[k]),
                    s[i].stage == stages[k]);
        }
    for (k = 0; k < sizeof(prom_u64) / sizeof(prom_u64[0]); k++) {
        prom_head(f, prom_u64[k].name, prom_u64[k].type, prom_u64[k].help);
        for (i = 0; i < n; i++) {
            prom_key(f, prom_u64[k].name, &s[i]);
            fprintf(f, "} %llu\n", (unsigned long long)prom_u64[k].get(&s[i]));
        }
    }
    /* Absent (rather than a sentinel) for a slot that was never READY. */
    prom_head(f, "warmlock_ready_age_seconds", "gauge", "Seconds since the slot was last READY.");
    for (i = 0; i < n; i++)
        if (s[i].ready_age_ms >= 0) {
            prom_key(f, "warmlock_ready_age_seconds", &s[i]);
            fprintf(f, "} %.3f\n", (double)s[i].ready_age_ms / 1000.0);
        }
    prom_head(f, "warmlock_time_to_ready_seconds", "gauge",
              "Duration of the last successful warm-up.");
    for (i = 0; i < n; i++)
        if (s[i].time_to_ready_ms >= 0) {
            prom_key(f, "warmlock_time_to_ready_seconds", &s[i]);
            fprintf(f, "} %.3f\n", (double)s[i].time_to_ready_ms / 1000.0);
        }
    prom_head(f, "warmlock_down_seconds", "gauge",
              "Seconds since the current outage began (absent while there is none).");
    for (i = 0; i < n; i++)
        if (s[i].down_ms >= 0) {
            prom_key(f, "warmlock_down_seconds", &s[i]);
            fprintf(f, "} %.3f\n", (double)s[i].down_ms / 1000.0);
        }
    /* The library's buckets count waits strictly below each bound (integer ms); that is
     * within 1 ms of Prometheus's "less than or equal". */
    prom_head(f, "warmlock_wait_seconds", "histogram",
              "Time callers spent waiting for the slot (slow path only).");
    for (i = 0; i < n; i++) {
        uint64_t cum = 0;
        for (b = 0; b < WL_HIST_BUCKETS; b++) {
            cum += s[i].wait_hist[b];
            prom_key(f, "warmlock_wait_seconds_bucket", &s[i]);
            if (b < WL_HIST_BUCKETS - 1)
                fprintf(f, ",le=\"%g\"} %llu\n", hist_bounds_ms[b] / 1000.0,
                        (unsigned long long)cum);
            else
                fprintf(f, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
        }
        prom_key(f, "warmlock_wait_seconds_sum", &s[i]);
        fprintf(f, "} %.9f\n", (double)s[i].wait_sum_ns / 1e9);
        prom_key(f, "warmlock_wait_seconds_count", &s[i]);
        /* the buckets' total, so that +Inf == _count even if a caller raced the copy */
        fprintf(f, "} %llu\n", (unsigned long long)cum);
    }
    return finish(f);
}

/* ---- messages ---- */

char *wlc_oneline(char *s)
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

/* ---- option parsing ---- */

int wlc_parse_seconds(const char *s, uint32_t min_ms, uint32_t max_ms, uint32_t *ms)
{
    uint64_t whole = 0, frac = 0, scale = 1000;
    const char *p = s;
    int digits = 0;

    if (!s || !*s)
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        whole = whole * 10 + (uint64_t)(*p - '0');
        if (whole > UINT32_MAX)
            return -ERANGE;
    }
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++, digits++) {
            if (scale > 1) {
                scale /= 10;
                frac += (uint64_t)(*p - '0') * scale;
            }
        }
    }
    if (*p == 's' && p[1] == '\0')
        p++;
    if (*p || !digits)
        return -EINVAL;
    whole = whole * 1000 + frac;
    if (whole < min_ms || whole > max_ms)
        return -ERANGE;
    *ms = (uint32_t)whole;
    return 0;
}

int wlc_parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    unsigned long v;

    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*end || errno)
        return -EINVAL;
    if (v > max)
        return -ERANGE;
    *out = v;
    return 0;
}

int wlc_parse_mode(const char *s, mode_t *out)
{
    char *end;
    unsigned long v;

    if (!s || *s < '0' || *s > '7')
        return -EINVAL;
    v = strtoul(s, &end, 8);
    if (*end || v > 0777 || strlen(s) > 4)
        return -EINVAL;
    *out = (mode_t)v;
    return 0;
}

/* ---- files ---- */

int wlc_read_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0, cap = 0, r;
    int e;

    *out = NULL;
    struct stat st;

    if (!f) {
        e = -errno;
        wlc_fmt(err, errlen, "cannot read %s: %s", path, strerror(-e));
        return e;
    }
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        wlc_fmt(err, errlen, "cannot read %s: it is a directory", path);
        return -EISDIR;
    }
    do {
        if (cap - len < 4096) {
            char *nb;
            if (cap >= 16u << 20) {
                fclose(f);
                free(buf);
                wlc_fmt(err, errlen, "%s is larger than 16 MiB", path);
                return -EFBIG;
            }
            nb = realloc(buf, cap = cap ? cap * 2 : 8192);
            if (!nb) {
                fclose(f);
                free(buf);
                wlc_fmt(err, errlen, "out of memory reading %s", path);
                return -ENOMEM;
            }
            buf = nb;
        }
        r = fread(buf + len, 1, cap - len - 1, f);
        len += r;
    } while (r > 0);
    e = ferror(f) ? (errno ? -errno : -EIO) : 0;
    fclose(f);
    if (e) {
        free(buf);
        wlc_fmt(err, errlen, "cannot read %s: %s", path, strerror(-e));
        return e;
    }
    buf[len] = '\0';
    if (strlen(buf) != len) {
        free(buf);
        wlc_fmt(err, errlen, "%s contains a NUL byte", path);
        return -EINVAL;
    }
    *out = buf;
    return 0;
}

void wlc_free_lines(char **lines, size_t n)
{
    size_t i;
    if (!lines)
        return;
    for (i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

/* End the line at a '#' that starts it or follows a space or tab, outside single quotes
 * (libpq's quoting of key=value values, where \' is a literal quote). */
static void cut_comment(char *line)
{
    int quoted = 0;
    char *p;

    for (p = line; *p; p++) {
        if (quoted && *p == '\\' && p[1]) {
            p++;
            continue;
        }
        if (*p == '\'')
            quoted = !quoted;
        else if (!quoted && *p == '#' && (p == line || p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            return;
        }
    }
}

int wlc_read_targets(const char *path, char ***out, size_t *nout, char *err, size_t errlen)
{
    char *text, *line, *next, **v = NULL;
    size_t n = 0;
    int r;

    *out = NULL;
    *nout = 0;
    if ((r = wlc_read_file(path, &text, err, errlen)) < 0)
        return r;
    for (line = text; line && *line; line = next) {
        char *end;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        while (*line == ' ' || *line == '\t')
            line++;
        cut_comment(line);
        end = line + strlen(line);
        while (end > line && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
            *--end = '\0';
        if (!*line)
            continue;
        char **nv = realloc(v, (n + 1) * sizeof(*v));
        if (!nv || !(nv[n] = strdup(line))) {
            wlc_free_lines(nv ? nv : v, n);
            free(text);
            wlc_fmt(err, errlen, "out of memory reading %s", path);
            return -ENOMEM;
        }
        v = nv;
        n++;
    }
    free(text);
    *out = v;
    *nout = n;
    return 0;
}

/* ---- logfmt ---- */

static int needs_quotes(const char *v)
{
    const unsigned char *p = (const unsigned char *)v;
    if (!*p)
        return 1;
    for (; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p >= 0x7f)
            return 1;
    return 0;
}

static void logfmt_pair(FILE *f, const char *k, const char *v)
{
    fprintf(f, " %s=", k);
    if (needs_quotes(v)) {
        fputc('"', f);
        put_escaped(f, v, ESC_LOGFMT);
        fputc('"', f);
    } else {
        fputs(v, f);
    }
}

void wlc_logfmt(FILE *f, const char *level, const char *target, const char *msg, ...)
{
    struct timespec ts;
    struct tm tm;
    char when[40];
    va_list ap;
    const char *k;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    flockfile(f);
    fprintf(f, "ts=%s.%03ldZ level=%s", when, ts.tv_nsec / 1000000L, level);
    if (target)
        logfmt_pair(f, "target", target);
    logfmt_pair(f, "msg", msg);
    va_start(ap, msg);
    while ((k = va_arg(ap, const char *))) {
        const char *v = va_arg(ap, const char *);
        if (v)
            logfmt_pair(f, k, v);
    }
    va_end(ap);
    fputc('\n', f);
    fflush(f);
    funlockfile(f);
}

/* ---- readiness notification ---- */

int wlc_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa;
    size_t len;
    socklen_t salen;
    int fd, r = 0;

    if (!path || !*path)
        return 1;
    if ((path[0] != '/' && path[0] != '@') || (len = strlen(path)) >= sizeof(sa.sun_path))
        return -EINVAL;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, len);
    if (path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, salen) < 0)
        r = -errno;
    close(fd);
    return r;
}

int wlc_notify_fd(int fd)
{
    ssize_t w;
    int r = 0;

    do
        w = write(fd, "\n", 1);
    while (w < 0 && errno == EINTR);
    if (w < 0)
        r = -errno;
    close(fd);
    return r;
}
