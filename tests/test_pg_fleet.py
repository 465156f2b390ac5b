"""Trackers over PostgreSQL for real: ``mbt-tracker --store URL`` processes on one database.

The session's private PostgreSQL server (tests/pgserver.py) gives each test a
fresh database. Trackers are SIGKILLed, PostgreSQL is restarted under them,
and a deployment is moved from SQLite into the database and back. Every wait
is a bounded poll; every process is killed at teardown.
"""

import json
import os
import re
import threading
import time

import pytest
import pytest_twisted

from mbt.driver import Console, Process, bin_path, free_port, wait_port
from mbt.tracker.service import TrackerService
from tests.test_replication_integration import MANIFEST, Client, call, login, wait_until


class Fleet:
    """``mbt-tracker --store URL`` processes of one TRACKER_INFO; killed at teardown."""

    def __init__(self, root, count: int, url: str) -> None:
        self.root = root
        self.url = url
        self.ports = [free_port() for _ in range(count)]
        self.info = str(root / "tracker_info.txt")
        (root / "tracker_info.txt").write_text("".join("127.0.0.1:%d\n" % p for p in self.ports))
        self.home = root / "home"           # proves no state dir is made: nothing may appear here
        self.home.mkdir()
        self.procs = {}

    def port(self, n: int) -> int:
        return self.ports[n - 1]

    def start(self, n: int, extra=()) -> Process:
        env = dict(os.environ, HOME=str(self.home), XDG_DATA_HOME=str(self.home / "data"))
        p = Process([bin_path("mbt-tracker"), self.info, str(n), "--store", self.url] + list(extra),
                    log=str(self.root / ("tracker%d.log" % n)), env=env)
        self.procs[n] = p
        wait_port(self.port(n), 20, p.proc)
        return p

    def kill(self, n: int) -> None:
        self.procs.pop(n).kill()

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.kill()
        self.procs.clear()

    def digests(self, numbers) -> set:
        return {call(self.port(n), "state_digest")["ok"]["digest"] for n in numbers}


@pytest.fixture
def fleet(tmp_path, pg_url):
    made = []

    def make(count: int, url: str = pg_url) -> Fleet:
        f = Fleet(tmp_path, count, url)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop_all()


