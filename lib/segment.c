/*
 * The segment: create, open, validate and map the POSIX shared-memory object; the robust
 * mutex helper; the process's registry of mappings.
 *
 * Initialisation is race-free without a designated creator: whoever holds flock(LOCK_EX) on
 * an object whose magic is not yet written initialises it, and writes the magic last. The
 * kernel drops a flock when its holder dies. A creator first writes a mark (WL__INIT_MARK)
 * where the magic goes, then sizes the object, then writes the rest and the magic, so an
 * object that is empty or carries the mark is one whose creator died half-way, and the
 * next opener finishes it; anything else without the magic (a short object holding data, a
 * full-size one of zeros) is not a warmlock segment and is never written.
 *
 * Every process that maps a segment keeps a shared flock on it until it exits, so
 * wl_unlink_unused() can tell whether anyone still uses a segment before it removes it.
 * Every open of an existing object is O_NONBLOCK: a FIFO or a device planted at the name
 * (/dev/shm is world-writable) is refused by type instead of blocking the opener.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define INIT_WAIT_MS 5000u /* default bound on waiting for another initialiser */

/* The one way to get rid of an object that is not a usable segment; "%s" is its name. */
#define REMOVE_HINT "remove it with: warmlock unlink --shm %s"

/* Mappings of this process, never unmapped (see warmlock.h, Caveats). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wl__map *registry;

uint64_t wl__pidns(void)
{
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

uint64_t wl__segment_pidns(struct wl_segment *seg)
{
    /* Read on first need (a leader's claim, a message about another process), not at
     * wl_open: a stat of /proc costs more than the rest of the open. A process never
     * leaves its PID namespace. relaxed: every thread computes the same value. */
    uint64_t ns = atomic_load_explicit(&seg->pidns, memory_order_relaxed);
    if (!ns) {
        ns = wl__pidns();
        atomic_store_explicit(&seg->pidns, ns, memory_order_relaxed);
    }
    return ns;
}


WL_EXPORT int wl_default_name(char *buf, size_t len)
{
    const char *env = getenv("WARMLOCK_SHM");
    int n;

    if (env && *env)
        n = snprintf(buf, len, "%s", env);
    else
        n = snprintf(buf, len, "/warmlock.%u", (unsigned)geteuid());
    if (n < 0)
        return -EINVAL;
    if ((size_t)n >= len)
        return -ENAMETOOLONG;
    return n;
}

/* Resolve NULL to the default and check the form: a leading '/', no other '/', at most
 * WL_NAME_MAX bytes, printable, not "/." or "/..". */
