"""Login throttling: brute force slows down, per user and per address (pure).

Each failed login adds a strike to the user id and to the client's address.
Strikes decay (one every ``decay`` seconds). Past a free allowance, every
further attempt must wait an exponentially growing delay (capped), so a
guesser gets a handful of tries, then one every few minutes, while a user who
mistypes twice never notices. A success clears the user's strikes (not the
address's: one attacker may own one account). Time is passed in.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

USER_FREE, ADDRESS_FREE = 5, 20
DECAY_SECONDS = 60.0
MAX_DELAY = 300.0
MAX_TRACKED = 100000     # bounded memory: the oldest entries are forgotten first


class LoginThrottle:
    """Decides whether a login attempt may be checked now."""

    def __init__(self, user_free: int = USER_FREE, address_free: int = ADDRESS_FREE,
                 decay: float = DECAY_SECONDS, max_delay: float = MAX_DELAY) -> None:
        self.user_free, self.address_free = user_free, address_free
        self.decay, self.max_delay = decay, max_delay
        self._strikes: Dict[str, Tuple[float, float]] = {}   # key -> (strikes, last failure time)

    def _current(self, key: str, now: float) -> Tuple[float, float]:
        strikes, last = self._strikes.get(key, (0.0, now))
        # Whole strikes decay, one per ``decay`` seconds since the last failure.
        return max(0.0, strikes - math.floor((now - last) / self.decay)), last

    def _wait(self, key: str, free: int, now: float) -> float:
        strikes, last = self._current(key, now)
        if strikes < free:
            return 0.0
        delay = min(self.max_delay, 2.0 ** (strikes - free))
        return max(0.0, last + delay - now)

    def retry_after(self, user: str, address: str, now: float) -> Optional[float]:
        """Seconds to wait before this attempt may be checked, or None if it may go now."""
        wait = max(self._wait("u:" + user, self.user_free, now),
                   self._wait("a:" + address, self.address_free, now))
        return wait if wait > 0 else None

    def failed(self, user: str, address: str, now: float) -> None:
        """Count a wrong password (or unknown user)."""
        for key in ("u:" + user, "a:" + address):
            strikes, _ = self._current(key, now)
            self._strikes.pop(key, None)          # re-insert: dict order = recency
            self._strikes[key] = (strikes + 1, now)
        while len(self._strikes) > MAX_TRACKED:
            self._strikes.pop(next(iter(self._strikes)))

    def succeeded(self, user: str) -> None:
        """A correct password clears the user's strikes."""
        self._strikes.pop("u:" + user, None)
