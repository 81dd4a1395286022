/*
 * warmlock: cross-process single-flight warm-up through one shared-memory segment.
 *
 * Many processes that start at once call wl_ensure() on the same key; exactly one of them
 * (the leader) runs the warm-up function, the others sleep on a futex until the leader
 * publishes READY or a failure. A leader that dies is replaced (robust mutex). Once READY,
 * wl_ensure() is a lookup and a few atomic loads: no syscall, no lock.
 *
 * Conventions: functions return 0 (or a count) on success and a negative errno on failure;
 * human detail goes into struct wl_result.error, or, for wl_open()/wl_unlink(), into the
 * calling thread's wl_last_error().
 *
 * Threads: one segment handle may be shared by all the threads of its process. wl_open(),
 * wl_ensure(), wl_invalidate(), wl_lookup(), wl_snapshot(), wl_check(), wl_reset(),
 * wl_unlink(), wl_unlink_unused() and the libpq engine's wl_pg_ensure(), wl_pg_connect(),
 * wl_pg_key() and wl_pg_slot_key() are thread-safe; a thread in wl_ensure() is elected like
 * a process of its own, so threads and processes together get one leader per epoch.
 * wl_last_error() is the calling thread's. One thread at a time: a wl_key and a
 * wl_pg_target (open one per thread; they share the slot), a wl_keeper (only its creating
 * thread, but wl_keeper_stop() from anywhere). wl_close() must not race with other calls on
 * the handle it closes.
 *
 * Caveats
 * - A struct wl_segment belongs to the process that opened it. A child created by fork()
 *   may read through an inherited handle (the ready path works), but a leader that forks
 *   does not hand its leadership to the child: only the process that holds the slot's
 *   mutex may publish, and a child's publish is refused (-ECHILD).
 * - The segment stays mapped until the process exits, even after wl_close(): unmapping
 *   memory that holds robust mutexes is unsafe (glibc bug 14485). Opening the same segment
 *   again reuses the mapping. Each mapping also keeps one descriptor open, holding a shared
 *   flock(2) that tells wl_unlink_unused() the segment is in use.
 * - Leader pids shown in messages and status are those of the creator's PID namespace;
 *   liveness never depends on them (the kernel's robust-mutex cleanup does).
 * - A leader that is alive but stuck (SIGSTOP, a hung warm-up) keeps its slot: callers get
 *   -ETIMEDOUT at their deadline with the leader's pid in the message.
 * - systemd-logind's RemoveIPC=yes deletes a user's POSIX shared memory at their last
 *   logout: long-lived holders should call wl_check() and reopen (or run the service under
 *   a system user, for which RemoveIPC does not apply).
 */
#ifndef WARMLOCK_H
#define WARMLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "warmlock/version.h" /* WL_VERSION_MAJOR/MINOR/PATCH, WL_VERSION_STRING */

#if defined(WL_BUILDING_LIBRARY)
#define WL_EXPORT __attribute__((visibility("default")))
#else
#define WL_EXPORT
#endif

/* Limits. */
#define WL_NAME_MAX 200      /* segment name, bytes, including the leading '/' */
#define WL_KEY_MAX 400       /* key text kept for display (longer keys are truncated there) */
#define WL_DEFAULT_SLOTS 64  /* slots in a new segment when opts->slots is 0 */
#define WL_MAX_SLOTS 4096

struct wl_segment; /* opaque handle to the mapped segment */

struct wl_open_opts {
    mode_t mode;    /* permission bits of a new segment; 0 means 0600 */
    unsigned slots; /* slots of a new segment; 0 means WL_DEFAULT_SLOTS, or whatever an
                     * existing segment has. A non-zero value must match an existing one. */
    uint32_t init_timeout_ms; /* (extension) how long to wait for another process that is
                               * initialising the segment; 0 means 5000 */
    unsigned flags;           /* WL_OPEN_EXISTING */
};

/* wl_open_opts.flags: never create; -ENOENT if the segment does not exist. Read-only users
 * (status, metrics, healthchecks) open this way. */
