/* The libpq engine's probe as a ring task that an owner drives on its own loop (the keeper
 * runs every target's warm-up and check connection this way; wl__pg_probe and wl_pg_connect
 * run one on a loop of their own). Not installed. */
#ifndef WL_ENGINE_H
#define WL_ENGINE_H

#include <stdint.h>

#include "internal.h"
#include "ring.h"
#include "warmlock/pg.h"

struct wl__probe;

/*
 * What a probe tells its owner. Each hook is called from inside the probe's step, on the
 * loop's thread; a hook may do anything but free the probe or start it again (do that from
 * another task, once the step has returned). Any hook may be NULL.
 */
struct wl__probe_hooks {
    void *arg;
    /* An attempt failed and will be retried after the backoff delay. code: -ECONNREFUSED
     * (nothing listens), -EAGAIN (the server answered but is not ready: 57P03, 53300,
     * 08xxx), -ETIMEDOUT (the attempt ran out of its time). */
    void (*attempt_failed)(void *arg, int code, const char *error, const char *sqlstate);
    /* warm_sql and verify_sql succeeded; with hold_ms the connection is kept and checked. */
    void (*verified)(void *arg);
    /* A check of the held connection (verify_sql on it) succeeded. */
    void (*checked)(void *arg);
    /* The probe ended: rc 0 (verified, nothing held) or -errno with the probe's error. After
     * verified() this is the held connection's loss (closed by the server, a check query
     * that failed or timed out). Not called by wl__probe_cancel. */
    void (*ended)(void *arg, int rc);
    /* How far the current attempt got (WL_STAGE_*): called as it advances, and with what
     * it reached when an attempt fails. Not called for a held connection's checks. */
    void (*stage)(void *arg, int stage);
};

struct wl__probe_conf {
    const char *warm_sql;         /* run first after connecting (copied); NULL none */
    const char *verify_sql;       /* default "SELECT 1" (copied) */
    uint32_t attempt_timeout_ms;  /* 0: connect_timeout of the conninfo, else 2000 */
    struct wl_backoff backoff;    /* retries; deadline_ms 0 with no deadline_ns: 30 s */
    uint64_t deadline_ns;         /* absolute CLOCK_MONOTONIC bound; UINT64_MAX: none */
    uint32_t hold_ms;             /* after verification keep the connection and run
                                   * verify_sql on it every hold_ms; 0: end there */
    int keep_conn;                /* after verification, end keeping the connection for
                                   * wl__probe_take_conn (restored to blocking mode and
                                   * libpq's own notice processing) */
    int connect_only;             /* end as soon as a connection is up, handing it over
                                   * (wl_pg_connect); no queries */
    const char *application_name; /* fallback_application_name, or NULL */
    struct wl__probe_hooks hooks;
};

/* Parse conninfo once for any number of runs. 0, -EINVAL (libpq's message in err, every
 * password masked), -ENOMEM. */
int wl__probe_new(const char *conninfo, struct wl__probe **out, char *err, size_t errlen);
/* The same from conninfo already parsed with PQconninfoParse (the probe takes it over, and
 * frees it even on failure). */
int wl__probe_new_parsed(struct _PQconninfoOption *parsed, struct wl__probe **out, char *err,
                         size_t errlen);
/* Start a run on loop l (it must not be running). 0 or -ENOMEM, -EBUSY (already running). */
int wl__probe_start(struct wl__probe *p, struct wl__loop *l, const struct wl__probe_conf *c);
/* Stop a run at once: the task leaves its loop, the connection is closed; no hook is
 * called. Harmless on a probe that does not run. */
void wl__probe_cancel(struct wl__probe *p);
/* 1 while a run is in progress. */
int wl__probe_running(const struct wl__probe *p);
/* 1 once the current (or last) run reached verification (and, with hold_ms, holds it). */
int wl__probe_verified(const struct wl__probe *p);
/* The run's outcome so far: attempts, the last error and SQLSTATE (error "" after a
 * verification); res->role and res->epoch are left alone. */
