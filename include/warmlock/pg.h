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

struct wl_pg_opts {
    const char *warm_sql;        /* run once per epoch by the leader, may hold several statements */
    const char *verify_sql;      /* default "SELECT 1" */
    uint32_t attempt_timeout_ms; /* per connect/query attempt, default 2000 */
    struct wl_backoff backoff;   /* the leader's retry policy */
    struct wl_wait_opts wait;
};

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

#ifdef __cplusplus
}
#endif
#endif
