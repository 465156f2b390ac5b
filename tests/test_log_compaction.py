"""Snapshots and compaction of the SQLite operation log (issue #14: start-up does
not grow with history), and catch-up of replicas that are behind a snapshot.

Snapshots are taken every few operations here (``every``), synchronously; a
real tracker takes one every 10,000 in a worker thread. Timing is measured by
``benchmarks/tracker_startup.py``, never here.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from twisted.logger import formatEvent, globalLogPublisher

from mbt import passwords
from mbt.errors import ConfigError
from mbt.manifest import PIECE_SIZE, piece_count
from mbt.tracker.compaction import Compactor, build_and_save
from mbt.tracker.oplog import OpLog
from mbt.tracker.replication import FOLLOWING, LEADING
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import SQLiteStore
from tests.replication_sim import Net, result_of, sync_thread
from tests.test_replication import STEPS


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    real = passwords.make_record
    monkeypatch.setattr(passwords, "make_record", lambda pw, n=2 ** 4, r=8, p=1: real(pw, n, r, p))


def manifest(name, h):
    size = PIECE_SIZE + 1
    return {"name": name, "size": size, "piece_size": PIECE_SIZE, "file_hash": h * 64,
            "piece_hashes": [h * 64] * piece_count(size)}


def history(n_users=12):
    """A varied history: accounts, groups, requests, members leaving, files shared and not."""
    ops = [{"op": "create_user", "user": "u%d" % i, "password_record": "rec%d" % i} for i in range(n_users)]
    for g in range(3):
        owner = "u%d" % g
        ops.append({"op": "create_group", "user": owner, "group": "g%d" % g})
        for i in range(3, n_users):
            ops.append({"op": "join_group", "user": "u%d" % i, "group": "g%d" % g})
            if i % 3:
                ops.append({"op": "accept_request", "owner": owner, "group": "g%d" % g, "user": "u%d" % i})
        ops.append({"op": "share_file", "user": "u4", "group": "g%d" % g, "manifest": manifest("f%d" % g, "a")})
        ops.append({"op": "share_file", "user": "u5", "group": "g%d" % g, "manifest": manifest("f%d" % g, "a")})
        ops.append({"op": "share_file", "user": "u5", "group": "g%d" % g, "manifest": manifest("x", "b")})
        ops.append({"op": "leave_group", "user": owner, "group": "g%d" % g})      # u4 owns it now
        ops.append({"op": "stop_share", "user": "u5", "group": "g%d" % g, "name": "x"})
    ops.append({"op": "leave_group", "user": "u5", "group": "g1"})
    return ops


def open_core(path, every=None):
    """A lone tracker's core over the state dir's database (its own leader)."""
    store = SQLiteStore(path)
    core = TrackerCore(TrackerState(), store, run_in_thread=sync_thread)
    if every:
        Compactor(core.replicator.oplog, sync_thread, every)
    core.load()
    return store, core


def write_all(core, ops):
    for op in ops:
        result_of(core.replicator.propose(op))


def fingerprint(core):
    log = core.replicator.oplog
    return core.state.digest(), log.head, log.head_hash


def test_restart_after_snapshots_restores_the_identical_state(tmp_path):
    path = str(tmp_path / "tracker.sqlite3")
    ops = history()
    # A state dir as written before snapshots existed: the whole log, no snapshots table.
    store, core = open_core(path)
    write_all(core, ops[:40])
    store.close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE snapshots")
    db.commit()
    db.close()
    # Today's tracker starts on it, serves, and compacts it as the log grows.
    store, core = open_core(path, every=10)
    assert core.replicator.oplog.head == 40
    write_all(core, ops[40:])
    before = fingerprint(core)
    seqs = [s for s, _h in store.snapshot_index()]
    assert len(seqs) == 2 and seqs[0] >= len(ops) - 10       # the two newest only
    assert store.first_seq() == seqs[1] + 1                  # the log before the older one is gone
    store.close()
    store, again = open_core(path, every=10)
    assert fingerprint(again) == before
    assert again.state.list_groups() == core.state.list_groups()
    assert again.state.files.keys() == core.state.files.keys()
    # It goes on from there: new writes chain onto the restored log.
    write_all(again, [{"op": "create_group", "user": "u7", "group": "later"}])
    assert again.replicator.oplog.head == len(ops) + 1
    store.close()


def test_a_torn_snapshot_is_dropped_and_the_one_before_it_used(tmp_path):
    path = str(tmp_path / "tracker.sqlite3")
    store, core = open_core(path, every=10)
    write_all(core, history())
    before = fingerprint(core)
    newest = store.snapshot_index()[0][0]
    store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE snapshots SET state = substr(state, 1, length(state) / 2) WHERE seq = ?", (newest,))
    db.commit()
    db.close()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        store, again = open_core(path)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert fingerprint(again) == before
    assert [s for s, _h in store.snapshot_index()] == [newest - 10]
    assert any("snapshot of operation %d is damaged" % newest in formatEvent(e) for e in events)
    store.close()
    # With no sound snapshot left and the log before it compacted, it refuses to start
    # (rather than serve a wrong state).
    db = sqlite3.connect(path)
    db.execute("UPDATE snapshots SET checksum = 'x'")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="damaged"):
        open_core(path)


CHILD = textwrap.dedent("""
    import sys, time
    from mbt.tracker import compaction
    from mbt.tracker.store import SQLiteStore

    class Stalling:
        # The real connection; stops for good right after the old operations were deleted.
        def __init__(self, db):
            self.db = db
        def execute(self, sql, *args):
            out = self.db.execute(sql, *args)
            if sql.startswith("DELETE FROM oplog"):
                print("deleting", flush=True)
                time.sleep(60)
            return out
        def __getattr__(self, name):
            return getattr(self.db, name)

    store = SQLiteStore(sys.argv[1])
    reader = store.reader()
    reader._db = Stalling(reader._db)
    store.reader = lambda: reader
    compaction.build_and_save(store, int(sys.argv[2]), sys.argv[3])
