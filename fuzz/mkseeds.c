/*
 * Writes the seed corpus of fuzz_segment (fuzz/run --make-seeds): real segments made by
 * wl_open, and the hostile variants tests/test_segment.c refuses, each prefixed with the
 * two control bytes fuzz_segment reads (object mode, slots asked for). Run it again when
 * the layout changes.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

static const char *dir;

static void put(const char *name, unsigned char c0, unsigned char c1, const void *body, size_t len)
{
    char path[512];
    FILE *f;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (!(f = fopen(path, "wb")) || fputc(c0, f) == EOF || fputc(c1, f) == EOF ||
        (len && fwrite(body, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
}

static int warm_ok(void *arg, struct wl_result *res)
{
    (void)arg;
    (void)res;
    return 0;
}

static int warm_fail(void *arg, struct wl_result *res)
{
    (void)arg;
    snprintf(res->error, sizeof(res->error), "FATAL:  28P01: password authentication failed");
    snprintf(res->sqlstate, sizeof(res->sqlstate), "28P01");
    return -EACCES;
}

/* A fresh segment of nslots with two keys in use (one READY, one FAILED): its bytes. */
static unsigned char *segment(const char *name, unsigned nslots, size_t *len)
{
    struct wl_open_opts o = {0600, nslots, 0, 0};
    struct wl_segment *seg;
    struct wl_result res;
    struct stat st;
    unsigned char *b;
    int fd;

    shm_unlink(name);
    if (wl_open(name, &o, &seg) < 0) {
        fprintf(stderr, "mkseeds: %s\n", wl_last_error());
        exit(1);
    }
    if (nslots >= 2) {
        wl_ensure(seg, "postgres@/run/postgresql:5432/app", warm_ok, NULL, NULL, &res);
        wl_ensure(seg, "app@db.internal:6432/app?sslmode=require", warm_fail, NULL, NULL, &res);
    }
    fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0 || fstat(fd, &st) < 0 || !(b = malloc((size_t)st.st_size)) ||
        pread(fd, b, (size_t)st.st_size, 0) != st.st_size) {
        perror("mkseeds: reading the segment");
        exit(1);
    }
    close(fd);
    wl_close(seg);
    shm_unlink(name);
    *len = (size_t)st.st_size;
    return b;
}

int main(int argc, char **argv)
{
    const char *env = getenv("WL_FUZZ_SHM");
    char name[64];
    unsigned char *one, *two, *b;
    size_t l1, l2;
    struct wl__header *h;

    if (argc != 2) {
        fprintf(stderr, "usage: mkseeds DIR\n");
        return 2;
    }
    dir = argv[1];
    mkdir(dir, 0755);
    snprintf(name, sizeof(name), "%s", env && *env ? env : "/wlfuzz.seeds");

    one = segment(name, 1, &l1);
    two = segment(name, 2, &l2);
    put("valid-1slot", 0, 1, one, l1);
    put("valid-2slots-in-use", 0, 0, two, l2);
    put("valid-2slots-asked-3", 0, 3, two, l2);
    put("valid-group-0660", 1 | 4, 0, two, l2);
    put("valid-but-world-writable", 3, 0, two, l2);
    put("empty", 0, 1, NULL, 0);
    put("empty-too-many-slots", 0, 0xff, NULL, 0);
    put("header-only", 0, 1, one, sizeof(struct wl__header));
    put("truncated-mid-slot", 0, 0, two, l2 - 100);

    b = malloc(l2 + 4096);
    memcpy(b, two, l2);
    memset(b + l2, 0xa5, 4096);
    put("oversized", 0, 0, b, l2 + 4096);

    memset(b, 0, l2);
    put("zeroes-no-magic", 0, 2, b, l2);

    memcpy(b, two, l2);
    h = (struct wl__header *)b;
    h->layout_version = WL__LAYOUT_VERSION + 1;
    put("future-layout-version", 0, 0, b, l2);

    memcpy(b, two, l2);
    h->mutex_size = 40 + 8;
    h->libc = WL__LIBC_OTHER;
    put("other-libc", 0, 0, b, l2);

    memcpy(b, two, l2);
    h->nslots = 3;
    put("slot-count-lies", 0, 0, b, l2);

    memcpy(b, two, l2);
    h->total_size = (uint64_t)-1;
    put("total-size-lies", 0, 0, b, l2);

    memcpy(b, two, l2);
    h->nslots = 0;
    h->total_size = sizeof(struct wl__header);
    put("zero-slots", 0, 0, b, sizeof(struct wl__header));

    memcpy(b, two, l2);
    memcpy(b, "NOTWARM!", 8);
    put("foreign-magic", 0, 0, b, l2);

    for (size_t i = 0; i < l1; i++)
        b[i] = (unsigned char)(i * 131u + 7u);
    put("random-bytes", 0, 1, b, l1);

    free(one);
    free(two);
    free(b);
    printf("mkseeds: wrote the segment seeds into %s (header %zu, slot %zu bytes)\n", dir,
           sizeof(struct wl__header), sizeof(struct wl__slot));
    return 0;
}
