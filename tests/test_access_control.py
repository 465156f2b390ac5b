"""Only members the tracker vouches for get piece bytes from a peer.

A raw client speaks the peer wire to a real sharing peer with every kind of
bad ticket; each HELLO is refused with a reason and no PIECE is ever sent.
"""

import socket
import time

import pytest
import pytest_twisted
from twisted.internet import threads

from mbt.tickets import (make_key_ticket, make_ticket, new_session_key, public_key_hex, sign_challenge,
                         signing_key_from_secret)
from tests.cluster import Cluster, make_file


@pytest.fixture
def cluster(tmp_path, store_url):
    """A tracker over each store in turn (SQLite, then PostgreSQL) and its peers."""
    c = Cluster(tmp_path, store_url)
    yield c
    pytest_twisted.blockon(c.stop())


def wire(address, lines, read_for=1.0, key=None):
    """Blocking: send lines to a peer, return everything it answers.

    With ``key``, the first line is a HELLO whose CHALLENGE is answered with
    ``key``'s PROOF before the other lines are sent (the CHALLENGE itself is
    not part of the answer returned).
    """
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    try:
        if key is not None:
            s.sendall(lines[0] + b"\n")
            first = b""
            while not first.endswith(b"\n"):
                chunk = s.recv(1)
                if not chunk:
                    break
                first += chunk
            if first.startswith(b"CHALLENGE "):
                _, group, file_hash, user = lines[0].split(b" ")[1:5]
                proof = sign_challenge(key, first.split()[1].decode(), group.decode(), file_hash.decode(),
                                       user.decode())
                lines = [b"PROOF " + proof.encode()] + list(lines[1:])
            else:
                lines = list(lines[1:])
            prefix = first if not first.startswith(b"CHALLENGE ") else b""
        else:
            prefix = b""
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
        return prefix + data
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
    line = "HELLO mbt/2 %s %s %s" % (group, file_hash, user)
    return (line + (" " + ticket if ticket else "")).encode()


@pytest_twisted.inlineCallbacks
def test_member_with_ticket_is_served(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    ticket = yield member.get_ticket("club", h)
    out = yield threads.deferToThread(wire, owner.address, [hello("club", h, "member", ticket),
                                                             b"REQUEST 0 0 1000"], key=member.session_key)
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

    holder = public_key_hex(member.session_key)

    def signed(user="member", group="club", file_hash=h, for_key=holder, at=now, with_key=key):
        return make_key_ticket(with_key, user, group, file_hash, for_key, at)[0]

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
        # Someone else's ticket, replayed by the member: the member cannot sign for its key.
        (hello("club", h, "member", signed(for_key=public_key_hex(new_session_key()))),
         b"ERROR proof does not verify"),
        # An mbt/1 ticket naming an address: no use to an mbt/2 server.
        (hello("club", h, "member", make_ticket(key, "member", "club", h, member.address, now)[0]),
         b"ERROR ticket is not bound to a key"),
        (hello("other", h, "member", good), b"ERROR no such file shared here"),
    ]
    for line, expected in cases:
        out = yield threads.deferToThread(wire, owner.address, [line, b"REQUEST 0 0 1000"],
                                          key=member.session_key)
        assert out.startswith(expected), (expected, out[:120])
        assert b"PIECE" not in out


@pytest_twisted.inlineCallbacks
def test_logged_out_peer_serves_nobody(cluster, tmp_path):
    owner, member, outsider, h = yield setup(cluster, tmp_path)
    ticket = yield member.get_ticket("club", h)
    yield owner.logout()
    out = yield threads.deferToThread(wire, owner.address, [hello("club", h, "member", ticket)])
    assert out.startswith(b"ERROR this peer is not sharing right now")
