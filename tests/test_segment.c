/* The segment: names, modes, creation races, hostile and broken objects. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/resource.h>

#include "lib/internal.h"
#include "proc.h"
#include "warmlock.h"

static char name[64];

static int setup(void **state)
{
    (void)state;
    snprintf(name, sizeof(name), "%s", wlt_segname());
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    shm_unlink(name);
    return 0;
}

static void expect_open(int want, const char *needle)
{
    struct wl_segment *seg = NULL;
    int r = wl_open(name, NULL, &seg);
    if (r != want)
        fail_msg("wl_open(%s) = %d (%s), expected %d", name, r, wl_last_error(), want);
    if (needle && !strstr(wl_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", wl_last_error(), needle);
    if (seg)
        wl_close(seg);
}

static void read_object(unsigned char *buf, size_t len, size_t *got)
{
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    ssize_t n = read(fd, buf, len);
    assert_true(n >= 0);
    *got = (size_t)n;
    close(fd);
}

static void test_open_rejects_bad_names(void **state)
{
    struct wl_segment *seg;
    char longname[WL_NAME_MAX + 8];
    (void)state;
    const char *bad[] = {"", "/", "noslash", "/a/b", "/.", "/..", "/tab\there"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(wl_open(bad[i], NULL, &seg), -EINVAL);
        assert_true(strlen(wl_last_error()) > 10);
        assert_null(strchr(wl_last_error(), '\n'));
    }
    memset(longname, 'x', sizeof(longname));
    longname[0] = '/';
    longname[WL_NAME_MAX + 1] = '\0';
    assert_int_equal(wl_open(longname, NULL, &seg), -EINVAL);
    assert_non_null(strstr(wl_last_error(), "at most"));
    assert_int_equal(wl_unlink("bad"), -EINVAL);
}

static void test_open_default_name_uses_env_then_uid(void **state)
{
    char buf[WL_NAME_MAX + 1], want[64];
    (void)state;
    setenv("WARMLOCK_SHM", name, 1);
    assert_true(wl_default_name(buf, sizeof(buf)) > 0);
    assert_string_equal(buf, name);
    struct wl_segment *seg;
    assert_int_equal(wl_open(NULL, NULL, &seg), 0);
    assert_string_equal(wl_name(seg), name);
    wl_close(seg);
    unsetenv("WARMLOCK_SHM");
    snprintf(want, sizeof(want), "/warmlock.%u", (unsigned)geteuid());
    assert_true(wl_default_name(buf, sizeof(buf)) > 0);
    assert_string_equal(buf, want);
}

static void test_open_rejects_unsafe_modes(void **state)
{
    struct wl_segment *seg;
    struct wl_open_opts o = {.mode = 0666};
    (void)state;
    assert_int_equal(wl_open(name, &o, &seg), -EINVAL);
    assert_non_null(strstr(wl_last_error(), "world-writable"));
    o.mode = 0400;
    assert_int_equal(wl_open(name, &o, &seg), -EINVAL);
    o.mode = 01600;
    assert_int_equal(wl_open(name, &o, &seg), -EINVAL);
    o.mode = 0;
    o.slots = WL_MAX_SLOTS + 1;
    assert_int_equal(wl_open(name, &o, &seg), -EINVAL);
}

/* Pitfall 7: shm_open applies the umask; the mode asked for is what the object gets. */
static void test_open_mode_ignores_umask(void **state)
{
    struct wl_segment *seg;
    struct stat st;
    char path[128];
    (void)state;
    mode_t masks[] = {0, 077, 022};
    mode_t modes[] = {0600, 0660};
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    for (size_t m = 0; m < 3; m++)
        for (size_t k = 0; k < 2; k++) {
            struct wl_open_opts o = {.mode = modes[k]};
            mode_t old = umask(masks[m]);
            assert_int_equal(wl_open(name, &o, &seg), 0);
            umask(old);
            assert_int_equal(stat(path, &st), 0);
            assert_int_equal(st.st_mode & 0777, modes[k]);
            wl_close(seg);
            assert_int_equal(wl_unlink(name), 0);
        }
}

