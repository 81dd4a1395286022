/*
 * The libpq engine's keys: which slot the callers of a conninfo share, and the masking of
 * passwords in libpq's messages about a conninfo.
 *
 * wl_pg_key() names what selects the server and the session: user@host:port/dbname and the
 * options of key_extras, each as libpq would use it (the conninfo's value, else its
 * environment variable's, else the compiled-in default). A conninfo naming a service is
 * first resolved by libpq itself (resolve()), so its key names the server the service file
 * names, not libpq's defaults.
 *
 * wl_pg_slot_key() adds the credentials without the secret: when a password applies (the
 * conninfo's, the service file's, $PGPASSWORD, or the password file's entry, as libpq picks
 * it), "pw=" and the first 8 hex digits of SipHash-2-4 of the password keyed with the
 * segment's random 16-byte salt. Two passwords give two slots; the segment holds neither,
 * nor an unsalted hash of either (a digest is only comparable within one segment).
 */
#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "warmlock/pg.h"

/* libpq's compiled-in DEFAULT_PGSOCKET_DIR on Debian (upstream's is /tmp). */
#define DEFAULT_SOCKET_DIR "/var/run/postgresql"
#define DEFAULT_PORT       "5432"
/* An invalid ssl_max_protocol_version: makes PQconnectStartParams stop before connecting. */
#define RESOLVE_ONLY "wl-resolve-only"
/* Why a URI with an '@' after its user:password@ is refused (its tail is never quoted). */
#define AT_MESSAGE                                                                                 \
    "the URI holds an '@' after its user:password@ (libpq ends that part at the first '@', "       \
    "so the rest would be the host); write an '@' in a user name or password as %40"
/* Spellings of passwords looked for in one conninfo; beyond this the message is withheld. */
#define MAX_SPELLINGS 64

/* ---------------------------------------------------------------- SipHash-2-4 */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

#define SIPROUND(v0, v1, v2, v3)                                                                   \
    do {                                                                                           \
        v0 += v1, v1 = rotl(v1, 13), v1 ^= v0, v0 = rotl(v0, 32);                                  \
        v2 += v3, v3 = rotl(v3, 16), v3 ^= v2;                                                     \
        v0 += v3, v3 = rotl(v3, 21), v3 ^= v0;                                                     \
        v2 += v1, v1 = rotl(v1, 17), v1 ^= v2, v2 = rotl(v2, 32);                                  \
    } while (0)

uint64_t wl__siphash24(const uint8_t k[16], const void *m, size_t n)
{
    const uint8_t *p = m;
    uint64_t k0 = le64(k), k1 = le64(k + 8), b, last = (uint64_t)n << 56;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t i, whole = n & ~(size_t)7;

    for (i = 0; i < whole; i += 8) {
        b = le64(p + i);
        v3 ^= b;
        SIPROUND(v0, v1, v2, v3);
        SIPROUND(v0, v1, v2, v3);
        v0 ^= b;
    }
    for (i = 0; i < (n & 7); i++)
        last |= (uint64_t)p[whole + i] << (8 * i);
    v3 ^= last;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    v0 ^= last;
    v2 ^= 0xff;
    for (i = 0; i < 4; i++)
        SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---------------------------------------------------------------- masking */

struct spellings {
    char *s[MAX_SPELLINGS];
    size_t n;
    int overflow; /* more than MAX_SPELLINGS, or out of memory: withhold the message */
};

static void add(struct spellings *sp, const char *p, size_t n)
{
    size_t i;
    if (!n)
        return;
    for (i = 0; i < sp->n; i++)
        if (strlen(sp->s[i]) == n && !memcmp(sp->s[i], p, n))
            return;
    if (sp->n == MAX_SPELLINGS || !(sp->s[sp->n] = strndup(p, n))) {
        sp->overflow = 1;
        return;
    }
    sp->n++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* p[0..n) percent-decoded as libpq decodes URI parts (%XX, either case); an invalid escape is
 * kept as it stands (where libpq would fail, and quote the raw text, spelled separately). */
static size_t pct_decode(char *out, const char *p, size_t n)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = hexval(p[i + 1])) >= 0 &&
            (lo = hexval(p[i + 2])) >= 0 && (hi | lo)) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = p[i];
        }
    }
    return o;
}

