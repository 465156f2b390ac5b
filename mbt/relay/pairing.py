"""Relay logic without I/O: who waits for whom, and how fast bytes may flow.

A peer that can accept no connection reaches another such peer through a
relay: both dial the relay and send ``RELAY <token> <side>``; the relay pairs
the two connections that name the same token with opposite sides (``serve``
and ``fetch``) and from then on copies bytes both ways. :class:`Pairing`
decides the pairing; :class:`Allowance` the bandwidth (a debt-based token
bucket: bytes already received are always forwarded, and reading pauses for
as long as the debt takes to pay back). Both are pure: times are parameters.
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

SIDES = ("serve", "fetch")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{16,64}\Z")


class RelayRefused(Exception):
    """A handshake the relay will not pair; the message is sent to the client."""


def parse_handshake(line: bytes) -> Tuple[str, str]:
    """``RELAY <token> <side>`` -> ``(token, side)``, or raise RelayRefused."""
    try:
        text = line.rstrip(b"\r").decode("ascii")
    except UnicodeDecodeError:
        raise RelayRefused("bad handshake; expected: RELAY <token> serve|fetch")
    parts = text.split(" ")
    if len(parts) != 3 or parts[0] != "RELAY" or parts[2] not in SIDES or not TOKEN_RE.match(parts[1]):
        raise RelayRefused("bad handshake; expected: RELAY <token> serve|fetch")
    return parts[1], parts[2]


class Pairing:
    """Connections waiting for their partner, by token."""

    def __init__(self, max_waiting: int = 1000, max_pairs: int = 500) -> None:
        self.max_waiting = max_waiting
        self.max_pairs = max_pairs
        self.waiting: Dict[str, Tuple[str, object]] = {}     # token -> (side, connection)
        self.pairs = 0

    def arrive(self, token: str, side: str, conn: object) -> Optional[object]:
        """``conn`` says ``RELAY token side``: return its partner if waiting, else wait.

        Raises RelayRefused when the token is already taken by the same side
        or the relay is full.
        """
        other = self.waiting.get(token)
        if other is not None:
            other_side, other_conn = other
            if other_side == side:
                raise RelayRefused("token already waiting on the %s side" % side)
            if self.pairs >= self.max_pairs:
                raise RelayRefused("relay full (%d pairs); try again later" % self.max_pairs)
            del self.waiting[token]
            self.pairs += 1
            return other_conn
        if len(self.waiting) >= self.max_waiting:
            raise RelayRefused("relay full (%d waiting); try again later" % self.max_waiting)
        self.waiting[token] = (side, conn)
        return None

    def leave(self, conn: object, paired: bool) -> None:
        """``conn`` closed (or timed out); forget it. ``paired``: it had a partner."""
        for token, (_side, c) in list(self.waiting.items()):
            if c is conn:
                del self.waiting[token]
        if paired:
            self.pairs = max(0, self.pairs - 1)


class Allowance:
    """A token bucket that lets bytes through and says how long to pause after.

    ``charge(n, now)`` takes ``n`` bytes and returns the seconds the sender
    must stop reading before the bucket is out of debt again (0: go on).
    ``rate`` 0 is unlimited.
    """

    def __init__(self, rate: float, now: float, burst: Optional[float] = None) -> None:
        self.rate = float(rate)
        self.burst = burst if burst is not None else max(self.rate / 4.0, 256 * 1024)
        self.tokens = self.burst
        self.stamp = now

    def charge(self, n: int, now: float) -> float:
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return -self.tokens / self.rate if self.tokens < 0 else 0.0
