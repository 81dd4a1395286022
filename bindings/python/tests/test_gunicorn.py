"""examples/gunicorn_conf.py and examples/wsgi_app.py with Debian's gunicorn and psycopg2,
against a real server held in crash recovery while the workers start."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time

import pytest

import gunicorn_run
import pgserver
from conftest import slot, wait_for
import warmlock


def _have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", "import " + module], capture_output=True).returncode == 0


def _log(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _get(port: int) -> tuple:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _every_worker_answers(port: int, log_path: str, workers: int = 4) -> None:
    """Requests until each of the workers has answered one (which worker accepts is the
    kernel's choice: bounded by a count, not a time); every answer must be a 200."""
    pids = set()
    for _ in range(2000):
        status, body = _get(port)
        assert status == 200, (body, _log(log_path))
        pids.add(body.split("pid=")[1].split()[0])
        if len(pids) == workers:
            return
    pytest.fail("only workers %s answered 2000 requests" % sorted(pids))


def test_gunicorn_4_workers_started_during_recovery_one_warmup(pg, shm, tmp_path):
    for m in ("gunicorn", "psycopg2"):
        if not _have(m):
            pytest.skip("%s lacks %s (install gunicorn and python3-psycopg2: scripts/setup)" % (sys.executable, m))
    log_path = str(tmp_path / "gunicorn.log")
    marker = "wl_py_gunicorn_%d" % os.getpid()
    pg.crash()
    pg.start_held()
    mark = pg.log_mark()
    port = pgserver.free_port()
    p = gunicorn_run.start(pg.conninfo, shm, port, log_path, "SELECT '%s'" % marker)
    try:
        # the 4 workers in post_fork: one probing the recovering server, 3 waiting for it
        wait_for(
            "4 gunicorn workers in the single-flight",
            lambda: p.poll() is None and (slot(shm) or {}).get("waiters", 0) >= 3
            and (slot(shm) or {}).get("sqlstate") == "57P03",
            dump=lambda: "exit %s\n%s\n%s" % (p.poll(), warmlock.status(shm), _log(log_path)),
        )
        # a request arrives while the database is still in recovery: it waits in the backlog
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request("GET", "/")
        pg.release(wait=False)
        resp = conn.getresponse()
        t_response = time.time()
        body = resp.read().decode()
        conn.close()
        pg.wait_ready()
        t_ready = pg.ready_realtime(mark)
        assert resp.status == 200, (body, _log(log_path))
        assert body.startswith("ok epoch=")
        wait_for("4 workers ready", lambda: _log(log_path).count("warmlock: ready") >= 4,
                 dump=lambda: _log(log_path))
        text = _log(log_path)
        assert text.count("role=leader") == 1, text
        assert text.count("role=follower") == 3, text
        assert "WORKER TIMEOUT" not in text and "not ready" not in text, text
        assert slot(shm)["warmups"] == 1
        assert pg.count_since(mark, marker) == 1  # the warm-up ran once for the 4 workers
        print("gunicorn: server ready -> first response %.1f ms" % ((t_response - t_ready) * 1000))

        # A restart closes every worker's connection: each request still succeeds (the app
        # invalidates the epoch of its broken connection and tries again), and the server
        # is re-warmed once for the 4 workers, however many of them saw the break.
        _every_worker_answers(port, log_path)  # so each has a connection to lose
        epoch = slot(shm)["epoch"]
        mark = pg.log_mark()
        pg.stop("fast")
        pg.start()
        _every_worker_answers(port, log_path)
        s = slot(shm)
        assert s["epoch"] == epoch + 1 and s["invalidations"] == 1, s
        assert pg.count_since(mark, marker) == 1
    finally:
        gunicorn_run.stop(p)