/* A spelling as it stands and percent-decoded. */
static void add_uri_part(struct spellings *sp, const char *p, size_t n)
{
    char *d;
    add(sp, p, n);
    if (!memchr(p, '%', n))
        return;
    if (!(d = malloc(n + 1))) {
        sp->overflow = 1;
        return;
    }
    add(sp, d, pct_decode(d, p, n));
    explicit_bzero(d, n + 1);
    free(d);
}

static int is_uri(const char *ci)
{
    return !strncmp(ci, "postgresql://", 13) || !strncmp(ci, "postgres://", 11);
}

/* Where conninfo spells a password, whether or not libpq can parse it:
 * - a URI's user:password@ (libpq ends it at the first '@' before the first '/'; up to the
 *   last '@' too, for a password holding a raw '@'), as it stands and percent-decoded;
 * - the value of every URI query parameter whose keyword percent-decodes to "password";
 * - the value after every "password" followed by '=' (key=value), quoted (with its
 *   backslash escapes, and without them) or not. */
static void find_spellings(const char *ci, struct spellings *sp)
{
    const char *p, *q;
    size_t n;

    if (is_uri(ci)) {
        const char *auth = strstr(ci, "://") + 3, *at, *last = NULL;
        n = strcspn(auth, "/");
        for (at = auth; (at = memchr(at, '@', (size_t)(auth + n - at))); at++)
            last = at;
        at = memchr(auth, '@', n);
        if (at && (p = memchr(auth, ':', (size_t)(at - auth))))
            add_uri_part(sp, p + 1, (size_t)(at - p - 1));
        if (last && (p = memchr(auth, ':', (size_t)(last - auth))))
            add_uri_part(sp, p + 1, (size_t)(last - p - 1));
        /* every query parameter after any '?' or '&' */
        for (p = ci; (p = strpbrk(p, "?&")); p++) {
            const char *kw = p + 1, *eq;
            char dk[64];
            size_t kl = strcspn(kw, "=&");
            if (kw[kl] != '=' || kl >= sizeof(dk))
                continue;
            eq = kw + kl;
            if (pct_decode(dk, kw, kl) == 8 && !memcmp(dk, "password", 8))
                add_uri_part(sp, eq + 1, strcspn(eq + 1, "&"));
        }
    }
    for (p = ci; (p = strstr(p, "password"));) {
        p += 8;
        q = p + strspn(p, " \t\n\r\f\v");
        if (*q != '=')
            continue;
        q++;
        q += strspn(q, " \t\n\r\f\v");
        if (*q == '\'') { /* up to the closing quote; \x escapes */
            char *u;
            size_t o = 0;
            for (n = 1; q[n] && q[n] != '\''; n++)
                if (q[n] == '\\' && q[n + 1])
                    n++;
            add(sp, q + 1, n - 1);
            if (!(u = malloc(n))) {
                sp->overflow = 1;
                continue;
            }
            for (size_t i = 1; i < n; i++) {
                if (q[i] == '\\' && i + 1 < n)
                    i++;
                u[o++] = q[i];
            }
            add(sp, u, o);
            explicit_bzero(u, n);
            free(u);
        } else {
            add_uri_part(sp, q, strcspn(q, " \t\n\r\f\v&"));
        }
    }
}

static void add_parsed(struct spellings *sp, const PQconninfoOption *opts)
{
    for (const PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val)
            add(sp, o->val, strlen(o->val));
}

static void free_spellings(struct spellings *sp)
{
    for (size_t i = 0; i < sp->n; i++) {
        explicit_bzero(sp->s[i], strlen(sp->s[i]));
        free(sp->s[i]);
    }
    sp->n = 0;
}

/* msg with every occurrence of every spelling replaced by "***" (overlapping ones as one
 * run), as one line into dst; masked before it is truncated, so no prefix of a password
 * survives. */
