"""The tracker's JSON-lines channel, server and client, over fake transports.

No sockets and no sleeps: the server side runs on ``StringTransport`` with a
TrackerCore whose "thread" is synchronous (or a Deferred the test fires), and
client + server run together over ``iosim`` pumps.
"""

import json

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim

from mbt import passwords
from mbt.errors import MbtError, TrackerUnavailable
from mbt.manifest import PIECE_SIZE, piece_count
from mbt.protocols.tracker import MAX_IN_FLIGHT, MAX_LINE, TrackerClientProtocol, TrackerServerFactory
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore


def who(peers):
    """get_peers entries without the session handle and reachability (tested in test_nat_unit)."""
    return [{"user": p["user"], "address": p["address"]} for p in peers]


def sync_thread(f, *a, **k):
    return defer.maybeDeferred(f, *a, **k)


class ManualThread:
    """A ``run_in_thread`` whose results the test releases by hand."""

    def __init__(self):
        self.calls = []

    def __call__(self, f, *a, **k):
        d = defer.Deferred()
        self.calls.append((d, f, a, k))
        return d

    def finish(self, index=0):
        d, f, a, k = self.calls.pop(index)
        d.callback(f(*a, **k))


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    """scrypt with n=16: the same code path, microseconds instead of ~50 ms."""
    real = passwords.make_record

    def make_record(password, n=2 ** 4, r=8, p=1):
        return real(password, n, r, p)
    monkeypatch.setattr(passwords, "make_record", make_record)
    monkeypatch.setattr(passwords, "_DUMMY_RECORD", None)


def manifest(name="song.bin", size=PIECE_SIZE + 1, h="a"):
    return {"name": name, "size": size, "piece_size": PIECE_SIZE, "file_hash": h * 64,
            "piece_hashes": [h * 64] * piece_count(size)}


class Conn:
    """One server protocol on a StringTransport, with helpers to talk to it."""

    def __init__(self, factory, port):
        addr = IPv4Address("TCP", "127.0.0.1", port)
        self.proto = factory.buildProtocol(addr)
        self.transport = StringTransport(peerAddress=addr)
        self.proto.makeConnection(self.transport)
        self._ids = iter(range(1, 10 ** 6))
        self.events = []        # unsolicited event lines, kept apart from replies

    def send_raw(self, data: bytes) -> list:
        self.proto.dataReceived(data)
        return self.replies()

    def replies(self) -> list:
        out = self.transport.value()
        self.transport.clear()
        assert out == b"" or out.endswith(b"\n")
        return [json.loads(line) for line in out.split(b"\n") if line]

    def call(self, op, **args):
        """One request; return the ``ok`` dict or raise MbtError like the client does."""
        req_id = next(self._ids)
        replies = self.send_raw(json.dumps(dict(args, id=req_id, op=op)).encode() + b"\n")
        self.events.extend(r for r in replies if "push" in r and "id" not in r)
        replies = [r for r in replies if not ("push" in r and "id" not in r)]
        assert len(replies) == 1, replies
        reply = replies[0]
        assert reply["id"] == req_id
        if "ok" in reply:
            return reply["ok"]
        raise MbtError(reply["error"]["message"], reply["error"]["code"])

    def error(self, code, op, **args):
        with pytest.raises(MbtError) as e:
            self.call(op, **args)
        assert e.value.code == code, (e.value.code, e.value.message)
        return e.value

    def lose(self):
        self.transport.loseConnection()
        self.proto.connectionLost(None)


class Tracker:
    def __init__(self, run_in_thread=sync_thread):
        self.state = TrackerState()
        self.store = MemoryStore()
        self.core = TrackerCore(self.state, self.store, run_in_thread=run_in_thread)
        self.factory = TrackerServerFactory(self.core)
        self._port = 40000

    def connect(self) -> Conn:
        self._port += 1
        return Conn(self.factory, self._port)

    def user(self, name, password="pw", address=None):
        """A connection logged in as a fresh user ``name``."""
        c = self.connect()
        c.call("create_user", user=name, password=password)
        c.call("login", user=name, password=password, address=address or "10.0.0.%d:7000" % (len(name)))
        return c


@pytest.fixture
def tracker():
    return Tracker()


