"""The tracker-to-tracker sync channel: JSON lines, authenticated with the shared secret.

Trackers reach each other on the same port clients use; a sync connection is
recognised by its first line. Both sides prove they know the shared secret
with an HMAC challenge-response before anything else is accepted::

    initiator A -> B: {"sync": "hello", "v": 1, "from": A, "to": B, "nonce": nA}
    B -> A:           {"sync": "challenge", "from": B, "nonce": nB, "proof": HMAC(K, "mbt-sync-1 acceptor A B nA nB")}
    A -> B:           {"sync": "auth", "proof": HMAC(K, "mbt-sync-1 initiator A B nA nB")}

Nonces are fresh random values, so a recorded handshake cannot be replayed,
and the two proofs carry different labels, so one side's proof cannot be
reflected back. A wrong proof closes the connection and is logged (never the
secret or the proofs). After that, every line is one replication message
(``{"t": ...}``, see :mod:`mbt.tracker.replication`).

:class:`Mesh` keeps at most one link per other tracker: every tracker dials
every other one in its info file and accepts links from any tracker that
proves the secret (a new tracker may be missing from older info files). When
two links to the same tracker come up at once, both ends keep the one the
lower-numbered tracker initiated.
"""

from __future__ import annotations

import hmac
import hashlib
import json
import secrets
from typing import Callable, Dict, List, Optional

from twisted.internet import protocol
from twisted.logger import Logger
from mbt.tls import client_endpoint
from mbt.protocols.jsonlines import encode
from mbt.protocols.lines import BoundedLineReceiver
from mbt.trackerinfo import TrackerAddress
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.tracker.sync")

VERSION = 1
#: Longest sync line: a replicated share_file can be as long as the 16 MiB client line, plus framing.
#: Only after the handshake: until the other side has proven the secret, lines
#: are limited to HANDSHAKE_MAX_LINE (on the accepting side, the tracker's
#: anonymous limit), so a stranger cannot make a tracker buffer megabytes.
SYNC_MAX_LINE = 64 * 1024 * 1024
HANDSHAKE_MAX_LINE = 64 * 1024
#: Seconds a connection may take to authenticate.
HANDSHAKE_TIMEOUT = 10.0


def _no_delay(transport) -> None:
    """Small messages that wait for an answer (entry -> ack): no Nagle delay."""
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass        # not TCP (tests)


def is_sync_hello(obj: object) -> bool:
    """Is this first line of a connection the start of a sync handshake?"""
    return isinstance(obj, dict) and obj.get("sync") == "hello"


def _proof(secret: bytes, label: str, initiator: int, acceptor: int, n_init: str, n_acc: str) -> str:
    text = "mbt-sync-%d %s %d %d %s %s" % (VERSION, label, initiator, acceptor, n_init, n_acc)
    return hmac.new(secret, text.encode("ascii"), hashlib.sha256).hexdigest()


def _same(want: str, got: object) -> bool:
    """Constant-time comparison of an expected proof with whatever arrived."""
    return isinstance(got, str) and got.isascii() and hmac.compare_digest(want, got)


def _number(value: object) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 100000:
        return value
    return None


def _nonce(value: object) -> Optional[str]:
    if isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


