"""warmlock: one warm-up for every process of a host, through a shared-memory segment.

Processes that start at once (gunicorn, uWSGI or Celery workers after a deploy or a
database restart) call :func:`pg_ensure` with the same conninfo; exactly one of them, the
leader, connects, runs ``warm_sql`` and a verification query; the others sleep (on a futex,
without probing) until it publishes that the server is ready, or its failure. Once ready, a
call is a lookup and one atomic load in shared memory::

    import warmlock

    epoch = warmlock.pg_ensure("host=/run/postgresql dbname=app", timeout=20.0)
    try:
        conn = psycopg2.connect("host=/run/postgresql dbname=app")
    except psycopg2.OperationalError:
        warmlock.invalidate("host=/run/postgresql dbname=app", epoch)  # one re-verifies for all
        raise

:func:`ensure` runs any Python callable as the warm-up of a key of your own. Failures raise
:class:`NotReady` (``code`` "ETIMEDOUT", "ENOENT", ...; ``sqlstate``; ``message``).
:func:`status` returns what ``warmlock status --json`` prints.

This is ctypes over libwarmlock.so (no compiled part): it is found through
``$WARMLOCK_LIB``, then the build tree of the repository this package sits in
(``build/lib/``), then the system's library path. The library is loaded on first use.

Threads. Every function may be called from any thread. The segment handle is shared by
the process's threads; each thread gets its own prepared target (a target is used by one
thread at a time), so threads of one process are elected like processes: one leader per
epoch. Blocking calls release the GIL while they wait; a signal's Python handler
(Ctrl-C's KeyboardInterrupt) runs once the call returns, at its deadline at the latest.

fork(). Segment handles are cached per (segment name, pid) and prepared targets per
thread; a child created by ``os.fork()`` (gunicorn, multiprocessing, Celery's prefork pool)
drops what it inherited (``os.register_at_fork``) and opens its own on its first call. A
child forked by C code that skips Python's fork hooks (uWSGI unless ``py-call-osafterfork``
is set) should call :func:`after_fork` first, as ``examples/uwsgi_hooks.py`` does.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import errno as _errno
import math
import os
import threading
from ctypes import byref, create_string_buffer
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _lib

# Epoch is left out so that help(warmlock) does not list int's methods; it is documented
# with pg_ensure() and importable as warmlock.Epoch.
__all__ = [
    "NotReady",
    "after_fork",
    "ensure",
    "invalidate",
    "invalidate_key",
    "library_version",
    "pg_ensure",
    "pg_ensure_async",
    "status",
]

Text = Union[str, bytes]


# ---------------------------------------------------------------- results and errors


class NotReady(Exception):
    """The target is not ready: the deadline passed, or a failure was published.

    Attributes:
        code: the error's name, e.g. ``"ETIMEDOUT"`` (deadline passed), ``"EACCES"``
            (authentication refused), ``"ENOENT"`` (database or role missing),
            ``"ECONNREFUSED"`` (nothing listens), ``"EAGAIN"`` (the server answers but is not
            ready; with ``fail_fast``), ``"EINVAL"`` (bad conninfo), ``"EIO"`` (warm_sql or
            the verification failed, or a Python warm function raised).
        errno: the same as a number (``errno.ETIMEDOUT``...).
        sqlstate: the SQLSTATE of the last failure (``"3D000"``...), or None.
        message: what happened, as the library says it (the leader's message, for
            followers); never a password.
    """

    code: str
    errno: int
    sqlstate: Optional[str]
    message: str

    def __init__(self, err: int, message: str = "", sqlstate: Optional[str] = None) -> None:
        err = abs(int(err))
        self.errno = err
        self.code = _errno.errorcode.get(err, "E%d" % err)
        self.sqlstate = sqlstate or None
        self.message = message or _strerror(err)
        super().__init__(err, self.message, self.sqlstate)

    def __str__(self) -> str:
        s = "%s: %s" % (self.code, self.message)
        if self.sqlstate and self.sqlstate not in self.message:
            s += " (SQLSTATE %s)" % self.sqlstate
        return s

    def __repr__(self) -> str:
        return "NotReady(code=%r, sqlstate=%r, message=%r)" % (
            self.code,
            self.sqlstate,
            self.message,
        )


class Epoch(int):
    """The readiness epoch a call observed: an int, to pass to :func:`invalidate`.

    Attributes:
        role: ``"leader"`` if this call ran the warm-up, else ``"follower"``.
        waited: seconds the call took.
        attempts: connection or query attempts the leader made (0 for a follower).
    """

    # What a follower on the ready path is; other calls set their own.
    role = "follower"
    waited = 0.0
    attempts = 0

    def __repr__(self) -> str:
        return "Epoch(%d, role=%r, waited=%.6f)" % (int(self), self.role, self.waited)


def _epoch(res: _lib.Result) -> Epoch:
    e = Epoch(res.epoch)
    if res.role == 1:
        e.role = "leader"
        e.attempts = res.attempts
    w = res.waited_ns
    if w:
        e.waited = w / 1e9
    return e


def _per_byte_replace(err: UnicodeDecodeError) -> Tuple[str, int]:
    # one U+FFFD per invalid byte, as the CLI's JSON output replaces them
    return "\ufffd", err.start + 1


codecs.register_error("warmlock.replace", _per_byte_replace)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "warmlock.replace")


def _strerror(err: int) -> str:
    try:
        s = _lib.load().wl_strerror(-abs(err))
    except OSError:
        s = None
    return _text(s) if s else os.strerror(abs(err))


def _not_ready(r: int, res: _lib.Result) -> NotReady:
    return NotReady(r, _text(res.error), _text(res.sqlstate))


def _last_error(r: int) -> NotReady:
    return NotReady(r, _text(_lib.load().wl_last_error() or b""))


def _b(s: Text, what: str) -> bytes:
    if isinstance(s, bytes):
        b = s
    elif isinstance(s, str):
        b = s.encode("utf-8")
    else:
        raise TypeError("%s must be str or bytes, not %s" % (what, type(s).__name__))
    if b"\0" in b:
        raise ValueError("%s contains a NUL byte" % what)
    return b


def _ms(seconds: Optional[float], what: str) -> int:
    """Seconds to the library's milliseconds: None is the library's default (0), anything
    else at least 1 ms, rounded up."""
    if seconds is None:
        return 0
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        raise TypeError("%s must be a number of seconds" % what)
    if seconds < 0 or math.isnan(seconds):
        raise ValueError("%s must be >= 0 seconds" % what)
    return min(max(1, math.ceil(seconds * 1000)), 0xFFFFFFFF)


# ---------------------------------------------------------------- handles

_segments = {}  # type: Dict[Tuple[Optional[bytes], int], int]
_segments_lock = threading.Lock()


def _segment(shm: Optional[Text], existing: bool = False) -> Optional[int]:
    """The process's handle of segment `shm` (None: $WARMLOCK_SHM, then /warmlock.<uid>),
    opened on first use. With `existing`, a segment that does not exist is not created and
    None is returned."""
    name = None if shm is None else _b(shm, "shm")
    k = (name, os.getpid())
    seg = _segments.get(k)
    if seg:
        return seg
    lib = _lib.load()
    with _segments_lock:
        seg = _segments.get(k)
        if seg:
            return seg
        opts = _lib.OpenOpts()
        opts.flags = _lib.OPEN_EXISTING if existing else 0
        out = ctypes.c_void_p()
        r = lib.wl_open(name, byref(opts), byref(out))
        if r == -_errno.ENOENT and existing:
            return None
        if r < 0:
            raise _last_error(r)
        _segments[k] = out.value
        return out.value


class _Target:
    """One thread's prepared target (or prepared key): `fn(*args)` is the call."""

    __slots__ = ("ptr", "pid", "res", "fn", "args", "close", "keep", "__weakref__")

    def __init__(self) -> None:
        self.ptr: Optional[int] = None
        self.pid = os.getpid()
        self.res = _lib.Result()
        self.close: Optional[Callable[[int], None]] = None
        self.keep: Any = None

    def __del__(self) -> None:
        # Only the process that opened it closes it: a child after fork() leaves the
        # parent's alone (a thread of the parent's may have been inside it at fork).
        try:
            if self.ptr and self.close and self.pid == os.getpid():
                self.close(self.ptr)
        except Exception:
            pass


