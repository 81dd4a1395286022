/* Declarations shared between the library's files (wl__*). Not installed. */
#ifndef WL_INTERNAL_H
#define WL_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "warmlock.h"

#define WL_UNUSED __attribute__((unused))
#define WL_PRINTF(a, b) __attribute__((format(printf, a, b)))

#include <pthread.h>
#include <stdalign.h>
#include <sys/types.h>

/* ---- The segment's layout (like LMDB's lock file: identity first, checked on every open;
 * every futex word and every mutex on its own cache line). ---- */

#define WL__MAGIC 0x4b434f4c4d524157ull /* "WARMLOCK" read as a little-endian u64 */
#define WL__LAYOUT_VERSION 1
#define WL__LINE 64
#define WL__LIBC_GLIBC 1
#define WL__LIBC_OTHER 2
#ifdef __GLIBC__
#define WL__LIBC WL__LIBC_GLIBC
#else
#define WL__LIBC WL__LIBC_OTHER
#endif

struct wl__header {
    /* Written by the initialiser, which holds flock(LOCK_EX) on the object; `magic` last,
     * with a release store, so a reader that sees the magic sees the rest. Never changed. */
    _Atomic uint64_t magic;
    uint32_t layout_version; /* WL__LAYOUT_VERSION */
    uint32_t header_size;    /* sizeof(struct wl__header) */
    uint64_t total_size;     /* header + nslots * slot_size; must equal the object's size */
    uint32_t nslots;
    uint32_t slot_size;      /* sizeof(struct wl__slot) */
    uint32_t mutex_size;     /* sizeof(pthread_mutex_t) in the creator's C library */
    uint32_t libc;           /* WL__LIBC_*: glibc and musl must never share a layout */
    uint32_t creator_uid;
    int32_t creator_pid;
    uint64_t creator_pidns;  /* inode of the creator's /proc/self/ns/pid, 0 if unknown */
    uint64_t created_ms;     /* CLOCK_REALTIME */
    /* Robust, process-shared; guards slot allocation (key_hash/key of free slots). */
    alignas(WL__LINE) pthread_mutex_t lock;
    /* Slots in use; written under `lock`, read with acquire. */
    alignas(WL__LINE) _Atomic uint32_t nused;
};

/* The state word: state in the low 3 bits, a sequence number above that changes on every
 * transition, so a futex waiter never misses one and a publish by an old generation fails
 * its compare-and-swap. */
#define WL__ST(w) ((enum wl_state)((w)&7u))
#define WL__NEXT(w, st) ((((w) >> 3) + 1u) << 3 | (uint32_t)(st))

struct wl__slot {
    /* The futex word waiters sleep on. Changed only by CAS (or exchange in reset), with
     * release; the leader changes it while holding `mutex`; wl_invalidate changes
     * READY -> STALE without it. */
    alignas(WL__LINE) _Atomic uint32_t state;
    /* Robust, process-shared. Held by the leader for the whole warm-up (its death is seen
     * by the kernel), and briefly by any caller deciding whether to lead. */
    alignas(WL__LINE) pthread_mutex_t mutex;
    /* Robust, process-shared. Held by the one follower (the watcher) that blocks on
     * `mutex`, so the kernel wakes it at the leader's death. */
    alignas(WL__LINE) pthread_mutex_t watch;

    /* Identity: written under the header lock; key_hash last with release (0: free). */
    alignas(WL__LINE) _Atomic uint64_t key_hash;
    uint32_t key_len;
    char key[WL_KEY_MAX + 1];

    /* Written by the leader under `mutex`, before the release CAS that publishes. */
    _Atomic uint64_t epoch;         /* readiness epoch; READY at `epoch` while READY */
    _Atomic int32_t leader_pid;     /* in the leader's PID namespace */
    _Atomic uint64_t leader_pidns;  /* inode of the leader's PID namespace */
    _Atomic uint64_t claimed_ns;    /* CLOCK_MONOTONIC when the current leader claimed */
    _Atomic uint64_t ready_ns;      /* CLOCK_MONOTONIC of the last READY, 0 never */
    _Atomic int64_t time_to_ready_ns; /* last successful warm-up's duration, -1 never */
    _Atomic uint64_t failed_ns;     /* CLOCK_MONOTONIC of the last FAILED publish */

