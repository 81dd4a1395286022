"""The binding without PostgreSQL: ensure() with Python warm functions across processes and
threads, errors, fork, the library lookup."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import CLI, PYROOT, Procs, slot, wait_for
import warmlock


def _hold_until_waiters(shm: str, key: str, n: int) -> None:
    # The leader keeps the warm-up running until the n others wait for it, so they are
    # known to have been followers (bounded: a broken election fails the test elsewhere).
    wait_for("%d waiters on %s" % (n, key), lambda: (slot(shm, key) or {}).get("waiters", 0) >= n)


def _ensure_logged(shm: str, key: str, log: str, others: int, fail: str) -> tuple:
    def warm() -> None:
        with open(log, "a") as f:
            f.write("%d\n" % os.getpid())
        _hold_until_waiters(shm, key, others)
        if fail:
            raise ValueError(fail)

    e = warmlock.ensure(key, warm, timeout=60.0, shm=shm)
    return int(e), e.role


def test_ensure_python_warm_runs_once_for_8_processes(shm, tmp_path):
    log = str(tmp_path / "warm.log")
    warmlock.status(shm)  # the parent has used the library before it forks
    procs = Procs(8, _ensure_logged, shm, "py-once", log, 7, "")
    res = procs.results()
    assert len(res) == 8, res
    assert all(kind == "ok" for _, kind, _ in res), res
    epochs = {v[0] for _, _, v in res}
    roles = sorted(v[1] for _, _, v in res)
    assert epochs == {1}
    assert roles == ["follower"] * 7 + ["leader"]
    with open(log) as f:
        assert len(f.read().split()) == 1
    s = slot(shm, "py-once")
    assert s["state"] == "ready" and s["warmups"] == 1 and s["epoch"] == 1


def test_ensure_python_warm_exception_reaches_all_8(shm, tmp_path):
    log = str(tmp_path / "warm.log")
    text = "warm-up refused: fixture %d missing" % os.getpid()
    procs = Procs(8, _ensure_logged, shm, "py-raise", log, 7, text)
    res = procs.results()
    assert len(res) == 8, res
    for _, kind, e in res:
        assert kind == "err", res
        assert isinstance(e, warmlock.NotReady), e
        assert e.code == "EIO" and e.errno == errno.EIO
        assert e.message == text
    with open(log) as f:
        assert len(f.read().split()) == 1
    s = slot(shm, "py-raise")
    assert s["state"] == "failed" and s["last_error"] == text and s["warmups"] == 1


def test_ensure_oserror_keeps_its_errno_and_sqlstate(shm):
    class Refused(Exception):
        sqlstate = "28P01"

    def denied() -> None:
        raise PermissionError(errno.EACCES, "no entry")

    with pytest.raises(warmlock.NotReady) as ei:
        warmlock.ensure("py-eacces", denied, shm=shm)
    assert ei.value.code == "EACCES" and "no entry" in ei.value.message

    def refused() -> None:
        raise Refused("password authentication failed")

    with pytest.raises(warmlock.NotReady) as ei:
        warmlock.ensure("py-sqlstate", refused, shm=shm)
    assert ei.value.sqlstate == "28P01" and ei.value.code == "EIO"
    assert "SQLSTATE 28P01" in str(ei.value)


def test_threads_sharing_a_handle_one_leader_per_epoch(shm):
    n = 8
    calls = []
    lock = threading.Lock()

    def warm() -> None:
        with lock:
            calls.append(threading.get_ident())
        _hold_until_waiters(shm, "py-threads", n - 1)

    def round_() -> list:
        out: list = []
        barrier = threading.Barrier(n)

        def run() -> None:
            barrier.wait()
            e = warmlock.ensure("py-threads", warm, timeout=60.0, shm=shm)
            with lock:
                out.append((int(e), e.role))

        ts = [threading.Thread(target=run) for _ in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(90)
        return out

    first = round_()
    assert sorted(r for _, r in first) == ["follower"] * (n - 1) + ["leader"]
    assert {e for e, _ in first} == {1} and len(calls) == 1
    assert len(_handles(shm)) == 1  # one handle, shared by the threads
    assert warmlock.invalidate_key("py-threads", 1, shm=shm) is True
    assert warmlock.invalidate_key("py-threads", 1, shm=shm) is False
    second = round_()
    assert sorted(r for _, r in second) == ["follower"] * (n - 1) + ["leader"]
    assert {e for e, _ in second} == {2} and len(calls) == 2


def test_keyboard_interrupt_in_warm_is_raised_again(shm):
    def interrupted() -> None:
        raise KeyboardInterrupt()

    with pytest.raises(KeyboardInterrupt):
        warmlock.ensure("py-intr", interrupted, shm=shm)
    s = slot(shm, "py-intr")
    assert s["state"] == "failed" and s["last_code"] == -errno.EINTR


def test_status_matches_cli_json(shm):
    warmlock.ensure("py-status-ready", lambda: None, shm=shm)
    with pytest.raises(warmlock.NotReady):
        warmlock.ensure("py-status-\u00e9-failed\n\"quoted\"", lambda: 1 / 0, shm=shm)
    if not os.access(CLI, os.X_OK):
        pytest.skip("%s is not built" % CLI)
    mine = warmlock.status(shm)
    out = subprocess.run([CLI, "status", "--json", "--shm", shm], capture_output=True, check=True)
    theirs = json.loads(out.stdout)["slots"]
    assert len(mine) == len(theirs) == 2
    for a, b in zip(mine, theirs):
        assert set(a) == set(b), set(a) ^ set(b)
        for k in a:
            if k in ("ready_age_ms", "down_ms") and a[k] is not None and b[k] is not None:
                assert abs(a[k] - b[k]) < 60000, k  # ages move between the two reads
            else:
                assert a[k] == b[k], (k, a[k], b[k])


def test_status_of_a_missing_segment_is_empty_and_creates_nothing(shm):
    assert warmlock.status(shm) == []
    assert not os.path.exists("/dev/shm" + shm)


def _handles(shm: str) -> list:
    return [pid for (name, pid) in warmlock._segments if name == shm.encode()]


def _after_fork_state() -> tuple:
    return len(warmlock._segments), len(warmlock._local.keys)


def test_fork_child_opens_its_own_handle(shm):
    warmlock.ensure("py-fork", lambda: None, shm=shm)
    assert _handles(shm) == [os.getpid()]
    procs = Procs(1, _after_fork_state)
    (_, kind, value), = procs.results()
    assert kind == "ok" and value == (0, 0)  # nothing inherited

    def child() -> tuple:
        e = warmlock.ensure("py-fork", lambda: None, shm=shm)
        return int(e), _handles(shm)

    procs = Procs(1, child)
    (pid, kind, value), = procs.results()
    assert kind == "ok" and value == (1, [pid])


def test_not_ready_attributes_and_pickling():
    import pickle

    e = warmlock.NotReady(-errno.ENOENT, 'database "x" does not exist', "3D000")
    assert (e.code, e.errno, e.sqlstate) == ("ENOENT", errno.ENOENT, "3D000")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.code, e2.errno, e2.sqlstate, e2.message) == (e.code, e.errno, e.sqlstate, e.message)
    assert warmlock.NotReady(errno.ETIMEDOUT).message  # the library's text when none is given


def test_arguments_are_checked(shm):
    with pytest.raises(ValueError):
        warmlock.ensure("k", lambda: None, timeout=-1, shm=shm)
    with pytest.raises(TypeError):
        warmlock.ensure("k", None, shm=shm)
    with pytest.raises(ValueError):
        warmlock.pg_ensure("dbname=x\0y", shm=shm)
    with pytest.raises(warmlock.NotReady) as ei:
        warmlock.ensure("k", lambda: None, shm="no-slash")
    assert ei.value.code == "EINVAL"


def test_library_lookup_order(tmp_path):
    env = dict(os.environ, WARMLOCK_LIB=str(tmp_path / "nonexistent.so"))
    code = "import warmlock, warmlock._lib as l; print(l.candidates()[0]); print(warmlock.library_version())"
    p = subprocess.run([sys.executable, "-c", code], cwd=PYROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    first, version = p.stdout.split()
    assert first == str(tmp_path / "nonexistent.so")  # $WARMLOCK_LIB comes first
    assert version == warmlock.library_version()  # then the build tree


def test_transient_errno_from_warm_is_an_outage_then_ready(shm):
    calls = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "not listening yet")

    e = warmlock.ensure("py-flaky", flaky, timeout=60.0, shm=shm)
    assert int(e) == 1 and len(calls) == 3
    s = slot(shm, "py-flaky")
    assert s["state"] == "ready" and s["failures"] >= 2, s

    def down() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "down")

    with pytest.raises(warmlock.NotReady) as ei:
        warmlock.ensure("py-down", down, timeout=0.2, shm=shm)
    assert ei.value.code == "ETIMEDOUT" and "down" in ei.value.message, repr(ei.value)