static int resolve_name(const char *name, char *out, size_t len)
{
    size_t n;
    const char *p;

    if (!name) {
        int r = wl_default_name(out, len);
        if (r < 0)
            return wl__set_error(-EINVAL, "segment name from $WARMLOCK_SHM is too long "
                                          "(max %d bytes)", WL_NAME_MAX);
        name = out;
    }
    n = strlen(name);
    if (n < 2 || name[0] != '/')
        return wl__set_error(-EINVAL, "segment name '%.64s' must start with '/' and have a "
                                      "name after it, e.g. /warmlock.app", name);
    if (n > WL_NAME_MAX)
        return wl__set_error(-EINVAL, "segment name is %zu bytes; at most %d are allowed", n,
                             WL_NAME_MAX);
    if (strchr(name + 1, '/'))
        return wl__set_error(-EINVAL, "segment name '%.64s' may not contain '/' after the "
                                      "first character", name);
    if (!strcmp(name, "/.") || !strcmp(name, "/.."))
        return wl__set_error(-EINVAL, "segment name '%s' is not allowed", name);
    for (p = name; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return wl__set_error(-EINVAL, "segment name contains a control character");
    if (name != out)
        memcpy(out, name, n + 1);
    return 0;
}

static size_t layout_size(uint32_t nslots)
{
    return sizeof(struct wl__header) + (size_t)nslots * sizeof(struct wl__slot);
}

static const char *type_name(mode_t m)
{
    if (S_ISFIFO(m))
        return "a FIFO";
    if (S_ISDIR(m))
        return "a directory";
    if (S_ISCHR(m) || S_ISBLK(m))
        return "a device";
    if (S_ISSOCK(m))
        return "a socket";
    return "not a regular file";
}

/* Is the object safe to use? Regular, ours (or a group we are in, when the object is
 * group-shared), not writable by others. */
static int check_owner(const char *name, const struct stat *st)
{
    if (!S_ISREG(st->st_mode))
        return wl__set_error(-EPERM, "segment %s is not a regular shared-memory object "
                                     "(%s); " REMOVE_HINT, name, type_name(st->st_mode), name);
    if (st->st_mode & S_IWOTH)
        return wl__set_error(-EPERM, "segment %s is world-writable (mode %04o), so any user "
                                     "could steer it; " REMOVE_HINT,
                             name, (unsigned)(st->st_mode & 07777), name);
    if (st->st_uid != geteuid()) {
        int shared = (st->st_mode & S_IWGRP) && (st->st_gid == getegid() ||
                                                 group_member(st->st_gid));
        if (!shared)
            return wl__set_error(-EPERM, "segment %s is owned by uid %u, not by this "
                                         "process's uid %u; use another name (--shm, "
                                         "$WARMLOCK_SHM) or have its owner remove it",
                                 name, (unsigned)st->st_uid, (unsigned)geteuid());
    }
    return 0;
}

/* Validate an initialised header against the object's size and this build's layout. */
static int check_header(const char *name, const struct wl__header *h, size_t size)
{
    const char *what = NULL;
    char detail[160];

    if (h->layout_version != WL__LAYOUT_VERSION) {
        wl__fmt(detail, sizeof(detail), "layout version %u, this library speaks %u",
                h->layout_version, WL__LAYOUT_VERSION);
        what = detail;
    } else if (h->libc != WL__LIBC || h->mutex_size != sizeof(pthread_mutex_t)) {
        wl__fmt(detail, sizeof(detail), "it was made by another C library (libc %u, mutex "
                "%u bytes; here libc %u, %zu bytes)", h->libc, h->mutex_size, WL__LIBC,
                sizeof(pthread_mutex_t));
        what = detail;
    } else if (h->header_size != sizeof(struct wl__header) ||
               h->slot_size != sizeof(struct wl__slot)) {
        wl__fmt(detail, sizeof(detail), "header/slot sizes %u/%u, expected %zu/%zu",
                h->header_size, h->slot_size, sizeof(struct wl__header),
                sizeof(struct wl__slot));
        what = detail;
    } else if (h->nslots == 0 || h->nslots > WL_MAX_SLOTS) {
        wl__fmt(detail, sizeof(detail), "slot count %u out of range", h->nslots);
        what = detail;
    } else if (h->total_size != layout_size(h->nslots) || h->total_size != size) {
        wl__fmt(detail, sizeof(detail), "size %zu bytes, its header says %llu, %u slots need "
                "%zu", size, (unsigned long long)h->total_size, h->nslots,
                layout_size(h->nslots));
        what = detail;
    }
    if (what)
        return wl__set_error(-EPROTO, "segment %s is incompatible: %s; if no process uses "
                                      "it, " REMOVE_HINT, name, what, name);
    return 0;
}

static int check_mapped(const char *name, const struct wl__header *h, size_t size,
                        uint32_t want_slots)
{
    int r = check_header(name, h, size);
    if (r == 0 && want_slots && h->nslots != want_slots)
        r = wl__set_error(-EPROTO, "segment %s has %u slots, %u were asked for; open it with "
                                   "slots=0, or if no process uses it, " REMOVE_HINT,
                          name, h->nslots, want_slots, name);
    return r;
}

#define INIT_MARK WL__INIT_MARK

/* The object's first 8 bytes (the magic's place), 0 if it is shorter. */
static uint64_t first_word(int fd)
{
    uint64_t w = 0;
    return pread(fd, &w, sizeof(w), 0) == (ssize_t)sizeof(w) ? w : 0;
}

static int init_marked(int fd)
{
    return first_word(fd) == INIT_MARK;
}

static void init_segment(struct wl__header *h, uint32_t nslots)
{
    struct wl__slot *slots = (struct wl__slot *)(h + 1);
    uint32_t i;

    /* ftruncate() zero-filled the object; a previous initialiser that died may have left
     * a partial header, so clear it again, all but the magic word (still INIT_MARK, so a
     * death from here on leaves an object the next opener knows to finish). */
    memset((char *)h + sizeof(h->magic), 0, layout_size(nslots) - sizeof(h->magic));
    h->layout_version = WL__LAYOUT_VERSION;
    h->header_size = sizeof(struct wl__header);
    h->total_size = layout_size(nslots);
    h->nslots = nslots;
    h->slot_size = sizeof(struct wl__slot);
    h->mutex_size = sizeof(pthread_mutex_t);
    h->libc = WL__LIBC;
    h->creator_uid = (uint32_t)geteuid();
    h->creator_pid = (int32_t)getpid();
    h->creator_pidns = wl__pidns();
    h->created_ms = wl__realtime_ms();
    while (getrandom(h->salt, sizeof(h->salt), 0) != (ssize_t)sizeof(h->salt) && errno == EINTR) {
    }
    wl__mutex_init(&h->lock);
    for (i = 0; i < WL__NTOKENS; i++)
        wl__mutex_init(&h->tokens[i].m);
    for (i = 0; i < nslots; i++) {
        wl__mutex_init(&slots[i].mutex);
        wl__mutex_init(&slots[i].watch);
        wl__mutex_init(&slots[i].deputy);
        for (unsigned j = 0; j < WL__LOGIN_TOKENS; j++)
            wl__mutex_init(&slots[i].logins[j].m);
        atomic_init(&slots[i].time_to_ready_ns, -1);
    }
    /* release: a reader that sees the magic sees the initialised header and slots */
    atomic_store_explicit(&h->magic, WL__MAGIC, memory_order_release);
}

/* Entries are only ever pushed (release) and never removed, so a reader may walk the list
 * without the lock (acquire). */
static struct wl__map *registry_find(dev_t dev, ino_t ino)
{
    struct wl__map *m;
    for (m = __atomic_load_n(&registry, __ATOMIC_ACQUIRE); m; m = m->next)
        if (m->dev == dev && m->ino == ino)
            return m;
    return NULL;
}

/* Map size bytes of fd; the caller checked the size with fstat (mapping past the end of
 * the object would raise SIGBUS). */
static int map_fd(int fd, size_t size, void **out)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED)
        return -errno;
    *out = p;
    return 0;
}

