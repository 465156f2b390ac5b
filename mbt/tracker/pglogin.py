"""The login budget of a PostgreSQL fleet: the throttle's counters in the database.

Over PostgreSQL the trackers have no links to share their login strikes
(:mod:`mbt.tracker.login_budget` does that for the SQLite mode), so the
counters live in the fleet's database (table ``mbt_login_strikes``) and every
tracker reads and updates them there: one budget for every tracker of the
fleet, with no window for parallel attempts on different trackers (each step
locks its counters' rows) and one clock (the database's).

Each of ``admit`` / ``failed`` / ``succeeded`` is one transaction
(:meth:`mbt.tracker.pgstore.PgLog.login_step`) running the very rules of
:class:`mbt.throttle.LoginThrottle` on the three counters an attempt touches.
They return Deferreds; the tracker waits for them (:mod:`mbt.tracker.service`).
A tracker runs its steps one at a time on a connection of its own; if the
database is unreachable a login fails with ``db_unavailable``, like every
request that needs it.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import defer

from mbt.throttle import LoginThrottle, keys_of
from mbt.tracker.pgstore import PgLog


class DatabaseLoginGuard:
    """A :class:`mbt.throttle.LoginGuard` over the fleet database's counters."""

    def __init__(self, db: PgLog, run_in_pool: Callable[..., defer.Deferred],
                 throttle_factory: Callable[[], LoginThrottle] = LoginThrottle) -> None:
        self.db = db
        self.run_in_pool = run_in_pool
        self.throttle_factory = throttle_factory
        self._lock = defer.DeferredLock()      # one step at a time on our connection

    def admit(self, user: str, address: str) -> defer.Deferred:
        """Fires with None (checked now, and counted) or the seconds to wait."""
        def step(throttle: LoginThrottle, now: float) -> Optional[float]:
            wait = throttle.retry_after(user, address, now)
            if wait is None:
                throttle.attempt(user, address, now)
            return wait
        return self._step(user, address, step)

    def failed(self, user: str, address: str) -> defer.Deferred:
        return self._step(user, address, lambda throttle, now: throttle.failed(user, address, now))

    def succeeded(self, user: str, address: str) -> defer.Deferred:
        return self._step(user, address, lambda throttle, now: throttle.succeeded(user, address, now))

    def _step(self, user: str, address: str, step) -> defer.Deferred:
        return self._lock.run(self.run_in_pool, self.db.login_step, keys_of(user, address), step,
                              self.throttle_factory)

    def close(self) -> None:
        """Drop the connection."""
        self.db.close()