static void test_open_records_layout_in_header(void **state)
{
    struct wl_segment *seg;
    struct wl_open_opts o = {.slots = 8};
    (void)state;
    assert_int_equal(wl_open(name, &o, &seg), 0);
    assert_int_equal(seg->hdr->magic, WL__MAGIC);
    assert_int_equal(seg->hdr->layout_version, WL__LAYOUT_VERSION);
    assert_int_equal(seg->hdr->mutex_size, sizeof(pthread_mutex_t));
    assert_int_equal(seg->hdr->libc, WL__LIBC);
    assert_int_equal(seg->hdr->nslots, 8);
    assert_int_equal(seg->hdr->creator_pid, getpid());
    assert_int_equal(seg->hdr->creator_uid, geteuid());
    assert_int_equal(seg->hdr->creator_pidns, wl__pidns());
    assert_int_equal((uintptr_t)&seg->slots[0].state % 64, 0);
    assert_int_equal((uintptr_t)&seg->slots[0].mutex % 64, 0);
    /* Pitfall 4: reopening reuses the mapping; closing never unmaps. */
    struct wl_segment *again;
    assert_int_equal(wl_open(name, NULL, &again), 0);
    assert_ptr_equal(again->hdr, seg->hdr);
    wl_close(again);
    o.slots = 16; /* a different explicit slot count is refused */
    assert_int_equal(wl_open(name, &o, &again), -EPROTO);
    wl_close(seg);
}

static int open_child(void *arg, int idx)
{
    struct wl_segment *seg;
    struct wlt_barrier *b = arg;
    (void)idx;
    wlt_barrier_wait(b, 200);
    if (wl_open(name, NULL, &seg) != 0)
        return 1;
    if (seg->hdr->nslots != WL_DEFAULT_SLOTS)
        return 2;
    return wl_ensure(seg, "k", NULL, NULL, NULL, NULL) == 0 ? 0 : 3;
}

/* Hundreds of processes open a new name at once: all succeed on one object. */
static void test_open_race_free_with_200_processes(void **state)
{
    struct wlt_barrier *b = wlt_shared(sizeof(*b));
    pid_t pids[200];
    (void)state;
    for (int i = 0; i < 200; i++)
        pids[i] = wlt_spawn(open_child, b, i);
    for (int i = 0; i < 200; i++)
        assert_int_equal(wlt_wait(pids[i], 20000), 0);
    struct wl_segment *seg;
    struct wl_slot_info info;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_snapshot(seg, &info, 1), 1);
    assert_int_equal(info.warmups, 1);
    wl_close(seg);
}

/* A creator killed during initialisation (object made, flock held, size set, no magic)
 * does not wedge later openers: the next one initialises it. */
static int dying_creator(void *arg, int idx)
{
    (void)arg;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return 1;
    flock(fd, LOCK_EX);
    if (idx == 1 && ftruncate(fd, 4096) != 0)
        return 2;
    if (idx == 3) { /* as the library's creator does: the mark, the size, then killed */
        uint64_t mark = WL__INIT_MARK;
        if (pwrite(fd, &mark, sizeof(mark), 0) != sizeof(mark) || ftruncate(fd, 65536) != 0)
            return 2;
    }
    if (idx == 2) { /* hang holding the lock */
        raise(SIGSTOP);
        return 0;
    }
    raise(SIGKILL);
    return 3;
}

static void expect_refused_untouched(int want, const char *needle);
static void expect_open_existing(int want, const char *needle);

/* A creator killed before sizing the object leaves it empty: the next opener finishes it
 * (but a read-only opener, WL_OPEN_EXISTING, leaves it empty and says so). One killed after
 * sizing it leaves an object without the magic: nobody can tell it from someone else's, so
 * it is refused and left as it is. */
static void test_open_finishes_only_an_empty_object(void **state)
{
    (void)state;
    pid_t p = wlt_spawn(dying_creator, NULL, 0);
    assert_int_equal(wlt_wait(p, 5000), 128 + SIGKILL);
    expect_refused_untouched(-ENOENT, "empty");
    expect_open_existing(-ENOENT, "empty");
    uint64_t t0 = wlt_now_ns();
    expect_open(0, NULL);
    assert_true(wlt_now_ns() - t0 < 1000000000ull);
    struct wl_segment *seg;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "k", NULL, NULL, NULL, NULL), 0);
    wl_close(seg);
    shm_unlink(name);

    p = wlt_spawn(dying_creator, NULL, 1); /* sized to 4096 bytes, then killed */
    assert_int_equal(wlt_wait(p, 5000), 128 + SIGKILL);
    expect_refused_untouched(-EPROTO, "not a warmlock segment");
    expect_open(-EPROTO, "warmlock unlink --shm");
    shm_unlink(name);

    /* A creator of ours killed after sizing: its mark says so, and the next opener
     * finishes it (a read-only opener does not). */
    p = wlt_spawn(dying_creator, NULL, 3);
    assert_int_equal(wlt_wait(p, 5000), 128 + SIGKILL);
    expect_open_existing(-ENOENT, "empty");
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, "k", NULL, NULL, NULL, NULL), 0);
    wl_close(seg);
}

