"""Tests for mbt.protocols.direct: a serving connection's own write path (send + sendfile).

The socket is a fake that takes a set number of bytes per call (and raises
BlockingIOError when full); file ranges are read from a real file with
``os.pread`` in its place. No sockets, no sleeps.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest

from mbt.protocols.direct import DirectWriter, FileRangeError


class FakeTransport:
    def __init__(self) -> None:
        self.disconnecting = False
        self.writing = False
        self.aborted = False
        self.twisted_writes = 0
        self.doWrite = self._twisted_do_write

    def _twisted_do_write(self):
        self.twisted_writes += 1
        self.writing = False
        return None

    def startWriting(self):
        self.writing = True

    def abortConnection(self):
        self.aborted = True


class FakeSocket:
    """Takes at most ``room`` bytes until refilled; records what was sent and with which flags."""

    def __init__(self, room: int = 1 << 30) -> None:
        self.room = room
        self.out = bytearray()
        self.flags = []
        self.error = None

    def _take(self, n: int) -> int:
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        if self.room == 0:
            raise BlockingIOError()
        n = min(n, self.room)
        self.room -= n
        return n

    def send(self, data, flags=0):
        n = self._take(len(data))
        self.out += bytes(data[:n])
        self.flags.append((bytes(data[:n]), flags))
        return n

    def sendfile(self, fd, pos, count):
        n = self._take(count)
        data = os.pread(fd, n, pos)
        self.out += data
        return len(data)


class Source:
    def __init__(self, path) -> None:
        self.fd = os.open(path, os.O_RDONLY)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 400)       # 102 400 bytes
    s = Source(str(path))
    yield s
    if s.fd is not None:
        os.close(s.fd)


def make(sock, drained=None, errors=None):
    t = FakeTransport()
    w = DirectWriter(t, on_drained=(drained or (lambda: None)),
                     on_file_error=(errors.append if errors is not None else (lambda e: None)),
                     send=sock.send, sendfile=sock.sendfile)
    return t, w


def test_lines_and_blocks_leave_in_order_and_the_header_waits_for_its_block(source):
    sock = FakeSocket()
    t, w = make(sock)
    w.write(b"HAVE 1\n")
    w.write_file(b"PIECE 0 10 20\n", source, 10, 20)
    w.write(b"PING\n")
    assert bytes(sock.out) == b"HAVE 1\nPIECE 0 10 20\n" + bytes(range(10, 30)) + b"PING\n"
    # MSG_MORE on the header only: it is coalesced with the block that follows.
    assert (b"PIECE 0 10 20\n", socket.MSG_MORE) in sock.flags
    assert (b"HAVE 1\n", 0) in sock.flags and (b"PING\n", 0) in sock.flags
    assert not w.busy and not t.writing


def test_a_full_socket_waits_for_the_reactor_then_resumes_and_asks_for_more(source):
    sock = FakeSocket(room=30)
    drained = []
    t, w = make(sock, drained=lambda: drained.append(1))
    w.write_file(b"PIECE 0 0 100\n", source, 0, 100)
    assert w.busy and t.writing and len(sock.out) == 30
    w.write(b"PING\n")              # queued behind the block, not sent ahead of it
    assert len(sock.out) == 30
    sock.room = 50
    assert t.doWrite() is None and w.busy and drained == []
    sock.room = 1000
    t.doWrite()
    assert bytes(sock.out) == b"PIECE 0 0 100\n" + (bytes(range(256)) * 400)[:100] + b"PING\n"
    assert drained == [1] and not w.busy
    assert t.twisted_writes == 1     # then Twisted's own doWrite: unregisters, or closes if asked


def test_on_drained_may_queue_more_and_a_close_waits_for_the_queue(source):
    sock = FakeSocket(room=10)
    more = [True]
    t = None

    def drained():
        if more.pop() if more else False:
            w.write_file(b"PIECE 1 0 5\n", source, 5, 5)
    t, w = make(sock, drained=drained)
    w.write(b"0123456789ABC\n")
    sock.room = 1 << 20
    t.doWrite()
    assert bytes(sock.out) == b"0123456789ABC\nPIECE 1 0 5\n" + bytes(range(5, 10))
    t.disconnecting = True
    w.write(b"x" * 5)
    assert t.doWrite() is None and t.twisted_writes >= 1


def test_a_file_cut_short_aborts_the_connection_and_reports(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"a" * 50)
    src = Source(str(path))
    try:
        sock = FakeSocket()
        errors = []
        t, w = make(sock, errors=errors)
        w.write_file(b"PIECE 0 0 100\n", src, 0, 100)
        w.write(b"PING\n")
        assert t.aborted and len(errors) == 1 and isinstance(errors[0], FileRangeError)
        assert "short read" in str(errors[0])
        assert not sock.out.endswith(b"PING\n")    # nothing follows a cut block
        w.write(b"more\n")
        assert b"more" not in sock.out
    finally:
        os.close(src.fd)


def test_a_closed_file_is_a_file_error_not_a_stale_descriptor(source):
    sock = FakeSocket(room=5)
    errors = []
    t, w = make(sock, errors=errors)
    w.write_file(b"PIECE 0 0 100\n", source, 0, 100)
    os.close(source.fd)
    source.fd = None        # as PieceFile.close() leaves it
    sock.room = 1000
    t.doWrite()
    assert t.aborted and len(errors) == 1 and "closed" in str(errors[0])


def test_a_broken_socket_aborts_without_blaming_the_file(source):
    sock = FakeSocket()
    errors = []
    t, w = make(sock, errors=errors)
    sock.error = errno.EPIPE
    w.write_file(b"PIECE 0 0 10\n", source, 0, 10)
    assert t.aborted and errors == [] and not w.busy


def test_write_copy_keeps_only_what_the_socket_did_not_take_and_the_order():
    sock = FakeSocket(room=6)
    t, w = make(sock)
    buf = bytearray(b"ABCDEFGHIJ")
    w.write_copy(memoryview(buf))
    buf[:] = b"##########"      # the caller reuses its buffer at once
    assert bytes(sock.out) == b"ABCDEF" and w.busy and t.writing
    w.write_copy(memoryview(b"KLM"))    # behind the queued rest, not ahead of it
    sock.room = 100
    t.doWrite()
    assert bytes(sock.out) == b"ABCDEFGHIJKLM" and not w.busy
    w.write_copy(memoryview(b"NOP"))    # an empty queue: sent at once, nothing queued
    assert bytes(sock.out).endswith(b"NOP") and not w.busy


def test_write_copy_on_a_broken_socket_aborts():
    sock = FakeSocket()
    sock.error = errno.EPIPE
    t, w = make(sock)
    w.write_copy(memoryview(b"abc"))
    assert t.aborted and w.dead and not w.busy