#define WL_OPEN_EXISTING 1u

/* Open the segment `name` (NULL: $WARMLOCK_SHM, then "/warmlock.<uid>"), creating and
 * initialising it if it does not exist. Race-free with any number of concurrent openers.
 * May block briefly (bounded by init_timeout_ms, 5 s) while another process initialises the segment.
 * Errors: -EINVAL bad name or options, -EPROTO not a warmlock segment or incompatible (a
 * non-empty object is never written unless it is a valid segment), -EPERM owned by another
 * user, unsafe mode, or not a regular object (FIFO, directory, symlink: never blocks on
 * one), -ENOENT with WL_OPEN_EXISTING when there is none (or only an empty one),
 * -ETIMEDOUT initialisation by another process never finished, others from shm_open/mmap.
 * The reason is in wl_last_error(). */
WL_EXPORT int wl_open(const char *name, const struct wl_open_opts *opts,
                      struct wl_segment **out);
/* Release the handle. The mapping stays for the life of the process (see Caveats). */
WL_EXPORT void wl_close(struct wl_segment *seg);
/* Remove the segment's name (NULL: the default name). Processes that have it open keep
 * using it; the next wl_open() creates a new one. -ENOENT if there is none. */
WL_EXPORT int wl_unlink(const char *name);
/* Like wl_unlink(), but only while no process has the segment open (each process that
 * opened it holds a shared flock(2) on the object until it exits): -EBUSY while one does.
 * Also removes what is not a usable segment (-EPROTO, a FIFO, a symlink). Never blocks. */
WL_EXPORT int wl_unlink_unused(const char *name);
/* Does the handle's name still resolve to the object it mapped? 0 yes, -ENOENT the name
 * is gone (e.g. RemoveIPC), -ESTALE it now names another object. Makes two syscalls. */
WL_EXPORT int wl_check(struct wl_segment *seg);
/* The segment's name (the resolved default when wl_open() was given NULL). */
WL_EXPORT const char *wl_name(const struct wl_segment *seg);
/* The default segment name for this process ($WARMLOCK_SHM, then "/warmlock.<uid>"),
 * written into buf; returns its length or -ENAMETOOLONG / -EINVAL. */
WL_EXPORT int wl_default_name(char *buf, size_t len);

enum wl_role { WL_FOLLOWER = 0, WL_LEADER = 1 };

struct wl_result {
    enum wl_role role;  /* what this caller was in the call */
    uint64_t epoch;     /* the readiness epoch observed (pass it to wl_invalidate) */
    uint64_t waited_ns; /* time spent in the call */
    unsigned attempts;  /* attempts the leader's engine made (leader only) */
    char sqlstate[6];   /* of the last failure, "" if none */
    char error[256];    /* set whenever the call returns < 0 */
};

struct wl_wait_opts {
    uint32_t timeout_ms;  /* whole-call deadline, default 30000 */
    uint32_t fail_ttl_ms; /* how long a published failure is served to callers, default 1000 */
    uint32_t flags;       /* WL_FAIL_FAST */
    uint32_t max_age_ms;  /* READY older than this is re-verified once, through the
                           * single-flight (0: never; the libpq engine's default is
                           * WL_PG_MAX_AGE_MS) */
};

/* wl_wait_opts.flags: during an outage (the target's last warm-up failed transiently and
 * it has not been READY since), return the current transient failure at once instead of
 * waiting: -ECONNREFUSED while nothing listens, -EAGAIN while the server answers but is not
 * ready (57P03, 53300), -ETIMEDOUT after attempts that timed out; the message says how long
 * the target has been down. */
#define WL_FAIL_FAST 1u

