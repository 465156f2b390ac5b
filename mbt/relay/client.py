"""A peer's side of the relay: dial, say ``RELAY <token> <side>``, wait for ``OK``, hand over.

After ``OK`` the connection belongs to ``inner`` (a peer-wire protocol): it is
made connected to the same transport and gets every byte that follows, so the
peer wire runs over the relay exactly as over a direct connection.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet import protocol
from twisted.logger import Logger

from mbt.timers import cancel_pending

log = Logger(namespace="mbt.relay.client")

#: Seconds to wait for the partner (a little more than the relay's own wait).
WAIT_FOR_PARTNER = 70.0
MAX_REPLY = 200


class RelayHandshake(protocol.Protocol):
    """Pairs at a relay, then passes the connection to ``inner``.

    ``failed(reason)`` is called once if the relay refuses or the connection
    ends before pairing.
    """

    def __init__(self, token: str, side: str, inner: protocol.Protocol, clock,
                 failed: Callable[[str], None] = lambda reason: None) -> None:
        self.token = token
        self.side = side
        self.inner = inner
        self.clock = clock
        self.failed = failed
        self.paired = False
        self._buffer = b""
        self._timer = None

    def connectionMade(self) -> None:
        self.transport.write(b"RELAY %s %s\n" % (self.token.encode("ascii"), self.side.encode("ascii")))
        self._timer = self.clock.callLater(WAIT_FOR_PARTNER, self._give_up, "no partner at the relay in time")

    def _give_up(self, reason: str) -> None:
        self._timer = None
        cb, self.failed = self.failed, lambda r: None
        cb(reason)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.paired:
            return self.inner.dataReceived(data)
        self._buffer += data
        line, nl, rest = self._buffer.partition(b"\n")
        if not nl:
            if len(self._buffer) > MAX_REPLY:
                self._stop_timer()
                self._give_up("the relay sent garbage")
            return
        self._stop_timer()
        if line.rstrip(b"\r") != b"OK":
            text = line.decode("ascii", "replace")[:MAX_REPLY]
            return self._give_up("relay: " + (text[6:] if text.startswith("ERROR ") else "unexpected %r" % text))
        self.paired = True
        self._buffer = b""
        self.inner.makeConnection(self.transport)
        if rest:
            self.inner.dataReceived(rest)

    def _stop_timer(self) -> None:
        self._timer = cancel_pending(self._timer)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._stop_timer()
        if self.paired:
            self.inner.connectionLost(reason)
        else:
            cb, self.failed = self.failed, lambda r: None
            cb("the relay closed the connection before pairing")


class RelayClientFactory(protocol.ClientFactory):
    """Builds one :class:`RelayHandshake` (for ``endpoint.connect``)."""

    def __init__(self, handshake: RelayHandshake) -> None:
        self.handshake = handshake

    def buildProtocol(self, addr) -> Optional[protocol.Protocol]:
        return self.handshake
