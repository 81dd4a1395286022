/*
 * libFuzzer target: the conninfo -> key path (wl_pg_key) and the engine's reading of libpq
 * error messages (wl__pg_sqlstate_of, wl__pg_classify). The input, as a C string, is fed to
 * both.
 *
 * Checked on every input, besides what ASan and UBSan catch:
 * - wl_pg_key returns its length (the key is NUL-terminated there, without control
 *   characters) or -EINVAL/-ENOMEM/-ENAMETOOLONG with a message; a smaller buffer gives
 *   the same key or -ENAMETOOLONG, never a different key;
 * - the password never enters the key: the conninfo's options written back as
 *   key='value' pairs give the same key with the password, with another password and with
 *   none;
 * - nor the error message: with a known password in a URI's user:password@ or a leading
 *   password=, followed by the input, neither the key nor libpq's parser message (which
 *   quotes what it cannot parse) holds it, even truncated;
 * - the SQLSTATE read from a message is "" or five characters [0-9A-Z] that stand after
 *   "FATAL:  ", "ERROR:  " or "PANIC:  " and before a ':' in it;
 * - classification returns one of the codes the engine documents.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "warmlock/pg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define KEYBUF (WL_KEY_MAX * 2 + 1) /* what wl_pg_ensure gives it */
#define SMALL  24

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* libpq's environment would make keys depend on the machine; keep runs comparable. */
    static const char *const vars[] = {
        "PGHOST",    "PGHOSTADDR",           "PGPORT",       "PGDATABASE",
        "PGUSER",    "PGPASSWORD",           "PGOPTIONS",    "PGSERVICE",
        "PGSSLMODE", "PGTARGETSESSIONATTRS", "PGSERVICEFILE"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    return 0;
}

static void die(const char *what, const char *input, const char *a, const char *b)
{
    fprintf(stderr, "fuzz_key: invariant broken: %s\n  input: %s\n  %s\n  %s\n", what, input,
            a ? a : "", b ? b : "");
    abort();
}

/* The key of conninfo into a buffer of exactly len bytes (so ASan sees any overflow). */
static int key_of(const char *conninfo, size_t len, char **out)
{
    char *buf = malloc(len);
    int r;
    if (!buf)
        abort();
    r = wl_pg_key(conninfo, buf, len);
    *out = buf;
    return r;
}

/* Append s to a growing string. */
static void app(char **s, size_t *n, size_t *cap, const char *t, size_t tl)
{
    if (*n + tl + 1 > *cap) {
        *cap = (*n + tl + 1) * 2;
        if (!(*s = realloc(*s, *cap)))
            abort();
    }
    memcpy(*s + *n, t, tl);
    *n += tl;
    (*s)[*n] = '\0';
}

/* The parsed options as key='value' pairs, the password replaced by pw (NULL: left out). */
static char *rebuild(const PQconninfoOption *opts, const char *pw)
{
    char *s = NULL;
    size_t n = 0, cap = 0;
    app(&s, &n, &cap, "", 0);
    for (const PQconninfoOption *o = opts; o->keyword; o++) {
        const char *v = o->val;
        if (!strcmp(o->keyword, "password"))
            v = pw;
        if (!v)
            continue;
        app(&s, &n, &cap, o->keyword, strlen(o->keyword));
        app(&s, &n, &cap, "='", 2);
        for (; *v; v++) {
            if (*v == '\'' || *v == '\\')
                app(&s, &n, &cap, "\\", 1);
            app(&s, &n, &cap, v, 1);
        }
        app(&s, &n, &cap, "' ", 2);
    }
    return s;
}