static void masked(char *dst, size_t len, const char *msg, const struct spellings *sp)
{
    size_t n, i, o = 0;
    char *hide, *out;

    if (!msg)
        msg = "";
    n = strlen(msg);
    hide = calloc(n + 1, 1);
    out = malloc(n * 3 + 1); /* "***" may be longer than a 1- or 2-byte password */
    if (sp->overflow || !hide || !out) {
        wl__copy(dst, len,
                 sp->overflow ? "(message withheld: it may quote a password)"
                              : "(message withheld: out of memory)");
        free(hide);
        free(out);
        return;
    }
    for (i = 0; i < sp->n; i++) {
        size_t l = strlen(sp->s[i]);
        const char *from = msg, *hit;
        while ((hit = memmem(from, (size_t)(msg + n - from), sp->s[i], l))) {
            memset(hide + (hit - msg), 1, l);
            from = hit + 1;
        }
    }
    for (i = 0; i < n; i++) {
        if (!hide[i])
            out[o++] = msg[i];
        else if (i == 0 || !hide[i - 1])
            memcpy(out + o, "***", 3), o += 3;
    }
    out[o] = '\0';
    wl__oneline(out);
    wl__copy(dst, len, out);
    explicit_bzero(out, n * 3 + 1);
    free(out);
    free(hide);
}

void wl__pg_conninfo_message(char *dst, size_t len, const char *msg, const char *conninfo)
{
    struct spellings sp = {{0}, 0, 0};
    PQconninfoOption *o;
    char *perr = NULL;

    if (!conninfo)
        conninfo = "";
    if (is_uri(conninfo)) {
        /* libpq ends user:password@ at the first '@': with another one, what follows it
         * (the rest of a password) is parsed as the host and may be quoted whole */
        const char *auth = strstr(conninfo, "://") + 3, *at = memchr(auth, '@', strcspn(auth, "/"));
        if (at && memchr(at + 1, '@', strcspn(at + 1, "/"))) {
            wl__copy(dst, len, AT_MESSAGE);
            return;
        }
    }
    find_spellings(conninfo, &sp);
    if ((o = PQconninfoParse(conninfo, &perr))) { /* what libpq itself parsed, when it can */
        add_parsed(&sp, o);
        PQconninfoFree(o);
    }
    PQfreemem(perr);
    masked(dst, len, msg, &sp);
    free_spellings(&sp);
}

void wl__pg_options_message(char *dst, size_t len, const char *msg,
                            const struct _PQconninfoOption *opts)
{
    struct spellings sp = {{0}, 0, 0};
    add_parsed(&sp, opts);
    masked(dst, len, msg, &sp);
    free_spellings(&sp);
}

/* ---------------------------------------------------------------- libpq's resolution */

/* The value of kw in opts, or NULL. */
static const char *val_of(const PQconninfoOption *opts, const char *kw)
{
    for (const PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, kw))
            return o->val;
    return NULL;
}

/* The secret a key is computed with: the passwords that apply, NUL-separated. */
struct secret {
    char *b;
    size_t n;
};

static void secret_free(struct secret *s)
{
    if (s->b) {
        explicit_bzero(s->b, s->n);
        free(s->b);
    }
    s->b = NULL;
    s->n = 0;
}

static int secret_add(struct secret *s, const char *pw, int sep)
{
    size_t l = strlen(pw), n = s->n + (sep ? 1 : 0) + l;
    char *b = malloc(n + 1);
    if (!b)
        return -ENOMEM;
    if (s->n)
        memcpy(b, s->b, s->n);
    if (sep)
        b[s->n] = '\0';
    memcpy(b + n - l, pw, l);
    b[n] = '\0';
    secret_free(s);
    s->b = b;
    s->n = n;
    return 0;
}

/* opts as the keyword and value arrays of PQconnectStartParams (every option with a value),
 * with `over` replacing or adding the given keywords (a NULL value removes one). 0 or
 * -ENOMEM. */
static int as_params(const PQconninfoOption *opts, const char *const over[][2], size_t nover,
                     const char ***kw, const char ***val)
{
    size_t n = 0, i = 0, k;
    const PQconninfoOption *o;

    for (o = opts; o->keyword; o++)
        n++;
    *kw = calloc(n + nover + 1, sizeof(char *));
    *val = calloc(n + nover + 1, sizeof(char *));
    if (!*kw || !*val) {
        free(*kw);
        free(*val);
        return -ENOMEM;
    }
    for (o = opts; o->keyword; o++) {
        for (k = 0; k < nover && strcmp(over[k][0], o->keyword); k++)
            ;
        if (k < nover || !o->val)
            continue;
        (*kw)[i] = o->keyword;
        (*val)[i++] = o->val;
    }
    for (k = 0; k < nover; k++) {
        if (!over[k][1])
            continue;
        (*kw)[i] = over[k][0];
        (*val)[i++] = over[k][1];
    }
    return 0;
}

