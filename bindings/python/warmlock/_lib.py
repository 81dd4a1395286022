"""libwarmlock.so through ctypes: finding it, the C structures mirrored, the prototypes.

Private: the public API is in the package itself. The structures below mirror
include/warmlock.h and include/warmlock/pg.h field by field; a change there must be made
here too (the tests compare status() with ``warmlock status --json`` to catch a drift).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import threading
from ctypes import (
    POINTER,
    c_char,
    c_char_p,
    c_int,
    c_int32,
    c_int64,
    c_size_t,
    c_uint,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import List, Optional

# Limits and flags of include/warmlock.h.
KEY_MAX = 400
HIST_BUCKETS = 12
HIST_BOUNDS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000)
OPEN_EXISTING = 1
FAIL_FAST = 1
PG_FLEET = 1  # include/warmlock/pg.h: wl_pg_opts.flags
PG_KEY_MAX = 1024
STATE_NAMES = ("cold", "warming", "ready", "stale", "failed")


class Result(ctypes.Structure):
    """struct wl_result."""

    _fields_ = [
        ("role", c_int),
        ("epoch", c_uint64),
        ("waited_ns", c_uint64),
        ("attempts", c_uint),
        ("sqlstate", c_char * 6),
        ("error", c_char * 256),
    ]


class OpenOpts(ctypes.Structure):
    """struct wl_open_opts (mode_t is 32 bits on Linux)."""

    _fields_ = [
        ("mode", c_uint32),
        ("slots", c_uint),
        ("init_timeout_ms", c_uint32),
        ("flags", c_uint),
    ]


class WaitOpts(ctypes.Structure):
    """struct wl_wait_opts."""

    _fields_ = [
        ("timeout_ms", c_uint32),
        ("fail_ttl_ms", c_uint32),
        ("flags", c_uint32),
        ("max_age_ms", c_uint32),
    ]


class Backoff(ctypes.Structure):
    """struct wl_backoff."""

    _fields_ = [
        ("initial_ms", c_uint32),
        ("max_ms", c_uint32),
        ("max_attempts", c_uint32),
        ("deadline_ms", c_uint32),
        ("jitter", c_int),
        ("refused_ms", c_uint32),
        ("busy_ms", c_uint32),
        ("flags", c_uint32),
    ]


class PgOpts(ctypes.Structure):
    """struct wl_pg_opts, followed by zeroed room: a field the library appends later reads
    as 0 (its default) instead of whatever follows this object in memory."""

    _fields_ = [
        ("warm_sql", c_char_p),
        ("verify_sql", c_char_p),
        ("attempt_timeout_ms", c_uint32),
        ("backoff", Backoff),
        ("wait", WaitOpts),
        ("login_budget", c_uint32),
        ("flags", c_uint32),
        ("_room", c_uint64 * 8),
    ]


class SlotInfo(ctypes.Structure):
    """struct wl_slot_info."""

    _fields_ = [
        ("key", c_char * (KEY_MAX + 1)),
        ("state", c_int),
        ("epoch", c_uint64),
        ("leader_pid", c_int),
        ("leader_alive", c_int),
        ("waiters", c_uint32),
        ("warmups", c_uint64),
        ("takeovers", c_uint64),
        ("attempts", c_uint64),
        ("failures", c_uint64),
        ("invalidations", c_uint64),
        ("last_code", c_int),
        ("last_error", c_char * 256),
        ("sqlstate", c_char * 6),
        ("ready_age_ms", c_int64),
        ("time_to_ready_ms", c_int64),
        ("down_ms", c_int64),
        ("verified_age_ms", c_int64),
        ("key_hash", c_uint64),
        ("key_len", c_uint32),
        ("wait_hist", c_uint64 * HIST_BUCKETS),
        ("wait_count", c_uint64),
        ("wait_sum_ns", c_uint64),
        ("stage", c_int),
        ("fleet", c_int),
        ("fleet_leader_pid", c_int32),
        ("fleet_leader_host", c_char * 64),
        ("fleet_leader_app", c_char * 64),
    ]


# int (*wl_warm_fn)(void *arg, struct wl_result *res)
WARM_FN = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(Result))


def candidates() -> List[str]:
    """Where the library is looked for, in order: $WARMLOCK_LIB, the repository's build tree
    (``<repo>/build/lib/libwarmlock.so*``, for a package used from a checkout), then the
    system's (``ctypes.util.find_library``, then the soname through the dynamic loader's
    search path)."""
    out: List[str] = []
    env = os.environ.get("WARMLOCK_LIB")
    if env:
        out.append(env)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    built = os.path.join(repo, "build", "lib")
    # the unversioned name first, then the soname, then the full version
    out.extend(sorted(glob.glob(os.path.join(built, "libwarmlock.so*")), key=len))
    found = ctypes.util.find_library("warmlock")
    if found:
        out.append(found)
    out.append("libwarmlock.so.0")
    return out


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None


def _declare(lib: ctypes.CDLL) -> None:
    def fn(name: str, restype, *argtypes) -> None:
        f = getattr(lib, name)
        f.restype = restype
        f.argtypes = argtypes

    seg_pp = POINTER(c_void_p)
    fn("wl_version", c_char_p)
    fn("wl_strerror", c_char_p, c_int)
    fn("wl_last_error", c_char_p)
    fn("wl_open", c_int, c_char_p, POINTER(OpenOpts), seg_pp)
    fn("wl_name", c_char_p, c_void_p)
    fn("wl_state_name", c_char_p, c_int)
    fn("wl_stage_name", c_char_p, c_int)
    fn("wl_default_name", c_int, c_char_p, c_size_t)
    fn("wl_ensure", c_int, c_void_p, c_char_p, WARM_FN, c_void_p, POINTER(WaitOpts), POINTER(Result))
    fn("wl_invalidate", c_int, c_void_p, c_char_p, c_uint64)
    fn("wl_key_open", c_int, c_void_p, c_char_p, seg_pp)
    fn("wl_key_ensure", c_int, c_void_p, WARM_FN, c_void_p, POINTER(WaitOpts), POINTER(Result))
    fn("wl_key_invalidate", c_int, c_void_p, c_uint64)
    fn("wl_key_close", None, c_void_p)
    fn("wl_snapshot", c_int, c_void_p, POINTER(SlotInfo), c_size_t)
    fn("wl_pg_slot_key", c_int, c_void_p, c_char_p, c_char_p, c_size_t)
    fn("wl_pg_target_open", c_int, c_void_p, c_char_p, POINTER(PgOpts), seg_pp)
    fn("wl_pg_target_ensure", c_int, c_void_p, POINTER(Result))
    fn("wl_pg_target_invalidate", c_int, c_void_p, c_uint64)
    fn("wl_pg_target_close", None, c_void_p)


def unchecked(lib: ctypes.CDLL, name: str):
    """`name` without argtypes, returning int: for the ready path, called only with ctypes
    objects (c_void_p, byref(), a WARM_FN, None), which need no conversion. A third of the
    cost of a call that converts its arguments through argtypes."""
    f = lib[name]  # a new function object, not the one _declare() set up
    f.restype = c_int
    return f


def load() -> ctypes.CDLL:
    """The library, loaded once per process (OSError naming every place tried if none)."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            tried = []
            for path in candidates():
                try:
                    # CDLL, not PyDLL: every call releases the GIL while it runs.
                    lib = ctypes.CDLL(path)
                except OSError as e:
                    tried.append("%s (%s)" % (path, e))
                    continue
                try:
                    _declare(lib)
                except AttributeError as e:
                    tried.append("%s (too old: %s)" % (path, e))
                    continue
                _lib = lib
                break
            else:
                raise OSError(
                    "warmlock: cannot load libwarmlock.so; tried: %s. Set $WARMLOCK_LIB to "
                    "its path, build the repository (meson setup build && ninja -C build), "
                    "or install the library" % "; ".join(tried)
                )
    return _lib