# -- framing ---------------------------------------------------------------------

def test_pipelined_requests_are_answered_with_matching_ids(tracker):
    c = tracker.connect()
    reqs = [{"id": 1, "op": "create_user", "user": "alice", "password": "pw"},
            {"id": "two", "op": "login", "user": "alice", "password": "pw", "address": "10.0.0.1:7000"},
            {"id": 3, "op": "create_group", "group": "club"},
            {"id": 4, "op": "create_group", "group": "club"},
            {"id": 5, "op": "list_groups"},
            {"id": 6, "op": "ping"}]
    replies = c.send_raw(b"".join(json.dumps(r).encode() + b"\n" for r in reqs))
    assert [r["id"] for r in replies] == [1, "two", 3, 4, 5, 6]
    assert replies[0]["ok"] == {"user": "alice"}
    assert replies[1]["ok"]["user"] == "alice" and replies[1]["ok"]["token"]
    assert replies[2]["ok"] == {"group": "club", "owner": "alice"}
    assert replies[3]["error"]["code"] == "group_exists"
    assert replies[4]["ok"] == {"groups": [{"group": "club", "owner": "alice", "members": 1, "role": "owner"}]}
    assert replies[5] == {"id": 6, "ok": {}}


def test_slow_requests_do_not_hold_up_later_ones(tracker):
    thread = ManualThread()
    t = Tracker(run_in_thread=thread)
    c = t.connect()
    replies = c.send_raw(b'{"id": 1, "op": "create_user", "user": "alice", "password": "pw"}\n'
                         b'{"id": 2, "op": "ping"}\n')
    assert replies == [{"id": 2, "ok": {}}]          # the ping overtook the hashing
    thread.finish()
    assert c.replies() == [{"id": 1, "ok": {"user": "alice"}}]


def test_a_request_split_across_packets_and_crlf_endings_work(tracker):
    c = tracker.connect()
    assert c.send_raw(b'{"id": 1, "o') == []
    assert c.send_raw(b'p": "ping"}\r\n\n   \n') == [{"id": 1, "ok": {}}]


def test_oversized_line_answers_line_too_long_and_drops_the_connection(tracker):
    c = tracker.user("padder")          # logged in: the full MAX_LINE applies
    big = b'{"id": 1, "op": "ping", "pad": "' + b"x" * MAX_LINE + b'"}\n'
    replies = c.send_raw(big + b'{"id": 2, "op": "ping"}\n')
    assert [r["error"]["code"] for r in replies] == ["line_too_long"]
    assert replies[0]["id"] is None
    assert c.transport.disconnecting


