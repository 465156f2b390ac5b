"""TLS for the peer wire with fewer copies and calls per byte than Twisted's.

Twisted's ``TLSMemoryBIOProtocol`` (what ``listenSSL`` and ``wrapClientTLS``
use) moves every byte through small pieces: the TCP transport reads 64 KiB
into a new bytes object, ``SSL_read`` is asked for 32 KiB at a time (one
16 KiB record) and hands the wrapped protocol a new bytes object per record,
which the peer protocol then copies into the piece buffer; on the sending side
a block is joined with its header, cut into 16 KiB slices (a copy each),
``SSL_write``-en one slice at a time, each record read out of the memory BIO
by a 32 KiB ``bio_read`` and queued in the TCP transport, which joins the
queue again before ``send`` (docs/performance.rst, "TLS path").

:class:`DirectTLSProtocol` is that same protocol (same handshake, same
certificate checks, same close) with three paths replaced once the handshake
is done and only when it sits directly on a TCP socket:

* reads: the socket is ``recv_into`` a reused 256 KiB buffer, which goes into
  the memory BIO as a memoryview (no bytes object per read); then, while the
  wrapped protocol is in the middle of a block (``block_space()`` gives the
  rest of the block's destination), ``SSL_read`` decrypts straight into it
  (``block_filled(n)`` reports it), else it reads one record and calls
  ``dataReceived`` as usual;
* writes: a whole buffer is handed to one ``SSL_write`` (partial writes off,
  so OpenSSL makes all of its records in one call), ``writeSequence`` writes
  its parts without joining them, and the memory BIO is drained in 256 KiB
  reads;
* sending: the records go out through a :class:`~mbt.protocols.direct.DirectWriter`
  on the TCP transport (``send`` at once, in order, the kernel's socket
  buffer the only buffer). While it holds unsent bytes the registered
  producer is paused, and resumed when it drains (backpressure).

The bytes on the wire are standard TLS either way; other peers see no
difference. Over anything but a plain TCP socket (a relay's pipe, tests'
string transports) it behaves exactly like Twisted's protocol.
"""

from __future__ import annotations

from typing import Optional

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet import defer, interfaces, main, tcp
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from mbt.protocols.direct import DirectWriter

try:        # pyOpenSSL's cffi binding: only to switch partial writes off and to decrypt in place
    from OpenSSL._util import ffi as _ffi, lib as _lib
except ImportError:     # pragma: no cover - a pyOpenSSL without it: the public paths below
    _ffi = _lib = None

#: Bytes read from the socket per ``recv_into`` (then written into the memory BIO).
SOCKET_READ = 256 * 1024
#: Socket reads per readiness event at most (the next event comes at once anyway).
READS_PER_EVENT = 8
#: Bytes read out of the memory BIO per ``bio_read``.
BIO_READ = 256 * 1024
#: Largest plaintext of one TLS record: what one ``SSL_read`` can return.
RECORD = 16 * 1024


def _nothing(*args) -> None:
    """The raw writer's file errors: it is only given bytes."""


def _modes_for_bulk(conn) -> None:
    """Let one ``SSL_write`` make all records of its buffer (a memory BIO never blocks); keep the record buffers.

    pyOpenSSL turns ``SSL_MODE_ENABLE_PARTIAL_WRITE`` on for every context,
    which makes ``SSL_write`` return after each 16 KiB record: one Python call
    per record. Twisted sets ``SSL_MODE_RELEASE_BUFFERS``, which frees and
    mallocs OpenSSL's ~17 KiB record buffers around every record; a peer
    connection keeps its two. Without the private binding nothing changes
    (the write loop below copes with partial writes).
    """
    ssl = getattr(conn, "_ssl", None)
    if ssl is not None and _lib is not None and hasattr(_lib, "SSL_clear_mode"):
        _lib.SSL_clear_mode(ssl, _lib.SSL_MODE_ENABLE_PARTIAL_WRITE | _lib.SSL_MODE_RELEASE_BUFFERS)


