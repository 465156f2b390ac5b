"""An in-memory cluster of trackers for replication tests: no sockets, no sleeps.

Each :class:`Node` is a real :class:`TrackerCore` + :class:`Replicator` over a
:class:`MemoryStore`; :class:`Net` connects them with FIFO message queues (one
per direction, like a TCP connection) that the test delivers by hand, and a
shared ``task.Clock``. Messages go through a JSON round trip, as on the wire.
"""

from __future__ import annotations

import json
from collections import defaultdict, deque
from typing import Dict, Optional

from twisted.internet import defer, task

from mbt.tracker.compaction import Compactor
from mbt.tracker.oplog import OpLog
from mbt.tracker.replication import Replicator, Timing
from mbt.tracker.connection import Connection
from mbt.tracker.service import TrackerCore
from mbt.tracker.state import TrackerState
from mbt.tracker.store import MemoryStore


def sync_thread(f, *a, **k):
    return defer.maybeDeferred(f, *a, **k)


class SimLink:
    """Tracker ``src``'s end of its link to ``dst``."""

    def __init__(self, net: "Net", src: int, dst: int) -> None:
        self.net, self.src, self.dst = net, src, dst
        self.closed = False

    def send(self, msg: dict) -> None:
        if not self.closed:
            self.net.queues[(self.src, self.dst)].append(json.loads(json.dumps(msg)))

    def close(self) -> None:
        if not self.closed:
            self.net.cut(self.src, self.dst)

    def __repr__(self) -> str:
        return "<SimLink %d->%d%s>" % (self.src, self.dst, " closed" if self.closed else "")


class Node:
    """One tracker: state, store, replicator and request core."""

    def __init__(self, number: int, known, clock, store: Optional[MemoryStore] = None,
                 timing: Optional[Timing] = None, snapshot_every: Optional[int] = None) -> None:
        self.number = number
        self.store = store if store is not None else MemoryStore()
        self.state = TrackerState()
        oplog = OpLog(self.store)
        if snapshot_every:
            Compactor(oplog, sync_thread, snapshot_every)     # snapshots taken synchronously
        self.rep = Replicator(number, known, self.state, oplog, clock, timing)
        self.core = TrackerCore(self.state, self.store, run_in_thread=sync_thread,
                                replicator=self.rep, clock=clock)
        self.core.load()

    def request(self, conn: Connection, op: str, **args) -> defer.Deferred:
        """A client request as the protocol would hand it to the core."""
        return self.core.handle(conn, dict(args, op=op))

    def digest(self) -> str:
        return self.state.digest()


