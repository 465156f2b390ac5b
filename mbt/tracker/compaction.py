"""Snapshots of the SQLite operation log, so that start-up does not grow with history.

Every ``every`` operations (:data:`SNAPSHOT_EVERY`) a :class:`Compactor`
builds the durable state at the log's head *in a worker thread*, from the
store alone (the newest snapshot plus the operations after it, on a second
database connection), and saves it with
:meth:`mbt.tracker.store.SQLiteStore.save_snapshot`: one SQLite transaction
that stores the snapshot and deletes the operations up to the snapshot before
it. A crash (SIGKILL) at any point leaves either the old or the new state of
the database, both complete. Start-up then reads the newest snapshot and at
most about ``2 * every`` operations (``docs/replication.rst`` 3.3).

The live state is never touched by the worker thread; the reactor thread only
learns afterwards which old entries were dropped (:meth:`OpLog.compacted`).
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mbt.errors import MbtError
from mbt.tracker import snapshot
from mbt.tracker.oplog import GENESIS, OpLog, chain_hash
from mbt.tracker.state import TrackerState

log = Logger(namespace="mbt.tracker.compaction")

#: A snapshot is taken once this many operations followed the newest one.
SNAPSHOT_EVERY = 10000


def state_at(store, seq: int) -> Optional[str]:
    """The snapshot text of the durable state after operation ``seq``, built from
    ``store`` alone; None if the store no longer holds that history (it was cut)."""
    state = TrackerState()
    base = 0
    for snap_seq, digest in store.snapshot_index():
        if snap_seq > seq:
            continue
        text = store.snapshot_text(snap_seq)
        if text is not None:
            snapshot.loads(state, text, checked=False)     # our own store's, checksummed
            base, previous = snap_seq, digest
            break
    else:
        if store.first_seq() not in (None, 1):
            return None
        previous = GENESIS
    at = base
    while at < seq:
        chunk = store.read(at + 1, min(5000, seq - at))
        if not chunk or chunk[0][0] != at + 1:
            return None
        for s, op, digest in chunk:
            if digest != chain_hash(previous, op):
                return None         # not the log the snapshot belongs to
            previous = digest
            try:
                state.apply(op)
            except MbtError:
                pass                # refused when it was replayed live too: the same outcome
        at = chunk[-1][0]
    return snapshot.dumps(state)


def build_and_save(store, seq: int, digest: str) -> bool:
    """Build the state after ``seq`` and save it as a snapshot (blocking: a worker thread)."""
    reader = store.reader()
    try:
        text = state_at(reader, seq)
        return text is not None and reader.save_snapshot(seq, digest, text)
    finally:
        if reader is not store:
            reader.close()


class Compactor:
    """Takes a snapshot of ``oplog``'s store every ``every`` operations, off the reactor thread.

    ``run_in_thread(f, *args)`` returns a Deferred (``threads.deferToThread``;
    tests pass a synchronous one).
    """

    def __init__(self, oplog: OpLog, run_in_thread: Callable[..., defer.Deferred],
                 every: int = SNAPSHOT_EVERY) -> None:
        self.oplog = oplog
        self.run_in_thread = run_in_thread
        self.every = every
        self.running = False
        self.stopped = False
        oplog.after_append = self.note

    def note(self) -> None:
        """Start a snapshot if ``every`` operations followed the newest one (and none is running)."""
        if self.running or self.stopped or self.oplog.head - self.oplog.snapshot_seq < self.every:
            return
        seq, digest = self.oplog.head, self.oplog.head_hash
        self.running = True
        d = self.run_in_thread(build_and_save, self.oplog.store, seq, digest)

        def done(result):
            self.running = False
            if self.stopped:
                return None
            if isinstance(result, Failure):
                log.failure("snapshot of operation {seq} failed", result, seq=seq)
                return None
            if result:
                self.oplog.compacted()
                log.info("snapshot of the state at operation {seq} stored; log kept from {base}",
                         seq=seq, base=self.oplog.base + 1)
                self.note()         # more operations may have come meanwhile
            return None
        d.addBoth(done)

    def stop(self) -> None:
        """Take no more snapshots (a running one finishes in its thread)."""
        self.stopped = True
