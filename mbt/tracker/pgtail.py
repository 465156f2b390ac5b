"""The read barrier's query on the reactor thread: the log's tail over non-blocking libpq.

Every request a tracker of a PostgreSQL fleet answers waits for a *catch-up*
(:meth:`mbt.tracker.pgfleet.PgFleet.wait_serving`): one query for the log rows
after the tracker's head. That query runs about once per batch of requests,
so at thousands of requests per second it is the fleet's most frequent
database call. :class:`PgTail` sends it from the reactor thread on a libpq
connection in non-blocking mode and reads the answer when the socket becomes
readable, instead of handing a blocking psycopg call to the thread pool and
back: no thread hop, no waker write, no GIL hand-over per catch-up (measured
in docs/performance.rst, "Trackers at 10,000 peers, evening 2026-12-05").

The query is one prepared statement that also reports the newest snapshot,
so a catch-up is one round trip, read in one consistent snapshot of the
database. Only the (rare) connect and prepare block; they run in the thread
pool. Each call either fires with the rows or fails with
:class:`~mbt.errors.DatabaseUnavailable` (connection lost, statement timeout,
no answer within ``timeout`` seconds) or :class:`LookupError` (the rows were
compacted away: the caller reloads), exactly like :meth:`PgLog.tail`.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from mbt.errors import DatabaseUnavailable

log = Logger(namespace="mbt.tracker.pgtail")

#: The rows after $1 (at most $2), plus one row (seq -1) holding the newest snapshot's seq.
TAIL_SQL = (b"SELECT seq, op FROM (SELECT seq, op FROM mbt_log WHERE seq > $1 ORDER BY seq LIMIT $2) AS t"
            b" UNION ALL SELECT -1, coalesce(max(seq), 0)::text FROM mbt_snapshot ORDER BY 1")
STATEMENT = b"mbt_tail"


def check_tail(after: int, snapshot: int, rows: List[Tuple[int, str]]) -> List[Tuple[int, str]]:
    """``rows`` if they continue the log right after ``after``; LookupError if compacted.

    ``snapshot`` is the newest snapshot's sequence number, read with the rows."""
    if rows and rows[0][0] != after + 1:
        raise LookupError("operations %d-%d were compacted" % (after + 1, rows[0][0] - 1))
    if not rows and snapshot > after:
        raise LookupError("operations after %d were compacted" % after)
    return rows


def conninfo(url: str, connect_timeout: float, statement_timeout_ms: int) -> bytes:
    """libpq's connection string for ``url`` with the tracker's timeouts."""
    from psycopg.conninfo import make_conninfo
    return make_conninfo(url, connect_timeout=max(1, int(connect_timeout)),
                         options="-c statement_timeout=%d" % statement_timeout_ms).encode()


def connect(url: str, connect_timeout: float = 3.0, statement_timeout_ms: int = 5000):
    """A libpq connection with the tail statement prepared (blocking: run in a pool thread)."""
    from psycopg import pq
    try:
        pgconn = pq.PGconn.connect(conninfo(url, connect_timeout, statement_timeout_ms))
    except Exception:
        raise DatabaseUnavailable()
    if pgconn.status != pq.ConnStatus.OK:
        pgconn.finish()
        raise DatabaseUnavailable()
    res = pgconn.prepare(STATEMENT, TAIL_SQL)
    if res.status != pq.ExecStatus.COMMAND_OK:
        pgconn.finish()
        raise DatabaseUnavailable()
    pgconn.nonblocking = 1
    return pgconn