    /* The last failure, under `mutex` and behind the seqcount `info_seq` (odd while being
     * written) so lock-free readers can tell a torn copy; suspect after EOWNERDEAD. */
    _Atomic uint32_t info_seq;
    int32_t fail_code;
    char fail_sqlstate[6];
    char fail_error[256];

    /* Counters: atomic adds, relaxed (statistics only). */
    _Atomic uint32_t waiters;
    _Atomic uint64_t warmups, takeovers, attempts, failures, invalidations;
    _Atomic uint64_t hist[WL_HIST_BUCKETS], wait_count, wait_sum_ns;
};

/* A process's mapping of one segment; kept until exit (glibc bug 14485). */
struct wl__map {
    struct wl__map *next;
    dev_t dev;
    ino_t ino;
    size_t size;
    struct wl__header *hdr;
    struct wl__slot *slots;
};

struct wl_segment {
    struct wl__map *map;
    struct wl__header *hdr;  /* = map->hdr */
    struct wl__slot *slots;  /* = map->slots */
    uint32_t nslots;
    uint64_t pidns;          /* this process's PID namespace inode */
    char name[WL_NAME_MAX + 1];
};

/* segment.c */
uint64_t wl__pidns(void);
/* Take a robust mutex: trylock when deadline_ns is 0, else block until the monotonic
 * deadline. On EOWNERDEAD, calls repair(arg) and pthread_mutex_consistent(): the only place
 * that sees EOWNERDEAD. Returns 0, 1 (acquired after its owner died), -EBUSY, -ETIMEDOUT,
 * or another -errno. */
int wl__lock(pthread_mutex_t *m, uint64_t deadline_ns, void (*repair)(void *), void *arg);
void wl__unlock(pthread_mutex_t *m);
void wl__mutex_init(pthread_mutex_t *m);

/* slot.c */
uint64_t wl__key_hash(const char *key, size_t len);
/* The slot of key, or NULL; allocate: create it if missing (-ENOSPC when full). */
int wl__slot_find(struct wl_segment *seg, const char *key, int allocate,
                  struct wl__slot **out);
/* Is a WARMING slot's leader alive (probes its mutex)? */
int wl__slot_leader_alive(struct wl__slot *sl);

/* util.c: clocks and messages */
uint64_t wl__now_ns(void);                 /* CLOCK_MONOTONIC */
uint64_t wl__realtime_ms(void);            /* CLOCK_REALTIME, ms since the epoch */
void wl__ns_to_timespec(uint64_t ns, struct timespec *ts);
/* snprintf into buf (never overflows; truncates). */
void wl__fmt(char *buf, size_t len, const char *fmt, ...) WL_PRINTF(3, 4);
/* Set the thread's wl_last_error() message; returns code for tail calls. */
int wl__set_error(int code, const char *fmt, ...) WL_PRINTF(2, 3);
void wl__copy(char *dst, size_t len, const char *src); /* strlcpy */

/* futex.c: the readiness word */
/* Sleep while *word == expected, until woken or the monotonic deadline (0: none).
 * Returns 0 (woken or value changed) or -ETIMEDOUT or -EINTR. */
int wl__futex_wait(_Atomic uint32_t *word, uint32_t expected, uint64_t deadline_ns);
void wl__futex_wake_all(_Atomic uint32_t *word);

/* backoff.c: retry schedules. */
/* Sleep for ns (a bounded backoff step; never a readiness guess). */
void wl__backoff_pause(uint64_t ns);

/* -- The libpq engine's internals (pg.c, ring.c, backoff.c) are declared below. -- */

#endif
