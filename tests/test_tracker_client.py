"""The peer's tracker link on a fake reactor (MemoryReactorClock): no sockets, no sleeps.

The test plays the trackers: it accepts or refuses each connection attempt
the link makes, reads the requests written to a StringTransport and answers
them, and moves the fake clock.
"""

import json
import os

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from mbt import tickets
from mbt.manifest import hash_file
from mbt.peer.node import PeerNode
from mbt.peer.shares import Share
from mbt.peer.tracker_client import RotatingEndpoint, TrackerClient
from mbt.trackerinfo import TrackerAddress

T1 = TrackerAddress(1, "127.0.0.1", 7001)
T2 = TrackerAddress(2, "127.0.0.1", 7002)
UNREACHABLE = ("no tracker reachable (tried 127.0.0.1:7001, 127.0.0.1:7002); "
               "still retrying in the background")


class Tracker:
    """The tracker's end of one connection the link made."""

    def __init__(self, proto, transport: StringTransport) -> None:
        self.proto, self.transport = proto, transport

    def requests(self):
        """The requests written since the last call."""
        lines = [json.loads(line) for line in self.transport.value().splitlines() if line.strip()]
        self.transport.clear()
        return lines

    def request(self, op: str) -> dict:
        """The one request written since the last call, which must be ``op``."""
        req, = self.requests()
        assert req["op"] == op, req
        return req

    def answer(self, req: dict, ok=None) -> None:
        self.proto.dataReceived(json.dumps({"id": req["id"], "ok": ok or {}}).encode() + b"\n")

    def error(self, req: dict, code: str, message: str) -> None:
        self.proto.dataReceived(json.dumps(
            {"id": req["id"], "error": {"code": code, "message": message}}).encode() + b"\n")

    def handshake(self) -> None:
        """Answer the ping every new connection starts with."""
        self.answer(self.request("ping"), {"time": 1000.0})

    def die(self) -> None:
        self.proto.connectionLost(Failure(ConnectionDone()))


class Link:
    """A TrackerClient on a MemoryReactorClock, and the trackers it dials."""

    def __init__(self, trackers=(T1, T2), client=None, **kwargs) -> None:
        self.clock = MemoryReactorClock()
        self.notices = []
        self.client = client or TrackerClient(list(trackers), self.clock,
                                              notify=self.notices.append, **kwargs)

    def attempts(self):
        """(host, port) of every connection attempt so far."""
        return [(host, port) for host, port, *_ in self.clock.tcpClients]

    def refuse(self) -> None:
        _, _, factory, _, _ = self.clock.tcpClients[-1]
        factory.clientConnectionFailed(self.clock.connectors[-1], Failure(ConnectionRefusedError()))

    def accept(self) -> Tracker:
        host, port, factory, _, _ = self.clock.tcpClients[-1]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        proto.makeConnection(transport)
        return Tracker(proto, transport)

    def ready_on_first(self) -> Tracker:
        self.client.start()
        tracker = self.accept()
        tracker.handshake()
        assert self.client.ready
        return tracker

    def retry_in(self) -> float:
        """Seconds until the one scheduled reconnect attempt."""
        calls = [c for c in self.clock.getDelayedCalls() if "_reconnect" in repr(c.func)]
        assert len(calls) == 1, self.clock.getDelayedCalls()
        return calls[0].getTime() - self.clock.seconds()


def result_of(d: defer.Deferred):
    """What ``d`` fired with (a Failure for an error); it must have fired."""
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


# -- connecting and failover ---------------------------------------------------

def test_the_first_tracker_is_dialled_and_pinged_before_requests_go_through():
    times = []
    link = Link(on_time=lambda sent, received, t: times.append(t))
    link.client.start()
    assert link.attempts() == [("127.0.0.1", 7001)]
    assert link.clock.tcpClients[0][3] == TrackerClient.connect_timeout == 3.0
    tracker = link.accept()
    ping = tracker.request("ping")
    assert ping["time"] is True and not link.client.ready
    d = link.client.request("list_groups")
    assert tracker.requests() == []                 # held until the link is ready
    tracker.answer(ping, {"time": 1234.5})
    assert link.client.ready and times == [1234.5]
    link.clock.advance(0)
    req = tracker.request("list_groups")
    tracker.answer(req, {"groups": []})
    assert result_of(d) == {"groups": []}
    assert link.notices == []


def test_a_refused_tracker_fails_over_to_the_next_in_file_order():
    link = Link()
    link.client.start()
    link.refuse()
    assert link.retry_in() == pytest.approx(0.05)
    link.clock.advance(0.05)
    assert link.attempts() == [("127.0.0.1", 7001), ("127.0.0.1", 7002)]
    link.accept().handshake()
    assert link.client.ready and link.client.current == T2