def test_racing_writes_through_three_trackers_exactly_one_wins(fleet):
    t = fleet(3)
    for n in (1, 2, 3):
        t.start(n)
    for round_ in range(5):
        name = "bob%d" % round_
        clients = [Client(t.port(1 + round_ % 3)), Client(t.port(1 + (round_ + 1) % 3))]
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
        # Visible through every tracker at once (no wait): the winner's password works, the loser's not.
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
    # Two owners accepting the same request through two trackers: one succeeds.
    owner1 = login(t.port(1), "olga", "127.0.0.1:7001")
    owner1.ok("create_group", group="club")
    joiner = login(t.port(2), "jim", "127.0.0.1:7002")
    joiner.ok("join_group", group="club")
    owner2 = login(t.port(3), "olga", "127.0.0.1:7003", create=False)
    replies = [None, None]
    barrier = threading.Barrier(2)

    def accept(i, c):
        barrier.wait()
        replies[i] = c.call("accept_request", group="club", user="jim")
    threads = [threading.Thread(target=accept, args=(i, c)) for i, c in enumerate((owner1, owner2))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert sorted("ok" if "ok" in r else r["error"]["code"] for r in replies) == ["no_such_request", "ok"]
    assert len(t.digests([1, 2, 3])) == 1
    assert not os.listdir(t.home)       # no tracker made a state dir


def test_presence_across_trackers_expiry_of_a_dead_one_and_a_fourth_tracker(fleet):
    t = fleet(4)
    for n in (1, 2, 3):
        t.start(n)
    alice = login(t.port(1), "alice", "127.0.0.1:7001")
    bob = login(t.port(2), "bob", "127.0.0.1:7002")
    alice.ok("create_group", group="club")
    bob.ok("join_group", group="club")
    alice.ok("accept_request", group="club", user="bob")
    alice.ok("share_file", group="club", manifest=MANIFEST)
    # Written through tracker 1, seen through tracker 2 by the very next request.
    assert [p["address"] for p in bob.ok("get_peers", group="club", name="song.bin")["peers"]] \
        == ["127.0.0.1:7001"]
    assert bob.ok("list_files", group="club")["files"][0]["peers"] == 1
    listed = lambda: [p["address"] for p in bob.ok("get_peers", group="club", name="song.bin")["peers"]]
    t.kill(1)
    killed = time.monotonic()
    wait_until(lambda: listed() == [], 10.0, "alice's peer forgotten after tracker 1 died")
    gone = time.monotonic() - killed
    assert gone < 5.0 + 1.0 + 1.5      # LEASE + HEARTBEAT (docs/deployment.rst), plus slack
    # A 4th tracker, never started before and without any state dir, serves at once.
    started = time.monotonic()
    t.start(4)
    carol = Client(t.port(4))
    assert carol.call("login", user="alice", password="pw-alice", address="127.0.0.1:7001")["ok"]
    ready = time.monotonic() - started
    carol.ok("share_file", group="club", manifest=MANIFEST)
    assert listed() == ["127.0.0.1:7001"]
    assert len(t.digests([2, 3, 4])) == 1
    for c in (alice, bob, carol):
        c.close()
    print("\npeers of a SIGKILLed tracker stopped being listed after %.2f s; a new tracker served "
          "its first login %.2f s after start" % (gone, ready))


def test_restarting_postgresql_under_running_trackers_loses_nothing(fleet, pg_server):
    t = fleet(2)
    for n in (1, 2):
        t.start(n)
    alice = login(t.port(1), "alice", "127.0.0.1:7001")
    alice.ok("create_group", group="club")
    pg_server.stop()
    try:
        began = time.monotonic()
        reply = alice.call("list_groups")
        assert reply["error"] == {"code": "db_unavailable", "message": "tracker database unavailable; retrying"}
        assert time.monotonic() - began < 5.0          # fails fast
        assert Client(t.port(2)).call("create_user", user="zed", password="pw")["error"]["code"] \
            == "db_unavailable"
    finally:
        pg_server.start()
    # Both trackers reconnect by themselves; what was acknowledged is there, the failed write is not.
    wait_until(lambda: "ok" in Client(t.port(2)).call("ping"), 15, "tracker 2 serving again", 0.2)
    bob = login(t.port(2), "bob", "127.0.0.1:7002")
    assert bob.ok("list_groups")["groups"] == [{"group": "club", "owner": "alice", "members": 1,
                                                "role": ""}]
    assert Client(t.port(1)).call("login", user="zed", password="pw",
                                  address="127.0.0.1:1")["error"]["code"] == "bad_credentials"
    wait_until(lambda: "ok" in alice.call("list_groups"), 15, "tracker 1 serving again", 0.2)
    assert len(t.digests([1, 2])) == 1


def test_sigkill_a_tracker_mid_download_and_the_download_finishes(fleet, tmp_path):
    t = fleet(3)
    for n in (1, 2, 3):
        t.start(n)
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
        wait_until(lambda: not alice.cmd("list_groups").startswith("error"), 10,
                   "alice's console working again", interval=0.05)
        status = wait_until(lambda: (lambda s: s if s.startswith(("[C]", "[F]")) else None)(
            bob.cmd("show_downloads")), 40, "download to end", interval=0.3)
        assert status == "[C] [g] big.bin  %s" % (tmp_path / "bob" / "got.bin")
        assert (tmp_path / "bob" / "got.bin").read_bytes() == data
    finally:
        for c in consoles:
            c.stop(5)


def test_migration_from_sqlite_keeps_everything_and_exports_back(tmp_path, pg_url):
    port = free_port()
    info = tmp_path / "tracker_info.txt"
    info.write_text("127.0.0.1:%d\n" % port)
    old = Process([bin_path("mbt-tracker"), str(info), "1", "--state-dir", str(tmp_path / "old")],
                  log=str(tmp_path / "old.log"))
    try:
        wait_port(port, 20, old.proc)
        alice = login(port, "alice", "127.0.0.1:7001")
        bob = login(port, "bob", "127.0.0.1:7002")
        carol = login(port, "carol", "127.0.0.1:7003")
        alice.ok("create_group", group="club")
        bob.ok("join_group", group="club")
        alice.ok("accept_request", group="club", user="bob")
        carol.ok("join_group", group="club")
        bob.ok("share_file", group="club", manifest=MANIFEST)
        bob.ok("create_group", group="solo")
        before = call(port, "state_digest")["ok"]["digest"]
        for c in (alice, bob, carol):
            c.close()
    finally:
        old.stop(10)

    new = Process([bin_path("mbt-tracker"), str(info), "1", "--store", pg_url,
                   "--import-from", str(tmp_path / "old")], log=str(tmp_path / "new.log"))
    try:
        wait_port(port, 20, new.proc)
        assert call(port, "state_digest")["ok"]["digest"] == before
        # Every password still works; groups, requests and files are all there.
        bob = login(port, "bob", "127.0.0.1:7002", create=False)
        alice = login(port, "alice", "127.0.0.1:7001", create=False)
        login(port, "carol", "127.0.0.1:7003", create=False).close()
        assert bob.ok("list_groups")["groups"] == [
            {"group": "club", "owner": "alice", "members": 2, "role": "member"},
            {"group": "solo", "owner": "bob", "members": 1, "role": "owner"}]
        assert alice.ok("list_requests", group="club")["requests"] == ["carol"]
        assert [f["name"] for f in bob.ok("list_files", group="club")["files"]] == ["song.bin"]
        bob.ok("create_group", group="after")           # the database goes on from there
        after = call(port, "state_digest")["ok"]["digest"]
        bob.close()
        alice.close()
    finally:
        new.stop(10)
    # A second import into the same database is refused (it is not empty any more).
    again = Process([bin_path("mbt-tracker"), str(info), "1", "--store", pg_url,
                     "--import-from", str(tmp_path / "old")], log=str(tmp_path / "again.log"))
    assert again.wait(30) == 2
    assert "already holds" in (tmp_path / "again.log").read_text()
    # And back: an export is a state dir an SQLite tracker serves with the same state.
    out = Process([bin_path("mbt-tracker"), str(info), "1", "--store", pg_url,
                   "--export-to", str(tmp_path / "back")], pipe_stdout=True)
    assert out.wait(30) == 0
    assert b"exported 3 users, 3 groups, 1 requests, 1 files" in out.proc.stdout.read()
    back = Process([bin_path("mbt-tracker"), str(info), "1", "--state-dir", str(tmp_path / "back")],
                   log=str(tmp_path / "back.log"))
    try:
        wait_port(port, 20, back.proc)
        assert call(port, "state_digest")["ok"]["digest"] == after
        login(port, "carol", "127.0.0.1:7003", create=False).close()
    finally:
        back.stop(10)


def test_twistd_front_end_and_the_password_is_never_shown(fleet, tmp_path):
    t = fleet(2)
    # The test server trusts local connections, so any password is accepted: it must not leak.
    url = t.url.replace("postgres@", "postgres:s3cretpw@")
    t.url = url
    t.start(1)
    twistd = Process([os.path.join(os.path.dirname(bin_path("mbt-tracker")), "twistd"), "-n",
                      "--pidfile", str(tmp_path / "t2.pid"), "mbt-tracker", "--info", t.info,
                      "--no", "2", "--store", url], log=str(tmp_path / "twistd.log"), cwd=str(tmp_path))
    try:
        wait_port(t.port(2), 20, twistd.proc)
        a = login(t.port(1), "ann", "127.0.0.1:7001")
        b = Client(t.port(2))
        assert b.call("login", user="ann", password="pw-ann", address="127.0.0.1:7002")["ok"]
        a.close()
        b.close()
    finally:
        twistd.stop(10)
    t.stop_all()
    logs = (tmp_path / "twistd.log").read_text() + (tmp_path / "tracker1.log").read_text()
    assert "postgresql://postgres@127.0.0.1" in logs
    assert "s3cretpw" not in logs


def test_membership_pushes_reach_a_user_on_another_tracker_of_the_fleet(fleet):
    # Issue #12 item 12 over PostgreSQL: the owner writes through tracker 1, the
    # user's session is on tracker 2, which learns of the write from the database.
    t = fleet(2)
    for n in (1, 2):
        t.start(n)
    owner = login(t.port(1), "olga", "127.0.0.1:7001")
    owner.ok("create_group", group="club")
    user = login(t.port(2), "jim", "127.0.0.1:7002")
    user.ok("join_group", group="club")
    owner.ok("accept_request", group="club", user="jim")
    pushes = []
    deadline = time.monotonic() + 10
    user.sock.settimeout(0.2)
    while not pushes and time.monotonic() < deadline:
        try:
            user.buf += user.sock.recv(65536)
        except OSError:             # timeout: nothing yet (tracker 2 catches up every second)
            continue
        *lines, user.buf = user.buf.split(b"\n")
        pushes.extend(m for m in map(json.loads, filter(None, lines)) if "push" in m)
    assert pushes == [{"push": "membership", "kind": "accepted", "group": "club", "by": "olga"}]


@pytest_twisted.inlineCallbacks
def test_snapshots_compact_the_log_and_a_new_tracker_starts_from_one(tmp_path, pg_url):
    import psycopg
    from tests.cluster import wait_for
    from tests.test_tracker_integration import Services, connect, user
    services = Services(tmp_path, pg_url)
    services.clients = []
    svc = TrackerService("tcp:0:interface=127.0.0.1", None, store_url=pg_url,
                         fleet_options={"snapshot_every": 10})
    svc.startService()
    port = yield svc.listening
    svc.port_number = port.getHost().port
    services.running.append(svc)
    try:
        alice = yield user(services, svc, "alice", "127.0.0.1:7001")
        for i in range(25):
            yield alice.request("create_group", group="g%d" % i)
        with psycopg.connect(pg_url) as conn:
            newest = lambda: conn.execute("SELECT coalesce(max(seq), 0) FROM mbt_snapshot").fetchone()[0]
            yield wait_for(lambda: newest() >= 20, 10, what="a snapshot after operation 20")
            assert conn.execute("SELECT count(*) FROM mbt_snapshot").fetchone()[0] == 1   # older ones dropped
            assert newest() % 10 == 0
        # A second tracker loads the snapshot plus the tail: the same state.
        other = TrackerService("tcp:0:interface=127.0.0.1", None, number=2, store_url=pg_url)
        other.startService()
        p2 = yield other.listening
        other.port_number = p2.getHost().port
        services.running.append(other)
        c = yield connect(services, other)
        d1 = (yield alice.request("state_digest"))["digest"]
        assert (yield c.request("state_digest"))["digest"] == d1
        assert len((yield c.request("login", user="alice", password="pw-alice", address="127.0.0.1:7002"))
                   ["token"]) > 10
    finally:
        for c in services.clients:
            if c.transport is not None:
                c.transport.loseConnection()
        for s in list(services.running):
            yield s.stopService()


def test_one_login_budget_for_the_whole_fleet_in_the_database(fleet):
    # As tests/test_throttle_e2e.py for linked SQLite trackers: a guesser at
    # 127.0.0.2 spends its free wrong passwords for alice on tracker 1, then
    # tracker 2 (and 3) make it wait too, while alice logs in through any of them.
    from mbt.throttle import PAIR_FREE
    from tests.test_throttle_e2e import code
    t = fleet(3)
    for n in (1, 2, 3):
        t.start(n)
    alice = Client(t.port(1), source="127.0.0.1")
    assert code(alice, "create_user", user="alice", password="right") == "ok"
    alice.close()
    guesser1 = Client(t.port(1), source="127.0.0.2")
    codes = [code(guesser1, "login", user="alice", password="guess%d" % i, address="127.0.0.2:7000")
             for i in range(PAIR_FREE)]
    assert codes == ["bad_credentials"] * PAIR_FREE
    for n in (2, 3):
        guesser = Client(t.port(n), source="127.0.0.2")
        assert code(guesser, "login", user="alice", password="guess-on-%d" % n,
                    address="127.0.0.2:7000") == "rate_limited"
        guesser.close()
    assert code(guesser1, "login", user="alice", password="guess-again", address="127.0.0.2:7000") \
        == "rate_limited"
    for n in (1, 2, 3):
        alice = Client(t.port(n), source="127.0.0.1")
        assert code(alice, "login", user="alice", password="right", address="127.0.0.1:7000") == "ok"
        alice.close()
    guesser1.close()
    # The counters are in the database, on its clock: 5 strikes of the pair
    # (alice's right password cleared hers), one per wrong password of the address.
    import psycopg
    with psycopg.connect(t.url) as conn:
        rows = dict(conn.execute("SELECT replace(key, chr(31), ' '), strikes FROM mbt_login_strikes"))
    assert rows == {"p alice 127.0.0.2": PAIR_FREE, "a 127.0.0.2": PAIR_FREE, "u alice": PAIR_FREE}


def test_login_budget_steps_on_several_connections_at_once_lose_no_strike(pg_url):
    # Four trackers' connections hammer the same counters in parallel: every
    # admitted attempt is counted (the rows are locked), none is lost.
    from mbt.throttle import LoginThrottle, keys_of
    from mbt.tracker.pgstore import PgLog
    dbs = [PgLog(pg_url) for _ in range(4)]
    dbs[0].ensure_schema()
    admitted = []

    def step(throttle, now):
        time.sleep(0.01)        # a slow step inside the transaction: concurrent ones overlap
        wait = throttle.retry_after("alice", "10.0.0.9", now)
        if wait is None:
            throttle.attempt("alice", "10.0.0.9", now)
        return wait

    def attempts(db):
        for _ in range(10):
            if db.login_step(keys_of("alice", "10.0.0.9"), step, LoginThrottle) is None:
                admitted.append(1)
    began = time.monotonic()
    workers = [threading.Thread(target=attempts, args=(db,)) for db in dbs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    elapsed = time.monotonic() - began
    import psycopg
    with psycopg.connect(pg_url) as conn:
        strikes = conn.execute("SELECT strikes FROM mbt_login_strikes WHERE key = %s",
                               ("p\x1falice\x1f10.0.0.9",)).fetchone()[0]
    assert strikes == len(admitted) >= 5
    if elapsed < 1.0:           # past the 5th strike the next attempt waits 1 s
        assert len(admitted) == 5
    for db in dbs:
        db.close()
