/* What the cmocka suites share: a test registered once per event-loop backend, the suite's
 * throwaway PostgreSQL, and the skip when it is missing. Include after <cmocka.h>: the macros
 * and the inline function expand to cmocka's.
 *
 * A suite with a server declares it with WLT_PG_SUITE at file scope and starts it in its
 * group setup:
 *
 *     WLT_PG_SUITE
 *
 *     static int group_setup(void **state)
 *     {
 *         if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
 *             return 0;         (the tests then say skipped, with the reason)
 *         have_pg = 1;
 *         ...
 *     }
 *     ... cmocka_run_group_tests(tests, group_setup, pg_group_teardown);
 *
 * Each test begins with NEED_PG() (and, registered with WLT_BOTH, wlt_backend(state)), then
 * pg_ensure_up() if it needs the server running.
 */
#ifndef WL_TEST_SUITE_H
#define WL_TEST_SUITE_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "pgharness.h"
#include "proc.h"

/* The built programs, for the suites that run them (meson passes their paths). */
#if defined(WL_TEST_BUILDDIR) && !defined(WL_WARMLOCK)
#define WL_WARMLOCK WL_TEST_BUILDDIR "/coordinator/warmlock"
#endif
#if defined(WL_TEST_BUILDDIR) && !defined(WL_WARMLOCKD)
#define WL_WARMLOCKD WL_TEST_BUILDDIR "/coordinator/warmlockd"
#endif

/* Register a test once per backend: its prestate names it ("uring", then "poll"). */
#define WLT_BOTH(fn)                                                                               \
    cmocka_unit_test_prestate(fn, (void *)"uring"), cmocka_unit_test_prestate(fn, (void *)"poll")

/* In a test registered with WLT_BOTH: select the backend its prestate names (WARMLOCK_IO) and
 * print it; no prestate means poll. Returns the name. */
static inline const char *wlt_backend(void **state)
{
    const char *io = *state ? (const char *)*state : "poll";
    setenv("WARMLOCK_IO", io, 1);
    print_message("backend: %s\n", io);
    return io;
}

/* Skip unless the suite's server is up (its `have_pg` and `pg_reason`). */
#define NEED_PG() PGH_NEED(have_pg, pg_reason)

/* The suite's throwaway server, one per test program: `H`, whether it is up (`have_pg`) and
 * why not (`pg_reason`); pg_group_teardown (a cmocka group teardown) stops and removes it;
 * pg_ensure_up, in a test, brings it up and past recovery whatever a failed test left behind
 * (stopped, starting, held), failing the test if it cannot. */
#define WLT_PG_SUITE                                                                               \
    static struct pgh H;                                                                           \
    static int have_pg;                                                                            \
    static const char *pg_reason;                                                                  \
    __attribute__((unused)) static int pg_group_teardown(void **state)                             \
    {                                                                                              \
        (void)state;                                                                               \
        pgh_destroy(&H);                                                                           \
        return 0;                                                                                  \
    }                                                                                              \
    __attribute__((unused)) static void pg_ensure_up(void)                                         \
    {                                                                                              \
        assert_int_equal(pgh_up(&H), 0);                                                           \
    }

/* A zeroed wlt_run for wlt_run_v (freed by the caller). */
static inline struct wlt_run *wlt_newrun(void)
{
    struct wlt_run *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    return r;
}

/* The lines of s (its newlines). */
static inline int wlt_count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* path holding text, with mode (asserted). */
static inline void wlt_write_file(const char *path, mode_t mode, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

#endif