class Net:
    """Several nodes, their links, the messages in flight and the clock."""

    def __init__(self, n: int = 3, timing: Optional[Timing] = None, start: bool = True,
                 snapshot_every: Optional[int] = None) -> None:
        self.clock = task.Clock()
        self.snapshot_every = snapshot_every
        self.timing = timing or Timing()
        self.numbers = list(range(1, n + 1))
        self.nodes: Dict[int, Node] = {}
        self.stores: Dict[int, MemoryStore] = {}
        self.links: Dict[tuple, SimLink] = {}
        self.queues = defaultdict(deque)
        for i in self.numbers:
            self.add(i)
        if start:
            for i in self.numbers:
                self.nodes[i].rep.start()
            self.connect_all()
            self.run(0.5)

    def add(self, number: int, store: Optional[MemoryStore] = None) -> Node:
        node = Node(number, [m for m in self.numbers if m != number], self.clock,
                    store if store is not None else self.stores.get(number), self.timing, self.snapshot_every)
        self.nodes[number] = node
        self.stores[number] = node.store
        return node

    def __getitem__(self, number: int) -> Node:
        return self.nodes[number]

    # -- links ------------------------------------------------------------------

    def connect(self, a: int, b: int) -> None:
        if (a, b) in self.links or a not in self.nodes or b not in self.nodes:
            return
        la, lb = SimLink(self, a, b), SimLink(self, b, a)
        self.links[(a, b)], self.links[(b, a)] = la, lb
        self.nodes[a].rep.link_up(b, la)
        self.nodes[b].rep.link_up(a, lb)

    def connect_all(self) -> None:
        alive = sorted(self.nodes)
        for i in alive:
            for j in alive:
                if i < j:
                    self.connect(i, j)

    def cut(self, a: int, b: int) -> None:
        """Both ends see the link go down; messages in flight are lost."""
        la, lb = self.links.pop((a, b), None), self.links.pop((b, a), None)
        for link in (la, lb):
            if link is not None:
                link.closed = True
        self.queues.pop((a, b), None)
        self.queues.pop((b, a), None)
        if la is not None and a in self.nodes:
            self.nodes[a].rep.link_down(b, la)
        if lb is not None and b in self.nodes:
            self.nodes[b].rep.link_down(a, lb)

    def crash(self, number: int) -> None:
        """SIGKILL: every link drops; the store survives for a restart."""
        for (a, b) in list(self.links):
            if number in (a, b):
                self.cut(a, b)
        node = self.nodes.pop(number)
        node.rep.stop()

    def restart(self, number: int, empty: bool = False) -> Node:
        """Start ``number`` again on its store (or an empty one) and link it."""
        if empty:
            self.stores.pop(number, None)
        node = self.add(number)
        node.rep.start()
        self.connect_all()
        return node

    # -- delivery ---------------------------------------------------------------

    def pending(self, a: int, b: int) -> int:
        return len(self.queues.get((a, b), ()))

    def deliver(self, a: int, b: int, count: int = 1) -> int:
        """Deliver up to ``count`` messages from ``a`` to ``b``; return how many."""
        done = 0
        while done < count and self.queues.get((a, b)):
            msg = self.queues[(a, b)].popleft()
            link = self.links.get((b, a))
            if link is None:
                break
            self.nodes[b].rep.receive(a, link, msg)
            done += 1
        return done

    def flush(self, limit: int = 100000) -> None:
        """Deliver everything in flight (and whatever that causes)."""
        for _ in range(limit):
            busy = [k for k, q in self.queues.items() if q]
            if not busy:
                return
            for a, b in busy:
                self.deliver(a, b)
        raise AssertionError("messages still flowing after %d rounds" % limit)

    def run(self, seconds: float, dt: float = 0.05) -> None:
        """Let ``seconds`` pass, delivering everything as it goes."""
        steps = max(1, int(round(seconds / dt)))
        for _ in range(steps):
            self.flush()
            self.clock.advance(dt)
        self.flush()

    def play(self, steps) -> list:
        """Run random steps (``tests.test_replication.STEPS``: write, deliver, tick, cut,
        heal, crash), then bring every tracker back, heal the links and let 8 s pass.
        Returns ``(op, [result or Failure])`` of every write."""
        outcomes = []
        for step in steps:
            kind = step[0]
            if kind == "write" and step[1] in self.nodes:
                results: list = []
                self.nodes[step[1]].rep.propose(step[2]).addBoth(results.append)    # refusals: consumed
                outcomes.append((step[2], results))
            elif kind == "deliver":
                (a, b), count = step[1], step[2]
                if a in self.nodes and b in self.nodes:
                    self.deliver(a, b, count)
            elif kind == "tick":
                self.clock.advance(step[1])
            elif kind == "cut":
                self.cut(*step[1])
            elif kind == "heal":
                self.connect_all()
            elif kind == "crash" and len(self.nodes) > 1 and step[1] in self.nodes:
                self.crash(step[1])
        for n in self.numbers:              # everyone comes back, links heal, time passes
            if n not in self.nodes:
                self.restart(n)
        self.connect_all()
        self.run(8.0, dt=0.25)
        return outcomes

    # -- views --------------------------------------------------------------------

    def roles(self) -> Dict[int, str]:
        return {n: node.rep.role for n, node in sorted(self.nodes.items())}

    def digests(self) -> set:
        return {node.digest() for node in self.nodes.values()}

    def heads(self) -> Dict[int, int]:
        return {n: node.rep.oplog.head for n, node in sorted(self.nodes.items())}


def result_of(d: defer.Deferred):
    """The result of a fired Deferred (a Failure's exception is raised)."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    value = out[0]
    if hasattr(value, "raiseException"):
        value.raiseException()
    return value


def fired(d: defer.Deferred) -> bool:
    return d.called
