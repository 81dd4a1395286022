/* A throwaway PostgreSQL (and pgbouncer) for tests and benchmarks.
 *
 * pgh_init() makes a temp dir /tmp/wlpg.XXXXXX holding the cluster (data/), the Unix sockets and
 * the server log (server.log), picks a free TCP port on 127.0.0.1, and pgh_destroy() removes it
 * all. The programs (initdb, pg_ctl, postgres, psql, cp, pgbouncer) are run with fork/exec, never
 * a shell, with PG* variables removed from their environment and LC_ALL=C.
 *
 * Timings on the 2-core reference machine: the first pgh_init of a process runs initdb (1.3-3 s,
 * into a template kept until exit); later ones copy the template (0.3-0.5 s). pgh_start(h, 1)
 * takes about 0.25 s, pgh_stop "fast" 0.1-0.2 s, pgh_crash about 1 s, and the restart after it
 * answers 57P03 for about 1.5-2 s. How long replay takes depends on the machine: a test that
 * needs the server to stay in recovery holds it there (pgh_start_held, pgh_release).
 *
 * Caveats:
 * - PostgreSQL refuses to run as root. When euid is 0 every program is run as the `postgres`
 *   user (privileges dropped in the child before exec), the temp dir is chowned to it, and the
 *   test process, being root, can still read the log and reach the socket. Otherwise everything
 *   runs as the current user.
 * - The server is not a child of the test process (pg_ctl daemonizes it into its own session)
 *   and inherits none of its file descriptors, so forked test workers never hold it.
 * - A harness belongs to the process that called pgh_init(): pgh_destroy() in a forked child does
 *   nothing. Servers still up at exit() are stopped (immediate) by an atexit handler; those left by
 *   a killed test process are stopped and removed by the next pgh_init() on the machine.
 * - Every connection the harness itself makes (pgh_psql, pgh_query, pgh_probe) shows up in the
 *   server log as "connection received": take a pgh_log_mark() after the harness calls.
 * - Environment: WL_PG_BINDIR (server binaries), WL_PGBOUNCER (pgbouncer binary), WL_PG_SKIP=1
 *   (pretend PostgreSQL is unavailable), WL_PG_KEEP=1 (pgh_destroy keeps the temp dir),
 *   WL_PG_CRASH_ROWS (rows pgh_crash inserts; default PGH_CRASH_ROWS), WL_PG_TRACE=1 (print
 *   each command the harness runs, with its duration).
 * - Functions returning -1 have printed why on stderr, with the failing command's output.
 * - Not thread-safe: call it from one thread per process.
 * - A postmaster killed with SIGKILL leaves a zombie until init reaps it (late, in some
 *   containers) and data/postmaster.pid behind; PostgreSQL's own lock-file check then sees the
 *   zombie's pid as alive and refuses to start. Crash with pgh_crash (an immediate stop) instead.
 */
#ifndef WL_TEST_PGHARNESS_H
#define WL_TEST_PGHARNESS_H

#include <stddef.h>
#include <sys/types.h>

/* Rows pgh_crash() inserts by default: about 60 MB of WAL. Replaying it keeps the server
 * answering 57P03 for about 1.5-2 s on the 2-core reference machine (redo about 1 s, then the
 * end-of-recovery checkpoint), while writing it takes under 1 s; a faster machine replays it
 * sooner, so no test's verdict may rest on that window (hold it: pgh_start_held). */
#define PGH_CRASH_ROWS 400000L

struct pgh {
    char dir[256];          /* mkdtemp'd temp dir, /tmp/wlpg.XXXXXX; "" when not set up */
    char datadir[320];      /* dir/data */
    char sockdir[320];      /* dir (unix socket directory) */
    char logpath[320];      /* dir/server.log (logging_collector off; pg_ctl -l) */
    int port;               /* a free TCP port on 127.0.0.1 (listen_addresses='127.0.0.1') */
    char conninfo[600];     /* "host=<sockdir> port=<port> dbname=postgres user=postgres" */
    char tcp_conninfo[600]; /* "hostaddr=127.0.0.1 port=<port> dbname=postgres user=postgres" */
    int running;            /* 1 after pgh_start, 0 after pgh_stop/pgh_crash */

    char password[128]; /* the postgres user's password with auth "scram", else "" */
    int scram;          /* 1: scram-sha-256 for local and host connections; 0: trust */
    long start_mark;    /* log offset at the last pgh_start (pgh_wait_ready looks after it) */
    pid_t owner;        /* the process that called pgh_init; only it may stop or remove */

    int bouncer_port;           /* pgbouncer's port (127.0.0.1 and a socket in dir), or 0 */
    char bouncer_conninfo[600]; /* "host=<dir> port=<bouncer_port> dbname=postgres user=postgres" */
    char bouncer_tcp_conninfo[600]; /* "hostaddr=127.0.0.1 port=<bouncer_port> ..." */
    char bouncer_logpath[320];      /* dir/pgbouncer.log */
    int bouncer_running;

