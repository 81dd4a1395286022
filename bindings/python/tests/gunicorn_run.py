"""Start and stop gunicorn on examples/gunicorn_conf.py and examples/wsgi_app.py (shared by
test_gunicorn.py and measure.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PYROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(PYROOT, "examples")


def start(conninfo: str, shm: str, port: int, log_path: str, warm_sql: str, workers: int = 4) -> subprocess.Popen:
    """gunicorn with `workers` workers on 127.0.0.1:`port`, its log in `log_path`, in a
    session of its own."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=conninfo,
        WARMLOCK_SHM=shm,
        WARMLOCK_WARM_SQL=warm_sql,
        PYTHONPATH=PYROOT + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""),
    )
    argv = [sys.executable, "-m", "gunicorn", "-c", os.path.join(EXAMPLES, "gunicorn_conf.py"),
            "-w", str(workers), "-b", "127.0.0.1:%d" % port, "--chdir", EXAMPLES, "wsgi_app:application"]
    with open(log_path, "w") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    """SIGTERM to the whole session (master and workers), SIGKILL after 30 s."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
