"""Trackers over PostgreSQL: one shared operation log, sequenced by the database.

A :class:`PgFleet` takes the place of the :class:`~mbt.tracker.replication.Replicator`
when a tracker runs with ``--store postgresql://...`` (docs/deployment.rst
has the design). In short:

* **writes** -- one transaction per batch of queued operations (a group
  commit: writes proposed while one transaction is in flight go together in
  the next): lock the log's head row (``FOR UPDATE``; the database serialises
  the fleet's writes), read the operations this tracker has not applied yet,
  apply them, validate each new operation in order with
  :meth:`TrackerState.apply` -- the very rules the SQLite mode uses, nowhere
  else -- and insert the valid ones as the next sequence numbers; a refused
  one changes nothing and is answered with its error alone (roll back if all
  were refused). Two trackers racing for ``create_user bob`` queue on
  the row lock; the second sees the first's operation and gets ``user_exists``.
* **reads** -- every request waits for a *catch-up* (read the log after our
  head) that started after the request arrived, so a write acknowledged by any
  tracker is visible here before the next request is answered. Concurrent
  requests share one catch-up, so the database sees at most one such query per
  tracker at a time, whatever the request rate.
* **presence** -- logins, logouts and announcements are operations in the same
  log (``presence_*``), applied to sessions only. Each tracker renews a lease
  every ``heartbeat`` seconds; when a tracker's lease has been expired, any
  other tracker logs ``presence_reset`` for it, dropping its peers: they
  disappear within ``lease + heartbeat`` seconds of its death.
* **snapshots** -- every ``snapshot_every`` operations a tracker rebuilds the
  state at that point in a worker thread and stores it; older log rows are
  deleted. Start-up reads the newest snapshot plus the tail.
* **failures** -- a request that needs the database while it is unreachable
  fails at once with ``tracker database unavailable; retrying``; the next
  request (or the heartbeat, every second) reconnects. A commit whose outcome
  is unknown makes the tracker reload its state from the database.

All other database calls run in a small thread pool (psycopg is blocking); the
state is touched only on the reactor thread.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from mbt.errors import ConfigError, DatabaseUnavailable, MbtError
from mbt.tracker import snapshot
from mbt.tracker.pglogin import DatabaseLoginGuard
from mbt.tracker.pgstore import PgLog, safe_url
from mbt.tracker.pgtail import PgTail
from mbt.tracker.state import Session, TrackerState

log = Logger(namespace="mbt.tracker.pgfleet")

#: Seconds between lease renewals; a tracker's lease lasts LEASE seconds.
HEARTBEAT = 1.0
LEASE = 5.0
#: Seconds after which a logged ``dial`` push is no longer delivered.
DIAL_STALE = 30.0
#: A snapshot is taken after every this many operations.
SNAPSHOT_EVERY = 20000
#: At most this many queued writes go in one transaction (a group commit).
MAX_BATCH = 200


def apply_entry(state: TrackerState, op: dict, me: Optional[int]) -> Optional[dict]:
    """Apply one logged operation to ``state`` as tracker ``me`` sees it.

    Durable operations go through :meth:`TrackerState.apply` (a logged one
    always applies: it was validated against the same state when logged).
    Presence operations of tracker ``me`` itself are skipped: its own sessions
    are the local ones. ``me=None`` (snapshot building) mirrors every tracker.
    """
    name = op.get("op")
    if not (isinstance(name, str) and name.startswith("presence_")):
        try:
            return state.apply(op)      # the result: for membership pushes
        except MbtError as e:
            shown = {k: v for k, v in op.items() if k != "password_record"}
            log.error("logged operation {op!r} no longer applies: {err}", op=shown, err=e.message)
        return None
    origin = op.get("tracker")
    if not isinstance(origin, int) or origin == me:
        return
    sid = str(op.get("sid", ""))
    if name == "presence_open":
        state.put_remote_session(origin, sid, str(op.get("user")), str(op.get("address")))
    elif name == "presence_announce":
        state.remote_announce(origin, sid, str(op.get("group")), str(op.get("name")), True)
    elif name == "presence_reach":
        state.remote_reachable(origin, sid, op.get("ok") is True)
    elif name == "presence_close":
        state.drop_remote_session(origin, sid)
    elif name == "presence_reset":
        state.drop_remote_sessions(origin)


def rebuild(text: Optional[str], rows: List[Tuple[int, str]], me: Optional[int],
            state: Optional[TrackerState] = None) -> TrackerState:
    """A state from a snapshot (or nothing) and the operations after it."""
    state = state if state is not None else TrackerState()
    if text is not None:
        snapshot.loads(state, text, checked=False)     # the fleet's own database wrote it
    else:
        state.reset_durable()
        state.sessions.clear()
    for _seq, op_text in rows:
        apply_entry(state, json.loads(op_text), me)
    return state


class FleetPresence:
    """This tracker's session changes, logged for the fleet (the PresenceGossip of PG mode)."""

    def __init__(self, fleet: "PgFleet") -> None:
        self.fleet = fleet
        #: ``on_dial(session_id, push)``: a ``dial`` push another tracker logged for
        #: one of our sessions (set by the tracker core; only live rows, never loads).
        self.on_dial: Callable[[str, dict], None] = lambda session_id, push: None
        self.reachable: Callable[[str], object] = lambda session_id: None

    def reach(self, session_id: str, reachable: bool) -> defer.Deferred:
        """This tracker probed a session's address: log what it found for the fleet."""
        d = self.fleet.propose({"op": "presence_reach", "tracker": self.fleet.number,
                                "sid": session_id, "ok": bool(reachable)})
        d.addErrback(self._lost, "reach")
        return d

    def dial(self, origin: int, session_id: str, push: dict) -> defer.Deferred:
        """Log ``push`` for tracker ``origin``'s session; that tracker sends it when it
        reads the row (at once if busy, else at its next heartbeat)."""
        return self.fleet.propose({"op": "presence_dial", "tracker": self.fleet.number, "to": origin,
                                   "sid": session_id, "push": push, "at": self.fleet.clock.seconds()})

    def opened(self, session: Session) -> defer.Deferred:
        """A client logged in here: fires once the fleet can see it."""
        return self.fleet.propose({"op": "presence_open", "tracker": self.fleet.number,
                                   "sid": session.session_id, "user": session.user,
                                   "address": session.address})

    def closed(self, session_id: str) -> defer.Deferred:
        """A session here ended."""
        d = self.fleet.propose({"op": "presence_close", "tracker": self.fleet.number, "sid": session_id})
        d.addErrback(self._lost, "close")
        return d

    def announced(self, session_id: str, group: str, name: str) -> defer.Deferred:
        """A session here announced a file it serves."""
        session = self.fleet.state.sessions.get(session_id)
        if session is None or (group, name) not in session.shares:
            return defer.succeed(None)
        return self.fleet.propose({"op": "presence_announce", "tracker": self.fleet.number,
                                   "sid": session_id, "group": group, "name": name})

    @staticmethod
    def _lost(f: Failure, what: str) -> None:
        # The lease expiry cleans up after us if the database was away.
        log.warn("could not log presence {what}: {err}", what=what, err=f.getErrorMessage())

    def stop(self) -> None:
        """Nothing to cancel."""