/* Wait for a flock that another process holds briefly (an initialiser, an unlinker): one
 * pause of a growing backoff, or -ETIMEDOUT past the deadline. */
static int pause_until(uint64_t deadline, uint64_t *pause_ns)
{
    if (wl__now_ns() >= deadline)
        return -ETIMEDOUT;
    wl__backoff_pause(*pause_ns);
    if (*pause_ns < 5000000)
        *pause_ns *= 2;
    return 0;
}

static int not_a_segment(const char *name, off_t size, const char *why)
{
    return wl__set_error(-EPROTO, "%s is not a warmlock segment (%lld bytes, %s); "
                                  REMOVE_HINT, name, (long long)size, why, name);
}

/*
 * Bring fd's object to an initialised, validated state, map it and take the shared flock
 * that marks it in use. Loops because another process may be initialising it: wait
 * (bounded) for its flock, or finish an empty object whose creator died. `existing`: never
 * initialise (an empty object is then -ENOENT).
 */
static int open_object(const char *name, int fd, uint32_t want_slots, mode_t mode,
                       uint32_t wait_ms, int existing, struct wl__map **out)
{
    uint64_t deadline = wl__now_ns() + (uint64_t)wait_ms * 1000000u, pause_ns = 50000;
    uint32_t nslots = want_slots ? want_slots : WL_DEFAULT_SLOTS;
    struct stat st;
    void *p = NULL;
    int r;

    for (;;) {
        struct wl__header *h;

        if (fstat(fd, &st) < 0)
            return wl__set_error(-errno, "cannot stat segment %s: %s", name, strerror(errno));
        if ((r = check_owner(name, &st)) < 0)
            return r;

        pthread_mutex_lock(&registry_lock);
        *out = registry_find(st.st_dev, st.st_ino);
        pthread_mutex_unlock(&registry_lock);
        if (*out) /* mapped already (it stays mapped): validate it as it is now */
            return check_mapped(name, (*out)->hdr, (size_t)st.st_size, want_slots);

        uint64_t first = first_word(fd);
        int ours = first == INIT_MARK;
        if (first == WL__MAGIC && (size_t)st.st_size < sizeof(struct wl__header)) {
            /* An initialiser sized and finished it since our fstat: look again. A short
             * object that merely starts with the magic stays short: refused below. */
            struct stat again;
            if (fstat(fd, &again) == 0 && again.st_size != st.st_size)
                continue;
        }
        if (st.st_size > 0 && (size_t)st.st_size < sizeof(struct wl__header) && !ours)
            /* An initialiser marks the object (INIT_MARK) before it sizes it, so a shorter
             * object without the mark is someone else's (or a truncated segment that
             * others may still map): never write to it. */
            return not_a_segment(name, st.st_size, "shorter than a segment header");

        if (st.st_size > 0 && !ours) {
            if ((r = map_fd(fd, (size_t)st.st_size, &p)) < 0)
                return wl__set_error(r, "cannot map segment %s: %s", name, strerror(-r));
            h = p;
            /* acquire: pairs with the initialiser's release store of the magic */
            uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
            if (magic == WL__MAGIC) {
                if ((r = check_mapped(name, h, (size_t)st.st_size, want_slots)) < 0) {
                    munmap(p, (size_t)st.st_size); /* never locked through: safe */
                    return r;
                }
                /* In use from now on. LOCK_EX is held only for moments (an initialiser
                 * that just published, an unlinker deciding): wait for it. */
                if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
                    struct stat now;
                    if (fstat(fd, &now) == 0 && now.st_nlink > 0)
                        break; /* validated; keep the mapping p */
                    /* an unlinker removed it while we waited for the lock: open the name
                     * again (the caller does) rather than use an orphan */
                    flock(fd, LOCK_UN);
                    munmap(p, (size_t)st.st_size);
                    return -EAGAIN;
                }
                r = errno == EWOULDBLOCK ? pause_until(deadline, &pause_ns) : -errno;
                munmap(p, (size_t)st.st_size);
                if (r == -ETIMEDOUT)
                    return wl__set_error(r, "segment %s stayed locked by another process for "
                                            "%u ms", name, wait_ms);
                if (r < 0)
                    return wl__set_error(r, "cannot lock segment %s: %s", name, strerror(-r));
                continue;
            }
            munmap(p, (size_t)st.st_size);
            if (magic != 0)
                return wl__set_error(-EPROTO, "%s is not a warmlock segment (bad magic "
                                              "%#llx); " REMOVE_HINT, name,
                                     (unsigned long long)magic, name);
        }

        /* Empty, or sized without the magic yet. A live initialiser holds LOCK_EX. */
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
            if (errno != EWOULDBLOCK)
                return wl__set_error(-errno, "cannot lock segment %s: %s", name,
                                     strerror(errno));
            if (pause_until(deadline, &pause_ns) < 0)
                return wl__set_error(-ETIMEDOUT, "segment %s is being initialised by a "
                                                 "process that did not finish within %u ms; "
                                                 "if it is stopped, resume or kill it",
                                     name, wait_ms);
            continue;
        }
        /* Holding LOCK_EX: look again, since an initialiser may have finished just now. */
        if (fstat(fd, &st) < 0) {
            r = -errno;
            flock(fd, LOCK_UN);
            return wl__set_error(r, "cannot stat segment %s: %s", name, strerror(-r));
        }
        if (st.st_size > 0 && !(st.st_size >= 8 && init_marked(fd))) {
            uint64_t magic = 0;
            if ((size_t)st.st_size >= sizeof(*h)) {
                if ((r = map_fd(fd, (size_t)st.st_size, &p)) < 0) {
                    flock(fd, LOCK_UN);
                    return wl__set_error(r, "cannot map segment %s: %s", name, strerror(-r));
                }
                magic = atomic_load_explicit(&((struct wl__header *)p)->magic,
                                             memory_order_acquire);
                munmap(p, (size_t)st.st_size);
            }
            flock(fd, LOCK_UN);
            if (magic != 0)
                continue; /* initialised meanwhile (or foreign): validate from the top */
            /* Sized, no magic, nobody initialising: its creator died half-way, or it is
             * not ours. Either way, not a segment anyone can use as it is. */
            return not_a_segment(name, st.st_size, "no magic: its creator died while "
                                                   "initialising it, or it is not ours");
        }
        if (existing) {
            flock(fd, LOCK_UN);
            return wl__set_error(-ENOENT, "segment %s is empty (its creator died before "
                                          "initialising it); the next process that opens it "
                                          "to use it finishes it", name);
            /* (an object with the INIT_MARK only is "empty" in the same sense) */
        }
        /* shm_open applied the umask: set the mode we were asked for. The mark goes in
         * before the size, so there is never a sized object of ours without it. */
        if (fchmod(fd, mode) < 0 ||
            pwrite(fd, &(uint64_t){INIT_MARK}, sizeof(uint64_t), 0) != sizeof(uint64_t) ||
            ftruncate(fd, (off_t)layout_size(nslots)) < 0) {
            r = -errno;
            flock(fd, LOCK_UN);
            return wl__set_error(r, "cannot initialise segment %s: %s", name, strerror(-r));
        }
        if ((r = map_fd(fd, layout_size(nslots), &p)) < 0) {
            flock(fd, LOCK_UN);
            return wl__set_error(r, "cannot map segment %s: %s", name, strerror(-r));
        }
        init_segment(p, nslots);
        munmap(p, layout_size(nslots)); /* no lock was taken through it yet: safe */
        flock(fd, LOCK_UN);
    }

    /* Validated and mapped at p, LOCK_SH held through fd. */
    {
        struct wl__map *m = calloc(1, sizeof(*m));
        if (!m) {
            munmap(p, (size_t)st.st_size);
            return wl__set_error(-ENOMEM, "out of memory");
        }
        m->dev = st.st_dev;
        m->ino = st.st_ino;
        m->size = (size_t)st.st_size;
        m->fd = fd;
        m->hdr = p;
        m->slots = (struct wl__slot *)(m->hdr + 1);
        pthread_mutex_lock(&registry_lock);
        struct wl__map *other = registry_find(st.st_dev, st.st_ino);
        if (other) { /* another thread mapped it meanwhile: keep one mapping */
            pthread_mutex_unlock(&registry_lock);
            munmap(p, m->size);
            free(m);
            *out = other;
            return 0;
        }
        m->next = registry;
        __atomic_store_n(&registry, m, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&registry_lock);
        *out = m;
    }
    return 0;
}

