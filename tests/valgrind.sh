#!/usr/bin/env bash
# Run the single-process suites under valgrind memcheck; fail on any memcheck error or
# definite leak, or on a failed case. Prints cmocka's output (for scripts/test to count the
# cases) and one summary line per suite.
#   tests/valgrind.sh [BUILDDIR] [SUITE...]   (BUILDDIR default build/, a normal, non-ASan
#                                              build; suites default: backoff ring format pg)
# Env: WL_VALGRIND_TIMEOUT (seconds per suite, default 300).
#
# Which cases: all of test_backoff, test_ring and test_format; test_pg's engine, key and
# classification cases, minus two left out and named in the output:
# - test_pg_ensure_herd_one_leader_through_crash_recovery: 32 processes (multi-process
#   suites run in the ASan+UBSan build: ThreadSanitizer cannot follow locks held in shared memory by other processes);
# - test_pg_probe_wrong_password_fails_fast_with_28P01: asserts < 1 s, and libpq's client
#   side of SCRAM (4096 PBKDF2 rounds) alone takes longer under valgrind. The 28P01 path
#   still runs here in test_pg_connect_invalidates_a_stale_epoch_and_reconnects and
#   test_pg_ensure_publishes_auth_failure_to_followers;
# - test_pg_target_ready_path_makes_no_syscall: runs the ready path under seccomp strict
#   mode, where valgrind's own syscalls kill the process (the normal and ASan builds run it).
# Cases are picked without touching the suites: a preloaded shim wraps cmocka's
# _cmocka_run_group_tests and keeps the cases matching $WL_TEST_ONLY and not $WL_TEST_SKIP
# (comma-separated globs).
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
me=tests/valgrind.sh

