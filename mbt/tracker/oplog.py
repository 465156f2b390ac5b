"""The replicated operation log: durable operations numbered 1, 2, 3, ... in a hash chain.

Every tracker keeps the same log. Entry ``seq`` carries the operation and
``hash(seq) = SHA-256(hash(seq - 1) + "\\n" + canonical JSON of the operation)``
with ``hash(0) = GENESIS``. Two trackers whose hashes at ``seq`` are equal have
identical logs up to ``seq``; so comparing a few hashes tells where two logs
diverge (see :meth:`OpLog.probes`). The log sits on top of a store
(:mod:`mbt.tracker.store`) and keeps only the hashes and an index of operation
ids (``oid``) in memory.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, List, Optional, Sequence

from twisted.logger import Logger

from mbt.errors import ConfigError

log = Logger(namespace="mbt.tracker.oplog")

GENESIS = "0" * 64


class LogMismatch(Exception):
    """An entry does not continue this log (wrong sequence number or hash)."""


def canonical(op: dict) -> bytes:
    """The bytes an operation is hashed as: sorted keys, compact, ASCII-only JSON."""
    return json.dumps(op, sort_keys=True, separators=(",", ":")).encode("ascii")


def chain_hash(previous: str, op: dict) -> str:
    """The hash of an entry holding ``op`` after an entry hashed ``previous``."""
    return hashlib.sha256(previous.encode("ascii") + b"\n" + canonical(op)).hexdigest()


class OpLog:
    """The operation log of one tracker: sequence numbers, hash chain, op-id index."""

    def __init__(self, store) -> None:
        self.store = store
        self._hashes: List[str] = [GENESIS]     # index = sequence number
        self._oids: Dict[str, int] = {}

    @property
    def head(self) -> int:
        """Sequence number of the last entry (0 when empty)."""
        return len(self._hashes) - 1

    @property
    def head_hash(self) -> str:
        """Hash of the last entry (GENESIS when empty)."""
        return self._hashes[-1]

    def hash_at(self, seq: int) -> Optional[str]:
        """Hash of entry ``seq`` (GENESIS for 0), or None beyond the head."""
        return self._hashes[seq] if 0 <= seq < len(self._hashes) else None

    def seq_of(self, oid: object) -> Optional[int]:
        """Where the operation with id ``oid`` sits in the log, if it does."""
        return self._oids.get(oid) if isinstance(oid, str) else None

    def load(self, apply: Callable[[dict], None]) -> int:
        """Read the stored log, checking its chain, calling ``apply(op)`` for each; return the count.

        Entries stored without a hash (a database from before replication)
        get theirs computed and saved.
        """
        self._hashes, self._oids = [GENESIS], {}
        fixes = []
        for seq, op, stored in self.store.load_entries():
            if seq != self.head + 1:
                raise ConfigError("tracker database is damaged: operation %d follows %d" % (seq, self.head))
            digest = chain_hash(self.head_hash, op)
            if stored != digest:
                if stored is not None:
                    log.error("stored hash of operation {seq} is wrong; recomputed", seq=seq)
                fixes.append((seq, digest))
            self._add(seq, op, digest)
            apply(op)
        if fixes:
            self.store.set_hashes(fixes)
        return self.head

    def append(self, op: dict) -> tuple:
        """Append ``op`` as the next entry (the leader's way); return ``(seq, hash)``."""
        seq, digest = self.head + 1, chain_hash(self.head_hash, op)
        self.store.append_entry(seq, op, digest)
        self._add(seq, op, digest)
        return seq, digest

    def accept(self, seq: int, op: dict, digest: str) -> None:
        """Append an entry received from the leader; raise LogMismatch if it does not fit."""
        if seq != self.head + 1:
            raise LogMismatch("entry %d does not follow %d" % (seq, self.head))
        if chain_hash(self.head_hash, op) != digest:
            raise LogMismatch("entry %d has a hash that does not chain" % seq)
        self.store.append_entry(seq, op, digest)
        self._add(seq, op, digest)

    def truncate(self, after: int) -> List[dict]:
        """Drop every entry after ``after`` (kept as orphans in the store); return their ops."""
        removed = self.store.truncate(after)
        del self._hashes[after + 1:]
        self._oids = {oid: seq for oid, seq in self._oids.items() if seq <= after}
        return removed

    def read(self, first: int, max_entries: int, max_bytes: int) -> List[list]:
        """Entries ``[seq, op, hash]`` from ``first`` on: at most ``max_entries``, and
        no more than ``max_bytes`` of JSON unless a single entry is bigger."""
        out, size = [], 0
        for seq, op, _stored in self.store.read(first, max_entries):
            size += len(canonical(op)) + 100
            if out and size > max_bytes:
                break
            out.append([seq, op, self._hashes[seq]])
        return out

    def probes(self) -> List[list]:
        """``[seq, hash]`` at the head, head-1, head-2, head-4, ... and 0: what a
        follower sends so the leader can find the last entry they share."""
        out, step, seq = [], 1, self.head
        while seq > 0:
            out.append([seq, self._hashes[seq]])
            seq -= step
            step *= 2
        out.append([0, GENESIS])
        return out

    def last_shared(self, probes: Sequence) -> int:
        """The highest probe (from another log) whose hash equals ours at that seq."""
        best = 0
        for item in probes:
            if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
                    and not isinstance(item[0], bool) and self.hash_at(item[0]) == item[1]):
                best = max(best, item[0])
        return best

    def _add(self, seq: int, op: dict, digest: str) -> None:
        self._hashes.append(digest)
        oid = op.get("oid")
        if isinstance(oid, str):
            self._oids[oid] = seq