# Prepared targets (and keys) a thread keeps: one per distinct set of arguments, since a
# target's options, its deadline among them, are fixed when it is opened. Past this many the
# oldest is closed, so a caller that passes a different timeout on every call does not
# accumulate them.
_PER_THREAD = 32


def _remember(cache: Dict[tuple, "_Target"], k: tuple, t: "_Target") -> None:
    while len(cache) >= _PER_THREAD:
        del cache[next(iter(cache))]  # closed by _Target.__del__
    cache[k] = t


class _Local(threading.local):
    def __init__(self) -> None:
        self.targets: Dict[tuple, _Target] = {}
        self.keys: Dict[tuple, _Target] = {}
        self.warm: Optional[list] = None


_local = _Local()  # type: _Local


def after_fork() -> None:
    """Forget the handles and targets inherited from the parent process.

    Called by itself in a child of ``os.fork()``; call it yourself first thing in a
    process forked by C code that skips Python's fork hooks (e.g. a uWSGI worker without
    ``py-call-osafterfork``). The child then opens its own handle on its next call; what
    the parent opened is left to the parent.
    """
    global _local, _segments_lock
    _segments_lock = threading.Lock()
    _segments.clear()
    _local = _Local()


os.register_at_fork(after_in_child=after_fork)


_fast_fns = {}  # type: Dict[str, Any]


