"""Group commit in a PostgreSQL fleet (mbt.tracker.pgfleet): a real database, the real reactor.

Writes queued while a transaction is in flight go together in the next one;
each is validated in order and answered with its own result, and a refused
one neither rolls back nor half-applies the others.
"""

import psycopg
import pytest_twisted
from twisted.internet import defer, reactor

from mbt.errors import GroupExists, UserExists
from mbt.tracker.pgfleet import PgFleet
from mbt.tracker.state import TrackerState


def _user(name):
    return {"op": "create_user", "user": name, "password_record": "record-of-" + name}


def _group(owner, group):
    return {"op": "create_group", "user": owner, "group": group}


def _outcome(result):
    ok, value = result
    return value if ok else type(value.value)


@pytest_twisted.inlineCallbacks
def test_a_batch_with_refused_ops_answers_each_client_and_commits_the_others(pg_url):
    fleet = PgFleet(1, TrackerState(), pg_url, reactor)
    fleet.load()
    fleet.start()       # its presence_reset goes first and alone: what follows queues behind it
    try:
        ops = [_user("alice"), _user("bob"), _user("bob"), _group("bob", "club"),
               _group("alice", "club"), _group("alice", "chess"), _user("carol")]
        results = yield defer.DeferredList([fleet.propose(op) for op in ops], consumeErrors=True)
        assert [_outcome(r) for r in results] == [
            {"user": "alice"}, {"user": "bob"}, UserExists, {"group": "club", "owner": "bob"},
            GroupExists, {"group": "chess", "owner": "alice"}, {"user": "carol"}]
        with psycopg.connect(pg_url) as conn:
            rows = conn.execute("SELECT seq, op::json->>'op', op::json->>'user', op::json->>'group',"
                                " xmin::text FROM mbt_log ORDER BY seq").fetchall()
            head = conn.execute("SELECT seq FROM mbt_head").fetchone()[0]
        logged = [(r[1], r[2], r[3]) for r in rows if r[1] != "presence_reset"]
        assert logged == [("create_user", "alice", None), ("create_user", "bob", None),
                          ("create_group", "bob", "club"), ("create_group", "alice", "chess"),
                          ("create_user", "carol", None)]
        assert head == rows[-1][0] == fleet.head
        assert [r[0] for r in rows] == list(range(rows[0][0], head + 1))     # gap-free
        assert len({r[4] for r in rows if r[1] != "presence_reset"}) == 1     # one transaction
        # Another tracker reads exactly what this one answered.
        other = PgFleet(2, TrackerState(), pg_url, reactor)
        other.load()
        assert other.state.digest() == fleet.state.digest()
        assert other.state.groups["club"].owner == "bob"
        other.stop()
    finally:
        fleet.stop()


@pytest_twisted.inlineCallbacks
def test_a_batch_whose_ops_are_all_refused_writes_nothing_and_the_next_one_works(pg_url):
    fleet = PgFleet(1, TrackerState(), pg_url, reactor)
    fleet.load()
    fleet.start()
    try:
        yield fleet.propose(_user("alice"))
        head = fleet.head
        results = yield defer.DeferredList([fleet.propose(_user("alice")), fleet.propose(_group("zed", "g"))],
                                           consumeErrors=True)
        assert [ok for ok, _ in results] == [False, False]
        assert fleet.head == head
        assert (yield fleet.propose(_group("alice", "g"))) == {"group": "g", "owner": "alice"}
        with psycopg.connect(pg_url) as conn:
            assert conn.execute("SELECT seq FROM mbt_head").fetchone()[0] == head + 1
    finally:
        fleet.stop()
