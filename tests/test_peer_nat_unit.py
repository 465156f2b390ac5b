"""Peer side of NAT and clock skew, without a network: tickets judged in tracker time,
the wild-clock notice, connect-back / relay dialling and the relay handshake (fake reactor)."""

import pytest
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock, StringTransport

from mbt.errors import MbtError
from mbt.manifest import Manifest
from mbt.peer.node import PeerNode
from mbt.peer.reaching import dial_for_downloader
from mbt.peer.serving import Servable
from mbt.protocols.peer import PeerServerProtocol
from mbt.relay.client import WAIT_FOR_PARTNER, RelayHandshake
from mbt.tickets import make_key_ticket, new_session_key, public_key_hex, signing_key_from_secret

TRACKER_KEY = signing_key_from_secret(b"the trackers' shared secret, 32+")
T = 1_800_000_000.0          # the trackers' clock at the moment the ticket is issued
HASH = "d" * 64


def node_at(tmp_path, local_now, tracker_now=None):
    """A logged-in node whose own clock reads ``local_now`` and that has learnt the trackers' time."""
    reactor = MemoryReactorClock()
    reactor.advance(local_now)
    node = PeerNode("127.0.0.1:0", [], str(tmp_path), reactor)
    node.user = "sam"
    node.ticket_key = public_key_hex(TRACKER_KEY)
    node.servables[("club", HASH)] = Servable("club", Manifest("f", 1, 512 * 1024, HASH, [HASH]), None, {0})
    notices = []
    node.subscribe(notices.append)
    if tracker_now is not None:
        node._tracker_time(local_now - 0.05, local_now + 0.05, tracker_now)
    return node, notices


def ticket(issued=T):
    return make_key_ticket(TRACKER_KEY, "fay", "club", HASH, public_key_hex(new_session_key()), issued)[0]


@pytest.mark.parametrize("skew", [600, -600, 59 * 60, -59 * 60, 3 * 3600])
def test_a_fresh_ticket_is_good_whatever_the_servers_clock_says(tmp_path, skew):
    node, _ = node_at(tmp_path, local_now=T + 1 + skew, tracker_now=T + 1)
    node.open_servable("club", HASH, "fay", ticket(), "198.18.0.20:1")      # no exception


def test_without_tracker_time_a_clock_ten_minutes_ahead_refuses_fresh_tickets(tmp_path):
    node, _ = node_at(tmp_path, local_now=T + 600)                          # never told the time
    with pytest.raises(MbtError, match="ticket expired"):
        node.open_servable("club", HASH, "fay", ticket(), "198.18.0.20:1")


def test_a_stale_ticket_is_refused_by_a_server_whose_clock_is_behind(tmp_path):
    node, _ = node_at(tmp_path, local_now=T + 400 - 600, tracker_now=T + 400)   # we lag 10 min
    with pytest.raises(MbtError, match="ticket expired"):
        node.open_servable("club", HASH, "fay", ticket(), "198.18.0.20:1")


def test_a_wildly_wrong_clock_is_told_once(tmp_path):
    node, notices = node_at(tmp_path, local_now=T + 3 * 3600, tracker_now=T)
    assert len(notices) == 1 and "3h 0m ahead of the trackers' time" in notices[0]
    node._tracker_time(T + 3 * 3600 + 60, T + 3 * 3600 + 60.1, T + 60)     # the next ping
    assert len(notices) == 1
    node2, notices2 = node_at(tmp_path / "b", local_now=T + 59 * 60, tracker_now=T)
    assert notices2 == []


def test_the_proof_is_made_with_this_logins_key(tmp_path):
    node, _ = node_at(tmp_path, local_now=T, tracker_now=T)
    with pytest.raises(MbtError):
        node.prove("00" * 32, "club", HASH)
    node.session_key = new_session_key()
    from mbt.tickets import verify_proof
    verify_proof(public_key_hex(node.session_key), "00" * 32, "club", HASH, "sam",
                 node.prove("00" * 32, "club", HASH))


TOKEN = "tok-" + "z" * 28


def test_a_dial_push_makes_the_seeder_dial_the_downloader_and_open_with_callback(tmp_path):
    node, _ = node_at(tmp_path, local_now=T, tracker_now=T)
    node._tracker_push({"push": "dial", "via": "connect-back", "token": TOKEN, "group": "club",
                        "file_hash": HASH, "address": "198.18.0.20:7000"})
    host, port, factory, _timeout, _bind = node.reactor.tcpClients[0]
    assert (host, port) == ("198.18.0.20", 7000)
    proto = factory.buildProtocol(None)      # the endpoint's wrapper around ours
    assert isinstance(proto._wrappedProtocol, PeerServerProtocol)
    t = StringTransport()
    proto.makeConnection(t)
    assert t.value() == b"CALLBACK " + TOKEN.encode() + b"\n"


