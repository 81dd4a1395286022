/* Retry schedules. */
#include <errno.h>
#include <time.h>

#include "internal.h"

void wl__backoff_pause(uint64_t ns)
{
    struct timespec ts;
    wl__ns_to_timespec(ns, &ts);
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}
