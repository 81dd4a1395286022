"""Celery: each process of the prefork pool waits for the database when it starts, and one
warm-up serves them all. (Not exercised by the tests: Celery is not among the packages the
tests install.)

    DATABASE_URL="host=/run/postgresql dbname=app" celery -A celery_worker worker -c 8

Celery gives a new pool process worker_proc_alive_timeout (4 s by default) to report itself
up, and the worker_process_init handlers run before it does: a longer wait makes the pool
kill and replace the process. Raise that setting above the deadline given to pg_ensure.
"""

import logging
import os

import psycopg2
from celery import Celery
from celery.signals import worker_process_init

import warmlock

DSN = os.environ["DATABASE_URL"]
BOOT_WAIT = float(os.environ.get("WARMLOCK_BOOT_WAIT", "30"))

app = Celery("celery_worker", broker=os.environ.get("CELERY_BROKER_URL", "redis://localhost:6379/0"))
app.conf.worker_proc_alive_timeout = BOOT_WAIT + 10

log = logging.getLogger(__name__)


@worker_process_init.connect
def wait_for_database(**_):
    try:
        epoch = warmlock.pg_ensure(DSN, timeout=BOOT_WAIT)
        log.info("warmlock: ready epoch=%d role=%s", epoch, epoch.role)
    except warmlock.NotReady as e:
        # tasks then fail and retry; the pool process itself stays
        log.warning("warmlock: not ready: %s", e)


@app.task(bind=True, autoretry_for=(psycopg2.OperationalError, warmlock.NotReady), retry_backoff=True)
def count_rows(self, table):
    epoch = warmlock.pg_ensure(DSN, timeout=10.0)
    try:
        with psycopg2.connect(DSN) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM %s" % psycopg2.extensions.quote_ident(table, cur))
            return cur.fetchone()[0]
    except psycopg2.OperationalError:
        warmlock.invalidate(DSN, epoch)  # one process re-verifies the server for all
        raise