/* The leader's retry policy: how long it waits before its next attempt depends on what
 * the last one cost the server. Zero fields take the defaults.
 * - Nothing listens (no socket file, ECONNREFUSED, a refused TCP port): a probe costs the
 *   server nothing; the next comes refused_ms later (and, for a Unix socket whose file is
 *   missing, as soon as the file appears: the directory is watched with inotify).
 * - The server answers but refuses (57P03 starting up, in recovery or shutting down;
 *   53300 too many connections): each probe costs it a fork and a log line; probes come
 *   every busy_ms, on a fixed pace (the leader is the target's only prober: jitter would
 *   only add lag).
 * - A local server behind a Unix socket says itself when it is ready: the libpq engine
 *   watches its data directory's postmaster.pid (found through the socket's lock file)
 *   with inotify and probes the moment its state changes to ready, and, while it answers
 *   57P03, otherwise only every max_ms; while the socket file is missing it probes the
 *   moment it appears (and otherwise every max_ms). This needs read access to the data directory (the server's user,
 *   root, or initdb -g and its group); without it, or with WL_BACKOFF_NO_WATCH, the
 *   paces above apply.
 * - Anything else transient (an attempt that timed out, a connection lost, other 08xxx):
 *   delays start at initial_ms and double up to max_ms, with `jitter`. */
struct wl_backoff {
    uint32_t initial_ms;   /* first delay, default 10 */
    uint32_t max_ms;       /* cap of one delay, default 250 */
    uint32_t max_attempts; /* default 0 = unlimited within the deadline */
    uint32_t deadline_ms;  /* the leader's whole warm-up, default = wait.timeout_ms */
    int jitter;            /* 0 default (full), 1 full, 2 decorrelated, -1 none */
    uint32_t refused_ms;   /* between probes while nothing listens, default 5 */
    uint32_t busy_ms;      /* between probes while the server refuses (57P03, 53300),
                            * default 25: at most one FATAL line per 25 ms of recovery */
    uint32_t flags;        /* WL_BACKOFF_NO_WATCH */
};
/* struct wl_backoff.flags: never watch a local server's postmaster.pid or socket file. */
#define WL_BACKOFF_NO_WATCH 1u

/* A warm-up: return 0, or a negative errno with res->error (and res->sqlstate) set. */
typedef int (*wl_warm_fn)(void *arg, struct wl_result *res);

/* Single-flight across processes: exactly one caller per epoch runs warm(); the others
 * wait (futex) until it publishes. Returns 0 when `key` is READY (res->epoch says which
 * epoch). Failures are shared by kind:
 * - permanent (any code but the transient ones below: -EACCES, -ENOENT, -EINVAL, -EIO...):
 *   published FAILED, the same code and message served to every caller for fail_ttl_ms;
 * - transient (-ECONNREFUSED nothing listens, -EAGAIN not ready yet, -ETIMEDOUT an attempt
 *   timed out): never ends anyone's wait. The slot stays STALE with an outage clock
 *   (wl_slot_info.down_ms); callers sleep without probing while one of them probes, then
 *   the next (paced 10-250 ms), and are released the moment one sees the target ready, or
 *   get -ETIMEDOUT at their own deadline naming the outage and the last error. A leader's
 *   own warm function may end its call early with wl_warm_fn's code only when it has no
 *   time left (the libpq engine: its max_attempts ran out).
 * With WL_FAIL_FAST in opts->flags a caller gets the transient failure at once during an
 * outage (probing once itself if nobody does), its message saying how long the target has
 * been down. With opts->max_age_ms, a READY verified longer ago than that is re-verified by
 * one caller (warm() runs again; the engine runs verify_sql once) while the others keep the
 * ready path; a failed re-verification ends the epoch (outage or FAILED). With a
 * max_age_ms, a READY verified before the host was suspended (CLOCK_BOOTTIME has run more
 * than a second ahead of CLOCK_MONOTONIC since, which stops while the kernel sleeps) is
 * re-verified the same way, but the other callers wait for that re-verification.
 * Blocks unless the key is READY. Errors of its own: -EINVAL (empty key), -ENOSPC (segment
 * full), -ECHILD (a leader forked and the child tried to publish), -ECANCELED (slot reset
 * while warming). `res` may be NULL. Thread-safe: threads of one process may share a
 * segment handle; each caller is counted and elected like a process of its own. */
