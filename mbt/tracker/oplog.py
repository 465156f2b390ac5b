"""The replicated operation log: durable operations numbered 1, 2, 3, ... in a hash chain.

Every tracker keeps the same log. Entry ``seq`` carries the operation and
``hash(seq) = SHA-256(hash(seq - 1) + "\\n" + canonical JSON of the operation)``
with ``hash(0) = GENESIS``. Two trackers whose hashes at ``seq`` are equal have
identical logs up to ``seq``; so comparing a few hashes tells where two logs
diverge (see :meth:`OpLog.probes`). The log sits on top of a store
(:mod:`mbt.tracker.store`) and keeps only the hashes and an index of operation
ids (``oid``) in memory, from the oldest snapshot it keeps on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    """The operation log of one tracker: sequence numbers, hash chain, op-id index.

    Only the part of the log after ``base`` is kept (older operations were
    compacted into snapshots, :mod:`mbt.tracker.compaction`): hashes and
    operation ids are known from ``base`` on; ``snapshot_seq`` is the newest
    snapshot's position (0 if none).
    """

    def __init__(self, store) -> None:
        self.store = store
        self.base = 0
        self.snapshot_seq = 0
        self._hashes: List[str] = [GENESIS]     # index = sequence number - base
        self._oids: Dict[str, int] = {}
        #: Called after every append or accepted entry (not while loading): compaction.
        self.after_append: Callable[[], None] = lambda: None

    @property
    def head(self) -> int:
        """Sequence number of the last entry (0 when empty)."""
        return self.base + len(self._hashes) - 1

    @property
    def head_hash(self) -> str:
        """Hash of the last entry (GENESIS when empty)."""
        return self._hashes[-1]

    def hash_at(self, seq: int) -> Optional[str]:
        """Hash of entry ``seq`` (GENESIS for 0); None beyond the head or before ``base``."""
        if seq == 0:
            return GENESIS
        return self._hashes[seq - self.base] if self.base <= seq <= self.head else None

    def seq_of(self, oid: object) -> Optional[int]:
        """Where the operation with id ``oid`` sits in the log, if it does (after ``base``)."""
        return self._oids.get(oid) if isinstance(oid, str) else None

    def load(self, apply: Callable[[dict], None],
             restore: Optional[Callable[[Optional[str]], None]] = None) -> int:
        """Read the stored log: ``restore(text)`` the newest sound snapshot, then check
        the chain of the operations after it and ``apply(op)`` each; return the head.

        A snapshot whose checksum fails (damaged) is dropped and the one before
        it used. Entries stored without a hash (a database from before
        replication) get theirs computed and saved.
        """
        snap_seq, snap_text = 0, None
        for seq, _digest in self.store.snapshot_index():
            snap_text = self.store.snapshot_text(seq)
            if snap_text is not None:
                snap_seq = seq
                break
            log.error("snapshot of operation {seq} is damaged; dropped, using the one before it", seq=seq)
            self.store.drop_snapshot(seq)
        index = dict(self.store.snapshot_index())
        first = self.store.first_seq()
        base = (first - 1) if first is not None else snap_seq
        if (base and base not in index) or snap_seq < base:
            raise ConfigError("tracker database is damaged: its snapshots are unreadable and the operations"
                              " up to %d were compacted; start this tracker with an empty state dir to copy"
                              " the state from another tracker" % base)
        self.base, self.snapshot_seq = base, snap_seq
        self._hashes, self._oids = [index[base] if base else GENESIS], {}
        if restore is not None:
            restore(snap_text)
        elif snap_text is not None:
            raise ValueError("this log starts with a snapshot: load it with restore")
        fixes = []
        for seq, op, stored in self.store.load_entries(base):
            if seq != self.head + 1:
                raise ConfigError("tracker database is damaged: operation %d follows %d" % (seq, self.head))
            if seq <= snap_seq and stored is not None:
                digest = stored         # inside the snapshot: checked when it was logged
            else:
                digest = chain_hash(self.head_hash, op)
                if stored != digest:
                    if stored is not None:
                        log.error("stored hash of operation {seq} is wrong; recomputed", seq=seq)
                    fixes.append((seq, digest))
            self._add(seq, op, digest)
            if seq == snap_seq and digest != index[snap_seq]:
                raise ConfigError("tracker database is damaged: the snapshot of operation %d does not"
                                  " match the log" % seq)
            if seq > snap_seq:
                apply(op)
        if self.head < snap_seq:
            raise ConfigError("tracker database is damaged: operations up to %d are missing" % snap_seq)
        if fixes:
            self.store.set_hashes(fixes)
        return self.head

    def replay(self, apply: Callable[[dict], None], restore: Callable[[Optional[str]], None]) -> None:
        """Rebuild a state from the store as it is now: the newest sound snapshot, then
        every operation after it (after a truncation)."""
        seq, _digest, text = self.newest_snapshot()
        if text is None and self.base > 0:
            raise LogMismatch("no sound snapshot to rebuild the state from")
        restore(text)
        while True:
            chunk = self.store.read(seq + 1, 5000)
            if not chunk:
                return
            for _seq, op, _h in chunk:
                apply(op)
            seq = chunk[-1][0]

    def append(self, op: dict) -> tuple:
        """Append ``op`` as the next entry (the leader's way); return ``(seq, hash)``."""
        seq, digest = self.head + 1, chain_hash(self.head_hash, op)
        self.store.append_entry(seq, op, digest)
        self._add(seq, op, digest)
        self.after_append()
        return seq, digest

    def accept(self, seq: int, op: dict, digest: str) -> None:
        """Append an entry received from the leader; raise LogMismatch if it does not fit."""
        if seq != self.head + 1:
            raise LogMismatch("entry %d does not follow %d" % (seq, self.head))
        if chain_hash(self.head_hash, op) != digest:
            raise LogMismatch("entry %d has a hash that does not chain" % seq)
        self.store.append_entry(seq, op, digest)
        self._add(seq, op, digest)
        self.after_append()

    def truncate(self, after: int) -> List[dict]:
        """Drop every entry after ``after`` (kept as orphans in the store); return their ops.

        Raises LogMismatch if ``after`` is before ``base`` (compacted: only a
        snapshot from another tracker can replace that part)."""
        if after < self.base:
            raise LogMismatch("cannot cut the log at %d: compacted up to %d" % (after, self.base))
        removed = self.store.truncate(after)
        del self._hashes[after - self.base + 1:]
        self._oids = {oid: seq for oid, seq in self._oids.items() if seq <= after}
        index = self.store.snapshot_index()
        self.snapshot_seq = index[0][0] if index else 0
        return removed

    def install(self, seq: int, digest: str, text: str) -> List[dict]:
        """Replace the log by another tracker's snapshot at ``seq`` (hash ``digest``);
        return our operations after ``seq``, now orphans."""
        removed = self.store.install_snapshot(seq, digest, text)
        self.base = self.snapshot_seq = seq
        self._hashes, self._oids = [digest], {}
        return removed

    def newest_snapshot(self) -> Tuple[int, str, Optional[str]]:
        """``(seq, hash, text)`` of the newest sound snapshot at or after ``base``;
        ``(0, GENESIS, None)`` (the empty state) if there is none."""
        for seq, digest in self.store.snapshot_index():
            if seq < self.base:
                break
            text = self.store.snapshot_text(seq)
            if text is not None:
                return seq, digest, text
        return 0, GENESIS, None

    def compacted(self) -> None:
        """The store saved a snapshot (and maybe deleted old entries): forget what it dropped."""
        index = self.store.snapshot_index()
        self.snapshot_seq = index[0][0] if index else 0
        first = self.store.first_seq()
        base = (first - 1) if first is not None else self.head
        if self.base < base <= self.head:
            del self._hashes[:base - self.base]
            self.base = base
            self._oids = {oid: seq for oid, seq in self._oids.items() if seq > base}

    def read(self, first: int, max_entries: int, max_bytes: int) -> List[list]:
        """Entries ``[seq, op, hash]`` from ``first`` (> ``base``) on: at most ``max_entries``,
        and no more than ``max_bytes`` of JSON unless a single entry is bigger."""
        out, size = [], 0
        for seq, op, _stored in self.store.read(first, max_entries):
            size += len(canonical(op)) + 100
            if out and size > max_bytes:
                break
            out.append([seq, op, self.hash_at(seq)])
        return out

    def probes(self) -> List[list]:
        """``[seq, hash]`` at the head, head-1, head-2, head-4, ... down to ``base``, and 0:
        what a follower sends so the leader can find the last entry they share."""
        out, step, seq = [], 1, self.head
        while seq > self.base:
            out.append([seq, self.hash_at(seq)])
            seq -= step
            step *= 2
        if self.base > 0:
            out.append([self.base, self.hash_at(self.base)])
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
