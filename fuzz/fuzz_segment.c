/*
 * libFuzzer target: the segment validator, driven through the real wl_open() on a real
 * POSIX shared-memory object.
 *
 * Input: byte 0 picks the object's mode (bits 0-1: 0600, 0660, 0640, 0666) and the mode
 * asked for (bit 2: 0660, else the default), byte 1 the slot count asked for (bits 0-1;
 * 0xff: one too many), the rest is the object's contents. Each run writes the contents into a fresh
 * object (under a name unique to this process: $WL_FUZZ_SHM, else /wlfuzz.<pid>), sets its mode,
 * calls wl_open(), and removes the name again.
 *
 * Checked on every input, besides what ASan and UBSan catch:
 * - the result is 0 or one of the codes wl_open documents, with a message when < 0;
 * - a refused object is left exactly as it was (no write to a foreign object), and an
 *   object shorter than a header that holds data is refused;
 * - an accepted one has the size its header promises, and the slot count asked for;
 * - opening an object that already had the magic never writes to it;
 * - wl_snapshot() over an accepted segment, whatever its slots hold (but with intact
 *   mutexes: their bytes are the C library's), stays inside it.
 *
 * wl_open keeps every mapping for the life of the process (glibc bug 14485; see
 * warmlock.h, Caveats). A fuzzer opens thousands of objects a second, so this file
 * includes lib/segment.c to reach its registry and unmap what each run mapped. Nothing
 * else of segment.c is changed.
 */
#include "../lib/segment.c"

#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char shm_name[64];
static size_t max_slots_seen;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *env = getenv("WL_FUZZ_SHM");
    (void)argc;
    (void)argv;
    if (env && *env)
        snprintf(shm_name, sizeof(shm_name), "%s", env);
    else
        snprintf(shm_name, sizeof(shm_name), "/wlfuzz.%d", (int)getpid());
    shm_unlink(shm_name); /* a previous run's, killed by a crash */
    return 0;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_segment: invariant broken: %s%s%s\n", what, detail ? ": " : "",
            detail ? detail : "");
    abort();
}

/* Drop and unmap every mapping wl_open registered in this run. Only this thread uses the
 * segment, and no lock taken through it is still held. */
static void forget_mappings(void)
{
    while (registry) {
        struct wl__map *m = registry;
        registry = m->next;
        munmap(m->hdr, m->size);
        close(m->fd);
        free(m);
    }
}

static const mode_t modes[4] = {0600, 0660, 0640, 0666};

/* The first 8 bytes of p as a little-endian u64 (how the magic words are stored). */
static uint64_t le_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wl_open_opts o = {0, 0, 50, 0};
    struct wl_segment *seg = NULL;
    const uint8_t *body;
    uint64_t magic_before = 0;
    size_t len, got;
    uint8_t *after;
    struct stat st;
    int fd, r;

    if (size < 2)
        return -1; /* not added to the corpus */
    o.mode = data[0] & 4 ? 0660 : 0;
    o.slots = data[1] == 0xff ? WL_MAX_SLOTS + 1 : data[1] & 3;
    body = data + 2;
    len = size - 2;
    if (len >= sizeof(magic_before))
        memcpy(&magic_before, body, sizeof(magic_before));

    fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        perror("fuzz_segment: shm_open");
        abort();
    }
    if ((len && write(fd, body, len) != (ssize_t)len) || fchmod(fd, modes[data[0] & 3]) < 0) {
        perror("fuzz_segment: writing the object");
        abort();
    }

    r = wl_open(shm_name, &o, &seg);

    if (fstat(fd, &st) < 0)
        abort();
    if (r < 0) {
        if (seg)
            die("wl_open failed but set *out", NULL);
        if (r != -EPROTO && r != -EPERM && r != -EINVAL)
            die("wl_open returned an undocumented code", wl_strerror(r));
        if (!wl_last_error() || !*wl_last_error())
            die("wl_open failed without a message", NULL);
        if (!strstr(wl_last_error(), shm_name) && r != -EINVAL)
            die("the message does not name the segment", wl_last_error());
    } else {
        if (r != 0 || !seg)
            die("wl_open succeeded without a handle", NULL);
        if (seg->nslots == 0 || seg->nslots > WL_MAX_SLOTS)
            die("accepted a slot count out of range", NULL);
        if (o.slots && seg->nslots != o.slots)
            die("accepted a segment with another slot count than asked", NULL);
        if ((size_t)st.st_size != layout_size(seg->nslots) ||
            seg->hdr->total_size != (uint64_t)st.st_size || seg->map->size != (size_t)st.st_size)
            die("accepted a segment whose size does not match its header", NULL);
        if (seg->nslots > max_slots_seen)
            max_slots_seen = seg->nslots;
    }

    /* What the object holds now. */
    got = (size_t)st.st_size;
    after = malloc(got ? got : 1);
    if (!after || pread(fd, after, got, 0) != (ssize_t)got)
        abort();
    if (r < 0 || magic_before == WL__MAGIC) {
        /* Refused, or already initialised: wl_open must not have written a byte. */
        if (got != len || (len && memcmp(after, body, len) != 0))
            die(r < 0 ? "a refused object was modified"
                      : "opening an initialised object "
                        "modified it",
                NULL);
    }
    free(after);
    if (r == 0 && len > 0 && len < sizeof(struct wl__header) &&
        !(len >= 8 && le_u64(body) == WL__INIT_MARK)) {
        /* An initialiser never leaves an object shorter than a header but one carrying its
         * mark (a creator that died half-way, finished by the next opener): one holding
         * other data is someone else's and must not be overwritten. */
        for (size_t i = 0; i < len; i++)
            if (body[i])
                die("a short object holding data was overwritten", NULL);
    }

    if (r == 0) {
        size_t n = seg->nslots;
        struct wl_slot_info *info = calloc(n, sizeof(*info));
        int k;
        if (!info)
            abort();
        /* The mutexes' bytes are the C library's: glibc trusts them (a garbage kind makes
         * pthread_mutex_trylock take the lock-elision path and fault), and so does every
         * user of a validated segment. Out of scope here: give them fresh ones. */
        wl__mutex_init(&seg->hdr->lock);
        for (uint32_t i = 0; i < seg->nslots; i++) {
            wl__mutex_init(&seg->slots[i].mutex);
            wl__mutex_init(&seg->slots[i].watch);
        }
        k = wl_snapshot(seg, info, n);
        if (k < 0 || (size_t)k > n)
            die("wl_snapshot returned a count out of range", NULL);
        for (int i = 0; i < k; i++)
            if (strlen(info[i].key) > WL_KEY_MAX ||
                strlen(info[i].last_error) >= sizeof(info[i].last_error))
                die("a snapshot string is not terminated in its field", NULL);
        free(info);
        wl_close(seg);
    }
    forget_mappings();
    close(fd);
    shm_unlink(shm_name);
    return 0;
}
