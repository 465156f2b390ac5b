"""Replicated trackers for real: ``mbt-tracker`` processes on 127.0.0.1, SIGKILLed and restarted.

Each test writes a TRACKER_INFO with free ports, starts trackers from it (they
share the ``.mbt-tracker-secret`` created next to it) and talks to them with a
small blocking JSON-lines client. Every wait is a bounded poll; every process
is killed at teardown. Measured figures (replication lag, failover) are
printed; run with ``-s`` to see them.
"""

import itertools
import json
import os
import re
import socket
import statistics
import threading
import time

import pytest

from mbt.driver import Console, Process, bin_path, free_port, wait_port


class Client:
    """A blocking tracker client on one connection (sessions live on connections)."""

    def __init__(self, port: int, timeout: float = 15.0, source: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.buf = b""
        self.ids = itertools.count(1)

    def call(self, op: str, **args) -> dict:
        req_id = next(self.ids)
        self.sock.sendall(json.dumps(dict(args, id=req_id, op=op)).encode() + b"\n")
        while True:
            while b"\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("tracker on %d closed the connection" % self.port)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            reply = json.loads(line)
            if reply.get("id") == req_id:
                return reply

    def ok(self, op: str, **args) -> dict:
        reply = self.call(op, **args)
        assert "ok" in reply, (op, reply)
        return reply["ok"]

    def close(self) -> None:
        self.sock.close()


def call(port: int, op: str, **args) -> dict:
    c = Client(port)
    try:
        return c.call(op, **args)
    finally:
        c.close()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


class Trackers:
    """Tracker processes of one TRACKER_INFO; killed at teardown."""

    def __init__(self, root, count: int) -> None:
        self.root = root
        self.ports = [free_port() for _ in range(count)]
        self.info = self.write_info(self.ports, "tracker_info.txt")
        self.procs = {}

    def write_info(self, ports, name: str) -> str:
        path = self.root / name
        path.write_text("".join("127.0.0.1:%d\n" % p for p in ports))
        return str(path)

    def port(self, n: int) -> int:
        return self.ports[n - 1]

    def start(self, n: int, info: str = None, state: str = None) -> Process:
        state = state or str(self.root / ("state%d" % n))
        p = Process([bin_path("mbt-tracker"), info or self.info, str(n), "--state-dir", state],
                    log=str(self.root / ("tracker%d.log" % n)))
        self.procs[n] = p
        wait_port(self.port(n), 20, p.proc)
        return p

    def kill(self, n: int) -> None:
        self.procs.pop(n).kill()

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.kill()
        self.procs.clear()

    def status(self, n: int) -> dict:
        return call(self.port(n), "tracker_status")["ok"]

    def wait_in_sync(self, numbers, timeout: float = 15.0) -> None:
        """Every tracker in ``numbers`` serves, and all are linked to each other."""
        def ready():
            for n in numbers:
                s = self.status(n)
                if not s["serving"] or not set(numbers) - {n} <= set(s["linked"]):
                    return False
            return True
        wait_until(ready, timeout, "trackers %s in sync" % (numbers,))

    def digest(self, n: int) -> dict:
        return call(self.port(n), "state_digest")["ok"]

    def digests(self, numbers) -> set:
        return {self.digest(n)["digest"] for n in numbers}


@pytest.fixture
def trackers(tmp_path):
    made = []

    def make(count: int) -> Trackers:
        t = Trackers(tmp_path, count)
        made.append(t)
        return t
    yield make
    for t in made:
        t.stop_all()


def login(port: int, name: str, address: str, create: bool = True) -> Client:
    c = Client(port)
    if create:
        c.ok("create_user", user=name, password="pw-" + name)
    c.ok("login", user=name, password="pw-" + name, address=address)
    return c


MANIFEST = {"name": "song.bin", "size": 11, "piece_size": 524288, "file_hash": "b" * 64,
            "piece_hashes": ["b" * 64]}


def test_writes_on_any_tracker_are_visible_on_all_within_a_second(trackers):
    t = trackers(3)
    for n in (1, 2, 3):
        t.start(n)
    t.wait_in_sync([1, 2, 3])
    assert t.status(1)["role"] == "leading" and secret_is_private(t)
    clients = {n: login(t.port(n), "user%d" % n, "127.0.0.1:%d" % (7000 + n)) for n in (1, 2, 3)}
    lags = []
    for i in range(30):
        src, dst = 1 + i % 3, 1 + (i + 1) % 3
        group = "g%d" % i
        start = time.monotonic()
        clients[src].ok("create_group", group=group)
        wait_until(lambda: any(g["group"] == group for g in clients[dst].ok("list_groups")["groups"]),
                   1.0, "group %s on tracker %d" % (group, dst), interval=0.001)
        lags.append(time.monotonic() - start)
    for c in clients.values():
        c.close()
    digests = {t.digest(n)["digest"] for n in (1, 2, 3)}
    assert len(digests) == 1 and {t.digest(n)["seq"] for n in (1, 2, 3)} == {33}
    print("\nreplication lag (write on tracker i acknowledged -> visible on tracker j), 30 writes: "
          "median %.1f ms, max %.1f ms" % (statistics.median(lags) * 1000, max(lags) * 1000))


def secret_is_private(t: Trackers) -> bool:
    path = os.path.join(os.path.dirname(t.info), ".mbt-tracker-secret")
    return os.stat(path).st_mode & 0o777 == 0o600 and len(open(path).read().strip()) == 64


def test_sigkill_restart_and_a_fourth_tracker_with_an_empty_state_dir(trackers, tmp_path):
    t = trackers(3)
    for n in (1, 2, 3):
        t.start(n)
    t.wait_in_sync([1, 2, 3])
    c2 = login(t.port(2), "bob", "127.0.0.1:7002")
    c2.ok("create_group", group="before")
    t.kill(1)                                   # the leader dies
    killed = time.monotonic()
    c3 = login(t.port(3), "carol", "127.0.0.1:7003")
    failover = time.monotonic() - killed
    for i in range(5):
        (c2 if i % 2 else c3).ok("create_group", group="while-down-%d" % i)
    assert len(t.digests([2, 3])) == 1
    # Tracker 1 comes back with its state dir: its very first answer is current.
    t.start(1)
    first = Client(t.port(1))
    assert first.ok("state_digest") == dict(t.digest(2), tracker=1)
    alice = login(t.port(1), "alice", "127.0.0.1:7001")
    assert len(alice.ok("list_groups")["groups"]) == 6
    # A 4th tracker (a longer info file, same directory, so the same secret) with nothing.
    t.ports.append(free_port())
    info4 = t.write_info(t.ports, "tracker_info4.txt")
    t.start(4, info=info4, state=str(tmp_path / "empty4"))
    assert t.digest(4) == dict(t.digest(1), tracker=4)
    assert len(t.digests([1, 2, 3, 4])) == 1
    # Writes through the newcomer reach everyone, and the other way round.
    c4 = Client(t.port(4))
    c4.ok("login", user="alice", password="pw-alice", address="127.0.0.1:7004")
    c4.ok("create_group", group="via-4")
    assert any(g["group"] == "via-4" for g in c2.ok("list_groups")["groups"])
    for c in (c2, c3, first, alice, c4):
        c.close()
    print("\nleader SIGKILLed: the next write through another tracker succeeded after %.0f ms" % (failover * 1000))


def test_racing_create_user_on_two_trackers_exactly_one_wins(trackers):
    t = trackers(3)
    for n in (1, 2, 3):
        t.start(n)
    t.wait_in_sync([1, 2, 3])
    for round_ in range(5):
        name = "bob%d" % round_
        clients = [Client(t.port(2)), Client(t.port(3))]
        barrier = threading.Barrier(2)
        replies = [None, None]

        def race(i):
            barrier.wait()
            replies[i] = clients[i].call("create_user", user=name, password="pw%d" % i)
        threads = [threading.Thread(target=race, args=(i,)) for i in (0, 1)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        outcomes = sorted("ok" if "ok" in r else r["error"]["code"] for r in replies)
        assert outcomes == ["ok", "user_exists"], replies
        winner = 0 if "ok" in replies[0] else 1
        # The winner's password works through every tracker; the loser's nowhere.
        for n in (1, 2, 3):
            c = Client(t.port(n))
            assert "ok" in c.call("login", user=name, password="pw%d" % winner, address="127.0.0.1:1")
            c.close()
            c = Client(t.port(n))
            assert c.call("login", user=name, password="pw%d" % (1 - winner),
                          address="127.0.0.1:1")["error"]["code"] == "bad_credentials"
            c.close()
        for c in clients:
            c.close()
    assert len(t.digests([1, 2, 3])) == 1


def test_presence_spans_trackers_and_a_dead_trackers_peers_stop_being_listed(trackers):
    t = trackers(3)
    for n in (1, 2, 3):
        t.start(n)
    t.wait_in_sync([1, 2, 3])
    alice = login(t.port(1), "alice", "127.0.0.1:7001")
    bob = login(t.port(2), "bob", "127.0.0.1:7002")
    alice.ok("create_group", group="club")
    bob.ok("join_group", group="club")
    alice.ok("accept_request", group="club", user="bob")
    alice.ok("share_file", group="club", manifest=MANIFEST)
    listed = lambda: [p["address"] for p in bob.ok("get_peers", group="club", name="song.bin")["peers"]]
    wait_until(lambda: listed() == ["127.0.0.1:7001"], 1.0, "alice listed through tracker 2")
    assert bob.ok("list_files", group="club")["files"][0]["peers"] == 1
    t.kill(1)
    killed = time.monotonic()
    wait_until(lambda: listed() == [], 6.0, "alice's peer forgotten after tracker 1 died")
    gone = time.monotonic() - killed
    # alice's peer reconnects through tracker 3 and re-announces: listed once again.
    again = login(t.port(3), "alice", "127.0.0.1:7001", create=False)
    again.ok("share_file", group="club", manifest=MANIFEST)
    wait_until(lambda: listed() == ["127.0.0.1:7001"], 1.0, "alice listed again")
    for c in (alice, bob, again):
        c.close()
    print("\npeers of a SIGKILLed tracker stopped being listed after %.2f s" % gone)


def test_a_peer_fails_over_mid_download_and_the_download_finishes(trackers, tmp_path):
    t = trackers(3)
    for n in (1, 2, 3):
        t.start(n)
    t.wait_in_sync([1, 2, 3])
    consoles = []

    def peer(name, extra=None):
        (tmp_path / name).mkdir()
        c = Console("127.0.0.1:%d" % free_port(), t.info, str(tmp_path / name / "state"),
                    cwd=str(tmp_path / name), extra=extra, log=str(tmp_path / (name + ".log")))
        consoles.append(c)
        return c
    try:
        alice = peer("alice", ["--upload-rate", "1M"])       # slow: the download takes seconds
        bob = peer("bob")
        for c, name in ((alice, "ann"), (bob, "ben")):
            assert not c.cmd("create_user %s pw" % name).startswith("error")
            assert not c.cmd("login %s pw" % name).startswith("error")
        assert not alice.cmd("create_group g").startswith("error")
        assert not bob.cmd("join_group g").startswith("error")
        assert not alice.cmd("accept_request g ben").startswith("error")
        data = os.urandom(4 * 1024 * 1024 + 5)
        (tmp_path / "alice" / "big.bin").write_bytes(data)
        assert not alice.cmd("upload_file big.bin g").startswith("error")
        assert bob.cmd("download_file g big.bin got.bin").startswith("downloading big.bin")
        def progress():
            m = re.search(r"(\d+)%", bob.cmd("show_downloads"))
            return m is not None and 0 < int(m.group(1)) < 60
        wait_until(progress, 10, "download under way", interval=0.1)
        t.kill(1)                                   # both peers were on tracker 1
        killed = time.monotonic()
        wait_until(lambda: not alice.cmd("list_groups").startswith("error"), 10,
                   "alice's console working again", interval=0.05)
        failover = time.monotonic() - killed
        status = wait_until(lambda: (lambda s: s if s.startswith(("[C]", "[F]")) else None)(
            bob.cmd("show_downloads")), 40, "download to end", interval=0.3)
        assert status == "[C] [g] big.bin  %s" % (tmp_path / "bob" / "got.bin")
        assert (tmp_path / "bob" / "got.bin").read_bytes() == data
        print("\npeer failover after SIGKILL of its tracker: console answered again after %.0f ms"
              % (failover * 1000))
    finally:
        for c in consoles:
            c.stop(5)


def test_secret_files_both_front_ends_and_a_wrong_secret_is_refused(trackers, tmp_path):
    t = trackers(2)
    a, b = tmp_path / "secret-a", tmp_path / "secret-b"
    a.write_text("a-shared-secret-for-the-test-0123456789\n")
    b.write_text("another-secret-nobody-else-knows-98765\n")
    os.chmod(a, 0o600)
    os.chmod(b, 0o600)
    one = Process([bin_path("mbt-tracker"), t.info, "1", "--state-dir", str(tmp_path / "s1"),
                   "--secret-file", str(a)], log=str(tmp_path / "tracker1.log"))
    t.procs[1] = one
    wait_port(t.port(1), 20, one.proc)

    def twistd(secret):
        p = Process([bin_path("twistd"), "-n", "--pidfile=", "mbt-tracker", "--info", t.info, "--no", "2",
                     "--state-dir", str(tmp_path / "s2"), "--secret-file", str(secret)],
                    cwd=str(tmp_path), log=str(tmp_path / "tracker2.log"))
        t.procs[2] = p
        wait_port(t.port(2), 20, p.proc)
    twistd(b)
    wait_until(lambda: "failed authentication" in (tmp_path / "tracker1.log").read_text()
               and "failed authentication" in (tmp_path / "tracker2.log").read_text(), 10, "refusals logged")
    assert t.status(1)["linked"] == [] and t.status(2)["linked"] == []
    t.kill(2)
    twistd(a)
    t.wait_in_sync([1, 2])
    assert len(t.digests([1, 2])) == 1
    logs = (tmp_path / "tracker1.log").read_text() + (tmp_path / "tracker2.log").read_text()
    assert "a-shared-secret" not in logs and "another-secret" not in logs
    assert not (tmp_path / ".mbt-tracker-secret").exists()      # an explicit file: none created
    missing = Process([bin_path("mbt-tracker"), t.info, "1", "--state-dir", str(tmp_path / "s3"),
                       "--secret-file", str(tmp_path / "nope")], log=str(tmp_path / "t3.log"))
    assert missing.wait(20) == 2
    missing.stop()
    assert "cannot read the tracker secret file" in (tmp_path / "t3.log").read_text()


def notices(console) -> list:
    """Every notice the console printed so far (Console.cmd collects them)."""
    console.cmd("help quit")
    return console.notices


def test_membership_notices_reach_a_user_on_another_tracker(trackers, tmp_path):
    # Issue #12 item 12, for real: the owner's peer uses tracker 1, the user's tracker 2.
    t = trackers(2)
    for n in (1, 2):
        t.start(n)
    t.wait_in_sync([1, 2])
    own_first = {1: t.info, 2: t.write_info(list(reversed(t.ports)), "tracker_info_2_first.txt")}
    consoles = []
    try:
        for name, n in (("alice", 1), ("bob", 2)):
            (tmp_path / name).mkdir()
            consoles.append(Console("127.0.0.1:%d" % free_port(), own_first[n], str(tmp_path / name / "state"),
                                    cwd=str(tmp_path / name), log=str(tmp_path / (name + ".log"))))
        alice, bob = consoles
        for c, name in ((alice, "ann"), (bob, "ben")):
            assert not c.cmd("create_user %s pw" % name).startswith("error")
            assert not c.cmd("login %s pw" % name).startswith("error")
        assert alice.cmd("create_group g") == "group g created; you are its owner"
        assert alice.cmd("create_group h") == "group h created; you are its owner"
        assert bob.cmd("join_group g").startswith("asked to join g")
        assert bob.cmd("join_group h").startswith("asked to join h")
        assert bob.cmd("list_groups") == "g  owner ann  1 member  pending\nh  owner ann  1 member  pending"
        # A pending user is not told to join_group again.
        assert bob.cmd("list_files g") == \
            "error: you are not a member of group g yet; your request to join is waiting for its owner ann"
        wait_until(lambda: any("ben asks to join your group h" in n for n in notices(alice)), 10, "alice's notice")
        assert alice.cmd("accept_request g ben") == "ben is now a member of g"
        assert alice.cmd("reject_request h ben") == "rejected ben's request to join h"
        wait_until(lambda: len([n for n in notices(bob) if "ann" in n]) >= 2, 10, "bob's notices")
        assert [n for n in bob.notices if "ann" in n] == [
            "notice: ann accepted you into group g; list_files g shows its files",
            "notice: ann turned down your request to join group h"]
        assert bob.cmd("list_groups") == "g  owner ann  2 members  member\nh  owner ann  1 member"
        assert alice.cmd("leave_group g") == "left group g; ownership passed to ben"
        wait_until(lambda: any("owner of group g" in n for n in notices(bob)), 10, "bob's ownership notice")
        assert bob.cmd("list_groups") == "g  owner ben  1 member  owner\nh  owner ann  1 member"
    finally:
        for c in consoles:
            c.kill()
