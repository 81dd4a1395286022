/* The throwaway-PostgreSQL harness itself: start and query, crash recovery answering 57P03,
 * log counting, scram, pgbouncer, and clean-up after test processes that die. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include "pgharness.h"
#include "proc.h"

#define SKIP_WITHOUT(why_expr)                                                                     \
    do {                                                                                           \
        const char *why_ = (why_expr);                                                             \
        if (why_) {                                                                                \
            print_message("skipped: %s\n", why_);                                                  \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

static double ms_since(uint64_t t0)
{
    return (double)(wlt_now_ns() - t0) / 1e6;
}

static int setup(void **state)
{
    *state = calloc(1, sizeof(struct pgh));
    return *state ? 0 : -1;
}

static int teardown(void **state)
{
    pgh_destroy(*state);
    free(*state);
    return 0;
}

static void expect_query(struct pgh *h, const char *sql, const char *want)
{
    char out[256];
    if (pgh_query(h, sql, out, sizeof(out)) != 0)
        fail_msg("query failed: %s", sql);
    if (strcmp(out, want) != 0)
        fail_msg("%s gave '%s', expected '%s'", sql, out, want);
}

static pid_t parent_of(pid_t pid)
{
    char path[64], buf[512], state;
    int ppid = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *s = strrchr(buf, ')');
    if (!s || sscanf(s + 1, " %c %d", &state, &ppid) != 2)
        return -1;
    return (pid_t)ppid;
}

/* The pid on the first line of dir/name (the file must exist). */
static pid_t pid_file(const char *dir, const char *name)
{
    char path[400], buf[32];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    assert_non_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    return (pid_t)atoi(buf);
}

static int destroy_then_exit(void *arg, int index)
{
    (void)index;
    pgh_destroy(arg); /* not the owner: must do nothing */
    exit(0);          /* runs the atexit handler too, which must not touch the parent's server */
}

static void test_pgharness_starts_answers_queries_and_counts_log_lines(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_unavailable());

    uint64_t t0 = wlt_now_ns();
    assert_int_equal(pgh_init(h, "trust", NULL, NULL), 0);
    double init_ms = ms_since(t0);
    assert_true(strncmp(h->dir, "/tmp/wlpg.", 10) == 0);
    assert_true(strstr(h->conninfo, h->sockdir) != NULL);
    assert_true(strstr(h->tcp_conninfo, "hostaddr=127.0.0.1") != NULL);
    assert_true(h->port > 0 && h->port < 65536);
    assert_false(h->running);

    /* A pipe made before the start: if the server inherited its write end, the read end would
     * not see the hang-up after we close ours. */
    int p[2];
    assert_int_equal(pipe(p), 0);
    t0 = wlt_now_ns();
    assert_int_equal(pgh_start(h, 1), 0);
    double start_ms = ms_since(t0);
    assert_true(h->running);
    close(p[1]);
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 1);
    assert_true(pfd.revents & POLLHUP);
    close(p[0]);

    pid_t pm = pgh_postmaster_pid(h);
    assert_true(pm > 0);
    assert_true(parent_of(pm) != getpid());

    expect_query(h, "SELECT 1 + 1", "2");
    expect_query(h, "SELECT current_user", "postgres");
    expect_query(h, "SHOW log_connections", "on");
    char port[16];
    snprintf(port, sizeof(port), "%d", h->port);
    expect_query(h, "SHOW port", port);
    char out[4096];
    assert_int_equal(
        pgh_psql_conn(h, h->tcp_conninfo, NULL, "SELECT inet_server_port()", out, sizeof(out)), 0);
    assert_true(strstr(out, port) != NULL);
    assert_int_not_equal(pgh_psql(h, "SELECT * FROM no_such_table"), 0);

    long mark = pgh_log_mark(h);
    assert_true(mark > 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pgh_psql(h, "SELECT 1"), 0);
    assert_int_equal(pgh_count_log_since(h, mark, "connection received"), 3);
    assert_int_equal(pgh_count_log_since(h, mark, "FATAL"), 0);
    assert_true(pgh_count_log(h, "connection received") >= 3 + 6);
    assert_int_equal(pgh_count_log_since(h, pgh_log_mark(h), "connection received"), 0);
    assert_int_equal(pgh_count_log(h, "no such needle in any log"), 0);

    char sqlstate[6];
    mark = pgh_log_mark(h);
    assert_int_equal(pgh_probe(h, 0, sqlstate, 2000), PGH_PROBE_ACCEPTED);
    assert_string_equal(sqlstate, "");
    assert_int_equal(pgh_count_log_since(h, mark, "connection received"), 1);

    pid_t child = wlt_spawn(destroy_then_exit, h, 0);
    assert_int_equal(wlt_wait(child, 20000), 0);
    assert_int_equal(pgh_psql(h, "SELECT 1"), 0);

    t0 = wlt_now_ns();
    assert_int_equal(pgh_stop(h, "fast"), 0);
    double stop_ms = ms_since(t0);
    assert_false(h->running);
    assert_int_equal(pgh_postmaster_pid(h), 0);
    assert_int_equal(pgh_probe(h, 0, sqlstate, 1000), PGH_PROBE_NOSERVER);
    assert_true(pgh_count_log(h, "database system is shut down") >= 1);
    print_message("init %.0f ms, start (wait) %.0f ms, stop (fast) %.0f ms\n", init_ms, start_ms,
                  stop_ms);

    char dir[sizeof(h->dir)];
    snprintf(dir, sizeof(dir), "%s", h->dir);
    pgh_destroy(h);
    assert_int_equal(access(dir, F_OK), -1);
    pgh_destroy(h);
    assert_int_equal(h->dir[0], '\0');
}

