"""Fixtures of the binding's tests, and cmocka-style verdict lines for scripts/test.

Each test prints ``[ RUN      ] name`` when it starts and ``[       OK ] name``,
``[  FAILED  ] name`` or ``[  SKIPPED ] name`` when it ends (scripts/test counts them).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PYROOT = os.path.dirname(HERE)  # bindings/python
REPO = os.path.dirname(os.path.dirname(PYROOT))
sys.path.insert(0, PYROOT)
sys.path.insert(0, HERE)

import pgserver  # noqa: E402
import warmlock  # noqa: E402

CLI = os.path.join(REPO, "build", "coordinator", "warmlock")


# ---------------------------------------------------------------- verdict lines
#
# run-tests runs pytest with -s (no capture: a test's output goes where cmocka's would) and
# sets WL_CMOCKA_LINES=1, which removes pytest's own reporter: these are then the only
# verdicts printed, each on a line of its own.

_verdicts: Dict[str, str] = {}
_counts = {"OK": 0, "FAILED": 0, "SKIPPED": 0}


@pytest.hookimpl(trylast=True)
def pytest_configure(config: Any) -> None:
    if os.environ.get("WL_CMOCKA_LINES") == "1":
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            config.pluginmanager.unregister(tr)


def _say(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: Any, nextitem: Any) -> None:
    _say("[ RUN      ] %s" % item.name)
    _verdicts[item.nodeid] = "OK"


def pytest_runtest_logreport(report: Any) -> None:
    if report.failed:
        _verdicts[report.nodeid] = "FAILED"
        _say("%s (%s):\n%s" % (report.nodeid, report.when, report.longreprtext))
    elif report.skipped and _verdicts.get(report.nodeid) != "FAILED":
        _verdicts[report.nodeid] = "SKIPPED"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if reason.startswith("Skipped: "):
            reason = reason[len("Skipped: "):]
        _say("skipped: %s" % reason)


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    v = _verdicts.get(nodeid, "FAILED")
    _counts[v] += 1
    tag = {"OK": "[       OK ]", "FAILED": "[  FAILED  ]", "SKIPPED": "[  SKIPPED ]"}[v]
    _say("%s %s" % (tag, nodeid.split("::")[-1]))


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        name = "collect_" + os.path.basename(report.nodeid or "session").replace(" ", "_")
        _say("[ RUN      ] %s\n%s" % (name, report.longreprtext))
        _say("[  FAILED  ] %s" % name)
        _counts["FAILED"] += 1


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    _say("pytest: %d passed, %d failed, %d skipped" % (_counts["OK"], _counts["FAILED"], _counts["SKIPPED"]))


# ---------------------------------------------------------------- fixtures

_server: Optional[pgserver.Server] = None
_server_error: Optional[str] = None


@pytest.fixture(scope="session")
def pg_session():
    global _server, _server_error
    why = pgserver.unavailable()
    if why:
        yield None, why
        return
    try:
        _server = pgserver.Server()
        _server.start()
        _server.psql("CREATE TABLE IF NOT EXISTS wl_py (id int)")
    except Exception as e:  # the tests that need it skip, saying why
        _server_error = "the throwaway PostgreSQL did not start: %s" % e
        yield None, _server_error
    else:
        yield _server, None
    finally:
        if _server is not None:
            _server.destroy()


@pytest.fixture
def pg(pg_session):
    """The session's server, up and past recovery."""
    server, why = pg_session
    if server is None:
        pytest.skip(why)
    server.up()
    return server


@pytest.fixture
def shm(request):
    """A segment name of this test's own, removed afterwards."""
    name = "/wlpy.%d.%s" % (os.getpid(), request.node.name[:60])
    _unlink(name)
    yield name
    _unlink(name)


def _unlink(name: str) -> None:
    try:
        os.unlink("/dev/shm" + name)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- helpers


def slot(shm: str, key: Optional[str] = None) -> Optional[dict]:
    """The segment's one slot (or the slot of `key`), or None."""
    for s in warmlock.status(shm):
        if key is None or s["key"] == key:
            return s
    return None


def wait_for(what: str, cond: Callable[[], Any], timeout: float = 60.0, dump: Callable[[], str] = lambda: "") -> Any:
    """Poll `cond` every 2 ms until it is true; fail after a generous `timeout`."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            pytest.fail("timed out after %.0f s waiting for %s\n%s" % (timeout, what, dump()))
        time.sleep(0.002)


def _child(q: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        q.put((os.getpid(), "ok", fn(*args)))
    except BaseException as e:  # reported to the parent
        q.put((os.getpid(), "err", e if isinstance(e, warmlock.NotReady) else RuntimeError(traceback.format_exc())))


class Procs:
    """`n` forked processes each running fn(*args); `results()` collects (pid, kind, value)."""

    def __init__(self, n: int, fn: Callable[..., Any], *args: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self.q = ctx.Queue()
        self.procs = [ctx.Process(target=_child, args=(self.q, fn, args)) for _ in range(n)]
        for p in self.procs:
            p.start()

    def results(self, timeout: float = 90.0) -> List[tuple]:
        out = []
        end = time.monotonic() + timeout
        for _ in self.procs:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.q.get(timeout=left))
            except Exception:
                break
        for p in self.procs:
            p.join(max(0.1, end - time.monotonic()))
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
