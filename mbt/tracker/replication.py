"""Replication: every tracker holds the same operation log, sequenced by one leader.

A :class:`Replicator` is one tracker's side of it (``docs/replication.rst``
has the whole design and its guarantees):

* **leading** -- every durable write, its own clients' and those the other
  trackers forward (``propose``), is validated, sequenced and sent to every
  replica, and answered once all of them acked it (:mod:`.sequencer`).
  Validation in one place, in one order, is what decides conflicts.
* **following** -- applies the leader's entries in order, forwards its
  clients' writes, and answers reads while it holds a *lease* (the leader
  answered one of its pings less than ``lease`` seconds ago).
* **syncing** / **electing** -- fetching what it misses (from any position;
  a divergent tail is cut off and proposed again), or waiting for a new
  leader. Client requests wait (then ``catching_up``).

Who leads is decided by :func:`mbt.tracker.election.decide` from the status
messages of the linked trackers. The replicator talks to other trackers only
through *links* (objects with ``send(msg)`` and ``close()``) and to time only
through ``clock``, so tests drive whole clusters in memory.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Set

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from mbt.errors import CatchingUp, Internal, MbtError, NotLeader, Unconfirmed, error_from_wire
from mbt.tracker import election, snapshot
from mbt.tracker.election import ELECTING, FOLLOWING, LEADING, ROLES, SYNCING
from mbt.tracker.oplog import GENESIS, LogMismatch, OpLog
from mbt.tracker.login_budget import SharedLoginGuard
from mbt.tracker.presence import PRESENCE_EXPIRY, PresenceGossip
from mbt.tracker.sequencer import RecentResults, Sequencer
from mbt.tracker.state import TrackerState
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.tracker.replication")


@dataclass
class Timing:
    """Every delay of the replication protocol, in seconds."""

    grace: float = 2.0          # at startup, wait this long for other trackers before leading alone
    ack_timeout: float = 2.0    # a replica that has not acked an entry by then is dropped
    lease: float = 1.0          # a follower serves for this long after a ping it sent was answered
    ping_interval: float = 0.25  # followers renew their lease this often
    silence: float = 3.0        # a leader (or catch-up source) silent this long is taken for dead
    hold: float = 5.0           # a client request waits this long for the tracker to serve
    propose_timeout: float = 5.0  # a forwarded write not confirmed by then fails (outcome unknown)
    presence_expiry: float = PRESENCE_EXPIRY


def catching_up(number: int) -> CatchingUp:
    """The error a client gets from a tracker that cannot serve current state yet."""
    return CatchingUp("tracker %d is catching up with the other trackers; try again or use another tracker"
                      % number)


def new_oid(number: int) -> str:
    """A unique id for a new operation (so a re-sent write is applied once)."""
    return "%d-%s" % (number, secrets.token_hex(8))


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("expected a non-negative integer")
    return value


def _op(value: object) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("op"), str):
        raise ValueError("expected an operation")
    return value


def describe(op: dict) -> str:
    """An operation for the log: its name and who/what, never a password record."""
    parts = [str(op.get("op"))]
    for key in ("user", "owner", "group", "name"):
        if isinstance(op.get(key), str):
            parts.append("%s=%s" % (key, op[key][:64]))
    return " ".join(parts)


@dataclass
class PeerView:
    """A linked tracker and what its last status message said."""

    number: int
    link: object
    role: Optional[str] = None          # None until its first status arrives
    leader: Optional[int] = None        # whom it follows or syncs from (itself if leading)
    head: int = 0
    head_hash: str = GENESIS


@dataclass
class Proposal:
    """A write waiting for the leader's verdict (sent when there is a leader)."""

    op: dict
    waiters: List[defer.Deferred] = field(default_factory=list)
    sent_to: Optional[int] = None
    timer: object = None