void wl__probe_result(const struct wl__probe *p, struct wl_result *res);
/* 1 if the run's last attempt ran out of its own time (a slow server, not a gone one). */
int wl__probe_timed_out(const struct wl__probe *p);
/* The connection of a connect_only run that ended with 0 (NULL otherwise); the caller owns
 * it. */
PGconn *wl__probe_take_conn(struct wl__probe *p);
void wl__probe_free(struct wl__probe *p);
/* Run p to its end on a loop of its own (backend: WL__IO_*). 0 or -errno as the run
 * ended, or the loop's failure with p's error set. */
int wl__probe_run(struct wl__probe *p, const struct wl__probe_conf *c, int backend);
/* c for a run of a wl_pg_opts: its queries, attempt timeout, backoff, and its deadline
 * (the backoff's, else wait.timeout_ms, else 30 s from now), bounded by deadline_ns (0:
 * none). */
void wl__pg_conf(struct wl__probe_conf *c, const struct wl_pg_opts *opts, uint64_t deadline_ns);

/* pg.c: the probe (one leader's warm-up: connect, warm_sql, verify_sql, with retries), a
 * ring task. wl__pg_probe runs one to completion on its own loop: 0 or -errno with
 * res->error, res->sqlstate and res->attempts filled. deadline_ns: absolute monotonic
 * bound (0: opts' own, default 30 s from now). */
int wl__pg_probe(const char *conninfo, const struct wl_pg_opts *opts, uint64_t deadline_ns,
                 struct wl_result *res);
/* wl__pg_probe, keeping the verified connection in *conn (NULL on failure). */
int wl__pg_probe_keep(const char *conninfo, const struct wl_pg_opts *opts, uint64_t deadline_ns,
                      struct wl_result *res, PGconn **conn);
/* Classify a libpq failure: its SQLSTATE ("" if none) and message. Returns 0 when worth a
 * retry (with *refused = 1 for "connection refused" or a missing socket file), else the
 * -errno to fail with. `connecting`: the error came while connecting (not from a query). */
int wl__pg_classify(const char *sqlstate, const char *msg, int connecting, int *refused);
/* The SQLSTATE of a libpq connection error message produced with PQERRORS_VERBOSE
 * ("...FATAL:  57P03: the database system is starting up"), the last one if several
 * hosts were tried; "" if none. */
void wl__pg_sqlstate_of(const char *msg, char out[6]);

/* fleet.c: one fleet leader per server start among the host leaders of a target
 * (WL_PG_FLEET), elected through a session-level advisory lock; see fleet.c. */
struct wl__fleet_conf {
    const char *conninfo;        /* to connect the fleet session (and the pooler check) */
    const char *key;             /* wl_pg_key() of it: the same on every host (no pw=) */
    const char *warm_sql;        /* what only the fleet leader runs */
    const char *verify_sql;      /* run again after the phase; NULL or "": not again */
    uint64_t deadline_ns;        /* absolute CLOCK_MONOTONIC bound of the whole run */
    uint32_t attempt_timeout_ms; /* of each short statement; 0: 2000 */
    int abort_fd;                /* the run ends (-ECANCELED) once readable; -1 none */
};
#define WL__FLEET_NORECORD 1u /* wl__fleet_out.flags: the record table could not be used */
#define WL__FLEET_DEADLINE 2u /* the wait for the fleet leader used up the deadline */
struct wl__fleet_out {
    int role;                 /* WL_FLEET_* */
    int32_t leader_pid;       /* the fleet leader's backend, as the server reports it */
    char leader_host[64];     /* its client address as the server sees it, "local" */
    char leader_app[64];      /* its application_name ("warmlock-fleet <host> <pid>") */
    unsigned flags;           /* WL__FLEET_* */
};
/* The fleet phase of a host leader's warm-up, after its probe verified the server: elect,
 * then lead (run warm_sql, record it for this server start, notify, unlock), wait for the
 * leader, or skip; behind a transaction pooler run warm_sql here (WL_FLEET_LOCAL). conn:
 * a verified connection to use as the fleet session (taken over, closed at the end), or
 * NULL to open one. 0 with *out filled, or -errno with res->error (transient codes as the
 * engine's: -EAGAIN, -ETIMEDOUT; -EIO a warm_sql error; -ECANCELED abort_fd). Blocks up to
 * fc->deadline_ns. */
