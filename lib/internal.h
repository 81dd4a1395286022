/* Declarations shared between the library's files (wl__*). Not installed. */
#ifndef WL_INTERNAL_H
#define WL_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "warmlock.h"

#define WL_UNUSED __attribute__((unused))
#define WL_PRINTF(a, b) __attribute__((format(printf, a, b)))

#include <pthread.h>
#include <sys/types.h>

#include "layout.h"

/* segment.c */
uint64_t wl__pidns(void);
/* This process's PID namespace as seg keeps it (read once, on first need). */
uint64_t wl__segment_pidns(struct wl_segment *seg);
/* The segment's random 16-byte salt (the header's, fixed at creation). */
const uint8_t *wl__segment_salt(const struct wl_segment *seg);

/* mutex.c: the robust, process-shared lock and its one recovery path */
/* Take a robust mutex: trylock when deadline_ns is 0, else block until the monotonic
 * deadline. On EOWNERDEAD, calls repair(arg) and pthread_mutex_consistent(): the only place
 * that sees EOWNERDEAD. Returns 0, 1 (acquired after its owner died), -EBUSY, -ETIMEDOUT,
 * or another -errno. */
int wl__lock(pthread_mutex_t *m, uint64_t deadline_ns, void (*repair)(void *), void *arg);
void wl__unlock(pthread_mutex_t *m);
void wl__mutex_init(pthread_mutex_t *m);
/* Is the mutex held by a live thread? Read-only (no lock taken): 1 yes, 0 no. *tid gets
 * the holder's thread id as the kernel recorded it, 0 if none. */
int wl__mutex_held(pthread_mutex_t *m, int *tid);

/* slot.c */
uint64_t wl__key_hash(const char *key, size_t len);
/* The slot of key, or NULL; allocate: create it if missing (-ENOSPC when full). */
int wl__slot_find(struct wl_segment *seg, const char *key, int allocate,
                  struct wl__slot **out);
/* Is sl still the slot of the key with this hash, at state word s (just loaded with
 * acquire)? No once the key was forgotten (wl_forget), whether or not another key has
 * taken the slot over since. A decision on s stands only if s is rechecked afterwards. */
int wl__slot_is(struct wl__slot *sl, uint32_t s, uint64_t hash);
/* Called by a warm-up in progress (the leader's engine) after a failed attempt: the text
 * becomes the slot's last error, shown to followers that time out and in status. A no-op
 * outside a warm-up. */
void wl__warm_progress(int code, const char *error, const char *sqlstate);
/* A warm-up claimed without blocking, for an event loop that runs warm-ups itself (the
 * keeper): the claimant holds the slot's mutex, in the claiming thread, from
 * wl__claim_try() to wl__claim_publish(). wl_ensure's leader goes through the same three
 * calls. */
struct wl__claim {
    struct wl_segment *seg;
    struct wl__slot *sl;
    uint32_t gen;  /* the WARMING state word claimed with: publish is a CAS from it */
    pid_t pid;     /* the claiming process: a forked child may not publish */
    uint64_t t0;   /* CLOCK_MONOTONIC at the claim */
    int staged;    /* a stage was reported (wl__claim_stage) since the claim */
};
/* Become the leader of key's slot (allocating it) without blocking. Claims a COLD, STALE
 * or FAILED slot (whatever the failure's age: the caller paces itself), or a WARMING one
 * whose leader died (a takeover). 0 claimed; -EALREADY READY (nothing to do); -EBUSY a live
 * process is warming it; -ENOSPC, -EINVAL, other -errno. */
int wl__claim_try(struct wl_segment *seg, const char *key, struct wl__claim *c);
/* A failed attempt of a claimed warm-up: the text becomes the slot's last error (shown to
 * followers that time out, and in status); code is the transient failure it stands for
 * (-ECONNREFUSED nothing listens, -EAGAIN the server answered but is not ready, -ETIMEDOUT
 * the attempt timed out); the first one since READY starts the outage clock (down_ms). */
void wl__claim_progress(struct wl__claim *c, int code, const char *error, const char *sqlstate);
/* End a claimed warm-up and unlock. rc 0: READY at a new epoch (res->epoch). A permanent
 * failure (anything but the transient codes -ECONNREFUSED, -EAGAIN, -ETIMEDOUT,
 * -ECANCELED): FAILED, served to callers for their fail_ttl_ms. A transient one: STALE,
 * its error kept, the outage clock running, so callers with time left carry on waiting and
 * the next prober claims it. Returns rc, or -ECANCELED if the slot was reset meanwhile,
 * -ECHILD if called from a process other than the claimant (nothing is published then). */
int wl__claim_publish(struct wl__claim *c, int rc, struct wl_result *res);
/* How far a claimed warm-up's current attempt got (WL_STAGE_*), for status: reported as
 * it advances and again when an attempt fails. A READY publish is WL_STAGE_VERIFIED; a
 * failure with no report is WL_STAGE_NONE. wl__warm_stage: the same for the warm-up this
 * thread runs inside wl_ensure (a no-op outside one). */
void wl__claim_stage(struct wl__claim *c, int stage);
void wl__warm_stage(int stage);
/* CLOCK_BOOTTIME - CLOCK_MONOTONIC now: grows by the time the kernel spent suspended. */
int64_t wl__boot_gap_ns(void);
/* Tests only: behave as if the host had been suspended for ns more (added to this
 * process's CLOCK_BOOTTIME and CLOCK_REALTIME readings, as a real resume moves both). */