def _in_place_reader(conn):
    """A function ``read(target) -> n`` decrypting records into the writable buffer ``target``.

    With pyOpenSSL's binding: ``SSL_read`` straight into ``target``, record
    after record until it is full or no whole record is left (one C call per
    16 KiB record and no Python work between them; ``Connection.recv_into``
    decrypts into a temporary buffer and copies). Errors (want-read, close,
    alerts) are raised by calling ``recv_into`` once more when nothing was
    read, which reports the same state in pyOpenSSL's way. Without the
    binding: ``recv_into``, one record per call.
    """
    ssl = getattr(conn, "_ssl", None)
    if ssl is None or _lib is None or _ffi is None or not hasattr(_lib, "SSL_read"):
        return lambda target: conn.recv_into(target, RECORD)
    ssl_read, from_buffer = _lib.SSL_read, _ffi.from_buffer

    def read(target) -> int:
        size = len(target)
        ptr = from_buffer(target, require_writable=True)
        got = 0
        while got < size:
            n = ssl_read(ssl, ptr + got, size - got)
            if n <= 0:
                break
            got += n
        if got:
            return got
        return conn.recv_into(target, RECORD)     # raises WantReadError, ZeroReturnError or Error
    return read


def _bio_reader(conn):
    """A function ``read(view) -> n`` moving encrypted bytes out of the send BIO into ``view`` (0: empty).

    With pyOpenSSL's binding ``BIO_read`` fills a buffer the caller reuses
    (``Connection.bio_read`` allocates a temporary buffer and a bytes object
    per call); None without it.
    """
    bio = getattr(conn, "_from_ssl", None)
    if bio is None or _lib is None or _ffi is None or not hasattr(_lib, "BIO_read"):
        return None
    bio_read, from_buffer = _lib.BIO_read, _ffi.from_buffer

    def read(view) -> int:
        return max(0, bio_read(bio, from_buffer(view, require_writable=True), len(view)))
    return read


class DirectTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` reading, decrypting and sending with fewer copies (see the module)."""

    _raw: Optional[DirectWriter] = None
    _read_into = None
    _bio_read_into = None

    def _raw_socket(self, transport):
        """The socket under ``transport`` if this protocol may read and write it itself, else None.

        Only a plain TCP connection that delivers its bytes to this protocol
        (directly, or through an endpoint's forwarding wrapper) qualifies.
        """
        if not isinstance(transport, tcp.Connection) or getattr(transport, "socket", None) is None:
            return None
        proto = transport.protocol
        if proto is not self and getattr(proto, "_wrappedProtocol", None) is not self:
            return None
        return transport.socket

    def makeConnection(self, transport) -> None:
        sock = self._raw_socket(transport)
        if sock is not None:
            # Before the handshake starts: its records go out through the raw writer too.
            self._sock = sock
            self._raw = DirectWriter(transport, self._raw_drained, _nothing, send=sock.send)
            self._rbuf = bytearray(SOCKET_READ)
            self._rview = memoryview(self._rbuf)
            self._paused_by_raw = False
            transport.doRead = self._read_socket
        TLSMemoryBIOProtocol.makeConnection(self, transport)
        if self._tlsConnection is not None:
            _modes_for_bulk(self._tlsConnection)
            self._read_into = _in_place_reader(self._tlsConnection)
            if self._raw is not None:
                self._bio_read_into = _bio_reader(self._tlsConnection)
                self._sbuf = memoryview(bytearray(BIO_READ))

    # -- receiving ---------------------------------------------------------------

    def _read_socket(self):
        """Replaces the TCP transport's ``doRead``: ``recv_into`` one reused buffer, no bytes per read."""
        sock, size, view = self._sock, len(self._rbuf), self._rview
        transport = self.transport
        try:
            for _ in range(READS_PER_EVENT):
                n = sock.recv_into(self._rbuf, size)
                if not n:
                    return main.CONNECTION_DONE
                self.dataReceived(view[:n])         # bio_write copies it into the memory BIO
                if n < size or transport.disconnecting or self._lostTLSConnection:
                    return None
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        return None

    def _flushReceiveBIO(self) -> None:
        """Twisted's loop, decrypting straight into the block in progress when there is one."""
        proto = self.wrappedProtocol
        space = getattr(proto, "block_space", None)
        read_into = self._read_into
        while not self._lostTLSConnection:
            target = space() if (space is not None and read_into is not None and not self._aborted) else None
            try:
                if target is not None:
                    n = read_into(target)
                else:
                    data = self._tlsConnection.recv(RECORD)
            except WantReadError:
                break
            except ZeroReturnError:
                # As Twisted's: the peer closed TLS; the reason comes from the transport.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                if target is not None:
                    proto.block_filled(n)
                elif not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    # -- sending -------------------------------------------------------------------

    def _flushSendBIO(self) -> None:
        """Everything in the send BIO out, in reads of BIO_READ, through the raw writer if there is one."""
        conn = self._tlsConnection
        if conn is None:
            return
        if self._bio_read_into is not None:
            # Through one reused buffer; the raw writer copies only what the socket does not take now.
            read, buf, write = self._bio_read_into, self._sbuf, self._raw.write_copy
            while True:
                n = read(buf)
                if n:
                    write(buf[:n])
                if n < BIO_READ:
                    break
        else:
            write = self._raw.write if self._raw is not None else self.transport.write
            while True:
                try:
                    data = conn.bio_read(BIO_READ)
                except WantReadError:
                    break
                write(data)
                if len(data) < BIO_READ:
                    break
        if self._raw is not None and self._raw.busy and self._producer is not None and not self._paused_by_raw:
            self._paused_by_raw = True
            self._producer.pauseProducing()

    def _raw_drained(self) -> None:
        """The kernel took everything queued: a producer paused for it may go on."""
        if self._paused_by_raw:
            self._paused_by_raw = False
            if self._producer is not None:
                self._producer.resumeProducing()

    def _write(self, data) -> None:
        """All of ``data`` in one ``SSL_write`` once the handshake is done (Twisted's path before)."""
        if self._lostTLSConnection:
            return
        if not self._handshakeDone or self._appSendBuffer:
            return TLSMemoryBIOProtocol._write(self, data)      # buffered until the handshake is done
        self._encrypt(data)
        self._flushSendBIO()

    def _encrypt(self, data) -> bool:
        """``SSL_write`` all of ``data``; False if the rest had to be buffered or TLS failed."""
        view = memoryview(data)
        total, sent = len(view), 0
        conn = self._tlsConnection
        while sent < total:
            try:
                sent += conn.send(view[sent:] if sent else view)
            except WantReadError:       # e.g. a TLS 1.2 renegotiation under way: Twisted's buffering
                self._bufferedWrite(bytes(view[sent:]))
                return False
            except Error:
                self._tlsShutdownFinished(Failure())
                return False
        return True

    def writeSequence(self, iovec) -> None:
        """Each part encrypted as it is (no join), then one flush."""
        if self.disconnecting and self._producer is None:
            return
        if self._lostTLSConnection:
            return
        if not self._handshakeDone or self._appSendBuffer:
            return TLSMemoryBIOProtocol._write(self, b"".join(iovec))
        parts = list(iovec)
        for i, data in enumerate(parts):
            if not self._encrypt(data):
                for later in parts[i + 1:] if not self._lostTLSConnection else ():
                    self._bufferedWrite(later)      # behind the buffered rest, in order
                break
        self._flushSendBIO()


class DirectTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` whose connections are :class:`DirectTLSProtocol`."""

    protocol = DirectTLSProtocol


@implementer(interfaces.IStreamServerEndpoint)
class DirectTLSServerEndpoint:
    """Listens on ``tcp_endpoint`` with :class:`DirectTLSProtocol` (what ``SSL4ServerEndpoint`` does with Twisted's)."""

    def __init__(self, tcp_endpoint, options) -> None:
        self._tcp = tcp_endpoint
        self._options = options

    def listen(self, factory) -> defer.Deferred:
        return self._tcp.listen(DirectTLSFactory(self._options, False, factory))


@implementer(interfaces.IStreamClientEndpoint)
class DirectTLSClientEndpoint:
    """Connects through ``tcp_endpoint`` with :class:`DirectTLSProtocol` (as ``wrapClientTLS`` does with Twisted's)."""

    def __init__(self, tcp_endpoint, options) -> None:
        self._tcp = tcp_endpoint
        self._options = options

    def connect(self, factory) -> defer.Deferred:
        d = self._tcp.connect(DirectTLSFactory(self._options, True, factory))
        return d.addCallback(lambda proto: proto.wrappedProtocol)