/* Let libpq resolve opts without connecting. PQconnectStartParams runs conninfo_add_defaults
 * (the service file, then the environment, then compiled-in defaults) and connectOptions2
 * (the user and dbname defaults, the password file's entry for each host) before it
 * validates ssl_max_protocol_version; given an invalid one it stops there, before any
 * network I/O. The PGconn then holds the resolved options (PQconninfo) and the password of
 * its first host (PQpass). Returns the PGconn, or NULL with the error set. */
static PGconn *resolve_conn(const PQconninfoOption *opts, const char *const over[][2], size_t nover,
                            const char *conninfo, int *err, char *msg, size_t msglen)
{
    const char **kw, **val;
    const char *const stop[] = {"ssl_max_protocol_version", RESOLVE_ONLY};
    const char *o2[8][2];
    PGconn *c;
    size_t i;

    for (i = 0; i < nover && i < 7; i++)
        o2[i][0] = over[i][0], o2[i][1] = over[i][1];
    o2[i][0] = stop[0], o2[i][1] = stop[1];
    if (as_params(opts, (const char *const(*)[2])o2, i + 1, &kw, &val) < 0) {
        *err = -ENOMEM;
        wl__fmt(msg, msglen, "out of memory");
        return NULL;
    }
    c = PQconnectStartParams(kw, val, 0);
    free(kw);
    free(val);
    if (!c) {
        *err = -ENOMEM;
        wl__fmt(msg, msglen, "out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_BAD) {
        /* a libpq that does not validate the option before connecting */
        PQfinish(c);
        *err = -EINVAL;
        wl__fmt(msg, msglen,
                "this libpq cannot resolve a service or password file without "
                "connecting");
        return NULL;
    }
    if (!strstr(PQerrorMessage(c), RESOLVE_ONLY)) { /* an earlier option is invalid */
        char m[256];
        wl__pg_conninfo_message(m, sizeof(m), PQerrorMessage(c), conninfo);
        wl__fmt(msg, msglen, "invalid conninfo: %s", m);
        PQfinish(c);
        *err = -EINVAL;
        return NULL;
    }
    return c;
}

/* The i-th element of a comma-separated list of libpq's (no escapes), into buf. */
static const char *nth(const char *list, size_t i, char *buf, size_t len)
{
    size_t l;
    for (; i && list; i--)
        if ((list = strchr(list, ',')))
            list++;
    if (!list)
        return NULL;
    l = strcspn(list, ",");
    if (l >= len)
        l = len - 1;
    memcpy(buf, list, l);
    buf[l] = '\0';
    return buf;
}

static size_t count_elems(const char *list)
{
    size_t n = 1;
    if (!list || !*list)
        return 0;
    for (; (list = strchr(list, ',')); list++)
        n++;
    return n;
}

/* libpq's resolution of parsed: *out (PQconninfoFree it) and, if want_pw, the passwords
 * that apply into *sec (each host's, when they come from the password file and differ). */
static int resolve(const PQconninfoOption *parsed, const char *conninfo, int want_pw,
                   PQconninfoOption **out, struct secret *sec, char *msg, size_t msglen)
{
    const char *pw, *hosts, *addrs, *ports;
    size_t nh, i, first = 0;
    PGconn *c;
    int err = 0, same = 1;

    *out = NULL;
    if (!(c = resolve_conn(parsed, NULL, 0, conninfo, &err, msg, msglen)))
        return err;
    if (!(*out = PQconninfo(c))) {
        PQfinish(c);
        wl__fmt(msg, msglen, "out of memory");
        return -ENOMEM;
    }
    pw = PQpass(c);
    if (want_pw && pw && *pw && (err = secret_add(sec, pw, 0)) < 0)
        goto oom;
    PQfinish(c);
    pw = val_of(*out, "password");
    addrs = val_of(*out, "hostaddr");
    hosts = val_of(*out, "host");
    ports = val_of(*out, "port");
    nh = count_elems(addrs && *addrs ? addrs : hosts);
    if (!want_pw || (pw && *pw) || nh < 2)
        return 0;
    /* The password file, per host: libpq looks each host up on its own. One password for
     * all of them is digested alone, as for one host. */
    secret_free(sec);
    for (i = 0; i < nh; i++) {
        char h[256], a[256], p[32];
        const char *over[3][2] = {
            {"host", nth(hosts, i, h, sizeof(h))},
            {"hostaddr", addrs ? nth(addrs, i, a, sizeof(a)) : NULL},
            {"port", ports ? nth(ports, count_elems(ports) == 1 ? 0 : i, p, sizeof(p)) : NULL},
        };
        if (!(c = resolve_conn(*out, (const char *const(*)[2])over, 3, conninfo, &err, msg,
                               msglen))) {
            PQconninfoFree(*out);
            *out = NULL;
            secret_free(sec);
            return err;
        }
        pw = PQpass(c);
        if (!pw)
            pw = "";
        if (i == 0)
            first = strlen(pw);
        else if (first != strlen(pw) || memcmp(sec->b, pw, first))
            same = 0;
        if ((err = secret_add(sec, pw, i > 0)) < 0)
            goto oom;
        PQfinish(c);
    }
    if (same) {
        explicit_bzero(sec->b + first, sec->n - first);
        sec->n = first;
        if (!first)
            secret_free(sec);
    }
    return 0;
oom:
    PQfinish(c);
    PQconninfoFree(*out);
    *out = NULL;
    secret_free(sec);
    wl__fmt(msg, msglen, "out of memory");
    return -ENOMEM;
}

/* ---------------------------------------------------------------- the key */

/* Append s to the key, percent-encoding the separators in `special` (and '%'). */
static void put(char *buf, size_t len, size_t *n, const char *s, const char *special)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '%' || c < 0x20 || c == 0x7f || strchr(special, c)) {
            if (*n + 3 < len) {
                buf[(*n)++] = '%';
                buf[(*n)++] = hex[c >> 4];
                buf[(*n)++] = hex[c & 15];
            } else {
                *n = len; /* overflow: reported by the caller */
                return;
            }
        } else if (*n + 1 < len) {
            buf[(*n)++] = (char)c;
        } else {
            *n = len;
            return;
        }
    }
}