    int held; /* 1 after pgh_start_held, until pgh_release or a stop */
};

/* In a cmocka test: skip, printing why, unless the suite's PostgreSQL is up (expands to
 * cmocka's print_message and skip in the including file). */
#define PGH_NEED(have, reason)                                                                     \
    do {                                                                                           \
        if (!(have)) {                                                                             \
            print_message("skipped: %s\n", (reason) ? (reason) : "no PostgreSQL");                 \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* Why PostgreSQL cannot run here (binaries missing, no postgres user...), or NULL if it can. */
const char *pgh_unavailable(void);
/* Why pgbouncer cannot run here (in addition to pgh_unavailable), or NULL if it can. */
const char *pgh_bouncer_unavailable(void);
/* The directory holding initdb, pg_ctl, postgres and psql, or NULL. */
const char *pgh_bindir(void);

/* A new cluster in a new temp dir (a copy of this process's initdb'd template). auth: "trust"
 * (or NULL) or "scram" (scram-sha-256 for local and host, with `password` set for user postgres
 * before the server first starts). Sets log_connections=on, log_line_prefix='%m [%p] ',
 * log_timezone='UTC',
 * unix_socket_directories, port, listen_addresses='127.0.0.1', fsync=off, lc_messages=C,
 * checkpoint_timeout=1d, max_wal_size=4GB. extra_conf: lines appended to postgresql.conf after
 * those, so they win (but leave port and sockets alone), or NULL. Does not start the server.
 * Also stops and removes what dead test processes left in /tmp/wlpg.*. 0 or -1. */
int pgh_init(struct pgh *h, const char *auth, const char *password, const char *extra_conf);
/* Start the server. wait=1: return once it accepts connections (pg_ctl -w, bounded 60 s; on a
 * port taken meanwhile, retried on another port); wait=0: launch it and return at once (the
 * socket may not exist yet). 0 or -1. */
int pgh_start(struct pgh *h, int wait);
/* Start the server held in recovery, for as long as the test needs: it starts as a standby
 * (standby.signal, hot_standby off) with nothing to stream from, so it replays the WAL there is
 * (after pgh_crash, the crash's) and then stays in recovery; every connection meanwhile is
 * refused with 57P03 (PGH_LOG_NOT_ACCEPTING, "Hot standby mode is disabled"; in the first
 * milliseconds PGH_LOG_STARTING_UP) however fast or slow the machine is. Returns once the socket
 * listens and the startup process runs (pg_ctl -w, bounded 60 s), so the first connection after
 * it is already refused. pgh_release ends the hold; pgh_stop works too (the next pgh_start is a
 * normal one). 0 or -1. */
int pgh_start_held(struct pgh *h);
/* End the hold: promote the server out of recovery (pg_ctl promote; a new timeline, as after a
 * failover). It then logs "redo done" and "database system is ready to accept connections".
 * wait=1: return once it is ready (pgh_wait_ready, bounded 60 s); wait=0: at once. 0 or -1. */
int pgh_release(struct pgh *h, int wait);
/* The pid of the postmaster's startup process (the one replaying WAL), or 0 when there is none
 * (not started yet, or recovery is over). */
pid_t pgh_startup_pid(const struct pgh *h);
/* Wait, polling the log (no connections), until the server started by the last pgh_start logs
 * "database system is ready to accept connections". 0, or -1 on timeout or a dead server. */
int pgh_wait_ready(struct pgh *h, int timeout_ms);
/* The server up and past recovery, whatever a failed test left behind: started if stopped,
 * released if held, then pgh_wait_ready (bounded 60 s). 0 or -1. */
int pgh_up(struct pgh *h);
/* A suite's server, set up once for its group: pgh_init (auth "scram" with `password`, or
 * "trust" when it is NULL; extra_conf as there) and pgh_start(h, 1). NULL when it is up, else
 * why not (PostgreSQL unavailable, or it did not start), for the suite's tests to skip with. */
const char *pgh_suite_up(struct pgh *h, const char *password, const char *extra_conf);
/* Stop: mode "fast" or "immediate" (pg_ctl -w; a SIGSTOPped postmaster is continued first).
 * 0 or -1. */
int pgh_stop(struct pgh *h, const char *mode);
/* Write WAL (CHECKPOINT, then PGH_CRASH_ROWS rows into a fresh table; no checkpoint follows
 * since checkpoint_timeout is 1d and max_wal_size 4GB), then stop -m immediate: the next start
 * replays it and answers 57P03 "the database system is starting up" meanwhile. The server must
 * be running. 0 or -1. See PGH_LOG_STARTING_UP for what the log says meanwhile. */
int pgh_crash(struct pgh *h);
/* The same with a chosen number of rows (about 6500 rows per MB of WAL). */
int pgh_crash_rows(struct pgh *h, long rows);

/* Number of lines in the server log containing `needle` (0 if there is no log). */
int pgh_count_log(const struct pgh *h, const char *needle);
/* Byte offset of the current end of the log. */
long pgh_log_mark(const struct pgh *h);
/* Number of lines after byte offset `mark` containing `needle`. */
int pgh_count_log_since(const struct pgh *h, long mark, const char *needle);
/* The FATAL messages of a server refusing a connection with 57P03 while it starts. PostgreSQL 15
 * says "starting up" only until the startup process begins recovery (a few ms); during WAL
 * replay it says "not yet accepting connections" (DETAIL: Consistent recovery state has not been
 * yet reached), with the same SQLSTATE. ("shutting down" is 57P03 too, but another story.) */
#define PGH_LOG_STARTING_UP       "the database system is starting up"
#define PGH_LOG_NOT_YET_ACCEPTING "the database system is not yet accepting connections"
#define PGH_LOG_NOT_ACCEPTING     "the database system is not accepting connections"
/* Number of connections refused with 57P03 while starting (any of the three messages above)
 * after `mark`. */
int pgh_count_log_57P03_since(const struct pgh *h, long mark);
/* Wait, polling the log, until at least `n` connections after `mark` were refused with 57P03
 * (as counted by pgh_count_log_57P03_since). 0, or -1 after timeout_ms. */
int pgh_wait_57P03_since(const struct pgh *h, long mark, int n, int timeout_ms);
/* The wall-clock time (CLOCK_REALTIME, ns since the epoch) of the first "database system is
 * ready to accept connections" line after `mark` (the log's '%m' stamps are UTC), or 0 if there
 * is none yet. Millisecond resolution. */
long long pgh_log_ready_realtime_ns(const struct pgh *h, long mark);
/* Print the log from `mark` to stderr (for failing tests). */
void pgh_dump_log(const struct pgh *h, long mark);

/* Run one SQL command via psql (as postgres over the socket, with the password if scram).
 * 0 on success, -1 otherwise (psql's message on stderr). Blocks up to 60 s. */
int pgh_psql(struct pgh *h, const char *sql);
/* Run one SQL command and put its unaligned, tuples-only output (trailing newline removed) in
 * out. 0 or -1. */
int pgh_query(struct pgh *h, const char *sql, char *out, size_t outsz);
/* Run psql against any conninfo with a password (NULL: none), quietly: out (may be NULL) gets
 * stdout and stderr. Returns psql's exit status (0 ok, 1 error, 2 connection failed, 3 script
 * error), or -1 if psql could not be run or took over 60 s. */
int pgh_psql_conn(struct pgh *h, const char *conninfo, const char *password, const char *sql,
                  char *out, size_t outsz);

/* The server's answer to one startup packet over the Unix socket, without libpq. */
enum pgh_probe_result {
    PGH_PROBE_NOSERVER = 0, /* no socket, or connection refused */
    PGH_PROBE_ACCEPTED = 1, /* asked for authentication or sent AuthenticationOk */
    PGH_PROBE_REJECTED = 2, /* sent an ErrorResponse: sqlstate says which (57P03, 53300...) */
    PGH_PROBE_ERROR = -1    /* anything else (timeout, garbage, reset) */
};
/* Send a startup packet to `port` over the socket in h->sockdir (0: the server's port), read
 * the first answer, say goodbye. sqlstate (may be NULL, 6 bytes) receives the error code for
 * PGH_PROBE_REJECTED, else "". Blocks up to timeout_ms. */
enum pgh_probe_result pgh_probe(const struct pgh *h, int port, char *sqlstate, int timeout_ms);
/* The postmaster's pid from data/postmaster.pid if that process is alive, else 0. */
pid_t pgh_postmaster_pid(const struct pgh *h);
/* 1 if pid runs and is not a zombie (kill(pid, 0) also succeeds on the zombie of a daemon that
 * init has not reaped yet), else 0. */
int pgh_pid_alive(pid_t pid);

/* Start pgbouncer (session pooling, auth like the server's) in front of the server on a free
 * port, listening on 127.0.0.1 and a socket in dir; fills *port (may be NULL), bouncer_port and
 * the bouncer conninfos. Returns once it listens (bounded 10 s). 0 or -1. */
int pgh_bouncer_start(struct pgh *h, int *port);
/* The same with more [pgbouncer] settings: `settings` holds lines "name = value\n" written
 * after the harness's own, so they win (e.g. "server_login_retry = 1\n"), or NULL. Restart
 * (pgh_bouncer_stop first) for new settings to apply. 0 or -1. */
int pgh_bouncer_start_with(struct pgh *h, int *port, const char *settings);
/* Stop pgbouncer (SIGTERM, then SIGKILL after 5 s). Safe when it is not running. */
void pgh_bouncer_stop(struct pgh *h);
/* Stop everything (immediate) and remove the temp dir. Safe to call twice, on a zeroed struct,
 * and in a forked child (where it does nothing). */
void pgh_destroy(struct pgh *h);

#endif
