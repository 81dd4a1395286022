/*
 * wl-node-pghelper: the test harness's throwaway PostgreSQL (tests/harness/pgharness.h),
 * driven one command per line on stdin, for the node tests. Each command answers one line
 * on stdout: "ok [VALUE]" or "err MESSAGE" (the harness's own diagnostics go to stderr).
 *
 *   unavailable        ok (PostgreSQL can run here) or "err <why not>"
 *   init [scram PW]    a new cluster; ok <socket conninfo>
 *   start | start0     start it, waiting for it to accept connections (start0: not waiting)
 *   held               start it held in recovery (every connection refused with 57P03)
 *   release            end the hold and wait until it is ready
 *   crash [ROWS]       write WAL and stop it immediately (the next start replays)
 *   stop               stop it (fast)
 *   up                 started, released, past recovery
 *   mark               ok <log offset>
 *   wait57 MARK N MS   wait until N connections after MARK were refused with 57P03
 *   readyns MARK       ok <CLOCK_REALTIME ns of the first "ready" line after MARK, or 0>
 *   port               ok <TCP port>
 *   sql SQL...         run one SQL command with psql
 *   quit               stop and remove everything, then exit (also on end of input)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgharness.h"

static struct pgh h;
static int have;

static void answer(int ok, const char *value)
{
    printf("%s%s%s\n", ok ? "ok" : "err", value && *value ? " " : "", value ? value : "");
    fflush(stdout);
}

static void result(int r, const char *what)
{
    answer(r == 0, r == 0 ? NULL : what);
}

int main(void)
{
    char line[4096], out[256];

    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        char *cmd, *arg, *save = NULL;
        line[strcspn(line, "\n")] = '\0';
        if (!(cmd = strtok_r(line, " ", &save)))
            continue;
        arg = strtok_r(NULL, "", &save);
        if (!strcmp(cmd, "unavailable")) {
            const char *why = pgh_unavailable();
            answer(!why, why);
        } else if (!strcmp(cmd, "init")) {
            const char *pw = arg && !strncmp(arg, "scram ", 6) ? arg + 6 : NULL;
            if (have)
                pgh_destroy(&h);
            memset(&h, 0, sizeof(h));
            have = pgh_init(&h, pw ? "scram" : "trust", pw, NULL) == 0;
            answer(have, have ? h.conninfo : "pgh_init failed");
        } else if (!strcmp(cmd, "quit")) {
            break;
        } else if (!have) {
            answer(0, "no cluster (init first)");
        } else if (!strcmp(cmd, "start")) {
            result(pgh_start(&h, 1), "pgh_start failed");
        } else if (!strcmp(cmd, "start0")) {
            result(pgh_start(&h, 0), "pgh_start failed");
        } else if (!strcmp(cmd, "held")) {
            result(pgh_start_held(&h), "pgh_start_held failed");
        } else if (!strcmp(cmd, "release")) {
            result(pgh_release(&h, 1), "pgh_release failed");
        } else if (!strcmp(cmd, "crash")) {
            result(arg ? pgh_crash_rows(&h, atol(arg)) : pgh_crash(&h), "pgh_crash failed");
        } else if (!strcmp(cmd, "stop")) {
            result(pgh_stop(&h, "fast"), "pgh_stop failed");
        } else if (!strcmp(cmd, "up")) {
            result(pgh_up(&h), "pgh_up failed");
        } else if (!strcmp(cmd, "mark")) {
            snprintf(out, sizeof(out), "%ld", pgh_log_mark(&h));
            answer(1, out);
        } else if (!strcmp(cmd, "wait57")) {
            long mark = 0;
            int n = 1, ms = 60000;
            if (arg)
                sscanf(arg, "%ld %d %d", &mark, &n, &ms);
            result(pgh_wait_57P03_since(&h, mark, n, ms), "no 57P03 refusals in time");
        } else if (!strcmp(cmd, "readyns")) {
            snprintf(out, sizeof(out), "%lld", pgh_log_ready_realtime_ns(&h, arg ? atol(arg) : 0));
            answer(1, out);
        } else if (!strcmp(cmd, "port")) {
            snprintf(out, sizeof(out), "%d", h.port);
            answer(1, out);
        } else if (!strcmp(cmd, "sql")) {
            result(arg ? pgh_psql(&h, arg) : -1, "psql failed");
        } else {
            answer(0, "unknown command");
        }
    }
    if (have)
        pgh_destroy(&h);
    answer(1, "bye");
    return 0;
}
