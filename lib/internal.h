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
#include <stdalign.h>
#include <sys/types.h>

/* ---- The segment's layout (like LMDB's lock file: identity first, checked on every open;
 * every futex word and every mutex on its own cache line). ---- */

#define WL__MAGIC 0x4b434f4c4d524157ull /* "WARMLOCK" read as a little-endian u64 */
#define WL__LAYOUT_VERSION 3
/* The magic word while an initialiser works ("WLINIT.." little-endian), written before the
 * object is sized: an object that carries it is a segment whose creator died half-way,
 * which the next opener finishes. */
#define WL__INIT_MARK 0x2e2e54494e494c57ull
#define WL__LINE 64
#define WL__LIBC_GLIBC 1
#define WL__LIBC_OTHER 2
#ifdef __GLIBC__
#define WL__LIBC WL__LIBC_GLIBC
#else
#define WL__LIBC WL__LIBC_OTHER
#endif

#define WL__NTOKENS 512 /* followers counted exactly at once; more are counted in `waiters` */

struct wl__header {
    /* Written by the initialiser, which holds flock(LOCK_EX) on the object; `magic` last,
     * with a release store, so a reader that sees the magic sees the rest. Never changed. */
    _Atomic uint64_t magic;
    uint32_t layout_version; /* WL__LAYOUT_VERSION */
    uint32_t header_size;    /* sizeof(struct wl__header) */
    uint64_t total_size;     /* header + nslots * slot_size; must equal the object's size */
    uint32_t nslots;
    uint32_t slot_size;      /* sizeof(struct wl__slot) */
    uint32_t mutex_size;     /* sizeof(pthread_mutex_t) in the creator's C library */
    uint32_t libc;           /* WL__LIBC_*: glibc and musl must never share a layout */
    uint32_t creator_uid;
    int32_t creator_pid;
    uint64_t creator_pidns;  /* inode of the creator's /proc/self/ns/pid, 0 if unknown */
    uint64_t created_ms;     /* CLOCK_REALTIME */
    uint8_t salt[16];        /* random (getrandom): keys the password digests in slot keys */
    /* Robust, process-shared; guards slot allocation (key_hash/key of free slots). */
    alignas(WL__LINE) pthread_mutex_t lock;
    /* Slots in use; written under `lock`, read with acquire. */
    alignas(WL__LINE) _Atomic uint32_t nused;
    /* Waiter tokens: a follower holds one (a robust mutex) while it waits, with the index+1
     * of its slot in `slot`; the kernel releases a dead waiter's token, so the waiters of a
     * slot are counted from the live tokens and a killed follower stops counting at once.
     * `slot` is written by the token's holder only, with release after taking it. */
    struct wl__token {
        alignas(WL__LINE) pthread_mutex_t m;
        _Atomic uint32_t slot;
    } tokens[WL__NTOKENS];
};

/* The state word: state in the low 3 bits, a sequence number above that changes on every
 * transition, so a futex waiter never misses one and a publish by an old generation fails
 * its compare-and-swap. */
#define WL__ST(w) ((enum wl_state)((w)&7u))
/* A leader between winning its publish and storing READY or FAILED (a few instructions):
 * readers treat it as WARMING; wl_reset waits it out, so a discarded leader writes nothing. */
#define WL__PUBLISHING 5u
#define WL__IS_WARMING(w) (WL__ST(w) == WL_WARMING || (uint32_t)WL__ST(w) == WL__PUBLISHING)
#define WL__NEXT(w, st) ((((w) >> 3) + 1u) << 3 | (uint32_t)(st))

struct wl__slot {
    /* The futex word waiters sleep on. Changed only by CAS (or exchange in reset), with
     * release; the leader changes it while holding `mutex`; wl_invalidate changes
     * READY -> STALE without it. */
    alignas(WL__LINE) _Atomic uint32_t state;
    /* Robust, process-shared. Held by the leader for the whole warm-up (its death is seen
     * by the kernel), and briefly by any caller deciding whether to lead. */
    alignas(WL__LINE) pthread_mutex_t mutex;
    /* Robust, process-shared. Held by the one follower (the watcher) that blocks on
     * `mutex`, so the kernel wakes it at the leader's death. */
    alignas(WL__LINE) pthread_mutex_t watch;
    /* Robust, process-shared. Held by the one follower (the deputy) that blocks on
     * `watch`, so the kernel wakes it at the watcher's death and it becomes the watcher. */
    alignas(WL__LINE) pthread_mutex_t deputy;

