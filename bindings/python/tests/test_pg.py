"""pg_ensure against a real PostgreSQL: the herd in a crash-recovery start, permanent
failures, invalidation, fail_fast and asyncio during a recovery held open."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import threading

import pytest

from conftest import CLI, Procs, slot, wait_for
import warmlock


def _pg_child(conninfo: str, shm: str, warm_sql: str) -> tuple:
    e = warmlock.pg_ensure(conninfo, timeout=120.0, warm_sql=warm_sql, shm=shm)
    return int(e), e.role


def test_herd_16_processes_crash_recovery_one_warmup(pg, shm):
    pg.crash()
    pg.start_held()
    mark = pg.log_mark()
    marker = "wl_py_herd_%d" % os.getpid()
    procs = Procs(16, _pg_child, pg.conninfo, shm, "SELECT '%s'" % marker)
    try:
        # all 16 in the single-flight, the leader refused by the recovering server
        wait_for(
            "15 waiters and a 57P03",
            lambda: (slot(shm) or {}).get("waiters", 0) >= 15 and (slot(shm) or {}).get("sqlstate") == "57P03",
            dump=lambda: "%s\n%s" % (warmlock.status(shm), pg.log_since(mark)[-3000:]),
        )
        s = slot(shm)
        assert s["state"] == "warming" and s["leader_alive"], s
        pg.release(wait=False)
        res = procs.results()
    finally:
        procs.kill()
    assert len(res) == 16, res
    assert all(kind == "ok" for _, kind, _ in res), res
    assert len({v[0] for _, _, v in res}) == 1
    assert sorted(v[1] for _, _, v in res) == ["follower"] * 15 + ["leader"]
    s = slot(shm)
    assert s["state"] == "ready" and s["warmups"] == 1, s
    assert pg.count_since(mark, marker) == 1  # warm_sql ran once, for all 16


def test_missing_database_not_ready_enoent_3D000(pg, shm):
    conninfo = pg.conninfo_db("wl_no_such_db")
    for _ in range(2):  # the leader's failure, then the same failure as published
        with pytest.raises(warmlock.NotReady) as ei:
            warmlock.pg_ensure(conninfo, timeout=30.0, shm=shm)
        e = ei.value
        assert e.code == "ENOENT" and e.errno == errno.ENOENT, repr(e)
        assert e.sqlstate == "3D000", repr(e)
        assert "wl_no_such_db" in e.message
    s = slot(shm)
    assert s["state"] == "failed" and s["warmups"] == 1 and s["sqlstate"] == "3D000"


def test_invalidate_reverifies_once_and_status_matches_cli(pg, shm):
    e1 = warmlock.pg_ensure(pg.conninfo, shm=shm)
    assert e1.role == "leader"
    assert warmlock.pg_ensure(pg.conninfo, shm=shm) == e1
    # the same server spelt as a URI is the same slot
    uri = "postgresql://postgres@/postgres?host=%s&port=%d" % (pg.dir, pg.port)
    assert warmlock.pg_ensure(uri, shm=shm).role == "follower"
    assert warmlock.invalidate(pg.conninfo, e1, shm=shm) is True
    assert warmlock.invalidate(pg.conninfo, e1, shm=shm) is False
    e2 = warmlock.pg_ensure(pg.conninfo, shm=shm)
    assert e2 == e1 + 1 and e2.role == "leader"
    assert warmlock.invalidate(uri, e1, shm=shm) is False  # an older epoch is ignored
    assert len(warmlock.status(shm)) == 1
    if not os.access(CLI, os.X_OK):
        pytest.skip("%s is not built" % CLI)
    out = subprocess.run([CLI, "status", "--json", "--shm", shm], capture_output=True, check=True)
    (theirs,) = json.loads(out.stdout)["slots"]
    (mine,) = warmlock.status(shm)
    assert set(mine) == set(theirs)
    for k in mine:
        if k not in ("ready_age_ms",):
            assert mine[k] == theirs[k], (k, mine[k], theirs[k])


def test_bad_conninfo_is_einval(shm):
    with pytest.raises(warmlock.NotReady) as ei:
        warmlock.pg_ensure("host=/tmp nosuchoption=1", shm=shm)
    assert ei.value.code == "EINVAL" and "nosuchoption" in ei.value.message


def test_async_and_fail_fast_during_held_recovery(pg, shm):
    pg.stop()
    pg.start_held()

    async def main() -> tuple:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.001)

        tick = asyncio.ensure_future(ticker())
        waiting = asyncio.ensure_future(warmlock.pg_ensure_async(pg.conninfo, timeout=120.0, shm=shm))
        # The event loop keeps running while the wait goes on in its own thread.
        while (slot(shm) or {}).get("sqlstate") != "57P03":
            await asyncio.sleep(0.002)
        assert not waiting.done()
        seen = ticks
        while ticks < seen + 3:
            await asyncio.sleep(0.001)
        # a fail_fast caller gets the outage at once
        try:
            await warmlock.pg_ensure_async(pg.conninfo, timeout=120.0, fail_fast=True, shm=shm)
            fast = None
        except warmlock.NotReady as e:
            fast = e
        assert not waiting.done()
        pg.release(wait=False)
        epoch = await waiting
        done.set()
        await tick
        return epoch, fast

    epoch, fast = asyncio.run(main())
    assert epoch.role in ("leader", "follower") and int(epoch) >= 1
    assert fast is not None and fast.code == "EAGAIN" and fast.sqlstate == "57P03", repr(fast)


def test_threads_pg_ensure_one_leader(pg, shm):
    pg.stop()
    pg.start_held()
    n = 6
    out = []
    lock = threading.Lock()

    def run() -> None:
        e = warmlock.pg_ensure(pg.conninfo, timeout=120.0, shm=shm)
        with lock:
            out.append(e.role)

    ts = [threading.Thread(target=run) for _ in range(n)]
    for t in ts:
        t.start()
    wait_for("%d waiting threads" % (n - 1), lambda: (slot(shm) or {}).get("waiters", 0) >= n - 1)
    pg.release(wait=False)
    for t in ts:
        t.join(120)
    assert sorted(out) == ["follower"] * (n - 1) + ["leader"]
    assert slot(shm)["warmups"] == 1


def test_varying_timeouts_keep_a_bounded_target_cache(pg, shm):
    first = warmlock.pg_ensure(pg.conninfo, shm=shm)
    for i in range(3 * warmlock._PER_THREAD):
        assert warmlock.pg_ensure(pg.conninfo, timeout=10.0 + i / 1000.0, shm=shm) == first
    assert len(warmlock._local.targets) <= warmlock._PER_THREAD
    assert slot(shm)["warmups"] == 1


def test_fleet_two_hosts_one_warm_sql(pg, shm):
    other = shm + ".b"
    pg.psql("DROP TABLE IF EXISTS warmlock_fleet")
    mark = pg.log_mark()
    marker = "wl_py_fleet_%d" % os.getpid()
    try:
        for name in (shm, other):  # two hosts, one after the other
            warmlock.pg_ensure(pg.conninfo, warm_sql="SELECT '%s'" % marker, shm=name, fleet=True)
        assert slot(shm)["fleet"] == "led", slot(shm)
        assert slot(other)["fleet"] == "skipped", slot(other)
        assert slot(other)["fleet_leader_pid"] == slot(shm)["fleet_leader_pid"]
        assert slot(other)["fleet_leader_app"].startswith("warmlock-fleet ")
        assert pg.count_since(mark, marker) == 1  # warm_sql ran once, for both hosts
    finally:
        try:
            os.unlink("/dev/shm" + other)
        except FileNotFoundError:
            pass
