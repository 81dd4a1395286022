/* What a new user meets first, run for real: status --json without a segment, the progress
 * line of wait on a terminal, warmlock forget (refusals, and racing callers that must never
 * see another key's slot), and README.md's log and status examples against what the
 * programs print. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suite.h"
#include "warmlock.h"
#include "warmlock/pg.h"
#include "coordinator/common.h"

#ifndef WL_TEST_SRCDIR
#error "WL_TEST_SRCDIR must name the source tree (tests/meson.build passes it)"
#endif
#define README WL_TEST_SRCDIR "/README.md"
#define PASSWORD "Fc-7d1e-pw"

WLT_PG_SUITE
static char DIR_[64];
static char CI[1024]; /* the suite server's conninfo, with its password */

#define RUN(r, timeout, ...) WLT_RUN((r), DIR_, (timeout), __VA_ARGS__)

static const char *segname(void)
{
    static char buf[64];
    snprintf(buf, sizeof(buf), "%s", wlt_segname());
    wl_unlink(buf);
    return buf;
}

static int count(const char *s, const char *needle)
{
    int n = 0;
    for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* A conninfo nobody serves: its socket directory exists (so the engine waits for the
 * socket file to appear, with no busy probing). */
static void nowhere(char *buf, size_t len, const char *db)
{
    snprintf(buf, len, "host=%s port=5998 dbname=%s user=fc", DIR_, db);
}

/* ---------------------------------------------------------------- status --json */

static void test_status_json_without_segment_is_json(void **state)
{
    struct wlt_run *r = wlt_newrun();
    const char *shm = segname();
    char want[256], path[128];

    (void)state;
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "status", "--json");
    snprintf(want, sizeof(want), "{\"segment\": \"%s\", \"slots\": []}\n", shm);
    assert_string_equal(r->out, want);
    assert_int_equal(r->status, 1); /* as the table: no segment yet */
    assert_int_equal(count(r->err, "\n"), 1);
    assert_non_null(strstr(r->err, "does not exist"));
    snprintf(path, sizeof(path), "/dev/shm%s", shm);
    assert_int_equal(access(path, F_OK), -1); /* never created */
    free(r);
}

/* ---------------------------------------------------------------- progress line */

static void test_wait_on_a_terminal_says_what_it_waits_for_after_1s(void **state)
{
    const char *shm = segname();
    char ci[256], key[WL_PG_KEY_MAX], out[16384];
    struct wl_segment *seg;
    struct wlt_run *r = wlt_newrun();
    size_t n = 0;
    uint64_t t0, first = 0;
    int master, st;
    pid_t pid;

    (void)state;
    nowhere(ci, sizeof(ci), "progress");
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, ci, key, sizeof(key)) > 0);
    wl_close(seg);

    t0 = wlt_now_ns();
    pid = forkpty(&master, NULL, NULL, NULL);
    assert_true(pid >= 0);
    if (pid == 0) {
        execl(WL_WARMLOCK, "warmlock", "--shm", shm, "wait", "--timeout", "4", ci,
              (char *)NULL);
        _exit(127);
    }
    for (;;) { /* the terminal's output until the program ends (EIO on Linux) */
        struct pollfd p = {master, POLLIN, 0};
        if (poll(&p, 1, 20000) <= 0)
            break;
        ssize_t k = read(master, out + n, sizeof(out) - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        out[n] = '\0';
        if (!first && strstr(out, "waiting for"))
            first = wlt_now_ns();
    }
    close(master);
    st = wlt_wait(pid, 10000);
    print_message("terminal: %s", out);
    assert_int_equal(st, 1);
    assert_int_equal(count(out, "waiting for"), 1);
    assert_non_null(strstr(out, key)); /* names the target by its key */
    assert_true(first > 0);
    assert_true(first - t0 >= 900u * 1000000u); /* not before 1 s */
    /* the progress line comes first, the final reason after it */
    assert_true(strstr(out, "waiting for") < strstr(out, "deadline passed"));

    /* not a terminal: nothing but the reason */
    RUN(r, 20000, WL_WARMLOCK, "--shm", (char *)shm, "wait", "--timeout", "1.5", ci);
    assert_int_equal(r->status, 1);
    assert_null(strstr(r->err, "waiting for"));
    assert_int_equal(count(r->err, "\n"), 1);
    wl_unlink(shm);
    free(r);
}