def test_oversized_line_without_newline_is_caught_too(tracker):
    c = tracker.user("padder")
    chunk = b"x" * (MAX_LINE // 4)
    for _ in range(4):
        assert c.send_raw(chunk) == []
    assert not c.transport.disconnecting
    replies = c.send_raw(b"x")
    assert replies[0]["error"]["code"] == "line_too_long"
    assert c.transport.disconnecting


def test_a_line_of_exactly_max_length_is_accepted(tracker):
    c = tracker.user("padder")
    head = b'{"id": 1, "op": "ping", "pad": "'
    line = head + b"x" * (MAX_LINE - len(head) - 2) + b'"}'
    assert len(line) == MAX_LINE
    assert c.send_raw(line + b"\n") == [{"id": 1, "ok": {}}]


def test_before_login_lines_are_limited_to_anon_max_line(tracker):
    from mbt.protocols.tracker import ANON_MAX_LINE
    c = tracker.connect()
    replies = c.send_raw(b"x" * (ANON_MAX_LINE + 1))
    assert replies[0]["error"]["code"] == "line_too_long"
    assert c.transport.disconnecting


def test_silent_and_idle_connections_are_closed(tracker):
    from twisted.internet import task
    from mbt.protocols.tracker import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT
    clock = task.Clock()
    tracker.core.clock = clock
    silent = tracker.connect()
    talker = tracker.connect()
    clock.advance(HANDSHAKE_TIMEOUT - 1)
    assert talker.send_raw(b'{"id": 1, "op": "ping"}\n') == [{"id": 1, "ok": {}}]
    clock.advance(2)
    assert silent.transport.disconnecting and not talker.transport.disconnecting
    clock.advance(IDLE_TIMEOUT - 5)
    assert not talker.transport.disconnecting
    clock.advance(10)
    assert talker.transport.disconnecting


def test_a_closed_connection_leaves_no_timer_behind(tracker):
    from twisted.internet import task
    clock = task.Clock()
    tracker.core.clock = clock
    c = tracker.connect()
    assert c.send_raw(b'{"id": 1, "op": "ping"}\n') == [{"id": 1, "ok": {}}]
    assert len(clock.getDelayedCalls()) == 1        # the idle timeout
    c.lose()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("line, code", [
    (b"\xff\xfe\x00\x01garbage", "bad_json"),
    (b"\x00\x00\x00\x00", "bad_json"),
    (b"{not json}", "bad_json"),
    (b'{"id": 1, "op": "ping"', "bad_json"),
    (b"[" * 100000, "bad_json"),                         # nesting deeper than the parser's stack
    (b'{"id": 1, "a": ' + b'{"a": ' * 50000 + b"1" + b"}" * 50001, "bad_json"),  # well formed, too deep
    (b'{"id": ' + b"9" * 5000 + b"}", "bad_json"),        # an integer too long to convert
    (b"[1, 2]", "bad_request"),
    (b'"ping"', "bad_request"),
    (b"42", "bad_request"),
    (b"null", "bad_request"),
    (b'{"op": "ping"}', "bad_request"),                  # no id
    (b'{"id": null, "op": "ping"}', "bad_request"),
    (b'{"id": true, "op": "ping"}', "bad_request"),
    (b'{"id": 1.5, "op": "ping"}', "bad_request"),
    (b'{"id": [1], "op": "ping"}', "bad_request"),
    (b'{"id": "' + b"x" * 65 + b'", "op": "ping"}', "bad_request"),
])
def test_malformed_requests_get_typed_errors_and_the_connection_stays_usable(tracker, line, code):
    c = tracker.user("garbler")
    replies = c.send_raw(line + b"\n")
    assert len(replies) == 1
    assert replies[0]["id"] is None
    assert replies[0]["error"]["code"] == code
    assert not c.transport.disconnecting
    assert c.send_raw(b'{"id": 9, "op": "ping"}\n') == [{"id": 9, "ok": {}}]


@pytest.mark.parametrize("req", [
    {"id": 1, "op": "frobnicate"},
    {"id": 1},
    {"id": 1, "op": None},
    {"id": 1, "op": ["ping"]},
    {"id": 1, "op": "_commit"},
    {"id": 1, "op": "__init__"},
])
def test_unknown_op_is_a_typed_error(tracker, req):
    c = tracker.connect()
    replies = c.send_raw(json.dumps(req).encode() + b"\n")
    assert replies[0]["id"] == 1
    assert replies[0]["error"]["code"] == "unknown_op"
    assert c.call("ping") == {}


def test_string_ids_are_echoed(tracker):
    c = tracker.connect()
    assert c.send_raw(b'{"id": "abc-1", "op": "ping"}\n') == [{"id": "abc-1", "ok": {}}]


def test_any_string_id_is_echoed_even_lone_surrogates(tracker):
    c = tracker.connect()
    name = "\u00fc-\u6f22"
    assert c.send_raw(('{"id": "%s", "op": "ping"}\n' % name).encode()) == [{"id": name, "ok": {}}]
    assert c.send_raw(b'{"id": "\\ud800", "op": "ping"}\n') == [{"id": "\ud800", "ok": {}}]
    replies = c.send_raw(b'{"id": "\\udfff", "op": "nope"}\n')
    assert replies[0]["id"] == "\udfff" and replies[0]["error"]["code"] == "unknown_op"


def test_a_request_is_logged_as_one_line_whatever_its_op(tracker):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        c = tracker.connect()
        c.send_raw(json.dumps({"id": 1, "op": "ping\n2030-01-01 [mbt] forged line"}).encode() + b"\n")
        c.send_raw(json.dumps({"id": 2, "op": "x" * 100000}).encode() + b"\n")
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if e.get("log_namespace") == "mbt.tracker.protocol"]
    assert len(lines) == 2
    assert all("\n" not in line and len(line) < 300 for line in lines), lines


