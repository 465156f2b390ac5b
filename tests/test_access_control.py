"""Only members the tracker vouches for get piece bytes from a peer.

A raw client speaks the peer wire to a real sharing peer with every kind of
bad ticket; each HELLO is refused with a reason and no PIECE is ever sent.
"""

import socket
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from mbt.tickets import make_ticket, signing_key_from_secret
from tests.cluster import Cluster, make_file


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(c.stop())


def wire(address, lines, read_for=1.0):
    """Blocking: send lines to a peer, return everything it answers."""
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        s.sendall(b"".join(line + b"\n" for line in lines))
        s.settimeout(0.2)
        data = b""
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
        return data
    finally:
        s.close()


@pytest_twisted.inlineCallbacks
def setup(cluster, tmp_path):
    yield cluster.start_tracker()
    owner = yield cluster.user("owner")
    member = yield cluster.user("member")
    outsider = yield cluster.user("outsider")
    yield cluster.group("club", owner, member)
    yield outsider.create_group("other")
    make_file(tmp_path / "f.bin", 600000)
    yield owner.upload_file("f.bin", "club")
    file_hash = owner.store.shares[("club", "f.bin")].manifest["file_hash"]
    return owner, member, outsider, file_hash


def hello(group, file_hash, user, ticket=None):
    line = "HELLO mbt/1 %s %s %s" % (group, file_hash, user)
    return (line + (" " + ticket if ticket else "")).encode()


@pytest_twisted.inlineCallbacks
def test_member_with_ticket_is_served(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    ticket = yield member.get_ticket("club", h)
    out = yield threads.deferToThread(wire, owner.address, [hello("club", h, "member", ticket),
                                                             b"REQUEST 0 0 1000"])
    assert out.startswith(b"BITFIELD ")
    assert b"PIECE 0 0 1000\n" in out


@pytest_twisted.inlineCallbacks
def test_non_member_gets_no_ticket_and_no_bytes(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    with pytest.raises(Exception, match="not a member"):
        yield outsider.get_ticket("club", h)
    out = yield threads.deferToThread(wire, owner.address, [hello("club", h, "outsider"), b"REQUEST 0 0 1000"])
    assert out.startswith(b"ERROR a ticket from the tracker is required")
    assert b"PIECE" not in out


@pytest_twisted.inlineCallbacks
def test_forged_expired_and_misdirected_tickets_are_refused(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    good = yield member.get_ticket("club", h)
    key = cluster.tracker.core.signing_key          # the trackers' real signing key
    now = time.time()

    def signed(user="member", group="club", file_hash=h, address=member.address, at=now, with_key=key):
        return make_ticket(with_key, user, group, file_hash, address, at)[0]

    payload, signature = good.split(".")
    tampered = payload[:-2] + ("AA" if not payload.endswith("AA") else "BB") + "." + signature
    cases = [
        (hello("club", h, "member", signed(with_key=signing_key_from_secret(b"a guessed secret"))),
         b"ERROR ticket signature does not verify"),
        (hello("club", h, "member", tampered), b"ERROR ticket signature does not verify"),
        (hello("club", h, "member", "garbage"), b"ERROR malformed ticket"),
        (hello("club", h, "member", signed(at=now - 1000)), b"ERROR ticket expired"),
        (hello("club", h, "member", signed(file_hash="0" * 64)), b"ERROR ticket is for another file or group"),
        (hello("club", h, "member", signed(group="other")), b"ERROR ticket is for another file or group"),
        (hello("club", h, "outsider", good), b"ERROR ticket is for another user"),
        (hello("club", h, "member", signed(address="127.0.0.2:7000")),
         b"ERROR ticket was issued to another address"),
        (hello("other", h, "member", good), b"ERROR no such file shared here"),
    ]
    for line, expected in cases:
        out = yield threads.deferToThread(wire, owner.address, [line, b"REQUEST 0 0 1000"])
        assert out.startswith(expected), (expected, out[:120])
        assert b"PIECE" not in out


@pytest_twisted.inlineCallbacks
def test_logged_out_peer_serves_nobody(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    ticket = yield member.get_ticket("club", h)
    yield owner.logout()
    out = yield threads.deferToThread(wire, owner.address, [hello("club", h, "member", ticket)])
    assert out.startswith(b"ERROR this peer is not sharing right now")
