"""Tests for mbt.protocols.peer: the peer wire protocol, both ends.

The serving side runs over StringTransport with a fake node whose
``open_servable`` hands out a real Servable over a real file; time is a
``task.Clock``. The downloading side gets a fake Download that records every
callback. One test joins both ends with iosim and downloads a whole file.
No sockets, no sleeps.
"""

from __future__ import annotations

import hashlib
import random
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error, main, task, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim

from mbt.errors import MbtError
from mbt.manifest import MAX_FILE_SIZE, PIECE_SIZE, Manifest, hash_file, piece_count, pieces_root
from mbt.tickets import new_session_key, public_key_hex, sign_challenge
from mbt.peer.picker import BLOCK_SIZE
from mbt.peer.serving import Servable
from mbt.peer.storage import PieceFile, bitfield_hex
from mbt.protocols.peer import (HANDSHAKE_TIMEOUT, HELLO_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_INTERVAL, MAX_BLOCK,
                                MAX_QUEUED_REQUESTS, PeerClientProtocol, PeerServerFactory, PeerServerProtocol,
                                UploadSlots)

SIZE = 2 * PIECE_SIZE + 1000          # three pieces, the last one 1000 bytes
LAST = 1000
BLOCK = BLOCK_SIZE
GROUP = "club"


# -- fixtures ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A real three-piece file and its manifest: (path, content, manifest)."""
    path = tmp_path_factory.mktemp("wire") / "f.bin"
    data = random.Random(1).randbytes(SIZE)
    path.write_bytes(data)
    manifest = hash_file(str(path))
    assert manifest.pieces == 3
    return str(path), data, manifest


@pytest.fixture
def piece_files():
    opened = []

    def open_(path, manifest):
        pf = PieceFile(path, manifest)
        opened.append(pf)
        return pf
    yield open_
    for pf in opened:
        pf.close()


@pytest.fixture
def servable(shared, piece_files):
    path, _, manifest = shared
    return Servable(GROUP, manifest, piece_files(path, manifest), set(range(manifest.pieces)))


@pytest.fixture
def partial(shared, piece_files):
    """The same file, of which only piece 0 is verified (a download in progress)."""
    path, _, manifest = shared
    return Servable(GROUP, manifest, piece_files(path, manifest), {0})


DOWNLOADER_KEY = new_session_key()


class FakeNode:
    """``open_servable`` as PeerNode has it: the servable, or an MbtError.

    Every ticket names ``DOWNLOADER_KEY``; :class:`ServerConn` answers the
    challenge with it unless told not to.
    """

    @staticmethod
    def ticket_expires(ticket):
        return None

    @staticmethod
    def ticket_holder(ticket):
        return public_key_hex(DOWNLOADER_KEY)

    def servable_broken(self, servable, why):
        self.broken.append((servable, why))

    def __init__(self, servable=None, refuse: MbtError = None) -> None:
        self.servable = servable
        self.refuse = refuse
        self.hellos: List[tuple] = []
        self.broken: List[tuple] = []

    def open_servable(self, group, file_hash, user, ticket, remote):
        self.hellos.append((group, file_hash, user, ticket, remote))
        if self.refuse is not None:
            raise self.refuse
        s = self.servable
        if s is None or group != s.group or file_hash != s.manifest.file_hash:
            raise MbtError("no such file shared here in group %s" % group, "not_sharing")
        return s


@pytest.fixture
def clock():
    return task.Clock()


def parse_stream(data: bytes) -> list:
    """Server output as messages: ``("PIECE", i, o, l, payload)`` or the line's text."""
    out, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        line = data[pos:nl].decode("ascii")
        pos = nl + 1
        if line.startswith("PIECE "):
            i, o, n = map(int, line.split()[1:])
            payload = data[pos:pos + n]
            assert len(payload) == n, "PIECE header promises more bytes than were sent"
            pos += n
            out.append(("PIECE", i, o, n, payload))
        else:
            out.append(line)
    return out


class ServerConn:
    """One downloader connected to a PeerServerProtocol over a StringTransport."""

    def __init__(self, factory: PeerServerFactory, port: int = 40000, auto_prove: bool = True) -> None:
        self.factory = factory
        self.auto_prove = auto_prove
        self.hello_context = None
        addr = IPv4Address("TCP", "10.0.0.2", port)
        self.proto = factory.buildProtocol(addr)
        self.tr = StringTransport(peerAddress=addr)
        self.proto.makeConnection(self.tr)

    def send(self, data: bytes) -> None:
        for line in data.split(b"\n"):
            parts = line.split(b" ")
            if parts[0] == b"HELLO" and len(parts) >= 5:
                self.hello_context = tuple(p.decode("ascii", "replace") for p in parts[2:5])
        self.proto.dataReceived(data)
        out = self.tr.value()
        if self.auto_prove and out.startswith(b"CHALLENGE "):
            # The downloader's side of the handshake: sign the challenge with the ticket's key.
            line, _, rest = out.partition(b"\n")
            self.tr.clear()
            self.tr.write(rest)
            group, file_hash, user = self.hello_context
            proof = sign_challenge(DOWNLOADER_KEY, line.split(b" ")[1].decode(), group, file_hash, user)
            self.proto.dataReceived(b"PROOF %s\n" % proof.encode())

    def hello(self, manifest: Manifest, user: str = "dan", group: str = GROUP) -> None:
        self.send(b"HELLO mbt/2 %s %s %s\n" % (group.encode(), manifest.file_hash.encode(), user.encode()))

    def messages(self) -> list:
        return parse_stream(self.tr.value())

    def take(self) -> list:
        """Messages since the last take()."""
        msgs = self.messages()
        self.tr.clear()
        return msgs

    @property
    def closed(self) -> bool:
        return bool(self.tr.disconnecting)

    def lose(self) -> None:
        self.proto.connectionLost(Failure(error.ConnectionDone()))


def pieces_in(msgs) -> list:
    return [m for m in msgs if isinstance(m, tuple)]


@pytest.fixture
def make_conn(clock):
    def make(node, slots=16, limiter=None):
        factory = PeerServerFactory(node, clock, upload_slots=slots, limiter=limiter)
        return ServerConn(factory)
    return make


@pytest.fixture
def ready_conn(make_conn, servable):
    """A connection past HELLO, unchoked, output cleared."""
    conn = make_conn(FakeNode(servable))
    conn.hello(servable.manifest)
    assert conn.take() == ["BITFIELD 3 e0", "UNCHOKE"]
    return conn


# -- server: handshake ----------------------------------------------------------