int wl__fleet_run(const struct wl__fleet_conf *fc, PGconn *conn, struct wl__fleet_out *out,
                  struct wl_result *res);
/* The advisory lock id of a key (SipHash-2-4 under a fixed key: every host derives it). */
int64_t wl__fleet_id(const char *key);
/* Keep the fleet outcome in the slot of slot_key, for status (the slot's leader only). */
void wl__fleet_note(struct wl_segment *seg, const char *slot_key, const struct wl__fleet_out *o);

/* pmwatch.c: a local server's own word on its state. Over a Unix socket, the socket's lock
 * file names the data directory, whose postmaster.pid says "starting", "standby", "ready" or
 * "stopping" (line 8, as pg_ctl reads it); an inotify descriptor watches that directory and
 * the socket directory. */
struct wl__pmwatch {
    int fd;           /* inotify, -1 none */
    int sock_wd;      /* the socket directory (the socket file appearing), -1 none */
    int data_wd;      /* the data directory (postmaster.pid rewritten), -1 none */
    int tried;        /* wl__pmwatch_setup ran */
    int state_tries;  /* wl__pmwatch_watch_state's tries */
    char sockdir[256];
    char sockname[32]; /* ".s.PGSQL.<port>" */
    char pidfile[512];
};
enum { WL__PM_UNKNOWN = 0, WL__PM_STARTING, WL__PM_STANDBY, WL__PM_READY, WL__PM_STOPPING };
#define WL__PM_EV_SOCKET 1 /* the socket file appeared */
#define WL__PM_EV_STATE 2  /* postmaster.pid was written */
void wl__pmwatch_init(struct wl__pmwatch *w);
/* Watch the server behind socket directory `host` and `port` (once: later calls return what
 * the first found). 0 when something is watched (w->fd readable on a change), -1 when
 * nothing can be (not a Unix socket, no inotify, directories not readable). */
int wl__pmwatch_setup(struct wl__pmwatch *w, const char *host, const char *port);
/* Watch postmaster.pid too, found through the socket's lock file, if not yet (the lock file
 * is there once the server has started; a few tries). 0 when watched, -1 not (yet). */
int wl__pmwatch_watch_state(struct wl__pmwatch *w);
/* 1 if the socket directory is watched and the socket file is not there (its creation will
 * wake w->fd: the watch was set up before this looked). */
int wl__pmwatch_socket_missing(const struct wl__pmwatch *w);
/* 1 if postmaster.pid is watched (the server's state changes wake w->fd). */
int wl__pmwatch_watches_state(const struct wl__pmwatch *w);
/* The state postmaster.pid says now: WL__PM_*. */
int wl__pmwatch_state(const struct wl__pmwatch *w);
/* Read every pending event: the WL__PM_EV_* bits of what happened (0: nothing relevant). */
int wl__pmwatch_drain(struct wl__pmwatch *w);
void wl__pmwatch_close(struct wl__pmwatch *w);

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
/* wl_pg_slot_key(), handing over the parsed conninfo in *parsed when the key was made
 * from it alone (NULL when libpq's resolution was needed: a service, a password file); the
 * caller frees it with PQconninfoFree. */
int wl__pg_slot_key_parsed(struct wl_segment *seg, const char *conninfo, char *buf, size_t len,
                           struct _PQconninfoOption **parsed);
/* SipHash-2-4 of the n bytes at m under the 16-byte key k. */
uint64_t wl__siphash24(const uint8_t k[16], const void *m, size_t n);

#endif