/* ---------------------------------------------------------------- forget */

struct hold {
    _Atomic uint32_t in_warm, go, warms;
};

static int warm_held(void *arg, struct wl_result *res)
{
    struct hold *h = arg;
    (void)res;
    atomic_store(&h->in_warm, 1);
    wlt_wake(&h->in_warm);
    while (!atomic_load(&h->go))
        wlt_wait_change(&h->go, 0, 1000);
    atomic_fetch_add(&h->warms, 1);
    return 0;
}

static int warm_count(void *arg, struct wl_result *res)
{
    struct hold *h = arg;
    (void)res;
    atomic_fetch_add(&h->warms, 1);
    return 0;
}

struct forget_args {
    const char *shm;
    const char *key;
    struct hold *h;
};

static int child_ensure(void *arg, int index)
{
    struct forget_args *a = arg;
    struct wl_wait_opts w = {.timeout_ms = 30000};
    struct wl_segment *seg;
    struct wl_result res;

    (void)index;
    if (wl_open(a->shm, NULL, &seg) < 0)
        return 10;
    return wl_ensure(seg, a->key, warm_held, a->h, &w, &res) == 0 ? 0 : 11;
}

static uint32_t waiters_of(const char *shm, const char *key)
{
    struct wl_segment *seg;
    struct wl_slot_info si;
    uint32_t n = 0;

    if (wl_open(shm, NULL, &seg) == 0 && wl_lookup(seg, key, &si) == 0)
        n = si.waiters;
    wl_close(seg);
    return n;
}

static void test_forget_refuses_a_warming_or_awaited_slot_then_frees_it(void **state)
{
    const char *shm = segname();
    char ci[256], key[WL_PG_KEY_MAX], want[WL_PG_KEY_MAX + 64];
    struct hold *h = wlt_shared(sizeof(*h));
    struct forget_args a = {shm, key, h};
    struct wlt_run *r = wlt_newrun();
    struct wl_segment *seg;
    struct wl_slot_info si;
    struct wl_result res;
    pid_t leader, follower;
    uint64_t end;

    (void)state;
    nowhere(ci, sizeof(ci), "forget");
    assert_int_equal(wl_open(shm, NULL, &seg), 0);
    assert_true(wl_pg_slot_key(seg, ci, key, sizeof(key)) > 0);

    /* no slot yet: a clear refusal */
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "forget", ci);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->err, "no slot"));

    /* a leader warms it, a follower waits */
    leader = wlt_spawn(child_ensure, &a, 0);
    while (!atomic_load(&h->in_warm))
        assert_int_equal(wlt_wait_change(&h->in_warm, 0, 20000), 0);
    follower = wlt_spawn(child_ensure, &a, 1);
    for (end = wlt_now_ns() + 20000ull * 1000000u; waiters_of(shm, key) < 1;) {
        assert_true(wlt_now_ns() < end);
        wlt_sleep_ms(2);
    }
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "forget", ci);
    print_message("while warming: %s", r->err);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->err, "warm-up is in flight"));
    assert_int_equal(wl_lookup(seg, key, &si), 0);

    /* the leader publishes while the follower is stopped, its waiter token still held */
    assert_int_equal(kill(follower, SIGSTOP), 0);
    assert_int_equal(wlt_wait_stopped(follower, 10000), 0);
    atomic_store(&h->go, 1);
    wlt_wake(&h->go);
    assert_int_equal(wlt_wait(leader, 20000), 0);
    assert_int_equal(wl_lookup(seg, key, &si), 0);
    assert_int_equal(si.state, WL_READY);
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "forget", ci);
    print_message("while awaited: %s", r->err);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->err, "1 process is waiting"));

    /* the follower resumes, sees READY and leaves: now the slot is free */
    assert_int_equal(kill(follower, SIGCONT), 0);
    assert_int_equal(wlt_wait(follower, 20000), 0);
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "forget", ci);
    assert_int_equal(r->status, 0);
    snprintf(want, sizeof(want), "forgot %s", key);
    assert_non_null(strstr(r->out, want));
    assert_int_equal(wl_lookup(seg, key, &si), -ENOENT);
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "status", "--json");
    assert_null(strstr(r->out, key));

    /* the next caller finds no READY: it leads a warm-up of its own, at a later epoch */
    atomic_store(&h->warms, 0);
    assert_int_equal(wl_ensure(seg, key, warm_count, h, NULL, &res), 0);
    assert_int_equal(res.role, WL_LEADER);
    assert_int_equal(atomic_load(&h->warms), 1);
    assert_true(res.epoch >= 2);
    /* --key takes the key as status shows it */
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "forget", "--key", key);
    assert_int_equal(r->status, 0);
    assert_int_equal(wl_lookup(seg, key, &si), -ENOENT);
    wl_close(seg);
    wl_unlink(shm);
    free(r);
}

