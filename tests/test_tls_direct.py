"""Tests for mbt.protocols.tlsdirect: the peer wire's TLS with its own socket paths.

Two DirectTLSProtocols talk real TLS (real certificates, real OpenSSL) over a
pair of in-memory fake sockets with bounded buffers; the test drives the
transports' ``doRead``/``doWrite`` like a reactor would. No real sockets, no
sleeps. The same protocols over Twisted's ``iosim`` (no socket underneath)
take Twisted's own paths.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet import error, main, protocol
from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from twisted.test import iosim

from mbt import certs
from mbt.protocols import tlsdirect
from mbt.protocols.tlsdirect import DirectTLSFactory, DirectTLSProtocol
from mbt.tls import TLSConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca_key, ca_cert = certs.make_ca()
    certs.write_pair(d, "ca", ca_key, ca_cert)
    key, cert = certs.make_cert(ca_key, ca_cert, "peer")
    cert_path, key_path = certs.write_pair(d, "peer", key, cert)
    return TLSConfig(cert_path, key_path, os.path.join(d, "ca.pem")).check()


class FakeSocket:
    """One end of an in-memory stream; at most ``capacity`` bytes wait unread in each direction."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.inbox = bytearray()
        self.peer: "FakeSocket" = None
        self.eof = False            # the peer closed
        self.sends = 0

    def send(self, data, flags=0) -> int:
        room = self.capacity - len(self.peer.inbox)
        if room <= 0:
            raise BlockingIOError()
        n = min(room, len(data))
        self.peer.inbox += bytes(data[:n])
        self.sends += 1
        return n

    def recv_into(self, buf, n=0) -> int:
        n = min(n or len(buf), len(buf), len(self.inbox))
        if n == 0:
            if self.eof:
                return 0
            raise BlockingIOError()
        buf[:n] = self.inbox[:n]
        del self.inbox[:n]
        return n


class FakeTCP:
    """What DirectTLSProtocol and DirectWriter use of a ``tcp.Connection``."""

    def __init__(self, sock: FakeSocket) -> None:
        self.socket = sock
        self.disconnecting = False
        self.closed = False
        self.writing = False
        self.producer = None
        self.protocol = None
        self.doWrite = self._twisted_do_write
        self.doRead = None

    def _twisted_do_write(self):
        self.writing = False
        if self.disconnecting:
            self.close()
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.socket.peer.eof = True

    def startWriting(self):
        self.writing = True

    def stopWriting(self):
        self.writing = False

    def write(self, data):
        raise AssertionError("bytes must go through the raw writer, not Twisted's buffer")

    writeSequence = write

    def loseConnection(self):
        self.disconnecting = True
        self.writing = True

    def abortConnection(self):
        self.disconnecting = True
        self.close()

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 40001)

    def setTcpNoDelay(self, on):
        pass


class FakeSocketTLS(DirectTLSProtocol):
    """Takes the fake socket as a real TCP socket."""

    def _raw_socket(self, transport):
        return transport.socket if isinstance(transport, FakeTCP) else None


class FakeSocketTLSFactory(DirectTLSFactory):
    protocol = FakeSocketTLS


