/* The contended cold-start benchmark's client strategies: how a worker process gets its
 * first successful query (the incident's retry policy, a naive loop, a flock, warmlock with
 * its logins paced or not), from the barrier to its record. See coldstart.c. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "coldstart.h"
#include "warmlock.h"
#include "warmlock/pg.h"

/* One attempt as an app makes it: a fresh connection, SELECT 1, closed. 0 or -1. */
static int attempt_query(const char *conninfo, struct worker_rec *r)
{
    r->attempts++;
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        copy_str(r->err, sizeof(r->err), PQerrorMessage(c));
        PQfinish(c);
        return -1;
    }
    PGresult *res = PQexec(c, "SELECT 1");
    int ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
             strcmp(PQgetvalue(res, 0, 0), "1") == 0;
    if (!ok)
        copy_str(r->err, sizeof(r->err), PQerrorMessage(c));
    PQclear(res);
    PQfinish(c);
    return ok ? 0 : -1;
}

/* The incident's policy (sleep_first) or the same without the sleep: verification, SELECT 1 up
 * to 3 times 500 ms apart; if that fails (logged: each attempt a warning, the last an error),
 * the app's query goes through the retry wrapper: up to 5 attempts, 200 ms before the second,
 * doubling, capped at 3000 ms; each failed attempt logged, and a final failure surfaced. */
static int incident_policy(const struct run_cfg *cfg, struct worker_rec *r, int sleep_first)
{
    if (sleep_first)
        sleep_ms(WARMUP_SLEEP_MS);
    for (int i = 0; i < VERIFY_TRIES; i++) {
        if (attempt_query(cfg->base_conn, r) == 0)
            return 0;
        r->errors++;
        if (i + 1 < VERIFY_TRIES)
            sleep_ms(VERIFY_GAP_MS);
    }
    int64_t delay = RETRY_INIT_MS;
    for (int i = 0; i < RETRY_TRIES; i++) {
        if (attempt_query(cfg->base_conn, r) == 0)
            return 0;
        r->errors++;
        if (i + 1 < RETRY_TRIES) {
            sleep_ms(delay);
            delay = delay * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : delay * 2;
        }
    }
    r->errors++; /* the request fails: "failed after 5 attempts" */
    return -1;
}

static void on_alarm(int sig)
{
    (void)sig; /* interrupts flock(2) */
}

/* flock: take an exclusive lock on a shared file (bounded by the run's timeout), run the naive
 * loop, release. */
static int flock_policy(const struct run_cfg *cfg, struct worker_rec *r)
{
    int fd = open(cfg->lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        copy_str(r->err, sizeof(r->err), strerror(errno));
        r->errors++;
        return -1;
    }
    struct sigaction sa = {.sa_handler = on_alarm}; /* no SA_RESTART: flock returns EINTR */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {.it_value = {cfg->timeout_ms / 1000, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
    int rc = flock(fd, LOCK_EX);
    int e = errno;
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    if (rc < 0) {
        copy_str(r->err, sizeof(r->err), e == EINTR ? "timed out waiting for the lock" : strerror(e));
        r->errors++;
        close(fd);
        return -1;
    }
    rc = incident_policy(cfg, r, 0);
    close(fd); /* releases the lock */
    return rc;
}

/* warmlock: open the segment and a prepared target (the conninfo parsed and keyed once),
 * then wl_pg_target_connect, as an application calls it (wl_pg_connect's path): one process
 * warms and verifies and keeps the connection that verified the epoch as its own, the
 * others wait, then each opens its own connection within the strategy's login budget (on a
 * connection failure it invalidates the epoch and one process re-verifies); timed:
 * "released", the call's return with a connection. Then this worker's own SELECT 1. */
static int warmlock_policy(const struct run_cfg *cfg, struct worker_rec *r)
{
    struct wl_segment *seg;
    struct wl_pg_target *t;
    struct wl_result res;
    struct wl_pg_opts o;
    memset(&o, 0, sizeof(o));
    o.wait.timeout_ms = WL_TIMEOUT_MS;
    o.attempt_timeout_ms = WL_ATTEMPT_MS;
    o.backoff.max_ms = (uint32_t)cfg->wl_backoff_max_ms;
    o.login_budget = cfg->login_budget;
    o.backoff.flags = cfg->backoff_flags;
    if (wl_open(cfg->shm, NULL, &seg) < 0 || wl_pg_target_open(seg, cfg->conninfo, &o, &t) < 0) {
        copy_str(r->err, sizeof(r->err), wl_last_error());
        r->errors++;
        return -1;
    }
    PGconn *c = wl_pg_target_connect(t, &res);
    r->leader = res.role == WL_LEADER;
    if (c)
        r->t_rel_ns = mono_ns() - g_sh->t0_mono_ns;
    r->attempts++;
    if (!c) {
        copy_str(r->err, sizeof(r->err), res.error);
        r->errors++;
        return -1;
    }
    PGresult *q = PQexec(c, "SELECT 1");
    int ok = PQresultStatus(q) == PGRES_TUPLES_OK && PQntuples(q) == 1;
    if (!ok) {
        copy_str(r->err, sizeof(r->err), PQerrorMessage(c));
        r->errors++;
    }
    PQclear(q);
    PQfinish(c);
    return ok ? 0 : -1;
}

void worker_main(const struct run_cfg *cfg, int idx, uint32_t gen)
{
    struct worker_rec *r = &g_sh->w[idx];
    r->t_rel_ns = -1;
    child_defaults();
    prctl(PR_SET_NAME, "cs-worker"); /* so that a profile tells the workers from the driver */
    if (getppid() == 1)
        _exit(3);
    /* The barrier: bounded, in case the driver never releases us. */
    if (wlt_wait_change(&g_sh->go, gen, 120 * 1000) < 0)
        _exit(4);
    int rc;
    switch (cfg->st) {
    case ST_INCIDENT: rc = incident_policy(cfg, r, 1); break;
    case ST_NAIVE:
    case ST_NAIVE_AA: rc = incident_policy(cfg, r, 0); break;
    case ST_FLOCK: rc = flock_policy(cfg, r); break;
    default: rc = warmlock_policy(cfg, r); break;
    }
    if (rc == 0) {
        r->t_ok_ns = mono_ns() - g_sh->t0_mono_ns;
        r->ok = 1;
    }
    r->done = 1;
    _exit(0);
}
