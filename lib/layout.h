/* The shared segment's layout: the header, the slots and the state word. What every
 * process that maps a segment (and the fuzzer that validates one) must agree on. Private
 * to the library; not installed. */
#ifndef WL_LAYOUT_H
#define WL_LAYOUT_H

#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

#include "warmlock.h"

/* ---- The segment's layout (like LMDB's lock file: identity first, checked on every open;
 * every futex word and every mutex on its own cache line). ---- */

#define WL__MAGIC 0x4b434f4c4d524157ull /* "WARMLOCK" read as a little-endian u64 */
#define WL__LAYOUT_VERSION 8
/* The magic word while an initialiser works ("WLINIT.." little-endian), written before the
 * object is sized: an object that carries it is a segment whose creator died half-way,
 * which the next opener finishes. */
#define WL__INIT_MARK 0x2e2e54494e494c57ull
#define WL__LINE 64
#define WL__LIBC_GLIBC 1
#define WL__LIBC_OTHER 2
#ifdef __GLIBC__
#define WL__LIBC WL__LIBC_GLIBC
#else
#define WL__LIBC WL__LIBC_OTHER
#endif

#define WL__NTOKENS 512 /* followers counted exactly at once; more are counted in `waiters` */
#define WL__LOGIN_TOKENS 16 /* the largest login budget of a slot (struct wl_pg_opts) */

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
    uint8_t salt[16];        /* random (getrandom): keys the password digests in slot keys */
    /* Robust, process-shared; guards slot allocation (key_hash/key of free slots). */
    alignas(WL__LINE) pthread_mutex_t lock;
    /* Slots in use; written under `lock`, read with acquire. */
    alignas(WL__LINE) _Atomic uint32_t nused;
    /* Waiter tokens: a follower holds one (a robust mutex) while it waits, with the index+1
     * of its slot in `slot`; the kernel releases a dead waiter's token, so the waiters of a
     * slot are counted from the live tokens and a killed follower stops counting at once.
     * `slot` is written by the token's holder only, with release after taking it. */
    struct wl__token {
        alignas(WL__LINE) pthread_mutex_t m;
        _Atomic uint32_t slot;
    } tokens[WL__NTOKENS];
};

/* The state word: state in the low 3 bits, a sequence number above that changes on every
 * transition, so a futex waiter never misses one and a publish by an old generation fails
 * its compare-and-swap. */
#define WL__ST(w) ((enum wl_state)((w)&7u))
/* A leader between winning its publish and storing READY or FAILED (a few instructions):
 * readers treat it as WARMING; wl_reset waits it out, so a discarded leader writes nothing. */
#define WL__PUBLISHING 5u
#define WL__IS_WARMING(w) (WL__ST(w) == WL_WARMING || (uint32_t)WL__ST(w) == WL__PUBLISHING)
/* A slot whose key was forgotten (wl_forget): nobody's. It keeps its key_hash, so linear
 * probes go on past it, and the next new key on its probe path takes it over. Whoever
 * found the slot before reads this, or the new key's hash, and finds its key again. */
#define WL__FORGOTTEN 6u
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
    /* Robust, process-shared. Held by the one follower (the deputy) that blocks on
     * `watch`, so the kernel wakes it at the watcher's death and it becomes the watcher. */
    alignas(WL__LINE) pthread_mutex_t deputy;

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
    _Atomic uint64_t verified_ns;   /* CLOCK_MONOTONIC of the last successful verification
                                     * (READY, a re-verification, a keeper's check) */
    _Atomic uint64_t down_ns;       /* CLOCK_MONOTONIC when the current outage began (the
                                     * first transient failure since READY), 0 if none */
    _Atomic uint64_t retry_ns;      /* a STALE slot left by a transient failure is not
                                     * claimed again before this (paces the probers) */
    _Atomic uint32_t streak;        /* transient publishes since the last READY */
    _Atomic uint64_t handover_ns;   /* CLOCK_MONOTONIC of a READY whose leader hands the
                                     * connection that verified it to its caller, 0 if the
                                     * last READY's did not (see WL__HANDOVER_GRACE_NS) */
    /* Written with verified_ns (relaxed, by whoever verified), read by any caller checking
     * READY's age. boot_gap_ns: CLOCK_BOOTTIME - CLOCK_MONOTONIC then, which grows only
     * while the kernel is suspended, so a larger gap now means the host slept since.
     * verified_rt_ns: CLOCK_REALTIME then, the bound of a prepared key's ready path (a
     * coarse wall clock runs on through a suspend, the monotonic one does not). */
    _Atomic int64_t boot_gap_ns;
    _Atomic uint64_t verified_rt_ns;
    /* How far the last warm-up (its latest attempt) got: WL_STAGE_*. Written by the
     * leader under `mutex` (a keeper's claim too), relaxed: status only. */
    _Atomic uint32_t stage;

    /* The last failure, under `mutex` and behind the seqcount `info_seq` (odd while being
     * written) so lock-free readers can tell a torn copy; suspect after EOWNERDEAD. */
    _Atomic uint32_t info_seq;
    int32_t fail_code;
    char fail_sqlstate[6];
    char fail_error[256];

    /* Counters: atomic adds, relaxed (statistics only). `waiters` counts only the
     * followers that found no free token (see wl__header.tokens). */
    _Atomic uint32_t waiters;
    _Atomic uint64_t warmups, takeovers, attempts, failures, invalidations;
    _Atomic uint64_t hist[WL_HIST_BUCKETS], wait_count, wait_sum_ns;

    /* Login tokens: robust, process-shared, guarding no data. A process holds one while it
     * opens its own connection to a READY target with a login budget, so at most that
     * many of this host's logins run at once; the kernel frees a dead holder's. */
    struct {
        alignas(WL__LINE) pthread_mutex_t m;
    } logins[WL__LOGIN_TOKENS];

    /* The last fleet warm-up's outcome (WL_PG_FLEET), for status: written by the leader
     * under `mutex`, behind the seqcount `fleet_seq` (odd while being written). */
    alignas(WL__LINE) _Atomic uint32_t fleet_seq;
    uint32_t fleet_role; /* WL_FLEET_* */
    int32_t fleet_pid;   /* the fleet leader's backend pid as the server reports it */
    char fleet_host[64]; /* its client address as the server sees it ("local") */
    char fleet_app[64];  /* its application_name */
};

/* A process's mapping of one segment; kept until exit (glibc bug 14485). */
struct wl__map {
    struct wl__map *next;
    dev_t dev;
    ino_t ino;
    size_t size;
    int fd; /* kept open: it holds the LOCK_SH that marks the segment in use */
    struct wl__header *hdr;
    struct wl__slot *slots;
};

struct wl_segment {
    struct wl__map *map;
    struct wl__header *hdr;  /* = map->hdr */
    struct wl__slot *slots;  /* = map->slots */
    uint32_t nslots;
    _Atomic uint64_t pidns;  /* this process's PID namespace inode, 0 until first needed
                              * (wl__segment_pidns) */
    char name[WL_NAME_MAX + 1];
};

#endif