def _fast(name: str) -> Any:
    f = _fast_fns.get(name)
    if f is None:
        f = _fast_fns[name] = _lib.unchecked(_lib.load(), name)
    return f


def _pg_target(k: tuple) -> _Target:
    (conninfo, timeout, warm_sql, fail_fast, shm, verify_sql, attempt_timeout, fail_ttl, fleet) = k
    lib = _lib.load()
    opts = _lib.PgOpts()
    ws = None if warm_sql is None else _b(warm_sql, "warm_sql")
    vs = None if verify_sql is None else _b(verify_sql, "verify_sql")
    opts.warm_sql = ws
    opts.verify_sql = vs
    opts.attempt_timeout_ms = _ms(attempt_timeout, "attempt_timeout")
    opts.wait.timeout_ms = _ms(timeout, "timeout")
    opts.wait.fail_ttl_ms = _ms(fail_ttl, "fail_ttl")
    opts.wait.flags = _lib.FAIL_FAST if fail_fast else 0
    opts.flags = _lib.PG_FLEET if fleet else 0
    ci = _b(conninfo, "conninfo")
    seg = _segment(shm)
    out = ctypes.c_void_p()
    r = lib.wl_pg_target_open(seg, ci, byref(opts), byref(out))
    if r < 0:
        raise _last_error(r)
    t = _Target()
    t.ptr = out.value
    t.close = lib.wl_pg_target_close
    t.fn = _fast("wl_pg_target_ensure")
    t.args = (ctypes.c_void_p(t.ptr), byref(t.res))
    _remember(_local.targets, k, t)
    return t


# ---------------------------------------------------------------- the API


