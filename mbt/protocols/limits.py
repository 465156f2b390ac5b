"""Connection caps shared by the tracker and peer servers: per-address counts, hanging up."""

from __future__ import annotations

from typing import Dict

from twisted.internet import protocol


class HangUp(protocol.Protocol):
    """Closes a connection over a cap as soon as it is made.

    A factory returns this instead of None: returning None upsets TLS wrappers.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()


class HostCounts:
    """How many connections each remote host holds open (pure)."""

    def __init__(self) -> None:
        self._counts: Dict[str, int] = {}

    def __getitem__(self, host: str) -> int:
        return self._counts.get(host, 0)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, host: str) -> None:
        """One more connection from ``host``."""
        self._counts[host] = self._counts.get(host, 0) + 1

    def remove(self, host: str) -> None:
        """One connection from ``host`` closed."""
        left = self._counts.get(host, 0) - 1
        if left > 0:
            self._counts[host] = left
        else:
            self._counts.pop(host, None)