class SyncChannel:
    """One sync connection: the handshake, then JSON messages to and from the mesh.

    Transport-agnostic: it writes lines with ``send_line`` and drops the
    connection with ``drop``; its owner feeds it lines and the connection loss.
    """

    def __init__(self, mesh: "Mesh", send_line: Callable[[bytes], None], drop: Callable[[], None],
                 remote: str, expected: Optional[int] = None) -> None:
        self.mesh = mesh
        self._send_line = send_line
        self._drop = drop
        self.remote = remote
        self.initiator = expected is not None
        self.expected = expected
        self.number: Optional[int] = None           # the other tracker, once authenticated
        self.initiated_by: Optional[int] = None
        self.authenticated = False
        self.closed = False
        self._nonce = secrets.token_hex(16)
        self._their_nonce: Optional[str] = None
        self._claimed: Optional[int] = None
        self._timer = mesh.clock.callLater(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    # -- used by the replicator (the "link" interface) -------------------------

    def send(self, msg: dict) -> None:
        """Send one message (silently nothing once closed)."""
        if not self.closed:
            self._send_line(encode(msg))

    def close(self) -> None:
        """Drop the connection."""
        if not self.closed:
            self.closed = True
            self._cancel_timer()
            self._drop()

    def __repr__(self) -> str:
        return "<SyncChannel %s tracker=%s>" % (self.remote, self.number)

    # -- fed by the connection's owner ----------------------------------------

    def start(self) -> None:
        """Initiator: say hello."""
        self._send_line(encode({"sync": "hello", "v": VERSION, "from": self.mesh.number,
                                "to": self.expected, "nonce": self._nonce}))

    def line_received(self, line: bytes) -> None:
        """One line from the other side."""
        if self.closed:
            return
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._refuse("sent a line that is not JSON")
            return
        self.object_received(obj)

    def object_received(self, obj: object) -> None:
        """One decoded line (the acceptor's first line arrives this way)."""
        if self.closed:
            return
        if self.authenticated:
            if not isinstance(obj, dict):
                self._refuse("sent a message that is not an object")
                return
            self.mesh.message(self, obj)
            return
        step = obj.get("sync") if isinstance(obj, dict) else None
        if not self.initiator and step == "hello" and self._claimed is None:
            self._on_hello(obj)
        elif self.initiator and step == "challenge" and not self.authenticated:
            self._on_challenge(obj)
        elif not self.initiator and step == "auth" and self._claimed is not None:
            self._on_auth(obj)
        else:
            self._refuse("broke the sync handshake")

    def connection_lost(self) -> None:
        """The connection is gone."""
        was_closed, self.closed = self.closed, True
        self._cancel_timer()
        self.mesh.pending.discard(self)
        if self.authenticated:
            self.mesh.lost(self)
        elif not was_closed and self.initiator:
            log.debug("sync connection to {r} closed before authentication", r=self.remote)

    # -- handshake ---------------------------------------------------------------

    def _on_hello(self, obj: dict) -> None:
        claimed, to, nonce = _number(obj.get("from")), _number(obj.get("to")), _nonce(obj.get("nonce"))
        if obj.get("v") != VERSION or claimed is None or nonce is None:
            self._refuse("sent a malformed sync hello")
            return
        if claimed == self.mesh.number or to != self.mesh.number:
            self._refuse("claims to be tracker %d dialing tracker %s; check the tracker info files"
                         % (claimed, to))
            return
        self._claimed, self._their_nonce = claimed, nonce
        proof = _proof(self.mesh.secret, "acceptor", claimed, self.mesh.number, nonce, self._nonce)
        self._send_line(encode({"sync": "challenge", "from": self.mesh.number, "nonce": self._nonce,
                                "proof": proof}))

    def _on_challenge(self, obj: dict) -> None:
        claimed, nonce, proof = _number(obj.get("from")), _nonce(obj.get("nonce")), obj.get("proof")
        if claimed is None or nonce is None:
            self._refuse("sent a malformed sync challenge")
            return
        if claimed != self.expected:
            self._refuse("answers as tracker %d, not %d; check the tracker info files" % (claimed, self.expected))
            return
        want = _proof(self.mesh.secret, "acceptor", self.mesh.number, claimed, self._nonce, nonce)
        if not _same(want, proof):
            self._refuse("failed authentication (a different tracker secret?)", warn=True)
            return
        self._send_line(encode({"sync": "auth", "proof": _proof(
            self.mesh.secret, "initiator", self.mesh.number, claimed, self._nonce, nonce)}))
        self._authenticated(claimed, self.mesh.number)

    def _on_auth(self, obj: dict) -> None:
        proof = obj.get("proof")
        want = _proof(self.mesh.secret, "initiator", self._claimed, self.mesh.number,
                      self._their_nonce, self._nonce)
        if not _same(want, proof):
            self._refuse("failed authentication (a different tracker secret?)", warn=True)
            return
        self._authenticated(self._claimed, self._claimed)

    def _authenticated(self, number: int, initiated_by: int) -> None:
        self._cancel_timer()
        self.number, self.initiated_by, self.authenticated = number, initiated_by, True
        self.mesh.authenticated(self)

    def _refuse(self, why: str, warn: bool = False) -> None:
        who = "tracker %s at %s" % (self.number or self._claimed or self.expected or "?", self.remote)
        if warn or not self.authenticated:
            log.warn("refused sync connection with {who}: it {why}", who=who, why=why)
        self.close()
        if self.authenticated:
            self.mesh.lost(self)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if not self.authenticated and not self.closed:
            self._refuse("did not authenticate within %.0f s" % HANDSHAKE_TIMEOUT)

    def _cancel_timer(self) -> None:
        self._timer = cancel_pending(self._timer)


class SyncClientProtocol(BoundedLineReceiver):
    """The dialing side of a sync connection."""

    delimiter = b"\n"
    MAX_LENGTH = HANDSHAKE_MAX_LINE

    def __init__(self, mesh: "Mesh", target: TrackerAddress) -> None:
        self.mesh = mesh
        self.target = target
        self.channel: Optional[SyncChannel] = None

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        self.channel = SyncChannel(self.mesh, self.sendLine, self.transport.loseConnection,
                                   str(self.target), expected=self.target.number)
        self.mesh.pending.add(self.channel)
        self.channel.start()

    def lineReceived(self, line: bytes) -> None:
        self.channel.line_received(line)
        if self.channel.authenticated:
            self.MAX_LENGTH = SYNC_MAX_LINE

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("sync line over {max} bytes from {r}; closing", max=self.MAX_LENGTH, r=str(self.target))
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        BoundedLineReceiver.connectionLost(self, reason)
        if self.channel is not None:
            self.mesh.pending.discard(self.channel)
            self.channel.connection_lost()


class _QuietFactory(protocol.Factory):
    """Hands out one prepared protocol, without a log line per dial attempt."""

    noisy = False

    def __init__(self, proto: SyncClientProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr) -> SyncClientProtocol:
        self.proto.factory = self
        return self.proto


class _Dialer:
    """Keeps trying to link with one other tracker while there is no link to it."""

    def __init__(self, mesh: "Mesh", target: TrackerAddress) -> None:
        self.mesh = mesh
        self.target = target
        self.delay = 0.1
        self.attempt = None
        self.timer = None

    def start(self) -> None:
        self._schedule(0)

    def stop(self) -> None:
        self.timer = cancel_pending(self.timer)
        if self.attempt is not None:
            self.attempt.cancel()

    def poke(self) -> None:
        """The link just went down: try again soon."""
        self.delay = 0.1
        self._schedule(0.1)

    def _schedule(self, delay: float) -> None:
        if not self.mesh.running:
            return
        if self.timer is not None and self.timer.active():
            if self.timer.getTime() <= self.mesh.clock.seconds() + delay:
                return
            self.timer.cancel()
        self.timer = self.mesh.clock.callLater(delay, self._dial)

    def _dial(self) -> None:
        self.timer = None
        if not self.mesh.running or self.attempt is not None:
            return
        if self.target.number in self.mesh.channels:
            self._schedule(1.0)         # linked: just look again later
            return
        ep = client_endpoint(self.mesh.clock, self.target.host, self.target.port, self.mesh.tls, timeout=3)
        self.attempt = ep.connect(_QuietFactory(SyncClientProtocol(self.mesh, self.target)))
        self.attempt.addCallbacks(self._connected, self._failed)

    def _connected(self, proto: SyncClientProtocol) -> None:
        self.attempt = None
        self.delay = 0.1
        self._schedule(1.0)

    def _failed(self, failure) -> None:
        self.attempt = None
        self.delay = min(1.0, self.delay * 2)
        self._schedule(self.delay)


class Mesh:
    """The links of one tracker to the others: dialing, accepting, one link per tracker."""

    def __init__(self, number: int, secret: bytes, replicator, clock,
                 trackers: Optional[List[TrackerAddress]] = None, tls=None) -> None:
        self.number = number
        self.tls = tls            # links to other trackers use TLS when we do
        self.secret = secret
        self.replicator = replicator
        self.clock = clock
        self.channels: Dict[int, SyncChannel] = {}
        self.pending = set()
        self.running = False
        self._dialers = [_Dialer(self, t) for t in (trackers or []) if t.number != number]

    def start(self) -> None:
        """Start dialing the other trackers of the info file."""
        self.running = True
        for d in self._dialers:
            d.start()

    def stop(self) -> None:
        """Stop dialing and drop every link."""
        self.running = False
        for d in self._dialers:
            d.stop()
        for ch in list(self.channels.values()) + list(self.pending):
            ch.close()
        self.channels.clear()
        self.pending.clear()

    def adopt(self, transport, send_line: Callable[[bytes], None], remote: str,
              hello: dict) -> SyncChannel:
        """An incoming connection whose first line was a sync hello becomes a channel."""
        _no_delay(transport)
        drop = transport.loseConnection
        ch = SyncChannel(self, send_line, drop, remote)
        self.pending.add(ch)
        ch.object_received(hello)
        return ch

    def authenticated(self, ch: SyncChannel) -> None:
        """A channel proved the secret: make it the link to its tracker (or drop a duplicate)."""
        self.pending.discard(ch)
        if not self.running:
            ch.close()
            return
        current = self.channels.get(ch.number)
        if current is not None and current is not ch:
            preferred = min(self.number, ch.number)
            if current.initiated_by == preferred and ch.initiated_by != preferred:
                ch.closed = True        # the duplicate never became a link: close it quietly
                ch._drop()
                return
            current.closed = True
            current._drop()
        self.channels[ch.number] = ch
        log.info("sync link with tracker {n} at {r} is up", n=ch.number, r=ch.remote)
        self.replicator.link_up(ch.number, ch)

    def message(self, ch: SyncChannel, msg: dict) -> None:
        """A message on an authenticated channel."""
        if self.channels.get(ch.number) is ch:
            self.replicator.receive(ch.number, ch, msg)

    def lost(self, ch: SyncChannel) -> None:
        """An authenticated channel closed."""
        self.pending.discard(ch)
        if self.channels.get(ch.number) is ch:
            del self.channels[ch.number]
            self.replicator.link_down(ch.number, ch)
            for d in self._dialers:
                if d.target.number == ch.number:
                    d.poke()