class Replicator:
    """One tracker's side of replication: role, leader, log shipping, write routing."""

    def __init__(self, number: int, known: Iterable[int], state: TrackerState, oplog: OpLog, clock,
                 timing: Optional[Timing] = None) -> None:
        self.number = number
        self.known = set(known) - {number}     # the other trackers of our info file
        self.state = state
        self.oplog = oplog
        self.clock = clock
        self.timing = timing or Timing()
        self.presence = PresenceGossip(state, clock, self.timing.presence_expiry)
        #: The login budget, shared with every linked tracker (mbt.tracker.login_budget).
        self.login_guard = SharedLoginGuard(clock)
        self.results = RecentResults()
        self.sequencer = Sequencer(state, oplog, clock, self.timing.ack_timeout, self.timing.lease,
                                   self.results)
        self.role = SYNCING
        self.leader: Optional[int] = None
        self.sync_target: Optional[int] = None
        self.peers: Dict[int, PeerView] = {}
        self.lease_until = float("-inf")
        self._saw_leader = False
        self._lost_leader: Optional[int] = None
        self._ever_linked: Set[int] = set()
        self._grace_over_at = float("inf")
        self._heard_at = float("-inf")         # last message from the leader / sync target
        self._pending: "OrderedDict[str, Proposal]" = OrderedDict()
        self._lease_requests: "OrderedDict[int, float]" = OrderedDict()
        self._request_ids = itertools.count(1)
        self._serving_waiters: List[tuple] = []
        self._reproposing = False
        self._has_orphans = False               # the store holds ops cut off by a repair
        self._tick_timer = None
        self._started = False
        self._stopped = False
        #: Called with (op, error) when a divergent operation no longer applies (tests, metrics).
        self.on_orphan_dropped: Callable[[dict, MbtError], None] = lambda op, err: None
        #: Called with (op, result) whenever this tracker applies an operation live
        #: (as leader or follower; not when loading or rebuilding): membership events.
        self.on_applied: Callable[[dict, dict], None] = lambda op, result: None
        self.sequencer.on_applied = self._applied_live

    # ------------------------------------------------------------------
    # lifecycle

    def load(self, on_error: Callable[[dict, MbtError], None]) -> int:
        """Rebuild the durable state from the stored log; return the number of operations."""
        def apply(op: dict) -> None:
            try:
                self.results.remember(op.get("oid"), self.state.apply(op))
            except MbtError as e:
                on_error(op, e)
        count = self.oplog.load(apply, self._restore)
        self._has_orphans = bool(self.oplog.store.orphans())    # a repair a crash interrupted
        return count

    def start(self) -> None:
        """Begin: lead at once if alone in the cluster, else look for the others first."""
        if self._started:
            return
        self._started = True
        if not self.known:
            self._become_leader()       # alone in its info file: serve at once
        else:
            self._grace_over_at = self.clock.seconds() + self.timing.grace
            log.info("tracker {n} is looking for the other trackers before serving", n=self.number)
            self._tick()

    def stop(self) -> None:
        """Stop timers; client requests still waiting fail with ``catching_up``."""
        self._stopped = True
        for timer in [self._tick_timer] + [p.timer for p in self._pending.values()]:
            cancel_pending(timer)
        self.sequencer.stop()
        self.presence.stop()
        waiters, self._serving_waiters = self._serving_waiters, []
        for d, timer in waiters:
            cancel_pending(timer)
            d.errback(catching_up(self.number))

    def _tick(self) -> None:
        """Periodic: notice a silent leader, renew the lease, re-evaluate who leads."""
        self._tick_timer = None
        if self._stopped:
            return
        awaited = self.leader if self.role == FOLLOWING else self.sync_target
        silent = self.clock.seconds() - self._heard_at
        if awaited in self.peers and silent > self.timing.silence:
            # Hung (stopped, stuck) rather than dead: its link stays up, so say
            # goodbye ourselves, or the cluster would wait for it forever.
            log.warn("tracker {n} has been silent for {s:.0f} s; dropping the link", n=awaited, s=silent)
            link = self.peers[awaited].link
            link.close()
            self.link_down(awaited, link)
        if self.role == FOLLOWING:
            self._send_lease_request("ping")
        self._evaluate()
        self._wake()
        self._repropose_orphans()       # if serving came back after a lapse, not a role change
        self._tick_timer = self.clock.callLater(self.timing.ping_interval, self._tick)

    def _ensure_ticking(self) -> None:
        if self._tick_timer is None and self._started and not self._stopped:
            self._tick()

    # ------------------------------------------------------------------
    # serving clients

    @property
    def serving(self) -> bool:
        """May this tracker answer clients from its state right now?"""
        if self.role == LEADING:
            return True
        return self.role == FOLLOWING and self.clock.seconds() < self.lease_until

    def wait_serving(self) -> Optional[defer.Deferred]:
        """None if serving now; else a Deferred that fires once it serves, or fails
        with ``catching_up`` after ``hold`` seconds. Waiters are released in order."""
        if self.serving:
            return None
        d = defer.Deferred()

        def expire():
            for i, (waiter, _t) in enumerate(self._serving_waiters):
                if waiter is d:
                    del self._serving_waiters[i]
                    d.errback(catching_up(self.number))
                    return
        self._serving_waiters.append((d, self.clock.callLater(self.timing.hold, expire)))
        return d

    def _wake(self) -> None:
        if not self.serving or not self._serving_waiters:
            return
        waiters, self._serving_waiters = self._serving_waiters, []
        for d, timer in waiters:
            cancel_pending(timer)
            d.callback(None)

    @property
    def head(self) -> int:
        """Sequence number of the last operation applied here."""
        return self.oplog.head

    def status(self) -> dict:
        """A summary for monitoring (the ``tracker_status`` request)."""
        return {"tracker": self.number, "role": self.role, "leader": self.leader,
                "serving": self.serving, "seq": self.oplog.head, "linked": sorted(self.peers)}

    # ------------------------------------------------------------------
    # writes

    def propose(self, op: dict) -> defer.Deferred:
        """Get a durable operation applied by the whole cluster.

        Fires with the operation's result once every live tracker has it, or
        fails with the MbtError the leader's validation raised (``unconfirmed``
        if no leader answered within ``propose_timeout``).
        """
        op = dict(op)
        if not isinstance(op.get("oid"), str):
            op["oid"] = new_oid(self.number)
        if self.role == LEADING:
            return self.sequencer.write(op)
        d = defer.Deferred()
        self._pending_for(op).waiters.append(d)
        self._route(op["oid"])
        return d

    def _pending_for(self, op: dict) -> Proposal:
        proposal = self._pending.get(op["oid"])
        if proposal is None:
            proposal = self._pending[op["oid"]] = Proposal(op)
            proposal.timer = self.clock.callLater(self.timing.propose_timeout, self._proposal_expired,
                                                  op["oid"])
        return proposal

    def _proposal_expired(self, oid: str) -> None:
        proposal = self._pending.pop(oid, None)
        if proposal is None:
            return
        err = Unconfirmed("the trackers did not confirm this change within %.0f s; it may or may not have"
                          " been applied" % self.timing.propose_timeout)
        for d in proposal.waiters:
            d.errback(err)

    def _route(self, oid: str) -> None:
        """Send a waiting proposal where it belongs now (nowhere while there is no leader)."""
        proposal = self._pending.get(oid)
        if proposal is None:
            return
        if self.role == LEADING:
            del self._pending[oid]
            proposal.timer = cancel_pending(proposal.timer)
            self.sequencer.write(proposal.op).chainDeferred(_fan_out(proposal.waiters))
        elif self.role == FOLLOWING and self.leader in self.peers and proposal.sent_to != self.leader:
            proposal.sent_to = self.leader
            self.peers[self.leader].link.send({"t": "propose", "pid": oid, "op": proposal.op})

    # ------------------------------------------------------------------
    # links

    def link_up(self, number: int, link) -> None:
        """An authenticated link to tracker ``number`` is up."""
        old = self.peers.get(number)
        if old is not None:
            self.link_down(number, old.link)
        self.peers[number] = PeerView(number, link)
        self._ever_linked.add(number)
        log.info("linked with tracker {n}", n=number)
        link.send(self._status_message())
        self.presence.link_up(number, link)
        self.login_guard.link_up(number, link)
        self._ensure_ticking()

    def link_down(self, number: int, link) -> None:
        """The link to tracker ``number`` is gone."""
        p = self.peers.get(number)
        if p is None or p.link is not link:
            return
        log.info("lost the link to tracker {n}", n=number)
        self.sequencer.drop(number, "link lost", send=False)
        del self.peers[number]
        self.presence.link_down(number)
        self.login_guard.link_down(number)
        for proposal in self._pending.values():
            if proposal.sent_to == number:
                proposal.sent_to = None         # re-sent to the next leader (applied once: oid)
        self._evaluate()

    def receive(self, number: int, link, msg: dict) -> None:
        """A message from tracker ``number``; a malformed one closes the link."""
        p = self.peers.get(number)
        if p is None or p.link is not link or self._stopped:
            return
        if number in (self.leader, self.sync_target):
            self._heard_at = self.clock.seconds()
        handler = self._handlers.get(msg.get("t")) if isinstance(msg, dict) else None
        try:
            if handler is None:
                raise ValueError("unknown message type")
            handler(self, p, msg)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
            log.warn("bad sync message from tracker {n} ({why}); closing the link", n=number, why=str(e)[:200])
            link.close()
            self.link_down(number, link)

    # ------------------------------------------------------------------
    # roles

    def _status_message(self) -> dict:
        return {"t": "status", "role": self.role, "leader": self.leader or self.sync_target,
                "head": self.oplog.head, "hash": self.oplog.head_hash}

    def _announce(self) -> None:
        msg = self._status_message()
        for p in list(self.peers.values()):
            p.link.send(msg)

    def _set_role(self, role: str, leader: Optional[int]) -> None:
        if (role, leader) == (self.role, self.leader):
            return
        self.role, self.leader = role, leader
        if role == LEADING:
            log.info("tracker {n} leads (log at {seq})", n=self.number, seq=self.oplog.head)
        elif role == FOLLOWING:
            log.info("tracker {n} follows tracker {l} (log at {seq})", n=self.number, l=leader,
                     seq=self.oplog.head)
        else:
            log.info("tracker {n} is {role}; client requests wait", n=self.number, role=role)
        self._announce()
        self._wake()

    def _evaluate(self) -> None:
        """Apply :func:`election.decide` until it says to stay."""
        if self._stopped or not self._started:
            return
        for _ in range(8):      # each step changes the role; a few always settle it
            linked = [p for p in self.peers.values() if p.role is not None]
            grace_over = (self.clock.seconds() >= self._grace_over_at
                          or self.known <= {p.number for p in linked})
            me = election.Me(self.number, self.role, self.leader, self.sync_target, self.oplog.head, grace_over)
            action, number = election.decide(
                me, [election.Other(p.number, p.role, p.leader, p.head) for p in linked])
            if action == election.STAY:
                return
            if action == election.STEP_DOWN:
                self._step_down(number)
            elif action == election.LOST_LEADER:
                self._lost_leader = number
                self._set_role(ELECTING, None)
            elif action == election.LEADER_LEFT:
                self._set_role(SYNCING, None)
            elif action == election.DROP_TARGET:
                self.sync_target = None
                self._announce()
            elif action == election.FOLLOW:
                self._follow(number)
            elif action == election.LEAD:
                self._become_leader()

    def _become_leader(self) -> None:
        self.sync_target = None
        if self._saw_leader and self._possible_lease_holders():
            # Followers of the previous leader that we cannot see may still hold
            # leases: acknowledge no write before those have surely run out.
            self.sequencer.hold_for(self.timing.lease)
        self._set_role(LEADING, self.number)
        self._after_serving()

    def _possible_lease_holders(self) -> Set[int]:
        """Trackers that might still serve under a lease of the previous leader.

        Linked trackers tell us their role (one that still follows a leader we
        cannot see keeps us from leading at all), and the lost leader held no
        lease; anyone else we know of but cannot see might.
        """
        return (self.known | self._ever_linked) - set(self.peers) - {self._lost_leader, self.number}

    def _step_down(self, winner: int) -> None:
        log.warn("tracker {w} also leads; tracker {n} steps down and catches up from it",
                 w=winner, n=self.number)
        # Writes still waiting for acks are proposed again to the winner (same oid:
        # applied once there), and their clients get the winner's answer.
        for w in self.sequencer.abandon("tracker %d leads now" % winner):
            self._pending_for(w.op).waiters.extend(w.waiters)
        self._set_role(SYNCING, None)
        self._follow(winner)

    def _follow(self, number: int) -> None:
        """Catch up from leader ``number`` (then follow it)."""
        self.sync_target = number
        self._heard_at = self.clock.seconds()
        if (self.role, self.leader) != (SYNCING, None):
            self._set_role(SYNCING, None)       # announces the new target too
        else:
            self._announce()
        self._send_lease_request("follow")

    def _send_lease_request(self, kind: str) -> None:
        """Send ``ping`` (to the leader) or ``follow`` (to the sync target), remembering when."""
        p = self.peers.get(self.leader if kind == "ping" else self.sync_target)
        if p is None:
            return
        n = next(self._request_ids)
        self._lease_requests[n] = self.clock.seconds()
        while len(self._lease_requests) > 64:
            self._lease_requests.popitem(last=False)
        msg = {"t": kind, "n": n}
        if kind == "follow":
            msg.update(head=self.oplog.head, probes=self.oplog.probes(), base=self.oplog.base)
        p.link.send(msg)

    def _extend_lease(self, n: object) -> None:
        sent = self._lease_requests.get(n) if isinstance(n, int) else None
        if sent is not None:
            self.lease_until = max(self.lease_until, sent + self.timing.lease)
            self._wake()

    def _after_serving(self) -> None:
        """Now following or leading: send waiting proposals, re-propose orphans, wake clients."""
        for oid in list(self._pending):
            self._route(oid)
        self._repropose_orphans()
        self._wake()

    # ------------------------------------------------------------------
    # divergence repair

    def _truncate(self, after: int, why: str) -> None:
        """Cut our log after ``after`` (the cut ops become orphans) and rebuild the state."""
        removed = self.oplog.truncate(after)
        self._has_orphans = True
        log.warn("tracker {n} cut {k} operation(s) after seq {after} that the leader does not have "
                 "({why}); they will be proposed again", n=self.number, k=len(removed), after=after, why=why)
        def apply(op: dict) -> None:
            try:
                self.state.apply(op)
            except MbtError as e:
                log.error("operation {op} no longer applies while rebuilding: {err}", op=describe(op),
                          err=e.message)
        self.oplog.replay(apply, self._restore)

    def _restore(self, text: Optional[str]) -> None:
        snapshot.reset_to(self.state, text)

    def _install(self, p: PeerView, snap: dict) -> None:
        """Take the leader's snapshot: our log no longer reaches back to what it shares."""
        seq, digest, text = _int(snap["seq"]), str(snap["hash"]), snap["state"]
        if text is None:
            data = snapshot.dump(TrackerState())
            text = snapshot.dumps(TrackerState())
        elif isinstance(text, str):
            data = json.loads(text)
            try:
                snapshot.restore(TrackerState(), data)     # garbage raises here, before anything changed
            except MbtError as e:
                raise ValueError("bad snapshot: %s" % e.message)
        else:
            raise ValueError("bad snapshot")
        removed = self.oplog.install(seq, digest, text)
        snapshot.restore(self.state, data, checked=False)     # checked just above
        log.info("tracker {n} took tracker {l}'s snapshot of operation {seq}", n=self.number, l=p.number,
                 seq=seq)
        if removed:
            self._has_orphans = True
            log.warn("tracker {n} set aside {k} operation(s) after seq {seq} that tracker {l}'s snapshot"
                     " replaced; they will be proposed again", n=self.number, k=len(removed), seq=seq,
                     l=p.number)

    def _repropose_orphans(self) -> None:
        """Propose, one at a time and in order, the ops cut off by divergence repair."""
        if self._reproposing or not self._has_orphans or not self.serving:
            return
        orphans = self.oplog.store.orphans()
        if not orphans:
            self._has_orphans = False
            return
        self._reproposing = True
        orphan_id, op = orphans[0]
        if not isinstance(op.get("oid"), str):
            op["oid"] = new_oid(self.number)

        def done(result):
            self._reproposing = False
            if isinstance(result, Failure):
                err = result.value
                if isinstance(err, (CatchingUp, Unconfirmed)):
                    return None                 # keep it; try again when serving next time
                log.warn("dropped divergent operation {op}: {code}", op=describe(op),
                         code=err.code if isinstance(err, MbtError) else Internal.code)
                if isinstance(err, MbtError):
                    self.on_orphan_dropped(op, err)
            else:
                log.info("re-applied divergent operation {op}", op=describe(op))
            self.oplog.store.remove_orphan(orphan_id)
            self._repropose_orphans()
            return None
        self.propose(op).addBoth(done)

    # ------------------------------------------------------------------
    # message handlers: (self, peer, msg)

    def _on_status(self, p: PeerView, msg: dict) -> None:
        role = msg["role"]
        if role not in ROLES:
            raise ValueError("bad role")
        leader = msg.get("leader")
        if leader is not None:
            _int(leader)
        p.role, p.leader = role, leader
        p.head, p.head_hash = _int(msg["head"]), str(msg["hash"])
        if role == LEADING:
            self._saw_leader = True
        self._evaluate()

    def _on_follow(self, p: PeerView, msg: dict) -> None:
        if self.role != LEADING:
            p.link.send({"t": "batch", "refused": True, "n": msg.get("n")})
            return
        probes = msg["probes"]
        if not isinstance(probes, list):
            raise ValueError("bad probes")
        batch = self.sequencer.catch_up(p.number, p.link, probes, _int(msg.get("base", 0)))
        batch["n"] = msg.get("n")
        p.link.send(batch)

    def _on_batch(self, p: PeerView, msg: dict) -> None:
        if p.number != self.sync_target or self.role == FOLLOWING:
            return
        if msg.get("refused"):
            self.sync_target = None
            self._announce()
            self._evaluate()
            return
        entries = msg["entries"]
        if not isinstance(entries, list):
            raise ValueError("bad entries")
        if msg.get("snapshot") is not None:
            self._install(p, msg["snapshot"])
        try:
            for item in entries:
                seq, op, digest = _int(item[0]), _op(item[1]), str(item[2])
                if seq <= self.oplog.head:
                    if self.oplog.hash_at(seq) == digest:
                        continue                # already have it
                    self._truncate(seq - 1, "diverged from tracker %d at seq %d" % (p.number, seq))
                self._apply_entry(seq, op, digest)
            if not msg["done"]:
                self._send_lease_request("follow")
                return
            head = _int(msg["head"])
            if self.oplog.head > head:
                self._truncate(head, "tracker %d's log ends at seq %d" % (p.number, head))
            if self.oplog.head_hash != msg["hash"]:
                raise LogMismatch("log differs from tracker %d's after catch-up" % p.number)
        except LogMismatch as e:
            log.error("catch-up from tracker {n} failed: {why}; retrying", n=p.number, why=str(e))
            self._send_lease_request("follow")
            return
        self.sync_target = None
        self._saw_leader = True
        self._extend_lease(msg.get("n"))
        self._set_role(FOLLOWING, p.number)
        p.link.send({"t": "ack", "seq": self.oplog.head})
        self._after_serving()

    def _apply_entry(self, seq: int, op: dict, digest: str) -> None:
        self.oplog.accept(seq, op, digest)      # raises LogMismatch before changing anything
        try:
            result = self.state.apply(op)
        except MbtError as e:   # the leader applied it to the same state: should never happen
            log.error("replicated operation {seq} ({op}) does not apply here: {err}",
                      seq=seq, op=describe(op), err=e.message)
            result = None
        self.results.remember(op.get("oid"), result)
        if result is not None:
            self._applied_live(op, result)

    def _applied_live(self, op: dict, result: dict) -> None:
        try:
            self.on_applied(op, result)
        except Exception:       # a notice must never break replication
            log.failure("on_applied hook failed for {op}", op=describe(op))

    def _on_entry(self, p: PeerView, msg: dict) -> None:
        if self.role != FOLLOWING or p.number != self.leader:
            return      # not (yet) its replica: the catch-up batch brings it
        seq, op, digest = _int(msg["seq"]), _op(msg["op"]), str(msg["hash"])
        if not (seq <= self.oplog.head and self.oplog.hash_at(seq) == digest):   # else: a duplicate
            try:
                self._apply_entry(seq, op, digest)
            except LogMismatch as e:
                log.warn("entry from tracker {n} does not fit ({why}); catching up again",
                         n=p.number, why=str(e))
                self._follow(p.number)
                return
        p.link.send({"t": "ack", "seq": self.oplog.head})

    def _on_ack(self, p: PeerView, msg: dict) -> None:
        self.sequencer.ack(p.number, _int(msg["seq"]))

    def _on_drop(self, p: PeerView, msg: dict) -> None:
        if (self.role == FOLLOWING and p.number == self.leader) or p.number == self.sync_target:
            log.warn("tracker {n} dropped us from replication ({why}); catching up again",
                     n=p.number, why=str(msg.get("reason"))[:200])
            self.sync_target = None
            self._set_role(SYNCING, None)
            self._evaluate()

    def _on_ping(self, p: PeerView, msg: dict) -> None:
        if self.role == LEADING and self.sequencer.ping(p.number):
            p.link.send({"t": "pong", "n": msg.get("n")})

    def _on_pong(self, p: PeerView, msg: dict) -> None:
        if self.role == FOLLOWING and p.number == self.leader:
            self._extend_lease(msg.get("n"))

    def _on_propose(self, p: PeerView, msg: dict) -> None:
        pid = msg["pid"]
        if not isinstance(pid, str) or len(pid) > 100:
            raise ValueError("bad proposal id")
        op = dict(_op(msg["op"]), oid=pid)
        link = p.link
        if self.role != LEADING:
            link.send({"t": "result", "pid": pid, "error": NotLeader().to_wire()})
            return

        def ok(result):
            link.send({"t": "result", "pid": pid, "ok": result})

        def failed(f):
            if f.check(MbtError):
                err = f.value
            else:
                log.failure("forwarded write {op} failed internally", f, op=describe(op))
                err = Internal()
            link.send({"t": "result", "pid": pid, "error": err.to_wire()})
        self.sequencer.write(op).addCallbacks(ok, failed)

    def _on_result(self, p: PeerView, msg: dict) -> None:
        pid = msg["pid"]
        proposal = self._pending.get(pid) if isinstance(pid, str) else None
        if proposal is None or proposal.sent_to != p.number:
            return
        err = error_from_wire(msg["error"]) if isinstance(msg.get("error"), dict) else None
        if isinstance(err, NotLeader):
            proposal.sent_to = None             # wait for the next leader
            return
        del self._pending[pid]
        proposal.timer = cancel_pending(proposal.timer)
        if err is not None:
            failure = Failure(err)
            for d in proposal.waiters:
                d.errback(failure)
        else:
            ok = msg.get("ok")
            for d in proposal.waiters:
                d.callback(dict(ok) if isinstance(ok, dict) else {})

    def _on_presence(self, p: PeerView, msg: dict) -> None:
        self.presence.receive(p.number, msg)

    def _on_login(self, p: PeerView, msg: dict) -> None:
        self.login_guard.receive(p.number, msg)

    _handlers = {
        "status": _on_status, "follow": _on_follow, "batch": _on_batch, "entry": _on_entry,
        "ack": _on_ack, "drop": _on_drop, "ping": _on_ping, "pong": _on_pong,
        "propose": _on_propose, "result": _on_result, "presence": _on_presence,
        "login": _on_login,
    }


def _fan_out(waiters: List[defer.Deferred]) -> defer.Deferred:
    """A Deferred whose result (or failure) is passed on to every one of ``waiters``."""
    d = defer.Deferred()

    def relay(result):
        for w in waiters:
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(dict(result) if isinstance(result, dict) else result)
        return None
    d.addBoth(relay)
    return d