    /* Identity: written under the header lock; key_hash last with release (0: free). */
    alignas(WL__LINE) _Atomic uint64_t key_hash;
    uint32_t key_len;
    char key[WL_KEY_MAX + 1];

    /* Written by the leader under `mutex`, before the release CAS that publishes. */
    _Atomic uint64_t epoch;         /* readiness epoch; READY at `epoch` while READY */
    _Atomic int32_t leader_pid;     /* in the leader's PID namespace */
    _Atomic uint64_t leader_pidns;  /* inode of the leader's PID namespace */
    _Atomic uint64_t claimed_ns;    /* CLOCK_MONOTONIC when the current leader claimed */
    _Atomic uint64_t ready_ns;      /* CLOCK_MONOTONIC of the last READY, 0 never */
    _Atomic int64_t time_to_ready_ns; /* last successful warm-up's duration, -1 never */
    _Atomic uint64_t failed_ns;     /* CLOCK_MONOTONIC of the last FAILED publish */
    _Atomic uint64_t verified_ns;   /* CLOCK_MONOTONIC of the last successful verification
                                     * (READY, a re-verification, a keeper's check) */
    _Atomic uint64_t down_ns;       /* CLOCK_MONOTONIC when the current outage began (the
                                     * first transient failure since READY), 0 if none */
    _Atomic uint64_t retry_ns;      /* a STALE slot left by a transient failure is not
                                     * claimed again before this (paces the probers) */
    _Atomic uint32_t streak;        /* transient publishes since the last READY */

    /* The last failure, under `mutex` and behind the seqcount `info_seq` (odd while being
     * written) so lock-free readers can tell a torn copy; suspect after EOWNERDEAD. */
    _Atomic uint32_t info_seq;
    int32_t fail_code;
    char fail_sqlstate[6];
    char fail_error[256];

    /* Counters: atomic adds, relaxed (statistics only). `waiters` counts only the
     * followers that found no free token (see wl__header.tokens). */
    _Atomic uint32_t waiters;
    _Atomic uint64_t warmups, takeovers, attempts, failures, invalidations;
    _Atomic uint64_t hist[WL_HIST_BUCKETS], wait_count, wait_sum_ns;
};

/* A process's mapping of one segment; kept until exit (glibc bug 14485). */
struct wl__map {
    struct wl__map *next;
    dev_t dev;
    ino_t ino;
    size_t size;
    int fd; /* kept open: it holds the LOCK_SH that marks the segment in use */
    struct wl__header *hdr;
    struct wl__slot *slots;
};

struct wl_segment {
    struct wl__map *map;
    struct wl__header *hdr;  /* = map->hdr */
    struct wl__slot *slots;  /* = map->slots */
    uint32_t nslots;
    uint64_t pidns;          /* this process's PID namespace inode */
    char name[WL_NAME_MAX + 1];
};

/* segment.c */
uint64_t wl__pidns(void);
/* Take a robust mutex: trylock when deadline_ns is 0, else block until the monotonic
 * deadline. On EOWNERDEAD, calls repair(arg) and pthread_mutex_consistent(): the only place
 * that sees EOWNERDEAD. Returns 0, 1 (acquired after its owner died), -EBUSY, -ETIMEDOUT,
 * or another -errno. */
int wl__lock(pthread_mutex_t *m, uint64_t deadline_ns, void (*repair)(void *), void *arg);
void wl__unlock(pthread_mutex_t *m);
void wl__mutex_init(pthread_mutex_t *m);
/* The segment's random 16-byte salt (the header's, fixed at creation). */
const uint8_t *wl__segment_salt(const struct wl_segment *seg);

