"""The tracker: request handling over :class:`TrackerState`, durability, services.

:class:`TrackerCore` turns one decoded request into a result (or a typed
error): it checks the session, runs slow password hashing off the reactor
thread, and hands durable operations to the replicator
(:mod:`mbt.tracker.replication`), which gets them validated, sequenced and
stored by every tracker before the request is answered. A lone tracker is its
own leader, so there that is a synchronous apply-and-append. While the tracker
is catching up with the others, requests wait (and finally fail with
``catching_up``) instead of being answered from stale state.
The protocol module only frames requests and replies; this module is where the
tracker's behaviour lives.
"""

from __future__ import annotations

import contextlib
import gc
import os
import secrets
from typing import Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger

from mbt import passwords, tickets
from mbt.throttle import LoginGuard
from mbt.errors import (AlreadyLoggedIn, BadCredentials, InvalidArgument, MbtError, NoSuchPeer, NotLoggedIn,
                        RateLimited, TrackerUnavailable, UnknownOp, Unreachable, UserExists, check_file_name,
                        check_id)
from mbt.manifest import HASH_HEX_LEN, Manifest
from mbt.protocols.sync import Mesh
from mbt.protocols.tracker import TrackerServerFactory
from mbt.statedir import StateDirLock, ensure_state_dir
from mbt.tracker.compaction import Compactor
from mbt.tracker.connection import Connection
from mbt.tracker.events import membership_events
from mbt.tracker.migrate import import_state_dir
from mbt.tracker.oplog import OpLog
from mbt.tracker.pgfleet import PgFleet
from mbt.tracker.pgstore import safe_url
from mbt.tracker.reach import tcp_probe
from mbt.tracker.replication import Replicator, Timing
from mbt.tracker.secret import load_or_create_secret
from mbt.tracker.state import TrackerState
from mbt.tracker.store import SQLiteStore
from mbt.trackerinfo import TrackerAddress, parse_address

log = Logger(namespace="mbt.tracker")


def _str_arg(req: dict, key: str) -> str:
    value = req.get(key)
    if not isinstance(value, str):
        raise InvalidArgument("missing or non-string argument %r" % key)
    return value


def _password(req: dict) -> str:
    pw = _str_arg(req, "password")
    if not pw or len(pw.encode("utf-8", "surrogatepass")) > passwords.MAX_PASSWORD_BYTES:
        raise InvalidArgument("password must be 1-%d bytes" % passwords.MAX_PASSWORD_BYTES)
    if any(c.isspace() for c in pw):
        raise InvalidArgument("password must not contain spaces")
    return pw