/* Turn a failed shm_open of an existing name into the library's code and message. */
static int open_error(const char *nm, int e, int existing)
{
    char path[WL_NAME_MAX + 16];
    struct stat st;

    /* glibc's shm_open reports a directory at the name as EINVAL (the name itself passed
     * resolve_name already). */
    snprintf(path, sizeof(path), "/dev/shm%s", nm);
    if (e == EINVAL && lstat(path, &st) == 0 && S_ISDIR(st.st_mode))
        e = EISDIR;
    if (e == ENOENT)
        return wl__set_error(-ENOENT, "segment %s does not exist%s", nm,
                             existing ? " (nothing has used warmlock under this name yet, "
                                        "or it was removed)" : "");
    if (e == ELOOP)
        return wl__set_error(-EPERM, "segment %s is a symbolic link; refusing to follow it; "
                                     REMOVE_HINT, nm, nm);
    if (e == EISDIR || e == ENXIO || e == ENODEV || e == ETXTBSY)
        return wl__set_error(-EPERM, "segment %s is not a regular shared-memory object "
                                     "(%s); " REMOVE_HINT, nm,
                             e == EISDIR ? "a directory" : "a socket or device", nm);
    if (e == EACCES)
        return wl__set_error(-EPERM, "segment %s exists and is not accessible to uid %u; "
                                     "use another name (--shm, $WARMLOCK_SHM)", nm,
                             (unsigned)geteuid());
    return wl__set_error(-e, "cannot open segment %s: %s", nm, strerror(e));
}