/* Racing callers of one key (plain and prepared, with invalidations) against a process
 * that forgets that key and, in a segment of 4 slots, keeps taking slots over for new keys
 * and forgetting them: nobody is ever handed another key's answer, no key ever has two
 * leaders, and every new key's first caller leads its own warm-up. */
#define RACERS 3
#define RACE_MS 1500u
struct race {
    _Atomic uint32_t leaders, double_leaders, errors, stop;
    char err[256];
};

static int warm_a(void *arg, struct wl_result *res)
{
    struct race *x = arg;
    (void)res;
    if (atomic_fetch_add(&x->leaders, 1) != 0)
        atomic_fetch_add(&x->double_leaders, 1);
    sched_yield();
    atomic_fetch_sub(&x->leaders, 1);
    return 0;
}

static struct race *RACE;
static char SHM_RACE[64];

static int racer(void *arg, int index)
{
    struct wl_open_opts o = {.slots = 4};
    struct wl_wait_opts w = {.timeout_ms = 20000};
    struct race *x = RACE;
    struct wl_segment *seg;
    struct wl_key *k;
    struct wl_result res;

    (void)arg;
    if (wl_open(SHM_RACE, &o, &seg) < 0 || wl_key_open(seg, "key-a", &k) < 0)
        return 10;
    for (unsigned i = 0; !atomic_load(&x->stop); i++) {
        int r = (i + (unsigned)index) % 2 ? wl_ensure(seg, "key-a", warm_a, x, &w, &res)
                                          : wl_key_ensure(k, warm_a, x, &w, &res);
        if (r != 0) {
            if (atomic_fetch_add(&x->errors, 1) == 0)
                snprintf(x->err, sizeof(x->err), "%s", res.error);
            continue;
        }
        if (i % 40 == 0)
            wl_invalidate(seg, "key-a", res.epoch);
    }
    wl_key_close(k);
    return 0;
}

