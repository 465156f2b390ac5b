"""The tracker's memory bounds on fake transports: line limits, long-line budget and deadline, caps.

Issue #12 items 2 and 3. The real-process RSS figures are in
``tests/test_tracker_memory_e2e.py``; here every limit is checked exactly,
with small budgets and a ``task.Clock``.
"""

import json

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from mbt.protocols.lines import FREE_BYTES, BoundedLineReceiver, LineBudget
from mbt.protocols.sync import SYNC_MAX_LINE, Mesh, SyncClientProtocol
from mbt.protocols.tracker import (ANON_MAX_LINE, LONG_LINE_DEADLINE, MAX_CONNECTIONS_PER_HOST, MAX_LINE,
                                   TrackerServerFactory)
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore
from mbt.trackerinfo import TrackerAddress
from tests.test_tracker_protocol import cheap_scrypt  # noqa: F401  (autouse: fast password hashing)


def sync_thread(f, *a, **k):
    return defer.maybeDeferred(f, *a, **k)


class Replicator:
    """Records what the mesh hands over."""

    def __init__(self):
        self.events = []

    def link_up(self, n, link):
        self.events.append(("up", n))

    def link_down(self, n, link):
        self.events.append(("down", n))

    def receive(self, n, link, msg):
        self.events.append(("msg", n))


def tracker(budget=None, mesh=None, per_host=MAX_CONNECTIONS_PER_HOST):
    clock = task.Clock()
    core = TrackerCore(TrackerState(), MemoryStore(), run_in_thread=sync_thread, clock=clock)
    return TrackerServerFactory(core, mesh, per_host=per_host, line_budget=budget), clock


_ports = iter(range(30000, 60000))


def connect(factory, host="127.0.0.1"):
    """A server protocol on a StringTransport, or None if the factory hung up at once."""
    addr = IPv4Address("TCP", host, next(_ports))
    proto = factory.buildProtocol(addr)
    transport = StringTransport(peerAddress=addr)
    proto.makeConnection(transport)
    return proto, transport


def replies(transport):
    out = [json.loads(x) for x in transport.value().splitlines() if x]
    transport.clear()
    return out


def logged_in(factory, name, host="127.0.0.1"):
    proto, transport = connect(factory, host)
    proto.dataReceived(json.dumps({"id": 1, "op": "create_user", "user": name, "password": "pw"}).encode()
                       + b"\n" + json.dumps({"id": 2, "op": "login", "user": name, "password": "pw",
                                             "address": "10.0.0.1:7000"}).encode() + b"\n")
    assert [("ok" in r) for r in replies(transport)] == [True, True]
    return proto, transport


def hello(frm=1, to=2):
    return json.dumps({"sync": "hello", "v": 1, "from": frm, "to": to, "nonce": "a" * 32}).encode() + b"\n"


# -- item 2: a sync hello proves nothing ------------------------------------------------------

def test_an_unauthenticated_sync_hello_keeps_the_anonymous_line_limit():
    mesh = Mesh(2, b"k" * 32, Replicator(), task.Clock())
    mesh.running = True
    factory, _clock = tracker(mesh=mesh)
    proto, transport = connect(factory)
    proto.dataReceived(hello())
    assert proto.sync is not None and not proto.sync.authenticated
    assert proto.MAX_LENGTH == ANON_MAX_LINE
    proto.dataReceived(b"x" * ANON_MAX_LINE)
    assert not transport.disconnecting
    proto.dataReceived(b"x")
    assert transport.disconnecting
    assert proto._partial == 0          # nothing kept


def test_the_sync_limit_applies_once_the_peer_tracker_proved_the_secret():
    clock = task.Clock()
    rep1, rep2 = Replicator(), Replicator()
    mesh1, mesh2 = Mesh(1, b"k" * 32, rep1, clock), Mesh(2, b"k" * 32, rep2, clock)
    mesh1.running = mesh2.running = True
    core = TrackerCore(TrackerState(), MemoryStore(), run_in_thread=sync_thread, clock=clock)
    server = TrackerServerFactory(core, mesh2).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    client = SyncClientProtocol(mesh1, TrackerAddress(2, "127.0.0.1", 6882))
    assert client.MAX_LENGTH == ANON_MAX_LINE       # the dialer trusts nobody yet either
    _s, _c, pump = iosim.connectedServerAndClient(lambda: server, lambda: client)
    pump.flush()
    assert rep1.events == [("up", 2)] and rep2.events == [("up", 1)]
    assert server.MAX_LENGTH == SYNC_MAX_LINE and client.MAX_LENGTH == SYNC_MAX_LINE
    assert server.budget is None                    # a proven tracker is not charged
    server.dataReceived(b"x" * (MAX_LINE + 1))       # a long replicated line is fine
    assert not server.transport.disconnecting


