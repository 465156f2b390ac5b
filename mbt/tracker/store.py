"""Durable storage of the tracker's operation log.

The tracker's durable state is the result of applying its operations in order
(see :mod:`mbt.tracker.state`), so the store only has to keep an append-only
log of operations, each with its sequence number and the hash-chain value that
:mod:`mbt.tracker.oplog` computes. Two rarer changes exist for replication:
truncating the log's tail when it diverged from the other trackers' history,
and keeping those removed operations as *orphans* until they are proposed
again (both in one transaction, so a crash never loses them).

The default store is SQLite in WAL mode; each append is one small transaction
(tens of microseconds), short enough for the reactor thread. Databases written
before replication existed (``oplog(seq, op)``) are migrated in place: the hash
column is added and filled in at the next load.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Iterable, Iterator, List, Optional, Tuple

#: One log entry as stored: (sequence number, operation, hash or None if not yet computed).
Entry = Tuple[int, dict, Optional[str]]


def _dumps(op: dict) -> str:
    return json.dumps(op, sort_keys=True, separators=(",", ":"))


class MemoryStore:
    """An operation log kept in memory (tests, throwaway trackers)."""

    def __init__(self) -> None:
        self._ops: List[Tuple[dict, Optional[str]]] = []
        self._orphans: List[Tuple[int, dict]] = []
        self._orphan_ids = 0

    def append(self, op: dict) -> int:
        """Append an operation; return its sequence number (1-based)."""
        self._ops.append((json.loads(_dumps(op)), None))
        return len(self._ops)

    def append_entry(self, seq: int, op: dict, digest: str) -> None:
        """Append an operation at ``seq`` (which must be the next one) with its hash."""
        assert seq == len(self._ops) + 1, (seq, len(self._ops))
        self._ops.append((json.loads(_dumps(op)), digest))

    def load(self) -> Iterator[Tuple[int, dict]]:
        """Every stored operation with its sequence number, in order."""
        return iter([(seq, op) for seq, op, _h in self.load_entries()])

    def load_entries(self) -> Iterator[Entry]:
        """Every entry (seq, op, hash-or-None), in order."""
        return iter([(i, json.loads(_dumps(op)), h) for i, (op, h) in enumerate(self._ops, 1)])

    def set_hashes(self, pairs: Iterable[Tuple[int, str]]) -> None:
        """Record computed hashes of entries stored without one."""
        for seq, digest in pairs:
            self._ops[seq - 1] = (self._ops[seq - 1][0], digest)

    def read(self, first: int, limit: int) -> List[Entry]:
        """Up to ``limit`` entries from sequence number ``first`` on."""
        out = []
        for seq in range(max(first, 1), min(first + limit, len(self._ops) + 1)):
            op, digest = self._ops[seq - 1]
            out.append((seq, json.loads(_dumps(op)), digest))
        return out

    def truncate(self, after: int) -> List[dict]:
        """Remove every entry after ``after``; keep them as orphans; return them."""
        removed = [op for op, _h in self._ops[after:]]
        del self._ops[after:]
        for op in removed:
            self._orphan_ids += 1
            self._orphans.append((self._orphan_ids, op))
        return [json.loads(_dumps(op)) for op in removed]

    def orphans(self) -> List[Tuple[int, dict]]:
        """Operations removed by :meth:`truncate` and not yet re-proposed, oldest first."""
        return [(i, json.loads(_dumps(op))) for i, op in self._orphans]

    def remove_orphan(self, orphan_id: int) -> None:
        """Forget an orphan (it was re-proposed, or refused)."""
        self._orphans = [(i, op) for i, op in self._orphans if i != orphan_id]

    def close(self) -> None:
        """Nothing to release."""


class SQLiteStore:
    """An operation log in ``<state_dir>/tracker.sqlite3`` (WAL, file mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        new = not os.path.exists(path)
        if new:
            # Create the file ourselves so it is 0600 from the first byte.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last transactions but never
        # corrupts the database; a process crash loses nothing.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS oplog ("
                         " seq INTEGER PRIMARY KEY, op TEXT NOT NULL, hash TEXT)")
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(oplog)")]
        if "hash" not in columns:
            # A database from before replication: the hashes are filled in by the next load.
            self._db.execute("ALTER TABLE oplog ADD COLUMN hash TEXT")
        self._db.execute("CREATE TABLE IF NOT EXISTS orphans ("
                         " id INTEGER PRIMARY KEY, op TEXT NOT NULL)")
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(path + suffix, 0o600)
            except OSError:
                pass

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

    def load_entries(self) -> Iterator[Entry]:
        """Every entry (seq, op, hash-or-None), in order."""
        for seq, text, digest in self._db.execute("SELECT seq, op, hash FROM oplog ORDER BY seq"):
            yield seq, json.loads(text), digest

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
        """Move every entry after ``after`` to the orphans table (atomically); return them."""
        with self._transaction():
            rows = self._db.execute("SELECT op FROM oplog WHERE seq > ? ORDER BY seq", (after,)).fetchall()
            self._db.executemany("INSERT INTO orphans (op) VALUES (?)", rows)
            self._db.execute("DELETE FROM oplog WHERE seq > ?", (after,))
        return [json.loads(text) for (text,) in rows]

    def orphans(self) -> List[Tuple[int, dict]]:
        """Operations removed by :meth:`truncate` and not yet re-proposed, oldest first."""
        return [(i, json.loads(text)) for i, text in self._db.execute("SELECT id, op FROM orphans ORDER BY id")]

    def remove_orphan(self, orphan_id: int) -> None:
        """Forget an orphan (it was re-proposed, or refused)."""
        self._db.execute("DELETE FROM orphans WHERE id = ?", (orphan_id,))

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