/*
 * The fast path of wl_open: the object is mapped in this process already (by an earlier
 * wl_open here, or in the process this one was forked from, as in every prefork worker).
 * One lstat of the name finds its mapping without opening it: no shm_open, no descriptor.
 * 1 when *out is that mapping, validated as open_object would; 0 when the slow path must
 * decide (not mapped, not there, not a plain file, not ours: it gives the errors); < 0
 * when the mapped segment itself is refused.
 */
static int open_mapped(const char *nm, uint32_t want_slots, struct wl__map **out)
{
    static const char dir[] = "/dev/shm"; /* where glibc and musl keep POSIX shm objects */
    char path[sizeof(dir) + WL_NAME_MAX + 1];
    size_t n = strlen(nm);
    struct stat st;

    if (nm[0] != '/' || n > WL_NAME_MAX)
        return 0;
    memcpy(path, dir, sizeof(dir) - 1);
    memcpy(path + sizeof(dir) - 1, nm, n + 1);
    if (fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode) ||
        check_owner(nm, &st) < 0)
        return 0;
    if (!(*out = registry_find(st.st_dev, st.st_ino)))
        return 0;
    int r = check_mapped(nm, (*out)->hdr, (size_t)st.st_size, want_slots);
    return r < 0 ? r : 1;
}

