"""The leader's side of replication: sequence writes, ship them, answer when every replica has them.

A *replica* is a follower in sync: it receives every new entry and must ack
it. The leader answers a write only when every replica acked it, and never
before its *barrier*: when a replica is dropped without acking (no ack within
``ack_timeout``, or its link broke) it may still serve reads under the lease
its last ping gave it, so the barrier moves to when that lease surely ended
(``docs/replication.rst`` 2.4). The sequencer also serves catch-up requests,
since the batch that reaches the head is what turns a follower into a replica.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

from twisted.internet import defer
from twisted.logger import Logger

from mbt.tracker.oplog import OpLog
from mbt.tracker.state import TrackerState
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.tracker.replication")

#: A catch-up batch holds at most this many entries / about this many bytes.
BATCH_ENTRIES = 1000
BATCH_BYTES = 4 * 1024 * 1024
#: Results of recent writes kept to answer a re-sent proposal (same oid).
RECENT_RESULTS = 4096


class RecentResults:
    """The results of the last few thousand operations, by operation id."""

    def __init__(self, size: int = RECENT_RESULTS) -> None:
        self.size = size
        self._results: "OrderedDict[str, dict]" = OrderedDict()

    def remember(self, oid: object, result: Optional[dict]) -> None:
        if isinstance(oid, str) and result is not None:
            self._results[oid] = result
            while len(self._results) > self.size:
                self._results.popitem(last=False)

    def recall(self, oid: str) -> dict:
        """The remembered result (a copy), or ``{}`` if forgotten."""
        return dict(self._results.get(oid, {}))


@dataclass
class Replica:
    """A follower in sync, from the leader's point of view."""

    number: int
    link: object
    last_ping: float                # when its last lease request (ping/follow) arrived
    acked: int = 0


@dataclass
class Write:
    """A sequenced operation waiting for its replicas' acks."""

    seq: int
    oid: str
    op: dict
    result: dict
    waiting: Set[int]
    waiters: List[defer.Deferred] = field(default_factory=list)
    timer: object = None


