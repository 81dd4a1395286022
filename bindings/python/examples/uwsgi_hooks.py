"""uWSGI: each worker waits for the database right after it is forked, and one warm-up
serves them all. (Not exercised by the tests: uWSGI is not among the packages the tests
install.)

    DATABASE_URL="host=/run/postgresql dbname=app" \
        uwsgi --master --processes 4 --http :8000 --import uwsgi_hooks --module wsgi_app:application

uWSGI forks its workers from C, and unless py-call-osafterfork is set Python's fork hooks do
not run there, so the worker first drops the segment handle and targets it inherited from the
master (warmlock.after_fork()) and then opens its own.
"""

import os

from uwsgidecorators import postfork

import warmlock

DSN = os.environ["DATABASE_URL"]
BOOT_WAIT = float(os.environ.get("WARMLOCK_BOOT_WAIT", "30"))


@postfork
def wait_for_database():
    warmlock.after_fork()
    try:
        epoch = warmlock.pg_ensure(DSN, timeout=BOOT_WAIT)
        print("warmlock: ready epoch=%d role=%s pid=%d" % (epoch, epoch.role, os.getpid()), flush=True)
    except warmlock.NotReady as e:
        print("warmlock: not ready, serving 503 until it is: %s" % e, flush=True)