WL_EXPORT int wl_ensure(struct wl_segment *seg, const char *key, wl_warm_fn warm,
                        void *arg, const struct wl_wait_opts *opts, struct wl_result *res);

/* A prepared key: its slot is found (or allocated) once, so wl_key_ensure's ready path is
 * one atomic load. Belongs to the process that opened it, like the segment handle, and
 * must not outlive it; one wl_key may be used by one thread at a time (open one per
 * thread). wl_key_open: 0, -EINVAL, -ENOSPC, -ENOMEM. */
struct wl_key;
WL_EXPORT int wl_key_open(struct wl_segment *seg, const char *key, struct wl_key **out);
/* wl_ensure() on a prepared key: the same results. */
WL_EXPORT int wl_key_ensure(struct wl_key *k, wl_warm_fn warm, void *arg,
                            const struct wl_wait_opts *opts, struct wl_result *res);
/* wl_invalidate() on a prepared key. */
WL_EXPORT int wl_key_invalidate(struct wl_key *k, uint64_t epoch);
WL_EXPORT void wl_key_close(struct wl_key *k);

/* Mark `key` stale if it is still READY at `epoch`; an older epoch is ignored. Returns 1
 * if this call made it stale, 0 if nothing changed, -ENOENT for an unknown key. Never
 * blocks. */
WL_EXPORT int wl_invalidate(struct wl_segment *seg, const char *key, uint64_t epoch);

enum wl_state { WL_COLD = 0, WL_WARMING = 1, WL_READY = 2, WL_STALE = 3, WL_FAILED = 4 };

/* How far a target's last warm-up got (the libpq engine reports it; a warm function of
 * one's own leaves it at WL_STAGE_NONE until READY, which is WL_STAGE_VERIFIED):
 * - WL_STAGE_NONE: the server was not reached (nothing listens, no socket, no route);
 * - WL_STAGE_REACHABLE: a connection was opened and the server answered, but did not let
 *   the role in (starting up, in recovery, too many connections, password refused);
 * - WL_STAGE_AUTHENTICATED: logged in; warm_sql has not completed (it failed or runs);
 * - WL_STAGE_WARMED: warm_sql completed (at once when there is none); verify_sql has not;
 * - WL_STAGE_VERIFIED: verify_sql succeeded: what READY stands for.
 * The stage of the latest attempt, so during an outage it says what the server does now. */
enum wl_stage {
    WL_STAGE_NONE = 0,
    WL_STAGE_REACHABLE = 1,
    WL_STAGE_AUTHENTICATED = 2,
    WL_STAGE_WARMED = 3,
    WL_STAGE_VERIFIED = 4,
};

/* Wait-time histogram bucket upper bounds in ms; the last bucket is +Inf. */
#define WL_HIST_BUCKETS 12
#define WL_HIST_BOUNDS_MS {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000}

