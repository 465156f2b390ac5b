"""The relay's wire side: one protocol per dialled-in connection, a factory holding the limits.

Client -> relay, first line: ``RELAY <token> <side>`` (``side``: ``serve`` or
``fetch``). The relay answers ``OK`` to both connections of a pair at the
moment it pairs them; from then on every byte one side sends is copied to
the other, untouched (so with TLS between the peers it sees only
ciphertext). A refused handshake gets ``ERROR <reason>`` and the connection
is closed. See docs/protocol.rst, "The relay".
"""

from __future__ import annotations

from typing import Optional

from twisted.internet import interfaces, protocol
from twisted.logger import Logger
from zope.interface import implementer

from mbt.relay import splice
from mbt.relay.pairing import Allowance, Pairing, RelayRefused, parse_handshake
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.relay")

#: Longest handshake line.
MAX_HANDSHAKE = 200
#: Seconds to send the handshake after connecting.
HANDSHAKE_TIMEOUT = 15.0
#: Seconds an unpaired connection waits for its partner.
PAIR_TIMEOUT = 60.0
#: Bytes read from a socket at once.
RELAY_READ = 1024 * 1024
#: Bytes a waiting connection may send before it is paired (then it is closed).
MAX_EARLY = 64 * 1024


@implementer(interfaces.IPushProducer)
class RelayProtocol(protocol.Protocol):
    """One side of a relayed pair; also the producer its partner's transport pauses."""

    def __init__(self) -> None:
        self.partner: Optional["RelayProtocol"] = None
        self._buffer = b""
        self._handshaken = False
        self._paused_for = set()
        self._timer = None
        self._rate_timer = None
        self.allowance: Optional[Allowance] = None
        #: The splice pipe that writes into this connection (zero-copy mode), if any.
        self.pipe_in: Optional[splice.SplicePipe] = None

    def connectionMade(self) -> None:
        f = self.factory
        if hasattr(self.transport, "bufferSize"):
            # Fewer, larger reads (Twisted reads 64 KiB at a time by default).
            self.transport.bufferSize = RELAY_READ
        self.allowance = Allowance(f.rate, f.clock.seconds())
        self._timer = f.clock.callLater(HANDSHAKE_TIMEOUT, self._refuse, "no handshake in time")
        f.connections.add(self)

    def _cancel_timer(self) -> None:
        self._timer = cancel_pending(self._timer)

    def _refuse(self, reason: str) -> None:
        self._cancel_timer()
        log.info("relay: refusing {remote}: {reason}", remote=self.transport.getPeer(), reason=reason)
        self.transport.write(b"ERROR " + reason.encode("ascii", "replace") + b"\n")
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.partner is not None:
            return self._forward(data)
        self._buffer += data
        if not self._handshaken:
            line, nl, rest = self._buffer.partition(b"\n")
            if not nl:
                if len(self._buffer) > MAX_HANDSHAKE:
                    self._refuse("handshake line too long")
                return
            if len(line) > MAX_HANDSHAKE:
                return self._refuse("handshake line too long")
            self._buffer = rest
            self._handshaken = True
            try:
                token, side = parse_handshake(line)
                partner = self.factory.pairing.arrive(token, side, self)
            except RelayRefused as e:
                self._cancel_timer()
                return self._refuse(str(e))
            self._cancel_timer()
            if partner is not None:
                return self._pair(partner)
            self._timer = self.factory.clock.callLater(PAIR_TIMEOUT, self._refuse, "no partner in time")
        if len(self._buffer) > MAX_EARLY:
            self._refuse("too much data before pairing")

    def _pair(self, partner: "RelayProtocol") -> None:
        partner._cancel_timer()
        self.partner, partner.partner = partner, self
        # Backpressure: when one side's send buffer fills, the other stops reading.
        self.transport.registerProducer(partner, True)
        partner.transport.registerProducer(self, True)
        for side in (self, partner):
            side.transport.write(b"OK\n")
        for side in (partner, self):
            early, side._buffer = side._buffer, b""
            if early:
                side._forward(early)
        f = self.factory
        if f.zero_copy and f.rate <= 0 and f.total.rate <= 0 and splice.available(self.transport,
                                                                                   partner.transport):
            # No limits to enforce: the kernel moves the bytes (mbt.relay.splice).
            def counted(n: int) -> None:
                f.relayed += n
            partner.pipe_in = splice.SplicePipe(self.transport, partner.transport, counted)
            self.pipe_in = splice.SplicePipe(partner.transport, self.transport, counted)
        log.info("relay: paired {a} with {b} ({how})", a=self.transport.getPeer(), b=partner.transport.getPeer(),
                 how="splice" if self.pipe_in is not None else "copy")

    def _forward(self, data: bytes) -> None:
        f = self.factory
        self.partner.transport.write(data)
        f.relayed += len(data)
        now = f.clock.seconds()
        delay = max(self.allowance.charge(len(data), now), f.total.charge(len(data), now))
        if delay > 0 and self._rate_timer is None:
            self._pause("rate")
            self._rate_timer = f.clock.callLater(delay, self._rate_ok)

    def _rate_ok(self) -> None:
        self._rate_timer = None
        self._resume("rate")

    def _pause(self, why: str) -> None:
        if not self._paused_for and self.connected:
            self.transport.pauseProducing()
        self._paused_for.add(why)

    def _resume(self, why: str) -> None:
        self._paused_for.discard(why)
        if not self._paused_for and self.connected:
            self.transport.resumeProducing()

    # IPushProducer, driven by the partner's transport
    def pauseProducing(self) -> None:
        self._pause("backpressure")

    def resumeProducing(self) -> None:
        self._resume("backpressure")

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0
        self._cancel_timer()
        self._rate_timer = cancel_pending(self._rate_timer)
        if self.pipe_in is not None:
            self.pipe_in.close()
            self.pipe_in = None
        f = self.factory
        f.connections.discard(self)
        partner, self.partner = self.partner, None
        f.pairing.leave(self, paired=partner is not None)
        if partner is not None:
            partner.partner = None
            # The partner's transport still holds us as its producer: let go,
            # then close it once what it has buffered is written.
            partner.transport.unregisterProducer()
            partner.transport.loseConnection()


class RelayFactory(protocol.ServerFactory):
    """Accepts relay clients; holds the pairing table and the bandwidth limits.

    ``rate``: bytes/s each connection may send (0: no limit); ``total_rate``:
    bytes/s through the whole relay (0: no limit).
    """

    protocol = RelayProtocol
    noisy = False

    def __init__(self, clock, rate: float = 0.0, total_rate: float = 0.0,
                 max_waiting: int = 1000, max_pairs: int = 500, zero_copy: bool = True) -> None:
        self.clock = clock
        #: Pipe unlimited pairs with splice(2) where possible (mbt.relay.splice).
        self.zero_copy = zero_copy
        self.rate = rate
        self.total = Allowance(total_rate, clock.seconds())
        self.pairing = Pairing(max_waiting, max_pairs)
        self.connections = set()
        self.relayed = 0

    def buildProtocol(self, addr):
        if len(self.connections) >= 2 * (self.pairing.max_pairs + self.pairing.max_waiting):
            return None
        return protocol.ServerFactory.buildProtocol(self, addr)