# -- sessions and authentication -------------------------------------------------------

LOGIN_OPS = ["logout", "create_group", "list_groups", "join_group", "leave_group", "list_requests",
             "accept_request", "reject_request", "list_files", "share_file", "stop_share", "get_peers",
             "ticket_key", "get_ticket", "connect_peer"]


@pytest.mark.parametrize("op", LOGIN_OPS)
def test_ops_before_login_are_not_logged_in(tracker, op):
    c = tracker.connect()
    e = c.error("not_logged_in", op, group="club", user="x", name="a", manifest=manifest())
    assert "login" in e.message
    assert list(tracker.store.load()) == []


def test_every_tracker_operation_is_known():
    core = TrackerCore(TrackerState(), MemoryStore(), run_in_thread=sync_thread)
    assert core.operations == sorted(LOGIN_OPS + ["ping", "create_user", "login",
                                                  "state_digest", "tracker_status"])


def test_login_returns_a_token_and_twice_is_already_logged_in(tracker):
    c = tracker.connect()
    c.call("create_user", user="alice", password="pw")
    c.call("create_user", user="bob", password="pw")
    ok = c.call("login", user="alice", password="pw", address="10.0.0.1:7000")
    assert ok["user"] == "alice" and len(ok["token"]) >= 16
    c.error("already_logged_in", "login", user="alice", password="pw", address="10.0.0.1:7000")
    c.error("already_logged_in", "login", user="bob", password="pw", address="10.0.0.1:7000")
    assert c.call("list_groups") == {"groups": []}


def test_wrong_password_and_missing_user_give_the_same_error(tracker):
    c = tracker.connect()
    c.call("create_user", user="alice", password="right")
    wrong = c.error("bad_credentials", "login", user="alice", password="wrong", address="10.0.0.1:1")
    missing = c.error("bad_credentials", "login", user="nobody", password="wrong", address="10.0.0.1:1")
    assert wrong.message == missing.message
    c.error("not_logged_in", "list_groups")
    assert c.call("login", user="alice", password="right", address="10.0.0.1:1")["user"] == "alice"


def test_logout_ends_the_session_and_login_works_again(tracker):
    c = tracker.user("alice")
    assert c.call("logout") == {"user": "alice"}
    c.error("not_logged_in", "list_groups")
    c.error("not_logged_in", "logout")
    c.call("login", user="alice", password="pw", address="10.0.0.1:7000")
    assert c.call("list_groups") == {"groups": []}


def test_create_user_twice_is_user_exists(tracker):
    c = tracker.connect()
    c.call("create_user", user="alice", password="pw")
    c.error("user_exists", "create_user", user="alice", password="other")


@pytest.mark.parametrize("args", [
    {"user": "bad id", "password": "pw"},
    {"user": "", "password": "pw"},
    {"user": None, "password": "pw"},
    {"user": "alice"},
    {"user": "alice", "password": ""},
    {"user": "alice", "password": "has space"},
    {"user": "alice", "password": 1234},
    {"user": "alice", "password": "x" * 1025},
])
def test_create_user_rejects_bad_arguments(tracker, args):
    c = tracker.connect()
    c.error("invalid_argument", "create_user", **args)
    assert tracker.state.users == {}


@pytest.mark.parametrize("address", [None, "", "nonsense", "10.0.0.1", "10.0.0.1:0", "host.example:80", 7000])
def test_login_rejects_a_bad_peer_address(tracker, address):
    c = tracker.connect()
    c.call("create_user", user="alice", password="pw")
    c.error("invalid_argument", "login", user="alice", password="pw", address=address)


def test_passwords_are_stored_only_as_scrypt_records(tracker):
    c = tracker.connect()
    c.call("create_user", user="alice", password="s3cret-pw")
    (_seq, op), = tracker.store.load()
    assert op["op"] == "create_user" and "password" not in op
    assert op["password_record"].startswith("scrypt$")
    assert "s3cret-pw" not in json.dumps(op)


