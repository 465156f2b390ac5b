"""The peer's tracker link on a fake clock and fake transports: no sockets, no sleeps."""

import json

from twisted.internet import task
from twisted.internet.testing import StringTransport

from mbt.peer.tracker_client import TrackerClient
from mbt.protocols.tracker import TrackerClientProtocol
from mbt.trackerinfo import TrackerAddress


def sent(transport: StringTransport):
    """The requests written so far (and clear the transport)."""
    lines = [json.loads(line) for line in transport.value().splitlines() if line.strip()]
    transport.clear()
    return lines


def answer(proto: TrackerClientProtocol, req: dict, ok=None) -> None:
    proto.dataReceived(json.dumps({"id": req["id"], "ok": ok or {}}).encode() + b"\n")


def connected_client(clock):
    """A client whose connection to tracker 1 was just made (the endpoint's part done by hand)."""
    target = TrackerAddress(1, "127.0.0.1", 7001)
    client = TrackerClient([target], clock)
    client._running = True
    proto = TrackerClientProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    client._connected(proto, target)
    return client, proto, transport


def test_keepalive_pings_every_minute_once_ready_and_stops_with_the_connection():
    clock = task.Clock()
    client, proto, transport = connected_client(clock)
    first, = sent(transport)
    assert first["op"] == "ping"                  # the handshake ping
    answer(proto, first)
    assert client.ready
    clock.advance(client.keepalive - 1)
    assert sent(transport) == []
    clock.advance(1)
    ping, = sent(transport)
    assert ping["op"] == "ping"
    answer(proto, ping)
    clock.advance(client.keepalive)
    assert [r["op"] for r in sent(transport)] == ["ping"]
    proto.connectionLost(None)                    # the tracker went away
    assert client._keepalive is None
    pending = clock.getDelayedCalls()
    assert len(pending) == 1 and pending[0].func == client._connect   # only the reconnect


def test_stop_leaves_no_timer_behind():
    clock = task.Clock()
    client, proto, transport = connected_client(clock)
    answer(proto, sent(transport)[0])
    client.stop()
    assert clock.getDelayedCalls() == []


def test_a_request_the_tracker_never_answers_fails_after_the_timeout():
    clock = task.Clock()
    client, proto, transport = connected_client(clock)
    answer(proto, sent(transport)[0])
    d = client.request("list_groups")
    failures = []
    d.addErrback(failures.append)
    clock.advance(client.request_timeout)
    assert failures and "did not answer" in failures[0].getErrorMessage()
    assert transport.disconnecting                # and the silent connection is dropped