@contextlib.contextmanager
def _collector_paused():
    """No cyclic garbage collection meanwhile: loading a large snapshot creates
    millions of objects, and the collector's passes over them (none of which
    is garbage) would take longer than the load itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _default_clock():
    from twisted.internet import reactor
    return reactor


class TrackerCore:
    """Executes tracker requests against the state, through the replicator.

    ``run_in_thread`` runs blocking work (password hashing); tests pass a
    synchronous stand-in. Without a ``replicator`` the core is a lone tracker
    (its own leader) over ``store``. ``signing_key`` signs download tickets
    (default: a random one, for tests and throwaway trackers). ``login_guard``
    throttles logins (:class:`mbt.throttle.LoginGuard`; default: the
    replicator's, whose budget every linked tracker shares).
    """

    def __init__(self, state: TrackerState, store, run_in_thread: Callable = threads.deferToThread,
                 replicator: Optional[Replicator] = None, signing_key=None, clock=None,
                 relays: Optional[List[str]] = None, probe: Optional[Callable] = None,
                 login_guard: Optional[LoginGuard] = None) -> None:
        self.state = state
        #: Relays (``IP:PORT``) offered to peers that cannot reach each other.
        self.relays: List[str] = list(relays or [])
        #: ``probe(address) -> Deferred[bool]``: does something accept TCP there?
        self.probe = probe
        self.reachable: Dict[str, bool] = {}           # session id -> probe result
        self._by_session: Dict[str, Connection] = {}   # local sessions' connections
        self.store = store
        self.run_in_thread = run_in_thread
        self.clock = clock or _default_clock()
        if replicator is None:
            replicator = Replicator(1, [], state, OpLog(store), self.clock)
            replicator.start()
        self.replicator = replicator
        self.presence = replicator.presence
        # Connect-back and relay across the fleet: what our probes found, and
        # dial pushes other trackers bring for our sessions.
        self.presence.reachable = self.reachable.get
        self.presence.on_dial = self._dial_pushed
        self.signing_key = signing_key or tickets.signing_key_from_secret(secrets.token_bytes(32))
        #: Login throttling (mbt.throttle): shared with the other trackers by default.
        self.login_guard: LoginGuard = login_guard or replicator.login_guard
        self._public_key = tickets.public_key_hex(self.signing_key)
        self._session_counter = 0
        self.replicator.on_applied = self._applied
        self._handlers: Dict[str, tuple] = {
            "ping": (self.op_ping, False),
            "state_digest": (self.op_state_digest, False),
            "ticket_key": (self.op_ticket_key, True),
            "get_ticket": (self.op_get_ticket, True),
            "create_user": (self.op_create_user, False),
            "login": (self.op_login, False),
            "logout": (self.op_logout, True),
            "create_group": (self.op_create_group, True),
            "list_groups": (self.op_list_groups, True),
            "join_group": (self.op_join_group, True),
            "leave_group": (self.op_leave_group, True),
            "list_requests": (self.op_list_requests, True),
            "accept_request": (self.op_accept_request, True),
            "reject_request": (self.op_reject_request, True),
            "list_files": (self.op_list_files, True),
            "share_file": (self.op_share_file, True),
            "stop_share": (self.op_stop_share, True),
            "get_peers": (self.op_get_peers, True),
            "tracker_status": (self.op_tracker_status, False),
            "connect_peer": (self.op_connect_peer, True),
        }

    @property
    def operations(self):
        """Names of every request operation."""
        return sorted(self._handlers)

    def load(self) -> int:
        """Rebuild the durable state from the store; return the number of operations."""
        def logged(op: dict, err: MbtError) -> None:
            # A logged op is always valid; say so loudly if not (never the password record).
            shown = {k: v for k, v in op.items() if k != "password_record"}
            log.error("stored operation {op!r} no longer applies: {err}", op=shown, err=err.message)
        return self.replicator.load(logged)

    def handle(self, conn: Connection, req: dict) -> defer.Deferred:
        """Run one request; the Deferred fires with a result dict or fails with MbtError.

        While the tracker is catching up with the others the request waits;
        it fails with ``catching_up`` if that takes too long.
        """
        op = req.get("op")
        if op == "tracker_status":
            return defer.maybeDeferred(self.op_tracker_status, conn, req)   # answered even while catching up
        gate = self.replicator.wait_serving()
        if gate is None:
            return self._run(op, conn, req)
        # Held requests are released in arrival order, so their replies keep it too.
        return gate.addCallback(lambda _: self._run(op, conn, req))

    def _run(self, op: object, conn: Connection, req: dict) -> defer.Deferred:
        entry = self._handlers.get(op) if isinstance(op, str) else None
        if entry is None:
            return defer.fail(UnknownOp("unknown operation %r" % (op,)))
        handler, needs_login = entry
        if needs_login and conn.user is None:
            return defer.fail(NotLoggedIn())
        return defer.maybeDeferred(handler, conn, req)

    def connection_lost(self, conn: Connection) -> None:
        """A dropped connection is a logged-out peer: it stops being a seeder."""
        conn.closed = True      # a login still checking its password must not open a session
        if conn.session_id is not None:
            self._close_session(conn)
            log.info("session of {user} ended (connection lost)", user=conn.user)
        conn.session_id = conn.user = conn.token = conn.address = conn.session_key = None

    def _close_session(self, conn: Connection) -> None:
        self.reachable.pop(conn.session_id, None)
        self._by_session.pop(conn.session_id, None)
        self.state.close_session(conn.session_id)
        self.presence.closed(conn.session_id)

    def _applied(self, op: dict, result: dict) -> None:
        """Tell the users logged in here about membership changes that concern them."""
        for user, event in membership_events(op, result):
            for conn in list(self._by_session.values()):
                if conn.user == user:
                    conn.push(event)

    def _commit(self, op: dict) -> defer.Deferred:
        """Get a durable operation applied by every tracker; fires with its result."""
        return self.replicator.propose(op)

    # -- operations -----------------------------------------------------

    def op_ping(self, conn: Connection, req: dict) -> dict:
        # ``"time": true`` asks for the tracker's clock: peers judge tickets in
        # tracker time (mbt.trackertime).
        return {"time": self.clock.seconds()} if req.get("time") is True else {}

    def op_state_digest(self, conn: Connection, req: dict) -> dict:
        """A hash of the durable state and the log position: equal on trackers in sync."""
        return {"digest": self.state.digest(), "seq": self.replicator.head,
                "tracker": self.replicator.number}

    def op_tracker_status(self, conn: Connection, req: dict) -> dict:
        """Role, leader, log position and links of this tracker (answered at any time)."""
        return self.replicator.status()

    def op_ticket_key(self, conn: Connection, req: dict) -> dict:
        """The public key every tracker signs download tickets with."""
        return {"public_key": self._public_key}

    def op_get_ticket(self, conn: Connection, req: dict) -> dict:
        """A signed ticket letting this session's peer fetch a file of a group it belongs to."""
        group = check_id("group id", req.get("group"))
        file_hash = req.get("file_hash")
        if not (isinstance(file_hash, str) and len(file_hash) == HASH_HEX_LEN
                and all(c in "0123456789abcdef" for c in file_hash)):
            raise InvalidArgument("file_hash must be 64 lowercase hex digits")
        self.state.file_by_hash(conn.user, group, file_hash)    # not_member / no_such_file
        if conn.session_key is not None:
            # mbt/2: the ticket names the session's key; the holder proves it in HELLO.
            ticket, expires = tickets.make_key_ticket(self.signing_key, conn.user, group, file_hash,
                                                      conn.session_key, self.clock.seconds())
        else:
            ticket, expires = tickets.make_ticket(self.signing_key, conn.user, group, file_hash,
                                                  conn.address, self.clock.seconds())
        return {"ticket": ticket, "expires": expires}

    @defer.inlineCallbacks
    def op_create_user(self, conn: Connection, req: dict):
        user = check_id("user id", req.get("user"))
        pw = _password(req)
        if self.state.password_record(user) is not None:
            raise UserExists("user %s already exists" % user)
        # Hashed here, on the tracker the client talks to: the replicated
        # operation carries only the record, never the password.
        record = yield self.run_in_thread(passwords.make_record, pw)
        result = yield self._commit({"op": "create_user", "user": user, "password_record": record})
        return result

    @defer.inlineCallbacks
    def op_login(self, conn: Connection, req: dict):
        user = check_id("user id", req.get("user"))
        pw = _password(req)
        address = _str_arg(req, "address")
        try:
            parse_address(address)
        except ValueError as e:
            raise InvalidArgument("bad peer address %r: %s" % (address, e))
        session_key = req.get("session_key")
        if session_key is not None:
            try:
                tickets.check_session_key(session_key)
            except MbtError:
                raise InvalidArgument("session_key must be 64 lowercase hex digits (an Ed25519 public key)")
        if conn.user is not None:
            raise AlreadyLoggedIn("already logged in as %s; logout first" % conn.user)
        client_host = conn.remote.rsplit(":", 1)[0]
        # The attempt counts before its password is checked (parallel ones too).
        # (A guard may answer later: its counters in a database, mbt.tracker.pglogin.)
        wait = yield defer.maybeDeferred(self.login_guard.admit, user, client_host)
        if wait is not None:
            raise RateLimited("too many failed logins; try again in %d s" % (int(wait) + 1))
        ok = yield self.run_in_thread(passwords.verify, self.state.password_record(user), pw)
        if not ok:
            yield defer.maybeDeferred(self.login_guard.failed, user, client_host)
            # One message for a missing user and a wrong password: no user enumeration.
            raise BadCredentials("wrong user id or password")
        yield defer.maybeDeferred(self.login_guard.succeeded, user, client_host)
        if conn.user is not None:   # a racing second login on the same connection
            raise AlreadyLoggedIn("already logged in as %s; logout first" % conn.user)
        if conn.closed:             # the peer hung up while its password was checked
            raise TrackerUnavailable("connection closed during login")
        self._session_counter += 1
        conn.session_id = "%d-%s" % (self._session_counter, secrets.token_hex(4))
        conn.user = user
        conn.address = address
        conn.token = secrets.token_urlsafe(24)
        conn.session_key = session_key
        session = self.state.open_session(conn.session_id, user, address)
        try:
            # With a database store this waits until every tracker can see the session.
            yield self.presence.opened(session)
        except MbtError:
            self.state.close_session(session.session_id)
            conn.session_id = conn.user = conn.token = conn.address = None
            conn.session_key = None
            raise
        self._by_session[conn.session_id] = conn
        self._probe(conn.session_id, address)
        return {"user": user, "token": conn.token, "time": self.clock.seconds()}

    def _probe(self, session_id: str, address: str) -> None:
        """Learn whether other peers can dial the address this session announced."""
        if self.probe is None:
            return

        def learnt(ok):
            if session_id in self._by_session:
                self.reachable[session_id] = bool(ok)
                log.info("peer address {a} is {r}", a=address, r="reachable" if ok else "not reachable")
                if not ok:
                    # Only "no" changes what a downloader does (it dials unless told
                    # false), so only "no" costs the fleet a message or a database write.
                    self.presence.reach(session_id, False)
        self.probe(address).addCallbacks(learnt, lambda f: learnt(False))

    def op_connect_peer(self, conn: Connection, req: dict) -> dict:
        """Bring a connection about with a peer the caller cannot dial (``connect_peer``).

        The target peer (``peer``: a session id from ``get_peers``) is told to
        dial the caller (connect-back) when the caller accepts connections,
        else to meet it at a relay. Either way the caller then sends its
        HELLO, with ticket and proof, over that connection.
        """
        group = check_id("group id", req.get("group"))
        file_hash = req.get("file_hash")
        if not (isinstance(file_hash, str) and len(file_hash) == HASH_HEX_LEN):
            raise InvalidArgument("file_hash must be 64 lowercase hex digits")
        self.state.file_by_hash(conn.user, group, file_hash)    # not_member / no_such_file
        target_id = req.get("peer")
        target = self._by_session.get(target_id) if isinstance(target_id, str) else None
        remote = self.state.sessions.get(target_id) if isinstance(target_id, str) else None
        if target is not None and target.session_id != target_id:
            target = None
        if target is None and (remote is None or not remote.origin):
            raise NoSuchPeer("that peer is not logged in at any tracker now")
        token = secrets.token_urlsafe(24)
        message = {"push": "dial", "token": token, "group": group, "file_hash": file_hash}
        if self.reachable.get(conn.session_id):
            message.update(via="connect-back", address=conn.address)
        elif self.relays:
            relay = self.relays[secrets.randbelow(len(self.relays))]
            message.update(via="relay", relay=relay)
        else:
            raise Unreachable("neither peer accepts connections and no relay is listed in TRACKER_INFO")
        reply = {"via": message["via"], "token": token}
        if "relay" in message:
            reply["relay"] = message["relay"]
        if target is not None:
            target.push(message)
            return reply
        # The seeder is connected to another tracker of the fleet: that one pushes.
        sent = self.presence.dial(remote.origin, target_id.split("/", 1)[1], message)
        if isinstance(sent, defer.Deferred):        # a database store: logged for the fleet
            return sent.addCallback(lambda _: reply)
        return reply

    def _dial_pushed(self, session_id: str, message: dict) -> None:
        """Another tracker asks us to send a ``dial`` push to our session ``session_id``."""
        conn = self._by_session.get(session_id)
        if conn is None or conn.session_id != session_id:
            log.info("dial push for session {sid}, which is no longer here; dropped", sid=session_id[:40])
            return
        conn.push(message)

    def op_logout(self, conn: Connection, req: dict) -> dict:
        user = conn.user
        self._close_session(conn)
        conn.session_id = conn.user = conn.token = conn.address = None
        return {"user": user}

    def op_create_group(self, conn: Connection, req: dict) -> dict:
        return self._commit({"op": "create_group", "user": conn.user, "group": req.get("group")})

    def op_list_groups(self, conn: Connection, req: dict) -> dict:
        return {"groups": self.state.list_groups(conn.user)}

    def op_join_group(self, conn: Connection, req: dict) -> dict:
        return self._commit({"op": "join_group", "user": conn.user, "group": req.get("group")})

    def op_leave_group(self, conn: Connection, req: dict) -> dict:
        return self._commit({"op": "leave_group", "user": conn.user, "group": req.get("group")})

    def op_list_requests(self, conn: Connection, req: dict) -> dict:
        return {"requests": self.state.list_requests(conn.user, req.get("group"))}

    def op_accept_request(self, conn: Connection, req: dict) -> dict:
        return self._commit({"op": "accept_request", "owner": conn.user,
                             "group": req.get("group"), "user": req.get("user")})

    def op_reject_request(self, conn: Connection, req: dict) -> dict:
        return self._commit({"op": "reject_request", "owner": conn.user,
                             "group": req.get("group"), "user": req.get("user")})

    def op_list_files(self, conn: Connection, req: dict) -> dict:
        return {"files": self.state.list_files(conn.user, req.get("group"))}

    def op_share_file(self, conn: Connection, req: dict) -> defer.Deferred:
        group = check_id("group id", req.get("group"))
        manifest = Manifest.from_dict(req.get("manifest"))
        entry = self.state.files.get((group, manifest.name))
        if (entry is not None and conn.user in entry.sharers
                and entry.manifest.file_hash == manifest.file_hash
                and self.state.is_member(conn.user, group)):
            # Re-announcing (e.g. at login): nothing durable changes, log nothing.
            m = entry.manifest
            d = defer.succeed({"group": group, "name": m.name, "size": m.size, "pieces": m.pieces,
                               "sharers": len(entry.sharers)})
        else:
            d = self._commit({"op": "share_file", "user": conn.user, "group": group,
                              "manifest": manifest.to_dict()})
        session_id = conn.session_id

        def announce(result):
            # The session may have ended while the write was replicated.
            if session_id is not None and session_id == conn.session_id and session_id in self.state.sessions:
                if (group, manifest.name) in self.state.sessions[session_id].shares:
                    return result       # announced before: the other trackers know it already
                self.state.announce(session_id, group, manifest.name)
                told = self.presence.announced(session_id, group, manifest.name)
                if isinstance(told, defer.Deferred):    # a database store: visible fleet-wide first

                    def untold(failure):
                        # Not logged for the fleet: forget it here too, so that a retry announces again.
                        self.state.withdraw(session_id, group, manifest.name)
                        return failure
                    return told.addCallbacks(lambda _: result, untold)
            return result
        return d.addCallback(announce)

    def op_stop_share(self, conn: Connection, req: dict) -> dict:
        name = check_file_name(req.get("name"))
        return self._commit({"op": "stop_share", "user": conn.user, "group": req.get("group"),
                             "name": name})

    def op_get_peers(self, conn: Connection, req: dict) -> dict:
        # True / False when its tracker dialled the peer's address; None: unknown.
        return self.state.get_peers(conn.user, req.get("group"), req.get("name"),
                                    exclude_session=conn.session_id or "", reachable=self._reachable)

    def _reachable(self, session) -> Optional[bool]:
        return session.reachable if session.origin else self.reachable.get(session.session_id)


class TrackerService(service.Service):
    """One tracker: loads its state, links with the other trackers, listens on its address.

    ``trackers`` is the parsed TRACKER_INFO and ``number`` this tracker's line
    in it; without them the tracker is alone (it serves at once). ``secret``
    authenticates the sync channel and seeds the ticket key; without it, it is
    read from ``secret_file`` (created there first if ``create_secret``), and
    without either it is random, which is only useful for a lone tracker.

    Building the service touches nothing: :meth:`startService` creates and
    locks the state dir, opens the database and replays it (raising
    ConfigError if it cannot), then listens; ``listening`` fires with the port.

    With ``store_url`` (``postgresql://...``) the tracker keeps no state of its
    own: ``state_dir`` is ignored and the fleet's database holds everything
    (:mod:`mbt.tracker.pgfleet`); the trackers do not link to each other.
    """

    def __init__(self, endpoint, state_dir: Optional[str], reactor=None,
                 trackers: Optional[List[TrackerAddress]] = None, number: int = 1,
                 secret: Optional[bytes] = None, timing: Optional[Timing] = None, tls=None,
                 relays: Optional[List[str]] = None,
                 secret_file: Optional[str] = None, create_secret: bool = False,
                 store_url: Optional[str] = None, fleet_options: Optional[dict] = None,
                 import_from: Optional[str] = None, compaction: Optional[dict] = None) -> None:
        if reactor is None:
            reactor = _default_clock()
        self._reactor = reactor
        self.number = number
        self.store_url = store_url
        self.import_from = import_from
        self.fleet_options = fleet_options or {}
        #: Options of the SQLite log's Compactor (``every``: operations between snapshots).
        self.compaction = compaction or {}
        if store_url:
            self.state_dir = None
            self.where = safe_url(store_url)
        else:
            self.state_dir = self.where = os.path.abspath(os.path.expanduser(state_dir))
        self.trackers = trackers
        self.relays = relays
        self.endpoint = endpoint
        self.tls = tls
        self.timing = timing
        self._secret = secret
        self.secret_file = secret_file
        self.create_secret = create_secret
        self.lock = self.store = self.core = self.replicator = self.mesh = self.factory = None
        self.compactor: Optional[Compactor] = None
        self.loaded = 0
        self.port = None
        self.listening: Optional[defer.Deferred] = None

    def open(self) -> None:
        """Create and lock the state dir, open the database and replay it (ConfigError if unusable)."""
        secret = self._secret
        if secret is None and self.secret_file:
            secret = load_or_create_secret(self.secret_file, create=self.create_secret)
        if secret is None:
            secret = secrets.token_bytes(32)
        if self.store_url:
            self._open_fleet(secret)
            return
        self.state_dir = self.where = ensure_state_dir(self.state_dir)
        self.lock = StateDirLock(self.state_dir)
        try:
            self.store = SQLiteStore(os.path.join(self.state_dir, "tracker.sqlite3"))
            state = TrackerState()
            number, reactor = self.number, self._reactor
            others = [t.number for t in (self.trackers or []) if t.number != number]
            oplog = OpLog(self.store)
            self.compactor = Compactor(oplog, lambda f, *a: threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), f, *a), **self.compaction)
            self.replicator = Replicator(number, others, state, oplog, reactor, self.timing)
            self.core = TrackerCore(state, self.store, replicator=self.replicator,
                                    signing_key=tickets.signing_key_from_secret(secret), clock=reactor,
                                    relays=self.relays, probe=lambda address: tcp_probe(reactor, address))
            with _collector_paused():
                self.loaded = self.core.load()
        except BaseException:
            if self.store is not None:
                self.store.close()
            self.lock.release()
            raise
        self.mesh = Mesh(number, secret, self.replicator, reactor, self.trackers, tls=self.tls)
        self.factory = TrackerServerFactory(self.core, self.mesh)

    def _open_fleet(self, secret: bytes) -> None:
        """Over PostgreSQL: read the newest snapshot and the log after it (ConfigError if unreachable)."""
        if self.import_from:
            counts = import_state_dir(self.import_from, self.store_url)
            log.info("imported {users} users, {groups} groups, {requests} requests, {files} files"
                     " ({operations} operations) from {src}", src=self.import_from, **counts)
            self.import_from = None
        state, reactor = TrackerState(), self._reactor
        self.replicator = PgFleet(self.number, state, self.store_url, reactor, **self.fleet_options)
        self.core = TrackerCore(state, None, replicator=self.replicator,
                                signing_key=tickets.signing_key_from_secret(secret), clock=reactor,
                                relays=self.relays, probe=lambda address: tcp_probe(reactor, address))
        with _collector_paused():
            self.loaded = self.core.load()
        self.factory = TrackerServerFactory(self.core, None)

    def startService(self) -> None:
        self.open()
        service.Service.startService(self)
        # A string (tests, plain TCP) or a ready endpoint (TLS, from mbt.tls).
        ep = (endpoints.serverFromString(self._reactor, self.endpoint)
              if isinstance(self.endpoint, str) else self.endpoint)
        d = ep.listen(self.factory)

        def listening(port):
            self.port = port
            addr = port.getHost()
            log.info("tracker listening on {host}:{port}; state in {dir} ({n} operations loaded)",
                     host=addr.host, port=addr.port, dir=self.where, n=self.loaded)
            # Listen first (other trackers reach us on this port), then look for them.
            self.replicator.start()
            if self.compactor is not None:
                self.compactor.note()   # a long log from before snapshots existed: compact it now
            if self.mesh is not None:
                self.mesh.start()
            return port
        d.addCallback(listening)
        self.listening = d

    def stopService(self):
        service.Service.stopService(self)
        d = defer.maybeDeferred(self.port.stopListening) if self.port is not None else defer.succeed(None)

        def close(_):
            if self.mesh is not None:
                self.mesh.stop()
            if self.replicator is not None:
                self.replicator.stop()
            if self.compactor is not None:
                self.compactor.stop()
            if self.factory is not None:
                self.factory.disconnect_all()
            if self.store is not None:
                self.store.close()
            if self.lock is not None:
                self.lock.release()
        return d.addBoth(close)
