/* What the cmocka suites share: a test registered once per event-loop backend, the suite's
 * throwaway PostgreSQL, and the skip when it is missing. Include after <cmocka.h>: the macros
 * and the inline function expand to cmocka's.
 *
 * A suite with a server keeps it in `static struct pgh H` with `have_pg` and `pg_reason`:
 *
 *     static int group_setup(void **state)
 *     {
 *         if ((pg_reason = pgh_suite_up(&H, PASSWORD, NULL)))
 *             return 0;         (the tests then say skipped, with the reason)
 *         have_pg = 1;
 *         ...
 *     }
 *
 * and each test begins with NEED_PG() and, for one that runs on both backends (WLT_BOTH),
 * wlt_backend(state).
 */
#ifndef WL_TEST_SUITE_H
#define WL_TEST_SUITE_H

#include <stdlib.h>

#include "pgharness.h"
#include "proc.h"

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

#endif