def test_logs_never_contain_passwords_or_tokens(tracker):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        c = tracker.connect()
        c.call("create_user", user="alice", password="s3cret-pw")
        token = c.call("login", user="alice", password="s3cret-pw", address="10.0.0.1:1")["token"]
        c.error("already_logged_in", "login", user="alice", password="s3cret-pw", address="10.0.0.1:1")
        d = tracker.connect()
        d.error("bad_credentials", "login", user="alice", password="wr0ng-pw", address="10.0.0.1:1")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert events, "every request is logged"
    text = repr(events)
    for secret in ("s3cret-pw", "wr0ng-pw", token):
        assert secret not in text


def test_internal_errors_are_typed_and_hide_details(tracker, monkeypatch):
    def boom(conn, req):
        raise RuntimeError("secret internals")
    monkeypatch.setitem(tracker.core._handlers, "ping", (boom, False))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        replies = tracker.connect().send_raw(b'{"id": 1, "op": "ping"}\n')
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert replies == [{"id": 1, "error": {"code": "internal", "message": "internal tracker error"}}]
    assert any(e.get("log_failure") is not None for e in events)


def test_too_many_requests_in_flight_is_busy():
    thread = ManualThread()
    t = Tracker(run_in_thread=thread)
    c = t.connect()
    data = b"".join(b'{"id": %d, "op": "create_user", "user": "u%d", "password": "pw"}\n' % (i, i)
                    for i in range(MAX_IN_FLIGHT + 1))
    replies = c.send_raw(data)
    assert replies == [{"id": MAX_IN_FLIGHT, "error": {
        "code": "busy", "message": "too many requests in flight on this connection"}}]
    while thread.calls:
        thread.finish()
    assert len(c.replies()) == MAX_IN_FLIGHT
    assert c.call("ping") == {}


# -- presence --------------------------------------------------------------------

@pytest.fixture
def club(tracker):
    """alice owns club and shares song.bin there; bob is a member."""
    alice = tracker.user("alice", address="10.0.0.1:7000")
    bob = tracker.user("bob", address="10.0.0.2:7000")
    alice.call("create_group", group="club")
    bob.call("join_group", group="club")
    assert alice.call("list_requests", group="club") == {"requests": ["bob"]}
    alice.call("accept_request", group="club", user="bob")
    alice.call("share_file", group="club", manifest=manifest())
    return alice, bob


def test_connection_lost_ends_the_session(tracker, club):
    alice, bob = club
    assert who(bob.call("get_peers", group="club", name="song.bin")["peers"]) == \
        [{"user": "alice", "address": "10.0.0.1:7000"}]
    assert bob.call("list_files", group="club")["files"][0]["peers"] == 1
    alice.lose()
    assert bob.call("get_peers", group="club", name="song.bin")["peers"] == []
    assert bob.call("list_files", group="club")["files"][0]["peers"] == 0
    assert tracker.factory.connections == {bob.proto}
    # The registration is durable: alice is back as a seeder when she re-announces.
    again = tracker.connect()
    again.call("login", user="alice", password="pw", address="10.0.0.1:7000")
    again.call("share_file", group="club", manifest=manifest())
    assert bob.call("list_files", group="club")["files"][0]["peers"] == 1


def test_get_peers_does_not_list_the_askers_own_session(club):
    alice, bob = club
    assert alice.call("get_peers", group="club", name="song.bin") == \
        {"manifest": manifest(), "peers": []}
    bob.call("share_file", group="club", manifest=manifest())
    assert who(alice.call("get_peers", group="club", name="song.bin")["peers"]) == \
        [{"user": "bob", "address": "10.0.0.2:7000"}]


def test_reannouncing_a_share_logs_no_new_operation(tracker, club):
    alice, _bob = club
    before = len(list(tracker.store.load()))
    alice.call("share_file", group="club", manifest=manifest())
    assert len(list(tracker.store.load())) == before
    alice.error("file_conflict", "share_file", group="club", manifest=manifest(h="b"))
    assert len(list(tracker.store.load())) == before


def test_logout_stops_seeding(club):
    alice, bob = club
    alice.call("logout")
    assert bob.call("list_files", group="club")["files"][0]["peers"] == 0


