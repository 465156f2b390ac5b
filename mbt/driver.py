"""Drive mbt processes the way a user's script does (demo, end-to-end tests, benchmarks).

Blocking, standard library only: start ``mbt-tracker`` / ``mbt-client`` as
subprocesses, send a console command, read until the ``mbt> `` prompt.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import List, Optional

PROMPT = "mbt> "


def bin_path(name: str) -> str:
    """An installed mbt command next to the running Python (the venv's bin)."""
    return os.path.join(os.path.dirname(sys.executable), name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int, timeout: float = 20.0, proc: Optional[subprocess.Popen] = None) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listening on 127.0.0.1:%d after %.0fs" % (port, timeout))


class Process:
    """A child process in its own process group, stopped for sure by ``stop()``."""

    def __init__(self, argv: List[str], cwd: Optional[str] = None, log: Optional[str] = None,
                 pipe_stdout: bool = False, env: Optional[dict] = None) -> None:
        self.argv = argv
        self.log_file = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE if pipe_stdout else self.log_file,
                                     stderr=self.log_file, start_new_session=True, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, as others see it)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """``quit`` politely, then SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            try:
                self.send("quit\n")
                self.proc.stdin.close()
            except (OSError, ValueError):
                pass
            if self.wait(timeout) is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                if self.wait(5) is None:
                    self.kill()
        if self.log_file is not subprocess.DEVNULL:
            self.log_file.close()
        return self.proc.returncode


class Console(Process):
    """An ``mbt-client`` whose console is driven through pipes."""

    def __init__(self, address: str, info: str, state_dir: str, cwd: Optional[str] = None,
                 extra: Optional[List[str]] = None, log: Optional[str] = None, echo=None,
                 prefix: Optional[List[str]] = None) -> None:
        # ``prefix``: e.g. ``ip netns exec NS`` or ``faketime +10m`` (tests).
        argv = (prefix or []) + [bin_path("mbt-client"), address, info, "--state-dir", state_dir] + (extra or [])
        super().__init__(argv, cwd=cwd, log=log, pipe_stdout=True)
        self.address = address
        self.buf = ""
        self.echo = echo
        self.notices: List[str] = []      # asynchronous lines seen between commands
        self.banner = self.read_reply(30)

    def read_reply(self, timeout: float = 30.0) -> str:
        """Everything up to the next prompt (the prompt itself dropped)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            i = self.buf.find(PROMPT)
            if i >= 0 and (i == 0 or self.buf[i - 1] == "\n"):
                out, self.buf = self.buf[:i], self.buf[i + len(PROMPT):]
                return out.strip("\n")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no prompt from %s within %.0fs; got %r" % (self.address, timeout, self.buf[-300:]))
            r, _, _ = select.select([fd], [], [], min(left, 0.5))
            if r:
                data = os.read(fd, 65536)
                if not data:
                    raise EOFError("console of %s closed; got %r" % (self.address, self.buf[-300:]))
                self.buf += data.decode("utf-8", "replace")

    def drain(self) -> str:
        """Discard asynchronous notices that arrived with their own prompt."""
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 65536)
            if not data:
                break
            self.buf += data.decode("utf-8", "replace")
        i = self.buf.rfind("\n" + PROMPT)
        notices = ""
        if i >= 0 and self.buf.endswith(PROMPT):
            notices, self.buf = self.buf[:i], ""
        return notices

    def cmd(self, line: str, timeout: float = 30.0) -> str:
        """Send one command; return its reply. Notices (lines starting with
        ``notice: ``), before it or printed while it ran, go to ``notices``."""
        self.notices.extend(ln for ln in self.drain().splitlines() if ln.strip() and ln.strip() != "mbt>")
        self.send(line + "\n")
        while True:
            lines = self.read_reply(timeout).split("\n")
            self.notices.extend(ln for ln in lines if ln.startswith("notice: "))
            reply = "\n".join(ln for ln in lines if not ln.startswith("notice: "))
            if reply or not line.strip() or not any(ln.startswith("notice: ") for ln in lines):
                break
            # Only notices: one that came with its own prompt just as the command
            # was sent. The command's reply and prompt are still to come.
        if self.echo is not None:
            self.echo(self.address, line, reply)
        return reply
