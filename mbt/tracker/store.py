"""Durable storage of the tracker's operation log and its snapshots.

The tracker's durable state is the result of applying its operations in order
(see :mod:`mbt.tracker.state`), so the store keeps an append-only log of
operations, each with its sequence number and the hash-chain value that
:mod:`mbt.tracker.oplog` computes. Two rarer changes exist for replication:
truncating the log's tail when it diverged from the other trackers' history,
and keeping those removed operations as *orphans* until they are proposed
again (both in one transaction, so a crash never loses them).

So that start-up does not grow with history, the store also keeps
*snapshots*: the durable state after operation ``seq`` (JSON, with a SHA-256
checksum of the text), see :mod:`mbt.tracker.compaction`. Saving one is a
single transaction that also drops what is no longer needed: every snapshot
but the two newest, and the operations up to the older of those two. So a
snapshot found damaged at start-up is dropped and the state rebuilt from the
one before it plus the operations after that.

The default store is SQLite in WAL mode; each append is one small transaction
(tens of microseconds), short enough for the reactor thread. Databases written
before replication existed (``oplog(seq, op)``) are migrated in place: the hash
column is added and filled in at the next load. Databases written before
snapshots existed get the (empty) table and are compacted after their first
load.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Iterable, Iterator, List, Optional, Tuple

#: One log entry as stored: (sequence number, operation, hash or None if not yet computed).
Entry = Tuple[int, dict, Optional[str]]

#: Snapshots kept: a damaged newest one leaves the one before it, and the log after it.
KEEP_SNAPSHOTS = 2


def _dumps(op: dict) -> str:
    return json.dumps(op, sort_keys=True, separators=(",", ":"))


def checksum(text: str) -> str:
    """The checksum stored with a snapshot's text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class SQLiteStore:
    """An operation log in ``<state_dir>/tracker.sqlite3`` (WAL, file mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not os.path.exists(path):
            # Create the file ourselves so it is 0600 from the first byte.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last transactions but never
        # corrupts the database; a process crash loses nothing.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._create_tables()
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(path + suffix, 0o600)
            except OSError:
                pass

    def _create_tables(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS oplog ("
                         " seq INTEGER PRIMARY KEY, op TEXT NOT NULL, hash TEXT)")
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(oplog)")]
        if "hash" not in columns:
            # A database from before replication: the hashes are filled in by the next load.
            self._db.execute("ALTER TABLE oplog ADD COLUMN hash TEXT")
        self._db.execute("CREATE TABLE IF NOT EXISTS orphans ("
                         " id INTEGER PRIMARY KEY, op TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS snapshots ("
                         " seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, state TEXT NOT NULL,"
                         " checksum TEXT NOT NULL)")

    def reader(self) -> "SQLiteStore":
        """A second connection to the same database, for another thread (snapshot building)."""
        return SQLiteStore(self.path)

    # -- the log ------------------------------------------------------------------

    def append(self, op: dict) -> int:
        """Append an operation; return its sequence number."""
        cur = self._db.execute("INSERT INTO oplog (op) VALUES (?)", (_dumps(op),))
        return cur.lastrowid

    def append_entry(self, seq: int, op: dict, digest: str) -> None:
        """Append an operation at ``seq`` with its hash (the caller keeps seq contiguous)."""
        self._db.execute("INSERT INTO oplog (seq, op, hash) VALUES (?, ?, ?)", (seq, _dumps(op), digest))

    def load(self) -> Iterator[Tuple[int, dict]]:
        """Every stored operation with its sequence number, in order."""
        for seq, op, _h in self.load_entries():
            yield seq, op

    def load_entries(self, after: int = 0) -> Iterator[Entry]:
        """Every stored entry (seq, op, hash-or-None) after ``after``, in order."""
        for seq, text, digest in self._db.execute("SELECT seq, op, hash FROM oplog WHERE seq > ? ORDER BY seq",
                                                  (after,)):
            yield seq, json.loads(text), digest

    def first_seq(self) -> Optional[int]:
        """The sequence number of the oldest stored operation (None if there is none)."""
        return self._db.execute("SELECT min(seq) FROM oplog").fetchone()[0]

    def set_hashes(self, pairs: Iterable[Tuple[int, str]]) -> None:
        """Record computed hashes of entries stored without one (one transaction)."""
        with self._transaction():
            self._db.executemany("UPDATE oplog SET hash = ? WHERE seq = ?",
                                 [(digest, seq) for seq, digest in pairs])

    def read(self, first: int, limit: int) -> List[Entry]:
        """Up to ``limit`` entries from sequence number ``first`` on."""
        rows = self._db.execute("SELECT seq, op, hash FROM oplog WHERE seq >= ? ORDER BY seq LIMIT ?",
                                (first, limit))
        return [(seq, json.loads(text), digest) for seq, text, digest in rows]

    def truncate(self, after: int) -> List[dict]:
        """Move every entry after ``after`` to the orphans table and drop the snapshots
        that include them (atomically); return the moved operations."""
        with self._transaction():
            rows = self._db.execute("SELECT op FROM oplog WHERE seq > ? ORDER BY seq", (after,)).fetchall()
            self._db.executemany("INSERT INTO orphans (op) VALUES (?)", rows)
            self._db.execute("DELETE FROM oplog WHERE seq > ?", (after,))
            self._db.execute("DELETE FROM snapshots WHERE seq > ?", (after,))
        return [json.loads(text) for (text,) in rows]

    # -- orphans ------------------------------------------------------------------

    def orphans(self) -> List[Tuple[int, dict]]:
        """Operations removed by :meth:`truncate` and not yet re-proposed, oldest first."""
        return [(i, json.loads(text)) for i, text in self._db.execute("SELECT id, op FROM orphans ORDER BY id")]

    def remove_orphan(self, orphan_id: int) -> None:
        """Forget an orphan (it was re-proposed, or refused)."""
        self._db.execute("DELETE FROM orphans WHERE id = ?", (orphan_id,))

    # -- snapshots ----------------------------------------------------------------

    def snapshot_index(self) -> List[Tuple[int, str]]:
        """(seq, hash of operation seq) of every stored snapshot, newest first."""
        return list(self._db.execute("SELECT seq, hash FROM snapshots ORDER BY seq DESC"))

    def snapshot_text(self, seq: int) -> Optional[str]:
        """The state text of the snapshot at ``seq``; None if missing or damaged (bad checksum)."""
        row = self._db.execute("SELECT state, checksum FROM snapshots WHERE seq = ?", (seq,)).fetchone()
        if row is None or not isinstance(row[0], str) or checksum(row[0]) != row[1]:
            return None
        return row[0]

    def drop_snapshot(self, seq: int) -> None:
        """Forget one snapshot (a damaged one)."""
        self._db.execute("DELETE FROM snapshots WHERE seq = ?", (seq,))

    def save_snapshot(self, seq: int, digest: str, text: str) -> bool:
        """Store the state after operation ``seq`` and compact, in one transaction.

        Nothing is stored (False) unless operation ``seq`` is still in the log
        with hash ``digest`` (the state was built from the log as it is) and
        the snapshot is newer than every stored one. Then all snapshots but
        the two newest, and the operations up to the older of those two, are
        deleted.
        """
        with self._transaction():
            row = self._db.execute("SELECT hash FROM oplog WHERE seq = ?", (seq,)).fetchone()
            newest = self._db.execute("SELECT max(seq) FROM snapshots").fetchone()[0]
            if row is None or row[0] != digest or (newest is not None and newest >= seq):
                return False
            self._db.execute("INSERT INTO snapshots (seq, hash, state, checksum) VALUES (?, ?, ?, ?)",
                             (seq, digest, text, checksum(text)))
            kept = [s for (s,) in self._db.execute("SELECT seq FROM snapshots ORDER BY seq DESC LIMIT ?",
                                                   (KEEP_SNAPSHOTS,))]
            if len(kept) == KEEP_SNAPSHOTS:
                self._db.execute("DELETE FROM snapshots WHERE seq < ?", (kept[-1],))
                self._db.execute("DELETE FROM oplog WHERE seq <= ?", (kept[-1],))
        return True

    def install_snapshot(self, seq: int, digest: str, text: str) -> List[dict]:
        """Replace the whole log by another tracker's snapshot at ``seq`` (one transaction).

        Our entries after ``seq`` become orphans (to be proposed again: they
        may be ones the other tracker lacks); the rest is dropped. Returns the
        orphaned operations.
        """
        with self._transaction():
            rows = self._db.execute("SELECT op FROM oplog WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
            self._db.executemany("INSERT INTO orphans (op) VALUES (?)", rows)
            self._db.execute("DELETE FROM oplog")
            self._db.execute("DELETE FROM snapshots")
            self._db.execute("INSERT INTO snapshots (seq, hash, state, checksum) VALUES (?, ?, ?, ?)",
                             (seq, digest, text, checksum(text)))
        return [json.loads(t) for (t,) in rows]

    # -- transactions ---------------------------------------------------------------

    def bulk(self):
        """A context manager holding many appends in one transaction (exports, imports)."""
        return self._transaction()

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False
        return _Tx()


class MemoryStore(SQLiteStore):
    """The same store in an in-memory SQLite database (tests, throwaway trackers)."""

    def __init__(self) -> None:
        self.path = ":memory:"
        self._db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._create_tables()

    def reader(self) -> "MemoryStore":
        """The store itself: an in-memory database has no second connection
        (its snapshots are built synchronously, in tests)."""
        return self

    def close(self) -> None:
        """Keep the data: a test "restarts" a tracker on the same store."""