static void test_open_times_out_on_hung_initialiser(void **state)
{
    (void)state;
    pid_t p = wlt_spawn(dying_creator, NULL, 2);
    struct stat st;
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    for (int i = 0; i < 200 && stat(path, &st) != 0; i++)
        wlt_sleep_ms(5);
    assert_int_equal(wlt_wait_stopped(p, 10000), 0); /* it holds the flock now, and is stopped */
    struct wl_segment *seg;
    struct wl_open_opts o = {.init_timeout_ms = 300};
    uint64_t t0 = wlt_now_ns();
    assert_int_equal(wl_open(name, &o, &seg), -ETIMEDOUT);
    uint64_t took = wlt_now_ns() - t0;
    assert_true(took >= 290000000ull && took < 1000000000ull);
    assert_non_null(strstr(wl_last_error(), "did not finish"));
    kill(p, SIGKILL);
    wlt_wait(p, 2000);
    assert_int_equal(wl_open(name, &o, &seg), 0); /* its death released the lock */
    wl_close(seg);
}

/* Broken objects are refused with -EPROTO, a message saying how to remove them, and are
 * not written to. */
static void make_object(const void *data, size_t len, mode_t mode)
{
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, mode);
    assert_true(fd >= 0);
    fchmod(fd, mode);
    if (len)
        assert_int_equal(write(fd, data, len), (ssize_t)len);
    close(fd);
}

static void expect_open_existing(int want, const char *needle)
{
    struct wl_segment *seg = NULL;
    struct wl_open_opts o = {.flags = WL_OPEN_EXISTING};
    int r = wl_open(name, &o, &seg);
    if (r != want)
        fail_msg("wl_open(%s, EXISTING) = %d (%s), expected %d", name, r, wl_last_error(),
                 want);
    if (needle && !strstr(wl_last_error(), needle))
        fail_msg("message '%s' lacks '%s'", wl_last_error(), needle);
    if (seg)
        wl_close(seg);
}

/* Refused by a read-only opener (WL_OPEN_EXISTING) with `want`, and by a plain one with
 * `want` too (-EPROTO, -EPERM) or by initialising it (want -ENOENT: an empty object, which
 * this only checks with the read-only opener). Nothing is written either way. */