def test_backoff_every_tracker_once_quickly_then_rounds_doubling_up_to_four_seconds():
    link = Link()
    link.client.start()
    waits = []
    for _ in range(10):
        link.refuse()
        waits.append(round(link.retry_in(), 3))
        link.clock.advance(link.retry_in())
    assert waits == [0.05, 0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 4.0]
    ports = [port for _, port in link.attempts()]
    assert ports == [7001, 7002] * 5 + [7001]
    link.accept().handshake()                       # a success ends the streak
    assert link.client.ready


def test_a_lost_connection_retries_the_same_tracker_first_then_the_next_one():
    link = Link()
    first = link.ready_on_first()
    first.die()
    assert not link.client.ready
    assert link.notices == ["lost connection to tracker 127.0.0.1:7001; reconnecting"]
    assert link.retry_in() == pytest.approx(0.1)
    link.clock.advance(0.1)
    assert link.attempts()[-1] == ("127.0.0.1", 7001)
    link.refuse()                                   # it is really gone
    assert link.retry_in() == pytest.approx(0.05)
    link.clock.advance(0.05)
    assert link.attempts()[-1] == ("127.0.0.1", 7002)
    link.accept().handshake()
    assert link.client.ready and link.client.current == T2
    assert link.notices[1:] == ["switched to tracker 127.0.0.1:7002 (tracker 127.0.0.1:7001 is unreachable)"]


def test_a_restarted_tracker_is_reconnected_with_one_notice_each_way():
    link = Link()
    link.ready_on_first().die()
    link.clock.advance(0.1)
    link.accept().handshake()
    assert link.client.current == T1
    assert link.notices == ["lost connection to tracker 127.0.0.1:7001; reconnecting",
                            "reconnected to tracker 127.0.0.1:7001"]


def test_a_tracker_that_dies_while_we_log_back_in_is_left_for_the_next():
    link = Link()
    link.client.start()
    tracker = link.accept()
    tracker.request("ping")
    tracker.die()                                   # before the answer: no error escapes
    assert not link.client.ready and link.client.proto is None
    link.clock.advance(link.retry_in())
    assert link.attempts()[-1] == ("127.0.0.1", 7002)
    link.accept().handshake()
    assert link.client.ready and link.client.current == T2


def test_a_tracker_that_never_answers_the_handshake_is_dropped_and_the_next_one_tried():
    link = Link()
    link.client.start()
    tracker = link.accept()
    link.clock.advance(TrackerClient.request_timeout)
    assert tracker.transport.disconnecting and not link.client.ready
    tracker.die()
    link.clock.advance(link.retry_in())
    assert link.attempts()[-1] == ("127.0.0.1", 7002)


def test_catching_up_leaves_the_tracker_at_once_and_the_request_goes_to_the_next():
    link = Link()
    first = link.ready_on_first()
    d = link.client.request("list_files", group="club")
    first.error(first.request("list_files"), "catching_up", "this tracker is catching up")
    assert first.transport.disconnecting and not link.client.ready
    first.die()
    assert link.retry_in() == 0
    link.clock.advance(0)
    assert link.attempts()[-1] == ("127.0.0.1", 7002)
    second = link.accept()
    second.handshake()
    link.clock.advance(0)
    req = second.request("list_files")
    assert req["group"] == "club"
    second.answer(req, {"files": []})
    assert result_of(d) == {"files": []}


# -- re-login and share re-announcement as the prepare step ----------------------

def test_after_failover_the_peer_logs_back_in_and_reannounces_before_user_requests(tmp_path):
    clock = MemoryReactorClock()
    (tmp_path / "state").mkdir()
    node = PeerNode("127.0.0.1:7000", [T1, T2], str(tmp_path / "state"), clock)
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(1000))
    manifest = hash_file(str(path), "a.bin")
    st = os.stat(path)
    node.store.put_share(Share(group="club", name="a.bin", path=str(path), manifest=manifest.to_dict(),
                               size=st.st_size, mtime_ns=st.st_mtime_ns, user="ann"))
    node.user, node._password, node.session_key = "ann", "pw", tickets.new_session_key()
    notices = []
    node.subscribe(notices.append)
    link = Link(client=node.tracker)
    link.clock = clock

    def relogin(tracker):
        login = tracker.request("login")
        assert (login["user"], login["password"], login["address"]) == ("ann", "pw", "127.0.0.1:7000")
        assert login["session_key"] == tickets.public_key_hex(node.session_key)
        tracker.answer(login, {"time": 5000.0})
        tracker.answer(tracker.request("ticket_key"), {"public_key": "ab" * 32})
        share = tracker.request("share_file")
        assert share["group"] == "club" and share["manifest"]["file_hash"] == manifest.file_hash
        assert not node.tracker.ready                   # not before the shares are announced
        tracker.answer(share, {"sharers": 1})

    node.tracker.start()
    first = link.accept()
    first.handshake()
    relogin(first)
    assert node.tracker.ready and ("club", manifest.file_hash) in node.servables
    first.die()
    d = node.list_groups()                              # made during the outage
    clock.advance(0.1)
    link.refuse()
    clock.advance(0.05)
    second = link.accept()
    second.handshake()
    relogin(second)
    clock.advance(0)
    req = second.request("list_groups")                 # only now
    second.answer(req, {"groups": [{"group": "club", "owner": "ann"}]})
    assert result_of(d)["groups"][0]["group"] == "club"
    assert [n for n in notices if "tracker" in n or "logged" in n] == [
        "notice: logged back in as ann; sharing 1 file",
        "notice: lost connection to tracker 127.0.0.1:7001; reconnecting",
        "notice: switched to tracker 127.0.0.1:7002 (tracker 127.0.0.1:7001 is unreachable)",
        "notice: logged back in as ann; sharing 1 file"]
    node.tracker.stop()


