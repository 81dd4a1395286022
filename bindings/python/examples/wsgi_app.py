"""A WSGI app whose requests use one psycopg2 connection per worker, and that tells the other
workers when the database broke it: on psycopg2.OperationalError it invalidates the epoch its
connection was made in, so one process re-verifies the server for all of them, and it tries
once more on a new connection.

Run it with gunicorn_conf.py (which waits for the database when a worker starts).
"""

import os

import psycopg2

import warmlock

DSN = os.environ["DATABASE_URL"]
WARM_SQL = os.environ.get("WARMLOCK_WARM_SQL")  # the same as gunicorn_conf.py's: whichever
# process re-warms the target after an invalidation runs it

_conn = None
_conn_epoch = 0  # the epoch in which _conn was opened


def _query():
    global _conn, _conn_epoch
    # Ready path: one atomic load. During an outage fail_fast answers at once (EAGAIN,
    # ECONNREFUSED) instead of holding the request; a permanent failure (a wrong password, a
    # dropped database) is served from the segment without a connection attempt.
    epoch = warmlock.pg_ensure(DSN, timeout=5.0, warm_sql=WARM_SQL, fail_fast=True)
    if _conn is None:
        _conn = psycopg2.connect(DSN)
        _conn.autocommit = True
        _conn_epoch = epoch
    with _conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def _connection_lost():
    # The server closed our connection (a restart, a failover): mark its epoch stale, so the
    # next pg_ensure of any worker re-verifies the server, once for all. An epoch that another
    # worker has already replaced is ignored.
    global _conn
    warmlock.invalidate(DSN, _conn_epoch)
    if _conn is not None:
        _conn.close()
    _conn = None


def application(environ, start_response):
    try:
        try:
            backend = _query()
        except psycopg2.OperationalError:
            _connection_lost()
            backend = _query()
        status, body = "200 OK", "ok epoch=%d pid=%d backend=%d\n" % (_conn_epoch, os.getpid(), backend)
    except warmlock.NotReady as e:
        status, body = "503 Service Unavailable", "database not ready: %s\n" % e
    except psycopg2.OperationalError as e:
        _connection_lost()
        status, body = "503 Service Unavailable", "database connection lost: %s\n" % str(e).strip()
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
