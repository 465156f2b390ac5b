"""The PostgreSQL side of a tracker fleet: the shared operation log, snapshots, leases.

Blocking code, run only in the tracker's database thread pool
(:mod:`mbt.tracker.pgfleet` drives it from the reactor). The schema:

``mbt_head(id=1, seq)``
    the sequence number of the last operation; appends lock this row
    (``SELECT ... FOR UPDATE``), so the database serialises every write of the
    fleet and sequence numbers are gap-free and commit in order.
``mbt_log(seq, op)``
    the operations after the newest snapshot (older ones are deleted).
``mbt_snapshot(seq, state)``
    the whole state (durable and sessions) after operation ``seq``.
``mbt_trackers(number, alive_until)``
    presence leases: each tracker renews its row every second.
``mbt_login_strikes(key, strikes, last)``
    the login throttle's counters (:mod:`mbt.tracker.pglogin`), one budget
    for the whole fleet; ``last`` in seconds of the database's clock.

Times come from the database clock (``now()``), so trackers' clocks may differ.
Passwords come from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq) and are
never logged: :func:`safe_url` is what the tracker prints.
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from mbt.errors import DatabaseUnavailable

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS mbt_head (id integer PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL)",
    "INSERT INTO mbt_head VALUES (1, 0) ON CONFLICT DO NOTHING",
    "CREATE TABLE IF NOT EXISTS mbt_log (seq bigint PRIMARY KEY, op text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mbt_snapshot (seq bigint PRIMARY KEY, state text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mbt_trackers (number integer PRIMARY KEY,"
    " alive_until timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS mbt_login_strikes (key text PRIMARY KEY,"
    " strikes double precision NOT NULL, last double precision NOT NULL)",
]

#: Serialises schema creation when several trackers start on an empty database at once.
_SCHEMA_LOCK = 0x6D6274


def is_url(value: str) -> bool:
    """Is ``value`` a PostgreSQL connection URL?"""
    return isinstance(value, str) and value.split("://", 1)[0] in ("postgresql", "postgres")


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://?"
    netloc = parts.netloc
    if "@" in netloc:
        cred, host = netloc.rsplit("@", 1)
        netloc = cred.split(":", 1)[0] + "@" + host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _dumps(op: dict) -> str:
    return json.dumps(op, sort_keys=True, separators=(",", ":"))


class PgLog:
    """One connection to the fleet's database and the statements the tracker needs.

    Every method runs one transaction (or, for :meth:`lock_tail` +
    :meth:`append`/:meth:`rollback`, one transaction across two calls); a
    failure of the connection raises :class:`DatabaseUnavailable` and the next
    call reconnects.
    """

    def __init__(self, url: str, connect_timeout: float = 3.0, statement_timeout_ms: int = 5000) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self._conn = None

    # -- connection ----------------------------------------------------------

    def _connection(self):
        import psycopg
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self.close()
        try:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)),
                options="-c statement_timeout=%d -c lock_timeout=%d"
                        % (self.statement_timeout_ms, self.statement_timeout_ms))
        except psycopg.Error:
            raise DatabaseUnavailable()
        return self._conn

    def _run(self, fn, retry: bool = True):
        """Run ``fn(conn)``; turn connection-level failures into DatabaseUnavailable.

        A connection that died since its last use (the database restarted) is
        replaced and ``fn`` tried once more, if ``retry``: only for calls that
        start their own transaction, never in the middle of one."""
        import psycopg
        fresh = self._conn is None or self._conn.closed or self._conn.broken
        conn = self._connection()
        try:
            return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.close()
            if fresh or not retry:
                raise DatabaseUnavailable()
        conn = self._connection()
        try:
            return fn(conn)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self.close()
            raise DatabaseUnavailable()

    def close(self) -> None:
        """Drop the connection (the next call opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # -- schema and start-up ---------------------------------------------------

    def ensure_schema(self) -> None:
        """Create the tables if they are missing (safe when trackers start together)."""
        def run(conn):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for stmt in SCHEMA:
                    conn.execute(stmt)
        self._run(run)

    def load(self) -> Tuple[int, Optional[str], List[Tuple[int, str]]]:
        """``(snapshot_seq, snapshot_text_or_None, [(seq, op_text)...])``: everything
        needed to rebuild the state, read in one consistent transaction."""
        def run(conn):
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                row = conn.execute("SELECT seq, state FROM mbt_snapshot ORDER BY seq DESC LIMIT 1").fetchone()
                base, text = (row[0], row[1]) if row else (0, None)
                rows = conn.execute("SELECT seq, op FROM mbt_log WHERE seq > %s ORDER BY seq",
                                    (base,)).fetchall()
            return base, text, rows
        return self._run(run)

    # -- reading and writing the log ------------------------------------------

    def lock_tail(self, after: int) -> Tuple[int, List[Tuple[int, str]]]:
        """Begin a write: lock the head and return ``(head, operations after `after`)``.

        The transaction stays open until :meth:`append` or :meth:`rollback`."""
        def run(conn):
            conn.execute("BEGIN")
            try:
                head = conn.execute("SELECT seq FROM mbt_head WHERE id = 1 FOR UPDATE").fetchone()[0]
                rows = conn.execute("SELECT seq, op FROM mbt_log WHERE seq > %s ORDER BY seq",
                                    (after,)).fetchall() if head > after else []
            except Exception:
                self._rollback_quietly(conn)
                raise
            if head > after and (not rows or rows[0][0] != after + 1 or rows[-1][0] != head):
                self._rollback_quietly(conn)
                raise LookupError("operations after %d were compacted" % after)
            return head, rows
        return self._run(run)

    def append_many(self, first: int, ops: List[dict]) -> None:
        """Finish a write begun by :meth:`lock_tail`: store ``ops`` as ``first``,
        ``first + 1``, ... and commit them together (a group commit)."""
        rows = [(first + i, _dumps(op)) for i, op in enumerate(ops)]

        def run(conn):
            try:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO mbt_log (seq, op) VALUES (%s, %s)", rows)
                conn.execute("UPDATE mbt_head SET seq = %s WHERE id = 1", (first + len(rows) - 1,))
                conn.execute("COMMIT")
            except Exception:
                self._rollback_quietly(conn)
                raise
        self._run(run, retry=False)

    def rollback(self) -> None:
        """Abandon a write begun by :meth:`lock_tail` (its operation was refused)."""
        def run(conn):
            conn.execute("ROLLBACK")
        self._run(run, retry=False)

    @staticmethod
    def _rollback_quietly(conn) -> None:
        try:
            conn.execute("ROLLBACK")
        except Exception:
            pass

    def save_snapshot(self, seq: int, text: str, keep_log: int = 1000) -> None:
        """Store the state after ``seq``; drop older snapshots and log rows no longer needed.

        ``keep_log`` operations before the snapshot stay, so trackers a little
        behind catch up from the log instead of reloading."""
        def run(conn):
            with conn.transaction():
                conn.execute("INSERT INTO mbt_snapshot (seq, state) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (seq, text))
                conn.execute("DELETE FROM mbt_snapshot WHERE seq < %s", (seq,))
                conn.execute("DELETE FROM mbt_log WHERE seq <= %s", (seq - keep_log,))
        self._run(run)

    def import_snapshot(self, text: str) -> int:
        """Seed an empty database with a state; return its sequence number.

        Raises ValueError if the database already holds operations."""
        def run(conn):
            with conn.transaction():
                head = conn.execute("SELECT seq FROM mbt_head WHERE id = 1 FOR UPDATE").fetchone()[0]
                if head != 0:
                    raise ValueError("the database already holds %d operations; import needs an empty one"
                                     % head)
                conn.execute("INSERT INTO mbt_snapshot (seq, state) VALUES (1, %s)", (text,))
                conn.execute("UPDATE mbt_head SET seq = 1 WHERE id = 1")
            return 1
        return self._run(run)

    # -- the login budget ---------------------------------------------------------

    def login_step(self, keys: List[tuple], step: Callable[[object, float], object],
                   throttle_factory: Callable[[], object]):
        """One step of the fleet's login budget, in one transaction.

        The counters ``keys`` are locked (created first if missing, so that
        concurrent steps on the same counters queue), loaded into a fresh
        throttle from ``throttle_factory()``, and ``step(throttle, now)`` runs
        with ``now`` from the database's clock; the counters are written back
        (deleted when empty) and ``step``'s result returned. Decayed counters
        of the whole table are deleted now and then.
        """
        names = sorted("\x1f".join(key) for key in keys)

        def run(conn):
            with conn.transaction():
                now = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()[0]
                conn.execute("INSERT INTO mbt_login_strikes (key, strikes, last)"
                             " SELECT unnest(%s::text[]), 0, 0 ON CONFLICT DO NOTHING", (names,))
                rows = conn.execute("SELECT key, strikes, last FROM mbt_login_strikes WHERE key = ANY(%s)"
                                    " ORDER BY key FOR UPDATE", (names,)).fetchall()
                throttle = throttle_factory()
                for name, strikes, last in rows:
                    if strikes > 0:
                        throttle.set_counter(tuple(name.split("\x1f")), strikes, last)
                result = step(throttle, now)
                for name in names:
                    counter = throttle.counter(tuple(name.split("\x1f")))
                    if counter is None or counter[0] <= 0:
                        conn.execute("DELETE FROM mbt_login_strikes WHERE key = %s", (name,))
                    else:
                        conn.execute("UPDATE mbt_login_strikes SET strikes = %s, last = %s WHERE key = %s",
                                     (counter[0], counter[1], name))
                if int(now) % 60 == 0:
                    # In the first second of each minute: counters old enough to have
                    # decayed to nothing go (strikes decay one per ``decay`` seconds).
                    conn.execute("DELETE FROM mbt_login_strikes WHERE last + strikes * %s < %s",
                                 (throttle.decay, now))
            return result
        return self._run(run)

    # -- presence leases ---------------------------------------------------------

    def heartbeat(self, number: int, lease: float) -> List[int]:
        """Renew tracker ``number``'s lease; return the trackers whose lease ran out."""
        def run(conn):
            with conn.transaction():
                conn.execute("INSERT INTO mbt_trackers (number, alive_until)"
                             " VALUES (%s, now() + make_interval(secs => %s))"
                             " ON CONFLICT (number) DO UPDATE SET alive_until = EXCLUDED.alive_until",
                             (number, lease))
                rows = conn.execute("SELECT number FROM mbt_trackers WHERE alive_until < now()").fetchall()
            return [r[0] for r in rows]
        return self._run(run)

    def head(self) -> int:
        """The sequence number of the last operation."""
        return self._run(lambda conn: conn.execute("SELECT seq FROM mbt_head").fetchone()[0])