/* The value libpq would use: the conninfo's, else its environment variable's, else the
 * compiled-in default (each option record of PQconninfoParse names both; this is what
 * PQconndefaults does, without its cost). Options libpq resolved itself are taken as they
 * are. The user's fallback is the caller's. */
static const char *eff(const PQconninfoOption *opts, const char *kw, int resolved)
{
    const PQconninfoOption *o;
    const char *v;
    for (o = opts; o && o->keyword; o++) {
        if (strcmp(o->keyword, kw) != 0)
            continue;
        if (o->val && o->val[0])
            return o->val;
        if (resolved)
            return NULL;
        if (o->envvar && (v = getenv(o->envvar)) && v[0])
            return v;
        return o->compiled && o->compiled[0] ? o->compiled : NULL;
    }
    return NULL;
}

/* What selects the server and the session, besides user@host:port/dbname, in this order.
 * A value equal to libpq's default is left out, so spelling the default changes nothing.
 * (A service is resolved before the key is made, so it names no service.) */
static const struct {
    const char *kw, *dflt;
} key_extras[] = {
    {"hostaddr", NULL}, /* only when host is also given (else it is the host part) */
    {"options", NULL},     {"target_session_attrs", "any"},
    {"replication", NULL}, {"sslmode", "prefer"},
    {"sslcert", NULL},
};