# -- requests: every tracker refused, timeouts -----------------------------------

def test_when_every_tracker_refused_a_waiting_request_fails_and_later_ones_fail_at_once():
    link = Link()
    link.client.start()
    d = link.client.request("list_groups")
    link.refuse()
    link.clock.advance(0.05)
    assert not d.called                # one tracker left to try
    link.refuse()
    link.clock.advance(0)
    assert result_of(d).getErrorMessage() == UNREACHABLE
    assert result_of(link.client.request("list_groups")).getErrorMessage() == UNREACHABLE
    # ... and it still retries in the background
    link.clock.advance(link.retry_in())
    link.accept().handshake()
    assert link.client.ready
    assert not link.client.request("list_groups").called       # sent, not refused


def test_a_request_waits_at_most_request_timeout_for_a_tracker():
    link = Link()
    link.client.start()                             # the connection attempt hangs
    d = link.client.request("list_groups")
    link.clock.advance(TrackerClient.request_timeout - 0.01)
    assert not d.called
    link.clock.advance(0.01)
    assert result_of(d).getErrorMessage() == UNREACHABLE


def test_a_request_the_tracker_never_answers_fails_after_the_timeout():
    link = Link()
    tracker = link.ready_on_first()
    d = link.client.request("list_groups")
    link.clock.advance(TrackerClient.request_timeout - 0.01)
    assert not d.called
    link.clock.advance(0.01)
    assert result_of(d).getErrorMessage() == "the tracker did not answer within 8 seconds"
    assert tracker.transport.disconnecting          # and the silent connection is dropped


def test_keepalive_pings_every_minute_once_ready_and_stops_with_the_connection():
    link = Link()
    tracker = link.ready_on_first()
    link.clock.advance(link.client.keepalive - 1)
    assert tracker.requests() == []
    link.clock.advance(1)
    tracker.answer(tracker.request("ping"))
    link.clock.advance(link.client.keepalive)
    tracker.answer(tracker.request("ping"))
    tracker.die()                                   # the tracker went away
    assert link.client._keepalive is None
    link.retry_in()                                 # only the reconnect is scheduled
    assert len(link.clock.getDelayedCalls()) == 1


# -- stopping ------------------------------------------------------------------

def test_stop_while_connecting_fails_waiting_requests_and_leaves_no_timer():
    link = Link()
    link.client.start()
    d = link.client.request("list_groups")
    link.client.stop()
    link.clock.advance(0)
    assert result_of(d).getErrorMessage() == "peer is shutting down"
    assert link.clock.getDelayedCalls() == []
    link.clock.advance(100)
    assert len(link.attempts()) == 1


def test_stop_while_logging_back_in_closes_the_connection_and_leaves_no_timer():
    link = Link()
    link.client.start()
    tracker = link.accept()
    tracker.request("ping")
    link.client.stop()
    assert tracker.transport.disconnecting and not link.client.ready
    tracker.die()
    assert link.clock.getDelayedCalls() == []
    link.clock.advance(100)
    assert len(link.attempts()) == 1 and link.notices == []


def test_stop_when_ready_closes_the_connection_without_a_notice():
    link = Link()
    tracker = link.ready_on_first()
    done = link.client.stop()
    assert tracker.transport.disconnecting
    tracker.die()
    assert result_of(done) is None
    assert link.clock.getDelayedCalls() == [] and link.notices == []


# -- the rotating endpoint -------------------------------------------------------

def test_rotating_endpoint_moves_on_after_a_failure_and_stays_after_a_success():
    made = []

    class Endpoint:
        def __init__(self, target, ok):
            self.target, self.ok = target, ok

        def connect(self, factory):
            made.append(self.target.port)
            return defer.succeed("proto") if self.ok else defer.fail(ConnectionRefusedError())

    up = {7002}
    ep = RotatingEndpoint([T1, T2], lambda t: Endpoint(t, t.port in up))
    assert isinstance(result_of(ep.connect(None)), Failure)
    assert result_of(ep.connect(None)) == "proto" and ep.attempted == T2
    assert result_of(ep.connect(None)) == "proto"
    up.clear()
    for _ in range(3):
        result_of(ep.connect(None))
    assert made == [7001, 7002, 7002, 7002, 7001, 7002]
