"""Login throttling (pure): guessing slows down, the real user keeps getting in.

Three counters of *strikes*:

* the pair (user id, client address): the guesser's own budget, small
  (``PAIR_FREE``). Every attempt counts here as soon as it is admitted,
  before the password is verified, so attempts sent in parallel count too;
  a right password clears the pair. The real user logging in from another
  address is not affected by it at all;
* the client address: one address guessing many user ids (``ADDRESS_FREE``);
* the user id over all addresses: a higher ceiling (``USER_FREE``) against
  guessing spread over many addresses. Only it can keep the real user out,
  and only after that many wrong passwords from elsewhere.

The last two count wrong passwords only, so many users logging in at once
from one address (an office behind NAT) never wait. Strikes decay, one per
``decay`` seconds since the counter's last strike. Past its free allowance
a counter makes every further attempt wait ``2 ** (strikes - free)``
seconds after its last strike, at most ``max_delay``; the longest wait of
the three applies. Time is passed in.

:class:`LoginGuard` is the interface the tracker uses: ``admit`` (check, and
count the attempt), ``failed`` and ``succeeded``. :class:`LocalLoginGuard`
keeps the counters in memory; :mod:`mbt.tracker.login_budget` shares them
between linked trackers; :mod:`mbt.tracker.pglogin` keeps them in the
PostgreSQL database a fleet of trackers shares.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Protocol, Tuple

PAIR_FREE, ADDRESS_FREE, USER_FREE = 5, 20, 50
DECAY_SECONDS = 60.0
MAX_DELAY = 300.0
MAX_TRACKED = 100000     # bounded memory: the least recently struck counters are forgotten first

#: A counter's key: ("p", user, address), ("a", address) or ("u", user).
Key = Tuple[str, ...]


def keys_of(user: str, address: str) -> List[Key]:
    """The three counters one attempt touches."""
    return [("p", user, address), ("a", address), ("u", user)]


class LoginThrottle:
    """The strike counters and the waits they impose (pure: ``now`` is passed in)."""

    def __init__(self, pair_free: int = PAIR_FREE, address_free: int = ADDRESS_FREE,
                 user_free: int = USER_FREE, decay: float = DECAY_SECONDS, max_delay: float = MAX_DELAY,
                 max_tracked: int = MAX_TRACKED) -> None:
        self.free = {"p": pair_free, "a": address_free, "u": user_free}
        self.decay, self.max_delay, self.max_tracked = decay, max_delay, max_tracked
        self._strikes: Dict[Key, Tuple[float, float]] = {}   # key -> (strikes, time of the last one)

    def current(self, key: Key, now: float) -> Tuple[float, float]:
        """(strikes left after decay, time of the last strike) of one counter."""
        strikes, last = self._strikes.get(key, (0.0, now))
        # Whole strikes decay, one per ``decay`` seconds since the last strike.
        return max(0.0, strikes - math.floor(max(0.0, now - last) / self.decay)), last

    def _wait(self, key: Key, now: float) -> float:
        strikes, last = self.current(key, now)
        free = self.free[key[0]]
        if strikes < free:
            return 0.0
        delay = min(self.max_delay, 2.0 ** (strikes - free))
        return max(0.0, last + delay - now)

    def retry_after(self, user: str, address: str, now: float) -> Optional[float]:
        """Seconds to wait before an attempt may be checked, or None if it may go now."""
        wait = max(self._wait(k, now) for k in keys_of(user, address))
        return wait if wait > 0 else None

    def attempt(self, user: str, address: str, now: float) -> None:
        """An attempt is being checked: a strike for the pair."""
        self._add(("p", user, address), now)

    def failed(self, user: str, address: str, now: float) -> None:
        """It had a wrong password (or an unknown user): a strike for the address and the user."""
        self._add(("a", address), now)
        self._add(("u", user), now)

    def succeeded(self, user: str, address: str, now: float) -> None:
        """It had the right password: the pair starts afresh."""
        self._strikes.pop(("p", user, address), None)

    def _add(self, key: Key, now: float) -> None:
        strikes, _ = self.current(key, now)
        self._put(key, strikes + 1, now)

    def merge(self, key: Key, strikes: float, last: float, now: float) -> None:
        """Take another tracker's view of one counter: the higher count wins."""
        mine, _ = self.current(key, now)
        if strikes > mine:
            self._put(key, strikes, last)

    def counter(self, key: Key) -> Optional[Tuple[float, float]]:
        """(strikes, time of the last one) as stored, before decay; None if not tracked."""
        return self._strikes.get(key)

    def set_counter(self, key: Key, strikes: float, last: float) -> None:
        """Store one counter as it is (loaded from elsewhere, e.g. a database)."""
        self._put(key, strikes, last)

    def entries(self, now: float, limit: int) -> Iterable[Tuple[Key, float, float]]:
        """(key, strikes, seconds since the last strike) of live counters, most recent first."""
        out = []
        for key in reversed(list(self._strikes)):
            strikes, last = self.current(key, now)
            if strikes > 0:
                out.append((key, strikes, now - last))
                if len(out) >= limit:
                    break
        return out

    def _put(self, key: Key, strikes: float, when: float) -> None:
        self._strikes.pop(key, None)          # re-insert: dict order = recency
        self._strikes[key] = (strikes, when)
        while len(self._strikes) > self.max_tracked:
            self._strikes.pop(next(iter(self._strikes)))


class LoginGuard(Protocol):
    """What the tracker asks before and after checking a password.

    Each method may answer at once or return a Deferred of the same (a guard
    whose counters live in a database: :mod:`mbt.tracker.pglogin`); the
    tracker waits for it before going on."""

    def admit(self, user: str, address: str) -> Optional[float]:
        """None: the attempt may be checked, and is counted now. Else seconds to wait (not counted)."""

    def failed(self, user: str, address: str) -> None:
        """The admitted attempt had a wrong password."""

    def succeeded(self, user: str, address: str) -> None:
        """The admitted attempt had the right password."""


class LocalLoginGuard:
    """A :class:`LoginGuard` over one in-memory :class:`LoginThrottle` (one tracker alone)."""

    def __init__(self, clock, throttle: Optional[LoginThrottle] = None) -> None:
        self.clock = clock
        self.throttle = throttle or LoginThrottle()

    def admit(self, user: str, address: str) -> Optional[float]:
        now = self.clock.seconds()
        wait = self.throttle.retry_after(user, address, now)
        if wait is None:
            self.throttle.attempt(user, address, now)
        return wait

    def failed(self, user: str, address: str) -> None:
        self.throttle.failed(user, address, self.clock.seconds())

    def succeeded(self, user: str, address: str) -> None:
        self.throttle.succeeded(user, address, self.clock.seconds())
