/* The leader's retry schedule: exponential with a cap, the three jitter modes, max_attempts,
 * the deadline, and the plain pause. No server needed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <string.h>

#include "lib/internal.h"
#include "warmlock/pg.h"

#define MS 1000000ull

static void test_backoff_defaults_are_10ms_250ms_full_jitter_30s(void **state)
{
    struct wl__backoff_state b;
    (void)state;
    wl__backoff_init(&b, NULL, 0, 1000 * MS, 42);
    assert_int_equal(b.initial_ns, 10 * MS);
    assert_int_equal(b.max_ns, 250 * MS);
    assert_int_equal(b.max_attempts, 0);
    assert_int_equal(b.jitter, WL__JITTER_FULL);
    assert_int_equal(b.deadline_ns, 1000 * MS + 30000 * MS);
    /* The deadline follows the caller's wait.timeout_ms unless backoff.deadline_ms says. */
    wl__backoff_init(&b, NULL, 5000, 0, 42);
    assert_int_equal(b.deadline_ns, 5000 * MS);
    struct wl_backoff o = {.deadline_ms = 700};
    wl__backoff_init(&b, &o, 5000, 0, 42);
    assert_int_equal(b.deadline_ns, 700 * MS);
}

static void test_backoff_without_jitter_doubles_up_to_the_cap(void **state)
{
    struct wl_backoff o = {.initial_ms = 10, .max_ms = 250, .jitter = -1};
    static const uint64_t want[] = {10, 20, 40, 80, 160, 250, 250, 250};
    struct wl__backoff_state b;
    uint64_t d;
    size_t i;
    (void)state;
    wl__backoff_init(&b, &o, 60000, 0, 1);
    for (i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
        assert_int_equal(d, want[i] * MS);
    }
    /* Many failures later the shift must not overflow into a tiny or zero delay. */
    for (i = 0; i < 200; i++)
        assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
    assert_int_equal(d, 250 * MS);
}

static void test_backoff_full_jitter_stays_within_zero_and_base(void **state)
{
    struct wl_backoff o = {.initial_ms = 10, .max_ms = 250, .jitter = 1};
    struct wl__backoff_state b;
    uint64_t d, base, sum = 0, lo = UINT64_MAX, hi = 0;
    int run, i;
    (void)state;
    for (run = 0; run < 200; run++) {
        wl__backoff_init(&b, &o, 60000, 0, (uint64_t)run + 1);
        base = 10 * MS;
        for (i = 0; i < 10; i++) {
            assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
            assert_true(d <= base);
            if (i == 9) {
                sum += d;
                lo = d < lo ? d : lo;
                hi = d > hi ? d : hi;
            }
            base = base * 2 > 250 * MS ? 250 * MS : base * 2;
        }
    }
    /* Really jittered: spread over the range, mean near half the cap. */
    assert_true(lo < 50 * MS);
    assert_true(hi > 200 * MS);
    assert_true(sum / 200 > 90 * MS && sum / 200 < 160 * MS);
}

static void test_backoff_decorrelated_jitter_bounds(void **state)
{
    struct wl_backoff o = {.initial_ms = 10, .max_ms = 250, .jitter = 2};
    struct wl__backoff_state b;
    uint64_t d, prev = 10 * MS;
    int run, i, hit_cap = 0;
    (void)state;
    for (run = 0; run < 100; run++) {
        wl__backoff_init(&b, &o, 60000, 0, (uint64_t)run + 7);
        prev = 10 * MS;
        for (i = 0; i < 20; i++) {
            assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
            assert_true(d >= 10 * MS);
            assert_true(d <= 250 * MS);
            assert_true(d <= prev * 3);
            hit_cap |= d > 200 * MS;
            prev = d;
        }
    }
    assert_true(hit_cap);
}

static void test_backoff_max_attempts_runs_out(void **state)
{
    struct wl_backoff o = {.max_attempts = 3, .jitter = -1};
    struct wl__backoff_state b;
    uint64_t d;
    (void)state;
    wl__backoff_init(&b, &o, 60000, 0, 1);
    assert_int_equal(wl__backoff_next(&b, 0, &d), 0);       /* after attempt 1 */
    assert_int_equal(wl__backoff_next(&b, 0, &d), 0);       /* after attempt 2 */
    assert_int_equal(wl__backoff_next(&b, 0, &d), -EAGAIN); /* attempt 3 was the last */
    o.max_attempts = 1;
    wl__backoff_init(&b, &o, 60000, 0, 1);
    assert_int_equal(wl__backoff_next(&b, 0, &d), -EAGAIN);
}

static void test_backoff_never_sleeps_past_the_deadline(void **state)
{
    struct wl_backoff o = {.initial_ms = 100, .max_ms = 1000, .jitter = -1, .deadline_ms = 250};
    struct wl__backoff_state b;
    uint64_t d;
    (void)state;
    wl__backoff_init(&b, &o, 0, 0, 1);
    assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
    assert_int_equal(d, 100 * MS);
    assert_int_equal(wl__backoff_next(&b, 100 * MS, &d), 0);
    assert_int_equal(d, 150 * MS); /* 200 wanted, 150 left */
    assert_int_equal(wl__backoff_next(&b, 250 * MS, &d), -ETIMEDOUT);
    assert_int_equal(wl__backoff_next(&b, 900 * MS, &d), -ETIMEDOUT);
}

static void test_backoff_cap_below_initial_is_raised(void **state)
{
    struct wl_backoff o = {.initial_ms = 50, .max_ms = 20, .jitter = -1};
    struct wl__backoff_state b;
    uint64_t d;
    (void)state;
    wl__backoff_init(&b, &o, 60000, 0, 1);
    assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
    assert_int_equal(d, 50 * MS);
    assert_int_equal(wl__backoff_next(&b, 0, &d), 0);
    assert_int_equal(d, 50 * MS);
}

static void test_backoff_pause_sleeps_at_least_as_asked(void **state)
{
    uint64_t t0, el;
    (void)state;
    t0 = wl__now_ns();
    wl__backoff_pause(20 * MS);
    el = wl__now_ns() - t0;
    assert_true(el >= 20 * MS);
    assert_true(el < 1000 * MS); /* generous: a loaded machine wakes it late */
    t0 = wl__now_ns();
    wl__backoff_pause(0);
    assert_true(wl__now_ns() - t0 < 500 * MS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_defaults_are_10ms_250ms_full_jitter_30s),
        cmocka_unit_test(test_backoff_without_jitter_doubles_up_to_the_cap),
        cmocka_unit_test(test_backoff_full_jitter_stays_within_zero_and_base),
        cmocka_unit_test(test_backoff_decorrelated_jitter_bounds),
        cmocka_unit_test(test_backoff_max_attempts_runs_out),
        cmocka_unit_test(test_backoff_never_sleeps_past_the_deadline),
        cmocka_unit_test(test_backoff_cap_below_initial_is_raised),
        cmocka_unit_test(test_backoff_pause_sleeps_at_least_as_asked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