""")


def test_sigkill_while_a_snapshot_is_saved_leaves_a_startable_state(tmp_path):
    path = str(tmp_path / "tracker.sqlite3")
    store, core = open_core(path, every=10)
    ops = history()
    write_all(core, ops)
    before = fingerprint(core)
    index = store.snapshot_index()
    store.close()
    # One more snapshot is due; the process saving it is SIGKILLed inside its transaction.
    head = before[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, path, str(head), before[2]],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "deleting"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    store, again = open_core(path)
    assert fingerprint(again) == before and store.snapshot_index() == index
    # And the same snapshot, saved without interruption, gives the same state too.
    assert build_and_save(store, head, before[2])
    store.close()
    store, third = open_core(path)
    assert fingerprint(third) == before and store.snapshot_index()[0][0] == head
    store.close()


def test_a_replica_behind_the_snapshot_catches_up_from_it():
    net = Net(3, snapshot_every=5)
    ops = history()
    for op in ops[:8]:
        result_of(done(net, net[1].rep.propose(op)))
    net.crash(3)
    for op in ops[8:30]:
        result_of(done(net, net[1].rep.propose(op), 1.1))
    leader = net[1].rep.oplog
    assert leader.base > 8          # what tracker 3 lacks is no longer in the leader's log
    net.restart(3)
    net.run(1.0)
    assert net.roles() == {1: LEADING, 2: FOLLOWING, 3: FOLLOWING}
    assert len(net.digests()) == 1 and len({n.rep.oplog.head_hash for n in net.nodes.values()}) == 1
    # From a wiped state dir too, and it keeps following live writes afterwards.
    net.crash(2)
    net.restart(2, empty=True)
    net.run(1.0)
    for op in ops[30:]:
        result_of(done(net, net[1].rep.propose(op)))
    assert net.heads() == {1: len(ops), 2: len(ops), 3: len(ops)} and len(net.digests()) == 1
    assert net[2].store.snapshot_index()[0][0] >= net[2].rep.oplog.base > 0
    assert all(node.store.orphans() == [] for node in net.nodes.values())


def test_a_follower_whose_log_was_compacted_past_a_new_leader_takes_its_snapshot():
    # Tracker 2 has 17 entries the new leader (1) lacks, and has compacted the
    # part where the two logs still agreed: it cannot cut back to it, so it
    # takes tracker 1's snapshot and proposes again the extra operations it
    # still holds. Those compacted away are lost (docs/replication.rst 3.3).
    net = Net(2, snapshot_every=5)
    ops = history()
    for op in ops[:3]:
        result_of(done(net, net[1].rep.propose(op)))
    net.crash(1)
    node2 = net[2]
    for i in range(17):                     # as if an earlier leader had reached only 2
        op = {"op": "create_user", "user": "v%d" % i, "password_record": "r", "oid": "9-%d" % i}
        node2.rep.oplog.append(op)
        node2.state.apply(op)
    assert node2.rep.oplog.base == 15
    net.crash(2)
    net.restart(1)
    net.run(3.0)                            # 1 leads alone
    net.restart(2)
    net.run(2.0)
    assert net.roles() == {1: LEADING, 2: FOLLOWING}
    assert len(net.digests()) == 1 and net[2].store.orphans() == []
    assert sorted(u for u in net[1].state.users if u.startswith("v")) == ["v%d" % i for i in range(12, 17)]
    assert net.heads() == {1: 3 + 5, 2: 3 + 5}


def done(net, d, seconds=0.0):
    """Deliver everything (and let ``seconds`` pass): the Deferred of a write has fired."""
    net.run(seconds) if seconds else net.flush()
    return d


def test_probes_stop_at_the_compacted_part_and_unknown_positions_are_not_shared(tmp_path):
    store = SQLiteStore(str(tmp_path / "t.sqlite3"))
    log = OpLog(store)
    Compactor(log, sync_thread, 10)
    for op in history()[:35]:
        log.append(op)
    assert log.base == 20 and log.snapshot_seq == 30
    probes = log.probes()
    assert [20, log.hash_at(20)] in probes and min(p[0] for p in probes if p[0]) == 20
    assert log.hash_at(19) is None and log.hash_at(0) is not None
    assert log.last_shared([[15, "x" * 64], [0, log.hash_at(0)]]) == 0
    store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_random_interleavings_with_snapshots_every_three_operations_converge(steps):
    net = Net(3, snapshot_every=3)
    net.play(steps)
    assert len(net.digests()) == 1, net.roles()
    assert sorted(net.roles().values()) == [FOLLOWING, FOLLOWING, LEADING]
    assert len({n.rep.oplog.head_hash for n in net.nodes.values()}) == 1
    assert all(node.store.orphans() == [] for node in net.nodes.values())


def test_a_state_restored_from_a_snapshot_at_any_point_goes_on_like_the_live_one():
    from mbt.tracker import snapshot
    ops = history()
    live = TrackerState()
    for op in ops:
        live.apply(op)
    for cut in range(len(ops) + 1):
        before = TrackerState()
        for op in ops[:cut]:
            before.apply(op)
        restored = TrackerState()
        snapshot.loads(restored, snapshot.dumps(before))
        for op in ops[cut:]:
            restored.apply(op)      # leaving groups, sharers dropping out: the same as live
        assert restored.digest() == live.digest(), cut