def pg_ensure(
    conninfo: Text,
    timeout: Optional[float] = 30.0,
    warm_sql: Optional[Text] = None,
    fail_fast: bool = False,
    shm: Optional[Text] = None,
    *,
    verify_sql: Optional[Text] = None,
    attempt_timeout: Optional[float] = None,
    fail_ttl: Optional[float] = None,
    fleet: bool = False,
) -> Epoch:
    """Make sure the server of `conninfo` is warm and verified in this epoch; return it.

    Blocks (without the GIL) until one process of the host, this one or another, has
    connected, run `warm_sql` and a verification query ("SELECT 1", or `verify_sql`) in
    this epoch, or until `timeout` seconds have passed. On the ready path it is one atomic
    load in shared memory, no syscall. The conninfo is anything libpq accepts (key=value or
    URI); its password never reaches the segment.

    Args:
        conninfo: the connection string the application uses.
        timeout: the whole call's deadline in seconds (None: the library's, 30 s).
        warm_sql: SQL the leader runs once per epoch (several statements allowed).
        fail_fast: during an outage, raise the current failure at once (``EAGAIN`` while
            the server answers but is not ready, ``ECONNREFUSED`` while nothing listens)
            instead of waiting for the server: for a request handler that answers 503.
        shm: the segment's name (None: ``$WARMLOCK_SHM``, then ``/warmlock.<uid>``).
        verify_sql: the verification query (default ``SELECT 1``).
        attempt_timeout: the leader's bound on one connect or query attempt, seconds
            (None: 2 s).
        fail_ttl: how long a published permanent failure is served before it is tried
            again, seconds (None: 1 s).
        fleet: fleet mode: `warm_sql` runs once per server start for every host (every
            segment) that shares the target; the host leaders elect one through a
            PostgreSQL advisory lock (see the README's "Fleet mode").

    Returns:
        The epoch: a ``warmlock.Epoch``, an int with ``role`` ("leader" or "follower"),
        ``waited`` (seconds) and ``attempts``.

    Raises:
        NotReady: ``ETIMEDOUT`` (deadline passed; the message says waiting for what),
            ``EACCES``, ``ENOENT`` (``3D000``: no such database; a missing role), ``EINVAL``
            (bad conninfo), ``EIO`` (warm_sql or the verification failed), ``EAGAIN`` or
            ``ECONNREFUSED`` (with fail_fast), ``EPERM``/``EPROTO`` (the segment).
    """
    k = (conninfo, timeout, warm_sql, fail_fast, shm, verify_sql, attempt_timeout, fail_ttl, bool(fleet))
    t = _local.targets.get(k)
    if t is None:
        t = _pg_target(k)
    r = t.fn(*t.args)
    if r < 0:
        raise _not_ready(r, t.res)
    return _epoch(t.res)


