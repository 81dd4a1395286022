"""A WSGI app whose requests use one psycopg2 connection per worker, and that tells the other
workers when the database broke it: on psycopg2.OperationalError it invalidates the epoch,
so the next request of any worker re-verifies the server once, for all of them.

Run it with gunicorn_conf.py (which waits for the database when a worker starts).
"""

import os

import psycopg2

import warmlock

DSN = os.environ["DATABASE_URL"]

_conn = None
_epoch = 0


def _connection():
    global _conn, _epoch
    # Ready path: one atomic load. During an outage fail_fast answers at once (EAGAIN,
    # ECONNREFUSED) instead of holding the request; a permanent failure (a wrong password, a
    # dropped database) is served from the segment without a connection attempt.
    _epoch = warmlock.pg_ensure(DSN, timeout=5.0, fail_fast=True)
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(DSN)
        _conn.autocommit = True
    return _conn


def application(environ, start_response):
    global _conn
    try:
        with _connection().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (backend,) = cur.fetchone()
        status, body = "200 OK", "ok epoch=%d pid=%d backend=%d\n" % (_epoch, os.getpid(), backend)
    except warmlock.NotReady as e:
        status, body = "503 Service Unavailable", "database not ready: %s\n" % e
    except psycopg2.OperationalError as e:
        # The server closed the connection (restart, failover): mark the epoch stale.
        warmlock.invalidate(DSN, _epoch)
        if _conn is not None:
            _conn.close()
        _conn = None
        status, body = "503 Service Unavailable", "database connection lost: %s\n" % str(e).strip()
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
