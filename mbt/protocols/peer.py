"""The peer wire protocol: line-based control, raw-mode piece bytes.

A connection is one-directional: the side that connects downloads one file,
the side that accepts serves it. Lines end with ``\\n``; fields are separated by
single spaces. See ``docs/protocol.rst`` for the full grammar.

Downloader -> server::

    HELLO mbt/2 <group> <file_hash> <user> <ticket>
    PROOF <signature>                 (answer to CHALLENGE: the ticket's key signed it)
    REQUEST <index> <offset> <length>
    CANCEL <index> <offset> <length>
    PING

Server -> downloader::

    CHALLENGE <hex>                   (answer to HELLO: prove you hold the ticket's key)
    BITFIELD <piece_count> <hex>      (answer to PROOF)
    ERROR <reason...>                 (then the server closes)
    HAVE <index>                      (a piece was verified on the server)
    CHOKE / UNCHOKE                   (upload slot taken away / granted)
    PIECE <index> <offset> <length>   followed by exactly <length> raw bytes
    REJECT <index> <offset> <length>  (request dropped: choked or not available)
    PING

Which side dialled does not matter: a seeder that cannot accept connections
dials the downloader and opens with ``CALLBACK <token>`` (connect-back), or
both dial a relay (``mbt.relay``); the downloader then speaks first as above.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict, Optional

from twisted.internet import error, interfaces, main, protocol, task, tcp
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mbt.errors import BadTicket, MbtError
from mbt.manifest import MAX_FILE_SIZE, piece_count
from mbt.protocols.direct import DirectWriter
from mbt.tickets import new_challenge, verify_proof
from mbt.peer.storage import bitfield_hex, parse_bitfield
from mbt.protocols.limits import HangUp, HostCounts
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.peer.wire")

PROTOCOL_VERSION = "mbt/2"
#: Largest block one REQUEST may ask for (and one PIECE may carry).
MAX_BLOCK = 1024 * 1024
#: Requests one downloader may have queued at a server.
MAX_QUEUED_REQUESTS = 256
#: Socket-level buffer: fewer, larger reads and writes (measured: the 64 KiB
#: default costs ~30% of loopback throughput in reactor wake-ups).
TRANSPORT_BUFFER = 1024 * 1024
#: A downloader reads control lines this many bytes at a time (block bytes go
#: straight to their piece buffer); and at most this many reads per readiness event.
LINE_READ = 16 * 1024
READS_PER_EVENT = 8
#: Connections a peer serves at once, in all and from one IP address.
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_HOST = 64
#: Connections whose HELLO has not been accepted yet (no valid ticket shown),
#: in all and from one IP address. The rest of MAX_CONNECTIONS is kept for
#: downloaders that showed a ticket; when all MAX_PENDING are taken, a new
#: connection pushes out the oldest one still without a HELLO.
MAX_PENDING = 128
MAX_PENDING_PER_HOST = 8
#: Seconds a server gives a new connection to send its HELLO (a downloader
#: sends it at once), and seconds a downloader waits for the answer.
HELLO_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 15.0
IDLE_TIMEOUT = 120.0
KEEPALIVE_INTERVAL = 30.0


def _ints(parts, n):
    if len(parts) != n:
        raise ValueError("expected %d numbers" % n)
    out = []
    for p in parts:
        if not p.isdigit() or len(p) > 15:
            raise ValueError("not a small non-negative integer: %r" % p[:20])
        out.append(int(p))
    return out


def hello_line(group: str, file_hash: str, user: Optional[str], ticket: Optional[str]) -> bytes:
    """The downloader's first line: ``HELLO mbt/2 <group> <file_hash> <user> <ticket>``."""
    line = "HELLO %s %s %s %s" % (PROTOCOL_VERSION, group, file_hash, user or "-")
    if ticket:
        line += " " + ticket
    return line.encode("ascii")


def _keepalive(proto, clock) -> task.LoopingCall:
    """A ``PING`` every KEEPALIVE_INTERVAL seconds on ``proto`` (first one after a full interval)."""
    def ping() -> None:
        if proto.connected:
            proto.sendLine(b"PING")
    loop = task.LoopingCall(ping)
    loop.clock = clock
    loop.start(KEEPALIVE_INTERVAL, now=False)
    return loop