async def pg_ensure_async(
    conninfo: Text,
    timeout: Optional[float] = 30.0,
    warm_sql: Optional[Text] = None,
    fail_fast: bool = False,
    shm: Optional[Text] = None,
    **kwargs: Any,
) -> Epoch:
    """:func:`pg_ensure` for asyncio: the wait runs in a thread of its own (never on the
    event loop, never in the loop's default executor, whose workers it could all occupy
    during an outage). Takes the same arguments.

    Cancelling the awaiting task does not end the wait in that thread: it ends at its
    deadline (`timeout`), and its result is dropped.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def deliver(value: Any, exc: Optional[BaseException]) -> None:
        if fut.cancelled():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def run() -> None:
        try:
            value, exc = pg_ensure(conninfo, timeout, warm_sql, fail_fast, shm, **kwargs), None
        except BaseException as e:  # delivered to the awaiting task
            value, exc = None, e
        try:
            loop.call_soon_threadsafe(deliver, value, exc)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits it any more

    threading.Thread(target=run, name="warmlock-pg-ensure", daemon=True).start()
    return await fut


def invalidate(conninfo: Text, epoch: int, shm: Optional[Text] = None) -> bool:
    """Say that the server of `conninfo` broke a connection made in `epoch`.

    Marks the target stale if it is still ready at that epoch, so that the next
    :func:`pg_ensure` of any process re-verifies it (one process does, for all); an older
    epoch is ignored. Call it when a connection fails (``psycopg2.OperationalError``), then
    :func:`pg_ensure` again. Never blocks.

    Returns:
        True if this call made the target stale; False if it was not ready at `epoch` (or
        is unknown to the segment).
    """
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError("epoch must be an epoch returned by pg_ensure")
    lib = _lib.load()
    seg = _segment(shm)
    buf = create_string_buffer(_lib.PG_KEY_MAX)
    r = lib.wl_pg_slot_key(seg, _b(conninfo, "conninfo"), buf, len(buf))
    if r < 0:
        raise NotReady(r, _text(buf.value))
    return _invalidate(lib, seg, buf.value, epoch)


def _invalidate(lib: ctypes.CDLL, seg: int, key: bytes, epoch: int) -> bool:
    r = lib.wl_invalidate(seg, key, epoch)
    if r == -_errno.ENOENT:
        return False
    if r < 0:
        raise NotReady(r, "cannot invalidate: " + _strerror(r))
    return r == 1


def invalidate_key(key: Text, epoch: int, shm: Optional[Text] = None) -> bool:
    """:func:`invalidate` for a key of :func:`ensure`: the next call re-runs its warm-up."""
    if not isinstance(epoch, int) or epoch < 0:
        raise ValueError("epoch must be an epoch returned by ensure")
    return _invalidate(_lib.load(), _segment(shm), _b(key, "key"), epoch)


def _code_of(e: BaseException) -> int:
    n = getattr(e, "errno", None)
    if isinstance(n, int) and n > 0:
        return n
    if not isinstance(e, Exception):
        return _errno.EINTR
    return _errno.EIO


def _warm_trampoline(arg: Optional[int], res: Any) -> int:
    # Runs in the thread that called wl_key_ensure (ctypes takes the GIL back for it).
    st = _local.warm
    try:
        st[0]()
        return 0
    except BaseException as e:
        msg = str(e) or type(e).__name__
        b = msg.encode("utf-8", "replace")[:255].decode("utf-8", "ignore").encode("utf-8")
        r = res.contents
        r.error = b
        sq = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(sq, str) and len(sq) == 5:
            r.sqlstate = sq.encode("ascii", "replace")
        if not isinstance(e, Exception):
            st[1] = e  # KeyboardInterrupt, SystemExit: raised again once the call is done
        return -_code_of(e)


_WARM_CB = _lib.WARM_FN(_warm_trampoline)


def _key_target(k: tuple) -> _Target:
    key, shm = k
    lib = _lib.load()
    seg = _segment(shm)
    out = ctypes.c_void_p()
    r = lib.wl_key_open(seg, _b(key, "key"), byref(out))
    if r < 0:
        raise NotReady(r, "cannot open key: " + _strerror(r))
    t = _Target()
    t.ptr = out.value
    t.close = lib.wl_key_close
    t.fn = _fast("wl_key_ensure")
    t.args = (ctypes.c_void_p(t.ptr), byref(t.res))
    t.keep = {}
    _remember(_local.keys, k, t)
    return t


def ensure(
    key: Text,
    warm: Callable[[], Any],
    timeout: Optional[float] = 30.0,
    shm: Optional[Text] = None,
    *,
    fail_fast: bool = False,
    fail_ttl: Optional[float] = None,
) -> Epoch:
    """Single-flight for a warm-up of your own: exactly one caller per epoch, among every
    process and thread on the segment, runs ``warm()``; the others wait for it.

    `warm` is called without arguments, in the calling thread, by the leader only. If it
    returns, the key is ready for everyone. If it raises, every waiting caller gets
    :class:`NotReady` with the exception's text as its message, and the failure is served
    for `fail_ttl` (1 s) before someone tries again: the code is the exception's ``errno``
    when it has one (an ``OSError``, a :class:`NotReady`), else ``EIO``. A transient errno
    (``ECONNREFUSED``, ``EAGAIN``, ``ETIMEDOUT``) is an outage instead: callers keep
    waiting and the next one with time left runs ``warm()`` again. An exception that is
    not an ``Exception`` (``KeyboardInterrupt``) is published as ``EINTR`` and raised again
    in the leader once the call is done.

    Returns the epoch (a ``warmlock.Epoch``, as :func:`pg_ensure`); raises
    :class:`NotReady` as :func:`pg_ensure`.
    """
    if not callable(warm):
        raise TypeError("warm must be callable")
    k = (key, shm)
    t = _local.keys.get(k)
    if t is None:
        t = _key_target(k)
    ok = (timeout, fail_fast, fail_ttl)
    opts = t.keep.get(ok)
    if opts is None:
        o = _lib.WaitOpts()
        o.timeout_ms = _ms(timeout, "timeout")
        o.fail_ttl_ms = _ms(fail_ttl, "fail_ttl")
        o.flags = _lib.FAIL_FAST if fail_fast else 0
        if len(t.keep) >= _PER_THREAD:
            t.keep.clear()
        opts = t.keep[ok] = (o, byref(o))
    loc = _local
    prev = loc.warm
    st = loc.warm = [warm, None]
    try:
        r = t.fn(t.args[0], _WARM_CB, None, opts[1], t.args[1])
    finally:
        loc.warm = prev
    if st[1] is not None:
        raise st[1]
    if r < 0:
        raise _not_ready(r, t.res)
    return _epoch(t.res)


# wl_slot_info.fleet (enum wl_fleet_role) by name, as status --json spells it.
_FLEET_NAMES = ("none", "led", "waited", "skipped", "local")


def _slot(lib: ctypes.CDLL, x: _lib.SlotInfo) -> Dict[str, Any]:
    def ms(v: int) -> Optional[int]:
        return None if v < 0 else v

    key = x.key
    hist = [{"lt_ms": b, "count": x.wait_hist[i]} for i, b in enumerate(_lib.HIST_BOUNDS_MS)]
    hist.append({"lt_ms": None, "count": x.wait_hist[_lib.HIST_BUCKETS - 1]})
    return {
        "key": _text(key),
        "key_len": x.key_len or len(key),
        "key_hash": "%016x" % x.key_hash,
        "state": _text(lib.wl_state_name(x.state)),
        "stage": _text(lib.wl_stage_name(x.stage)),
        "epoch": x.epoch,
        "leader_pid": x.leader_pid,
        "leader_alive": bool(x.leader_alive),
        "waiters": x.waiters,
        "warmups": x.warmups,
        "takeovers": x.takeovers,
        "attempts": x.attempts,
        "failures": x.failures,
        "invalidations": x.invalidations,
        "last_error": _text(x.last_error),
        "last_code": x.last_code,
        "sqlstate": _text(x.sqlstate),
        "ready_age_ms": ms(x.ready_age_ms),
        "time_to_ready_ms": ms(x.time_to_ready_ms),
        "down_ms": ms(x.down_ms),
        "fleet": _FLEET_NAMES[x.fleet] if 0 <= x.fleet < len(_FLEET_NAMES) else "none",
        "fleet_leader_pid": x.fleet_leader_pid or None,
        "fleet_leader_host": _text(x.fleet_leader_host),
        "fleet_leader_app": _text(x.fleet_leader_app),
        "wait_count": x.wait_count,
        "wait_sum_ms": float("%.3f" % (x.wait_sum_ns / 1e6)),
        "wait_hist": hist,
    }


def status(shm: Optional[Text] = None) -> List[Dict[str, Any]]:
    """The segment's slots, one dict each, with the fields of ``warmlock status --json``:
    key, key_len, key_hash, state ("cold", "warming", "ready", "stale", "failed"), stage
    ("none", "reachable", "authenticated", "warmed", "verified"), epoch, leader_pid, leader_alive, waiters, warmups, takeovers, attempts, failures,
    invalidations, last_error, last_code, sqlstate, ready_age_ms, time_to_ready_ms,
    down_ms (None: no outage), fleet ("none", "led", "waited", "skipped", "local"),
    fleet_leader_pid (None: none), fleet_leader_host, fleet_leader_app, wait_count,
    wait_sum_ms, wait_hist.

    Never creates a segment: an empty list when there is none. Never blocks.
    """
    seg = _segment(shm, existing=True)
    if seg is None:
        return []
    lib = _lib.load()
    n = 64
    while True:
        arr = (_lib.SlotInfo * n)()
        m = lib.wl_snapshot(seg, arr, n)
        if m < 0:
            raise NotReady(m, "cannot read the segment: " + _strerror(m))
        if m <= n:
            return [_slot(lib, arr[i]) for i in range(m)]
        n = m


def library_version() -> str:
    """The loaded libwarmlock's version, e.g. "0.1.0" (loads it)."""
    return _text(_lib.load().wl_version())