static void test_pgharness_start_moves_to_a_free_port_when_its_port_was_taken(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_unavailable());
    assert_int_equal(pgh_init(h, "trust", NULL, NULL), 0);

    /* Someone else listens on the port between pgh_init and pgh_start. */
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    assert_true(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)h->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 1), 0);

    int taken = h->port;
    assert_int_equal(pgh_start(h, 1), 0);
    close(fd);
    assert_int_not_equal(h->port, taken);
    char port[16];
    snprintf(port, sizeof(port), "port=%d ", h->port);
    assert_non_null(strstr(h->conninfo, port));
    assert_non_null(strstr(h->tcp_conninfo, port));
    snprintf(port, sizeof(port), "%d", h->port);
    expect_query(h, "SHOW port", port);
    assert_int_equal(pgh_count_log(h, "could not create any TCP/IP sockets"), 1);
}

static long expected_crash_rows(void)
{
    const char *env = getenv("WL_PG_CRASH_ROWS");
    long rows = env && *env ? strtol(env, NULL, 10) : 0;
    return rows > 0 ? rows : PGH_CRASH_ROWS;
}

static void test_pgharness_crash_then_start_answers_57P03_while_replaying(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_unavailable());
    assert_int_equal(pgh_init(h, "trust", NULL, NULL), 0);
    assert_int_equal(pgh_start(h, 1), 0);

    uint64_t t0 = wlt_now_ns();
    assert_int_equal(pgh_crash(h), 0);
    double crash_ms = ms_since(t0);
    assert_false(h->running);
    assert_true(pgh_count_log(h, "immediate shutdown request") >= 1);

    /* Held in recovery: every answer is 57P03 for as long as the test probes, here at least
     * 300 ms and 20 probes, whether replay takes 50 ms or 5 s; then released. */
    long mark = pgh_log_mark(h);
    t0 = wlt_now_ns();
    assert_int_equal(pgh_start_held(h), 0);
    double launch_ms = ms_since(t0);
    pid_t startup = pgh_startup_pid(h);
    assert_true(startup > 0);
    assert_true(h->held);

    /* Probe every 2 ms until the server accepts: it must say 57P03 meanwhile. */
    int rejected = 0, other = 0, released = 0;
    double first = -1, last = -1, accepted = -1, release_at = -1;
    char sqlstate[6];
    while (ms_since(t0) < 60000) {
        enum pgh_probe_result r = pgh_probe(h, 0, sqlstate, 2000);
        double at = ms_since(t0);
        if (r == PGH_PROBE_ACCEPTED) {
            accepted = at;
            break;
        }
        if (r == PGH_PROBE_REJECTED && strcmp(sqlstate, "57P03") == 0) {
            if (first < 0)
                first = at;
            last = at;
            rejected++;
        } else if (r != PGH_PROBE_NOSERVER) {
            other++;
        }
        if (!released && first >= 0 && last - first >= 300 && rejected >= 20) {
            assert_int_equal(pgh_startup_pid(h), startup); /* still replaying or waiting */
            assert_int_equal(pgh_release(h, 0), 0);
            release_at = ms_since(t0);
            released = 1;
        }
        wlt_sleep_ms(2);
    }
    if (accepted < 0)
        pgh_dump_log(h, mark);
    assert_true(released);
    assert_true(accepted >= release_at);
    assert_int_equal(other, 0);
    assert_true(rejected > 0);
    assert_int_equal(pgh_wait_ready(h, 1000), 0);
    assert_false(h->held);
    assert_int_equal(pgh_startup_pid(h), 0); /* recovery is over */

    assert_int_equal(pgh_count_log_since(h, mark, "database system was interrupted"), 1);
    assert_int_equal(pgh_count_log_since(h, mark, "redo starts"), 1);
    assert_int_equal(pgh_count_log_since(h, mark, "redo done"), 1);
    /* Every 57P03 left a FATAL line: "starting up" at first, then, held, "not accepting". */
    assert_int_equal(pgh_count_log_57P03_since(h, mark), rejected);
    assert_true(pgh_count_log_since(h, mark, PGH_LOG_STARTING_UP) +
                    pgh_count_log_since(h, mark, PGH_LOG_NOT_YET_ACCEPTING) +
                    pgh_count_log_since(h, mark, PGH_LOG_NOT_ACCEPTING) >=
                1);
    char want[32];
    snprintf(want, sizeof(want), "%ld", expected_crash_rows());
    expect_query(h, "SELECT count(*) FROM wl_crash", want);

    print_message("crash (WAL of %ld rows + stop) %.0f ms; held start %.0f ms; 57P03 from %.0f to "
                  "%.0f ms after launch (%d answers); released at %.0f ms, accepting at %.0f ms\n",
                  expected_crash_rows(), crash_ms, launch_ms, first, last, rejected, release_at,
                  accepted);
    /* The hold gave the window the cold-start tests need, however fast replay was. */
    assert_true(last - first >= 300);

    /* A held server that is stopped instead of released starts normally the next time. */
    assert_int_equal(pgh_stop(h, "fast"), 0);
    assert_int_equal(pgh_start_held(h), 0);
    assert_int_equal(pgh_probe(h, 0, sqlstate, 2000), PGH_PROBE_REJECTED);
    assert_string_equal(sqlstate, "57P03");
    assert_int_equal(pgh_stop(h, "fast"), 0);
    assert_false(h->held);
    assert_int_equal(pgh_start(h, 1), 0);
    expect_query(h, "SELECT pg_is_in_recovery()", "f");

    /* Launch and pgh_wait_ready: ready once recovery is over, without connecting. */
    assert_int_equal(pgh_crash_rows(h, 10000), 0);
    t0 = wlt_now_ns();
    mark = pgh_log_mark(h);
    assert_int_equal(pgh_start(h, 0), 0);
    assert_int_equal(pgh_wait_ready(h, 30000), 0);
    print_message("start -W + pgh_wait_ready after a small crash: %.0f ms\n", ms_since(t0));
    assert_int_equal(pgh_count_log_since(h, mark, "connection received"), 0);
    assert_int_equal(pgh_count_log_since(h, mark, "redo done"), 1);
    expect_query(h, "SELECT count(*) FROM wl_crash", "10000");
}

