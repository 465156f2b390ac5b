"""A private PostgreSQL server for the tests (Debian's ``postgresql`` binaries).

One server per test session, in a temporary directory, on a free port of
127.0.0.1 with ``trust`` authentication; each test gets its own database.
As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
``restart()`` stops and starts it on the same port (for recovery tests).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional


def find_bindir() -> Optional[str]:
    """Where ``initdb`` and ``postgres`` are, or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            candidates.insert(0, out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for d in candidates:
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A throwaway PostgreSQL server."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (Debian package postgresql)")
        self.root = tempfile.mkdtemp(prefix="mbt-pg-")
        os.chmod(self.root, 0o755)
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.proc: Optional[subprocess.Popen] = None
        self._names = itertools.count(1)
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                   "--auth=trust", "-E", "UTF8", "--no-sync"])
        self.start()

    def _demote(self):
        if self._user is not None:
            os.setgid(self._user.pw_gid)
            os.setuid(self._user.pw_uid)

    def _run(self, argv) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, preexec_fn=self._demote, timeout=120)
        if out.returncode != 0:
            raise RuntimeError("%s failed: %s" % (argv[0], out.stderr[-2000:]))

    @property
    def base_url(self) -> str:
        return "postgresql://postgres@127.0.0.1:%d" % self.port

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it accepts connections."""
        log = open(os.path.join(self.root, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data, "-p", str(self.port),
             "-h", "127.0.0.1", "-k", self.root, "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=self._demote)
        log.close()
        import psycopg
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.base_url + "/postgres", connect_timeout=2).close()
                return
            except psycopg.Error:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start; see %s/server.log" % self.root)
                time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (open connections are cut, as when a database restarts)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg
        name = "mbt_test_%d_%d" % (os.getpid(), next(self._names))
        with psycopg.connect(self.base_url + "/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE %s" % name)
        return "%s/%s" % (self.base_url, name)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
