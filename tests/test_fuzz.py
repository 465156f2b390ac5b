"""Fuzz: random, truncated and hostile bytes at every line-based channel.

Each property runs a bounded number of cases (hypothesis ``max_examples``) on
fake transports. After the garbage, the server is still up, its state is
unchanged, and a well-behaved client on a fresh connection is served.
"""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mbt import passwords
from mbt.errors import MbtError
from mbt.manifest import PIECE_SIZE, hash_file
from mbt.peer.serving import Servable
from mbt.peer.storage import PieceFile
from mbt.protocols.console import StdioConsole
from mbt.protocols.peer import PeerClientProtocol, PeerServerFactory
from mbt.protocols.tracker import TrackerServerFactory
from mbt.tickets import new_session_key, public_key_hex, sign_challenge
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VERBS = [b"HELLO", b"REQUEST", b"CANCEL", b"PING", b"TICKET", b"PIECE", b"BITFIELD", b"HAVE",
         b"CHOKE", b"UNCHOKE", b"REJECT", b"ERROR"]

#: Lines that look almost right: real verbs with odd, huge or missing fields.
near_miss_lines = st.builds(
    lambda verb, fields: verb + b" " + b" ".join(fields) + b"\n",
    st.sampled_from(VERBS),
    st.lists(st.one_of(st.sampled_from([b"0", b"1", b"-1", b"99999999999999999999", b"524288",
                                        b"131072", b"mbt/1", b"g", b"", b"\xff\xfe", b"0" * 64]),
                       st.binary(max_size=12)), max_size=6))
garbage = st.lists(st.one_of(st.binary(max_size=300), near_miss_lines), max_size=12)


# -- the peer wire, serving side -------------------------------------------------

class Node:
    """A node that serves one file to anyone whose HELLO names it (no tickets here)."""

    def __init__(self, servable):
        self.servable = servable

    def open_servable(self, group, file_hash, user, ticket, remote):
        if group == self.servable.group and file_hash == self.servable.manifest.file_hash:
            return self.servable
        raise MbtError("no such file shared here", "not_sharing")

    @staticmethod
    def ticket_expires(ticket):
        return None

    @staticmethod
    def ticket_holder(ticket):
        return public_key_hex(KEY)


KEY = new_session_key()


def handshake(proto, t, m) -> None:
    """HELLO, then the PROOF for the server's CHALLENGE (mbt/2)."""
    proto.dataReceived(b"HELLO mbt/2 g %s u\n" % m.file_hash.encode())
    line = t.value().split(b"\n")[-2]
    assert line.startswith(b"CHALLENGE ")
    proof = sign_challenge(KEY, line.split()[1].decode(), "g", m.file_hash, "u")
    proto.dataReceived(b"PROOF %s\n" % proof.encode())


@pytest.fixture(scope="module")
def shared_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "f.bin"
    path.write_bytes(bytes(range(256)) * 4100)          # 2 pieces + a bit
    m = hash_file(str(path))
    return str(path), m


def connect(factory, port=4000):
    addr = IPv4Address("TCP", "127.0.0.1", port)
    proto = factory.buildProtocol(addr)
    t = StringTransport(peerAddress=addr)
    proto.makeConnection(t)
    return proto, t


@FUZZ
@given(chunks=garbage)
def test_peer_server_survives_garbage_and_still_serves(shared_file, chunks):
    path, m = shared_file
    pf = PieceFile(path, m)
    try:
        servable = Servable("g", m, pf, set(range(m.pieces)))
        factory = PeerServerFactory(Node(servable), task.Clock())
        for shake in (False, True):            # garbage before and after a good handshake
            proto, t = connect(factory)
            if shake:
                handshake(proto, t, m)
            for chunk in chunks:
                if t.disconnecting:
                    break
                proto.dataReceived(chunk)
            proto.connectionLost(None)
        assert servable.have == set(range(m.pieces))
        assert factory.connections == set() and not factory.slots.active
        # A well-behaved downloader is still served, byte-exact.
        proto, t = connect(factory)
        handshake(proto, t, m)
        proto.dataReceived(b"REQUEST 1 0 100\n")
        out = t.value()
        assert b"\nPIECE 1 0 100\n" in out
        with open(path, "rb") as f:
            f.seek(PIECE_SIZE)
            assert out.endswith(f.read(100))
    finally:
        pf.close()


