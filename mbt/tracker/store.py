"""Durable storage of the tracker's operation log.

The tracker's durable state is the result of applying its operations in order
(see :mod:`mbt.tracker.state`), so the store only has to keep an append-only
log of operations. The default store is SQLite in WAL mode; each append is one
small transaction (tens of microseconds), short enough for the reactor thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Iterator, List, Tuple


class MemoryStore:
    """An operation log kept in memory (tests, throwaway trackers)."""

    def __init__(self) -> None:
        self._ops: List[dict] = []

    def append(self, op: dict) -> int:
        """Append an operation; return its sequence number (1-based)."""
        self._ops.append(json.loads(json.dumps(op)))
        return len(self._ops)

    def load(self) -> Iterator[Tuple[int, dict]]:
        """Every stored operation with its sequence number, in order."""
        return iter(list(enumerate(self._ops, 1)))

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
                         " seq INTEGER PRIMARY KEY, op TEXT NOT NULL)")
        for suffix in ("-wal", "-shm"):
            try:
                os.chmod(path + suffix, 0o600)
            except OSError:
                pass

    def append(self, op: dict) -> int:
        """Append an operation; return its sequence number."""
        cur = self._db.execute("INSERT INTO oplog (op) VALUES (?)",
                               (json.dumps(op, sort_keys=True, separators=(",", ":")),))
        return cur.lastrowid

    def load(self) -> Iterator[Tuple[int, dict]]:
        """Every stored operation with its sequence number, in order."""
        for seq, text in self._db.execute("SELECT seq, op FROM oplog ORDER BY seq"):
            yield seq, json.loads(text)

    def close(self) -> None:
        """Close the database."""
        self._db.close()