WL_EXPORT int wl_open(const char *name, const struct wl_open_opts *opts,
                      struct wl_segment **out)
{
    char nm[WL_NAME_MAX + 1];
    mode_t mode = opts && opts->mode ? opts->mode : 0600;
    unsigned slots = opts ? opts->slots : 0;
    int existing = opts && (opts->flags & WL_OPEN_EXISTING);
    struct wl_segment *seg;
    struct wl__map *map = NULL;
    int fd = -1, r, tries, again = 0;

    if (!out)
        return wl__set_error(-EINVAL, "wl_open: out is NULL");
    *out = NULL;
    if ((r = resolve_name(name, nm, sizeof(nm))) < 0)
        return r;
    if (opts && (opts->flags & ~WL_OPEN_EXISTING))
        return wl__set_error(-EINVAL, "unknown wl_open_opts.flags %#x",
                             opts->flags & ~WL_OPEN_EXISTING);
    if (mode & ~0777u)
        return wl__set_error(-EINVAL, "mode %04o has bits beyond 0777; use e.g. 0600 or 0660",
                             (unsigned)mode);
    if ((mode & 0600) != 0600)
        return wl__set_error(-EINVAL, "mode %04o must let the owner read and write (0600)",
                             (unsigned)mode);
    if (mode & 0002)
        return wl__set_error(-EINVAL, "mode %04o is world-writable, which would let any user "
                                      "steer warm-ups; use 0600 or 0660", (unsigned)mode);
    if (slots > WL_MAX_SLOTS)
        return wl__set_error(-EINVAL, "%u slots asked for; at most %d", slots, WL_MAX_SLOTS);

    /* mapped already (here, or in the process this one was forked from): no descriptor */
    if ((r = open_mapped(nm, slots, &map)) < 0)
        return r;
    if (r > 0)
        goto mapped;