def test_a_dialed_address_that_is_no_tracker_cannot_send_megabytes():
    mesh = Mesh(1, b"k" * 32, Replicator(), task.Clock())
    mesh.running = True
    client = SyncClientProtocol(mesh, TrackerAddress(2, "127.0.0.1", 6882))
    transport = StringTransport()
    client.makeConnection(transport)
    client.dataReceived(b"x" * (ANON_MAX_LINE + 1))
    assert transport.disconnecting


# -- item 3: logged-in clients share a bounded budget ----------------------------------------

def test_long_lines_are_charged_per_host_and_in_all():
    budget = LineBudget(total=3 * 100000, per_host=2 * 100000)
    factory, _clock = tracker(budget)
    a1, ta1 = logged_in(factory, "a1", "10.0.0.1")
    a2, ta2 = logged_in(factory, "a2", "10.0.0.1")
    a3, ta3 = logged_in(factory, "a3", "10.0.0.1")
    b1, tb1 = logged_in(factory, "b1", "10.0.0.2")
    b2, tb2 = logged_in(factory, "b2", "10.0.0.2")
    chunk = b"x" * (FREE_BYTES + 100000)      # charges 100000
    a1.dataReceived(chunk)
    a2.dataReceived(chunk)
    assert budget.by_host == {"10.0.0.1": 200000} and budget.used == 200000
    a3.dataReceived(chunk)                    # over the per-host budget
    assert ta3.disconnecting and replies(ta3)[0]["error"]["code"] == "busy"
    b1.dataReceived(chunk)
    b2.dataReceived(chunk)                    # over the total
    assert tb2.disconnecting and replies(tb2)[0]["error"]["code"] == "busy"
    assert budget.used == 300000
    assert not (ta1.disconnecting or ta2.disconnecting or tb1.disconnecting)
    # Finishing a line gives its budget back: it was a request like any other.
    a1.dataReceived(b"\n")
    assert replies(ta1)[0]["error"]["code"] == "bad_json"
    assert budget.used == 200000
    # So does a connection that goes away with an unfinished line.
    a2.connectionLost(None)
    b1.connectionLost(None)
    assert budget.used == 0 and budget.by_host == {}


def test_small_lines_are_never_charged():
    budget = LineBudget(total=0, per_host=0)
    factory, _clock = tracker(budget)
    conns = [logged_in(factory, "u%d" % i) for i in range(3)]
    for proto, transport in conns:
        proto.dataReceived(b"y" * FREE_BYTES)
        assert not transport.disconnecting
    assert budget.used == 0


def test_a_long_line_must_arrive_before_its_deadline():
    factory, clock = tracker()
    proto, transport = logged_in(factory, "slow")
    proto.dataReceived(b'{"id": 3, "op": "ping", "pad": "' + b"x" * FREE_BYTES)
    clock.advance(LONG_LINE_DEADLINE - 1)
    proto.dataReceived(b"x" * 1000)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting
    assert replies(transport)[0]["error"]["code"] == "line_timeout"
    assert factory.line_budget.used == 0


def test_a_long_line_finished_in_time_is_served_and_its_deadline_dropped():
    factory, clock = tracker()
    proto, transport = logged_in(factory, "quick")
    proto.dataReceived(b'{"id": 3, "op": "ping", "pad": "' + b"x" * (2 * FREE_BYTES))
    proto.dataReceived(b'"}\n')
    assert replies(transport) == [{"id": 3, "ok": {}}]
    assert not clock.getDelayedCalls() or all(c.getTime() - clock.seconds() != LONG_LINE_DEADLINE
                                              for c in clock.getDelayedCalls())
    clock.advance(LONG_LINE_DEADLINE + 1)
    assert not transport.disconnecting


def test_connections_per_address_are_capped():
    factory, _clock = tracker(per_host=3)
    conns = [connect(factory, "10.1.1.1") for _ in range(3)]
    assert not any(t.disconnecting for _p, t in conns)
    _p, extra = connect(factory, "10.1.1.1")
    assert extra.disconnecting
    _p, other = connect(factory, "10.1.1.2")
    assert not other.disconnecting
    conns[0][0].connectionLost(None)
    _p, again = connect(factory, "10.1.1.1")
    assert not again.disconnecting


# -- framing: linear in the bytes received ------------------------------------------------------

class Collector(BoundedLineReceiver):
    MAX_LENGTH = 10 ** 9

    def __init__(self):
        self.lines = []

    def lineReceived(self, line):
        self.lines.append(line)


def test_lines_split_anywhere_arrive_whole():
    c = Collector()
    c.makeConnection(StringTransport())
    data = b"one\ntwo\n\nthree is longer\n" + b"z" * 5000 + b"\nend"
    for i in range(0, len(data), 7):
        c.dataReceived(data[i:i + 7])
    assert c.lines == [b"one", b"two", b"", b"three is longer", b"z" * 5000]
    c.dataReceived(b"\n")
    assert c.lines[-1] == b"end"
