"""A plain TCP transport's write path taken over: lines as bytes, blocks as ``os.sendfile``.

Twisted's own write path copies every block twice on a serving peer: ``pread``
into a new bytes object, then a join of the queued buffers in
``FileDescriptor.doWrite`` (33 % + 19 % of a seeder's reactor thread, see
docs/performance.rst). :class:`DirectWriter` replaces it for one connection:
control lines are queued as bytes and ``send``-ed, a block is queued as a file
range and handed to the kernel with ``os.sendfile`` (page cache -> socket, no
copy through Python). Everything goes out in the order it was queued.

The writer tries to send at once (no reactor loop turn and no two
``epoll_ctl`` calls per write); only when the socket is full does it ask the
reactor for a writability event, and it then calls ``on_drained`` once its
queue is empty, so that the protocol queues the next block only when the
kernel has taken the previous one (backpressure: the kernel's socket buffer is
the only buffer). Closing stays Twisted's: ``loseConnection`` waits for this
queue to drain, then for Twisted's (empty) buffer.

Only for plain TCP transports (``twisted.internet.tcp.Connection``). TLS has to
encrypt in user space: there :mod:`mbt.protocols.tlsdirect` queues the
encrypted records here as bytes (no file ranges).
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from typing import Callable, Deque, Optional

from twisted.internet import main

#: errnos of ``sendfile`` that mean the socket is gone (others: the file is bad).
_SOCKET_ERRNOS = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ECONNABORTED,
                            errno.ESHUTDOWN, errno.ETIMEDOUT})


class FileRangeError(IOError):
    """The file behind a queued range could not be read to its end (truncated, closed, I/O error)."""


class _Range:
    __slots__ = ("source", "pos", "left")

    def __init__(self, source, pos: int, left: int) -> None:
        self.source = source    # anything with an ``fd`` attribute (None once closed)
        self.pos = pos
        self.left = left


class DirectWriter:
    """Sends one TCP connection's bytes and file ranges itself, in order.

    ``on_drained()`` is called (on the reactor thread) whenever the queue has
    just become empty after a wait for the socket; ``on_file_error(exc)`` when
    a file range cannot be sent (the connection is then aborted: a block cut
    short must not be followed by anything). ``send`` and ``sendfile`` are the
    socket operations (``socket.send``, ``os.sendfile``), replaceable in tests.
    """

    def __init__(self, transport, on_drained: Callable[[], None],
                 on_file_error: Callable[[Exception], None],
                 send: Optional[Callable] = None, sendfile: Optional[Callable] = None) -> None:
        self.transport = transport
        self.on_drained = on_drained
        self.on_file_error = on_file_error
        sock = getattr(transport, "socket", None)
        self._send = send or sock.send
        self._sendfile = sendfile or (lambda fd, pos, n: os.sendfile(sock.fileno(), fd, pos, n))
        self.items: Deque = deque()
        self.dead = False
        self._waiting = False
        self._twisted_do_write = transport.doWrite
        transport.doWrite = self._do_write

    # -- queueing ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while something queued has not been handed to the kernel yet."""
        return bool(self.items)

    def write(self, data: bytes) -> None:
        """Queue bytes (a control line) and send what the socket takes now."""
        if self.dead or not data:
            return
        self.items.append(memoryview(data))
        self.flush()

    def write_copy(self, view) -> None:
        """Like :meth:`write` for a buffer the caller reuses at once: what the socket does not take now is copied."""
        if self.dead or not view:
            return
        if not self.items:
            try:
                n = self._send(view, 0)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                self._lost(main.CONNECTION_LOST)
                return
            if n == len(view):
                return
            view = view[n:]
        self.items.append(memoryview(bytes(view)))
        self.flush()

    def write_file(self, header: bytes, source, pos: int, length: int) -> None:
        """Queue ``header`` then ``length`` bytes of ``source.fd`` from ``pos``; send what fits now."""
        if self.dead:
            return
        self.items.append(memoryview(header))
        if length > 0:
            self.items.append(_Range(source, pos, length))
        self.flush()

    def flush(self) -> None:
        """Send now; if the socket fills up, wait for the reactor to say it is writable."""
        if self._waiting or self.dead:
            return
        why = self._pump()
        if why is not None:
            self._lost(why)
        elif self.items:
            self._waiting = True
            self.transport.startWriting()

    # -- sending ---------------------------------------------------------------

    def _pump(self):
        """Hand queued items to the kernel until it refuses; None, or why the connection is lost."""
        items = self.items
        while items:
            item = items[0]
            if type(item) is memoryview:
                # MSG_MORE: a PIECE header leaves with the block that follows it.
                flags = socket.MSG_MORE if len(items) > 1 else 0
                try:
                    n = self._send(item, flags)
                except (BlockingIOError, InterruptedError):
                    return None
                except OSError:
                    return main.CONNECTION_LOST
                if n < len(item):
                    items[0] = item[n:]
                    return None
                items.popleft()
                continue
            fd = item.source.fd
            if fd is None:
                return FileRangeError("the file was closed while a block of it was being sent")
            try:
                n = self._sendfile(fd, item.pos, item.left)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as e:
                if e.errno in _SOCKET_ERRNOS:
                    return main.CONNECTION_LOST
                return FileRangeError("cannot send from the file: %s" % (e.strerror or e))
            if n == 0:
                return FileRangeError("short read (file changed on disk?)")
            item.pos += n
            item.left -= n
            if not item.left:
                items.popleft()
            # else: again at once; a full socket answers EAGAIN, a cut file 0
        return None

    def _do_write(self):
        """The reactor's writability event (replaces the transport's ``doWrite``)."""
        if self.dead:
            return self._twisted_do_write()
        why = self._pump()
        if why is not None:
            self._lost(why)
            return None         # abortConnection has unregistered us and will report the loss
        if self.items:
            return None         # still full: stay registered for writing
        self._waiting = False
        if not self.transport.disconnecting:
            self.on_drained()
            if self.items:
                if not self._waiting:       # on_drained's flush met a full socket
                    self._waiting = True
                return None
        # Empty: Twisted's own (empty) buffer, unregistering, and a pending close.
        return self._twisted_do_write()

    def _lost(self, why) -> None:
        """Nothing more can be sent: drop the queue and abort (a cut block must not be followed)."""
        self.dead = True
        self.items.clear()
        self.transport.abortConnection()
        if isinstance(why, FileRangeError):
            self.on_file_error(why)
