"""The ctypes structures of warmlock._lib against the C headers: every field's offset and
each structure's size, as the compiler sees include/warmlock.h and include/warmlock/pg.h."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess

import pytest

from conftest import REPO
from warmlock import _lib

STRUCTS = {
    "wl_result": _lib.Result,
    "wl_open_opts": _lib.OpenOpts,
    "wl_wait_opts": _lib.WaitOpts,
    "wl_backoff": _lib.Backoff,
    "wl_pg_opts": _lib.PgOpts,
    "wl_slot_info": _lib.SlotInfo,
}


def _pkg_cflags() -> list:
    try:
        out = subprocess.run(["pkg-config", "--cflags", "libpq"], capture_output=True, text=True, timeout=10)
        return out.stdout.split() if out.returncode == 0 else []
    except OSError:
        return []


def test_struct_layouts_match_the_headers(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler to read the headers with")
    lines = []
    for cname, py in STRUCTS.items():
        lines.append('printf("%s size %%zu\\n", sizeof(struct %s));' % (cname, cname))
        for f in py._fields_:
            if f[0].startswith("_"):
                continue
            lines.append('printf("%s %s %%zu\\n", offsetof(struct %s, %s));' % (cname, f[0], cname, f[0]))
    src = tmp_path / "layout.c"
    src.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <warmlock/pg.h>\n"
        "int main(void) {\n%s\nreturn 0;\n}\n" % "\n".join(lines)
    )
    exe = tmp_path / "layout"
    inc = [os.path.join(REPO, "include"), os.path.join(REPO, "build", "include")]
    cmd = [cc, "-o", str(exe), str(src)] + ["-I" + d for d in inc if os.path.isdir(d)] + _pkg_cflags()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 and "libpq-fe.h" in p.stderr:
        pytest.skip("libpq-fe.h not found (libpq-dev)")
    assert p.returncode == 0, p.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    c = {}
    for line in out.splitlines():
        name, field, value = line.split()
        c[(name, field)] = int(value)
    for cname, py in STRUCTS.items():
        for f in py._fields_:
            if not f[0].startswith("_"):
                assert getattr(py, f[0]).offset == c[(cname, f[0])], (cname, f[0])
        size = ctypes.sizeof(py)
        if cname == "wl_pg_opts":
            # ours has zeroed room after the last field, for fields the library appends
            assert size >= c[(cname, "size")], cname
        else:
            assert size == c[(cname, "size")], (cname, size, c[(cname, "size")])