# -- the peer wire, downloading side ----------------------------------------------

class Download:
    def __init__(self, pieces):
        self.manifest = type("M", (), {"pieces": pieces})()
        self.blocks = []
        self.errors = []

    def valid_block(self, index, offset, length):
        return index < self.manifest.pieces and 0 < length and offset + length <= PIECE_SIZE

    def block_target(self, conn, index, offset, length):
        return None

    def block_received(self, conn, index, offset, data):
        self.blocks.append((index, offset, bytes(data)))

    def peer_error(self, conn, reason):
        self.errors.append(reason)

    def __getattr__(self, name):            # peer_ready, peer_have, peer_lost, ...
        return lambda *a, **k: None


@FUZZ
@given(chunks=garbage)
def test_peer_client_survives_garbage(chunks):
    dl = Download(3)
    clock = task.Clock()
    proto = PeerClientProtocol(dl, b"HELLO mbt/2 g h u", clock)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"BITFIELD 3 e0\nUNCHOKE\n")
    for chunk in chunks:
        if t.disconnecting:
            break
        proto.dataReceived(chunk)
    proto.connectionLost(None)
    for index, offset, data in dl.blocks:          # only well-framed, in-bounds blocks arrive
        assert index < 3 and offset + len(data) <= PIECE_SIZE
    assert clock.getDelayedCalls() == []


# -- the tracker channel ------------------------------------------------------------

@pytest.fixture(scope="module")
def tracker():
    real = passwords.make_record
    core = TrackerCore(TrackerState(), MemoryStore(), run_in_thread=lambda f, *a, **k: defer.maybeDeferred(f, *a, **k))
    factory = TrackerServerFactory(core)
    record = real("pw", 2 ** 4, 8, 1)
    core.state.apply({"op": "create_user", "user": "ann", "password_record": record})
    core.state.apply({"op": "create_group", "user": "ann", "group": "g"})
    return core, factory


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=12)
requests = st.builds(lambda op, args: json.dumps(dict(args, op=op, id=1), default=str).encode() + b"\n",
                     st.sampled_from(["create_user", "login", "create_group", "join_group", "share_file",
                                      "get_peers", "list_files", "accept_request", "leave_group", "nope"]),
                     st.dictionaries(st.sampled_from(["user", "group", "name", "password", "address",
                                                      "manifest", "id"]), json_like, max_size=5))


@FUZZ
@given(chunks=st.lists(st.one_of(st.binary(max_size=200), requests), max_size=10))
def test_tracker_survives_garbage_and_keeps_its_state(tracker, chunks):
    core, factory = tracker
    before = core.state.digest()
    proto, t = connect(factory)
    for chunk in chunks:
        if t.disconnecting:
            break
        proto.dataReceived(chunk)
    for line in t.value().split(b"\n"):
        if line:
            reply = json.loads(line)            # every reply is well-formed JSON ...
            assert "ok" in reply or reply["error"]["code"] != "internal"   # ... and never internal
    proto.connectionLost(None)
    # Without a valid login the only durable change anyone may make is an account.
    assert all(op["op"] == "create_user" for _, op in core.store.load())
    if not list(core.store.load()):
        assert core.state.digest() == before
    good, t2 = connect(factory)
    good.dataReceived(b'{"id": 9, "op": "ping"}\n')
    assert json.loads(t2.value()) == {"id": 9, "ok": {}}
    good.connectionLost(None)       # the tracker caps connections per address


# -- the console --------------------------------------------------------------------

class Backend:
    def __init__(self):
        self.lines = []

    def execute(self, line):
        self.lines.append(line)
        return defer.succeed("ok")

    def subscribe(self, listener):
        return lambda: None


@FUZZ
@given(chunks=st.lists(st.binary(max_size=400), max_size=10))
def test_console_survives_garbage(chunks):
    backend = Backend()
    quits = []
    console = StdioConsole(backend, "banner", lambda: quits.append(1))
    t = StringTransport()
    console.makeConnection(t)
    for chunk in chunks:
        console.dataReceived(chunk)
    console.dataReceived(b"\nhelp\n")
    assert backend.lines and backend.lines[-1] == "help"
    assert t.value().endswith(b"mbt> ")