def test_hello_answers_bitfield_and_unchoke(make_conn, servable):
    node = FakeNode(servable)
    conn = make_conn(node)
    conn.hello(servable.manifest)
    assert conn.messages() == ["BITFIELD 3 e0", "UNCHOKE"]
    assert not conn.closed
    assert node.hellos == [(GROUP, servable.manifest.file_hash, "dan", None, "10.0.0.2:40000")]


def test_hello_passes_ticket_and_accepts_crlf(make_conn, servable):
    node = FakeNode(servable)
    conn = make_conn(node)
    conn.send(b"HELLO mbt/2 club %s dan T0K3N\r\n" % servable.manifest.file_hash.encode())
    assert conn.messages() == ["BITFIELD 3 e0", "UNCHOKE"]
    assert node.hellos[0][3] == "T0K3N"


def test_hello_bitfield_of_partial_servable(make_conn, partial):
    conn = make_conn(FakeNode(partial))
    conn.hello(partial.manifest)
    assert conn.messages() == ["BITFIELD 3 80", "UNCHOKE"]


@pytest.mark.parametrize("line", [
    b"HELLO mbt/3 club %(h)s dan",
    b"HELLO mbt/1 club %(h)s dan",
    b"HELLO MBT/2 club %(h)s dan",
    b"HELLO mbt/2 club %(h)s",
    b"HELLO mbt/2 club %(h)s dan ticket extra",
    b"HELLO",
    b"HELLO mbt/2  %(h)s dan",          # double space: empty field, wrong count
])
def test_bad_hello_is_error_line_and_close(make_conn, servable, line):
    node = FakeNode(servable)
    conn = make_conn(node)
    conn.send(line % {b"h": servable.manifest.file_hash.encode()} + b"\nREQUEST 0 0 10\n")
    msgs = conn.messages()
    assert len(msgs) == 1 and msgs[0].startswith("ERROR ")
    assert conn.closed


@pytest.mark.parametrize("refusal", [
    MbtError("this peer is not sharing right now (logged out)", "not_sharing"),
    MbtError("not a member of club", "not_member"),
    MbtError("caf\u00e9 ferm\u00e9", "not_sharing"),          # non-ASCII reason: no crash
])
def test_refused_hello_is_error_and_close_without_any_bytes(make_conn, servable, refusal):
    conn = make_conn(FakeNode(servable, refuse=refusal))
    conn.send(b"HELLO mbt/2 club %s dan\nREQUEST 0 0 10\nREQUEST 1 0 10\n"
              % servable.manifest.file_hash.encode())
    msgs = conn.messages()
    assert len(msgs) == 1 and msgs[0].startswith("ERROR ")
    assert msgs[0].isascii()
    assert conn.closed
    assert conn.factory.slots.active == set()


def test_hello_for_a_file_not_served_is_refused(make_conn, servable):
    conn = make_conn(FakeNode(servable))
    conn.send(b"HELLO mbt/2 club %s dan\n" % (b"0" * 64))
    assert conn.messages() == ["ERROR no such file shared here in group club"]
    assert conn.closed


@pytest.mark.parametrize("line", [b"REQUEST 0 0 10", b"PING", b"BITFIELD 3 e0", b"", b"hello mbt/1 a b c"])
def test_message_before_hello_closes(make_conn, servable, line):
    node = FakeNode(servable)
    conn = make_conn(node)
    conn.send(line + b"\nHELLO mbt/2 club %s dan\n" % servable.manifest.file_hash.encode())
    assert conn.closed
    assert pieces_in(conn.messages()) == []
    assert node.hellos == []


def test_second_hello_closes(ready_conn, servable):
    ready_conn.hello(servable.manifest)
    assert ready_conn.closed


def test_handshake_timeout_closes(make_conn, servable, clock):
    conn = make_conn(FakeNode(servable))
    clock.advance(HELLO_TIMEOUT - 0.01)
    assert not conn.closed
    clock.advance(0.02)
    assert conn.closed
    conn.lose()
    assert clock.getDelayedCalls() == []


def test_a_hello_without_its_proof_still_times_out_at_the_hello_deadline(make_conn, servable, clock):
    conn = make_conn(FakeNode(servable))
    conn.auto_prove = False
    clock.advance(HELLO_TIMEOUT - 1)
    conn.hello(servable.manifest)          # answered with CHALLENGE; the deadline is not moved
    assert conn.messages()[0].startswith("CHALLENGE ")
    clock.advance(1.01)
    assert conn.closed
    conn.lose()
    assert clock.getDelayedCalls() == []


def test_an_accepted_downloader_leaving_stops_the_keepalive_and_idle_timers(ready_conn, clock):
    assert clock.getDelayedCalls()            # idle timeout and keep-alive are running
    ready_conn.lose()
    assert clock.getDelayedCalls() == []
    clock.advance(10 * IDLE_TIMEOUT)
    assert ready_conn.messages() == []        # no PING after the loss


def test_idle_timeout_after_hello_and_ping_resets_it(ready_conn, clock):
    clock.advance(HANDSHAKE_TIMEOUT + 1)        # the handshake deadline no longer applies
    assert not ready_conn.closed
    clock.advance(IDLE_TIMEOUT - HANDSHAKE_TIMEOUT - 2)
    ready_conn.send(b"PING\n")
    clock.advance(IDLE_TIMEOUT - 1)
    assert not ready_conn.closed
    assert set(ready_conn.messages()) <= {"PING"}     # only the server's keep-alives
    clock.advance(2)
    assert ready_conn.closed


def test_server_sends_keepalive_pings_to_a_quiet_downloader(ready_conn, clock):
    from mbt.protocols.peer import KEEPALIVE_INTERVAL
    before = ready_conn.messages().count("PING")
    clock.advance(KEEPALIVE_INTERVAL + 0.01)
    assert ready_conn.messages().count("PING") == before + 1
    clock.advance(KEEPALIVE_INTERVAL)
    assert ready_conn.messages().count("PING") == before + 2


# -- server: requests -----------------------------------------------------------

def test_request_sends_piece_header_and_exact_bytes(ready_conn, shared):
    _, data, _ = shared
    ready_conn.send(b"REQUEST 0 0 16384\nREQUEST 1 100 5000\nREQUEST 2 0 1000\nREQUEST 2 999 1\n")
    assert ready_conn.messages() == [
        ("PIECE", 0, 0, 16384, data[:16384]),
        ("PIECE", 1, 100, 5000, data[PIECE_SIZE + 100:PIECE_SIZE + 5100]),
        ("PIECE", 2, 0, 1000, data[2 * PIECE_SIZE:]),
        ("PIECE", 2, 999, 1, data[-1:]),
    ]
    assert ready_conn.factory.uploaded == 16384 + 5000 + 1000 + 1
    assert not ready_conn.closed