def _nothing(*args) -> None:
    """A downloader's direct writer sends lines only: nothing to do when it drains."""


def _tune(transport) -> None:
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = TRANSPORT_BUFFER
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass


@implementer(interfaces.IPushProducer)
class PeerServerProtocol(LineReceiver, TimeoutMixin):
    """Serves one file to one downloader, reading blocks from disk on demand.

    Timeouts (``TimeoutMixin`` on the factory's clock): HELLO_TIMEOUT for the
    HELLO and its PROOF, then IDLE_TIMEOUT from the downloader's last line; a
    ``PING`` every KEEPALIVE_INTERVAL once the downloader is accepted.
    """

    delimiter = b"\n"
    MAX_LENGTH = 4096

    def __init__(self) -> None:
        self.servable = None
        self.user: Optional[str] = None
        self.choked = True
        # Not ``paused``: LineReceiver uses that name to stop reading lines.
        self.send_paused = False
        self.queue: "OrderedDict[tuple, None]" = OrderedDict()
        self.ticket_expires: Optional[float] = None
        self.holder: Optional[str] = None       # the session key the downloader proved it holds
        self._pending = None                    # HELLO accepted, waiting for its PROOF
        self._delegate = None                   # connect-back: this connection downloads instead
        #: A first line to send (connect-back: ``CALLBACK <token>``).
        self.preamble: Optional[bytes] = None
        self._expiry = None
        self._keepalive: Optional[task.LoopingCall] = None
        self._direct: Optional[DirectWriter] = None

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        _tune(self.transport)
        if isinstance(self.transport, tcp.Connection) and hasattr(self.transport, "socket"):
            # Plain TCP: blocks leave by os.sendfile, lines by send (mbt.protocols.direct).
            self._direct = DirectWriter(self.transport, self._send_queued, self._file_error)
        peer = self.transport.getPeer()
        self.remote = "%s:%s" % (getattr(peer, "host", "?"), getattr(peer, "port", "?"))
        self.callLater = self.factory.clock.callLater
        self.setTimeout(HELLO_TIMEOUT)
        self.transport.registerProducer(self, True)
        self.factory.opened(self)
        if self.preamble is not None:
            self.sendLine(self.preamble)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0      # Twisted leaves it set; our senders check it
        if self._delegate is not None:
            return self._delegate.connectionLost(reason)
        self.factory.closed(self)
        self.setTimeout(None)
        self._keepalive = cancel_pending(self._keepalive)
        self._expiry = cancel_pending(self._expiry)
        self.queue.clear()
        if self.servable is not None:
            self.servable.unwatch(self)
            self.factory.slots.release(self)

    def _close(self, reason: str) -> None:
        log.info("closing peer connection from {remote}: {reason}", remote=getattr(self, "remote", "?"),
                 reason=reason)
        # Closing for a protocol error: the timer must not fire on a dead connection.
        self.setTimeout(None)
        # Nothing more is sent once we hang up: drop queued requests and stop
        # producing, else a draining buffer would resume sending pieces (and
        # Twisted does not close while a producer is registered).
        self.queue.clear()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """TimeoutMixin: no HELLO (and PROOF) in time, or an accepted downloader went quiet."""
        self._close("no HELLO in time" if self.servable is None
                    else "idle for %d s" % IDLE_TIMEOUT)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._close("line too long")

    def sendLine(self, line: bytes) -> None:
        """Lines share the direct writer's queue when there is one (order is kept)."""
        if self._direct is not None:
            self._direct.write(line + self.delimiter)
        else:
            LineReceiver.sendLine(self, line)

    # -- messages ----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self.transport.disconnecting:
            return          # closed (e.g. pushed out before its HELLO): nothing more is read
        try:
            text = line.rstrip(b"\r").decode("ascii")
        except UnicodeDecodeError:
            return self._close("non-ASCII control line")
        parts = text.split(" ")
        verb = parts[0]
        if self._pending is not None:
            if verb != "PROOF" or len(parts) != 2:
                return self._close("expected PROOF, got %r" % verb[:20])
            return self._proof(parts[1])
        if self.servable is None:
            if verb == "CALLBACK" and len(parts) == 2 and self.preamble is None:
                return self._callback(parts[1])
            if verb != "HELLO":
                return self._close("expected HELLO, got %r" % verb[:20])
            return self._hello(parts[1:])
        self.resetTimeout()
        try:
            if verb == "REQUEST":
                self._request(*_ints(parts[1:], 3))
            elif verb == "TICKET":
                self._renew(parts[1:])
            elif verb == "CANCEL":
                self.queue.pop(tuple(_ints(parts[1:], 3)), None)
            elif verb == "PING":
                pass
            else:
                self._close("unknown message %r" % verb[:20])
        except ValueError as e:
            self._close("malformed %s: %s" % (verb[:20], e))

    def _hello(self, args) -> None:
        if len(args) in (4, 5) and args[0] == "mbt/1":
            # An older downloader: its tickets name addresses, which NAT breaks.
            self.sendLine(b"ERROR this peer speaks mbt/2 (tickets bound to keys); upgrade mbt to download from it")
            return self._close("mbt/1 HELLO")
        if len(args) not in (4, 5) or args[0] != PROTOCOL_VERSION:
            self.sendLine(b"ERROR bad HELLO; expected: HELLO mbt/2 <group> <file_hash> <user> <ticket>")
            return self._close("bad HELLO")
        _, group, file_hash, user = args[:4]
        ticket = args[4] if len(args) == 5 else None
        node = self.factory.node
        try:
            servable = node.open_servable(group, file_hash, user, ticket, self.remote)
            holder = node.ticket_holder(ticket)
        except MbtError as e:
            self.sendLine(("ERROR " + e.message).encode("ascii", "replace"))
            return self._close("refused HELLO: %s" % e.message)
        # The ticket is good; is the downloader the one it was issued to?
        challenge = new_challenge()
        self._pending = (servable, user, ticket, holder, challenge)
        self.sendLine(b"CHALLENGE " + challenge.encode("ascii"))

    def _proof(self, proof: str) -> None:
        servable, user, ticket, holder, challenge = self._pending
        self._pending = None
        try:
            verify_proof(holder, challenge, servable.group, servable.manifest.file_hash, user, proof)
        except MbtError as e:
            self.sendLine(("ERROR " + e.message).encode("ascii", "replace"))
            return self._close("refused PROOF: %s" % e.message)
        self.holder = holder
        self.servable = servable
        self.user = user
        self.factory.hello_accepted(self)
        self._set_ticket_expiry(self.factory.node.ticket_expires(ticket))
        self.setTimeout(IDLE_TIMEOUT)
        # Keeps a choked or quiet downloader from timing us out.
        self._keepalive = _keepalive(self, self.factory.clock)
        count = servable.manifest.pieces
        self.sendLine(("BITFIELD %d %s" % (count, bitfield_hex(servable.have, count))).encode("ascii"))
        servable.watch(self)
        if self.factory.slots.acquire(self):
            self.unchoke()
        else:
            self.sendLine(b"CHOKE")

    def _renew(self, args) -> None:
        """``TICKET <ticket>``: a fresh ticket for the same user, file and group."""
        if len(args) != 1:
            return self._close("malformed TICKET")
        try:
            node = self.factory.node
            node.open_servable(self.servable.group, self.servable.manifest.file_hash,
                               self.user, args[0], self.remote)
            if node.ticket_holder(args[0]) != self.holder:
                raise BadTicket("renewed ticket is for another key")
        except MbtError as e:
            self.sendLine(("ERROR " + e.message).encode("ascii", "replace"))
            return self._close("refused TICKET: %s" % e.message)
        self._set_ticket_expiry(self.factory.node.ticket_expires(args[0]))

    def _set_ticket_expiry(self, expires: Optional[float]) -> None:
        """Remember when the downloader's proof of membership runs out; hang up then."""
        self.ticket_expires = expires
        self._expiry = cancel_pending(self._expiry)
        if expires is not None:
            # ``expires`` is in tracker time: the delay is the same on any clock.
            delay = max(0.0, expires - self.factory.now())
            self._expiry = self.factory.clock.callLater(delay, self._ticket_ran_out)

    def _ticket_ran_out(self) -> None:
        self._expiry = None
        if self.connected:
            self.sendLine(b"ERROR ticket expired")
            self._close("ticket expired")

    def _request(self, index: int, offset: int, length: int) -> None:
        if self.ticket_expires is not None and self.factory.now() >= self.ticket_expires:
            # Membership is proven for a ticket's lifetime only: no renewal, no bytes.
            self.sendLine(b"ERROR ticket expired")
            return self._close("ticket expired")
        if self.choked:
            self.sendLine(b"REJECT %d %d %d" % (index, offset, length))
            return
        m = self.servable.manifest
        if (index >= m.pieces or length == 0 or length > MAX_BLOCK
                or offset + length > m.piece_length(index)):
            return self._close("request out of bounds: %d %d %d" % (index, offset, length))
        if index not in self.servable.have:
            # Never serve a piece we have not verified.
            self.sendLine(b"REJECT %d %d %d" % (index, offset, length))
            return
        if len(self.queue) >= MAX_QUEUED_REQUESTS:
            return self._close("more than %d requests queued" % MAX_QUEUED_REQUESTS)
        self.queue[(index, offset, length)] = None
        self._send_queued()

    # -- sending (push producer: the transport pauses us when its buffer is full)

    def _send_queued(self) -> None:
        direct = self._direct
        while self.queue and not self.send_paused and self.connected and not self.transport.disconnecting:
            if direct is not None and direct.busy:
                return      # the kernel has not taken the last block yet: on_drained calls again
            (index, offset, length), _ = self.queue.popitem(last=False)
            limiter = self.factory.limiter
            if limiter is not None and not limiter.admit(length, self._send_queued):
                self.queue[(index, offset, length)] = None
                self.queue.move_to_end((index, offset, length), last=False)
                return
            if direct is not None:
                self.factory.uploaded += length
                direct.write_file(b"PIECE %d %d %d\n" % (index, offset, length), self.servable.piece_file,
                                  index * self.servable.manifest.piece_size + offset, length)
                continue
            try:
                data = self.servable.read(index, offset, length)
            except (IOError, OSError) as e:
                # The file changed under us (truncated, deleted...): stop serving it
                # to everyone rather than REJECT forever; the node tells the user.
                log.warn("cannot read piece {index}: {err}", index=index, err=e)
                self.factory.node.servable_broken(self.servable, str(e))
                return
            self.factory.uploaded += length
            self.transport.writeSequence([b"PIECE %d %d %d\n" % (index, offset, length), data])

    def _file_error(self, err: Exception) -> None:
        """A block could not be sent from disk (the connection is already aborted)."""
        log.warn("cannot send from {path}: {err}", path=self.servable.piece_file.path, err=err)
        self.factory.node.servable_broken(self.servable, str(err))

    # -- connect-back: the dialler serves, so this connection downloads ------

    def _callback(self, token: str) -> None:
        """``CALLBACK <token>``: a seeder we asked for (``connect_peer``) dialled us."""
        client = self.factory.node.take_callback(token) if hasattr(self.factory.node, "take_callback") else None
        if client is None:
            return self._close("unknown CALLBACK token")
        self.setTimeout(None)
        self.factory.closed(self)
        self.transport.unregisterProducer()
        if self._direct is not None:
            # Nothing was sent yet: give the transport its own write path back.
            self._direct = None
            self.transport.__dict__.pop("doWrite", None)
        self._delegate = client
        # Everything from now on belongs to the downloading side.
        self.setRawMode()
        client.makeConnection(self.transport)

    def rawDataReceived(self, data) -> None:
        if self._delegate is not None:
            self._delegate.dataReceived(data)

    def pauseProducing(self) -> None:
        self.send_paused = True

    def resumeProducing(self) -> None:
        self.send_paused = False
        self._send_queued()

    def stopProducing(self) -> None:
        self.queue.clear()

    # -- called by the node ------------------------------------------------

    def have(self, index: int) -> None:
        """A new piece was verified here: tell the downloader at once."""
        if self.connected:
            self.sendLine(b"HAVE %d" % index)

    def unchoke(self) -> None:
        """Grant this downloader an upload slot."""
        self.choked = False
        self.sendLine(b"UNCHOKE")

    def refuse(self, reason: str) -> None:
        """Stop serving this downloader (logout, share stopped)."""
        if self.connected:
            self.sendLine(("ERROR " + reason).encode("ascii", "replace"))
            self._close(reason)