bdir=build
if [ $# -gt 0 ] && [ -d "$1" ]; then bdir=$1; shift; fi
case "$bdir" in /*) ;; *) bdir=$root/$bdir ;; esac
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(backoff ring format pg)
timeout_s=${WL_VALGRIND_TIMEOUT:-300}

declare -A skip=(
  [pg]='test_pg_ensure_herd_one_leader_through_crash_recovery,test_pg_probe_wrong_password_fails_fast_with_28P01,test_pg_target_ready_path_makes_no_syscall'
)

if ! command -v valgrind >/dev/null 2>&1; then
  echo "$me: valgrind not found; run scripts/setup" >&2
  exit 2
fi
for s in "${suites[@]}"; do
  if [ ! -x "$bdir/tests/test_$s" ]; then
    echo "$me: $bdir/tests/test_$s not built (build with: meson setup $bdir && ninja -C $bdir)" >&2
    exit 2
  fi
done
if [ -f "$bdir/build.ninja" ] && grep -q -- '-fsanitize' "$bdir/build.ninja"; then
  echo "$me: $bdir is a sanitizer build; valgrind needs a normal one" >&2
  exit 2
fi

# The case filter, preloaded into each suite.
work=$(mktemp -d /tmp/wlvalgrind.XXXXXX)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
cat >"$work/filter.c" <<'EOF'
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <dlfcn.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Children the suites exec (the PostgreSQL harness's programs, some as another user)
 * must not load this: drop it from LD_PRELOAD once loaded into a suite. */
__attribute__((constructor)) static void unpreload(void)
{
    const char *pre = getenv("LD_PRELOAD");
    char *copy, *out, *save = NULL, *tok;
    /* Not in valgrind's launcher (no cmocka there): it must pass it on to the suite. */
    if (!dlsym(RTLD_NEXT, "_cmocka_run_group_tests"))
        return;
    if (!pre || !(copy = strdup(pre)) || !(out = calloc(1, strlen(pre) + 1)))
        return;
    for (tok = strtok_r(copy, ": ", &save); tok; tok = strtok_r(NULL, ": ", &save)) {
        size_t n = strlen(tok), k = strlen("/wl-test-filter.so");
        if (n >= k && !strcmp(tok + n - k, "/wl-test-filter.so"))
            continue;
        if (*out)
            strcat(out, ":");
        strcat(out, tok);
    }
    if (*out)
        setenv("LD_PRELOAD", out, 1);
    else
        unsetenv("LD_PRELOAD");
    free(copy);
    free(out);
}

typedef int (*run_fn)(const char *, const struct CMUnitTest *, size_t, CMFixtureFunction,
                      CMFixtureFunction);

static int listed(const char *name, const char *list)
{
    char *copy = strdup(list), *save = NULL, *pat;
    int hit = 0;
    for (pat = strtok_r(copy, ",", &save); pat && !hit; pat = strtok_r(NULL, ",", &save))
        hit = fnmatch(pat, name, 0) == 0;
    free(copy);
    return hit;
}

int _cmocka_run_group_tests(const char *group, const struct CMUnitTest *tests, size_t n,
                            CMFixtureFunction setup, CMFixtureFunction teardown)
{
    run_fn real = (run_fn)dlsym(RTLD_NEXT, "_cmocka_run_group_tests");
    const char *only = getenv("WL_TEST_ONLY"), *skip = getenv("WL_TEST_SKIP");
    struct CMUnitTest *keep = calloc(n ? n : 1, sizeof(*keep));
    size_t i, m = 0;
    int r;

    if (!real || !keep)
        return 255;
    for (i = 0; i < n; i++) {
        if ((only && *only && !listed(tests[i].name, only)) ||
            (skip && *skip && listed(tests[i].name, skip)))
            printf("# valgrind: left out %s\n", tests[i].name);
        else
            keep[m++] = tests[i];
    }
    fflush(stdout);
    r = real(group, keep, m, setup, teardown);
    free(keep);
    return r;
}
EOF
if ! cc -shared -fPIC -O1 -Wall -Wextra -Werror -o "$work/wl-test-filter.so" "$work/filter.c" -ldl 2>"$work/cc.log"; then
  cat "$work/cc.log" >&2
  echo "$me: cannot build the case filter" >&2
  exit 2
fi

status=0
t_all=$(date +%s)
for s in "${suites[@]}"; do
  mkdir -p "$work/$s"
  echo "== valgrind/$s"
  t0=$(date +%s)
  # Each process (forked children too) logs to its own file, so cmocka's output stays clean.
  WL_TEST_SKIP=${skip[$s]:-} LD_PRELOAD=$work/wl-test-filter.so \
    timeout "$timeout_s" valgrind --error-exitcode=99 --leak-check=full \
      --errors-for-leak-kinds=definite --track-fds=no --log-file="$work/$s/vg.%p.log" \
      "$bdir/tests/test_$s" 2>&1
  rc=$?
  secs=$(($(date +%s) - t0))
  errors=0 procs=0
  for f in "$work/$s"/vg.*.log; do
    [ -f "$f" ] || continue
    procs=$((procs + 1))
    e=$(awk '/ERROR SUMMARY:/ { n = $4 } END { print n + 0 }' "$f")
    if [ "$e" -gt 0 ]; then
      errors=$((errors + e))
      echo "---- $f"
      cat "$f"
    fi
  done
  if [ "$rc" -eq 124 ]; then
    echo "valgrind/$s: TIMEOUT after ${timeout_s} s"
    status=1
  elif [ "$errors" -gt 0 ] || [ "$rc" -eq 99 ]; then
    echo "valgrind/$s: $errors memcheck error(s) in $procs process(es), $secs s (exit $rc)"
    status=1
  elif [ "$rc" -ne 0 ]; then
    echo "valgrind/$s: 0 memcheck errors in $procs process(es), but the suite failed (exit $rc), $secs s"
    status=1
  else
    echo "valgrind/$s: 0 memcheck errors, 0 definite leaks in $procs process(es), $secs s"
  fi
done
echo "valgrind: ${#suites[@]} suite(s) in $(($(date +%s) - t_all)) s"
exit "$status"