def test_request_of_max_block(ready_conn, shared):
    _, data, _ = shared
    assert MAX_BLOCK >= PIECE_SIZE
    ready_conn.send(b"REQUEST 1 0 %d\n" % PIECE_SIZE)
    assert ready_conn.messages() == [("PIECE", 1, 0, PIECE_SIZE, data[PIECE_SIZE:2 * PIECE_SIZE])]


def test_request_for_unverified_piece_is_rejected_never_served(make_conn, partial, shared):
    _, data, _ = shared
    conn = make_conn(FakeNode(partial))
    conn.hello(partial.manifest)
    conn.take()
    conn.send(b"REQUEST 1 0 100\nREQUEST 2 0 1000\nREQUEST 0 0 10\n")
    assert conn.messages() == ["REJECT 1 0 100", "REJECT 2 0 1000", ("PIECE", 0, 0, 10, data[:10])]
    assert not conn.closed


@pytest.mark.parametrize("req", [
    b"REQUEST 3 0 10",                              # index == pieces
    b"REQUEST 99999 0 10",
    b"REQUEST 0 %d 1" % PIECE_SIZE,                 # offset past the piece
    b"REQUEST 0 %d 2" % (PIECE_SIZE - 1),           # block runs past the piece
    b"REQUEST 2 0 1001",                            # past the short last piece
    b"REQUEST 2 1000 1",
    b"REQUEST 0 0 0",                               # empty block
    b"REQUEST 0 0 %d" % (MAX_BLOCK + 1),
    b"REQUEST 0 999999999999999 1",
])
def test_out_of_bounds_request_closes_without_bytes(ready_conn, req):
    ready_conn.send(req + b"\nREQUEST 0 0 10\n")
    assert ready_conn.closed
    assert pieces_in(ready_conn.messages()) == []


@pytest.mark.parametrize("line", [
    b"REQUEST a 0 10", b"REQUEST -1 0 10", b"REQUEST 0 -0 10", b"REQUEST 0 0", b"REQUEST 0 0 10 4",
    b"REQUEST 0  0 10", b"REQUEST 0 0 10 ", b"REQUEST 0x1 0 10", b"REQUEST 1e3 0 10",
    b"REQUEST 0 0 +10", b"REQUEST 0 0 1234567890123456", b"REQUEST", b"CANCEL 0 0", b"CANCEL x y z",
    b"REQUEST \xd9\xa1 0 10",        # an Arabic-Indic digit: not ASCII
])
def test_malformed_numbers_close(ready_conn, line):
    ready_conn.send(line + b"\nREQUEST 0 0 10\n")
    assert ready_conn.closed
    assert pieces_in(ready_conn.messages()) == []


@pytest.mark.parametrize("line", [b"FOO", b"request 0 0 10", b"PIECE 0 0 10", b"HAVE 1", b" REQUEST 0 0 10", b""])
def test_unknown_verb_closes(ready_conn, line):
    ready_conn.send(line + b"\nREQUEST 0 0 10\n")
    assert ready_conn.closed
    assert pieces_in(ready_conn.messages()) == []


@pytest.mark.parametrize("with_newline", [False, True])
def test_over_long_line_closes(make_conn, ready_conn, servable, with_newline):
    for conn in (make_conn(FakeNode(servable)), ready_conn):
        conn.send(b"PING" + b" " * 5000 + (b"\n" if with_newline else b""))
        assert conn.closed


@pytest.mark.parametrize("line", [b"HELLO mbt/2 gr\xc3\xbcp %(h)s dan", b"HELLO mbt/2 club %(h)s d\xffn"])
def test_non_ascii_hello_closes(make_conn, servable, line):
    node = FakeNode(servable)
    conn = make_conn(node)
    conn.send(line % {b"h": servable.manifest.file_hash.encode()} + b"\n")
    assert conn.closed and node.hellos == []


def test_non_ascii_after_hello_closes(ready_conn):
    ready_conn.send(b"REQUEST 0 0 10\xe2\x80\xa8\nREQUEST 0 0 10\n")
    assert ready_conn.closed
    assert ready_conn.messages() == []


def test_ping_is_silent(ready_conn):
    ready_conn.send(b"PING\nPING\r\n")
    assert ready_conn.messages() == [] and not ready_conn.closed


def test_closing_for_a_protocol_error_leaves_no_timer_behind(ready_conn, clock):
    ready_conn.send(b"FOO\n")
    assert ready_conn.closed
    ready_conn.lose()
    assert clock.getDelayedCalls() == []


def test_unreadable_block_makes_the_node_stop_sharing_the_file(make_conn, shared, tmp_path, piece_files):
    # The shared file shrank on disk after it was hashed: a short read.
    _, data, manifest = shared
    path = tmp_path / "shrunk.bin"
    path.write_bytes(data)
    s = Servable(GROUP, manifest, piece_files(str(path), manifest), set(range(3)))
    with open(path, "r+b") as f:
        f.truncate(PIECE_SIZE)
    node = FakeNode(s)
    conn = make_conn(node)
    conn.hello(manifest)
    conn.take()
    conn.send(b"REQUEST 1 0 10\n")
    assert [b for b in conn.messages() if isinstance(b, tuple)] == []     # no bytes of a changed file
    assert len(node.broken) == 1 and node.broken[0][0] is s and "short read" in node.broken[0][1]


# -- server: backpressure and queue ---------------------------------------------

def test_paused_transport_queues_and_resume_sends_in_order(ready_conn, shared):
    _, data, _ = shared
    ready_conn.proto.pauseProducing()
    ready_conn.send(b"REQUEST 0 0 10\nREQUEST 1 0 10\nREQUEST 0 10 10\n")
    assert ready_conn.messages() == []
    ready_conn.proto.resumeProducing()
    assert ready_conn.messages() == [("PIECE", 0, 0, 10, data[:10]),
                                     ("PIECE", 1, 0, 10, data[PIECE_SIZE:PIECE_SIZE + 10]),
                                     ("PIECE", 0, 10, 10, data[10:20])]


def test_too_many_queued_requests_close(ready_conn):
    ready_conn.proto.pauseProducing()
    ready_conn.send(b"".join(b"REQUEST 0 %d 1\n" % i for i in range(MAX_QUEUED_REQUESTS)))
    assert not ready_conn.closed
    ready_conn.send(b"REQUEST 1 0 1\n")
    assert ready_conn.closed
    assert ready_conn.messages() == []


def test_cancel_removes_a_queued_request(ready_conn, shared):
    _, data, _ = shared
    ready_conn.proto.pauseProducing()
    ready_conn.send(b"REQUEST 0 0 10\nREQUEST 1 0 10\nCANCEL 0 0 10\nCANCEL 2 0 5\n")
    ready_conn.proto.resumeProducing()
    assert ready_conn.messages() == [("PIECE", 1, 0, 10, data[PIECE_SIZE:PIECE_SIZE + 10])]
    assert not ready_conn.closed