class PgTail:
    """One non-blocking connection that answers :meth:`tail`, one query at a time.

    ``reactor`` must provide ``addReader``/``addWriter``/``callLater``;
    ``in_pool(fn, *args)`` runs the blocking connect. The caller (the fleet's
    catch-up) never has two calls outstanding; a second concurrent call fails.
    """

    def __init__(self, url: str, reactor, in_pool: Callable, connect_timeout: float = 3.0,
                 statement_timeout_ms: int = 5000, timeout: float = 10.0) -> None:
        self.url = url
        self.reactor = reactor
        self.in_pool = in_pool
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.timeout = timeout
        self._pgconn = None
        self._fd = -1
        self._pending: Optional[defer.Deferred] = None
        self._after = 0
        self._results: list = []
        self._timer = None
        self._closed = False

    # -- the reactor's side (IReadDescriptor / IWriteDescriptor) ------------------------

    def fileno(self) -> int:
        """The connection's socket."""
        return self._fd

    def logPrefix(self) -> str:
        """For Twisted's logs."""
        return "PgTail"

    def connectionLost(self, reason) -> None:
        """The reactor dropped the descriptor (shutdown): fail a waiting call."""
        self._lost()

    def doWrite(self) -> None:
        """Send what libpq could not send at once."""
        try:
            if self._pgconn.flush() == 0:
                self.reactor.removeWriter(self)
        except Exception:
            self._lost()

    def doRead(self) -> None:
        """Read what arrived; finish the call when its last result is in."""
        if self._pgconn is None:
            return
        try:
            self._pgconn.consume_input()
            while self._pending is not None and not self._pgconn.is_busy():
                res = self._pgconn.get_result()
                if res is None:
                    self._finish()
                    return
                self._results.append(res)
            self._pgconn.notifies()     # none are expected; keep libpq's queue empty
        except Exception:
            self._lost()

    # -- calls ------------------------------------------------------------------------------

    def tail(self, after: int, limit: int = 20000) -> defer.Deferred:
        """Fires with the operations after ``after`` (oldest first, at most ``limit``)."""
        if self._closed:
            return defer.fail(DatabaseUnavailable())
        if self._pending is not None:
            return defer.fail(RuntimeError("PgTail.tail called while a query is outstanding"))
        d = self._pending = defer.Deferred()
        self._after = after
        if self._pgconn is None:
            connecting = self.in_pool(connect, self.url, self.connect_timeout, self.statement_timeout_ms)
            connecting.addCallbacks(lambda pgconn: self._connected(pgconn, after, limit), self._fail)
        else:
            self._send(after, limit)
        return d

    def close(self) -> None:
        """Drop the connection; a waiting call fails."""
        self._closed = True
        self._lost()

    def _connected(self, pgconn, after: int, limit: int) -> None:
        if self._closed:
            pgconn.finish()
            self._fail(DatabaseUnavailable())
            return
        self._pgconn = pgconn
        # The reactor watches a copy of the socket: libpq closes its own descriptor when it
        # finds the connection broken, and the reactor must never see that number vanish.
        self._fd = os.dup(pgconn.socket)
        self.reactor.addReader(self)
        self._send(after, limit)

    def _send(self, after: int, limit: int) -> None:
        self._results = []
        try:
            ok = self._pgconn.send_query_prepared(STATEMENT, [b"%d" % after, b"%d" % limit])
            del ok
            if self._pgconn.flush() != 0:
                self.reactor.addWriter(self)
        except Exception:
            self._lost()
            return
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.warn("no answer from the tracker database within {t} s; reconnecting", t=self.timeout)
        self._lost()

    def _finish(self) -> None:
        from psycopg import pq
        results, self._results = self._results, []
        if len(results) != 1 or results[0].status != pq.ExecStatus.TUPLES_OK:
            # A statement timeout or another error: this catch-up failed; the connection may
            # still be fine, but a fresh one costs one pool call and clears any doubt.
            self._lost()
            return
        res = results[0]
        snapshot, rows = 0, []
        for i in range(res.ntuples):
            seq = int(res.get_value(i, 0))
            text = res.get_value(i, 1).decode()
            if seq < 0:
                snapshot = int(text)
            else:
                rows.append((seq, text))
        res.clear()
        try:
            value = check_tail(self._after, snapshot, rows)
        except LookupError as e:
            self._fail(e)
            return
        self._succeed(value)

    def _lost(self) -> None:
        pgconn, self._pgconn = self._pgconn, None
        if pgconn is not None:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            os.close(self._fd)
            self._fd = -1
            try:
                pgconn.finish()
            except Exception:
                pass
        self._fail(DatabaseUnavailable())

    def _settle(self) -> Optional[defer.Deferred]:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        d, self._pending = self._pending, None
        return d

    def _succeed(self, value) -> None:
        d = self._settle()
        if d is not None:
            d.callback(value)

    def _fail(self, failure) -> None:
        d = self._settle()
        if d is not None:
            d.errback(failure)