class UploadSlots:
    """Bounds how many downloaders are served at once; the rest wait choked."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self.active = set()
        self.waiting = []

    def acquire(self, conn) -> bool:
        """True if ``conn`` may be served now; else it is queued (and unchoked later)."""
        if len(self.active) < self.limit:
            self.active.add(conn)
            return True
        self.waiting.append(conn)
        return False

    def release(self, conn) -> None:
        """``conn`` is gone: give its slot to the oldest waiter."""
        if conn in self.waiting:
            self.waiting.remove(conn)
        if conn in self.active:
            self.active.discard(conn)
            while self.waiting and len(self.active) < self.limit:
                nxt = self.waiting.pop(0)
                self.active.add(nxt)
                nxt.unchoke()


class PeerServerFactory(protocol.ServerFactory):
    """Accepts downloaders; ``node.open_servable`` decides what may be served."""

    protocol = PeerServerProtocol
    noisy = False

    def __init__(self, node, clock, upload_slots: int = 16, limiter=None) -> None:
        self.node = node
        self.clock = clock
        # Ticket times are the trackers' (the node knows our offset to them).
        self.now = getattr(node, "tracker_now", clock.seconds)
        self.slots = UploadSlots(upload_slots)
        self.limiter = limiter
        self.connections = set()
        self.uploaded = 0
        self.by_host = HostCounts()
        #: Connections without an accepted HELLO, oldest first.
        self.pending: "OrderedDict[PeerServerProtocol, None]" = OrderedDict()
        self.pending_by_host = HostCounts()
        self._hosts: Dict[PeerServerProtocol, str] = {}

    def buildProtocol(self, addr):
        host = str(getattr(addr, "host", None))
        why = None
        if self.by_host[host] >= MAX_CONNECTIONS_PER_HOST:
            why = "%d connections open from there" % self.by_host[host]
        elif self.pending_by_host[host] >= MAX_PENDING_PER_HOST:
            why = "%d connections from there have not sent HELLO" % self.pending_by_host[host]
        elif len(self.connections) >= MAX_CONNECTIONS:
            why = "%d connections open" % len(self.connections)
        if why is not None:
            log.warn("refusing a connection from {host}: {why}", host=host, why=why)
            return HangUp()
        if len(self.pending) >= MAX_PENDING:
            oldest = next(iter(self.pending))
            self._settle(oldest)
            oldest._close("pushed out: %d connections without HELLO" % MAX_PENDING)
        return protocol.ServerFactory.buildProtocol(self, addr)

    def opened(self, conn: "PeerServerProtocol") -> None:
        """A connection is open; it counts as pending until its HELLO is accepted."""
        host = conn.remote.rsplit(":", 1)[0]
        self.connections.add(conn)
        self._hosts[conn] = host
        self.by_host.add(host)
        self.pending[conn] = None
        self.pending_by_host.add(host)

    def hello_accepted(self, conn: "PeerServerProtocol") -> None:
        """``conn`` showed a valid ticket: it now uses the reserve, not the pending pool."""
        self._settle(conn)

    def closed(self, conn: "PeerServerProtocol") -> None:
        """A connection closed."""
        self._settle(conn)
        self.connections.discard(conn)
        host = self._hosts.pop(conn, None)
        if host is not None:
            self.by_host.remove(host)

    def _settle(self, conn: "PeerServerProtocol") -> None:
        """``conn`` no longer waits for its HELLO (accepted, pushed out or closed)."""
        if conn in self.pending:
            del self.pending[conn]
            self.pending_by_host.remove(self._hosts[conn])

    def refuse_all(self, reason: str, predicate=lambda conn: True) -> None:
        """Close every serving connection matching ``predicate``."""
        for c in list(self.connections):
            if predicate(c):
                c.refuse(reason)


class PeerClientProtocol(protocol.Protocol, TimeoutMixin):
    """Downloads one file from one server on behalf of a Download.

    It frames the stream itself: control lines, and after each ``PIECE``
    header exactly that many raw bytes, which go straight into their
    destination (usually the piece buffer). It owns its buffers: the tail of
    an unfinished line (``_line``), the block in progress (``_block``,
    ``_target``, ``_got``) and, on the direct read path, one reused receive
    buffer (``_rbuf``).

    Timeouts (``TimeoutMixin`` on ``clock``): HANDSHAKE_TIMEOUT for the first
    line, then IDLE_TIMEOUT from the server's last line; a ``PING`` every
    KEEPALIVE_INTERVAL from the start.
    """

    #: The fast receive path, on or off. True: on a plain TCP transport the
    #: protocol replaces the transport's ``doRead`` with :meth:`_read_socket`,
    #: which ``recv_into``-s a small reused buffer between blocks, or the
    #: block's destination in the middle of a block (no bytes object per
    #: read, one copy from socket to piece). False, and always for TLS or any other transport: Twisted
    #: reads and calls :meth:`dataReceived`. Both paths feed the same framing
    #: (:meth:`_consume`), so they behave the same; only the cost differs
    #: (docs/performance.rst). Set it on the class (or a subclass) to compare.
    DIRECT_READ = True

    delimiter = b"\n"
    #: The longest line is the BITFIELD of the largest file a manifest may
    #: describe (1 TiB: 2**21 pieces, 512 KiB of hex).
    MAX_LENGTH = len("BITFIELD %d " % piece_count(MAX_FILE_SIZE)) + 2 * ((piece_count(MAX_FILE_SIZE) + 7) // 8)

    def __init__(self, download, hello: bytes, clock,
                 prove: Optional[Callable[[str], str]] = None) -> None:
        self.download = download
        self.hello = hello
        self.clock = clock
        #: Signs the server's challenge with our session key (``PROOF``).
        self.prove = prove
        #: How this connection came about: direct, connect-back or relay.
        self.via = "direct"
        self.ready = False
        self.choked = True
        self._line = bytearray()        # the unfinished control line received so far
        self._block = None              # (index, offset, length) of the block being received
        self._buf = bytearray(MAX_BLOCK)
        self._view = memoryview(self._buf)
        self._got = 0
        self._target = None
        self._rbuf = None               # the direct read path's receive buffer
        self._keepalive: Optional[task.LoopingCall] = None
        self.callLater = clock.callLater
        self._direct: Optional[DirectWriter] = None
        self.address = "?"

    def connectionMade(self) -> None:
        _tune(self.transport)
        if isinstance(self.transport, tcp.Connection) and hasattr(self.transport, "socket"):
            if self.DIRECT_READ:
                self._rbuf = bytearray(LINE_READ)
                self.transport.doRead = self._read_socket
            # Lines are sent at once (one send, no epoll_ctl pair and no loop
            # turn per write, as Twisted's write path costs); mbt.protocols.direct.
            self._direct = DirectWriter(self.transport, _nothing, _nothing)
        self.sendLine(self.hello)
        self.setTimeout(HANDSHAKE_TIMEOUT)
        self._keepalive = _keepalive(self, self.clock)

    def abort(self, reason: str) -> None:
        """Close this connection for a protocol reason (logged by the download)."""
        # Aborting for a protocol error: the timer must not report again later.
        self.setTimeout(None)
        self.download.peer_error(self, reason)
        if self.transport is not None:
            self.transport.loseConnection()

    def timeoutConnection(self) -> None:
        """TimeoutMixin: no answer to HELLO in time, or the server went quiet."""
        self.abort("idle for %d s" % IDLE_TIMEOUT if self.ready else "no answer to HELLO")

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0      # Twisted leaves it set; our senders check it
        self.setTimeout(None)
        self._keepalive = cancel_pending(self._keepalive)
        if reason is not None and not reason.check(error.ConnectionDone):
            # E.g. a TLS record that failed its MAC (a relay tampering with the stream).
            log.info("connection to peer {a} lost: {why}", a=self.address, why=reason.getErrorMessage()[:200])
        self.download.peer_lost(self)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.abort("line too long")

    def lineReceived(self, line: bytes) -> None:
        try:
            text = line.rstrip(b"\r").decode("ascii")
        except UnicodeDecodeError:
            return self.abort("non-ASCII control line")
        parts = text.split(" ")
        verb = parts[0]
        if self.timeOut is not None:        # not once aborted
            self.setTimeout(IDLE_TIMEOUT)   # any line: the handshake's shorter limit is over
        try:
            if not self.ready:
                if verb == "BITFIELD":
                    count, = _ints(parts[1:2], 1)
                    if count != self.download.manifest.pieces or len(parts) != 3:
                        raise ValueError("bitfield for %d pieces, expected %d"
                                         % (count, self.download.manifest.pieces))
                    have = parse_bitfield(parts[2], count)
                    self.ready = True
                    self.download.peer_ready(self, have)
                elif verb == "CHALLENGE" and len(parts) == 2 and self.prove is not None:
                    self.sendLine(b"PROOF " + self.prove(parts[1]).encode("ascii"))
                elif verb == "ERROR":
                    self.abort("refused: " + " ".join(parts[1:])[:200])
                else:
                    raise ValueError("expected BITFIELD, got %r" % verb[:20])
            elif verb == "PIECE":
                index, offset, length = _ints(parts[1:], 3)
                if not self.download.valid_block(index, offset, length) or length > MAX_BLOCK:
                    raise ValueError("PIECE out of bounds: %d %d %d" % (index, offset, length))
                self._start_block(index, offset, length)
            elif verb == "HAVE":
                index, = _ints(parts[1:], 1)
                if index >= self.download.manifest.pieces:
                    raise ValueError("HAVE for unknown piece %d" % index)
                self.download.peer_have(self, index)
            elif verb == "CHOKE":
                self.choked = True
                self.download.peer_choked(self, True)
            elif verb == "UNCHOKE":
                self.choked = False
                self.download.peer_choked(self, False)
            elif verb == "REJECT":
                index, offset, length = _ints(parts[1:], 3)
                self.download.peer_rejected(self, index, offset, length)
            elif verb == "PING":
                pass
            elif verb == "ERROR":
                self.abort("peer closed: " + " ".join(parts[1:])[:200])
            else:
                raise ValueError("unknown message %r" % verb[:20])
        except ValueError as e:
            self.abort("protocol error: %s" % e)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from Twisted's read path (TLS, tests, ``DIRECT_READ`` off)."""
        self._consume(data, len(data))

    def _consume(self, data, end: int) -> None:
        """Split control lines from raw block bytes in ``data[:end]`` without re-slicing.

        A ``PIECE`` line (:meth:`lineReceived` -> :meth:`_start_block`) makes
        the next ``length`` bytes the block's; after them, lines again. One
        memoryview is walked from start to end (a re-slice of the rest after
        every block would be quadratic in blocks per read). ``data`` is bytes
        or the reused receive bytearray; nothing of it is kept but the tail of
        an unfinished line, copied into ``_line``.
        """
        view = memoryview(data)
        pos = 0
        while pos < end and not self.transport.disconnecting:
            if self._block is not None:
                pos += self._block_bytes(view[pos:end])
                continue
            nl = data.find(b"\n", pos, end)
            if nl < 0:
                self._line += view[pos:end]
                if len(self._line) > self.MAX_LENGTH:
                    self._line = bytearray()
                    self.lineLengthExceeded(b"")
                return
            if self._line:
                self._line += view[pos:nl]
                line, self._line = bytes(self._line), bytearray()
            else:
                line = bytes(view[pos:nl])
            pos = nl + 1
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)

    def _start_block(self, index: int, offset: int, length: int) -> None:
        """A PIECE header: choose where its ``length`` bytes go; they come next."""
        self._block = (index, offset, length)
        self._got = 0
        target = self.download.block_target(self, index, offset, length)
        # In place (straight into the piece buffer) when this is the only copy
        # being fetched; otherwise into this connection's scratch buffer.
        self._target = target if target is not None else self._view[:length]

    def redirect_to_scratch(self) -> None:
        """Another peer's copy of our current block was accepted: stop writing in place."""
        if self._block is not None:
            self._target = self._view[:self._block[2]]

    def _block_bytes(self, data) -> int:
        """Copy bytes of the current block; returns how many were consumed."""
        index, offset, length = self._block
        n = min(length - self._got, len(data))
        self._target[self._got:self._got + n] = data[:n]
        self._got += n
        if self._got == length:
            self._block_done()
        return n

    def block_space(self):
        """Where the next bytes of the block being received go (a writable view), or None between blocks.

        For a transport that decrypts into it (mbt.protocols.tlsdirect): it
        fills a prefix of the view and reports how much with :meth:`block_filled`.
        """
        if self._block is None or self.transport.disconnecting:
            return None
        return self._target[self._got:self._block[2]]

    def block_filled(self, n: int) -> None:
        """``n`` bytes were written at the start of the last :meth:`block_space`."""
        self._got += n
        if self._got == self._block[2]:
            self._block_done()

    def _block_done(self) -> None:
        index, offset, length = self._block
        target, self._target = self._target, None
        self._block = None
        self.download.block_received(self, index, offset, target)

    # -- fast path on plain TCP (DIRECT_READ) ----------------------------------

    def _read_socket(self):
        """Replaces the TCP transport's ``doRead`` (``DIRECT_READ``): no per-read allocation, one copy per byte.

        Twisted's ``doRead`` allocates a fresh bytes object per ``recv`` (with
        1 MiB reads, page faults on every call). Here, in the middle of a block
        the kernel copies straight into the block's destination (usually the
        piece buffer: one copy from socket to piece); between blocks, control
        lines are read :data:`LINE_READ` bytes at a time into a reused buffer,
        so that only that much of a following block is copied a second time
        (a 1 MiB read there copied whole blocks twice: 4 % of the leecher's CPU
        in ``memmove``). Up to :data:`READS_PER_EVENT` reads per readiness
        event: a header and its block need no extra loop turn.
        """
        sock = self.transport.socket
        try:
            for _ in range(READS_PER_EVENT):
                if self._block is not None:
                    length = self._block[2]
                    want = length - self._got
                    n = sock.recv_into(self._target[self._got:length])
                    if not n:
                        return main.CONNECTION_DONE
                    self._got += n
                    if self._got == length:
                        self._block_done()
                    elif n < want:
                        return None         # the socket is drained
                else:
                    n = sock.recv_into(self._rbuf, LINE_READ)
                    if not n:
                        return main.CONNECTION_DONE
                    self._consume(self._rbuf, n)
                    if n < LINE_READ and self._block is None:
                        return None         # drained, and no block started
                if self.transport.disconnecting or not self.connected:
                    return None
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return main.CONNECTION_LOST
        return None

    def sendLine(self, line: bytes) -> None:
        """Through the direct writer on plain TCP (one queue: order is kept), else Twisted's path."""
        if self._direct is not None:
            self._direct.write(line + self.delimiter)
        else:
            self.transport.write(line + self.delimiter)

    def request(self, index: int, offset: int, length: int) -> None:
        """Ask the server for one block."""
        self.sendLine(b"REQUEST %d %d %d" % (index, offset, length))

    def request_many(self, blocks) -> None:
        """Ask for several blocks (``(index, offset, length)`` each) in one write."""
        data = b"".join([b"REQUEST %d %d %d\n" % (i, o, n) for i, o, n in blocks])
        if not data:
            return
        if self._direct is not None:
            self._direct.write(data)
        else:
            self.transport.write(data)

    def cancel(self, index: int, offset: int, length: int) -> None:
        """Withdraw a request (endgame duplicate or timeout)."""
        if self.connected:
            self.sendLine(b"CANCEL %d %d %d" % (index, offset, length))

    def send_ticket(self, ticket: str) -> None:
        """Show the server a renewed ticket: ``TICKET <ticket>``."""
        self.sendLine(b"TICKET " + ticket.encode("ascii"))