static void test_forget_racing_callers_never_crosses_keys(void **state)
{
    struct wl_open_opts o = {.slots = 4};
    struct wl_segment *seg;
    struct wl_slot_info si[8];
    struct wl_result res;
    struct hold *h = wlt_shared(sizeof(*h));
    pid_t pids[RACERS];
    unsigned j, forgot_a = 0, busy_a = 0;
    uint64_t end;
    int n, i, a_slots = 0;

    (void)state;
    RACE = wlt_shared(sizeof(*RACE));
    snprintf(SHM_RACE, sizeof(SHM_RACE), "%s", segname());
    assert_int_equal(wl_open(SHM_RACE, &o, &seg), 0);
    for (i = 0; i < RACERS; i++)
        pids[i] = wlt_spawn(racer, NULL, i);
    end = wlt_now_ns() + (uint64_t)RACE_MS * 1000000u;
    for (j = 0; wlt_now_ns() < end || forgot_a == 0; j++) {
        char key[64];
        int r, tries;

        assert_true(wlt_now_ns() < end + 20000ull * 1000000u);
        snprintf(key, sizeof(key), "key-b-%u", j);
        atomic_store(&h->warms, 0);
        assert_int_equal(wl_ensure(seg, key, warm_count, h, NULL, &res), 0);
        assert_int_equal(res.role, WL_LEADER); /* nobody published into its slot */
        assert_int_equal(wl_ensure(seg, key, warm_count, h, NULL, &res), 0);
        assert_int_equal(res.role, WL_FOLLOWER);
        assert_int_equal(atomic_load(&h->warms), 1);
        assert_int_equal(wl_lookup(seg, key, &si[0]), 0);
        assert_string_equal(si[0].key, key);
        assert_int_equal(si[0].warmups, 1);
        /* a racer of key-a that found this slot before key-a was forgotten may hold a
         * waiter token on it for a moment, until it looks again */
        for (tries = 0; (r = wl_forget(seg, key)) == -EBUSY && tries < 100000; tries++)
            sched_yield();
        assert_int_equal(r, 0);
        if (j % 2 == 0) {
            r = wl_forget(seg, "key-a");
            assert_true(r == 0 || r == -EBUSY || r == -ENOENT);
            forgot_a += r == 0;
            busy_a += r == -EBUSY;
        }
    }
    atomic_store(&RACE->stop, 1);
    for (i = 0; i < RACERS; i++)
        assert_int_equal(wlt_wait(pids[i], 30000), 0);
    print_message("%u new keys, key-a forgotten %u times (%u refused busy); racers' errors "
                  "%u%s%s\n", j, forgot_a, busy_a, atomic_load(&RACE->errors),
                  RACE->err[0] ? ": " : "", RACE->err);
    assert_int_equal(atomic_load(&RACE->errors), 0);
    assert_int_equal(atomic_load(&RACE->double_leaders), 0);
    assert_true(forgot_a > 0);
    n = wl_snapshot(seg, si, 8);
    assert_true(n >= 0 && n <= 1); /* only key-a may be left, once */
    for (i = 0; i < n; i++)
        a_slots += !strcmp(si[i].key, "key-a");
    assert_int_equal(a_slots, n);
    wl_close(seg);
    wl_unlink(SHM_RACE);
}

/* ---------------------------------------------------------------- README examples */

/* README.md's ``` block that holds a line containing `marker`, or else the first block after
 * such a line: its lines into buf (NUL-separated, *nlines of them). */
static int readme_block(const char *marker, char *buf, size_t len, int *nlines)
{
    char line[4096];
    FILE *f = fopen(README, "r");
    int in_fence = 0, pending = 0, found = 0;
    size_t n = 0;

    *nlines = 0;
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strncmp(line, "```", 3)) {
            if (in_fence && (found || pending))
                break;
            in_fence = !in_fence;
            n = 0;
            *nlines = 0;
            continue;
        }
        if (!in_fence) {
            pending |= strstr(line, marker) != NULL;
            continue;
        }
        found |= strstr(line, marker) != NULL;
        if (n + strlen(line) + 1 < len) {
            memcpy(buf + n, line, strlen(line) + 1);
            n += strlen(line) + 1;
            (*nlines)++;
        }
    }
    fclose(f);
    return found || pending ? 0 : -1;
}

/* Split a logfmt line into (key, value) pairs, unquoting values; returns the count. */
#define MAXP 12
struct pairs {
    int n;
    char k[MAXP][32];
    char v[MAXP][1024];
};

static int logfmt_parse(const char *s, struct pairs *p)
{
    p->n = 0;
    while (*s && p->n < MAXP) {
        size_t i = 0;
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        while (*s && *s != '=' && i < sizeof(p->k[0]) - 1)
            p->k[p->n][i++] = *s++;
        p->k[p->n][i] = '\0';
        if (*s++ != '=')
            return -1;
        i = 0;
        if (*s == '"') {
            for (s++; *s && *s != '"'; s++) {
                if (*s == '\\' && s[1])
                    s++;
                if (i < sizeof(p->v[0]) - 1)
                    p->v[p->n][i++] = *s;
            }
            if (*s++ != '"')
                return -1;
        } else {
            while (*s && *s != ' ' && i < sizeof(p->v[0]) - 1)
                p->v[p->n][i++] = *s++;
        }
        p->v[p->n][i] = '\0';
        p->n++;
    }
    return p->n;
}

