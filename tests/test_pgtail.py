"""The read barrier's query over non-blocking libpq (mbt.tracker.pgtail), on a real PostgreSQL.

The reactor is Twisted's real one (the connection is a real socket the reactor
watches); every wait is bounded by the class's own timeout or the statement
timeout.
"""

import psycopg
import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from mbt.errors import DatabaseUnavailable
from mbt.tracker.pgstore import PgLog
from mbt.tracker.pgtail import PgTail, check_tail


def _log_ops(db: PgLog, count: int) -> int:
    for _ in range(count):
        head, _rows = db.lock_tail(db.head())
        db.append_many(head + 1, [{"op": "create_group", "user": "u", "group": "g%d" % (head + 1)}])
    return db.head()


def _tail(url, **kw) -> PgTail:
    return PgTail(url, reactor, lambda fn, *a: threads.deferToThread(fn, *a), **kw)


def test_check_tail_accepts_a_continuation_and_refuses_a_gap():
    assert check_tail(3, 0, [(4, "a"), (5, "b")]) == [(4, "a"), (5, "b")]
    assert check_tail(3, 2, []) == []
    with pytest.raises(LookupError):
        check_tail(3, 0, [(5, "b")])            # 4 was compacted away
    with pytest.raises(LookupError):
        check_tail(3, 7, [])                    # a snapshot beyond us replaced the rows


@pytest_twisted.inlineCallbacks
def test_tail_reads_the_rows_after_the_head_and_sees_compaction(pg_url):
    db = PgLog(pg_url)
    db.ensure_schema()
    head = _log_ops(db, 5)
    tail = _tail(pg_url)
    try:
        rows = yield tail.tail(0)
        assert [seq for seq, _ in rows] == [1, 2, 3, 4, 5] and head == 5
        assert '"group":"g3"' in rows[2][1]
        assert (yield tail.tail(5)) == []
        assert [seq for seq, _ in (yield tail.tail(3, limit=1))] == [4]
        _log_ops(db, 1)
        assert [seq for seq, _ in (yield tail.tail(5))] == [6]     # the same connection, reused
        db.save_snapshot(6, "{}", keep_log=2)                      # rows 1-4 deleted
        with pytest.raises(LookupError):
            yield tail.tail(0)
        assert [seq for seq, _ in (yield tail.tail(4))] == [5, 6]
    finally:
        tail.close()
        db.close()
    with pytest.raises(DatabaseUnavailable):
        yield tail.tail(0)                                         # closed for good


@pytest_twisted.inlineCallbacks
def test_a_killed_connection_fails_at_most_one_call_and_the_next_reconnects(pg_url):
    db = PgLog(pg_url)
    db.ensure_schema()
    _log_ops(db, 2)
    tail = _tail(pg_url)
    try:
        assert len((yield tail.tail(0))) == 2
        pid = tail._pgconn.backend_pid
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append(len((yield tail.tail(0))))
            except DatabaseUnavailable:
                outcomes.append("unavailable")
        assert outcomes[-1] == 2 and outcomes.count("unavailable") <= 1
        assert tail._pgconn.backend_pid != pid
    finally:
        tail.close()
        db.close()


@pytest_twisted.inlineCallbacks
def test_a_query_held_up_fails_fast_and_the_next_call_works(pg_url):
    db = PgLog(pg_url)
    db.ensure_schema()
    _log_ops(db, 1)
    locker = psycopg.connect(pg_url)
    quick = _tail(pg_url, timeout=0.5)                     # our own deadline
    capped = _tail(pg_url, statement_timeout_ms=300)       # the server's statement timeout
    try:
        for tail in (quick, capped):
            yield tail.tail(0)                              # connected, statement prepared
        locker.execute("LOCK TABLE mbt_log IN ACCESS EXCLUSIVE MODE")   # readers of the log wait
        for tail in (quick, capped):
            began = reactor.seconds()
            with pytest.raises(DatabaseUnavailable):
                yield tail.tail(0)
            assert reactor.seconds() - began < 3.0
        locker.rollback()
        for tail in (quick, capped):
            assert [seq for seq, _ in (yield tail.tail(0))] == [1]
    finally:
        locker.close()
        quick.close()
        capped.close()
        db.close()