static void check_key(const char *in)
{
    char *key, *small, *k2;
    PQconninfoOption *opts;
    char *perr = NULL;
    int r, rs, i;

    r = key_of(in, KEYBUF, &key);
    if (r >= 0) {
        if ((size_t)r != strlen(key) || (size_t)r >= KEYBUF)
            die("wl_pg_key's length is not the key's", in, key, NULL);
        for (i = 0; i < r; i++)
            if ((unsigned char)key[i] < 0x20 || key[i] == 0x7f)
                die("a control character in the key", in, key, NULL);
    } else if (r != -EINVAL && r != -ENOMEM && r != -ENAMETOOLONG) {
        die("wl_pg_key returned an undocumented code", in, key, NULL);
    } else if (!key[0] || strlen(key) >= KEYBUF) {
        die("wl_pg_key failed without a message", in, NULL, NULL);
    }

    rs = key_of(in, SMALL, &small);
    if (r >= 0 && rs >= 0 && (rs != r || strcmp(small, key) != 0))
        die("a smaller buffer gave another key", in, key, small);
    if (r >= 0 && r < SMALL && rs != r)
        die("a key that fits failed in the smaller buffer", in, key, small);
    if (r >= SMALL && rs != -ENAMETOOLONG)
        die("a key that does not fit was not -ENAMETOOLONG", in, key, small);
    if (r == -EINVAL && rs != -EINVAL)
        die("bad conninfo was not -EINVAL in the smaller buffer", in, key, small);
    free(small);

    /* The password never enters the key. */
    if (r >= 0 && (opts = PQconninfoParse(in, &perr))) {
        static const char *const pws[] = {NULL, "", "Tr0ub4dor&3 'x' \\y", "%40"};
        for (size_t p = 0; p < sizeof(pws) / sizeof(pws[0]); p++) {
            char *ci = rebuild(opts, pws[p]);
            int r2 = key_of(ci, KEYBUF, &k2);
            if (r2 != r || strcmp(k2, key) != 0)
                die("the password changed the key", in, key, k2);
            free(k2);
            free(ci);
        }
        PQconninfoFree(opts);
    }
    PQfreemem(perr);
    free(key);
}

/* A password in a password position, the fuzzer's bytes after it: the key, or the error
 * message (libpq quotes what it cannot parse), must not depend on the password. Two
 * passwords of one length must give byte-identical results, whole and truncated (a
 * substring search would not do: the fuzzer assembles any needle from the key's
 * percent-encoding). */
#define SECRET_A "Fz9q-s3cr3t-K7"
#define SECRET_B "Jw2x-p4ssw0-M1"
static void check_no_secret(const char *in)
{
    static const char *const fmts[] = {"postgresql://u:%s@%s", "postgres://:%s@%s",
                                       "password=%s %s"};
    static const size_t lens[] = {KEYBUF, SMALL};
    size_t n = strlen(in) + 64;
    char *a = malloc(n), *b = malloc(n), *ka, *kb;
    int ra, rb;

    if (!a || !b)
        abort();
    /* an input that spells a password itself would be masked in one run and not the other */
    if (!strstr(in, "Fz9q") && !strstr(in, "Jw2x")) {
        for (size_t i = 0; i < sizeof(fmts) / sizeof(fmts[0]); i++) {
            snprintf(a, n, fmts[i], SECRET_A, in);
            snprintf(b, n, fmts[i], SECRET_B, in);
            for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
                ra = key_of(a, lens[l], &ka);
                rb = key_of(b, lens[l], &kb);
                if (ra != rb || strcmp(ka, kb) != 0)
                    die(ra < 0 ? "the error message depends on the password"
                               : "the key depends on the password",
                        a, ka, kb);
                free(ka);
                free(kb);
            }
        }
    }
    free(a);
    free(b);
}

static void check_sqlstate(const char *in)
{
    static const char *const sev[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    char st[6], needle[16];
    int found = 0, refused, c;

    memset(st, 'x', sizeof(st));
    wl__pg_sqlstate_of(in, st);
    if (st[0]) {
        if (strlen(st) != 5)
            die("a SQLSTATE that is not five characters", in, st, NULL);
        for (int i = 0; i < 5; i++)
            if (!((st[i] >= '0' && st[i] <= '9') || (st[i] >= 'A' && st[i] <= 'Z')))
                die("a SQLSTATE with a character outside [0-9A-Z]", in, st, NULL);
        for (size_t i = 0; i < sizeof(sev) / sizeof(sev[0]); i++) {
            snprintf(needle, sizeof(needle), "%s%s:", sev[i], st);
            found |= strstr(in, needle) != NULL;
        }
        if (!found)
            die("a SQLSTATE that is not in the message", in, st, NULL);
    }
    for (int connecting = 0; connecting < 2; connecting++) {
        c = wl__pg_classify(st, in, connecting, &refused);
        if (c != 0 && c != -ENOENT && c != -EACCES && c != -EINVAL && c != -EIO)
            die("classification gave an undocumented code", in, st, NULL);
        if (refused && (c != 0 || st[0] || !connecting))
            die("'refused' on a failure that is not a refused connection", in, st, NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (!in)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    check_key(in);
    check_no_secret(in);
    check_sqlstate(in);
    free(in);
    return 0;
}
