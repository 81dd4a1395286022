"""gunicorn configuration: every worker waits for the database in post_fork, and one warm-up
serves them all (the others sleep until it is done, without probing the server).

    DATABASE_URL="host=/run/postgresql dbname=app" \
        gunicorn -c gunicorn_conf.py -w 4 wsgi_app:application

The wait counts against gunicorn's --timeout: the master hears nothing from a worker until
it has booted, and kills it (SIGABRT) after --timeout seconds (30 by default); the worker it
forks next would wait again, a boot loop. So each pg_ensure() below is bounded by half of
--timeout (gunicorn's `worker.timeout`), and between them the worker tells the master it is
alive (`worker.notify()`); the whole wait is bounded by WARMLOCK_BOOT_WAIT (60 s), after which
the worker boots anyway and its requests answer 503 until the database is back (wsgi_app.py).
Nothing here raises: an exception in post_fork makes gunicorn's master halt altogether.
"""

import os
import time

import warmlock

DSN = os.environ["DATABASE_URL"]
WARM_SQL = os.environ.get("WARMLOCK_WARM_SQL")  # e.g. "SELECT count(*) FROM hot_table"
BOOT_WAIT = float(os.environ.get("WARMLOCK_BOOT_WAIT", "60"))


def post_fork(server, worker):
    t0 = time.monotonic()
    # worker.timeout is --timeout / 2 (0 when the master's timeout is off)
    slice_s = worker.timeout if worker.timeout > 0 else BOOT_WAIT
    while True:
        left = BOOT_WAIT - (time.monotonic() - t0)
        try:
            epoch = warmlock.pg_ensure(DSN, timeout=max(0.001, min(slice_s, left)), warm_sql=WARM_SQL)
        except warmlock.NotReady as e:
            if e.code == "ETIMEDOUT" and left > slice_s:
                worker.notify()  # still waiting, and alive
                continue
            server.log.warning("warmlock: not ready after %.1f s, booting anyway: %s", time.monotonic() - t0, e)
            return
        server.log.info(
            "warmlock: ready epoch=%d role=%s waited_ms=%.0f", epoch, epoch.role, (time.monotonic() - t0) * 1000
        )
        return