def test_state_errors_travel_as_typed_errors(tracker, club):
    alice, bob = club
    carol = tracker.user("carol")
    carol.error("not_member", "list_files", group="club")
    carol.error("not_member", "get_peers", group="club", name="song.bin")
    carol.error("not_member", "share_file", group="club", manifest=manifest())
    carol.call("join_group", group="club")
    carol.error("already_requested", "join_group", group="club")
    bob.error("not_owner", "list_requests", group="club")
    bob.error("not_owner", "accept_request", group="club", user="carol")
    alice.error("no_such_request", "reject_request", group="club", user="bob")
    alice.error("no_such_group", "list_files", group="nope")
    bob.error("not_sharing", "stop_share", group="club", name="song.bin")
    bob.error("no_such_file", "get_peers", group="club", name="nope.bin")
    bob.error("invalid_argument", "share_file", group="club", manifest={"name": "../x"})
    bob.error("invalid_argument", "share_file", group="bad id", manifest=manifest())
    bob.error("invalid_argument", "stop_share", group="club", name="a/b")
    alice.call("reject_request", group="club", user="carol")
    assert alice.call("leave_group", group="club") == {"group": "club", "deleted": False, "owner": "bob",
                                                           "was_owner": True}


def test_login_finishing_after_the_connection_dropped_leaves_no_session(club):
    """The password check runs in a thread; the peer may hang up meanwhile."""
    thread = ManualThread()
    t = Tracker(run_in_thread=thread)
    c = t.connect()
    c.send_raw(b'{"id": 1, "op": "create_user", "user": "alice", "password": "pw"}\n')
    thread.finish()
    c.send_raw(b'{"id": 2, "op": "login", "user": "alice", "password": "pw", "address": "10.0.0.1:7000"}\n')
    c.lose()
    thread.finish()                 # the hash check completes after the hang-up
    assert t.state.sessions == {}


# -- client and server together ----------------------------------------------------

def connected(tracker):
    client, server, pump = iosim.connectedServerAndClient(
        lambda: tracker.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)),
        TrackerClientProtocol)
    return client, server, pump


def result_of(d, pump):
    pump.flush()
    out = []
    d.addBoth(out.append)
    assert out, "request did not complete"
    return out[0]


def test_client_requests_resolve_with_ok_dicts(tracker):
    client, _server, pump = connected(tracker)
    d1 = client.request("create_user", user="alice", password="pw")
    d2 = client.request("login", user="alice", password="pw", address="10.0.0.1:7000")
    d3 = client.request("create_group", group="club")
    assert result_of(d1, pump) == {"user": "alice"}
    assert result_of(d2, pump)["user"] == "alice"
    assert result_of(d3, pump) == {"group": "club", "owner": "alice"}
    assert result_of(client.request("list_groups"), pump) == \
        {"groups": [{"group": "club", "owner": "alice", "members": 1, "role": "owner"}]}


def test_membership_events_reach_the_logged_in_user_unasked(tracker):
    # Issue #12 item 12: no word when an owner accepted, rejected or handed on a group.
    alice, _s1, pump_a = connected(tracker)
    bob, _s2, pump_b = connected(tracker)
    got_a, got_b = [], []
    alice.on_push, bob.on_push = got_a.append, got_b.append
    for client, pump, name in ((alice, pump_a, "alice"), (bob, pump_b, "bob")):
        result_of(client.request("create_user", user=name, password="pw"), pump)
        result_of(client.request("login", user=name, password="pw", address="10.0.0.1:700%d" % len(name)), pump)
    result_of(alice.request("create_group", group="club"), pump_a)
    result_of(alice.request("create_group", group="den"), pump_a)
    result_of(bob.request("join_group", group="club"), pump_b)
    result_of(bob.request("join_group", group="den"), pump_b)
    pump_a.flush()
    assert got_a == [{"push": "membership", "kind": "requested", "group": "club", "user": "bob"},
                     {"push": "membership", "kind": "requested", "group": "den", "user": "bob"}]
    assert [g["role"] for g in result_of(bob.request("list_groups"), pump_b)["groups"]] == ["pending", "pending"]
    result_of(alice.request("accept_request", group="club", user="bob"), pump_a)
    result_of(alice.request("reject_request", group="den", user="bob"), pump_a)
    pump_b.flush()
    assert got_b == [{"push": "membership", "kind": "accepted", "group": "club", "by": "alice"},
                     {"push": "membership", "kind": "rejected", "group": "den", "by": "alice"}]
    result_of(alice.request("leave_group", group="club"), pump_a)
    pump_b.flush()
    assert got_b[-1] == {"push": "membership", "kind": "owner", "group": "club", "by": "alice"}
    assert [(g["group"], g["role"]) for g in result_of(bob.request("list_groups"), pump_b)["groups"]] == \
        [("club", "owner"), ("den", "")]
    # Events never resolve a pending request, and a client without a handler ignores them.
    bob.on_push = None
    d = bob.request("ping")
    result_of(alice.request("join_group", group="club"), pump_a)
    assert result_of(d, pump_b) == {}


