/*
 * The robust, process-shared mutexes of the segment: initialisation, the one place that
 * takes them (and so the one place that sees EOWNERDEAD: the caller's repair function runs,
 * then pthread_mutex_consistent, whose result is checked), and a read-only liveness probe.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "internal.h"

void wl__mutex_init(pthread_mutex_t *m)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

int wl__lock(pthread_mutex_t *m, uint64_t deadline_ns, void (*repair)(void *), void *arg)
{
    struct timespec ts;
    int r;

    if (deadline_ns == 0) {
        r = pthread_mutex_trylock(m);
    } else {
        wl__ns_to_timespec(deadline_ns, &ts);
        do
            r = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
        while (r == EINTR);
    }
    if (r == EOWNERDEAD) {
        /* The owner died holding it. Repair what it guarded, then mark it consistent:
         * unlocking without pthread_mutex_consistent() would make it ENOTRECOVERABLE. */
        if (repair)
            repair(arg);
        if ((r = pthread_mutex_consistent(m)) != 0) {
            /* Only for a mutex that is not robust or not owner-dead: never ours. Say so
             * rather than hand out a lock that is not consistent. */
            pthread_mutex_unlock(m);
            return -r;
        }
        return 1;
    }
    return -r;
}

void wl__unlock(pthread_mutex_t *m)
{
    pthread_mutex_unlock(m);
}

/* glibc keeps a robust mutex's owner in its futex word: the owner's TID in the low 30
 * bits, FUTEX_OWNER_DIED (bit 30) once the kernel released it for a dead owner. Reading
 * it is how status tells a live holder without locking (the header records the C library,
 * so only glibc processes share this layout). */
int wl__mutex_held(pthread_mutex_t *m, int *tid)
{
#ifdef __GLIBC__
    /* relaxed: a momentary answer for status and messages, never for correctness */
    unsigned w = (unsigned)__atomic_load_n(&m->__data.__lock, __ATOMIC_RELAXED);
    int t = (int)(w & 0x3fffffffu);
    if (tid)
        *tid = t;
    return t != 0 && !(w & 0x40000000u);
#else
    int r = pthread_mutex_trylock(m);
    if (tid)
        *tid = 0;
    if (r == 0 || r == EOWNERDEAD) {
        if (r == EOWNERDEAD)
            pthread_mutex_consistent(m);
        pthread_mutex_unlock(m);
        return 0;
    }
    return r == EBUSY;
#endif
}
