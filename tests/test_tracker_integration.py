"""The tracker for real: TrackerService on loopback, restarts, and its two front ends.

In-process tests run a TrackerService on 127.0.0.1 port 0 with real (slow)
scrypt and talk to it through TrackerClientProtocol over TCP. Subprocess
tests run the installed ``mbt-tracker`` and ``twistd`` next to
``sys.executable``. Every wait is bounded; every process is killed in teardown.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.logger import LogLevel, globalLogPublisher

from mbt.errors import ConfigError, MbtError, TrackerUnavailable
from mbt.manifest import PIECE_SIZE, piece_count
from mbt.protocols.tracker import TrackerClientProtocol
from mbt.tracker.service import TrackerCore, TrackerService
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore, SQLiteStore

BIN = os.path.dirname(sys.executable)
MBT_TRACKER = os.path.join(BIN, "mbt-tracker")
TWISTD = os.path.join(BIN, "twistd")


def who(peers):
    """get_peers entries without the session handle and reachability (tested in test_nat_unit)."""
    return [{"user": p["user"], "address": p["address"]} for p in peers]


def manifest(name="song.bin", size=3 * PIECE_SIZE + 7, h="a"):
    return {"name": name, "size": size, "piece_size": PIECE_SIZE, "file_hash": h * 64,
            "piece_hashes": [h * 64] * piece_count(size)}


# -- in-process: TrackerService over loopback ---------------------------------------

class Services:
    """Started TrackerServices, all stopped at teardown (over ``store_url`` if given)."""

    def __init__(self, root, store_url=None):
        self.root = root
        self.store_url = store_url
        self.running = []

    @pytest_twisted.inlineCallbacks
    def start(self, state="state"):
        svc = TrackerService("tcp:0:interface=127.0.0.1", str(self.root / state), store_url=self.store_url)
        svc.startService()
        port = yield svc.listening
        self.running.append(svc)
        svc.port_number = port.getHost().port
        return svc

    @pytest_twisted.inlineCallbacks
    def stop(self, svc):
        self.running.remove(svc)
        yield svc.stopService()


def _services(root, store_url):
    s = Services(root, store_url)
    clients = []
    s.clients = clients
    yield s
    for c in clients:
        if c.transport is not None:
            c.transport.loseConnection()
    for svc in list(s.running):
        pytest_twisted.blockon(s.stop(svc))


@pytest.fixture
def services(tmp_path, store_url):
    """Trackers over each store in turn: SQLite, then PostgreSQL."""
    yield from _services(tmp_path, store_url)


@pytest.fixture
def sqlite_services(tmp_path):
    """Trackers over the SQLite store only (state-dir behaviour)."""
    yield from _services(tmp_path, None)


@pytest_twisted.inlineCallbacks
def connect(services, svc):
    ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", svc.port_number, timeout=5)
    proto = yield endpoints.connectProtocol(ep, TrackerClientProtocol())
    services.clients.append(proto)
    return proto


@pytest_twisted.inlineCallbacks
def expect_error(d, code):
    try:
        yield d
    except MbtError as e:
        assert e.code == code, (e.code, e.message)
        return e
    raise AssertionError("expected error %s" % code)


@pytest_twisted.inlineCallbacks
def user(services, svc, name, address, create=True):
    c = yield connect(services, svc)
    if create:
        yield c.request("create_user", user=name, password="pw-" + name)
    yield c.request("login", user=name, password="pw-" + name, address=address)
    return c


@pytest_twisted.inlineCallbacks
def test_full_account_and_group_story(services):
    svc = yield services.start()
    alice = yield user(services, svc, "alice", "127.0.0.1:7001")
    bob = yield user(services, svc, "bob", "127.0.0.1:7002")
    carol = yield user(services, svc, "carol", "127.0.0.1:7003")

    assert (yield alice.request("create_group", group="club")) == {"group": "club", "owner": "alice"}
    yield bob.request("join_group", group="club")
    yield carol.request("join_group", group="club")
    yield expect_error(bob.request("join_group", group="club"), "already_requested")
    yield expect_error(bob.request("list_requests", group="club"), "not_owner")
    assert (yield alice.request("list_requests", group="club")) == {"requests": ["bob", "carol"]}
    yield alice.request("accept_request", group="club", user="bob")
    yield alice.request("reject_request", group="club", user="carol")
    assert (yield alice.request("list_requests", group="club")) == {"requests": []}
    assert (yield carol.request("list_groups")) == \
        {"groups": [{"group": "club", "owner": "alice", "members": 2, "role": ""}]}

    yield expect_error(carol.request("list_files", group="club"), "not_member")
    assert (yield bob.request("list_files", group="club")) == {"files": []}
    shared = yield alice.request("share_file", group="club", manifest=manifest())
    assert shared == {"group": "club", "name": "song.bin", "size": 3 * PIECE_SIZE + 7, "pieces": 4,
                      "sharers": 1}
    files = yield bob.request("list_files", group="club")
    assert files == {"files": [{"name": "song.bin", "size": 3 * PIECE_SIZE + 7, "pieces": 4,
                                "file_hash": "a" * 64, "peers": 1}]}
    peers = yield bob.request("get_peers", group="club", name="song.bin")
    assert peers["manifest"] == manifest() and who(peers["peers"]) == [{"user": "alice", "address": "127.0.0.1:7001"}]
    yield expect_error(bob.request("share_file", group="club", manifest=manifest(h="b")), "file_conflict")
    assert (yield bob.request("share_file", group="club", manifest=manifest()))["sharers"] == 2
    yield expect_error(carol.request("get_peers", group="club", name="song.bin"), "not_member")

    # The owner leaves: bob, the oldest remaining member, owns the group now.
    assert (yield alice.request("leave_group", group="club")) == \
        {"group": "club", "deleted": False, "owner": "bob", "was_owner": True}
    peers = yield bob.request("get_peers", group="club", name="song.bin")
    assert peers["peers"] == []                               # alice's share went with her
    yield bob.request("stop_share", group="club", name="song.bin")
    assert (yield bob.request("list_files", group="club")) == {"files": []}
    assert (yield bob.request("leave_group", group="club"))["deleted"] is True
    assert (yield carol.request("list_groups")) == {"groups": []}
    assert (yield carol.request("logout")) == {"user": "carol"}
    yield expect_error(carol.request("list_groups"), "not_logged_in")


@pytest_twisted.inlineCallbacks
def test_state_survives_a_restart_but_sessions_do_not(services):
    svc = yield services.start()
    alice = yield user(services, svc, "alice", "127.0.0.1:7001")
    bob = yield user(services, svc, "bob", "127.0.0.1:7002")
    carol = yield user(services, svc, "carol", "127.0.0.1:7003")
    yield alice.request("create_group", group="club")
    yield bob.request("join_group", group="club")
    yield carol.request("join_group", group="club")
    yield alice.request("accept_request", group="club", user="bob")
    yield alice.request("share_file", group="club", manifest=manifest())
    yield bob.request("share_file", group="club", manifest=manifest("other.bin", h="c"))
    assert (yield bob.request("list_files", group="club"))["files"][0]["peers"] == 1

    yield services.stop(svc)
    # Clients of the stopped tracker find out at once.
    yield expect_error(alice.request("ping"), "tracker_unavailable")

    again = yield services.start()
    assert again.loaded >= 9
    # Sessions did not survive: log in again (accounts did: no create_user).
    alice = yield user(services, again, "alice", "127.0.0.1:7001", create=False)
    bob = yield user(services, again, "bob", "127.0.0.1:7002", create=False)
    assert (yield bob.request("list_groups")) == \
        {"groups": [{"group": "club", "owner": "alice", "members": 2, "role": "member"}]}
    assert (yield alice.request("list_requests", group="club")) == {"requests": ["carol"]}
    files = (yield bob.request("list_files", group="club"))["files"]
    assert [(f["name"], f["peers"]) for f in files] == [("other.bin", 0), ("song.bin", 0)]
    assert (yield bob.request("get_peers", group="club", name="song.bin"))["peers"] == []
    # Re-announcing makes alice a seeder again without a new registration.
    yield alice.request("share_file", group="club", manifest=manifest())
    assert who((yield bob.request("get_peers", group="club", name="song.bin"))["peers"]) == \
        [{"user": "alice", "address": "127.0.0.1:7001"}]
    yield expect_error(bob.request("create_group", group="club"), "group_exists")
    c = yield connect(services, again)
    yield expect_error(c.request("create_user", user="carol", password="x"), "user_exists")
    yield expect_error(c.request("login", user="carol", password="wrong", address="127.0.0.1:1"),
                       "bad_credentials")


@pytest_twisted.inlineCallbacks
def test_a_second_tracker_on_the_same_state_dir_is_refused(sqlite_services, tmp_path):
    services = sqlite_services
    svc = yield services.start()
    second = TrackerService("tcp:0:interface=127.0.0.1", str(tmp_path / "state"))
    with pytest.raises(ConfigError, match="in use by another mbt process"):
        second.startService()
    assert not second.running
    # The first one is unharmed, and the dir is free again once it stops.
    c = yield connect(services, svc)
    assert (yield c.request("ping")) == {}
    yield services.stop(svc)
    yield services.start()


def test_state_dir_and_database_are_private(tmp_path):
    svc = TrackerService("tcp:0:interface=127.0.0.1", str(tmp_path / "state"))
    svc.open()
    try:
        assert os.stat(tmp_path / "state").st_mode & 0o777 == 0o700
        assert os.stat(tmp_path / "state" / "tracker.sqlite3").st_mode & 0o777 == 0o600
    finally:
        svc.store.close()
        svc.lock.release()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_store_is_an_ordered_operation_log_rebuilding_the_state(tmp_path, kind):
    store = MemoryStore() if kind == "memory" else SQLiteStore(str(tmp_path / "t.sqlite3"))
    ops = [{"op": "create_user", "user": "alice", "password_record": "r\u00e9"},
           {"op": "create_group", "user": "alice", "group": "club"},
           {"op": "share_file", "user": "alice", "group": "club", "manifest": manifest()}]
    for i, op in enumerate(ops, 1):
        assert store.append(op) == i
    expected = json.loads(json.dumps(ops))
    ops[2]["manifest"]["name"] = "changed.bin"      # the store keeps its own copy
    assert [seq for seq, _ in store.load()] == [1, 2, 3]
    assert [op for _, op in store.load()] == expected
    core = TrackerCore(TrackerState(), store)
    assert core.load() == 3
    assert core.state.list_groups() == [{"group": "club", "owner": "alice", "members": 1}]
    store.close()


def test_a_stored_op_that_no_longer_applies_is_logged_not_fatal():
    store = MemoryStore()
    store.append({"op": "create_group", "user": "ghost", "group": "club"})
    store.append({"op": "create_user", "user": "alice", "password_record": "r"})
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        core = TrackerCore(TrackerState(), store)
        assert core.load() == 2
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert core.state.password_record("alice") == "r"
    assert any(e.get("log_level") == LogLevel.error for e in events)


@pytest_twisted.inlineCallbacks
def test_connection_loss_fails_pending_requests(services):
    svc = yield services.start()
    c = yield connect(services, svc)
    d = c.request("create_user", user="alice", password="pw")    # hashing takes a while
    c.transport.loseConnection()
    try:
        yield d
    except TrackerUnavailable:
        pass
    else:
        raise AssertionError("request should have failed")


# -- subprocesses ----------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def procs():
    """Processes started by a test: killed at teardown if still running."""
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def info(tmp_path):
    port = free_port()
    path = tmp_path / "tracker_info.txt"
    path.write_text("# test trackers\n127.0.0.1:%d\n127.0.0.1 %d\n" % (port, free_port()))
    return str(path), port


def start(procs, args, tmp_path, **kw):
    p = subprocess.Popen(args, cwd=str(tmp_path), stdin=kw.pop("stdin", subprocess.PIPE),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    procs.append(p)
    return p


def wait_listening(proc, port, timeout=20.0):
    """Wait (bounded) until ``port`` accepts connections; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if proc.poll() is not None:
            raise AssertionError("process exited with %s: %s" % (proc.returncode, proc.stderr.read()))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError("nothing listening on port %d after %.0fs" % (port, timeout))