/* slot.c */
uint64_t wl__key_hash(const char *key, size_t len);
/* The slot of key, or NULL; allocate: create it if missing (-ENOSPC when full). */
int wl__slot_find(struct wl_segment *seg, const char *key, int allocate,
                  struct wl__slot **out);
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
/* A keeper's check verified key at epoch: refresh its verification time (max_age_ms). */
void wl__slot_touch(struct wl_segment *seg, const char *key, uint64_t epoch);
/* Followers waiting on a slot now (live tokens plus the uncounted rest). Read-only. */
uint32_t wl__slot_waiters(struct wl_segment *seg, struct wl__slot *sl);
/* Is the mutex held by a live thread? Read-only (no lock taken): 1 yes, 0 no. *tid gets
 * the holder's thread id as the kernel recorded it, 0 if none. */
int wl__mutex_held(pthread_mutex_t *m, int *tid);
/* Is this a re-verification of a READY slot (wl_wait_opts.max_age_ms) rather than a
 * warm-up? Valid inside a warm function; the libpq engine then runs verify_sql once. */
int wl__warm_reverifying(void);
/* Was this warm-up asked for by a WL_FAIL_FAST caller? (One attempt is enough.) */
int wl__warm_fail_fast(void);
/* Called inside a warm function whose transient failure is its caller's final answer
 * (its own attempt budget ran out): wl_ensure returns it instead of carrying on. */
void wl__warm_stop(void);
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
/* Set the thread's wl_last_error() message; returns code for tail calls. */
int wl__set_error(int code, const char *fmt, ...) WL_PRINTF(2, 3);
void wl__copy(char *dst, size_t len, const char *src); /* strlcpy */
/* Collapse newlines, tabs and runs of spaces in place, trim the ends; returns s. */
char *wl__oneline(char *s);
/* One logfmt line on f: ts, level, target (if not NULL), msg, then (key, value) string
 * pairs ending with NULL; a NULL value skips its pair. */
void wl__logfmt(FILE *f, const char *level, const char *target, const char *msg, ...);

/* futex.c: the readiness word */
/* Sleep while *word == expected, until woken or the monotonic deadline (0: none).
 * Returns 0 (woken or value changed) or -ETIMEDOUT or -EINTR. */
int wl__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns);
void wl__futex_wake_all(_Atomic uint32_t *word);

/* backoff.c: retry schedules. */
/* Sleep for ns (a bounded backoff step; never a readiness guess). */
void wl__backoff_pause(uint64_t ns);

/* -- The libpq engine's internals (pg.c, ring.c, backoff.c) are declared below. -- */

/* backoff.c: the leader's retry schedule (struct wl_backoff with its defaults filled). */
struct wl_backoff;
struct wl_pg_opts;
#define WL__BACKOFF_INITIAL_MS 10u
#define WL__BACKOFF_MAX_MS 250u
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

/* ring.c: the event loop. A task is a state machine with one step function that says what
 * it waits for next; the loop turns the answer into an io_uring POLL_ADD with a linked
 * LINK_TIMEOUT, an io_uring TIMEOUT, or a ppoll(2) entry, and calls step again when that
 * happens. Both backends run the same step code. One loop drives any number of tasks;
 * tasks may be added (and removed) from inside a step. A loop belongs to one thread. */
