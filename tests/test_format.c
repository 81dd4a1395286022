/* coordinator/common.c: the status table, JSON, Prometheus text, logfmt, option and file
 * parsing, notifications. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "coordinator/common.h"
#include "proc.h"
#include "warmlock.h"

static char *render(int (*fn)(FILE *, const struct wl_slot_info *, size_t),
                    const struct wl_slot_info *s, size_t n)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    assert_int_equal(fn(f, s, n), 0);
    fclose(f);
    return buf;
}

/* Write len bytes of text into a new temporary file; its name into path. */
static void temp_file(char *path, size_t size, const char *base, const char *text, size_t len)
{
    int fd;
    snprintf(path, size, "/tmp/%s.XXXXXX", base);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_true(write(fd, text, len) == (ssize_t)len);
    close(fd);
}

static int fmt_json(FILE *f, const struct wl_slot_info *s, size_t n)
{
    return wlc_format_json(f, "/seg", s, n);
}

static int fmt_prom(FILE *f, const struct wl_slot_info *s, size_t n)
{
    return wlc_format_prometheus(f, "/seg", s, n);
}

static char *render_json(const struct wl_slot_info *s, size_t n)
{
    return render(fmt_json, s, n);
}

static char *render_prom(const struct wl_slot_info *s, size_t n)
{
    return render(fmt_prom, s, n);
}

/* Three slots: a nasty key (quote, backslash, newline, tab, invalid UTF-8), UTF-8, plain. */
static void nasty(struct wl_slot_info s[3])
{
    memset(s, 0, 3 * sizeof(*s));
    snprintf(s[0].key, sizeof(s[0].key), "host=/tmp/a\"b\\c\nd\te dbname=\xff\xfe");
    s[0].state = WL_FAILED;
    s[0].leader_pid = 42;
    s[0].failures = 3;
    s[0].last_code = -ECONNREFUSED;
    snprintf(s[0].last_error, sizeof(s[0].last_error), "connection failed\n\tIs it \"up\"?\n");
    snprintf(s[0].sqlstate, sizeof(s[0].sqlstate), "08006");
    s[0].ready_age_ms = s[0].time_to_ready_ms = -1;
    snprintf(s[1].key, sizeof(s[1].key), "host=h port=1 dbname=\xc3\xa9t\xc3\xa9");
    s[1].state = WL_READY;
    s[1].epoch = 7;
    s[1].warmups = 2;
    s[1].ready_age_ms = 1234;
    s[1].time_to_ready_ms = 56;
    s[1].wait_hist[2] = 4;
    s[1].wait_count = 4;
    s[1].wait_sum_ns = 9000000;
    snprintf(s[2].key, sizeof(s[2].key), "k");
    s[2].ready_age_ms = s[2].time_to_ready_ms = -1;
}

static void test_json_is_valid_and_round_trips_keys(void **state)
{
    struct wl_slot_info s[3];
    char *json, path[64];
    FILE *f;

    nasty(s);
    json = render_json(s, 3);
    temp_file(path, sizeof(path), "wltest-format", json, strlen(json));
    if (system("command -v python3 >/dev/null 2>&1") != 0) {
        unlink(path);
        free(json);
        print_message("skipped: no python3 to parse the JSON\n");
        skip();
    }
    /* A real parser: every field, the exact keys, null for "never". */
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "python3 -c 'import json,sys\n"
             "d = json.load(open(sys.argv[1], encoding=\"utf-8\"))\n"
             "s = d[\"slots\"]\n"
             "assert d[\"segment\"] == \"/seg\" and len(s) == 3\n"
             "for x in s:\n"
             "    for k in (\"key\", \"state\", \"epoch\", \"leader_pid\", \"waiters\", "
             "\"warmups\", \"takeovers\", \"attempts\", \"failures\", \"last_error\", "
             "\"sqlstate\", \"ready_age_ms\", \"time_to_ready_ms\"):\n"
             "        assert k in x, k\n"
             "assert s[0][\"key\"] == \"host=/tmp/a\\\"b\\\\c\\nd\\te dbname=\\ufffd\\ufffd\", "
             "s[0][\"key\"]\n"
             "assert s[0][\"state\"] == \"failed\" and s[0][\"sqlstate\"] == \"08006\"\n"
             "assert s[0][\"ready_age_ms\"] is None\n"
             "assert s[1][\"key\"] == \"host=h port=1 dbname=\\u00e9t\\u00e9\"\n"
             "assert s[1][\"ready_age_ms\"] == 1234 and s[1][\"epoch\"] == 7\n"
             "assert sum(b[\"count\"] for b in s[1][\"wait_hist\"]) == 4\n"
             "' %s",
             path);
    f = popen(cmd, "r");
    assert_non_null(f);
    assert_int_equal(pclose(f), 0);
    unlink(path);
    free(json);

    json = render_json(NULL, 0);
    assert_string_equal(json, "{\"segment\": \"/seg\", \"slots\": []}\n");
    free(json);
    (void)state;
}