    /* glibc's shm_open adds O_NOFOLLOW and O_CLOEXEC: a symlink in the name's place fails
     * with ELOOP instead of being followed. O_NONBLOCK: opening a FIFO planted at the name
     * returns at once (and fstat then refuses it) instead of waiting for a writer. The name
     * can vanish between a failed create and the open: try again a few times. */
reopen:
    for (tries = 0; fd < 0 && tries < 8; tries++) {
        /* the segment is usually there already: open it first, create it only if not */
        fd = shm_open(nm, O_RDWR | O_NONBLOCK, 0);
        if (fd >= 0 || errno != ENOENT || existing)
            break;
        fd = shm_open(nm, O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK, mode);
        if (fd >= 0 || errno != EEXIST)
            break;
    }
    if (fd < 0)
        return open_error(nm, errno, existing);
    r = open_object(nm, fd, slots, mode,
                    opts && opts->init_timeout_ms ? opts->init_timeout_ms : INIT_WAIT_MS,
                    existing, &map);
    if (r < 0 || map->fd != fd)
        close(fd); /* a mapping made earlier keeps its own descriptor (and flock) */
    if (r == -EAGAIN) { /* removed under us: the name may hold a new segment, or none */
        if (++again > 8)
            return wl__set_error(-EAGAIN, "segment %s was removed again and again while "
                                          "being opened", nm);
        fd = -1;
        goto reopen;
    }
    if (r < 0)
        return r;

mapped:
    seg = calloc(1, sizeof(*seg));
    if (!seg)
        return wl__set_error(-ENOMEM, "out of memory");
    seg->map = map;
    seg->hdr = map->hdr;
    seg->slots = map->slots;
    seg->nslots = map->hdr->nslots;
    memcpy(seg->name, nm, strlen(nm) + 1);
    *out = seg;
    return 0;
}

WL_EXPORT void wl_close(struct wl_segment *seg)
{
    /* The mapping stays in the registry for the life of the process. */
    free(seg);
}

WL_EXPORT int wl_unlink(const char *name)
{
    char nm[WL_NAME_MAX + 1];
    int r;

    if ((r = resolve_name(name, nm, sizeof(nm))) < 0)
        return r;
    if (shm_unlink(nm) < 0) {
        r = -errno;
        if (r == -ENOENT)
            return wl__set_error(r, "segment %s does not exist", nm);
        if (r == -EISDIR || r == -EPERM)
            return wl__set_error(r, "cannot remove segment %s: %s (it is a directory: "
                                    "rmdir /dev/shm%s)", nm, strerror(-r), nm);
        return wl__set_error(r, "cannot remove segment %s: %s", nm, strerror(-r));
    }
    return 0;
}

WL_EXPORT int wl_unlink_unused(const char *name)
{
    char nm[WL_NAME_MAX + 1];
    struct stat st;
    int fd, r;

    if ((r = resolve_name(name, nm, sizeof(nm))) < 0)
        return r;
    /* Every process that maps the segment holds LOCK_SH on it until it exits. Hold LOCK_EX
     * across the unlink, so that nobody starts using it in between. */
    fd = shm_open(nm, O_RDONLY | O_NONBLOCK, 0);
    if (fd < 0 && errno != ELOOP && errno != EINVAL && errno != ENXIO && errno != ENODEV) {
        if (errno == ENOENT)
            return wl__set_error(-ENOENT, "segment %s does not exist", nm);
        return wl__set_error(-errno, "cannot open segment %s: %s", nm, strerror(errno));
    }
    if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
        flock(fd, LOCK_EX | LOCK_NB) < 0) {
        r = errno;
        close(fd);
        if (r == EWOULDBLOCK)
            return wl__set_error(-EBUSY, "segment %s is in use: a running process has it "
                                         "open; stop it first, or force the removal (the "
                                         "processes keep their copy, later ones get a new "
                                         "segment)", nm);
        return wl__set_error(-r, "cannot lock segment %s: %s", nm, strerror(r));
    }
    r = wl_unlink(nm);
    if (fd >= 0)
        close(fd);
    return r;
}

WL_EXPORT const char *wl_name(const struct wl_segment *seg)
{
    return seg->name;
}

const uint8_t *wl__segment_salt(const struct wl_segment *seg)
{
    return seg->hdr->salt;
}

WL_EXPORT int wl_check(struct wl_segment *seg)
{
    struct stat st;
    /* O_NONBLOCK: a FIFO planted at the name must not stop the caller (it is -ESTALE). */
    int fd = shm_open(seg->name, O_RDONLY | O_NONBLOCK, 0), r;

    if (fd < 0)
        return errno == ENOENT ? -ENOENT : -errno;
    r = fstat(fd, &st) < 0 ? -errno : 0;
    close(fd);
    if (r < 0)
        return r;
    return S_ISREG(st.st_mode) && st.st_dev == seg->map->dev && st.st_ino == seg->map->ino
               ? 0 : -ESTALE;
}
