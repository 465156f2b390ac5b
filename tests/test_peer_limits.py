"""A peer's connection caps before HELLO (issue #12 item 4), on fake transports and a task.Clock.

Connections that have not shown a valid ticket share a small pool (in all and
per address) with a short deadline; the rest of the connection cap is kept
for downloaders whose HELLO was accepted. The real-process attack is in
``tests/test_peer_limits_e2e.py``.
"""

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mbt.tickets import new_session_key, public_key_hex, sign_challenge
from mbt.errors import MbtError
from mbt.manifest import hash_file
from mbt.peer.serving import Servable
from mbt.peer.storage import PieceFile
from mbt.protocols.peer import (HELLO_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_HOST, MAX_PENDING,
                                MAX_PENDING_PER_HOST, PeerServerFactory, PeerServerProtocol)


class TicketNode:
    """Serves one file to HELLOs whose ticket is ``good``."""

    def __init__(self, servable):
        self.servable = servable

    @staticmethod
    def ticket_expires(ticket):
        return None

    @staticmethod
    def ticket_holder(ticket):
        return public_key_hex(KEY)

    def open_servable(self, group, file_hash, user, ticket, remote):
        if ticket != "good":
            raise MbtError("a ticket from the tracker is required (get_ticket)", "bad_ticket")
        return self.servable


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * 1000)
    manifest = hash_file(str(path))
    pf = PieceFile(str(path), manifest)
    yield PeerServerFactory(TicketNode(Servable("club", manifest, pf, {0})), task.Clock())
    pf.close()


_ports = iter(range(1024, 65536))


def connect(factory, host):
    """(protocol, transport); the transport is disconnecting if the peer hung up at once."""
    addr = IPv4Address("TCP", host, next(_ports))
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


KEY = new_session_key()


def hello(proto, ticket="good"):
    """HELLO, and the PROOF for the CHALLENGE that answers a good ticket (mbt/2)."""
    file_hash = proto.factory.node.servable.manifest.file_hash
    out = proto.transport.value()
    proto.dataReceived(b"HELLO mbt/2 club %s dan %s\n" % (file_hash.encode(), ticket.encode()))
    new = proto.transport.value()[len(out):]
    if new.startswith(b"CHALLENGE "):
        challenge = new.split(b"\n")[0].split(b" ")[1].decode()
        proto.transport.clear()
        proto.transport.write(out)
        proto.dataReceived(b"PROOF %s\n" % sign_challenge(KEY, challenge, "club", file_hash, "dan").encode())


def held(conns):
    return [c for c in conns if isinstance(c[0], PeerServerProtocol) and not c[1].disconnecting]


def test_idle_strangers_from_many_addresses_leave_room_for_a_ticketed_hello(factory):
    """The attack of the issue: 16 addresses x 64 connections that never say HELLO."""
    attackers = [connect(factory, "127.0.1.%d" % h) for h in range(1, 17) for _ in range(64)]
    assert len(held(attackers)) == 16 * MAX_PENDING_PER_HOST <= MAX_PENDING
    proto, transport = connect(factory, "127.0.0.1")
    hello(proto)
    assert transport.value().split(b"\n")[:2] == [b"BITFIELD 1 80", b"UNCHOKE"]
    assert not transport.disconnecting


def test_a_full_pending_pool_pushes_out_its_oldest_member(factory):
    first = [connect(factory, "10.0.%d.1" % h) for h in range(MAX_PENDING)]
    assert len(held(first)) == MAX_PENDING
    newcomer = connect(factory, "10.1.0.1")
    assert first[0][1].disconnecting                   # the oldest went
    assert len(held(first)) == MAX_PENDING - 1
    hello(newcomer[0])
    assert newcomer[1].value().startswith(b"BITFIELD")
    assert len(factory.pending) == MAX_PENDING - 1      # the newcomer left the pool


def test_ticketed_connections_use_the_reserve(factory):
    served = []
    for i in range(MAX_CONNECTIONS_PER_HOST):
        c = connect(factory, "10.2.0.%d" % (i // MAX_CONNECTIONS_PER_HOST + 1))
        hello(c[0])
        served.append(c)
    # 64 served from one address, far more than may wait for HELLO from it.
    assert len(held(served)) == MAX_CONNECTIONS_PER_HOST > MAX_PENDING_PER_HOST
    assert len(factory.pending) == 0
    assert connect(factory, "10.2.0.1")[1].disconnecting      # the per-address cap still holds
    # Strangers fill their pool; ticketed downloaders still get in up to the total cap.
    strangers = [connect(factory, "10.3.%d.%d" % (i // 250, i % 250 + 1)) for i in range(MAX_PENDING)]
    assert len(held(strangers)) == MAX_PENDING
    more = []
    for i in range(MAX_CONNECTIONS - len(factory.connections)):
        more.append(connect(factory, "10.4.%d.1" % i))
        hello(more[-1][0])          # at once, as downloaders do: each leaves the pool
    assert len(held(more)) == len(more) and len(factory.connections) == MAX_CONNECTIONS
    # The first newcomer found the pool full and pushed out the oldest stranger;
    # every later one found the place its predecessor left by saying HELLO.
    assert len(held(strangers)) == MAX_PENDING - 1
    assert connect(factory, "10.5.0.1")[1].disconnecting


def test_a_wrong_ticket_is_refused_and_frees_its_place(factory):
    c = connect(factory, "10.6.0.1")
    hello(c[0], ticket="forged")
    assert c[1].value().startswith(b"ERROR ") and c[1].disconnecting
    c[0].connectionLost(None)
    assert len(factory.pending) == 0 and len(factory.connections) == 0


def test_hello_must_come_within_the_short_deadline(factory):
    conns = [connect(factory, "10.7.0.1") for _ in range(MAX_PENDING_PER_HOST)]
    assert connect(factory, "10.7.0.1")[1].disconnecting        # this address's pool is full
    factory.clock.advance(HELLO_TIMEOUT - 0.01)
    assert not any(t.disconnecting for _p, t in conns)
    factory.clock.advance(0.02)
    assert all(t.disconnecting for _p, t in conns)
    for p, _t in conns:
        p.connectionLost(None)
    assert not connect(factory, "10.7.0.1")[1].disconnecting
