/*
 * warmlock's libpq engine: the leader of an epoch connects, runs warm_sql, runs verify_sql
 * and publishes READY; every other process waits for that. Retries are driven without
 * blocking (io_uring, or poll(2) where io_uring is unavailable).
 *
 * Caveats
 * - A host *name* in the conninfo is resolved synchronously by libpq inside the leader's
 *   PQconnectPoll; followers never resolve. Use hostaddr= or a socket directory to keep the
 *   leader's loop fully non-blocking.
 * - gssencmode defaults to "disable" unless the conninfo sets it (GSS negotiation can
 *   block on a KDC).
 * - Verification is always a real query: PQping() says OK for a wrong password.
 */
#ifndef WARMLOCK_PG_H
#define WARMLOCK_PG_H

#include <libpq-fe.h>

#include "../warmlock.h"

#ifdef __cplusplus
extern "C" {
#endif

/* struct wl_backoff, the leader's retry policy, is declared in warmlock.h. */

/* The libpq engine's default wait.max_age_ms: a READY slot verified longer ago than this
 * is re-verified once (one verify_sql, through the single-flight) before it is trusted.
 * Twice warmlockd's default check interval, so with the daemon running applications never
 * re-verify. wait.max_age_ms = UINT32_MAX: never. */
#define WL_PG_MAX_AGE_MS 10000u
/* The default wl_pg_opts.login_budget: 0, unpaced (bench/README.md shows why). */
#define WL_PG_LOGIN_BUDGET 0u

struct wl_pg_opts {
    const char *warm_sql;        /* run once per epoch by the leader, may hold several statements */
    const char *verify_sql;      /* default "SELECT 1" */
    uint32_t attempt_timeout_ms; /* per connect/query attempt, default 2000 */
    struct wl_backoff backoff;   /* the leader's retry policy */
    struct wl_wait_opts wait;
    uint32_t login_budget;       /* wl_pg_connect: at most this many of this host's own
                                  * connections to the target log in at once (robust tokens
                                  * in the segment, at most 16); 0 the default
                                  * (WL_PG_LOGIN_BUDGET), UINT32_MAX unpaced */
    uint32_t flags;              /* WL_PG_FLEET */
};

/* wl_pg_opts.flags: warm_sql runs once per server start for every host (every segment)
 * that shares the target. The host leaders elect one fleet leader through the server: a
 * session-level advisory lock, pg_try_advisory_lock(id), on a connection of their own,
 * where id is derived from wl_pg_key() (the same on every host that names the server the
 * same way). The fleet leader runs warm_sql in that session and records it for this server
 * start (pg_postmaster_start_time() and the system identifier) in the table warmlock_fleet,
 * created IF NOT EXISTS in the first schema of the role's search_path; the other host
 * leaders wait for it (bounded by their deadline) and run only verify_sql; a host that
 * comes later in the same server start skips warm_sql. A fleet leader that dies loses its
 * session and lock: the next host takes over. A role that cannot create or write the table
 * still elects one leader among the hosts that wait for it, but a host arriving after it
 * runs warm_sql again. Behind a pooler that does not keep sessions (pgbouncer's transaction
 * mode) each host runs warm_sql itself, with one log line on stderr. wl_slot_info.fleet
 * says what this host did. Without warm_sql the flag changes nothing. */
#define WL_PG_FLEET 1u

/* Ensure the server of `conninfo` is warm and verified in this epoch; blocks until READY,
 * a published failure, or the deadline. Errors: -ETIMEDOUT, -EACCES (SQLSTATE class 28),
 * -ENOENT (3D000, missing role), -ECONNREFUSED (unreachable when attempts ran out), -EINVAL
 * (bad conninfo: libpq's message), -EIO (warm_sql or verify_sql failed: the server's
 * message and SQLSTATE), plus wl_ensure()'s. */
WL_EXPORT int wl_pg_ensure(struct wl_segment *seg, const char *conninfo,
                           const struct wl_pg_opts *opts, struct wl_result *res);
/* wl_pg_ensure(), then open the caller's own connection (blocking, like PQconnectdb).
 * If that connection fails with a connection-class error the epoch is invalidated, so one
 * process re-verifies for all, and it tries again within the deadline. NULL on failure,
 * with res->error set. */
WL_EXPORT PGconn *wl_pg_connect(struct wl_segment *seg, const char *conninfo,
                                const struct wl_pg_opts *opts, struct wl_result *res);
/* ---------------------------------------------------------------- prepared targets
 *
 * A prepared conninfo: parsed, keyed (wl_pg_slot_key) and its slot found once, its
 * options copied (with the strings they point to). wl_pg_target_ensure's ready path is
 * one acquire load of the slot's state word plus the epoch kept beside it (and, when a
 * max age applies, one read of the coarse monotonic clock, from the vDSO): no syscall, no
 * allocation, no parsing. The same results as wl_pg_ensure/wl_pg_connect with the same
 * conninfo and opts.
 * A target belongs to its segment handle's process and must not outlive the handle; one
 * target may be used by one thread at a time (open one per thread; they share the slot).
 * A child after fork() opens its own segment handle and targets (the parent's are left
 * alone: close them in the child only if you know no thread of the parent's was using
 * them at fork).
 */
struct wl_pg_target;
/* 0, or -EINVAL (bad conninfo or opts: the message, passwords masked, in wl_last_error()),
 * -ENAMETOOLONG, -ENOSPC (segment full), -ENOMEM. */
WL_EXPORT int wl_pg_target_open(struct wl_segment *seg, const char *conninfo,
                                const struct wl_pg_opts *opts, struct wl_pg_target **out);
/* wl_pg_ensure() on a prepared target. */
WL_EXPORT int wl_pg_target_ensure(struct wl_pg_target *t, struct wl_result *res);
/* wl_pg_target_ensure() with this call's wait options instead of the target's (timeout_ms,
 * fail_ttl_ms, flags, max_age_ms; a zero field takes the target's). */
WL_EXPORT int wl_pg_target_ensure_opts(struct wl_pg_target *t, const struct wl_wait_opts *wait,
                                       struct wl_result *res);
/* The ready path alone, never waiting or leading: 1 with res filled (as a follower's) when
 * the target is READY and verified within max_age_ms (0: the target's max age; UINT32_MAX:
 * any age), else 0. No syscall. For event loops that answer at once when they can and hand
 * the wait to a thread of their own. */
WL_EXPORT int wl_pg_target_ready(struct wl_pg_target *t, uint32_t max_age_ms,
                                 struct wl_result *res);
/* wl_pg_connect() on a prepared target. */
WL_EXPORT PGconn *wl_pg_target_connect(struct wl_pg_target *t, struct wl_result *res);
/* wl_invalidate() of the target's slot at epoch: 1 made stale, 0 nothing changed. */
WL_EXPORT int wl_pg_target_invalidate(struct wl_pg_target *t, uint64_t epoch);
/* The target's slot key (as wl_pg_slot_key() makes it; no password in it). */
WL_EXPORT const char *wl_pg_target_key(const struct wl_pg_target *t);
WL_EXPORT void wl_pg_target_close(struct wl_pg_target *t);

/* The longest key wl_pg_key() and wl_pg_slot_key() make, with its NUL. */
#define WL_PG_KEY_MAX 1024
/* The canonical key of a conninfo (what selects the server and session; never the
 * password) into buf. A service= conninfo (or $PGSERVICE) is resolved by libpq first, so
 * the key names the server the service file names. Returns its length, or -EINVAL with
 * libpq's message in buf (passwords masked), -ENAMETOOLONG (longer than WL_PG_KEY_MAX - 1
 * or than buf). Reads the service file; never connects. */
WL_EXPORT int wl_pg_key(const char *conninfo, char *buf, size_t len);
/* The key under which seg holds conninfo's slot: wl_pg_key(), plus, when a password
 * applies (the conninfo's, the service file's, $PGPASSWORD or the password file's, as
 * libpq picks it), "pw=" and 8 hex digits of a digest of it keyed with seg's random salt
 * ("...?sslmode=require&pw=4f2a9c1d"): two passwords get two slots, and the segment holds
 * neither. What wl_pg_ensure() and wl_pg_connect() use. Errors as wl_pg_key(). */
WL_EXPORT int wl_pg_slot_key(struct wl_segment *seg, const char *conninfo, char *buf, size_t len);

/* ---------------------------------------------------------------- the keeper
 *
 * The coordinator's loop as a library object (warmlockd is a thin program on it): it keeps
 * a set of targets warm in a segment, on one event loop in the calling thread. For each
 * target it
 * - warms it up through the same single-flight as the applications (it claims the slot, so
 *   they wait on the futex, and publishes READY), and while the server is down keeps that
 *   one warm-up in flight, retrying with backoff, so waiting applications are released the
 *   moment it answers; status shows the target `warming` with its last error and down_ms;
 * - publishes a permanent failure (authentication, missing database or role, bad conninfo,
 *   warm_sql error) FAILED and tries again no sooner than fail_ttl_ms later;
 * - keeps a check connection to it and runs verify_sql on it every interval_ms; when the
 *   server closes it or a check fails, it invalidates the epoch and warms it up again;
 * - leaves a warm-up another process runs alone and watches the slot.
 * It never logs or reports a conninfo (it may hold a password): targets are named by key.
 *
 * A keeper belongs to one thread: call every function but wl_keeper_stop() from the thread
 * that created it (between runs, or from a wl_keeper_watch_fd() callback during one). The
 * warm-ups it leads hold their slots' robust mutexes in that thread.
 */

enum wl_keeper_level { WL_KEEPER_DEBUG = 0, WL_KEEPER_INFO, WL_KEEPER_WARN, WL_KEEPER_ERROR };

enum wl_keeper_what {
    WL_KEEPER_NOTE = 0,      /* anything else worth a log line */
    WL_KEEPER_READY = 1,     /* a target is READY at a new epoch (warmed by the keeper or not) */
    WL_KEEPER_ALL_READY = 2, /* every target has been READY once (sent once per keeper) */
    WL_KEEPER_DOWN = 3,      /* a target's warm-up attempts fail (the first, and changes) */
    WL_KEEPER_FAILED = 4,    /* a permanent failure was published */
    WL_KEEPER_LOST = 5,      /* a check failed or the check connection was lost */
};

struct wl_keeper_event {
    enum wl_keeper_level level;
    enum wl_keeper_what what;
    const char *target;         /* the target's key; NULL for the keeper itself */
    const char *msg;            /* a short sentence, e.g. "ready" */
    const char *const *fields;  /* nfields (name, value) pairs: fields[2i], fields[2i+1] */
    size_t nfields;
};
/* Called on the keeper's thread; it must not call the keeper's functions. */
typedef void (*wl_keeper_event_fn)(void *arg, const struct wl_keeper_event *ev);

struct wl_keeper_opts {
    const char *shm;              /* segment name (NULL: $WARMLOCK_SHM, then /warmlock.<uid>) */
    struct wl_open_opts open;     /* how to open it (and reopen it if its name vanishes) */
    uint32_t interval_ms;         /* between checks of each target, default 5000 */
    uint32_t fail_ttl_ms;         /* a permanent failure is tried again no sooner, default
                                   * 1000 (the applications' default fail_ttl_ms) */
    uint32_t attempt_timeout_ms;  /* per connect/query attempt, default 2000 */
    struct wl_backoff backoff;    /* the engine's schedule (struct wl_backoff); max_attempts
                                   * and deadline_ms are ignored: the keeper's warm-up runs
                                   * until the server answers */
    const char *verify_sql;       /* default "SELECT 1" */
    const char *application_name; /* of its connections, default "warmlock-keeper" */
    wl_keeper_event_fn on_event;  /* may be NULL */
    void *event_arg;
    uint32_t flags;               /* WL_PG_FLEET: every target in fleet mode (its warm_sql
                                   * once per server start for every host; see
                                   * wl_keeper_set_target_flags for one target) */
};

struct wl_keeper;

/* A keeper on its segment (opened now) with no targets. 0, or the -errno of wl_open() (its
 * message in wl_last_error()), -EINVAL, -ENOMEM, or the event loop's error. Never blocks
 * beyond wl_open(). */
WL_EXPORT int wl_keeper_new(const struct wl_keeper_opts *opts, struct wl_keeper **out);
/* Keep conninfo's target warm (its warm-up starts in the next run). 0 added, 1 a target of
 * the same key is there already, -EINVAL bad conninfo (an event says why), -ENOMEM. */
WL_EXPORT int wl_keeper_add_target(struct wl_keeper *k, const char *conninfo);
/* Stop keeping the target of conninfo's key: a warm-up it leads is cancelled (the slot goes
 * STALE, waiting applications carry on), its check connection closed. 0, -ENOENT. */
WL_EXPORT int wl_keeper_remove_target(struct wl_keeper *k, const char *conninfo);
/* Make the targets exactly these (a reload): new ones are added, missing ones removed,
 * the others kept as they are. Bad conninfos are skipped with an event. Returns how many
 * targets there are, or -ENOMEM. */
WL_EXPORT int wl_keeper_set_targets(struct wl_keeper *k, const char *const *conninfos,
                                    size_t n);
/* The flags of the target of conninfo's key (WL_PG_FLEET, or 0), instead of the keeper's
 * opts.flags; from its next warm-up on. In fleet mode the keeper's warm-up checks the
 * server, then takes part in the fleet election on a connection of its own, in a thread of
 * its own beside the loop (the slot stays claimed meanwhile): it waits for another host's
 * fleet leader at most its interval or 30 s, whichever is longer, then tries again; a
 * removed target or wl_keeper_free() ends the wait at once. 0, -ENOENT (no such target),
 * -EINVAL. */
WL_EXPORT int wl_keeper_set_target_flags(struct wl_keeper *k, const char *conninfo,
                                         uint32_t flags);
/* SQL run once per epoch by the keeper's warm-ups (NULL: none); copied; used from the next
 * warm-up on. 0 or -ENOMEM. */
WL_EXPORT int wl_keeper_set_warm_sql(struct wl_keeper *k, const char *sql);
/* Call fn(arg) on the keeper's thread, during a run, whenever fd is readable (e.g. a
 * signalfd); fn must read what made it readable. fn may call the keeper's functions. 0,
 * -ENOMEM. */
WL_EXPORT int wl_keeper_watch_fd(struct wl_keeper *k, int fd, void (*fn)(void *arg),
                                 void *arg);
/* Run the loop (blocks): until wl_keeper_stop() (returns 1) or timeout_ms (-1: none;
 * returns 0), or -errno if the event loop failed. May be called again. */
WL_EXPORT int wl_keeper_run(struct wl_keeper *k, int timeout_ms);
/* Make the run in progress (or the next one) return 1. Safe from any thread and from a
 * signal handler. */
WL_EXPORT void wl_keeper_stop(struct wl_keeper *k);
/* The segment it keeps (it changes when the keeper reopens a vanished name). */
WL_EXPORT struct wl_segment *wl_keeper_segment(const struct wl_keeper *k);
/* "io_uring" or "poll". */
WL_EXPORT const char *wl_keeper_backend(const struct wl_keeper *k);
/* Number of targets. */
WL_EXPORT size_t wl_keeper_count(const struct wl_keeper *k);
/* Cancel the warm-ups it leads (their slots go STALE: applications with time left carry
 * on), close its connections, free it. The segment stays as it is. */
WL_EXPORT void wl_keeper_free(struct wl_keeper *k);

#ifdef __cplusplus
}
#endif
#endif
