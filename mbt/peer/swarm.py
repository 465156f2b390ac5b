"""The swarm of one download: who shares the file, connections to them, our ticket.

A :class:`Swarm` asks the tracker who shares the file (often while it has few
peers, every :data:`REFRESH_INTERVAL` seconds once it has enough), keeps up to
:data:`MAX_PEERS` connections to them, renews the download ticket before it
runs out and shows the fresh one to every connected server, and announces
this peer as a (partial) seeder once it has a verified piece. What flows over
the connections -- which block to ask of whom, verification, completion --
is the transfer's business (:class:`~mbt.peer.download.Download`).
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Set

from twisted.internet import defer, protocol
from twisted.logger import Logger

from mbt.errors import MbtError, NoSuchFile, NoSuchGroup, NotMember
from mbt.protocols.peer import PeerClientProtocol, hello_line
from mbt.tls import client_endpoint
from mbt.trackerinfo import parse_address

log = Logger(namespace="mbt.peer.swarm")

#: Peers one download connects to at once.
MAX_PEERS = 8
#: How often the tracker is asked again for peers (seconds), and when starved.
REFRESH_INTERVAL = 15.0
STARVED_REFRESH_INTERVAL = 2.0
#: While below MAX_PEERS connections: new partial seeders (other downloaders of
#: the same file) appear every moment in a young swarm, and each one found early
#: takes load off the original seeder.
GROWING_REFRESH_INTERVAL = 3.0
#: A download whose every known peer is banned fails after this long.
ALL_BANNED_LIMIT = 60.0
#: A ticket is renewed when it has less than this many seconds left.
TICKET_REFRESH = 120.0
#: Seconds to wait for a TCP (or TLS) connection to a peer.
CONNECT_TIMEOUT = 5
#: Tracker answers that end the download: the file or our membership is gone.
FATAL_TRACKER_ERRORS = (NoSuchFile, NotMember, NoSuchGroup)


class _ClientFactory(protocol.Factory):
    def __init__(self, build: Callable[[], PeerClientProtocol]) -> None:
        self.build = build

    def buildProtocol(self, addr):
        return self.build()


class Swarm:
    """The peers of one :class:`~mbt.peer.download.Download`.

    ``node`` gives the tracker link (``node.tracker``), tickets
    (``node.get_ticket``/``node.ticket_expires``), our address, user and TLS
    settings. Problems are reported on ``download.note`` and fatal ones end the
    download through ``download.fail``.
    """

    def __init__(self, node, download, reactor, rng: random.Random) -> None:
        self.node = node
        self.download = download
        self.reactor = reactor
        self.rng = rng
        self.record = download.record
        self.file_hash = download.manifest.file_hash
        self.conns: Dict[str, PeerClientProtocol] = {}
        self.connecting: Set[str] = set()
        self.banned_addresses: Set[str] = set()
        self.known_peers: Dict[str, str] = {}    # address -> user
        #: address -> (tracker session handle, reachable as the tracker found it)
        self.peer_routes: Dict[str, tuple] = {}
        #: address -> why we cannot use that peer now ("refused: ...", "unreachable: ...")
        self.peer_problems: Dict[str, str] = {}
        self.ticket = None
        self.announced = False
        self.all_banned_since = None
        self._last_refresh = -1e9
        self._refreshing = False
        self._renewing = False

    # -- the periodic step ---------------------------------------------------

    def tick(self, now: float, ready: int) -> None:
        """Once a second while downloading: renew the ticket, look for peers, check bans.

        ``ready`` is how many connections are usable right now.
        """
        self.renew_ticket()
        if ready < 2:
            interval = STARVED_REFRESH_INTERVAL
        elif len(self.conns) < MAX_PEERS:
            interval = GROWING_REFRESH_INTERVAL
        else:
            interval = REFRESH_INTERVAL
        if now - self._last_refresh >= interval:
            self.refresh_peers()
        self._check_all_banned(now)

    def _check_all_banned(self, now: float) -> None:
        if self.known_peers and all(a in self.banned_addresses for a in self.known_peers):
            if self.all_banned_since is None:
                self.all_banned_since = now
            self.download.note = ("every peer sharing it sent corrupt data; waiting %ds for another"
                                  % (now - self.all_banned_since))
            if now - self.all_banned_since >= ALL_BANNED_LIMIT:
                self.download.fail("every peer sharing it sent corrupt data (%d banned)"
                                   % len(self.banned_addresses))
        else:
            self.all_banned_since = None

    # -- the tracker ---------------------------------------------------------

    def refresh_peers(self) -> None:
        """Ask the tracker who shares the file now and connect to new peers."""
        if self._refreshing or not self.download.running:
            return
        self._refreshing = True
        self._last_refresh = self.reactor.seconds()
        d = self.node.tracker.request("get_peers", group=self.record.group, name=self.record.name)

        @defer.inlineCallbacks
        def got(result):
            if self.download.note.startswith("tracker: "):
                self.download.note = ""          # the tracker answers again
            manifest = result.get("manifest") or {}
            if manifest.get("file_hash") != self.file_hash:
                self.download.note = "the file was replaced in the group; waiting"
                return
            peers = result.get("peers") or []
            self.known_peers = {}
            for p in peers:
                addr = p.get("address")
                if isinstance(addr, str) and addr != self.node.address:
                    self.known_peers[addr] = str(p.get("user", "?"))
                    if isinstance(p.get("peer"), str):
                        self.peer_routes[addr] = (p["peer"], p.get("reachable"))
            if self.known_peers:
                # The tracker's word that we are a member, shown to every peer in HELLO.
                self.ticket = yield self.node.get_ticket(self.record.group, self.file_hash)
                self.connect_more()

        def failed(f):
            f.trap(MbtError)
            self.download.note = "tracker: %s" % f.value.message
            if f.check(*FATAL_TRACKER_ERRORS):
                self.download.fail(f.value.message)

        def done(_):
            self._refreshing = False
        # got's own failures (e.g. get_ticket refused) are reported like get_peers'.
        d.addCallback(got).addErrback(failed).addBoth(done)

    def renew_ticket(self) -> None:
        """Before our ticket runs out, get a fresh one and show it to every server."""
        if (self._renewing or self.ticket is None
                or self.node.ticket_expires(self.ticket) - self.node.tracker_now() > TICKET_REFRESH):
            return
        old = self.ticket
        self._renewing = True

        def got(ticket):
            if ticket != old:
                self.ticket = ticket
                # Every connection past its HELLO (lines arrive in order, so one still
                # waiting for its BITFIELD gets it right after the HELLO it sent).
                for conn in self.conns.values():
                    if conn.connected:
                        conn.send_ticket(ticket)

        def failed(f):
            f.trap(MbtError)
            self.download.note = "tracker: %s" % f.value.message

        def done(_):
            self._renewing = False
        self.node.get_ticket(self.record.group, self.file_hash).addCallbacks(got, failed).addBoth(done)

    def announce(self) -> None:
        """Announce this peer as a (partial) seeder of the file (again, after a login)."""
        self.announced = True
        d = self.node.tracker.request("share_file", group=self.record.group,
                                      manifest=self.download.manifest.to_dict())

        def failed(f):
            self.announced = False
            log.info("could not announce partial share of {name}: {why}", name=self.record.name,
                     why=f.getErrorMessage())
        d.addErrback(failed)

    # -- connections ---------------------------------------------------------

    def connect_more(self) -> None:
        """Connect to known peers we are not connected to, up to MAX_PEERS."""
        candidates = [a for a in self.known_peers
                      if a not in self.conns and a not in self.connecting and a not in self.banned_addresses]
        self.rng.shuffle(candidates)
        room = MAX_PEERS - len(self.conns) - len(self.connecting)
        for address in candidates[:max(0, room)]:
            self._connect(address)

    def _connect(self, address: str) -> None:
        try:
            host, port = parse_address(address)
        except ValueError:
            return
        route = self.peer_routes.get(address)
        if route is not None and route[1] is False:
            # The tracker could not dial it: have it brought to us (connect-back or relay).
            return self._reach(address, route[0])
        self.connecting.add(address)
        hello = hello_line(self.record.group, self.file_hash, self.node.user, self.ticket)
        group, file_hash = self.record.group, self.file_hash

        def build():
            p = PeerClientProtocol(self.download, hello, self.reactor,
                                   prove=lambda challenge: self.node.prove(challenge, group, file_hash))
            p.address = address
            return p
        ep = client_endpoint(self.reactor, host, port, self.node.tls, timeout=CONNECT_TIMEOUT, direct=True)
        d = ep.connect(_ClientFactory(build))

        def connected(p):
            self.connecting.discard(address)
            if not self.download.running:
                p.transport.loseConnection()
                return
            self.conns[address] = p

        def failed(f):
            self.connecting.discard(address)
            log.info("cannot connect to peer {a}: {why}", a=address, why=f.getErrorMessage())
            self.peer_problems[address] = "unreachable: %s (%s)" % (address, f.getErrorMessage()[:80])
            if route is not None and self.download.running:
                self._reach(address, route[0])
        d.addCallbacks(connected, failed)

    def _reach(self, address: str, peer_id: str) -> None:
        """Connect-back or relay, arranged by the tracker (``mbt.peer.reaching``)."""
        from mbt.peer.reaching import reach_through_tracker
        self.connecting.add(address)
        hello = hello_line(self.record.group, self.file_hash, self.node.user, self.ticket)
        group, file_hash = self.record.group, self.file_hash
        made = []

        def build(via):
            p = PeerClientProtocol(self.download, hello, self.reactor,
                                   prove=lambda challenge: self.node.prove(challenge, group, file_hash))
            p.address, p.via = address, via
            made.append(p)
            self.connecting.discard(address)
            if self.download.running:
                self.conns[address] = p
            return p

        def failed(reason):
            self.connecting.discard(address)
            for p in made:
                if self.conns.get(address) is p and not p.ready:
                    del self.conns[address]
            self.peer_problems[address] = "unreachable: %s (%s)" % (address, reason[:80])
            log.info("cannot reach peer {a}: {why}", a=address, why=reason)

        d = reach_through_tracker(self.node, group, file_hash, peer_id, build, failed,
                                  seeder_host=address.rsplit(":", 1)[0])
        d.addErrback(lambda f: failed("tracker: %s" % f.getErrorMessage()))

    def problems(self) -> List[str]:
        """Why each known peer cannot be used, if every one of them cannot (else empty)."""
        found = [self.peer_problems[a] for a in sorted(self.known_peers) if a in self.peer_problems]
        return found if self.known_peers and len(found) == len(self.known_peers) else []

    def lost(self, conn: PeerClientProtocol) -> None:
        """``conn`` closed: forget it (a later refresh may connect again)."""
        if self.conns.get(conn.address) is conn:
            del self.conns[conn.address]

    def ban(self, conn: PeerClientProtocol) -> None:
        """``conn`` sent corrupt data: hang up and never connect to its address again."""
        self.banned_addresses.add(conn.address)
        log.warn("banned peer {a} for sending corrupt data", a=conn.address)
        if conn.transport is not None:
            conn.transport.loseConnection()

    def connections(self) -> List[PeerClientProtocol]:
        """Every open connection (a copy: callers may close them)."""
        return list(self.conns.values())

    def disconnect_all(self) -> None:
        """Close every connection (pause, failure, completion)."""
        for conn in list(self.conns.values()):
            if conn.transport is not None:
                conn.transport.loseConnection()