/* The key of opts into buf (at most WL_PG_KEY_MAX - 1 bytes); its length or -ENAMETOOLONG. */
static int build(const PQconninfoOption *opts, int resolved, char *buf, size_t len)
{
    const char *user, *db, *host, *haddr, *port;
    char uname[256] = "";
    size_t n = 0, i;
    int extra = 0, haddr_extra;

    user = eff(opts, "user", resolved);
    if (!user) {
        struct passwd *pw = getpwuid(geteuid());
        wl__copy(uname, sizeof(uname), pw ? pw->pw_name : "");
        user = uname;
    }
    db = eff(opts, "dbname", resolved);
    if (!db)
        db = user; /* libpq: dbname defaults to the user name */
    host = eff(opts, "host", resolved);
    haddr = eff(opts, "hostaddr", resolved);
    /* The host part: host, else hostaddr, else libpq's default socket directory; hostaddr
     * is an extra only when both are given (host then names it, e.g. for TLS). */
    if (!host)
        host = haddr ? haddr : DEFAULT_SOCKET_DIR, haddr_extra = 0;
    else
        haddr_extra = haddr && strcmp(host, haddr) != 0;
    port = eff(opts, "port", resolved);
    if (!port)
        port = DEFAULT_PORT;

    put(buf, len, &n, user, "@:/?&=");
    put(buf, len, &n, "@", "");
    put(buf, len, &n, host, "@?&=:");
    put(buf, len, &n, ":", "");
    put(buf, len, &n, port, "/?&=");
    put(buf, len, &n, "/", "");
    put(buf, len, &n, db, "/?&=");
    for (i = 0; i < sizeof(key_extras) / sizeof(key_extras[0]); i++) {
        const char *v = eff(opts, key_extras[i].kw, resolved);
        if (!v)
            continue;
        if (!strcmp(key_extras[i].kw, "hostaddr") && !haddr_extra)
            continue;
        if (key_extras[i].dflt && !strcmp(v, key_extras[i].dflt))
            continue;
        put(buf, len, &n, extra++ ? "&" : "?", "");
        put(buf, len, &n, key_extras[i].kw, "");
        put(buf, len, &n, "=", "");
        put(buf, len, &n, v, "&=?");
    }
    if (n >= len)
        return -ENAMETOOLONG;
    buf[n] = '\0';
    return (int)n;
}

/* PQconninfoParse with its message masked; and a URI whose host holds an '@' is refused: libpq
 * ends user:password@ at the first '@', so the rest of a password holding a raw '@' would
 * become the host, and be kept in the key. */
static int parse(const char *conninfo, PQconninfoOption **out, char *msg, size_t msglen)
{
    char *perr = NULL, m[256];
    const char *h;
    int r;

    if (!(*out = PQconninfoParse(conninfo, &perr))) {
        wl__pg_conninfo_message(m, sizeof(m), perr ? perr : "out of memory", conninfo);
        wl__fmt(msg, msglen, "invalid conninfo: %s", m);
        r = perr ? -EINVAL : -ENOMEM;
        PQfreemem(perr);
        return r;
    }
    if (is_uri(conninfo) && (h = val_of(*out, "host")) && strchr(h, '@')) {
        PQconninfoFree(*out);
        *out = NULL;
        wl__fmt(msg, msglen, "invalid conninfo: %s", AT_MESSAGE);
        return -EINVAL;
    }
    return 0;
}

static int service_named(const PQconninfoOption *parsed)
{
    const char *s = val_of(parsed, "service"), *e = getenv("PGSERVICE");
    return (s && *s) || (e && *e);
}

/* Could a password file give the password? Only if the file libpq would read exists: the
 * passfile keyword's, else $PGPASSFILE, else .pgpass in the home directory, which libpq 15
 * and later take from $HOME when it is set and earlier ones always from the effective
 * user's passwd entry. libpq then decides what the file holds. */
static int passfile_exists(const PQconninfoOption *parsed)
{
    const char *pf = val_of(parsed, "passfile"), *home_env;
    char at_home[600];
    struct stat st;

    if (!pf || !*pf)
        pf = getenv("PGPASSFILE");
    if ((!pf || !*pf) && PQlibVersion() >= 150000 && (home_env = getenv("HOME")) && *home_env) {
        size_t hl = strlen(home_env);
        if (hl + sizeof("/.pgpass") > sizeof(at_home))
            return 1; /* not known: let libpq look */
        /* no printf on the ready path: a fresh worker would fault its code in */
        memcpy(at_home, home_env, hl);
        memcpy(at_home + hl, "/.pgpass", sizeof("/.pgpass"));
        pf = at_home;
    }
    if (!pf || !*pf) {
        /* the passwd lookup reads /etc/passwd: remembered per thread for its euid */
        static _Thread_local struct {
            int valid;
            uid_t uid;
            char path[512];
        } home;
        uid_t uid = geteuid();
        if (!home.valid || home.uid != uid) {
            struct passwd pwd, *res = NULL;
            char buf[1024];
            if (getpwuid_r(uid, &pwd, buf, sizeof(buf), &res) != 0 || !res ||
                strlen(res->pw_dir) + sizeof("/.pgpass") > sizeof(home.path))
                return 1; /* not known: let libpq look */
            wl__fmt(home.path, sizeof(home.path), "%s/.pgpass", res->pw_dir);
            home.uid = uid;
            home.valid = 1;
        }
        pf = home.path;
    }
    return stat(pf, &st) == 0;
}

