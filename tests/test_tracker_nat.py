"""Tracker side of peers behind NAT: session keys, key-bound tickets, tracker time,
reachability and connect_peer (connect-back / relay), over fake transports."""


import pytest
from twisted.internet import defer, task

from mbt import passwords
from mbt.errors import ConfigError
from mbt.protocols.tracker import TrackerServerFactory
from mbt.tickets import new_session_key, public_key_hex, verify_ticket
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore
from mbt.trackerinfo import parse_relays, parse_tracker_info
from tests.test_tracker_protocol import Conn, manifest, sync_thread


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    real = passwords.make_record
    monkeypatch.setattr(passwords, "make_record", lambda pw, n=2 ** 4, r=8, p=1: real(pw, n, r, p))
    monkeypatch.setattr(passwords, "_DUMMY_RECORD", None)


class Lab:
    def __init__(self, relays=(), reachable=()):
        self.clock = task.Clock()
        self.clock.advance(1_800_000_000)
        self.probed = []

        def probe(address):
            self.probed.append(address)
            return defer.succeed(address in reachable)
        self.core = TrackerCore(TrackerState(), MemoryStore(), run_in_thread=sync_thread, clock=self.clock,
                                relays=list(relays), probe=probe)
        self.factory = TrackerServerFactory(self.core)
        self.port = 41000

    def user(self, name, address, key=True):
        self.port += 1
        c = Conn(self.factory, self.port)
        c.call("create_user", user=name, password="pw")
        c.key = new_session_key() if key else None
        args = dict(user=name, password="pw", address=address)
        if key:
            args["session_key"] = public_key_hex(c.key)
        c.login = c.call("login", **args)
        return c


def club(lab, seeder_addr="100.64.1.2:7000", fetcher_addr="198.18.0.20:7000", fetcher_key=True):
    s = lab.user("sam", seeder_addr)
    f = lab.user("fay", fetcher_addr, key=fetcher_key)
    s.call("create_group", group="club")
    f.call("join_group", group="club")
    s.call("accept_request", group="club", user="fay")
    s.call("share_file", group="club", manifest=manifest())
    return s, f


def test_login_takes_a_session_key_and_answers_the_trackers_time():
    lab = Lab()
    c = lab.user("sam", "100.64.1.2:7000")
    assert c.login["time"] == 1_800_000_000
    lab.clock.advance(5)
    assert c.call("ping", time=True) == {"time": 1_800_000_005}
    assert c.call("ping") == {}


def test_a_malformed_session_key_is_refused_at_login():
    lab = Lab()
    c = Conn(lab.factory, 42000)
    c.call("create_user", user="sam", password="pw")
    for bad in ("zz" * 32, "ab", 5, "AB" * 32):
        c.error("invalid_argument", "login", user="sam", password="pw", address="1.2.3.4:5", session_key=bad)


def test_a_ticket_names_the_sessions_key_not_its_address():
    lab = Lab()
    s, f = club(lab)
    r = f.call("get_ticket", group="club", file_hash="a" * 64)
    payload = verify_ticket(r["ticket"], s.call("ticket_key")["public_key"], lab.clock.seconds())
    assert payload["k"] == public_key_hex(f.key) and "a" not in payload
    assert payload["exp"] == 1_800_000_300 == r["expires"]


def test_a_session_without_a_key_gets_an_address_bound_ticket():
    lab = Lab()
    s, f = club(lab, fetcher_key=False)
    r = f.call("get_ticket", group="club", file_hash="a" * 64)
    payload = verify_ticket(r["ticket"], s.call("ticket_key")["public_key"], lab.clock.seconds())
    assert payload["a"] == "198.18.0.20:7000" and "k" not in payload


def test_the_tracker_dials_each_announced_address_and_get_peers_says_what_it_found():
    lab = Lab(reachable={"198.18.0.20:7000"})
    s, f = club(lab)
    assert lab.probed == ["100.64.1.2:7000", "198.18.0.20:7000"]
    peers = f.call("get_peers", group="club", name="song.bin")["peers"]
    assert peers == [{"user": "sam", "address": "100.64.1.2:7000", "peer": s.proto.conn.session_id,
                      "reachable": False}]


def test_connect_back_tells_the_seeder_to_dial_a_reachable_downloader():
    lab = Lab(reachable={"198.18.0.20:7000"}, relays=["198.18.0.11:7400"])
    s, f = club(lab)
    s.replies()
    peer = f.call("get_peers", group="club", name="song.bin")["peers"][0]["peer"]
    r = f.call("connect_peer", group="club", file_hash="a" * 64, peer=peer)
    assert r["via"] == "connect-back" and len(r["token"]) >= 24
    assert s.replies() == [{"push": "dial", "via": "connect-back", "token": r["token"], "group": "club",
                            "file_hash": "a" * 64, "address": "198.18.0.20:7000"}]


def test_when_neither_side_accepts_both_meet_at_a_relay():
    lab = Lab(relays=["198.18.0.11:7400"])
    s, f = club(lab, fetcher_addr="100.64.2.2:7000")
    s.replies()
    peer = f.call("get_peers", group="club", name="song.bin")["peers"][0]["peer"]
    r = f.call("connect_peer", group="club", file_hash="a" * 64, peer=peer)
    assert r == {"via": "relay", "relay": "198.18.0.11:7400", "token": r["token"]}
    assert s.replies() == [{"push": "dial", "via": "relay", "relay": "198.18.0.11:7400", "token": r["token"],
                            "group": "club", "file_hash": "a" * 64}]


def test_without_a_relay_an_unreachable_pair_is_a_clear_error():
    lab = Lab()
    s, f = club(lab, fetcher_addr="100.64.2.2:7000")
    peer = f.call("get_peers", group="club", name="song.bin")["peers"][0]["peer"]
    e = f.error("unreachable", "connect_peer", group="club", file_hash="a" * 64, peer=peer)
    assert "no relay" in e.message


def test_connect_peer_checks_membership_and_the_target():
    lab = Lab(reachable={"198.18.0.20:7000"})
    s, f = club(lab)
    f.error("no_such_peer", "connect_peer", group="club", file_hash="a" * 64, peer="nope")
    f.error("no_such_peer", "connect_peer", group="club", file_hash="a" * 64, peer=None)
    outsider = lab.user("oz", "198.18.0.21:7000")
    peer = f.call("get_peers", group="club", name="song.bin")["peers"][0]["peer"]
    outsider.error("not_member", "connect_peer", group="club", file_hash="a" * 64, peer=peer)
    s.lose()
    f.error("no_such_peer", "connect_peer", group="club", file_hash="a" * 64, peer=peer)


def test_relay_lines_in_tracker_info():
    text = "# trackers\n198.18.0.10:7300\nrelay 198.18.0.11:7400\nrelay 198.18.0.12 7401\n198.18.0.13 7300\n"
    assert [str(t) for t in parse_tracker_info(text)] == ["198.18.0.10:7300", "198.18.0.13:7300"]
    assert parse_relays(text) == ["198.18.0.11:7400", "198.18.0.12:7401"]
    with pytest.raises(ConfigError, match="line 1: relay"):
        parse_relays("relay nowhere\n")