static void expect_refused_untouched(int want, const char *needle)
{
    static unsigned char before[1 << 17], after[1 << 17];
    size_t n1, n2;
    read_object(before, sizeof(before), &n1);
    expect_open_existing(want, needle);
    if (want != -ENOENT)
        expect_open(want, needle);
    read_object(after, sizeof(after), &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(before, after, n1);
}

static void test_open_refuses_bad_magic(void **state)
{
    unsigned char junk[8192];
    (void)state;
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    make_object(junk, sizeof(junk), 0600);
    expect_refused_untouched(-EPROTO, "not a warmlock segment");
    expect_open(-EPROTO, "warmlock unlink --shm");
}

/* A 10-byte object of zeros is not a segment: nobody re-initialises it, not even a reader. */
static void test_open_leaves_short_zero_object_untouched(void **state)
{
    unsigned char z[10] = {0};
    (void)state;
    make_object(z, sizeof(z), 0600);
    expect_refused_untouched(-EPROTO, "not a warmlock segment");
    expect_open(-EPROTO, "shorter than a segment header");
}

/* Full-size (exactly what a default segment needs) but without the magic: refused. */
static void test_open_refuses_full_size_object_without_magic(void **state)
{
    struct wl_segment *seg;
    (void)state;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    size_t size = seg->map->size;
    wl_close(seg);
    shm_unlink(name);
    unsigned char *z = calloc(1, size);
    assert_non_null(z);
    make_object(z, size, 0600);
    free(z);
    expect_refused_untouched(-EPROTO, "no magic");
}

static void test_open_existing_never_creates(void **state)
{
    struct stat st;
    char path[128];
    (void)state;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    expect_open_existing(-ENOENT, "does not exist");
    assert_int_equal(stat(path, &st), -1);
    assert_int_equal(errno, ENOENT);
    expect_open(0, NULL);
    expect_open_existing(0, NULL);
}

/* A FIFO (or a directory) planted at the name: every open, wl_check included, returns at
 * once; opens say it is not a regular object. Run in a child, so that a blocking open
 * shows as a timeout rather than a hung suite. */
static int fifo_child(void *arg, int idx)
{
    struct wl_segment *seg;
    struct wl_open_opts o = {.flags = WL_OPEN_EXISTING};
    (void)arg;
    if (idx == 0) { /* opened through the default name ($WARMLOCK_SHM) */
        setenv("WARMLOCK_SHM", name, 1);
        if (wl_open(NULL, NULL, &seg) != -EPERM)
            return 1;
    } else if (wl_open(name, &o, &seg) != -EPERM) {
        return 2;
    }
    if (!strstr(wl_last_error(), "not a regular shared-memory object"))
        return 3;
    return 0;
}

static int check_child(void *arg, int idx)
{
    struct wl_segment *seg = arg;
    (void)idx;
    return wl_check(seg) == -ESTALE ? 0 : 1;
}

static void test_open_and_check_refuse_a_fifo_without_blocking(void **state)
{
    struct wl_segment *seg;
    char path[128];
    (void)state;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_unlink(name), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(wlt_wait(wlt_spawn(fifo_child, NULL, i), 5000), 0);
    assert_int_equal(wlt_wait(wlt_spawn(check_child, seg, 0), 5000), 0);
    wl_close(seg);
    unlink(path);
    assert_int_equal(mkdir(path, 0700), 0);
    expect_open(-EPERM, "not a regular shared-memory object (a directory)");
    expect_open_existing(-EPERM, "not a regular shared-memory object (a directory)");
    rmdir(path);
}

/* The bad name is named. */
static void test_open_names_the_bad_name(void **state)
{
    struct wl_segment *seg;
    (void)state;
    assert_int_equal(wl_open("noslash", NULL, &seg), -EINVAL);
    assert_non_null(strstr(wl_last_error(), "'noslash'"));
}

/* wl_unlink_unused refuses while another process has the segment open, and removes a
 * broken object that nobody can open. */
static int holder_child(void *arg, int idx)
{
    struct wl_segment *seg;
    (void)arg;
    (void)idx;
    if (wl_open(name, NULL, &seg) != 0)
        return 1;
    raise(SIGSTOP);
    return 0;
}

static void test_unlink_unused_refuses_while_a_process_has_it(void **state)
{
    struct stat st;
    char path[128];
    int status;
    (void)state;
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    pid_t p = wlt_spawn(holder_child, NULL, 0);
    assert_int_equal(waitpid(p, &status, WUNTRACED), p);
    assert_true(WIFSTOPPED(status));
    assert_int_equal(wl_unlink_unused(name), -EBUSY);
    assert_non_null(strstr(wl_last_error(), "in use"));
    assert_int_equal(stat(path, &st), 0);
    kill(p, SIGKILL);
    assert_int_equal(wlt_wait(p, 5000), 128 + SIGKILL);
    assert_int_equal(wl_unlink_unused(name), 0); /* its death dropped the lock */
    assert_int_equal(wl_unlink_unused(name), -ENOENT);

    unsigned char junk[300];
    memset(junk, 0x5a, sizeof(junk));
    make_object(junk, sizeof(junk), 0600);
    expect_open(-EPROTO, "warmlock unlink");
    assert_int_equal(wl_unlink_unused(name), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    assert_int_equal(wl_unlink_unused(name), 0);
    assert_int_equal(stat(path, &st), -1);
}

static void tamper(size_t off, const void *val, size_t len)
{
    struct wl_segment *seg;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    size_t size = seg->map->size;
    wl_close(seg);
    /* Write through a separate mapping: the registry's mapping stays as it is. */
    int fd = shm_open(name, O_RDWR, 0);
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(p != MAP_FAILED);
    memcpy(p + off, val, len);
    munmap(p, size);
    close(fd);
}

static void test_open_refuses_other_version(void **state)
{
    uint32_t v = WL__LAYOUT_VERSION + 1;
    (void)state;
    tamper(offsetof(struct wl__header, layout_version), &v, sizeof(v));
    /* The process's registry keeps the earlier mapping (by design); a fresh process sees
     * the tampered header. */
    pid_t p = fork();
    if (p == 0) {
        struct wl_segment *seg;
        int r = wl_open(name, NULL, &seg);
        _exit(r == -EPROTO && strstr(wl_last_error(), "layout version") &&
              strstr(wl_last_error(), "warmlock unlink --shm") ? 0 : 1);
    }
    assert_int_equal(wlt_wait(p, 5000), 0);
}

static void test_open_refuses_wrong_size(void **state)
{
    (void)state;
    struct wl_segment *seg;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    size_t size = seg->map->size;
    wl_close(seg);
    for (int k = 0; k < 2; k++) {
        int fd = shm_open(name, O_RDWR, 0);
        assert_int_equal(ftruncate(fd, k == 0 ? (off_t)(size - 100) : (off_t)(size + 4096)), 0);
        close(fd);
        pid_t p = fork();
        if (p == 0) {
            int r = wl_open(name, NULL, &seg);
            _exit(r == -EPROTO && strstr(wl_last_error(), "size") ? 0 : 1);
        }
        assert_int_equal(wlt_wait(p, 5000), 0);
    }
}

static void test_open_refuses_world_writable_and_symlink(void **state)
{
    unsigned char z[64] = {0};
    char path[128], target[128];
    (void)state;
    make_object(z, sizeof(z), 0666);
    expect_refused_untouched(-EPERM, "world-writable");
    shm_unlink(name);

    snprintf(path, sizeof(path), "/dev/shm%s", name);
    snprintf(target, sizeof(target), "/dev/shm%s.target", name);
    int fd = open(target, O_CREAT | O_RDWR, 0600);
    close(fd);
    assert_int_equal(symlink(target, path), 0);
    expect_open(-EPERM, "symbolic link");
    struct stat st;
    assert_int_equal(stat(target, &st), 0);
    assert_int_equal(st.st_size, 0); /* the target was not initialised through the link */
    unlink(target);
}

static void test_open_refuses_object_of_other_user(void **state)
{
    unsigned char z[64] = {0};
    (void)state;
    if (geteuid() != 0) {
        printf("# skipped: needs root to chown an object to another user\n");
        skip();
    }
    make_object(z, sizeof(z), 0600);
    char path[128];
    snprintf(path, sizeof(path), "/dev/shm%s", name);
    assert_int_equal(chown(path, 65534, 65534), 0);
    expect_refused_untouched(-EPERM, "owned by uid 65534");
}

static void test_open_full_segment_gives_enospc(void **state)
{
    struct wl_segment *seg;
    struct wl_open_opts o = {.slots = 4};
    struct wl_result res;
    char key[16];
    (void)state;
    assert_int_equal(wl_open(name, &o, &seg), 0);
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(wl_ensure(seg, key, NULL, NULL, NULL, &res), 0);
    }
    assert_int_equal(wl_ensure(seg, "k4", NULL, NULL, NULL, &res), -ENOSPC);
    assert_non_null(strstr(res.error, "slots"));
    assert_int_equal(wl_ensure(seg, "k2", NULL, NULL, NULL, &res), 0); /* old keys fine */
    assert_int_equal(wl_snapshot(seg, NULL, 0), 4);
    wl_close(seg);
}

/* Pitfall 6: the name can disappear (RemoveIPC) or be replaced; wl_check tells. */
static void test_check_detects_removed_or_replaced_name(void **state)
{
    struct wl_segment *seg, *other;
    (void)state;
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_check(seg), 0);
    assert_int_equal(wl_unlink(name), 0);
    assert_int_equal(wl_check(seg), -ENOENT);
    assert_int_equal(wl_unlink(name), -ENOENT);
    assert_int_equal(wl_open(name, NULL, &other), 0);
    assert_int_equal(wl_check(seg), -ESTALE);
    assert_int_equal(wl_check(other), 0);
    wl_close(other);
    wl_close(seg);
}

