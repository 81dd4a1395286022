/* The readiness word: sleep on it and wake its sleepers (futex(2), process-shared). */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

static long futex(_Atomic uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts,
                  uint32_t val3)
{
    return syscall(SYS_futex, (uint32_t *)uaddr, op, val, ts, NULL, val3);
}

int wl__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns)
{
    struct timespec ts;
    long r;

    if (deadline_ns) {
        wl__ns_to_timespec(deadline_ns, &ts);
        /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a wake-up
         * that restarts the wait does not stretch it. Not FUTEX_PRIVATE: the word lives
         * in shared memory. */
        r = futex(word, FUTEX_WAIT_BITSET, expected, &ts, FUTEX_BITSET_MATCH_ANY);
    } else {
        r = futex(word, FUTEX_WAIT, expected, NULL, 0);
    }
    if (r == 0)
        return 0;
    switch (errno) {
    case EAGAIN: return 0; /* the word had already changed */
    case ETIMEDOUT: return -ETIMEDOUT;
    case EINTR: return -EINTR;
    default: return -errno;
    }
}

void wl__futex_wake_all(_Atomic uint32_t *word)
{
    futex(word, FUTEX_WAKE, INT_MAX, NULL, 0);
}
