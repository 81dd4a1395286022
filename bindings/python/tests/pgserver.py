"""A throwaway PostgreSQL for the binding's tests: the Python side of tests/harness/pgharness.c,
the same choices made the same way (read that file's header for the reasons).

- `initdb` into a temp dir /tmp/wlpy.XXXXXX (data/, the Unix socket, server.log), a free TCP
  port on 127.0.0.1, trust authentication, log_connections and log_statement on, fsync off.
- As root, every server program runs as the `postgres` user (PostgreSQL refuses root).
- A crash-recovery start: write WAL, then `pg_ctl stop -m immediate`.
- Held in recovery for as long as a test needs, however fast the machine: start as a standby
  (standby.signal, hot_standby off) with nothing to stream from; every connection is refused
  with 57P03 until `release()` promotes it (a `promote` file and SIGUSR1 to the postmaster:
  pg_ctl promote refuses while the crash's WAL is still being replayed).
- A directory left by a test process that died is removed by the next `Server()`.
"""

from __future__ import annotations

import calendar
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional

SERVER_USER = "postgres"
READY_LINE = "database system is ready to accept connections"
PREFIX = "wlpy."


def _has_bins(d: str) -> bool:
    return all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "pg_ctl", "postgres", "psql"))


def bindir() -> Optional[str]:
    """The directory of initdb, pg_ctl, postgres and psql ($WL_PG_BINDIR, pg_config's, the
    newest /usr/lib/postgresql/*/bin, then $PATH's), or None."""
    env = os.environ.get("WL_PG_BINDIR")
    if env:
        return env if _has_bins(env) else None
    pgc = shutil.which("pg_config")
    if pgc:
        try:
            d = subprocess.run([pgc, "--bindir"], capture_output=True, text=True, timeout=10).stdout.strip()
            if d and _has_bins(d):
                return d
        except (OSError, subprocess.SubprocessError):
            pass

    def version(d: str) -> int:
        try:
            return int(d.split("/postgresql/")[1].split("/")[0])
        except (IndexError, ValueError):
            return 0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if _has_bins(d):
            return d
    initdb = shutil.which("initdb")
    if initdb and _has_bins(os.path.dirname(initdb)):
        return os.path.dirname(initdb)
    return None


def unavailable() -> Optional[str]:
    """Why PostgreSQL cannot run here, or None."""
    if os.environ.get("WL_PG_SKIP", "0") not in ("", "0"):
        return "WL_PG_SKIP is set"
    if not bindir():
        return "PostgreSQL server programs (initdb, pg_ctl, postgres, psql) not found: install postgresql (scripts/setup) or set WL_PG_BINDIR"
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(SERVER_USER)
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if pw.pw_uid == 0:
            return "the 'postgres' user has uid 0; PostgreSQL refuses to run as root"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _read_pid(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.readline().strip() or 0)
    except (OSError, ValueError):
        return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def _kill_server_in(d: str) -> None:
    pid = _read_pid(os.path.join(d, "data", "postmaster.pid"))
    if pid and _alive(pid):
        for sig in (signal.SIGCONT, signal.SIGQUIT):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if not _wait_gone(pid, 10):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            _wait_gone(pid, 2)


def clean_stale() -> None:
    """Remove what test processes that died left in /tmp/wlpy.*."""
    for d in glob.glob("/tmp/" + PREFIX + "*"):
        pid = _read_pid(os.path.join(d, "owner"))
        if pid and not _alive(pid):
            _kill_server_in(d)
            shutil.rmtree(d, ignore_errors=True)