/* A forked worker opens the segment its parent mapped without a descriptor (one lstat of
 * the name finds the inherited mapping), and a name that now holds another object is not
 * served from the old mapping. */
static void test_open_in_a_forked_child_needs_no_descriptor(void **state)
{
    struct wl_segment *seg, *again;
    char other[80];
    (void)state;
    snprintf(other, sizeof(other), "%s.other", name);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    pid_t p = fork();
    if (p == 0) {
        /* No descriptor can be opened from here on: open() fails with EMFILE. */
        int lowest = dup(0);
        struct rlimit rl = {(rlim_t)lowest, (rlim_t)lowest};
        close(lowest);
        if (lowest < 0 || setrlimit(RLIMIT_NOFILE, &rl) < 0)
            _exit(10);
        struct wl_segment *s2, *s3;
        if (wl_open(name, NULL, &s2) != 0 || s2->hdr != seg->hdr)
            _exit(11);
        /* the check can fail: a segment not mapped yet needs a descriptor */
        if (wl_open(other, NULL, &s3) != -EMFILE)
            _exit(12);
        _exit(0);
    }
    assert_int_equal(wlt_wait(p, 5000), 0);
    /* Replaced under the name: the new object is opened and mapped, not the old one. */
    uint8_t salt[sizeof(seg->hdr->salt)];
    memcpy(salt, seg->hdr->salt, sizeof(salt));
    assert_int_equal(wl_unlink(name), 0);
    assert_int_equal(wl_open(name, NULL, &again), 0);
    assert_ptr_not_equal(again->hdr, seg->hdr);
    assert_memory_not_equal(again->hdr->salt, salt, sizeof(salt));
    assert_int_equal(wl_check(again), 0);
    assert_int_equal(wl_check(seg), -ESTALE);
    wl_close(again);
    wl_close(seg);
    shm_unlink(other);
}