struct wl_slot_info {
    char key[WL_KEY_MAX + 1];
    enum wl_state state;
    uint64_t epoch;            /* epoch of the last READY */
    pid_t leader_pid;          /* current or last leader, 0 if none yet */
    int leader_alive;          /* 1 while WARMING with a live leader, 0 otherwise */
    uint32_t waiters;          /* callers waiting now; a killed caller stops counting at once */
    uint64_t warmups;          /* warm-ups started */
    uint64_t takeovers;        /* warm-ups taken over from a dead leader */
    uint64_t attempts;         /* engine attempts, summed over warm-ups */
    uint64_t failures;         /* failed warm-ups */
    uint64_t invalidations;    /* READY -> STALE transitions */
    int last_code;             /* negative errno of the last failure, 0 if none */
    char last_error[256];      /* message of the last failure, "" if none */
    char sqlstate[6];          /* SQLSTATE of the last failure, "" if none */
    int64_t ready_age_ms;      /* ms since the last READY, -1 if never */
    int64_t time_to_ready_ms;  /* duration of the last successful warm-up, -1 if never */
    int64_t down_ms;           /* ms since the current outage began, -1 if none */
    int64_t verified_age_ms;   /* ms since the last successful verification (a warm-up, a
                                * re-verification, a keeper's check), -1 if never; time
                                * the host spent suspended since counts in it */
    uint64_t key_hash;         /* 64-bit hash of the whole key (tells truncated keys apart) */
    uint32_t key_len;          /* length of the whole key (key[] holds at most WL_KEY_MAX) */
    uint64_t wait_hist[WL_HIST_BUCKETS]; /* callers' wait times (slow path only) */
    uint64_t wait_count;       /* callers that went through the slow path */
    uint64_t wait_sum_ns;      /* their total wait */
    enum wl_stage stage;       /* how far the last warm-up got */
    int fleet;                 /* WL_FLEET_*: this host's part in the last fleet warm-up */
    int32_t fleet_leader_pid;  /* the fleet leader's backend pid, as the server reports it
                                * (pg_stat_activity.pid); 0 if none */
    char fleet_leader_host[64]; /* its client address as the server sees it ("local": a Unix
                                 * socket), "" if none */
    char fleet_leader_app[64]; /* its session's application_name ("warmlock-fleet <hostname>
                                * <pid>"), "" if none */
};

/* wl_slot_info.fleet: what this host did in the last warm-up of a fleet target (the libpq
 * engine's WL_PG_FLEET): nothing (not a fleet target), led it (ran warm_sql for the fleet),
 * waited for another host's, skipped it (already done for this server start), or ran
 * warm_sql on its own because fleet mode could not be used (a transaction pooler). */
enum wl_fleet_role {
    WL_FLEET_NONE = 0,
    WL_FLEET_LED = 1,
    WL_FLEET_WAITED = 2,
    WL_FLEET_SKIPPED = 3,
    WL_FLEET_LOCAL = 4,
};

/* Exact lookup of one key's slot, without allocating it: 0 with *out filled, -ENOENT if the
 * key has no slot, -EINVAL. Never blocks, never writes to the segment. */
WL_EXPORT int wl_lookup(struct wl_segment *seg, const char *key, struct wl_slot_info *out);

/* Copy up to `max` slots' state and counters; returns how many slots are in use (which may
 * exceed max), without blocking. */
WL_EXPORT int wl_snapshot(struct wl_segment *seg, struct wl_slot_info *out, size_t max);

/* Return every slot to COLD and clear its counters. Refused with -EBUSY while a warm-up
 * is in flight unless `force` is set. What force can and cannot do to a live leader: its
 * result is discarded (its publish is refused with -ECANCELED, and nothing of it, epoch,
 * timings or error, reaches the slot), but a process cannot be made to let go of the
 * slot's lock: a leader that is stopped (SIGSTOP) or hung keeps it, and callers time out
 * with a message naming it as alive and holding the lock, until it resumes or exits.
 * Returns how many warm-ups were in flight. */
WL_EXPORT int wl_reset(struct wl_segment *seg, int force);

/* Free key's slot for another key (a key no longer used, a mistyped conninfo, holds it for
 * good otherwise); waits for nothing but the brief allocation lock. -EBUSY while a leader warms
 * it or callers wait on it, -ENOENT if it has no slot (why: wl_last_error()). */
WL_EXPORT int wl_forget(struct wl_segment *seg, const char *key);

/* A static name for a code this library returns ("ETIMEDOUT: deadline passed"). */
WL_EXPORT const char *wl_strerror(int code);
/* The calling thread's message for the last failed wl_open()/wl_unlink(). */
WL_EXPORT const char *wl_last_error(void);
/* The library's version string, e.g. "0.1.0". */
WL_EXPORT const char *wl_version(void);
/* "cold", "warming", "ready", "stale", "failed". */
WL_EXPORT const char *wl_state_name(enum wl_state state);
/* "none", "reachable", "authenticated", "warmed", "verified". */
WL_EXPORT const char *wl_stage_name(enum wl_stage stage);

#ifdef __cplusplus
}
#endif
#endif /* WARMLOCK_H */