class Sequencer:
    """Leader-side bookkeeping: replicas, writes waiting for acks, the barrier."""

    def __init__(self, state: TrackerState, oplog: OpLog, clock, ack_timeout: float, lease: float,
                 results: RecentResults) -> None:
        self.state = state
        self.oplog = oplog
        self.clock = clock
        self.ack_timeout = ack_timeout
        self.lease = lease
        self.results = results
        self.replicas: Dict[int, Replica] = {}
        self.barrier = float("-inf")        # no write is acknowledged before this time
        self._writes: List[Write] = []
        self._by_oid: Dict[str, Write] = {}
        self._barrier_timer = None

    # -- writes ----------------------------------------------------------------

    #: Called with (op, result) after each live apply here (the replicator's hook).
    on_applied: Callable[[dict, dict], None] = staticmethod(lambda op, result: None)

    def write(self, op: dict) -> defer.Deferred:
        """Validate, sequence and replicate ``op`` (which has an ``oid``).

        Fires with its result when every replica has it, or fails with the
        MbtError the state raised (then nothing was logged). An ``oid`` already
        in the log is answered, not applied again.
        """
        oid = op["oid"]
        if self.oplog.seq_of(oid) is not None:
            pending = self._by_oid.get(oid)
            if pending is not None:
                d = defer.Deferred()
                pending.waiters.append(d)
                return d
            return defer.succeed(self.results.recall(oid))
        try:
            result = self.state.apply(op)
        except Exception:       # MbtError: refused; anything else: a bug, reported as internal
            return defer.fail()
        seq, digest = self.oplog.append(op)
        self.results.remember(oid, result)
        self.on_applied(op, result)
        write = Write(seq, oid, op, result, set(self.replicas))
        d = defer.Deferred()
        write.waiters.append(d)
        self._writes.append(write)
        self._by_oid[oid] = write
        entry = {"t": "entry", "seq": seq, "op": op, "hash": digest}
        for replica in self.replicas.values():
            replica.link.send(entry)
        if write.waiting:
            write.timer = self.clock.callLater(self.ack_timeout, self._ack_timeout, write)
        self._complete()
        return d

    def ack(self, number: int, seq: int) -> None:
        """Replica ``number`` has applied and stored everything up to ``seq``."""
        replica = self.replicas.get(number)
        if replica is None:
            return
        replica.acked = max(replica.acked, seq)
        for w in self._writes:
            if w.seq <= replica.acked:
                w.waiting.discard(number)
        self._complete()

    def _ack_timeout(self, write: Write) -> None:
        write.timer = None
        for number in sorted(write.waiting):
            self.drop(number, "no ack within %.1f s" % self.ack_timeout, send=True)

    def _complete(self) -> None:
        """Answer every write all replicas acked, once the barrier has passed."""
        now = self.clock.seconds()
        if now < self.barrier:
            if self._barrier_timer is None or not self._barrier_timer.active():
                self._barrier_timer = self.clock.callLater(self.barrier - now, self._complete)
            return
        done = [w for w in self._writes if not w.waiting]
        if not done:
            return
        self._writes = [w for w in self._writes if w.waiting]
        for w in done:
            self._by_oid.pop(w.oid, None)
            w.timer = cancel_pending(w.timer)
            for d in w.waiters:
                d.callback(dict(w.result))

    # -- replicas -----------------------------------------------------------------

    def catch_up(self, number: int, link, probes: list, follower_base: int = 0) -> dict:
        """Answer a ``follow`` request: the entries after the last one we share.

        When that entry is older than what either log still holds (compacted
        into snapshots, ``base``), the batch starts with our newest snapshot
        instead, and the entries after it. The batch that reaches our head
        makes the follower a replica in the same step, so it misses no entry
        between catch-up and the live stream.
        """
        now = self.clock.seconds()
        if number in self.replicas:
            # It re-syncs (it stopped serving first): no longer wait for its acks.
            del self.replicas[number]
            self._forget_waits(number)
        shared = self.oplog.last_shared(probes)
        batch = {"t": "batch"}
        if shared < self.oplog.base or shared < follower_base:
            seq, digest, text = self.oplog.newest_snapshot()
            batch["snapshot"] = {"seq": seq, "hash": digest, "state": text}
            shared = seq
        entries = self.oplog.read(shared + 1, BATCH_ENTRIES, BATCH_BYTES)
        done = (entries[-1][0] if entries else shared) >= self.oplog.head
        if done:
            self.replicas[number] = Replica(number, link, last_ping=now)
        batch.update(entries=entries, done=done, head=self.oplog.head, hash=self.oplog.head_hash)
        return batch

    def ping(self, number: int) -> bool:
        """A lease request from ``number`` arrived; True if it is a replica (answer it)."""
        replica = self.replicas.get(number)
        if replica is None:
            return False
        replica.last_ping = self.clock.seconds()
        return True

    def drop(self, number: int, reason: str, send: bool) -> None:
        """Stop replicating to ``number`` (telling it, if ``send``); acknowledge
        nothing it might lack before its lease has run out."""
        replica = self.replicas.pop(number, None)
        if replica is None:
            return
        self.barrier = max(self.barrier, replica.last_ping + self.lease)
        if send:
            replica.link.send({"t": "drop", "reason": reason})
            log.warn("dropped tracker {n} from replication: {why}; it will catch up again",
                     n=number, why=reason)
        self._forget_waits(number)

    def _forget_waits(self, number: int) -> None:
        for w in self._writes:
            w.waiting.discard(number)
        self._complete()

    # -- handing over ---------------------------------------------------------------

    def hold_for(self, seconds: float) -> None:
        """Acknowledge nothing for ``seconds`` (a new leader letting old leases run out)."""
        self.barrier = max(self.barrier, self.clock.seconds() + seconds)

    def abandon(self, reason: str) -> List[Write]:
        """Stop leading: drop every replica (telling it) and return the unanswered writes."""
        for replica in self.replicas.values():
            replica.link.send({"t": "drop", "reason": reason})
        self.replicas.clear()
        writes, self._writes, self._by_oid = self._writes, [], {}
        for w in writes:
            w.timer = cancel_pending(w.timer)
        return writes

    def stop(self) -> None:
        """Cancel every timer (shutdown)."""
        for timer in [self._barrier_timer] + [w.timer for w in self._writes]:
            cancel_pending(timer)
