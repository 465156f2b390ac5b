"""Upload pacing and rate readings: a token bucket shared by all of a peer's
uploads (``--upload-rate``) and a sliding-window rate meter (``show_downloads``).

Both are honest over a few seconds, which is what a user checks: over any
window of T seconds a capped peer sends at most ``rate * T + max(burst, block)``
bytes, with ``burst`` a tenth of a second's worth; and a reading is the bytes
that arrived in the last :data:`RATE_WINDOW` seconds divided by that window
(or by the time since the transfer started, if shorter).
"""

from __future__ import annotations

import collections
from typing import Callable, Deque, List, Optional, Tuple

from mbt.timers import cancel_pending

#: The bucket holds at most this many seconds' worth of tokens. A larger burst
#: lets a short transfer go out far above the cap (1 MiB at 300 kB/s was 70 %
#: too much over 5 s); a tenth of a second keeps any 5 s window within 2 %.
BURST_SECONDS = 0.1
#: Smallest burst, so that a very low cap still paces small blocks smoothly.
MIN_BURST = 16 * 1024
#: Seconds over which :class:`RateMeter` averages.
RATE_WINDOW = 5.0
#: A reading never divides by less than this (seconds): a single block right
#: after the start is not shown as a huge rate.
MIN_SPAN = 1.0


def parse_rate(text: str) -> float:
    """Parse ``25M``, ``512k``, ``1.5G``, ``0`` (unlimited) into bytes per second."""
    t = text.strip().upper().rstrip("/S").rstrip("B")
    scale = 1
    if t and t[-1] in "KMG":
        scale = {"K": 1000, "M": 1000 ** 2, "G": 1000 ** 3}[t[-1]]
        t = t[:-1]
    try:
        value = float(t) * scale
    except ValueError:
        raise ValueError("bad rate %r: use a number of bytes/s with an optional k, M or G" % text)
    if value < 0 or value != value or value == float("inf"):
        raise ValueError("a rate must be a finite number of bytes/s, 0 or more")
    return value


class TokenBucket:
    """Admits ``rate`` bytes per second on average, with bursts up to ``burst``.

    ``admit(n, retry)`` either takes ``n`` tokens at once (True) or returns
    False and calls ``retry()`` once enough tokens have accumulated. A block
    bigger than the burst is admitted when the bucket is full and leaves it in
    debt, so over any window the excess is at most one burst or one block. A
    rate of 0 means unlimited. The clock is injected (``reactor`` or
    ``task.Clock``).
    """

    def __init__(self, clock, rate: float = 0.0, burst: Optional[float] = None) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = self._burst()
        self.stamp = clock.seconds()
        self.waiting: List[Callable[[], None]] = []
        self._timer = None

    def _burst(self) -> float:
        return self.burst if self.burst is not None else max(self.rate * BURST_SECONDS, MIN_BURST)

    def set_rate(self, rate: float) -> None:
        """Change the rate live (0 = unlimited); waiting senders are re-checked."""
        self._refill()
        self.rate = rate
        self.tokens = min(self.tokens, self._burst())
        self._timer = cancel_pending(self._timer)
        self._wake()

    def _refill(self) -> None:
        now = self.clock.seconds()
        if self.rate > 0:
            self.tokens = min(self._burst(), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def admit(self, n: int, retry: Callable[[], None]) -> bool:
        """Take ``n`` tokens now, or queue ``retry`` and return False."""
        if self.rate <= 0:
            return True
        self._refill()
        if self.tokens >= min(n, self._burst()) and not self.waiting:
            self.tokens -= n     # negative for a block bigger than the burst: paid back first
            return True
        if retry not in self.waiting:
            self.waiting.append(retry)
        self._schedule(n)
        return False

    def _schedule(self, n: int) -> None:
        if self._timer is not None and self._timer.active():
            return
        need = max(0.0, min(n, self._burst()) - self.tokens)
        self._timer = self.clock.callLater(max(0.001, need / self.rate), self._wake)

    def _wake(self) -> None:
        self._timer = None
        waiting, self.waiting = self.waiting, []
        for retry in waiting:
            retry()


class RateMeter:
    """Bytes per second over the last ``window`` seconds (a sliding window).

    ``add(n)`` records bytes as they arrive; ``rate()`` divides the bytes of
    the last ``window`` seconds by the window, or by the time since
    ``restart()`` when the transfer is younger than that (never by less than
    :data:`MIN_SPAN`). Exact, not a decaying average: a reading over 5 s is
    what a stopwatch would give.
    """

    def __init__(self, clock, window: float = RATE_WINDOW) -> None:
        self.clock = clock
        self.window = window
        self._events: Deque[Tuple[float, int]] = collections.deque()
        self._total = 0
        self.started = clock.seconds()

    def restart(self) -> None:
        """Start measuring afresh (a download starts or resumes)."""
        self._events.clear()
        self._total = 0
        self.started = self.clock.seconds()

    def add(self, n: int) -> None:
        """``n`` bytes arrived now."""
        self._events.append((self.clock.seconds(), n))
        self._total += n
        self._expire(self.clock.seconds())

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window:
            self._total -= self._events.popleft()[1]

    def rate(self) -> float:
        """Bytes per second over the window."""
        now = self.clock.seconds()
        self._expire(now)
        span = min(self.window, max(now - self.started, MIN_SPAN))
        return self._total / span