/* The line without its leading "ts=... " pair. */
static const char *after_ts(const char *line)
{
    const char *sp = strchr(line, ' ');
    return sp ? sp + 1 : line;
}

/* p rendered by the daemon's own logfmt writer (ts, level, target, msg, then the rest). */
static void logfmt_render(const struct pairs *p, char *buf, size_t len)
{
    const char *n[8], *v[8], *level = NULL, *target = NULL, *msg = NULL;
    int i, m = 0;
    FILE *f = fmemopen(buf, len, "w");

    assert_non_null(f);
    for (i = 0; i < 8; i++)
        n[i] = "-", v[i] = NULL;
    for (i = 0; i < p->n; i++) {
        if (!strcmp(p->k[i], "ts"))
            continue;
        if (!strcmp(p->k[i], "level"))
            level = p->v[i];
        else if (!strcmp(p->k[i], "target"))
            target = p->v[i];
        else if (!strcmp(p->k[i], "msg"))
            msg = p->v[i];
        else if (m < 8)
            n[m] = p->k[i], v[m++] = p->v[i];
    }
    assert_non_null(level);
    assert_non_null(msg);
    wlc_logfmt(f, level, target, msg, n[0], v[0], n[1], v[1], n[2], v[2], n[3], v[3], n[4],
               v[4], n[5], v[5], n[6], v[6], n[7], v[7], (const char *)NULL);
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
}

static const char *msg_of(const struct pairs *p)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->k[i], "msg"))
            return p->v[i];
    return "";
}

static int same_keys(const struct pairs *a, const struct pairs *b)
{
    if (a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->k[i], b->k[i]))
            return 0;
    return 1;
}

/* Wait (bounded) until the daemon's log holds `needle` at least n times; the log in buf. */
static void wait_log(const char *path, char *buf, size_t len, const char *needle, int n)
{
    uint64_t end = wlt_now_ns() + 30000ull * 1000000u;
    while (wlt_slurp(path, buf, len), count(buf, needle) < n) {
        if (wlt_now_ns() >= end) {
            print_message("no %d x '%s' in the daemon's log:\n%s", n, needle, buf);
            fail();
        }
        wlt_sleep_ms(10);
    }
}