class PgFleet:
    """One tracker's link to the fleet's database: serving gate, writes, presence, leases."""

    def __init__(self, number: int, state: TrackerState, url: str, clock,
                 heartbeat: float = HEARTBEAT, lease: float = LEASE,
                 snapshot_every: int = SNAPSHOT_EVERY, pool_size: int = 5,
                 max_batch: int = MAX_BATCH) -> None:
        self.number = number
        self.state = state
        self.url = url
        self.clock = clock
        self.heartbeat_interval = heartbeat
        self.lease = lease
        self.snapshot_every = snapshot_every
        self.max_batch = max(1, max_batch)
        self.presence = FleetPresence(self)
        #: Called with (op, result) for each durable operation applied live
        #: (our own writes and other trackers' caught up while serving; not
        #: loads or reloads): membership pushes (mbt.tracker.events).
        self.on_applied: Callable[[dict, dict], None] = lambda op, result: None
        self.head = 0
        self.db_ok = True
        self._reader, self._writer, self._beater, self._snapper = (PgLog(url) for _ in range(4))
        self._pool = ThreadPool(minthreads=1, maxthreads=pool_size, name="mbt-db")
        #: The catch-ups' query, on the reactor thread (non-blocking libpq).
        self._tail = PgTail(url, clock, self._in_pool)
        #: The login budget of the whole fleet, in the database (mbt.tracker.pglogin).
        self.login_guard = DatabaseLoginGuard(PgLog(url), self._in_pool)
        self._writes: Deque[Tuple[dict, defer.Deferred]] = deque()
        self._writing = False
        self._inflight: Optional[defer.Deferred] = None    # validated, not yet committed
        self._sync_running = False
        self._sync_waiters: List[defer.Deferred] = []
        self._stale = False                                 # memory may differ from the database
        self._expiring: set = set()
        self._snapshotting = False
        self._beat = None
        self._stopped = False

    # -- lifecycle ---------------------------------------------------------------

    def load(self, on_error: Callable = None) -> int:
        """Read the newest snapshot and the log after it (blocking: before the reactor serves)."""
        try:
            self._reader.ensure_schema()
            base, text, rows = self._reader.load()
        except DatabaseUnavailable:
            raise ConfigError("cannot reach the tracker database %s" % safe_url(self.url))
        rebuild(text, rows, self.number, self.state)
        # Sessions of an earlier run of this tracker are gone with its connections.
        self.state.drop_remote_sessions(self.number)
        self.head = rows[-1][0] if rows else base
        return self.head

    def start(self) -> None:
        """Start the thread pool, announce this (re)started tracker, renew leases."""
        if self._beat is not None or self._stopped:
            return
        self._pool.start()
        self.propose({"op": "presence_reset", "tracker": self.number}).addErrback(
            lambda f: log.warn("could not reset presence: {err}", err=f.getErrorMessage()))
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self.clock
        self._beat.start(self.heartbeat_interval, now=True)

    def stop(self) -> None:
        """Stop renewing the lease, fail waiting requests, close the connections."""
        if self._stopped:
            return
        self._stopped = True
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        waiters, self._sync_waiters = self._sync_waiters, []
        for d in waiters:
            d.errback(DatabaseUnavailable())
        writes, self._writes = list(self._writes), deque()
        for _op, d in writes:
            d.errback(DatabaseUnavailable())
        self._tail.close()
        self._pool.stop()
        for db in (self._reader, self._writer, self._beater, self._snapper):
            db.close()
        self.login_guard.close()

    def _in_pool(self, fn, *args) -> defer.Deferred:
        return threads.deferToThreadPool(self.clock, self._pool, fn, *args)

    # -- serving -------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Did the last database call succeed?"""
        return self.db_ok and not self._stopped

    def status(self) -> dict:
        """A summary for monitoring (the ``tracker_status`` request)."""
        return {"tracker": self.number, "role": "database", "leader": None, "serving": self.serving,
                "seq": self.head, "linked": [], "store": safe_url(self.url)}

    def wait_serving(self) -> defer.Deferred:
        """A Deferred that fires once this tracker has caught up with every write
        committed before now, or fails with DatabaseUnavailable."""
        if self._stopped:
            return defer.fail(DatabaseUnavailable())
        d = defer.Deferred()
        self._sync_waiters.append(d)
        if not self._sync_running:
            self._sync()
        return d

    def _sync(self) -> None:
        self._sync_running = True
        waiters, self._sync_waiters = self._sync_waiters, []
        d = self._catch_up()

        def settle(result):
            # Never answer from an operation this tracker has applied but not committed yet.
            if self._inflight is not None:
                w = defer.Deferred()
                self._inflight.addBoth(lambda r: (w.callback(None), r)[1])
                return w.addCallback(lambda _: result)
            return result
        d.addBoth(settle)

        def done(result):
            self._sync_running = False
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result.value if result.check(MbtError) else DatabaseUnavailable())
                else:
                    w.callback(None)
            if self._sync_waiters and not self._stopped:
                self._sync()
        d.addBoth(done)

    @defer.inlineCallbacks
    def _catch_up(self):
        """Apply every committed operation after our head (reload if they were compacted)."""
        while True:
            if self._stale:
                yield self._reload()
            try:
                rows = yield self._tail.tail(self.head)
            except LookupError:
                self._stale = True
                continue
            except DatabaseUnavailable:
                self._db_failed()
                raise
            self.db_ok = True
            self._apply_rows(rows)
            if len(rows) < 20000:
                return

    @defer.inlineCallbacks
    def _reload(self):
        try:
            base, text, rows = yield self._in_pool(self._reader.load)
        except DatabaseUnavailable:
            self._db_failed()
            raise
        local = {sid: s for sid, s in self.state.sessions.items() if s.origin == 0}
        rebuild(text, rows, self.number, self.state)
        self.state.drop_remote_sessions(self.number)
        self.state.sessions.update(local)
        self.head = rows[-1][0] if rows else base
        self._stale = False
        log.info("reloaded the state from the database at operation {seq}", seq=self.head)

    def _apply_rows(self, rows: List[Tuple[int, str]]) -> None:
        for seq, text in rows:
            if seq <= self.head:
                continue
            if seq != self.head + 1:
                self._stale = True
                return
            op = json.loads(text)
            result = apply_entry(self.state, op, self.number)
            self.head = seq
            if result is not None:
                self._applied_live(op, result)
            if op.get("op") == "presence_reset" and op.get("tracker") == self.number:
                self._reannounce()
            if op.get("op") == "presence_dial" and op.get("to") == self.number:
                self._dial_live(op)

    def _db_failed(self) -> None:
        if self.db_ok:
            log.warn("tracker database {url} unavailable; retrying", url=safe_url(self.url))
        self.db_ok = False

    # -- writes ------------------------------------------------------------------------

    def propose(self, op: dict) -> defer.Deferred:
        """Validate and log ``op`` for the whole fleet; fires with its result.

        Writes proposed while a transaction is in flight go together in the
        next one (up to ``max_batch``): each is validated in order by
        :meth:`TrackerState.apply` and answered with its own result; a refused
        one is left out and changes nothing."""
        if self._stopped:
            return defer.fail(DatabaseUnavailable())
        d = defer.Deferred()
        self._writes.append((op, d))
        if not self._writing:
            self._next_write()
        return d

    def _next_write(self) -> None:
        if not self._writes or self._stopped:
            self._writing = False
            return
        self._writing = True
        batch = [self._writes.popleft() for _ in range(min(len(self._writes), self.max_batch))]

        def finished(outcomes):
            # Move the queue on first: the callers' callbacks may propose (and wait for) more writes.
            self.clock.callLater(0, self._next_write)
            if isinstance(outcomes, Failure):           # the whole batch failed (the database)
                outcomes = [outcomes] * len(batch)
            for (_op, d), outcome in zip(batch, outcomes):
                if isinstance(outcome, Failure):
                    d.errback(outcome.value)
                else:
                    d.callback(outcome)
        self._write([op for op, _d in batch]).addBoth(finished)

    @defer.inlineCallbacks
    def _write(self, ops: List[dict]):
        """One transaction for ``ops`` (a group commit): each validated in order, the
        valid ones logged together; returns each op's result or its Failure."""
        if self._stale:
            yield self._reload()
        try:
            head, rows = yield self._in_pool(self._writer.lock_tail, self.head)
        except LookupError:
            self._stale = True
            raise DatabaseUnavailable()
        except DatabaseUnavailable:
            self._db_failed()
            raise
        self.db_ok = True
        self._apply_rows(rows)
        if self.head != head:       # should not happen: we hold the lock
            self._stale = True
            yield self._in_pool(self._writer.rollback)
            raise DatabaseUnavailable()
        outcomes: list = []
        logged: List[dict] = []
        try:
            for op in ops:
                try:
                    if op.get("op", "").startswith("presence_"):
                        apply_entry(self.state, op, self.number)    # our own sessions are local already
                        result = {}
                    else:
                        result = self.state.apply(op)       # the one place the rules are checked
                except MbtError as e:
                    # Refused: it changed nothing (memory or database); the others go on.
                    outcomes.append(Failure(e))
                    continue
                outcomes.append(result)
                logged.append(op)
        except Exception:
            # A bug, not a refusal: memory may hold part of the batch; the database decides.
            self._stale = True
            yield self._in_pool(self._writer.rollback)
            raise
        if not logged:
            try:
                yield self._in_pool(self._writer.rollback)
            except DatabaseUnavailable:
                self._db_failed()       # nothing was written; each refusal still stands
            return outcomes
        first = head + 1
        self.head = head + len(logged)
        inflight = self._inflight = defer.Deferred()
        try:
            yield self._in_pool(self._writer.append_many, first, logged)
        except Exception:
            # Maybe committed, maybe not: the database decides; reload from it.
            self._stale = True
            self._db_failed()
            raise DatabaseUnavailable()
        finally:
            self._inflight = None
            inflight.callback(None)
        multiple = self.head // self.snapshot_every * self.snapshot_every
        if multiple >= first:
            self._take_snapshot(multiple)
        for op, outcome in zip(ops, outcomes):
            if not isinstance(outcome, Failure) and not op.get("op", "").startswith("presence_"):
                self._applied_live(op, outcome)
        return outcomes

    def _applied_live(self, op: dict, result: dict) -> None:
        try:
            self.on_applied(op, result)
        except Exception:       # a notice must never break the write path
            log.failure("on_applied hook failed for {op}", op=op.get("op"))

    def _dial_live(self, op: dict) -> None:
        """Another tracker logged a ``dial`` push for one of our sessions: send it, unless stale."""
        at, push = op.get("at"), op.get("push")
        if not isinstance(at, (int, float)) or abs(self.clock.seconds() - at) > DIAL_STALE:
            return      # read late (e.g. after an outage): the downloader gave up long ago
        if isinstance(push, dict) and push.get("push") == "dial":
            try:
                self.presence.on_dial(str(op.get("sid", "")), push)
            except Exception:
                log.failure("on_dial hook failed")

    def _reannounce(self) -> None:
        """Another tracker took us for dead and dropped our peers: announce them again."""
        log.warn("the fleet expired this tracker's presence; announcing its sessions again")
        for s in self.state.local_sessions():
            self.presence.opened(s).addErrback(lambda f: None)
            for group, name in sorted(s.shares):
                self.propose({"op": "presence_announce", "tracker": self.number, "sid": s.session_id,
                              "group": group, "name": name}).addErrback(lambda f: None)
            if self.presence.reachable(s.session_id) is False:
                self.presence.reach(s.session_id, False)

    # -- leases ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _heartbeat(self):
        try:
            expired = yield self._in_pool(self._beater.heartbeat, self.number, self.lease)
        except DatabaseUnavailable:
            self._db_failed()
            return
        except Exception as e:      # never let the loop die
            log.failure("heartbeat failed", Failure(e))
            return
        if not self.db_ok:
            log.info("tracker database {url} reachable again", url=safe_url(self.url))
        self.db_ok = True
        if not self._sync_running and not self._stopped:
            # Also pick up the other trackers' writes while idle, so that the
            # membership pushes they cause reach our sessions within a heartbeat.
            self._sync()
        for number in expired:
            if number == self.number or number in self._expiring:
                continue
            if not any(s.origin == number for s in self.state.sessions.values()):
                continue
            self._expiring.add(number)
            log.info("tracker {n}'s lease ran out; dropping its peers", n=number)
            d = self.propose({"op": "presence_reset", "tracker": number})
            d.addBoth(lambda _, n=number: self._expiring.discard(n))

    # -- snapshots -------------------------------------------------------------------------

    def _take_snapshot(self, seq: int) -> None:
        if self._snapshotting:
            return
        self._snapshotting = True
        db = self._snapper

        def build():
            base, text, rows = db.load()
            rows = [r for r in rows if r[0] <= seq]
            if base >= seq or not rows or rows[-1][0] != seq:
                return None
            state = rebuild(text, rows, None)
            db.save_snapshot(seq, snapshot.dumps(state, sessions=True))
            return seq

        d = self._in_pool(build)

        def done(result):
            self._snapshotting = False
            if isinstance(result, Failure):
                log.warn("snapshot at {seq} failed: {err}", seq=seq, err=result.getErrorMessage())
            elif result:
                log.info("snapshot of the state at operation {seq} stored", seq=seq)
            # A multiple passed while this one was built: take that one now.
            later = self.head // self.snapshot_every * self.snapshot_every
            if later > seq and not self._stopped:
                self._take_snapshot(later)
        d.addBoth(done)
