"""A token bucket shared by all of a peer's uploads (``--upload-rate``)."""

from __future__ import annotations

from typing import Callable, List, Optional


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
    if value < 0:
        raise ValueError("a rate cannot be negative")
    return value


class TokenBucket:
    """Admits ``rate`` bytes per second on average, with bursts up to ``burst``.

    ``admit(n, retry)`` either takes ``n`` tokens at once (True) or returns
    False and calls ``retry()`` once enough tokens have accumulated. A rate of
    0 means unlimited. The clock is injected (``reactor`` or ``task.Clock``).
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
        # Enough for a few blocks, so pipelined requests flow smoothly.
        return self.burst if self.burst is not None else max(self.rate / 4.0, 1024 * 1024)

    def set_rate(self, rate: float) -> None:
        """Change the rate live (0 = unlimited); waiting senders are re-checked."""
        self._refill()
        self.rate = rate
        self.tokens = min(self.tokens, self._burst())
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
        if self.tokens >= n or (self.tokens >= self._burst() and not self.waiting):
            self.tokens -= n     # may go negative for a block bigger than the burst
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