static void test_pgharness_scram_rejects_wrong_password(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_unavailable());
    const char *password = "s3cr'et \"pw";
    assert_int_equal(pgh_init(h, "scram", password, "max_connections = 50"), 0);
    assert_int_equal(pgh_start(h, 1), 0);

    char hba[2048], path[400];
    snprintf(path, sizeof(path), "%s/pg_hba.conf", h->datadir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(hba, 1, sizeof(hba) - 1, f);
    fclose(f);
    hba[n] = '\0';
    assert_non_null(strstr(hba, "local all         all                 scram-sha-256"));
    assert_non_null(strstr(hba, "127.0.0.1/32  scram-sha-256"));
    assert_null(strstr(hba, "trust"));

    expect_query(h, "SHOW max_connections", "50");
    expect_query(h,
                 "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                 "WHERE rolname = 'postgres'",
                 "t");

    char out[4096];
    long mark = pgh_log_mark(h);
    assert_int_equal(pgh_psql_conn(h, h->conninfo, "wrong", "SELECT 1", out, sizeof(out)), 2);
    assert_non_null(strstr(out, "password authentication failed"));
    assert_int_equal(pgh_psql_conn(h, h->tcp_conninfo, "wrong", "SELECT 1", out, sizeof(out)), 2);
    assert_int_equal(pgh_psql_conn(h, h->conninfo, NULL, "SELECT 1", out, sizeof(out)), 2);
    assert_non_null(strstr(out, "no password supplied"));
    assert_int_equal(pgh_psql_conn(h, h->tcp_conninfo, password, "SELECT 7", out, sizeof(out)), 0);
    assert_string_equal(out, "7\n");
    assert_int_equal(pgh_count_log_since(h, mark, "password authentication failed"), 2);

    /* A probe is asked for a password and leaves without a FATAL line. */
    char sqlstate[6];
    mark = pgh_log_mark(h);
    assert_int_equal(pgh_probe(h, 0, sqlstate, 2000), PGH_PROBE_ACCEPTED);
    wlt_sleep_ms(100);
    assert_int_equal(pgh_count_log_since(h, mark, "FATAL"), 0);
}

