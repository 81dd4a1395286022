#!/usr/bin/env python3
"""Two figures of the Python binding, measured once against a throwaway PostgreSQL:

1. the ready path: microseconds per pg_ensure() and per ensure() call on a READY target,
   next to a bare ctypes call into the library (wl_version());
2. gunicorn: 4 workers of examples/gunicorn_conf.py started while the server is held in
   crash recovery, a request queued meanwhile; the time from the server's "ready to accept
   connections" log line to that request's response.

    /usr/bin/python3 bindings/python/measure.py

Run it on a quiet machine, once; it is not part of the tests.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "tests"))

import gunicorn_run  # noqa: E402
import pgserver  # noqa: E402
import warmlock  # noqa: E402
from warmlock import _lib  # noqa: E402


def per_call_us(stmt, n: int = 200000) -> float:
    best = min(timeit.repeat(stmt, number=n, repeat=5))
    return best / n * 1e6


def main() -> int:
    why = pgserver.unavailable()
    if why:
        print("measure: no PostgreSQL: %s" % why)
        return 77
    shm = "/wlpy.measure.%d" % os.getpid()
    pg = pgserver.Server()
    try:
        pg.start()
        lib = _lib.load()
        warmlock.pg_ensure(pg.conninfo, shm=shm)
        warmlock.ensure("measure", lambda: None, shm=shm)
        ci = pg.conninfo
        bare = per_call_us(lib.wl_version)
        pge = per_call_us(lambda: warmlock.pg_ensure(ci, shm=shm))
        ens = per_call_us(lambda: warmlock.ensure("measure", int, shm=shm))
        empty = per_call_us(lambda: None)
        print("ready path, best of 5 x 200000 calls (a Python lambda call costs %.3f us):" % empty)
        print("  bare ctypes call wl_version()   %.3f us" % bare)
        print("  warmlock.pg_ensure(conninfo)    %.3f us" % pge)
        print("  warmlock.ensure(key, warm)      %.3f us" % ens)

        pg.crash()
        pg.start_held()
        mark = pg.log_mark()
        port = pgserver.free_port()
        gshm = shm + ".gunicorn"
        log = "/tmp/wlpy.measure.%d.gunicorn.log" % os.getpid()
        p = gunicorn_run.start(pg.conninfo, gshm, port, log, "SELECT 1")
        try:
            end = time.monotonic() + 60
            while True:
                s = warmlock.status(gshm)
                if s and s[0]["waiters"] >= 3 and s[0]["sqlstate"] == "57P03":
                    break
                if time.monotonic() > end or p.poll() is not None:
                    print("measure: gunicorn workers did not all wait; see %s" % log)
                    return 1
                time.sleep(0.002)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request("GET", "/")
            pg.release(wait=False)
            resp = conn.getresponse()
            t_resp = time.time()
            resp.read()
            pg.wait_ready()
            t_ready = pg.ready_realtime(mark)
            print("gunicorn, 4 workers, started during a held crash recovery:")
            print("  server ready -> first response  %.1f ms (HTTP %d)" % ((t_resp - t_ready) * 1000, resp.status))
        finally:
            gunicorn_run.stop(p)
            try:
                os.unlink(log)
            except OSError:
                pass
    finally:
        pg.destroy()
        for name in (shm, shm + ".gunicorn"):
            try:
                os.unlink("/dev/shm" + name)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