enum wl__want {
    WL__WANT_READ = 1,    /* wake when t->fd is readable, or at t->deadline_ns */
    WL__WANT_WRITE = 2,   /* wake when t->fd is writable (may be or'ed with READ) */
    WL__WANT_TIMER = 4,   /* wake at t->deadline_ns */
    WL__WANT_DONE = 8,    /* finished: the loop drops the task */
    WL__WANT_FAILED = 16, /* finished with a failure: the loop drops the task */
};
enum wl__event {
    WL__EV_START = 0,   /* first call, from the loop after wl__loop_add */
    WL__EV_IO = 1,      /* the fd is ready; revents has the poll(2) bits */
    WL__EV_TIMEOUT = 2, /* READ/WRITE wait reached t->deadline_ns first */
    WL__EV_TIMER = 3,   /* TIMER reached t->deadline_ns */
};
enum wl__io { WL__IO_AUTO = 0, WL__IO_URING = 1, WL__IO_POLL = 2 };
struct wl__loop;
struct wl__task;
/* Returns a WL__WANT_* answer, having set t->fd (READ/WRITE) and t->deadline_ns. */
typedef int (*wl__step_fn)(struct wl__task *t, int event, int revents);
struct wl__task {
    wl__step_fn step;
    void *arg;            /* the owner's */
    int fd;               /* set by step for READ/WRITE; may change between steps */
    uint64_t deadline_ns; /* set by step: CLOCK_MONOTONIC; 0 = no timeout (READ/WRITE) */
    int want;             /* the last answer of step */
    /* The loop's: */
    struct wl__loop *loop_;
    uint32_t idx_, seq_;
    int started_;
    struct { int64_t sec, nsec; } ts_; /* a __kernel_timespec, alive until submitted */
};
/* backend WL__IO_AUTO: $WARMLOCK_IO (uring|poll) if set, else io_uring when
 * io_uring_queue_init succeeds, else poll(2) (logged once per process on stderr). 0 or
 * -errno with a message in err: a forced io_uring that cannot start gives its init error
 * (-EPERM, -ENOSYS, -ENOMEM), a bad $WARMLOCK_IO -EINVAL. */
int wl__loop_new(int backend, struct wl__loop **out, char *err, size_t errlen);
/* Add a task (fill step, arg first); its first step runs inside the next run. 0, -ENOMEM. */
int wl__loop_add(struct wl__loop *l, struct wl__task *t);
/* Drop a task without calling it again (its in-flight requests are cancelled). */
void wl__loop_remove(struct wl__loop *l, struct wl__task *t);
/* Run until every task has finished (returns 0) or deadline_ns (CLOCK_MONOTONIC; 0 none)
 * passed (returns how many tasks remain), or -errno. Blocks. */
int wl__loop_run_until(struct wl__loop *l, uint64_t deadline_ns);
/* Number of tasks in the loop. */
int wl__loop_count(const struct wl__loop *l);
/* "io_uring" or "poll". */
const char *wl__loop_backend(const struct wl__loop *l);
void wl__loop_free(struct wl__loop *l);

/* pg.c: the probe (one leader's warm-up: connect, warm_sql, verify_sql, with retries), a
 * ring task. wl__pg_probe runs one to completion on its own loop: 0 or -errno with
 * res->error, res->sqlstate and res->attempts filled. deadline_ns: absolute monotonic
 * bound (0: opts' own, default 30 s from now). */
int wl__pg_probe(const char *conninfo, const struct wl_pg_opts *opts, uint64_t deadline_ns,
                 struct wl_result *res);
/* Classify a libpq failure: its SQLSTATE ("" if none) and message. Returns 0 when worth a
 * retry (with *refused = 1 for "connection refused" or a missing socket file), else the
 * -errno to fail with. `connecting`: the error came while connecting (not from a query). */
int wl__pg_classify(const char *sqlstate, const char *msg, int connecting, int *refused);
/* The SQLSTATE of a libpq connection error message produced with PQERRORS_VERBOSE
 * ("...FATAL:  57P03: the database system is starting up"), the last one if several
 * hosts were tried; "" if none. */
void wl__pg_sqlstate_of(const char *msg, char out[6]);

/* pgkey.c: keys and the masking of passwords in libpq's messages about a conninfo. */
struct _PQconninfoOption;
/* libpq's message about conninfo (msg) as one line into dst, with every spelling of a
 * password in conninfo masked as "***": the value libpq parsed, and where a conninfo
 * libpq cannot parse spells one (a URI's user:password@, a "password" keyword, URI query
 * keywords percent-decoded as libpq decodes them), raw and decoded. */
void wl__pg_conninfo_message(char *dst, size_t len, const char *msg, const char *conninfo);
/* The same for a message about options PQconninfoParse returned (their password masked). */
void wl__pg_options_message(char *dst, size_t len, const char *msg,
                            const struct _PQconninfoOption *opts);
/* SipHash-2-4 of the n bytes at m under the 16-byte key k. */
uint64_t wl__siphash24(const uint8_t k[16], const void *m, size_t n);

#endif
