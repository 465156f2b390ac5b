"""Zero-copy piping for the relay on Linux: ``splice(2)`` through a kernel pipe.

Copying a relayed byte in Python costs a read into a fresh bytes object and a
write out of it (two copies through user space, plus Twisted's buffering).
With ``splice`` the bytes go socket -> pipe -> socket inside the kernel; the
relay process only says how many. :class:`SplicePipe` takes over one
direction of a paired connection from Twisted: it replaces the source
transport's ``doRead`` and the destination transport's ``doWrite`` (the same
hook ``mbt.protocols.peer`` uses for its receive fast path), so the reactor
still does all the waiting:

* readable source: splice up to ``CHUNK`` bytes into the pipe, then as much
  as the destination takes out of it;
* destination full (``EAGAIN`` with bytes left in the pipe): stop reading the
  source, wait until the destination is writable, drain the pipe, read again
  (backpressure, as with Twisted's producers);
* end of the source: the pipe is drained into the destination before the
  relay closes it (``loseConnection`` goes through the same ``doWrite``).

Bytes Twisted already buffered for the destination (``OK``, early data) go
out first: ``doWrite`` drains Twisted's buffer before the pipe. Used only
when the relay has no bandwidth limits (limits need to see every read).
"""

from __future__ import annotations

import fcntl
import os
from typing import Callable, Optional

from twisted.internet import main, tcp

#: Bytes moved per splice call, and the pipe size asked for.
CHUNK = 1024 * 1024
#: Splice rounds per readable event at most (then other connections get their turn).
MAX_ROUNDS = 16
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def available(*transports) -> bool:
    """Can these transports be spliced (Linux, plain TCP sockets)?"""
    return hasattr(os, "splice") and all(
        isinstance(t, tcp.Connection) and hasattr(t, "socket") for t in transports)


def _twisted_buffered(transport) -> bool:
    """Does Twisted still hold bytes to write on ``transport``?"""
    return bool(getattr(transport, "_tempDataBuffer", None)) or (
        len(getattr(transport, "dataBuffer", b"")) > getattr(transport, "offset", 0))


class SplicePipe:
    """Moves bytes ``src`` -> ``dst`` (two TCP transports) with ``splice``; ``counted(n)`` per move."""

    def __init__(self, src, dst, counted: Callable[[int], None]) -> None:
        self.src, self.dst, self.counted = src, dst, counted
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.wfd, _F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass        # the default 64 KiB pipe works, with more calls
        self.pending = 0            # bytes in the pipe
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self._dst_write = dst.doWrite
        src.doRead = self._read
        dst.doWrite = self._write
        # A pipe of the other direction may already have patched dst.doWrite's
        # owner for reading; each direction has its own pipe and hooks.

    def _read(self) -> Optional[object]:
        """The source is readable: move what it has into the pipe and on, until it has no more."""
        for _ in range(MAX_ROUNDS):
            try:
                n = os.splice(self.src_fd, self.wfd, CHUNK, flags=_FLAGS)
            except BlockingIOError:
                return self._flush()        # drained (or the pipe is full)
            except OSError:
                return main.CONNECTION_LOST
            if n == 0:
                return main.CONNECTION_DONE
            self.pending += n
            self.counted(n)
            self._flush()
            if self.pending:
                return None                 # the destination is full: wait for it
        return None                         # fair to other connections: the reactor calls again

    def _flush(self) -> Optional[object]:
        """Drain the pipe into the destination; on a full destination wait for it to be writable."""
        if self.pending and _twisted_buffered(self.dst):
            return self._wait_for_dst()
        while self.pending:
            try:
                m = os.splice(self.rfd, self.dst_fd, self.pending, flags=_FLAGS)
            except BlockingIOError:
                return self._wait_for_dst()
            except OSError:
                # The destination is gone; its own connectionLost tears the pair down.
                self.src.stopReading()
                return None
            self.pending -= m
        return None

    def _wait_for_dst(self) -> None:
        self.src.stopReading()
        self.dst.startWriting()
        return None

    def _write(self) -> Optional[object]:
        """The destination is writable: Twisted's own bytes first, then the pipe, then read again."""
        if _twisted_buffered(self.dst) or not self.pending:
            result = self._dst_write()
            if result is not None or _twisted_buffered(self.dst):
                return result
        if self.pending:
            try:
                while self.pending:
                    self.pending -= os.splice(self.rfd, self.dst_fd, self.pending, flags=_FLAGS)
            except BlockingIOError:
                self.dst.startWriting()
                return None
            except OSError:
                return main.CONNECTION_LOST
        if self.src.connected and not self.src.disconnected:
            self.src.startReading()
        # Let Twisted finish what it does with an empty buffer (stop writing, or close).
        return self._dst_write()

    def close(self) -> None:
        """Release the pipe (the pair has ended)."""
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.rfd = self.wfd = -1