static void test_readme_log_and_status_examples_match_a_real_run(void **state)
{
    static char block[65536], log[262144], rendered[4096];
    static struct pairs rp, lp;
    const char *shm = segname();
    char logpath[128], key[WL_PG_KEY_MAX];
    struct wlt_run *r = wlt_newrun();
    int nlines, i, missing = 0;
    const char *l;
    pid_t d;

    NEED_PG();
    pg_ensure_up();
    (void)state;

    /* A real run: the daemon warms the target, sees the server stop (the check connection
     * cut with 57P01, then no socket), start again held in recovery (57P03, for as long as
     * the test holds it), and come back. */
    snprintf(logpath, sizeof(logpath), "%s/warmlockd.log", DIR_);
    {
        char *argv[] = {(char *)WL_WARMLOCKD, (char *)"--foreground", (char *)"--interval",
                        (char *)"0.5", (char *)"--shm", (char *)shm, (char *)"--target", CI,
                        NULL};
        d = wlt_spawn_exec(argv, NULL, logpath, -1);
    }
    wait_log(logpath, log, sizeof(log), "msg=ready ", 1);
    assert_int_equal(pgh_stop(&H, "fast"), 0);
    wait_log(logpath, log, sizeof(log), "No such file", 1);
    assert_int_equal(pgh_start_held(&H), 0);
    wait_log(logpath, log, sizeof(log), "sqlstate=57P03", 1);
    assert_int_equal(pgh_release(&H, 1), 0);
    wait_log(logpath, log, sizeof(log), "msg=ready ", 2);
    RUN(r, 10000, WL_WARMLOCK, "--shm", (char *)shm, "status");
    kill(d, SIGTERM);
    assert_int_equal(wlt_wait(d, 10000), 0);
    wlt_slurp(logpath, log, sizeof(log));
    print_message("daemon log:\n%s", log);

    /* Every README log line: some real line with its msg has its keys in its order, and
     * the daemon's own writer renders the README's values exactly as the README shows. */
    assert_int_equal(readme_block("**Logs** are logfmt lines", block, sizeof(block), &nlines),
                     0);
    assert_true(nlines >= 3);
    for (i = 0, l = block; i < nlines; i++, l += strlen(l) + 1) {
        int found = 0;
        assert_true(logfmt_parse(l, &rp) > 0);
        logfmt_render(&rp, rendered, sizeof(rendered));
        if (strcmp(after_ts(rendered), after_ts(l))) {
            print_message("README log line %d is not what the writer prints:\n  README: %s\n"
                          "  writer: %s\n", i + 1, l, rendered);
            missing++;
        }
        for (char *p = log, *e; *p; p = e + (*e != '\0')) {
            char save;
            e = p + strcspn(p, "\n");
            save = *e;
            *e = '\0';
            if (logfmt_parse(p, &lp) > 0 && !strcmp(msg_of(&lp), msg_of(&rp)) &&
                same_keys(&lp, &rp))
                found = 1;
            *e = save;
            if (found || !save)
                break;
        }
        if (!found) {
            print_message("README log line %d (msg=\"%s\") has no real line with the same "
                          "keys\n", i + 1, msg_of(&rp));
            missing++;
        }
    }
    assert_int_equal(missing, 0);

    /* The status example: the real header, and a row whose key is the one the library
     * makes for the conninfo the README names. */
    assert_int_equal(readme_block("$ warmlock status", block, sizeof(block), &nlines), 0);
    assert_true(nlines >= 3);
    l = block + strlen(block) + 1; /* after the "$ warmlock status" line */
    {
        char real[1024];
        snprintf(real, sizeof(real), "%.*s", (int)strcspn(r->out, "\n"), r->out);
        char *a = strdup(l), *b = strdup(real), *sa, *sb, *ta, *tb;
        for (ta = strtok_r(a, " ", &sa), tb = strtok_r(b, " ", &sb); ta || tb;
             ta = strtok_r(NULL, " ", &sa), tb = strtok_r(NULL, " ", &sb)) {
            if (!ta || !tb || strcmp(ta, tb)) {
                print_message("README status header: %s\nreal status header:   %s\n", l, real);
                fail();
            }
        }
        free(a);
        free(b);
    }
    l += strlen(l) + 1;
    assert_true(wl_pg_key("host=/run/pg port=5432 dbname=app user=app", key, sizeof(key)) > 0);
    assert_int_equal(strncmp(l, key, strlen(key)), 0);
    assert_true(l[strlen(key)] == ' ');
    free(r);
}

/* ---------------------------------------------------------------- the suite */

static int group_setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/wltest-fc.XXXXXX");
    if (!mkdtemp(DIR_))
        return -1;
    chmod(DIR_, 0755);
    if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
        return 0;
    have_pg = 1;
    snprintf(CI, sizeof(CI), "%s password=%s", H.conninfo, PASSWORD);
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", DIR_);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", DIR_);
    return pg_group_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_json_without_segment_is_json),
        cmocka_unit_test(test_wait_on_a_terminal_says_what_it_waits_for_after_1s),
        cmocka_unit_test(test_forget_refuses_a_warming_or_awaited_slot_then_frees_it),
        cmocka_unit_test(test_forget_racing_callers_never_crosses_keys),
        cmocka_unit_test(test_readme_log_and_status_examples_match_a_real_run),
    };
    return cmocka_run_group_tests_name("firstcontact", tests, group_setup, group_teardown);
}