def test_stop_producing_drops_the_queue(ready_conn):
    ready_conn.proto.pauseProducing()
    ready_conn.send(b"REQUEST 0 0 10\n")
    ready_conn.proto.stopProducing()
    ready_conn.proto.resumeProducing()
    assert ready_conn.messages() == []


class FakeLimiter:
    def __init__(self) -> None:
        self.allow = False
        self.waiting = []

    def admit(self, n, wake):
        if self.allow:
            return True
        self.waiting.append(wake)
        return False


def test_rate_limiter_delays_blocks_without_reordering(make_conn, servable, shared):
    _, data, _ = shared
    limiter = FakeLimiter()
    conn = make_conn(FakeNode(servable), limiter=limiter)
    conn.hello(servable.manifest)
    conn.take()
    conn.send(b"REQUEST 0 0 10\nREQUEST 0 10 10\n")
    assert conn.messages() == []
    limiter.allow = True
    limiter.waiting.pop()()
    assert conn.messages() == [("PIECE", 0, 0, 10, data[:10]), ("PIECE", 0, 10, 10, data[10:20])]


# -- server: HAVE, slots, refusal ---------------------------------------------------

def test_add_piece_pushes_have_to_watching_connection(make_conn, partial, shared):
    _, data, _ = shared
    conn = make_conn(FakeNode(partial))
    conn.hello(partial.manifest)
    conn.take()
    partial.add_piece(2)
    assert conn.take() == ["HAVE 2"]
    conn.send(b"REQUEST 2 0 1000\n")
    assert conn.take() == [("PIECE", 2, 0, 1000, data[2 * PIECE_SIZE:])]
    conn.lose()
    assert conn.proto not in partial.watchers
    partial.add_piece(1)
    assert conn.messages() == []


def test_have_goes_to_every_watcher(make_conn, partial):
    node = FakeNode(partial)
    a, b = make_conn(node), make_conn(node)
    for c in (a, b):
        c.hello(partial.manifest)
        c.take()
    partial.add_piece(1)
    assert a.messages() == ["HAVE 1"] and b.messages() == ["HAVE 1"]


def test_upload_slots_choke_then_unchoke_when_a_slot_frees(clock, servable, shared):
    _, data, _ = shared
    factory = PeerServerFactory(FakeNode(servable), clock, upload_slots=1)
    a, b = ServerConn(factory, 1), ServerConn(factory, 2)
    a.hello(servable.manifest)
    b.hello(servable.manifest)
    assert a.take() == ["BITFIELD 3 e0", "UNCHOKE"]
    assert b.take() == ["BITFIELD 3 e0", "CHOKE"]
    b.send(b"REQUEST 0 0 10\n")
    assert b.take() == ["REJECT 0 0 10"]
    a.send(b"REQUEST 0 0 10\n")
    assert pieces_in(a.take()) == [("PIECE", 0, 0, 10, data[:10])]
    a.lose()
    assert b.take() == ["UNCHOKE"]
    b.send(b"REQUEST 0 0 10\n")
    assert b.take() == [("PIECE", 0, 0, 10, data[:10])]


def test_waiting_downloader_that_leaves_gives_up_its_turn(clock, servable):
    factory = PeerServerFactory(FakeNode(servable), clock, upload_slots=1)
    a, b, c = ServerConn(factory, 1), ServerConn(factory, 2), ServerConn(factory, 3)
    for conn in (a, b, c):
        conn.hello(servable.manifest)
        conn.take()
    b.lose()
    a.lose()
    assert c.take() == ["UNCHOKE"]
    assert b.messages() == []
    assert factory.slots.active == {c.proto} and factory.slots.waiting == []


def test_upload_slots_directly():
    slots = UploadSlots(2)
    unchoked = []

    class C:
        def __init__(self, n):
            self.n = n

        def unchoke(self):
            unchoked.append(self.n)
    a, b, c, d = C(1), C(2), C(3), C(4)
    assert slots.acquire(a) and slots.acquire(b)
    assert not slots.acquire(c) and not slots.acquire(d)
    slots.release(c)                  # a waiter leaves: nobody is unchoked
    assert unchoked == []
    slots.release(a)
    assert unchoked == [4] and slots.active == {b, d}
    slots.release(a)                  # twice: harmless
    assert unchoked == [4]


def test_refuse_all_sends_error_and_closes_matching(clock, servable, partial):
    node = FakeNode(servable)
    factory = PeerServerFactory(node, clock)
    a, b = ServerConn(factory, 1), ServerConn(factory, 2)
    a.hello(servable.manifest)
    node.servable = partial
    b.hello(partial.manifest)
    a.take(), b.take()
    factory.refuse_all("file no longer shared", lambda c: c.servable is servable)
    assert a.messages() == ["ERROR file no longer shared"] and a.closed
    assert b.messages() == [] and not b.closed
    a.lose()
    assert factory.connections == {b.proto}


# -- client ---------------------------------------------------------------------------

def fake_manifest(size: int = SIZE) -> Manifest:
    return Manifest(name="f.bin", size=size, file_hash="0" * 64,
                    piece_hashes=("0" * 64,) * piece_count(size))


class FakeDownload:
    """Records what PeerClientProtocol tells its download."""

    def __init__(self, manifest: Manifest = None) -> None:
        self.manifest = manifest or fake_manifest()
        self.events: List[tuple] = []

    def valid_block(self, index, offset, length):
        return (index < self.manifest.pieces and length > 0
                and offset + length <= self.manifest.piece_length(index))

    def peer_ready(self, conn, have):
        self.events.append(("ready", frozenset(have)))

    def peer_have(self, conn, index):
        self.events.append(("have", index))

    def peer_choked(self, conn, choked):
        self.events.append(("choked", choked))

    def peer_rejected(self, conn, index, offset, length):
        self.events.append(("rejected", index, offset, length))

    def peer_error(self, conn, reason):
        self.events.append(("error", reason))

    def peer_lost(self, conn):
        self.events.append(("lost",))

    def block_target(self, conn, index, offset, length):
        return None

    def block_received(self, conn, index, offset, data):
        # The protocol reuses its buffer: copy now, as Download does.
        self.events.append(("block", index, offset, bytes(data)))

    def errors(self):
        return [e for e in self.events if e[0] == "error"]


HELLO = b"HELLO mbt/2 club " + b"0" * 64 + b" dan"


def make_client(clock, download=None):
    dl = download or FakeDownload()
    proto = PeerClientProtocol(dl, HELLO, clock)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr, dl