def ping(port, timeout=5.0):
    """One request over a raw socket: the tracker is really serving."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b'{"id": 1, "op": "ping"}\n{"id": 2, "op": "nope"}\n')
        data = b""
        while data.count(b"\n") < 2:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_mbt_tracker_serves_until_quit(procs, info, tmp_path):
    path, port = info
    state = tmp_path / "st"
    p = start(procs, [MBT_TRACKER, path, "1", "--state-dir", str(state)], tmp_path)
    wait_listening(p, port)
    assert ping(port) == [{"id": 1, "ok": {}}, {"id": 2, "error": {
        "code": "unknown_op", "message": "unknown operation 'nope'"}}]
    out, err = p.communicate(b"hello\nquit\n", timeout=10)
    assert p.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0] == "tracker 1 listening on 127.0.0.1:%d; state in %s" % (port, state)
    assert lines[1].startswith("error: unknown command")
    assert lines[2] == "bye"
    assert (state / "tracker.sqlite3").exists()
    assert b"Traceback" not in err


def test_mbt_tracker_keeps_serving_when_stdin_closes_and_stops_on_sigterm(procs, info, tmp_path):
    path, port = info
    p = start(procs, [MBT_TRACKER, path, "1", "--state-dir", str(tmp_path / "st")], tmp_path)
    wait_listening(p, port)
    p.stdin.close()
    for _ in range(3):                    # several round trips after end of input
        assert ping(port)[0] == {"id": 1, "ok": {}}
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 0
    assert b"Traceback" not in p.stderr.read()


def test_mbt_tracker_with_stdin_from_dev_null_keeps_serving(procs, info, tmp_path):
    path, port = info
    p = start(procs, [MBT_TRACKER, path, "1", "--state-dir", str(tmp_path / "st")], tmp_path,
              stdin=subprocess.DEVNULL)
    wait_listening(p, port)
    assert ping(port)[0] == {"id": 1, "ok": {}}
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    assert p.wait(10) == 0


def test_mbt_tracker_second_instance_on_the_same_state_dir_is_refused(procs, info, tmp_path):
    path, port = info
    state = str(tmp_path / "st")
    first = start(procs, [MBT_TRACKER, path, "1", "--state-dir", state], tmp_path)
    wait_listening(first, port)
    second = start(procs, [MBT_TRACKER, path, "2", "--state-dir", state], tmp_path)
    out, err = second.communicate(timeout=10)
    assert second.returncode == 2
    assert err.decode().startswith("error: state dir ") and "in use" in err.decode()
    first.communicate(b"quit\n", timeout=10)
    assert first.returncode == 0


@pytest.mark.parametrize("content, number, expected", [
    ("127.0.0.1:6881\nnot an address\n", "1", "line 2: "),
    ("127.0.0.1:0\n", "1", "line 1: port '0'"),
    ("# nothing\n", "1", "lists no tracker"),
    ("127.0.0.1:6881\n127.0.0.1:6882\n", "3", "tracker number 3 is out of range"),
    ("127.0.0.1:6881\n", "0", "tracker number 0 is out of range"),
])
def test_mbt_tracker_config_errors_exit_2(procs, tmp_path, content, number, expected):
    path = tmp_path / "info.txt"
    path.write_text(content)
    p = start(procs, [MBT_TRACKER, str(path), number, "--state-dir", str(tmp_path / "st")], tmp_path)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 2
    err = err.decode()
    assert err.startswith("error: ") and expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    if "line" in expected:
        assert str(path) in err
    assert not (tmp_path / "st").exists()


def test_mbt_tracker_usage_errors_exit_2(procs, tmp_path):
    p = start(procs, [MBT_TRACKER, "info.txt", "one"], tmp_path)
    _out, err = p.communicate(timeout=10)
    assert p.returncode == 2 and b"error: " in err
    p = start(procs, [MBT_TRACKER, str(tmp_path / "missing.txt"), "1"], tmp_path)
    _out, err = p.communicate(timeout=10)
    assert p.returncode == 2 and err.startswith(b"error: cannot read tracker info file")


def test_twistd_runs_the_tracker_plugin_and_stops_on_sigterm(procs, info, tmp_path):
    path, port = info
    state = tmp_path / "st"
    p = start(procs, [TWISTD, "-n", "--pidfile=", "mbt-tracker", "--info", path, "--no", "1",
                      "--state-dir", str(state)], tmp_path)
    wait_listening(p, port)
    assert ping(port)[0] == {"id": 1, "ok": {}}
    p.send_signal(signal.SIGTERM)
    out, _err = p.communicate(timeout=10)
    # twistd shuts down cleanly, then re-raises the signal so its exit status shows it.
    assert p.returncode in (0, -signal.SIGTERM)
    assert b"tracker listening on 127.0.0.1:%d" % port in out
    assert b"Received SIGTERM, shutting down." in out and b"Server Shut Down." in out
    assert b"Traceback" not in out
    assert (state / "tracker.sqlite3").exists()


def test_twistd_tracker_option_errors(procs, info, tmp_path):
    path, _port = info
    p = start(procs, [TWISTD, "-n", "--pidfile=", "mbt-tracker", "--info", path, "--no", "7"], tmp_path)
    out, err = p.communicate(timeout=10)
    assert p.returncode != 0
    assert b"tracker number 7 is out of range" in out + err


def test_twistd_refuses_a_state_dir_in_use(procs, info, tmp_path):
    path, port = info
    state = str(tmp_path / "st")
    first = start(procs, [MBT_TRACKER, path, "1", "--state-dir", state], tmp_path)
    wait_listening(first, port)
    p = start(procs, [TWISTD, "-n", "--pidfile=", "mbt-tracker", "--info", path, "--no", "2",
                      "--state-dir", state], tmp_path)
    out, err = p.communicate(timeout=10)
    assert p.returncode != 0
    assert b"error: state dir" in out + err and b"in use" in out + err
    first.communicate(b"quit\n", timeout=10)
    assert first.returncode == 0


def test_twistd_help_lists_both_plugins(procs, tmp_path):
    p = start(procs, [TWISTD, "--help"], tmp_path)
    out, _err = p.communicate(timeout=20)
    assert p.returncode == 0
    commands = [line.split()[0] for line in out.decode().splitlines() if line.startswith("    ")]
    assert "mbt-tracker" in commands and "mbt-peer" in commands


@pytest_twisted.inlineCallbacks
def test_concurrent_shares_on_one_tracker_all_complete(services):
    # Writes queued behind each other, each followed by a presence write: none may stall the queue.
    from twisted.internet import defer
    svc = yield services.start()
    owner = yield user(services, svc, "olga", "127.0.0.1:7000")
    yield owner.request("create_group", group="club")
    members = []
    for i in range(6):
        m = yield user(services, svc, "m%d" % i, "127.0.0.1:%d" % (7001 + i))
        yield m.request("join_group", group="club")
        yield owner.request("accept_request", group="club", user="m%d" % i)
        members.append(m)
    results = yield defer.gatherResults(
        [m.request("share_file", group="club", manifest=manifest("f%d.bin" % (i % 3), h="abc"[i % 3]))
         for i, m in enumerate(members)]).addTimeout(20, reactor)
    assert sorted(r["name"] for r in results) == ["f0.bin", "f0.bin", "f1.bin", "f1.bin", "f2.bin", "f2.bin"]
    files = (yield owner.request("list_files", group="club"))["files"]
    assert [(f["name"], f["peers"]) for f in files] == [("f0.bin", 2), ("f1.bin", 2), ("f2.bin", 2)]


@pytest_twisted.inlineCallbacks
def test_the_request_protocol_over_each_store(services):
    """The JSON-lines semantics (pipelining, typed errors, sessions, pushes) whatever the store."""
    from twisted.internet import defer
    svc = yield services.start()
    alice = yield user(services, svc, "alice", "127.0.0.1:7001")
    bob = yield user(services, svc, "bob", "127.0.0.1:7002")
    pushed = []
    alice.on_push, bob.on_push = pushed.append, pushed.append
    # Pipelined: every request sent before any answer; each reply matches its request.
    replies = yield defer.gatherResults([alice.request("create_group", group="g%d" % i) for i in range(5)]
                                        + [alice.request("ping")])
    assert replies == [{"group": "g%d" % i, "owner": "alice"} for i in range(5)] + [{}]
    yield expect_error(alice.request("login", user="alice", password="pw-alice", address="127.0.0.1:7001"),
                       "already_logged_in")
    c = yield connect(services, svc)
    yield expect_error(c.request("login", user="alice", password="wrong", address="127.0.0.1:1"),
                       "bad_credentials")
    yield expect_error(c.request("login", user="nobody", password="wrong", address="127.0.0.1:1"),
                       "bad_credentials")
    yield expect_error(c.request("list_files", group="g0"), "not_logged_in")
    yield expect_error(c.request("no_such_op"), "unknown_op")
    # Membership notices reach the logged-in user unasked.
    yield bob.request("join_group", group="g0")
    yield wait(lambda: {"push": "membership", "kind": "requested", "group": "g0", "user": "bob"} in pushed)
    yield alice.request("accept_request", group="g0", user="bob")
    yield wait(lambda: {"push": "membership", "kind": "accepted", "group": "g0", "by": "alice"} in pushed)
    # Typed state errors, and a share that disappears with its session.
    yield alice.request("share_file", group="g0", manifest=manifest())
    digest = (yield alice.request("state_digest"))["digest"]
    yield alice.request("share_file", group="g0", manifest=manifest())        # re-announce: nothing durable
    assert (yield alice.request("state_digest"))["digest"] == digest
    yield expect_error(bob.request("share_file", group="g0", manifest=manifest(h="b")), "file_conflict")
    yield expect_error(bob.request("get_peers", group="g0", name="nope.bin"), "no_such_file")
    yield expect_error(bob.request("stop_share", group="g0", name="song.bin"), "not_sharing")
    yield expect_error(bob.request("accept_request", group="g0", user="carol"), "not_owner")
    assert who((yield bob.request("get_peers", group="g0", name="song.bin"))["peers"]) == \
        [{"user": "alice", "address": "127.0.0.1:7001"}]
    alice.transport.loseConnection()
    yield wait(lambda: (svc.core.state.list_files("bob", "g0")[0]["peers"] == 0))
    assert (yield bob.request("get_peers", group="g0", name="song.bin"))["peers"] == []
    assert (yield bob.request("list_files", group="g0"))["files"][0]["peers"] == 0
    # Logging in again and re-announcing makes alice a seeder again (the registration is durable).
    alice = yield user(services, svc, "alice", "127.0.0.1:7001", create=False)
    yield alice.request("share_file", group="g0", manifest=manifest())
    assert (yield bob.request("list_files", group="g0"))["files"][0]["peers"] == 1
    assert (yield alice.request("logout")) == {"user": "alice"}
    assert (yield bob.request("list_files", group="g0"))["files"][0]["peers"] == 0


@pytest_twisted.inlineCallbacks
def wait(predicate, timeout=10.0):
    from tests.cluster import wait_for
    yield wait_for(predicate, timeout)