static void test_table_has_one_line_per_slot_and_every_column(void **state)
{
    struct wl_slot_info s[3];
    char *t;

    nasty(s);
    t = render(wlc_format_table, s, 3);
    {
        int lines = 0;
        for (char *p = t; *p; p++)
            lines += *p == '\n';
        assert_int_equal(lines, 4);
    }
    for (const char *c = "KEY STATE EPOCH LEADER WAITERS WARMUPS TAKEOVERS ATTEMPTS FAILURES "
                         "READY_AGE TTR DOWN SQLSTATE LAST_ERROR";
         *c;) {
        char col[16];
        size_t n = strcspn(c, " ");
        snprintf(col, sizeof(col), "%.*s", (int)n, c);
        assert_non_null(strstr(t, col));
        c += n + (c[n] == ' ');
    }
    assert_non_null(strstr(t, "failed"));
    assert_non_null(strstr(t, "1234ms"));
    assert_non_null(strstr(t, "08006"));
    free(t);
    (void)state;
}

static void test_parse_seconds_modes_and_numbers(void **state)
{
    uint32_t ms;
    mode_t m;
    unsigned long u;

    assert_int_equal(wlc_parse_seconds("2", 1, 100000, &ms), 0);
    assert_int_equal(ms, 2000);
    assert_int_equal(wlc_parse_seconds("0.5", 1, 100000, &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(wlc_parse_seconds("1.25s", 1, 100000, &ms), 0);
    assert_int_equal(ms, 1250);
    assert_int_equal(wlc_parse_seconds(".1", 1, 100000, &ms), 0);
    assert_int_equal(ms, 100);
    assert_int_equal(wlc_parse_seconds("0", 1, 100000, &ms), -ERANGE);
    assert_int_equal(wlc_parse_seconds("0.0001", 1, 100000, &ms), -ERANGE);
    assert_int_equal(wlc_parse_seconds("101", 1, 100000, &ms), -ERANGE);
    assert_int_equal(wlc_parse_seconds("99999999999", 1, 100000, &ms), -ERANGE);
    const char *bad[] = {"", "s", ".", "abc", "-1", "1e3", "1.2.3", "2 s", "2m", " 2"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (wlc_parse_seconds(bad[i], 1, 100000, &ms) != -EINVAL)
            fail_msg("'%s' was accepted as a duration", bad[i]);

    assert_int_equal(wlc_parse_mode("0660", &m), 0);
    assert_int_equal(m, 0660);
    assert_int_equal(wlc_parse_mode("600", &m), 0);
    assert_int_equal(m, 0600);
    assert_true(wlc_parse_mode("999", &m) < 0);
    assert_true(wlc_parse_mode("1777", &m) < 0);
    assert_true(wlc_parse_mode("", &m) < 0);
    assert_true(wlc_parse_mode("0o660", &m) < 0);

    assert_int_equal(wlc_parse_uint("17", 100, &u), 0);
    assert_int_equal(u, 17);
    assert_true(wlc_parse_uint("-1", 100, &u) < 0);
    assert_true(wlc_parse_uint("101", 100, &u) < 0);
    assert_true(wlc_parse_uint("1x", 100, &u) < 0);
    (void)state;
}

static void test_oneline_collapses_whitespace(void **state)
{
    char a[] = "  connection failed:\n\tIs the server   running?\n";
    char b[] = "";
    assert_string_equal(wlc_oneline(a), "connection failed: Is the server running?");
    assert_string_equal(wlc_oneline(b), "");
    (void)state;
}

static void test_logfmt_quotes_and_escapes_values(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);

    wlc_logfmt(f, "warn", "host=/run/pg dbname=app", "check failed", "error",
               "server said \"no\"\nbye", "epoch", "3", "skipped", (const char *)NULL, "empty",
               "", (const char *)NULL);
    fclose(f);
    assert_int_equal(strncmp(buf, "ts=", 3), 0);
    assert_non_null(strstr(buf, " level=warn target=\"host=/run/pg dbname=app\" "
                                "msg=\"check failed\" error=\"server said \\\"no\\\"\\nbye\" "
                                "epoch=3 empty=\"\"\n"));
    assert_null(strstr(buf, "skipped"));
    assert_int_equal(strchr(buf, '\n') - buf + 1, (long)strlen(buf)); /* one line */
    free(buf);
    (void)state;
}

static void test_targets_file_skips_comments_and_blanks(void **state)
{
    char path[64], err[256], **v;
    size_t n;
    const char text[] = "# targets\n\n  host=/run/pg dbname=app  \r\n\t# indented comment\n"
                        "postgresql://u@db/app?sslmode=disable\nlast-without-newline";

    temp_file(path, sizeof(path), "wltest-targets", text, sizeof(text) - 1);
    assert_int_equal(wlc_read_targets(path, &v, &n, err, sizeof(err)), 0);
    assert_int_equal(n, 3);
    assert_string_equal(v[0], "host=/run/pg dbname=app");
    assert_string_equal(v[1], "postgresql://u@db/app?sslmode=disable");
    assert_string_equal(v[2], "last-without-newline");
    wlc_free_lines(v, n);
    unlink(path);
    assert_int_equal(wlc_read_targets(path, &v, &n, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
    (void)state;
}


/* A '#' after a target starts a comment and the target stays; a '#' inside a word or a
 * quoted value belongs to it. */
static void test_targets_file_comment_after_a_target_keeps_the_target(void **state)
{
    char path[64], err[256], **v;
    size_t n;
    const char text[] = "host=/run/pg dbname=app # the primary\n"
                        "host=/run/b dbname=b\t# tab before it\n"
                        "host=/run/c password='se #cret' dbname=c # quoted '#' kept\n"
                        "host=/run/d password=a#b dbname=d\n"
                        "postgresql://u@db/app#frag   # fragment kept, comment dropped\n"
                        "   # only a comment\n";

    temp_file(path, sizeof(path), "wltest-targets", text, sizeof(text) - 1);
    assert_int_equal(wlc_read_targets(path, &v, &n, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(n, 5);
    assert_string_equal(v[0], "host=/run/pg dbname=app");
    assert_string_equal(v[1], "host=/run/b dbname=b");
    assert_string_equal(v[2], "host=/run/c password='se #cret' dbname=c");
    assert_string_equal(v[3], "host=/run/d password=a#b dbname=d");
    assert_string_equal(v[4], "postgresql://u@db/app#frag");
    wlc_free_lines(v, n);
    (void)state;
}

/* A directory where a file belongs says so (not "Input/output error"). */
static void test_read_file_of_a_directory_says_so(void **state)
{
    char err[256], *text, **v;
    size_t n;
    assert_int_equal(wlc_read_file("/tmp", &text, err, sizeof(err)), -EISDIR);
    assert_non_null(strstr(err, "/tmp: it is a directory"));
    assert_int_equal(wlc_read_targets("/tmp", &v, &n, err, sizeof(err)), -EISDIR);
    assert_non_null(strstr(err, "is a directory"));
    (void)state;
}


/* Label values use only \\, \" and \n; every other control character is replaced, and the
 * key then carries its hash, as does one cut at WL_KEY_MAX, so no two slots share a series
 * (the end-to-end check with a strict parser is in test_cli). */
static void test_prometheus_labels_escape_only_what_the_format_allows(void **state)
{
    static struct wl_slot_info s[6];
    const char *keys[] = {"cr\rhere", "cr\there", "cr\x01here", "q\"b\\n\nx"};
    char *out, *p;
    size_t i;

    memset(s, 0, sizeof(s));
    for (i = 0; i < 4; i++) {
        snprintf(s[i].key, sizeof(s[i].key), "%s", keys[i]);
        s[i].key_len = (uint32_t)strlen(keys[i]);
        s[i].key_hash = 0x1111 * (i + 1);
        s[i].ready_age_ms = s[i].time_to_ready_ms = s[i].down_ms = -1;
    }
    for (i = 4; i < 6; i++) { /* two keys of 450 bytes, cut to the same 400 */
        memset(s[i].key, 'k', WL_KEY_MAX);
        s[i].key[WL_KEY_MAX] = '\0';
        s[i].key_len = 450;
        s[i].key_hash = 0xabc0 + i;
        s[i].ready_age_ms = s[i].time_to_ready_ms = s[i].down_ms = -1;
    }
    out = render_prom(s, 6);
    for (p = out; (p = strchr(p, '\\')); p += 2)
        assert_non_null(strchr("\\\"n", p[1]));
    for (p = out; *p; p++)
        assert_false((unsigned char)*p < 0x20 && *p != '\n');
    assert_non_null(strstr(out, "warmlock_epoch{key=\"cr\xef\xbf\xbdhere#0000000000001111\"} 0"));
    assert_non_null(strstr(out, "warmlock_epoch{key=\"cr\xef\xbf\xbdhere#0000000000002222\"} 0"));
    assert_non_null(strstr(out, "warmlock_epoch{key=\"q\\\"b\\\\n\\nx#0000000000004444\"} 0"));
    assert_non_null(strstr(out, "kkkk#000000000000abc4\"} 0"));
    assert_non_null(strstr(out, "kkkk#000000000000abc5\"} 0"));
    free(out);
    (void)state;
}

/* down_ms: a table column, a JSON number (null when not down), a gauge in seconds. */
static void test_down_ms_shows_in_table_json_and_metrics(void **state)
{
    struct wl_slot_info s[2];
    char *t;

    memset(s, 0, sizeof(s));
    snprintf(s[0].key, sizeof(s[0].key), "down");
    snprintf(s[1].key, sizeof(s[1].key), "up");
    s[0].state = WL_WARMING;
    s[0].down_ms = 1500;
    s[1].state = WL_READY;
    s[0].ready_age_ms = s[0].time_to_ready_ms = s[1].down_ms = -1;
    s[1].ready_age_ms = 5;
    s[1].time_to_ready_ms = 7;
    t = render(wlc_format_table, s, 2);
    assert_non_null(strstr(t, " DOWN "));
    assert_non_null(strstr(t, "1500ms"));
    free(t);
    t = render_json(s, 2);
    assert_non_null(strstr(t, "\"down_ms\": 1500,"));
    assert_non_null(strstr(t, "\"down_ms\": null,"));
    free(t);
    t = render_prom(s, 2);
    assert_non_null(strstr(t, "# TYPE warmlock_down_seconds gauge\n"));
    assert_non_null(strstr(t, "warmlock_down_seconds{key=\"down\"} 1.500\n"));
    assert_null(strstr(t, "warmlock_down_seconds{key=\"up\"}"));
    free(t);
    (void)state;
}

static void test_sd_notify_sends_to_path_and_abstract_sockets(void **state)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    char buf[64], name[64];
    int s;
    ssize_t n;

    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(wlc_sd_notify("READY=1"), 1);

    /* a path */
    snprintf(sa.sun_path, sizeof(sa.sun_path), "/tmp/wltest-notify.%d", (int)getpid());
    unlink(sa.sun_path);
    s = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    setenv("NOTIFY_SOCKET", sa.sun_path, 1);
    assert_int_equal(wlc_sd_notify("READY=1"), 0);
    n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_int_equal(n, 7);
    buf[n] = '\0';
    assert_string_equal(buf, "READY=1");
    close(s);
    unlink(sa.sun_path);

    /* the abstract namespace ("@name") */
    snprintf(name, sizeof(name), "wltest-notify-%d", (int)getpid());
    memset(sa.sun_path, 0, sizeof(sa.sun_path));
    memcpy(sa.sun_path + 1, name, strlen(name));
    s = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_int_equal(bind(s, (struct sockaddr *)&sa,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
                     0);
    snprintf(buf, sizeof(buf), "@%s", name);
    setenv("NOTIFY_SOCKET", buf, 1);
    assert_int_equal(wlc_sd_notify("STOPPING=1"), 0);
    n = recv(s, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_int_equal(n, 10);
    close(s);

    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(wlc_sd_notify("READY=1"), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
    (void)state;
}

static void test_notify_fd_writes_a_newline_and_closes(void **state)
{
    int p[2];
    char c;
    assert_int_equal(pipe(p), 0);
    assert_int_equal(wlc_notify_fd(p[1]), 0);
    assert_int_equal(read(p[0], &c, 1), 1);
    assert_int_equal(c, '\n');
    assert_int_equal(read(p[0], &c, 1), 0); /* closed */
    close(p[0]);
    (void)state;
}

static int warm_ok(void *arg, struct wl_result *res)
{
    (void)arg;
    (void)res;
    return 0;
}

static void test_snapshot_all_finds_every_slot(void **state)
{
    const char *name = wlt_segname();
    struct wl_segment *seg;
    struct wl_slot_info *s;
    char key[32];
    int i, n;

    wl_unlink(name);
    assert_int_equal(wl_open(name, NULL, &seg), 0);
    n = wlc_snapshot_all(seg, &s);
    assert_int_equal(n, 0);
    free(s);
    for (i = 0; i < 20; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        assert_int_equal(wl_ensure(seg, key, warm_ok, NULL, NULL, NULL), 0);
    }
    n = wlc_snapshot_all(seg, &s);
    assert_int_equal(n, 20);
    assert_true(wlc_find_slot(s, (size_t)n, "key-13") >= 0);
    assert_int_equal(s[wlc_find_slot(s, (size_t)n, "key-13")].state, WL_READY);
    assert_int_equal(wlc_find_slot(s, (size_t)n, "key-99"), -ENOENT);
    free(s);
    wl_close(seg);
    wl_unlink(name);
    (void)state;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_is_valid_and_round_trips_keys),
        cmocka_unit_test(test_table_has_one_line_per_slot_and_every_column),
        cmocka_unit_test(test_parse_seconds_modes_and_numbers),
        cmocka_unit_test(test_oneline_collapses_whitespace),
        cmocka_unit_test(test_logfmt_quotes_and_escapes_values),
        cmocka_unit_test(test_targets_file_skips_comments_and_blanks),
        cmocka_unit_test(test_targets_file_comment_after_a_target_keeps_the_target),
        cmocka_unit_test(test_read_file_of_a_directory_says_so),
        cmocka_unit_test(test_prometheus_labels_escape_only_what_the_format_allows),
        cmocka_unit_test(test_down_ms_shows_in_table_json_and_metrics),
        cmocka_unit_test(test_sd_notify_sends_to_path_and_abstract_sockets),
        cmocka_unit_test(test_notify_fd_writes_a_newline_and_closes),
        cmocka_unit_test(test_snapshot_all_finds_every_slot),
    };
    return cmocka_run_group_tests_name("format", tests, NULL, NULL);
}