def _blob(n: int, seed: int) -> bytes:
    # Raw block bytes that look like control lines, to catch a parser reading them as such.
    pattern = b"HAVE 1\nPIECE 0 0 5\n\r\nERROR x\n" + bytes(range(256))
    rnd = random.Random(seed).randbytes(n)
    return bytes(a ^ b if i % 3 else a for i, (a, b) in
                 enumerate(zip(rnd, (pattern * (n // len(pattern) + 1))[:n])))


BLOCKS = [(0, 0, 16, _blob(16, 1)), (0, 16, 300, _blob(300, 2)),
          (2, 0, LAST, _blob(LAST, 3)), (1, PIECE_SIZE - 1, 1, b"\n")]
STREAM = (b"BITFIELD 3 c0\n" + b"UNCHOKE\n"
          + b"PIECE 0 0 16\n" + BLOCKS[0][3]
          + b"HAVE 2\n"
          + b"PIECE 0 16 300\n" + BLOCKS[1][3]
          + b"PIECE 2 0 1000\r\n" + BLOCKS[2][3]
          + b"PIECE 1 524287 1\n" + BLOCKS[3][3]
          + b"REJECT 1 0 16384\n" + b"PING\n" + b"CHOKE\n")
EXPECTED = [("ready", frozenset({0, 1})), ("choked", False), ("block",) + BLOCKS[0][:2] + BLOCKS[0][3:],
            ("have", 2), ("block",) + BLOCKS[1][:2] + BLOCKS[1][3:],
            ("block",) + BLOCKS[2][:2] + BLOCKS[2][3:], ("block",) + BLOCKS[3][:2] + BLOCKS[3][3:],
            ("rejected", 1, 0, 16384), ("choked", True)]


def feed(proto, chunks) -> None:
    for c in chunks:
        proto.dataReceived(bytes(c))


def split_at(data: bytes, cuts) -> list:
    cuts = sorted(set(c for c in cuts if 0 < c < len(data)))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def test_client_sends_hello_on_connect(clock):
    _, tr, _ = make_client(clock)
    assert tr.value() == HELLO + b"\n"


def test_client_stream_in_one_chunk(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [STREAM])
    assert dl.events == EXPECTED
    assert not tr.disconnecting


def feed_in_place(proto, data: bytes, record: int) -> int:
    """As mbt.protocols.tlsdirect delivers: a block's bytes into ``block_space()``, the rest by dataReceived."""
    pos = in_place = 0
    while pos < len(data):
        space = proto.block_space()
        if space is not None:
            n = min(len(space), record, len(data) - pos)
            space[:n] = data[pos:pos + n]
            proto.block_filled(n)
            in_place += n
        else:
            n = min(record, len(data) - pos)
            proto.dataReceived(data[pos:pos + n])
        pos += n
    return in_place


@pytest.mark.parametrize("record", [1, 7, 100, 16384])
def test_client_stream_through_block_space_is_the_same(clock, record):
    proto, tr, dl = make_client(clock)
    in_place = feed_in_place(proto, STREAM, record)
    assert dl.events == EXPECTED
    assert (in_place > 0 or record >= len(STREAM)) and not tr.disconnecting
    assert proto.block_space() is None      # between blocks: nothing offered


def test_client_stream_byte_by_byte(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [STREAM[i:i + 1] for i in range(len(STREAM))])
    assert dl.events == EXPECTED


def test_client_stream_split_at_every_single_point(clock):
    for cut in range(1, len(STREAM)):
        proto, tr, dl = make_client(clock)
        feed(proto, [STREAM[:cut], STREAM[cut:]])
        assert dl.events == EXPECTED, "split at %d" % cut


def test_client_header_and_data_in_one_chunk_then_lines(clock):
    proto, _, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n", b"PIECE 0 0 16\n" + BLOCKS[0][3], b"HAVE 2\nHAVE 1\n"])
    assert dl.events == [("ready", frozenset({0, 1, 2})), ("block", 0, 0, BLOCKS[0][3]),
                         ("have", 2), ("have", 1)]


def test_client_chunk_boundary_inside_header_line(clock):
    proto, _, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\nPIE", b"CE 2 0 10", b"00\n" + BLOCKS[2][3][:10], BLOCKS[2][3][10:]])
    assert dl.events == [("ready", frozenset({0, 1, 2})), ("block", 2, 0, BLOCKS[2][3])]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(1, len(STREAM) - 1), max_size=30))
def test_client_stream_any_chunking(cuts):
    proto, tr, dl = make_client(task.Clock())
    feed(proto, split_at(STREAM, cuts))
    assert dl.events == EXPECTED


class RecvSocket:
    """Enough of a socket for ``tcp.Connection``: the stream comes out at most ``step`` bytes a call."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.pos, self.step = data, 0, step

    def setblocking(self, flag):
        pass

    def fileno(self):
        return -1

    def setsockopt(self, *args):
        pass

    def recv(self, n):
        chunk = self.data[self.pos:self.pos + min(n, self.step)]
        self.pos += len(chunk)
        return chunk

    def recv_into(self, buf, nbytes=0):
        chunk = self.recv(nbytes or len(buf))
        buf[:len(chunk)] = chunk
        return len(chunk)

    def send(self, data, flags=0):
        return len(data)


class TwistedReadClient(PeerClientProtocol):
    DIRECT_READ = False


@pytest.mark.parametrize("cls", [PeerClientProtocol, TwistedReadClient])
@pytest.mark.parametrize("step", [1, 7, 100, 1 << 20])
def test_client_both_read_paths_on_plain_tcp_frame_the_stream_alike(clock, cls, step):
    dl = FakeDownload()
    proto = cls(dl, HELLO, clock)
    transport = tcp.Connection(RecvSocket(STREAM, step), proto, MemoryReactorClock())
    proto.makeConnection(transport)
    # The switch: the transport's doRead is replaced only when DIRECT_READ is on.
    assert (transport.doRead == proto._read_socket) is cls.DIRECT_READ
    for _ in range(len(STREAM) + 2):
        why = transport.doRead()
        if why is not None:
            break
    assert why is main.CONNECTION_DONE
    assert dl.events == EXPECTED


def test_client_owns_its_framing_buffer(clock):
    proto, tr, dl = make_client(clock)
    assert not isinstance(proto, LineReceiver)      # no LineReceiver private state is written
    feed(proto, [b"BITFIELD 3 e0\nHAV"])
    assert bytes(proto._line) == b"HAV"
    feed(proto, [b"E 1\n"])
    assert bytes(proto._line) == b"" and dl.events[-1] == ("have", 1)


def test_client_blocks_of_max_size(clock):
    # A block larger than a piece cannot be valid; MAX_BLOCK itself is the buffer.
    proto, _, dl = make_client(clock, FakeDownload(fake_manifest(4 * PIECE_SIZE)))
    payload = _blob(PIECE_SIZE, 9)
    feed(proto, [b"BITFIELD 4 f0\n", b"PIECE 3 0 %d\n" % PIECE_SIZE + payload[:1000],
                 payload[1000:] + b"PIECE 3 0 %d\n" % PIECE_SIZE + payload])
    assert dl.events == [("ready", frozenset(range(4))), ("block", 3, 0, payload), ("block", 3, 0, payload)]


def test_client_request_and_cancel_lines(clock):
    proto, tr, _ = make_client(clock)
    tr.clear()
    proto.request(1, 131072, 131072)
    proto.cancel(1, 131072, 131072)
    assert tr.value() == b"REQUEST 1 131072 131072\nCANCEL 1 131072 131072\n"


def test_client_empty_file_bitfield(clock):
    proto, tr, dl = make_client(clock, FakeDownload(fake_manifest(0)))
    feed(proto, [b"BITFIELD 0 \n"])
    assert dl.events == [("ready", frozenset())]


def test_client_accepts_bitfield_of_the_largest_file(clock):
    # 1 TiB: 2**21 pieces, a 512 KiB hex BITFIELD line.
    manifest = fake_manifest(MAX_FILE_SIZE)
    proto, tr, dl = make_client(clock, FakeDownload(manifest))
    hexbits = bitfield_hex(range(manifest.pieces), manifest.pieces)
    line = b"BITFIELD %d %s\n" % (manifest.pieces, hexbits.encode())
    feed(proto, [line[i:i + 65536] for i in range(0, len(line), 65536)])
    assert dl.errors() == []
    assert len(dl.events) == 1 and dl.events[0][0] == "ready" and len(dl.events[0][1]) == manifest.pieces


@pytest.mark.parametrize("data", [
    b"BITFIELD 4 f0\n",           # piece count differs from the manifest
    b"BITFIELD 3 e000\n",         # too many bytes
    b"BITFIELD 3 \n",             # too few
    b"BITFIELD 3 f0\n",           # a bit past the last piece
    b"BITFIELD 3 zz\n",
    b"BITFIELD 3\n",
    b"BITFIELD 3 e0 e0\n",
    b"BITFIELD x e0\n",
    b"BITFIELD -3 e0\n",
])
def test_client_bad_bitfield_aborts(clock, data):
    proto, tr, dl = make_client(clock)
    feed(proto, [data + b"HAVE 1\n"])
    assert [e[0] for e in dl.events] == ["error"]
    assert tr.disconnecting


@pytest.mark.parametrize("first", [b"PIECE 0 0 10", b"HAVE 1", b"UNCHOKE", b"HELLO", b""])
def test_client_anything_but_bitfield_first_aborts(clock, first):
    proto, tr, dl = make_client(clock)
    feed(proto, [first + b"\n" + b"x" * 10 + b"BITFIELD 3 e0\n"])
    assert [e[0] for e in dl.events] == ["error"]
    assert tr.disconnecting


def test_client_error_before_bitfield_is_refusal(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"ERROR not a member of club\n"])
    assert dl.events == [("error", "refused: not a member of club")]
    assert tr.disconnecting


def test_client_error_after_bitfield_aborts(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\nERROR peer logged out\nHAVE 1\n"])
    assert dl.events[1:] == [("error", "peer closed: peer logged out")]
    assert tr.disconnecting


@pytest.mark.parametrize("header", [
    b"PIECE 3 0 10",                         # no such piece
    b"PIECE 2 0 1001",                       # past the short last piece
    b"PIECE 0 %d 1" % PIECE_SIZE,
    b"PIECE 0 0 0",
    b"PIECE 0 0 %d" % (MAX_BLOCK + 1),
    b"PIECE 0 0",
    b"PIECE 0 0 x",
])
def test_client_piece_out_of_bounds_aborts_before_reading_bytes(clock, header):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n" + header + b"\n" + b"HAVE 1\n" * 20])
    assert [e[0] for e in dl.events] == ["ready", "error"]
    assert tr.disconnecting


def test_client_piece_larger_than_buffer_aborts_even_if_download_allows_it(clock):
    class Lenient(FakeDownload):
        def valid_block(self, index, offset, length):
            return True
    proto, tr, dl = make_client(clock, Lenient())
    feed(proto, [b"BITFIELD 3 e0\nPIECE 0 0 %d\n" % (MAX_BLOCK + 1)])
    assert [e[0] for e in dl.events] == ["ready", "error"]


@pytest.mark.parametrize("line", [b"HAVE 3", b"HAVE 99999999", b"HAVE -1", b"HAVE", b"HAVE 1 2",
                                  b"REJECT 1 2", b"CHOKE\x00", b"FOO 1", b"have 1"])
def test_client_bad_message_after_bitfield_aborts(clock, line):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n" + line + b"\nHAVE 1\n"])
    assert [e[0] for e in dl.events] == ["ready", "error"]
    assert tr.disconnecting


def test_client_non_ascii_line_aborts(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\nHAVE \xef\xbc\x91\n"])     # a full-width digit one
    assert [e[0] for e in dl.events] == ["ready", "error"]


@pytest.mark.parametrize("chunks", [[b"x" * (PeerClientProtocol.MAX_LENGTH + 10)],
                                    [b"x" * 1000] * (PeerClientProtocol.MAX_LENGTH // 1000 + 2),
                                    [b"PING " + b"x" * PeerClientProtocol.MAX_LENGTH + b"\n"]])
def test_client_over_long_line_aborts(clock, chunks):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n"] + chunks)
    assert [e[0] for e in dl.events] == ["ready", "error"]
    assert tr.disconnecting


def test_client_handshake_timeout_aborts(clock):
    proto, tr, dl = make_client(clock)
    clock.advance(HANDSHAKE_TIMEOUT - 0.01)
    assert dl.events == []
    clock.advance(0.02)
    assert [e[0] for e in dl.events] == ["error"] and tr.disconnecting


def test_client_idle_timeout_after_bitfield(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n"])
    clock.advance(IDLE_TIMEOUT - 1)
    feed(proto, [b"PING\n"])
    clock.advance(IDLE_TIMEOUT - 1)
    assert dl.errors() == []
    clock.advance(2)
    assert len(dl.errors()) == 1 and tr.disconnecting


def test_client_keepalive_pings(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\n"])
    tr.clear()
    clock.advance(KEEPALIVE_INTERVAL)
    assert tr.value() == b"PING\n"
    clock.advance(KEEPALIVE_INTERVAL)
    assert tr.value() == b"PING\nPING\n"


def test_client_abort_for_protocol_error_reports_once_and_leaves_no_timer(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\nHAVE 7\n"])
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert clock.getDelayedCalls() == []
    clock.advance(IDLE_TIMEOUT + HANDSHAKE_TIMEOUT + 1)
    assert [e[0] for e in dl.events] == ["ready", "error", "lost"]


def test_client_connection_lost_mid_block_delivers_nothing_partial(clock):
    proto, tr, dl = make_client(clock)
    feed(proto, [b"BITFIELD 3 e0\nPIECE 0 0 300\n" + BLOCKS[1][3][:299]])
    proto.connectionLost(Failure(error.ConnectionLost()))
    assert dl.events == [("ready", frozenset({0, 1, 2})), ("lost",)]
    assert clock.getDelayedCalls() == []


# -- both ends --------------------------------------------------------------------------

class FetchingDownload(FakeDownload):
    """Asks for every block of every piece the server has, once unchoked."""

    def __init__(self, manifest, block=BLOCK):
        super().__init__(manifest)
        self.block = block
        self.conn = None
        self.have = set()
        self.asked = set()
        self.choked = True
        self.data = {}

    def _ask(self):
        if self.choked or self.conn is None:
            return
        for index in sorted(self.have - self.asked):
            self.asked.add(index)
            length = self.manifest.piece_length(index)
            for off in range(0, length, self.block):
                self.conn.request(index, off, min(self.block, length - off))

    def peer_ready(self, conn, have):
        super().peer_ready(conn, have)
        self.conn, self.have = conn, set(have)
        self._ask()

    def peer_have(self, conn, index):
        super().peer_have(conn, index)
        self.have.add(index)
        self._ask()

    def peer_choked(self, conn, choked):
        super().peer_choked(conn, choked)
        self.choked = choked
        self._ask()

    def block_target(self, conn, index, offset, length):
        return None

    def block_received(self, conn, index, offset, data):
        self.data[(index, offset)] = bytes(data)

    def assembled(self) -> bytes:
        return b"".join(self.data[k] for k in sorted(self.data))


def connect_both(node, manifest, clock, slots=16):
    factory = PeerServerFactory(node, clock, upload_slots=slots)
    server = factory.buildProtocol(IPv4Address("TCP", "10.0.0.2", 40000))
    dl = FetchingDownload(manifest)
    hello = b"HELLO mbt/2 %s %s dan" % (GROUP.encode(), manifest.file_hash.encode())
    client = PeerClientProtocol(dl, hello, clock,
                                prove=lambda c: sign_challenge(DOWNLOADER_KEY, c, GROUP, manifest.file_hash, "dan"))
    pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                         client, iosim.FakeTransport(client, isServer=False), greet=False)
    return server, client, dl, pump


def test_client_downloads_whole_file_from_server(servable, shared, clock):
    path, data, manifest = shared
    server, client, dl, pump = connect_both(FakeNode(servable), manifest, clock)
    pump.flush()
    assert dl.errors() == []
    assert len(dl.data) == 4 + 4 + 1
    got = dl.assembled()
    assert got == data
    # Verified pieces prove the file: their root is the manifest's file_hash.
    digests = [hashlib.sha256(got[i:i + PIECE_SIZE]).digest() for i in range(0, len(got), PIECE_SIZE)]
    assert pieces_root(len(got), digests) == manifest.file_hash
    for i in range(manifest.pieces):
        start = i * PIECE_SIZE
        assert servable.piece_file.piece_ok(i, got[start:start + manifest.piece_length(i)])


def test_client_gets_piece_announced_while_connected(partial, shared, clock):
    _, data, manifest = shared
    server, client, dl, pump = connect_both(FakeNode(partial), manifest, clock)
    pump.flush()
    assert set(k[0] for k in dl.data) == {0}
    partial.add_piece(2)
    partial.add_piece(1)
    pump.flush()
    assert ("have", 2) in dl.events and ("have", 1) in dl.events
    assert dl.assembled() == data
    assert dl.errors() == []


def test_refused_client_never_gets_bytes(servable, shared, clock):
    _, _, manifest = shared
    node = FakeNode(servable, refuse=MbtError("not a member of club", "not_member"))
    server, client, dl, pump = connect_both(node, manifest, clock)
    pump.flush()
    assert dl.events == [("error", "refused: not a member of club"), ("lost",)]
    assert dl.data == {}
    assert clock.getDelayedCalls() == []


def test_connections_per_host_are_capped(monkeypatch, servable, clock):
    import mbt.protocols.peer as peer_mod
    from twisted.internet.address import IPv4Address
    monkeypatch.setattr(peer_mod, "MAX_CONNECTIONS_PER_HOST", 2)
    factory = PeerServerFactory(FakeNode(servable), clock)
    made = []
    for port in (1, 2, 3):
        p = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", port))
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", port))
        p.makeConnection(t)
        made.append((p, t))
    assert all(isinstance(p, PeerServerProtocol) for p, _ in made[:2])
    third, t = made[2]
    assert not isinstance(third, PeerServerProtocol) and t.disconnecting   # hung up at once
    other = factory.buildProtocol(IPv4Address("TCP", "127.0.0.8", 1))
    assert isinstance(other, PeerServerProtocol)


class ExpiringNode(FakeNode):
    """Tickets that run out at a set time; ``TICKET`` renewals are checked like HELLO."""

    def __init__(self, servable, expires):
        super().__init__(servable)
        self.expires = expires

    def ticket_expires(self, ticket):
        return self.expires if ticket != "fresh" else self.expires + 1000


def test_requests_after_the_ticket_expires_get_no_bytes(make_conn, servable, clock):
    conn = make_conn(ExpiringNode(servable, expires=100.0))
    conn.send(b"HELLO mbt/2 %s %s u old\n" % (servable.group.encode(), servable.manifest.file_hash.encode()))
    conn.take()
    conn.send(b"REQUEST 0 0 10\n")
    assert [m[0] for m in conn.take() if isinstance(m, tuple)] == ["PIECE"]
    clock.advance(100)              # no request needed: the server hangs up at expiry
    assert [m for m in conn.take() if m != "PING"] == ["ERROR ticket expired"]
    assert conn.closed


def test_a_renewed_ticket_keeps_the_connection_serving(make_conn, servable, clock):
    conn = make_conn(ExpiringNode(servable, expires=100.0))
    conn.send(b"HELLO mbt/2 %s %s u old\n" % (servable.group.encode(), servable.manifest.file_hash.encode()))
    conn.take()
    conn.send(b"TICKET fresh\n")
    for _ in range(4):                  # 200 s later, with keep-alives in between
        clock.advance(50)
        conn.send(b"PING\n")
    conn.send(b"REQUEST 0 0 10\n")
    assert [m[0] for m in conn.take() if isinstance(m, tuple)] == ["PIECE"]
    assert not conn.closed


def test_a_refused_downloader_gets_no_more_pieces_even_when_the_buffer_drains(ready_conn):
    ready_conn.proto.pauseProducing()            # the transport's buffer is full
    ready_conn.send(b"REQUEST 0 0 10\nREQUEST 1 0 10\nREQUEST 2 0 10\n")
    ready_conn.proto.refuse("peer logged out")   # logout / stop_share / ticket expiry
    ready_conn.proto.resumeProducing()           # the buffer drained
    msgs = ready_conn.take()
    assert "ERROR peer logged out" in msgs
    assert [m for m in msgs if isinstance(m, tuple)] == []
    assert ready_conn.closed


# -- mbt/2: the ticket's key, proven by signing the server's challenge ---------------


def test_the_server_challenges_and_serves_only_after_a_good_proof(make_conn, servable, clock):
    node = FakeNode(servable)
    conn = ServerConn(PeerServerFactory(node, clock), auto_prove=False)
    h = servable.manifest.file_hash
    conn.send(b"HELLO mbt/2 club %s dan T0K3N\n" % h.encode())
    (line,) = conn.take()
    verb, challenge = line.split(" ")
    assert verb == "CHALLENGE" and len(challenge) == 64
    conn.send(b"REQUEST 0 0 10\n")             # anything but PROOF now ends it
    assert conn.closed and pieces_in(conn.messages()) == []


@pytest.mark.parametrize("forge", ["other key", "other challenge", "other user", "garbage", "empty"])
def test_a_proof_that_does_not_match_is_refused(make_conn, servable, clock, forge):
    conn = ServerConn(PeerServerFactory(FakeNode(servable), clock), auto_prove=False)
    h = servable.manifest.file_hash
    conn.send(b"HELLO mbt/2 club %s dan T0K3N\n" % h.encode())
    challenge = conn.take()[0].split(" ")[1]
    proof = {"other key": sign_challenge(new_session_key(), challenge, GROUP, h, "dan"),
             "other challenge": sign_challenge(DOWNLOADER_KEY, "00" * 32, GROUP, h, "dan"),
             "other user": sign_challenge(DOWNLOADER_KEY, challenge, GROUP, h, "eve"),
             "garbage": "!!!", "empty": ""}[forge]
    conn.send(b"PROOF %s\nREQUEST 0 0 10\n" % proof.encode())
    msgs = conn.messages()
    assert len(msgs) == 1 and msgs[0].startswith("ERROR ") and "proof" in msgs[0]
    assert conn.closed and conn.factory.slots.active == set()


def test_a_replayed_proof_fails_on_a_new_connection(make_conn, servable, clock):
    factory = PeerServerFactory(FakeNode(servable), clock)
    h = servable.manifest.file_hash
    first = ServerConn(factory, auto_prove=False)
    first.send(b"HELLO mbt/2 club %s dan T0K3N\n" % h.encode())
    captured = sign_challenge(DOWNLOADER_KEY, first.take()[0].split(" ")[1], GROUP, h, "dan")
    thief = ServerConn(factory, port=40001, auto_prove=False)
    thief.send(b"HELLO mbt/2 club %s dan T0K3N\n" % h.encode())
    thief.take()
    thief.send(b"PROOF %s\n" % captured.encode())
    assert thief.messages()[0].startswith("ERROR proof does not verify") and thief.closed


def test_an_mbt1_downloader_is_told_to_upgrade(make_conn, servable):
    conn = make_conn(FakeNode(servable))
    conn.send(b"HELLO mbt/1 club %s dan T0K3N\n" % servable.manifest.file_hash.encode())
    assert conn.messages() == ["ERROR this peer speaks mbt/2 (tickets bound to keys); upgrade mbt to"
                               " download from it"]
    assert conn.closed


def test_a_renewed_ticket_for_another_key_is_refused(make_conn, servable, clock):
    class TwoKeys(FakeNode):
        def ticket_holder(self, ticket):
            return public_key_hex(new_session_key()) if ticket == "stolen" else super().ticket_holder(ticket)
    conn = make_conn(TwoKeys(servable))
    conn.send(b"HELLO mbt/2 club %s dan T0K3N\n" % servable.manifest.file_hash.encode())
    conn.take()
    conn.send(b"TICKET stolen\n")
    assert conn.messages() == ["ERROR renewed ticket is for another key"] and conn.closed


def test_the_client_answers_a_challenge_with_its_proof(clock):
    proto = PeerClientProtocol(FakeDownload(), HELLO, clock, prove=lambda c: "sig-of-" + c)
    tr = StringTransport()
    proto.makeConnection(tr)
    tr.clear()
    proto.dataReceived(b"CHALLENGE abc\n")
    assert tr.value() == b"PROOF sig-of-abc\n"


class CallingNode(FakeNode):
    """A downloader's node waiting for one connect-back."""

    def __init__(self, client):
        super().__init__(None)
        self.client = client

    def take_callback(self, token):
        client, self.client = (self.client, None) if token == "tok-" + "x" * 20 else (None, self.client)
        return client


def test_connect_back_hands_the_accepted_connection_to_the_download(clock):
    dl = FakeDownload()
    client = PeerClientProtocol(dl, HELLO, clock, prove=lambda c: "p")
    conn = ServerConn(PeerServerFactory(CallingNode(client), clock))
    conn.send(b"CALLBACK tok-" + b"x" * 20 + b"\n")
    assert conn.tr.value() == HELLO + b"\n"            # we download on the connection the seeder made
    conn.send(b"CHALLENGE ab\nBITFIELD 3 e0\n")
    assert conn.tr.value().endswith(b"PROOF p\n")
    assert dl.events[0] == ("ready", frozenset({0, 1, 2}))
    assert conn.factory.connections == set()           # not counted as one we serve
    conn.lose()
    assert dl.events[-1] == ("lost",)


def test_an_unknown_callback_token_is_closed(clock):
    conn = ServerConn(PeerServerFactory(CallingNode(None), clock))
    conn.send(b"CALLBACK nope-" + b"y" * 20 + b"\n")
    assert conn.closed


def test_a_connect_back_server_opens_with_its_token(servable, clock):
    factory = PeerServerFactory(FakeNode(servable), clock)
    proto = PeerServerProtocol()
    proto.factory = factory
    proto.preamble = b"CALLBACK tok"
    tr = StringTransport()
    proto.makeConnection(tr)
    assert tr.value() == b"CALLBACK tok\n"
    proto.dataReceived(b"CALLBACK tok\n")            # a seeder never downloads on its own call
    assert tr.disconnecting
