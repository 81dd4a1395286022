/*
 * What the two programs (warmlock, warmlockd) share, on the library's public API only:
 * rendering of slot snapshots (table, JSON, Prometheus text), option and duration parsing,
 * file reading, logfmt lines, and the systemd/s6 readiness notifications. A static helper
 * library of coordinator/, not installed and not part of libwarmlock.
 *
 * Conventions as in the library: 0 or a count on success, -errno on failure.
 */
#ifndef WLC_COMMON_H
#define WLC_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include "warmlock.h"

#define WLC_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* snprintf into buf (never overflows; truncates). */
void wlc_fmt(char *buf, size_t len, const char *fmt, ...) WLC_PRINTF(3, 4);
/* strlcpy: copy src into dst of size len, truncating, always terminated. */
void wlc_copy(char *dst, size_t len, const char *src);
/* Collapse newlines, tabs and runs of spaces in place, trim the ends; returns s. */
char *wlc_oneline(char *s);

/* wl_snapshot() into a malloc'd array (*out, free() it); returns the count or -errno. */
int wlc_snapshot_all(struct wl_segment *seg, struct wl_slot_info **out);
/* Index of the slot whose key is `key` (its whole length, and the text a snapshot keeps),
 * or -ENOENT. wl_lookup() is the exact match; this one is for a snapshot in hand. */
int wlc_find_slot(const struct wl_slot_info *s, size_t n, const char *key);

/* Renderers: 0, or -EIO when the stream failed. Keys that a snapshot holds only in part
 * (longer than WL_KEY_MAX) or that a format cannot show as they are (control characters,
 * bytes that are not UTF-8) end in "#" and 16 hex digits of the whole key's hash, so two
 * keys never show as one. */
int wlc_format_table(FILE *f, const struct wl_slot_info *s, size_t n);
/* One object {"segment": ..., "slots": [...]}; always valid UTF-8. */
int wlc_format_json(FILE *f, const char *segname, const struct wl_slot_info *s, size_t n);
/* Prometheus text exposition format 0.0.4: gauges, counters, a wait-time histogram. Label
 * values use only the three escapes the format has (\\, \", \n); other control characters
 * and invalid UTF-8 become U+FFFD. */
int wlc_format_prometheus(FILE *f, const char *segname, const struct wl_slot_info *s,
                          size_t n);

/* "2", "0.5", "1.25s" -> ms within [min_ms, max_ms]; -EINVAL malformed, -ERANGE out of it. */
int wlc_parse_seconds(const char *s, uint32_t min_ms, uint32_t max_ms, uint32_t *ms);
int wlc_parse_uint(const char *s, unsigned long max, unsigned long *out);
int wlc_parse_mode(const char *s, mode_t *out); /* octal, at most 0777 */

/* Whole file into a malloc'd NUL-terminated string; -errno with a message in err (a
 * directory is -EISDIR, "is a directory"). */
int wlc_read_file(const char *path, char **out, char *err, size_t errlen);
/* One conninfo per line. Blank lines are skipped; '#' starts a comment at the start of a
 * line or after a space or tab, outside single quotes: a '#' inside a word
 * (password=a#b, a URI's #fragment) or a quoted value belongs to the target. */
int wlc_read_targets(const char *path, char ***out, size_t *nout, char *err, size_t errlen);
void wlc_free_lines(char **lines, size_t n);

/* One logfmt line: ts, level, target (if not NULL), msg, then (key, value) string pairs
 * ending with NULL; a NULL value skips its pair. Values are quoted and escaped as needed. */
void wlc_logfmt(FILE *f, const char *level, const char *target, const char *msg, ...);
/* sd_notify(3) without libsystemd: 0 sent, 1 $NOTIFY_SOCKET unset, or -errno. */
int wlc_sd_notify(const char *state);
/* The s6 convention: write a newline to fd and close it. 0 or -errno. */
int wlc_notify_fd(int fd);

#endif