/* The key of conninfo into buf; with seg, the password digest under seg's salt. With
 * keep, the parsed conninfo is handed over in *keep when the key was made from it alone
 * (NULL when libpq's resolution was needed); the caller frees it. */
static int make_key(struct wl_segment *seg, const char *conninfo, char *buf, size_t len,
                    PQconninfoOption **keep)
{
    PQconninfoOption *parsed, *res = NULL;
    struct secret sec = {NULL, 0};
    char key[WL_PG_KEY_MAX], msg[512];
    const char *pw, *env;
    int r, n;

    if (keep)
        *keep = NULL;
    if (!buf || len < 2)
        return -EINVAL;
    if (!conninfo)
        conninfo = "";
    if ((r = parse(conninfo, &parsed, msg, sizeof(msg))) < 0)
        goto out;
    pw = val_of(parsed, "password");
    if (seg && !pw && !service_named(parsed) && (env = getenv("PGPASSWORD")) && *env)
        pw = env; /* libpq's next source when the conninfo names none */
    /* libpq's own resolution when a service is named, or when the password may come from
     * the password file */
    if (service_named(parsed) || (seg && !(pw && *pw) && passfile_exists(parsed))) {
        r = resolve(parsed, conninfo, seg != NULL, &res, &sec, msg, sizeof(msg));
        PQconninfoFree(parsed);
        if (r < 0)
            goto out;
        n = build(res, 1, key, sizeof(key));
        for (PQconninfoOption *o = res; o->keyword; o++)
            if (!strcmp(o->keyword, "password") && o->val)
                explicit_bzero(o->val, strlen(o->val));
        PQconninfoFree(res);
    } else {
        if (seg && pw && *pw && (r = secret_add(&sec, pw, 0)) < 0) {
            PQconninfoFree(parsed);
            wl__fmt(msg, sizeof(msg), "out of memory");
            goto out;
        }
        n = build(parsed, 0, key, sizeof(key));
        if (keep)
            *keep = parsed;
        else
            PQconninfoFree(parsed);
    }
    if (n >= 0 && sec.n) {
        char tag[24];
        size_t l = (size_t)n;
        snprintf(tag, sizeof(tag), "%cpw=%016llx", strchr(key, '?') ? '&' : '?',
                 (unsigned long long)wl__siphash24(wl__segment_salt(seg), sec.b, sec.n));
        tag[12] = '\0'; /* "?pw=" and the digest's first 8 hex digits */
        if (l + 12 < sizeof(key)) {
            memcpy(key + l, tag, 13);
            n = (int)(l + 12);
        } else {
            n = -ENAMETOOLONG;
        }
    }
    secret_free(&sec);
    if (n < 0 || (size_t)n >= len) {
        if (keep && *keep) {
            PQconninfoFree(*keep);
            *keep = NULL;
        }
    }
    if (n < 0) {
        r = n;
        wl__fmt(msg, sizeof(msg), "key too long: longer than WL_PG_KEY_MAX - 1 (%d) bytes",
                WL_PG_KEY_MAX - 1);
        goto out;
    }
    if ((size_t)n >= len) {
        r = -ENAMETOOLONG;
        wl__fmt(msg, sizeof(msg), "key too long: %d bytes for a buffer of %zu", n, len);
        goto out;
    }
    memcpy(buf, key, (size_t)n + 1);
    return n;
out:
    wl__copy(buf, len, msg);
    return r;
}

WL_EXPORT int wl_pg_key(const char *conninfo, char *buf, size_t len)
{
    return make_key(NULL, conninfo, buf, len, NULL);
}

int wl__pg_slot_key_parsed(struct wl_segment *seg, const char *conninfo, char *buf, size_t len,
                           struct _PQconninfoOption **parsed)
{
    return make_key(seg, conninfo, buf, len, parsed);
}

WL_EXPORT int wl_pg_slot_key(struct wl_segment *seg, const char *conninfo, char *buf, size_t len)
{
    if (!seg) {
        if (buf && len)
            wl__copy(buf, len, "no segment");
        return -EINVAL;
    }
    return make_key(seg, conninfo, buf, len, NULL);
}