def test_a_relay_push_makes_the_seeder_dial_the_relay_as_the_serving_side(tmp_path):
    node, _ = node_at(tmp_path, local_now=T, tracker_now=T)
    node._tracker_push({"push": "dial", "via": "relay", "token": TOKEN, "group": "club",
                        "file_hash": HASH, "relay": "198.18.0.11:7400"})
    host, port, factory, _timeout, _bind = node.reactor.tcpClients[0]
    assert (host, port) == ("198.18.0.11", 7400)
    t = StringTransport()
    factory.buildProtocol(None).makeConnection(t)
    assert t.value() == b"RELAY " + TOKEN.encode() + b" serve\n"


@pytest.mark.parametrize("push", [
    {"push": "dial", "via": "connect-back", "token": TOKEN, "group": "club", "file_hash": "e" * 64,
     "address": "198.18.0.20:7000"},                                       # a file we do not share
    {"push": "dial", "via": "connect-back", "token": "short", "group": "club", "file_hash": HASH,
     "address": "198.18.0.20:7000"},
    {"push": "dial", "via": "carrier pigeon", "token": TOKEN, "group": "club", "file_hash": HASH},
    {"push": "dial", "via": "relay", "token": TOKEN, "group": "club", "file_hash": HASH, "relay": "nowhere"},
    {"push": "other"},
])
def test_odd_dial_pushes_dial_nobody(tmp_path, push):
    node, _ = node_at(tmp_path, local_now=T, tracker_now=T)
    node._tracker_push(push)
    assert node.reactor.tcpClients == []


def test_a_logged_out_peer_ignores_dial_pushes(tmp_path):
    node, _ = node_at(tmp_path, local_now=T, tracker_now=T)
    node.user = None
    node._tracker_push({"push": "dial", "via": "connect-back", "token": TOKEN, "group": "club",
                        "file_hash": HASH, "address": "198.18.0.20:7000"})
    assert node.reactor.tcpClients == []


class Inner:
    def __init__(self):
        self.events = []

    def makeConnection(self, transport):
        self.events.append("made")

    def dataReceived(self, data):
        self.events.append(data)

    def connectionLost(self, reason):
        self.events.append("lost")


def test_the_relay_handshake_hands_over_after_ok():
    clock, inner, failures = task.Clock(), Inner(), []
    h = RelayHandshake(TOKEN, "fetch", inner, clock, failed=failures.append)
    t = StringTransport()
    h.makeConnection(t)
    assert t.value() == b"RELAY " + TOKEN.encode() + b" fetch\n"
    h.dataReceived(b"O")
    h.dataReceived(b"K\nCHALLENGE 00\n")
    h.dataReceived(b"BITFIELD 1 80\n")
    assert inner.events == ["made", b"CHALLENGE 00\n", b"BITFIELD 1 80\n"]
    h.connectionLost(None)
    assert inner.events[-1] == "lost" and failures == []
    clock.advance(WAIT_FOR_PARTNER)
    assert failures == []


@pytest.mark.parametrize("reply,reason", [(b"ERROR relay full\n", "relay: relay full"),
                                          (b"HTTP/1.1 400\n", "relay: unexpected 'HTTP/1.1 400'"),
                                          (b"x" * 300, "the relay sent garbage")])
def test_a_refusing_relay_is_reported_once(reply, reason):
    clock, inner, failures = task.Clock(), Inner(), []
    h = RelayHandshake(TOKEN, "serve", inner, clock, failed=failures.append)
    t = StringTransport()
    h.makeConnection(t)
    h.dataReceived(reply)
    h.connectionLost(None)
    assert failures == [reason] and t.disconnecting and inner.events == []


def test_no_partner_at_the_relay_gives_up():
    clock, inner, failures = task.Clock(), Inner(), []
    h = RelayHandshake(TOKEN, "serve", inner, clock, failed=failures.append)
    h.makeConnection(StringTransport())
    clock.advance(WAIT_FOR_PARTNER)
    h.connectionLost(None)
    assert failures == ["no partner at the relay in time"]


def test_show_downloads_says_how_peers_are_reached():
    from mbt.peer.commands import download_line
    from mbt.peer.download import DownloadProgress
    p = DownloadProgress("D", "club", "f.bin", "/d/f.bin", "", 42.0, 0.0, 2, True, "", "connect-back 1, relay 1")
    assert download_line(p).startswith("[D] [club] f.bin  42% ") and "2 peers (connect-back 1, relay 1)" in download_line(p)
    direct = DownloadProgress("D", "club", "f.bin", "/d/f.bin", "", 42.0, 0.0, 2, True, "")
    assert "(" not in download_line(direct)