static void test_long_keys_are_distinct(void **state)
{
    struct wl_segment *seg;
    struct wl_result res;
    char a[WL_KEY_MAX + 50], b[WL_KEY_MAX + 50];
    (void)state;
    memset(a, 'k', sizeof(a));
    a[sizeof(a) - 1] = '\0';
    memcpy(b, a, sizeof(b));
    b[sizeof(b) - 2] = 'z';
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    assert_int_equal(wl_ensure(seg, a, NULL, NULL, NULL, &res), 0);
    assert_int_equal(wl_ensure(seg, b, NULL, NULL, NULL, &res), 0);
    assert_int_equal(wl_snapshot(seg, NULL, 0), 2);
    wl_close(seg);
}

static void test_strerror_names_every_code(void **state)
{
    int codes[] = {ETIMEDOUT, EACCES, ENOENT, ECONNREFUSED, EINVAL, EPROTO, EPERM, EIO,
                   ENOSPC, ECHILD, ECANCELED, EBUSY, ESTALE};
    (void)state;
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        assert_non_null(strchr(wl_strerror(-codes[i]), ':'));
    assert_string_equal(wl_version(), WL_VERSION_STRING);
    assert_string_equal(wl_state_name(WL_READY), "ready");
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_open_rejects_bad_names),
        T(test_open_default_name_uses_env_then_uid),
        T(test_open_rejects_unsafe_modes),
        T(test_open_mode_ignores_umask),
        T(test_open_records_layout_in_header),
        T(test_open_race_free_with_200_processes),
        T(test_open_finishes_only_an_empty_object),
        T(test_open_leaves_short_zero_object_untouched),
        T(test_open_refuses_full_size_object_without_magic),
        T(test_open_existing_never_creates),
        T(test_open_and_check_refuse_a_fifo_without_blocking),
        T(test_open_names_the_bad_name),
        T(test_unlink_unused_refuses_while_a_process_has_it),
        T(test_open_times_out_on_hung_initialiser),
        T(test_open_refuses_bad_magic),
        T(test_open_refuses_other_version),
        T(test_open_refuses_wrong_size),
        T(test_open_refuses_world_writable_and_symlink),
        T(test_open_refuses_object_of_other_user),
        T(test_open_full_segment_gives_enospc),
        T(test_check_detects_removed_or_replaced_name),
        T(test_open_in_a_forked_child_needs_no_descriptor),
        T(test_long_keys_are_distinct),
        T(test_strerror_names_every_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
