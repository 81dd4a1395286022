#!/usr/bin/env bash
# What a new user builds: the installed package (meson install into a scratch DESTDIR) and
# every C block of README.md, compiled and linked against it with nothing but
# `pkg-config --cflags --libs warmlock`, with -Wall -Wextra -Werror.
#
# README.md's C blocks (```c ... ```):
#   - a block that starts with `#include` is a translation unit: with `int main(` a program,
#     compiled and linked; else compiled to an object;
#   - any other block is a few statements of an example: it is compiled as the body of a
#     function that has `struct wl_segment *seg` and `struct wl_result res` at hand, after
#     <errno.h>, <stdio.h>, <stdlib.h>, <string.h> and <warmlock/pg.h>.
# Then a program that calls PQexec on wl_pg_connect's connection, and links with the same
# flags (libpq must come with warmlock.pc: pg.h returns PGconn *).
#
# Usage: tests/docs_build.sh [BUILD_DIR]   (default build). Exit 0 passed, 1 failed,
# 77 skipped (no compiler or pkg-config).
set -u
cd "$(dirname "$0")/.."
build=${1:-build}
cc=${CC:-cc}
command -v "$cc" >/dev/null || { echo "skipped: no C compiler ($cc)"; exit 77; }
command -v pkg-config >/dev/null || { echo "skipped: no pkg-config"; exit 77; }
[ -f "$build/build.ninja" ] || { echo "docs_build: $build is not a meson build directory"; exit 1; }

tmp=$(mktemp -d /tmp/wl-docs.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fails=$((fails + 1)); }

# ---- the package, installed as a user would install it
if ! meson install -C "$build" --no-rebuild --destdir "$tmp/root" >"$tmp/install.log" 2>&1; then
  tail -20 "$tmp/install.log"
  echo "docs_build: meson install failed"
  exit 1
fi
prefix=$(meson introspect "$build" --buildoptions |
  python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
pcfile=$(find "$tmp/root" -name warmlock.pc | head -1)
[ -n "$pcfile" ] || { echo "FAIL warmlock.pc was not installed"; exit 1; }
# The installed file, its prefix moved into the DESTDIR (--define-variable would move
# libpq's too); everything else as installed.
mkdir -p "$tmp/pc"
sed "s|^prefix=.*|prefix=$tmp/root$prefix|" "$pcfile" >"$tmp/pc/warmlock.pc"
pc() { PKG_CONFIG_PATH="$tmp/pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" pkg-config "$@" warmlock; }
if pc --exists; then ok "warmlock.pc installed ($pcfile)"; else bad "pkg-config cannot use $pcfile"; exit 1; fi
# libpq is public: pg.h includes libpq-fe.h and returns PGconn *
if grep -Eq '^Requires:.*\blibpq\b' "$pcfile"; then ok "warmlock.pc: libpq in Requires"
else bad "warmlock.pc: libpq is not in Requires (a program calling PQexec would not link)"; fi
read -r -a cflags <<<"$(pc --cflags)"
read -r -a libs <<<"$(pc --libs)"
libdir=$(pc --variable=libdir)
warn=(-std=c11 -Wall -Wextra -Werror)

build_one() { # label, source, link(0/1)
  local label=$1 src=$2 link=$3 out
  if [ "$link" -eq 1 ]; then
    out=$("$cc" "${warn[@]}" "${cflags[@]}" -o "${src%.c}" "$src" "${libs[@]}" \
      -Wl,-rpath,"$libdir" 2>&1)
  else
    out=$("$cc" "${warn[@]}" "${cflags[@]}" -c -o "${src%.c}.o" "$src" 2>&1)
  fi
  if [ $? -eq 0 ]; then
    ok "$label"
  else
    bad "$label"
    printf '%s\n' "$out" | head -30 | sed 's/^/     | /'
  fi
}

# ---- README.md's C blocks
n=0
while IFS= read -r -d '' f; do
  n=$((n + 1))
  line=$(head -1 "$f.line")
  if ! head -1 "$f" | grep -q '^#include'; then
    { printf '#include <errno.h>\n#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n'
      printf '#include <warmlock/pg.h>\n'
      printf 'void readme_example(struct wl_segment *seg);\n'
      printf 'void readme_example(struct wl_segment *seg)\n{\n'
      printf '    struct wl_result res = {0};\n    (void)seg;\n    (void)res;\n'
      cat "$f"; printf '}\n'; } >"$f.c"
    build_one "README.md:$line (statements, compiled in a function)" "$f.c" 0
  elif grep -q 'int main(' "$f"; then
    cp "$f" "$f.c"
    build_one "README.md:$line (program, compiled and linked)" "$f.c" 1
  else
    cp "$f" "$f.c"
    build_one "README.md:$line (compiled)" "$f.c" 0
  fi
done < <(awk -v dir="$tmp" '
  /^```c[ \t]*$/ { if (!inb) { inb = 1; k++; f = dir "/block" k; print NR + 1 > (f ".line");
                   close(f ".line"); printf "" > f; next } }
  /^```[ \t]*$/ && inb { inb = 0; close(f); printf "%s%c", f, 0; next }
  inb { print > f }' README.md)
[ "$n" -gt 0 ] || bad "README.md has no C block (the awk extraction found none)"

# ---- libpq through warmlock.pc alone
cat >"$tmp/pqexec.c" <<'EOF'
#include <stdio.h>
#include <warmlock/pg.h>

int main(int argc, char **argv)
{
    struct wl_segment *seg;
    struct wl_result res;
    PGconn *c;

    if (argc < 2 || wl_open(NULL, NULL, &seg) < 0)
        return 2;
    if (!(c = wl_pg_connect(seg, argv[1], NULL, &res)))
        return 1;
    PGresult *r = PQexec(c, "SELECT 1");
    printf("%s\n", PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    wl_close(seg);
    return 0;
}
EOF
build_one "a program calling PQexec links with pkg-config --libs warmlock alone" "$tmp/pqexec.c" 1

echo "docs_build: $n README block(s); $fails failure(s)"
[ "$fails" -eq 0 ]