static void test_pgharness_bouncer_passes_sessions_to_the_server(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_bouncer_unavailable());
    assert_int_equal(pgh_init(h, "scram", "bouncer-pw", NULL), 0);
    assert_int_equal(pgh_start(h, 1), 0);

    int port = 0;
    uint64_t t0 = wlt_now_ns();
    assert_int_equal(pgh_bouncer_start(h, &port), 0);
    print_message("pgbouncer up in %.0f ms on port %d\n", ms_since(t0), port);
    assert_int_equal(port, h->bouncer_port);
    assert_int_not_equal(port, h->port);
    assert_true(h->bouncer_running);
    assert_non_null(strstr(h->bouncer_conninfo, h->dir));

    char out[4096], want[32];
    long mark = pgh_log_mark(h);
    assert_int_equal(
        pgh_psql_conn(h, h->bouncer_conninfo, h->password, "SHOW port", out, sizeof(out)), 0);
    snprintf(want, sizeof(want), "%d\n", h->port);
    assert_string_equal(out, want);
    assert_int_equal(pgh_psql_conn(h, h->bouncer_tcp_conninfo, h->password, "SELECT current_user",
                                   out, sizeof(out)),
                     0);
    assert_string_equal(out, "postgres\n");
    assert_true(pgh_count_log_since(h, mark, "connection received") >= 1);
    assert_int_not_equal(
        pgh_psql_conn(h, h->bouncer_conninfo, "wrong", "SELECT 1", out, sizeof(out)), 0);

    /* pgbouncer's own console answers too (admin_users = postgres). */
    char admin[700];
    snprintf(admin, sizeof(admin), "host=%s port=%d dbname=pgbouncer user=postgres", h->dir, port);
    assert_int_equal(pgh_psql_conn(h, admin, h->password, "SHOW VERSION", out, sizeof(out)), 0);
    assert_non_null(strstr(out, "PgBouncer"));

    char sqlstate[6];
    pgh_bouncer_stop(h);
    assert_false(h->bouncer_running);
    assert_int_equal(pgh_probe(h, port, sqlstate, 1000), PGH_PROBE_NOSERVER);

    assert_int_equal(pgh_bouncer_start(h, &port), 0);
    assert_int_equal(
        pgh_psql_conn(h, h->bouncer_conninfo, h->password, "SELECT 1", out, sizeof(out)), 0);
    pid_t bpid = pid_file(h->dir, "pgbouncer.pid"), pm = pgh_postmaster_pid(h);
    assert_true(bpid > 0 && pm > 0);
    pgh_destroy(h);
    assert_false(pgh_pid_alive(bpid));
    assert_false(pgh_pid_alive(pm));
}

/* The child sets up a server and vanishes without cleaning up. */
struct abandoned {
    char dir[256];
    int use_exit; /* 1: exit() (atexit handler runs); 0: _exit() (as if killed) */
};

static int abandon(void *arg, int index)
{
    (void)index;
    struct abandoned *a = arg;
    static struct pgh h;
    if (pgh_init(&h, "trust", NULL, NULL) != 0 || pgh_start(&h, 1) != 0)
        return 1;
    snprintf(a->dir, sizeof(a->dir), "%s", h.dir);
    if (a->use_exit)
        exit(0);
    _exit(0);
}

static void test_pgharness_cleans_up_after_dead_test_processes(void **state)
{
    struct pgh *h = *state;
    SKIP_WITHOUT(pgh_unavailable());
    struct abandoned *a = wlt_shared(sizeof(*a));

    /* exit(): the atexit handler stops the server and removes the dir. */
    a->use_exit = 1;
    assert_int_equal(wlt_wait(wlt_spawn(abandon, a, 0), 60000), 0);
    assert_true(a->dir[0] != '\0');
    assert_int_equal(access(a->dir, F_OK), -1);

    /* _exit(): the server stays up until the next pgh_init on the machine finds it. */
    a->use_exit = 0;
    a->dir[0] = '\0';
    assert_int_equal(wlt_wait(wlt_spawn(abandon, a, 0), 60000), 0);
    assert_int_equal(access(a->dir, F_OK), 0);
    pid_t pm = pid_file(a->dir, "data/postmaster.pid");
    assert_true(pgh_pid_alive(pm));

    assert_int_equal(pgh_init(h, "trust", NULL, NULL), 0);
    assert_int_equal(access(a->dir, F_OK), -1);
    assert_false(pgh_pid_alive(pm));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pgharness_starts_answers_queries_and_counts_log_lines,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_pgharness_start_moves_to_a_free_port_when_its_port_was_taken, setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_pgharness_crash_then_start_answers_57P03_while_replaying, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pgharness_scram_rejects_wrong_password, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pgharness_bouncer_passes_sessions_to_the_server, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_pgharness_cleans_up_after_dead_test_processes, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("pgharness", tests, NULL, NULL);
}