class Server:
    """One throwaway cluster; `conninfo` reaches it over its Unix socket as `postgres`."""

    def __init__(self, extra_conf: str = "") -> None:
        why = unavailable()
        if why:
            raise RuntimeError(why)
        clean_stale()
        self.bindir = bindir()
        self.root = os.geteuid() == 0
        self.dir = tempfile.mkdtemp(prefix=PREFIX, dir="/tmp")
        self.owner = os.getpid()
        self.datadir = os.path.join(self.dir, "data")
        self.logpath = os.path.join(self.dir, "server.log")
        self.port = free_port()
        self.running = False
        self.held = False
        self.start_mark = 0
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write("%d\n" % self.owner)
        os.chmod(self.dir, 0o755)
        self._give(self.dir)
        self._run(
            ["initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", "--no-sync", "--no-instructions"],
            timeout=120,
        )
        conf = (
            "\n# pgserver.py\n"
            "listen_addresses = '127.0.0.1'\n"
            "port = %d\n"
            "unix_socket_directories = '%s'\n"
            "logging_collector = off\n"
            "log_connections = on\n"
            "log_statement = 'all'\n"
            "log_line_prefix = '%%m [%%p] '\n"
            "log_timezone = 'UTC'\n"
            "lc_messages = 'C'\n"
            "fsync = off\n"
            "checkpoint_timeout = '1d'\n"
            "max_wal_size = '4GB'\n"
            "max_connections = 100\n%s\n" % (self.port, self.dir, extra_conf)
        )
        self._append(os.path.join(self.datadir, "postgresql.conf"), conf)

    # ---- plumbing

    def _give(self, path: str) -> None:
        if self.root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def _append(self, path: str, text: str, mode: str = "a") -> None:
        with open(path, mode) as f:
            f.write(text)
        self._give(path)

    def _env(self) -> dict:
        # PG* and locale variables removed, and a sanitizer run's preload: the server
        # programs are not under test
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PG", "LC_")) and k not in ("LANG", "LANGUAGE", "LD_PRELOAD")}
        env.update(LC_ALL="C", LANG="C")
        if self.root:
            env.update(HOME=self.dir, USER=SERVER_USER, LOGNAME=SERVER_USER)
        return env

    def _run(self, argv: List[str], timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        argv = [os.path.join(self.bindir, argv[0])] + argv[1:]
        kw = {}
        if self.root:
            kw = dict(user=SERVER_USER, group=SERVER_USER, extra_groups=[])
        p = subprocess.run(argv, cwd=self.dir, env=self._env(), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise RuntimeError("%s failed (exit %d):\n%s%s\nserver log:\n%s" % (
                " ".join(argv), p.returncode, p.stdout, p.stderr, self.log_since(self.start_mark)[-4000:]))
        return p

    # ---- addresses

    @property
    def conninfo(self) -> str:
        return "host=%s port=%d dbname=postgres user=postgres" % (self.dir, self.port)

    def conninfo_db(self, dbname: str) -> str:
        return "host=%s port=%d dbname=%s user=postgres" % (self.dir, self.port, dbname)

    # ---- the server

    def start(self) -> None:
        """Start and return once it accepts connections."""
        self._drop_standby_signal()
        self.held = False
        self._start([])
        self.wait_ready()

    def _start(self, extra: List[str]) -> None:
        self.start_mark = self.log_mark()
        self._run(["pg_ctl", "-D", self.datadir, "-l", self.logpath, "-w", "-t", "60", "start"] + extra,
                  timeout=90)
        self.running = True

    def start_held(self) -> None:
        """Start held in recovery (see the module's docstring); returns once the socket
        listens and the startup process runs, so every connection is refused with 57P03."""
        self._append(os.path.join(self.datadir, "standby.signal"), "", "w")
        self._start(["-o", "-c hot_standby=off"])
        self.held = True
        end = time.monotonic() + 10
        while not self.startup_pid():
            if time.monotonic() > end:
                raise RuntimeError("held server has no startup process; log:\n" + self.log_since(self.start_mark))
            time.sleep(0.002)

    def release(self, wait: bool = True) -> None:
        """End the hold: promote the server out of recovery."""
        assert self.held and self.running
        self._append(os.path.join(self.datadir, "promote"), "", "w")
        os.kill(self.postmaster_pid(), signal.SIGUSR1)
        self.held = False
        if wait:
            self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        pid = self.postmaster_pid()
        if pid:
            os.kill(pid, signal.SIGCONT)
        self._run(["pg_ctl", "-D", self.datadir, "-m", mode, "-w", "-t", "60", "stop"], timeout=90)
        self.running = False
        if self.held:
            self._drop_standby_signal()
        self.held = False

    def crash(self, rows: int = 20000) -> None:
        """Write WAL (a CHECKPOINT, then `rows` rows), then stop immediately: the next start
        replays it."""
        assert self.running and not self.held
        self.psql("CHECKPOINT", "DROP TABLE IF EXISTS wl_crash", "CREATE TABLE wl_crash (id int, pad text)",
                  "INSERT INTO wl_crash SELECT g, repeat('x', 100) FROM generate_series(1, %d) g" % rows)
        self.stop("immediate")

    def up(self) -> None:
        """Running and past recovery, whatever a failed test left behind."""
        if self.running and self.held:
            self.release()
        if not self.running:
            self.start()

    def destroy(self) -> None:
        if os.getpid() != self.owner or not self.dir:
            return
        _kill_server_in(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = ""

    def _drop_standby_signal(self) -> None:
        try:
            os.unlink(os.path.join(self.datadir, "standby.signal"))
        except FileNotFoundError:
            pass

    def postmaster_pid(self) -> int:
        pid = _read_pid(os.path.join(self.datadir, "postmaster.pid"))
        return pid if pid and _alive(pid) else 0

    def startup_pid(self) -> int:
        """The pid of the postmaster's startup process (replaying WAL), or 0."""
        pm = self.postmaster_pid()
        if not pm:
            return 0
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid != pm:
                    continue
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if f.read().startswith(b"postgres: startup"):
                        return int(d)
            except (OSError, IndexError, ValueError):
                continue
        return 0

    def psql(self, *sql: str) -> str:
        argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo]
        for s in sql:
            argv += ["-c", s]
        return self._run(argv).stdout.strip()

    # ---- the log

    def log_mark(self) -> int:
        try:
            return os.path.getsize(self.logpath)
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        try:
            with open(self.logpath, "rb") as f:
                f.seek(mark)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def count_since(self, mark: int, needle: str) -> int:
        return sum(1 for line in self.log_since(mark).splitlines() if needle in line)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait, reading the log (no connections), for the ready line of the last start."""
        end = time.monotonic() + timeout
        while self.count_since(self.start_mark, READY_LINE) == 0:
            if time.monotonic() > end:
                raise RuntimeError("server not ready after %.0f s; log:\n%s" % (timeout, self.log_since(self.start_mark)))
            time.sleep(0.005)

    def ready_realtime(self, mark: int) -> Optional[float]:
        """The wall-clock time (seconds since the epoch) of the first ready line after `mark`
        (the log's %m stamps are UTC, millisecond resolution), or None."""
        for line in self.log_since(mark).splitlines():
            if READY_LINE in line:
                stamp = line[:23]  # 2026-12-01 23:12:19.123
                t = time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")
                return calendar.timegm(t) + int(stamp[20:23]) / 1000.0
        return None