void wl__test_suspend(int64_t ns);
/* A keeper's check verified key at epoch: refresh its verification time (max_age_ms). */
void wl__slot_touch(struct wl_segment *seg, const char *key, uint64_t epoch);
/* Followers waiting on a slot now (live tokens plus the uncounted rest). Read-only. */
uint32_t wl__slot_waiters(struct wl_segment *seg, struct wl__slot *sl);
/* Is this a re-verification of a READY slot (wl_wait_opts.max_age_ms) rather than a
 * warm-up? Valid inside a warm function; the libpq engine then runs verify_sql once. */
int wl__warm_reverifying(void);
/* Called by a warm function whose verifying connection goes to its caller on success: the
 * READY it publishes says so (wl__slot.handover_ns), and the followers it wakes begin their
 * own logins WL__HANDOVER_GRACE_NS after it, so that the caller's first query is not queued
 * behind the herd's logins (on a small host they take every core the moment they wake). */
void wl__warm_hands_over(void);
#define WL__HANDOVER_GRACE_NS (2ull * 1000000u)
/* Was this warm-up asked for by a WL_FAIL_FAST caller? (One attempt is enough.) */
int wl__warm_fail_fast(void);
/* Called inside a warm function whose transient failure is its caller's final answer
 * (its own attempt budget ran out): wl_ensure returns it instead of carrying on. */
void wl__warm_stop(void);

/* Prepared keys (slot.c). Take one of the slot's first `budget` login tokens (at most
 * WL__LOGIN_TOKENS; robust mutexes, so a dead holder's is freed by the kernel), waiting for
 * one until deadline_ns: its index, or -ETIMEDOUT, -EINVAL. Give it back after the login. */
struct wl_key;
int wl__key_login_take(struct wl_key *k, unsigned budget, uint64_t deadline_ns);
void wl__key_login_give(struct wl_key *k, int token);
/* wl_key_ensure's ready path alone: 1 (res filled as a follower's) when k's slot is READY
 * at the word k saw last and fresh for max_age_ms (0: any age), else 0. */
int wl__key_ready(struct wl_key *k, uint32_t max_age_ms, struct wl_result *res);
/* The key's text. */
const char *wl__key_text(const struct wl_key *k);
/* Is code a transient failure (the server may come back by itself)? */
int wl__transient(int code);
/* Is a WARMING slot's leader alive (probes its mutex)? */
int wl__slot_leader_alive(struct wl__slot *sl);

/* util.c: clocks and messages */
uint64_t wl__now_ns(void);                 /* CLOCK_MONOTONIC */
uint64_t wl__realtime_ms(void);            /* CLOCK_REALTIME, ms since the epoch */
void wl__ns_to_timespec(uint64_t ns, struct timespec *ts);
/* snprintf into buf (never overflows; truncates). */
void wl__fmt(char *buf, size_t len, const char *fmt, ...) WL_PRINTF(3, 4);
/* strdup(s), NULL for NULL; *oom = 1 when it could not allocate. */
char *wl__dup_or_null(const char *s, int *oom);
/* Set the thread's wl_last_error() message; returns code for tail calls. */
int wl__set_error(int code, const char *fmt, ...) WL_PRINTF(2, 3);
void wl__copy(char *dst, size_t len, const char *src); /* strlcpy */
/* Collapse newlines, tabs and runs of spaces in place, trim the ends; returns s. */
char *wl__oneline(char *s);
/* One logfmt line on stderr, ts level=info msg="msg" key=value, for the library's own
 * notices (msg and value are constant text of the library's that needs no escaping). */
void wl__log_info(const char *msg, const char *key, const char *value);

/* futex.c: the readiness word */
/* Sleep while *word == expected, until woken or the monotonic deadline (0: none).
 * Returns 0 (woken or value changed) or -ETIMEDOUT or -EINTR. */
int wl__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns);
void wl__futex_wake_all(_Atomic uint32_t *word);

/* backoff.c: retry schedules. */
/* Sleep for ns (a bounded backoff step; never a readiness guess). */
void wl__backoff_pause(uint64_t ns);

/* -- The leader's retry schedule (backoff.c); the engine's internals are in ring.h and engine.h. -- */

/* backoff.c: the leader's retry schedule (struct wl_backoff with its defaults filled). */
struct wl_backoff;
struct wl_pg_opts;
#define WL__BACKOFF_INITIAL_MS 10u
#define WL__BACKOFF_MAX_MS 250u
#define WL__BACKOFF_REFUSED_MS 5u /* struct wl_backoff.refused_ms */
#define WL__BACKOFF_BUSY_MS 25u   /* struct wl_backoff.busy_ms */
#define WL__BACKOFF_DEADLINE_MS 30000u
#define WL__JITTER_NONE (-1)
#define WL__JITTER_FULL 1
#define WL__JITTER_DECORRELATED 2
struct wl__backoff_state {
    uint64_t initial_ns, max_ns; /* first delay and cap of one delay */
    uint32_t max_attempts;       /* 0: unlimited */
    uint32_t failures;           /* attempts that failed so far */
    uint64_t start_ns, deadline_ns; /* CLOCK_MONOTONIC */
    uint64_t prev_ns;            /* the previous delay (decorrelated jitter) */
    uint64_t rng;
    int jitter;                  /* WL__JITTER_* */
};
/* Fill defaults from opts (may be NULL): deadline = opts->deadline_ms, else
 * default_deadline_ms, else 30 s from now_ns. seed 0 picks one from the pid and clock. */
void wl__backoff_init(struct wl__backoff_state *b, const struct wl_backoff *opts,
                      uint32_t default_deadline_ms, uint64_t now_ns, uint64_t seed);
/* Count one failed attempt and give the delay before the next one (never past the
 * deadline). 0, -EAGAIN when max_attempts ran out, -ETIMEDOUT when the deadline passed. */
int wl__backoff_next(struct wl__backoff_state *b, uint64_t now_ns, uint64_t *delay_ns);

#endif