def test_client_errors_are_mbt_errors_with_the_code(tracker):
    client, _server, pump = connected(tracker)
    f = result_of(client.request("list_groups"), pump)
    assert f.check(MbtError)
    assert f.value.code == "not_logged_in"
    assert f.value.console_line() == "error: not logged in; use login <user_id> <passwd>"
    f = result_of(client.request("no_such_thing"), pump)
    assert f.value.code == "unknown_op"
    # The connection stays usable after errors.
    assert result_of(client.request("ping"), pump) == {}


def test_connection_loss_fails_pending_requests_with_tracker_unavailable():
    thread = ManualThread()
    t = Tracker(run_in_thread=thread)
    client, _server, pump = connected(t)
    d = client.request("create_user", user="alice", password="pw")
    pump.flush()
    assert not d.called and thread.calls          # the server is hashing
    client.transport.loseConnection()
    pump.flush()
    f = result_of(d, pump)
    assert f.check(TrackerUnavailable)
    assert f.value.code == "tracker_unavailable"
    # A request on the dead connection fails at once instead of hanging.
    f = result_of(client.request("ping"), pump)
    assert f.check(TrackerUnavailable)
    thread.finish()                                 # the late result goes nowhere
    assert t.factory.connections == set()


def test_server_dropping_the_connection_fails_pending_requests(tracker):
    client, server, pump = connected(tracker)
    d = client.request("ping")
    tracker.factory.disconnect_all()
    pump.flush()
    assert result_of(d, pump).check(TrackerUnavailable)


def test_cancelled_request_ignores_its_late_reply():
    thread = ManualThread()
    t = Tracker(run_in_thread=thread)
    client, _server, pump = connected(t)
    d = client.request("create_user", user="alice", password="pw")
    pump.flush()
    d.cancel()
    thread.finish()
    pump.flush()                                   # the reply arrives for nobody
    assert result_of(d, pump).check(defer.CancelledError)
    assert result_of(client.request("ping"), pump) == {}


@pytest.mark.parametrize("line", [
    b'{"id": 1, "error": "not an object"}',
    b'{"id": 1, "ok": [1, 2]}',
    b'{"id": 1}',
    b'{"id": 99, "ok": {}}',
    b'{"id": null, "error": {"code": "line_too_long", "message": "m"}}',
])
def test_client_survives_odd_replies(line):
    client = TrackerClientProtocol()
    transport = StringTransport()
    client.makeConnection(transport)
    d = client.request("ping")
    client.dataReceived(line + b"\n")
    out = []
    d.addBoth(out.append)
    if out:                                        # a reply for request 1: ok or a typed error
        assert out[0] == {} or isinstance(out[0].value, MbtError)
    assert not transport.disconnecting
    client.connectionLost(None)


def test_client_drops_a_tracker_that_sends_garbage():
    client = TrackerClientProtocol()
    transport = StringTransport()
    client.makeConnection(transport)
    d = client.request("ping")
    client.dataReceived(b"\xff garbage\n")
    assert transport.disconnecting
    client.connectionLost(None)
    out = []
    d.addBoth(out.append)
    assert out[0].check(TrackerUnavailable)


def test_brute_force_logins_are_throttled_with_one_clear_error(tracker):
    c = tracker.connect()
    c.call("create_user", user="vic", password="right")
    for i in range(5):
        c.error("bad_credentials", "login", user="vic", password="wrong%d" % i, address="127.0.0.1:7000")
    err = c.error("rate_limited", "login", user="vic", password="right", address="127.0.0.1:7000")
    assert err.message.startswith("too many failed logins; try again in ")