class Receiver(protocol.Protocol):
    """Expects ``header`` as bytes, then a block of ``size`` bytes it offers its buffer for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.block = bytearray(size)
        self.got = 0
        self.in_block = False
        self.lines = bytearray()
        self.in_place = 0
        self.lost = None

    def dataReceived(self, data):
        data = bytes(data)
        if not self.in_block and b"\n" in data:
            head, rest = data.split(b"\n", 1)
            self.lines += head + b"\n"
            self.in_block = True
            self.block[:len(rest)] = rest
            self.got = len(rest)
        elif self.in_block:
            self.block[self.got:self.got + len(data)] = data
            self.got += len(data)
        else:
            self.lines += data

    def block_space(self):
        if not self.in_block or self.got == self.size:
            return None
        return memoryview(self.block)[self.got:]

    def block_filled(self, n):
        self.in_place += n
        self.got += n

    def connectionLost(self, reason):
        self.lost = reason


class Sender(protocol.Protocol):
    """A push producer that writes ``chunks`` one per resume, as the peer server does."""

    def __init__(self, chunks) -> None:
        self.chunks = list(chunks)
        self.paused = False
        self.pauses = 0
        self.lost = None

    def connectionMade(self):
        self.transport.registerProducer(self, True)

    def go(self):
        while self.chunks and not self.paused:
            self.transport.writeSequence(self.chunks.pop(0))

    def pauseProducing(self):
        self.paused = True
        self.pauses += 1

    def resumeProducing(self):
        self.paused = False
        self.go()

    def stopProducing(self):
        self.chunks = []

    def connectionLost(self, reason):
        self.lost = reason


def connect(pki, server_proto, client_proto, capacity=1 << 20, host="127.0.0.1"):
    """A TLS server and client over fake sockets; returns their TLS protocols and transports."""
    a, b = FakeSocket(capacity), FakeSocket(capacity)
    a.peer, b.peer = b, a
    server = FakeSocketTLSFactory(pki.server_options(), False, protocol.Factory.forProtocol(lambda: server_proto),
                                  clock=None).buildProtocol(None)
    client = FakeSocketTLSFactory(pki.client_options(host), True, protocol.Factory.forProtocol(lambda: client_proto),
                                  clock=None).buildProtocol(None)
    st, ct = FakeTCP(a), FakeTCP(b)
    st.protocol, ct.protocol = server, client
    server.makeConnection(st)
    client.makeConnection(ct)
    return server, client, st, ct


def pump(*transports, rounds=10000) -> None:
    """Run reads and writes until nothing moves, as a reactor would."""
    for _ in range(rounds):
        moved = False
        for t in transports:
            if t.closed and t.protocol is not None and not getattr(t, "_lost", False):
                t._lost = True
                t.protocol.connectionLost(Failure(main.CONNECTION_DONE))
                moved = True
                continue
            if t.closed:
                continue
            if t.socket.inbox or t.socket.eof:
                why = t.doRead()
                moved = True
                if why is not None:
                    t.close()
            if t.writing and not t.closed:
                before = len(t.socket.peer.inbox)
                t.doWrite()
                moved = moved or len(t.socket.peer.inbox) != before or not t.writing
        if not moved:
            return
    raise AssertionError("still moving after %d rounds" % rounds)


@pytest.mark.parametrize("binding", [True, False])
def test_a_block_is_decrypted_straight_into_the_receivers_buffer(pki, monkeypatch, binding):
    if not binding:     # a pyOpenSSL without its cffi binding: the public recv_into path
        monkeypatch.setattr(tlsdirect, "_lib", None)
    payload = os.urandom(3 * 1024 * 1024 + 123)
    sender, receiver = Sender([[b"PIECE 0 0 %d\n" % len(payload), payload]]), Receiver(len(payload))
    server, client, st, ct = connect(pki, sender, receiver)
    pump(st, ct)
    assert server._handshakeDone and client._handshakeDone
    sender.go()
    pump(st, ct)
    assert receiver.lines == b"PIECE 0 0 %d\n" % len(payload)
    assert receiver.got == len(payload) and receiver.block == payload
    # All but the record that also carried the header went in place.
    assert receiver.in_place >= len(payload) - tlsdirect.RECORD


def test_a_full_socket_pauses_the_producer_until_it_drains(pki):
    blocks = [os.urandom(512 * 1024) for _ in range(6)]
    sender = Sender([[b"B\n", blk] for blk in blocks])
    collected = bytearray()

    class Sink(protocol.Protocol):
        def dataReceived(self, data):
            collected.extend(data)

    server, client, st, ct = connect(pki, sender, Sink(), capacity=64 * 1024)
    pump(st, ct)
    sender.go()
    # The 64 KiB socket took a part of the first block; the rest waits in the raw writer.
    assert sender.paused and sender.pauses == 1 and len(sender.chunks) == 5
    assert st.writing
    pump(st, ct)
    assert not sender.chunks and not sender.paused and sender.pauses == 6
    assert bytes(collected) == b"".join(b"B\n" + blk for blk in blocks)


def test_lines_and_blocks_keep_their_order_and_close_cleanly(pki):
    sender, receiver = Sender([]), Receiver(100)
    server, client, st, ct = connect(pki, sender, receiver)
    # Written before the handshake: Twisted's buffering, then the raw path, in order.
    sender.transport.write(b"HELLO")
    sender.transport.writeSequence([b" THERE\n", b"x" * 60])
    pump(st, ct)
    sender.transport.write(b"y" * 40)
    sender.transport.unregisterProducer()       # as the peer server does before it closes
    sender.transport.loseConnection()
    pump(st, ct)
    assert receiver.lines == b"HELLO THERE\n"
    assert receiver.block == b"x" * 60 + b"y" * 40
    assert receiver.lost is not None and receiver.lost.check(error.ConnectionDone)
    assert sender.lost is not None


def test_a_server_certificate_for_another_address_is_refused(pki):
    sender, receiver = Sender([[b"secret\n"]]), Receiver(10)
    server, client, st, ct = connect(pki, sender, receiver, host="127.0.0.2")
    sender.go()
    pump(st, ct)
    assert receiver.lines == b"" and receiver.got == 0
    assert ct.closed and receiver.lost is not None


def test_without_a_socket_it_is_twisteds_tls(pki):
    payload = os.urandom(200 * 1024)
    sender, receiver = Sender([[b"PIECE\n", payload]]), Receiver(len(payload))
    server_f = DirectTLSFactory(pki.server_options(), False, protocol.Factory.forProtocol(lambda: sender))
    client_f = DirectTLSFactory(pki.client_options("127.0.0.1"), True, protocol.Factory.forProtocol(lambda: receiver))
    s, c, pump_ = iosim.connectedServerAndClient(lambda: server_f.buildProtocol(None),
                                                 lambda: client_f.buildProtocol(None))
    assert s._raw is None and c._raw is None
    pump_.flush()
    sender.go()
    pump_.flush()
    assert receiver.lines == b"PIECE\n" and receiver.block == payload
