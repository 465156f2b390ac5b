"""The tracker control channel: one JSON object per line, both directions.

Request: ``{"id": 7, "op": "list_files", "group": "g"}``.
Reply:   ``{"id": 7, "ok": {...}}`` or ``{"id": 7, "error": {"code": "...", "message": "..."}}``.

Requests may be pipelined; replies carry the request's ``id`` and may come
back in any order. See ``docs/protocol.rst`` for every operation.

Other trackers connect to the same port: a connection whose first line is a
sync hello is handed to the sync channel (:mod:`mbt.protocols.sync`) and never
treated as a client.
"""

from __future__ import annotations

import itertools
import json
from typing import Dict, Optional

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from mbt.errors import (BadJson, BadRequest, Busy, Internal, LineTimeout, LineTooLong, MbtError, TrackerUnavailable,
                        error_from_wire)
from mbt.protocols.jsonlines import encode
from mbt.protocols.limits import HangUp, HostCounts
from mbt.protocols.lines import BoundedLineReceiver, LineBudget
from mbt.protocols.sync import SYNC_MAX_LINE, is_sync_hello
from mbt.tracker.connection import Connection

log = Logger(namespace="mbt.tracker.protocol")

#: Longest accepted line (a manifest of a 100 GiB file is ~14 MB of JSON).
MAX_LINE = 16 * 1024 * 1024
#: Longest line before a connection has logged in: nothing an anonymous client
#: may send (create_user, login, ping) needs more, and idle strangers cannot
#: make the tracker buffer megabytes each.
ANON_MAX_LINE = 64 * 1024
#: A connection must send its first line within HANDSHAKE_TIMEOUT seconds and
#: then at least one line every IDLE_TIMEOUT seconds (mbt peers ping every 60 s).
HANDSHAKE_TIMEOUT = 30.0
IDLE_TIMEOUT = 300.0
#: Requests one connection may have in flight before it is told to slow down.
MAX_IN_FLIGHT = 64
#: Connections one IP address may hold open at once (the next is closed at once).
MAX_CONNECTIONS_PER_HOST = 64
#: Bytes of unfinished long lines (beyond the first 64 KiB of each) the tracker
#: holds for one IP address and for all connections together; a line that
#: does not fit gets ``busy`` and its connection is closed. One maximal line
#: per address, two in all: memory stays bounded whatever logged-in clients send.
HOST_LINE_BUDGET = MAX_LINE
TOTAL_LINE_BUDGET = 2 * MAX_LINE
#: Seconds a long line (over 64 KiB) may take from its first byte to its newline.
LONG_LINE_DEADLINE = 120.0


#: Read-only requests whose success is logged at debug level only (the log line
#: and its formatting cost more CPU than answering them).
QUIET_OPS = frozenset(["ping", "list_groups", "list_requests", "list_files", "get_peers", "ticket_key",
                       "get_ticket", "state_digest", "tracker_status"])


def error_reply(req_id, err: MbtError) -> dict:
    """The reply carrying ``err``: ``{"id": ..., "error": {"code": ..., "message": ...}}``."""
    return {"id": req_id, "error": err.to_wire()}


class TrackerServerProtocol(BoundedLineReceiver, TimeoutMixin):
    """Server side: decode a request, hand it to the core, write the reply.

    Timeouts (``TimeoutMixin`` on the core's clock): the first line within
    HANDSHAKE_TIMEOUT, then a line at least every IDLE_TIMEOUT; none once the
    connection is handed to the sync channel (it watches its own liveness).
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    LONG_LINE_DEADLINE = LONG_LINE_DEADLINE

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.host = str(getattr(peer, "host", "?"))
        self.conn = Connection("%s:%s" % (self.host, getattr(peer, "port", "?")))
        self.conn.push = self._send
        self.in_flight = 0
        self.sync = None            # the sync channel, if another tracker opened this connection
        self._first_line = True
        self.MAX_LENGTH = ANON_MAX_LINE
        self.clock = self.factory.core.clock
        self.callLater = self.clock.callLater
        self.budget, self.budget_host = self.factory.line_budget, self.host
        self.setTimeout(HANDSHAKE_TIMEOUT)
        self.factory.connections.add(self)
        self.factory.by_host.add(self.host)

    def timeoutConnection(self) -> None:
        """TimeoutMixin: no first line in time, or no line for IDLE_TIMEOUT."""
        self.setTimeout(None)       # no line after this one restarts it
        log.info("closing {remote}: {why}", remote=self.conn.remote,
                 why="no request within %d s" % HANDSHAKE_TIMEOUT if self._first_line
                 else "idle for %d s" % IDLE_TIMEOUT)
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0
        BoundedLineReceiver.connectionLost(self, reason)
        self.setTimeout(None)
        self.factory.connections.discard(self)
        self.factory.by_host.remove(self.host)
        if self.sync is not None:
            self.sync.connection_lost()
        self.factory.core.connection_lost(self.conn)

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("line over {max} bytes from {remote}; closing", max=self.MAX_LENGTH, remote=self.conn.remote)
        if self.sync is None:
            self._send(error_reply(None, LineTooLong("line longer than %d bytes" % self.MAX_LENGTH)))
        self.transport.loseConnection()

    def lineBudgetExceeded(self) -> None:
        log.warn("no room for a long line from {remote} ({host} bytes held for its address, {total} in all); "
                 "closing", remote=self.conn.remote, host=self.factory.line_budget.by_host.get(self.host, 0),
                 total=self.factory.line_budget.used)
        if self.sync is None:
            self._send(error_reply(None, Busy("the tracker holds too many long lines; try again later")))
        self.transport.loseConnection()

    def lineDeadlineExceeded(self) -> None:
        log.warn("a long line from {remote} took over {t} s; closing", remote=self.conn.remote,
                 t=self.LONG_LINE_DEADLINE)
        if self.sync is None:
            self._send(error_reply(None, LineTimeout("a line over 64 KiB must arrive within %d s"
                                                     % self.LONG_LINE_DEADLINE)))
        self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self.sync is not None:
            self.sync.line_received(line)
            self._sync_limits()
            return
        if self.timeOut is not None:
            self.setTimeout(IDLE_TIMEOUT)
        line = line.rstrip(b"\r")
        if not line.strip():
            return
        first, self._first_line = self._first_line, False
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError):   # RecursionError: nested too deep
            self._send(error_reply(None, BadJson("a request is one JSON object per line")))
            return
        if first and self.factory.mesh is not None and is_sync_hello(req):
            # Another tracker: from now on this connection is a sync channel.
            self.factory.connections.discard(self)
            self.setTimeout(None)       # the sync channel watches its own liveness
            self.sync = self.factory.mesh.adopt(self.transport, self.sendLine, self.conn.remote, req)
            self._sync_limits()
            return
        if not isinstance(req, dict):
            self._send(error_reply(None, BadRequest("a request must be a JSON object")))
            return
        req_id = req.get("id")
        if not isinstance(req_id, (int, str)) or isinstance(req_id, bool) or len(str(req_id)) > 64:
            self._send(error_reply(None, BadRequest("every request needs an \"id\" (integer or short string)")))
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            self._send(error_reply(req_id, Busy("too many requests in flight on this connection")))
            return
        self.in_flight += 1
        op = req.get("op")
        d = self.factory.core.handle(self.conn, req)
        if not (isinstance(op, str) and op.isidentifier() and len(op) <= 40):
            op = repr(op)[:40]      # logged: no newlines or megabytes from the remote side
        d.addCallbacks(self._ok, self._failed, callbackArgs=(req_id, op), errbackArgs=(req_id, op))

    def _sync_limits(self) -> None:
        """Long sync lines only from a tracker that has proven the shared secret.

        Until then the anonymous line limit stays, so a stranger's hello cannot
        make the tracker buffer megabytes.
        """
        if self.sync.authenticated and self.MAX_LENGTH != SYNC_MAX_LINE:
            self.MAX_LENGTH = SYNC_MAX_LINE
            self.stop_budgeting()

    def _ok(self, result: dict, req_id, op) -> None:
        self.in_flight -= 1
        if self.conn.user is not None:
            self.MAX_LENGTH = MAX_LINE      # logged in: manifests of big files may follow
        # Queries answered all the time (thousands a second on a busy tracker) are
        # logged at debug level; every change, login and error stays at info.
        (log.debug if op in QUIET_OPS else log.info)("{op} by {user} from {remote}: ok", op=op,
                                                     user=self.conn.user, remote=self.conn.remote)
        self._send({"id": req_id, "ok": result})

    def _failed(self, failure: Failure, req_id, op) -> None:
        self.in_flight -= 1
        if failure.check(MbtError):
            err = failure.value
            log.info("{op} by {user} from {remote}: {code}", op=op, user=self.conn.user,
                     remote=self.conn.remote, code=err.code)
            self._send(error_reply(req_id, err))
        else:
            # Never send internal details to the remote side; log them here.
            log.failure("{op} from {remote} failed internally", failure, op=op, remote=self.conn.remote)
            self._send(error_reply(req_id, Internal()))

    def _send(self, obj: dict) -> None:
        if self.transport is not None and self.connected:
            self.sendLine(encode(obj))


class TrackerServerFactory(protocol.ServerFactory):
    """Builds server protocols sharing one :class:`TrackerCore`."""

    protocol = TrackerServerProtocol
    noisy = False

    def __init__(self, core, mesh=None, per_host: int = MAX_CONNECTIONS_PER_HOST,
                 line_budget: Optional[LineBudget] = None) -> None:
        self.core = core
        self.mesh = mesh            # accepts sync connections from other trackers (None: refuse)
        self.connections = set()    # client connections (not sync links)
        self.per_host = per_host
        self.by_host = HostCounts()         # every open connection, sync ones too
        self.line_budget = line_budget or LineBudget(TOTAL_LINE_BUDGET, HOST_LINE_BUDGET)

    def buildProtocol(self, addr):
        host = str(getattr(addr, "host", "?"))
        if self.by_host[host] >= self.per_host:
            log.warn("refusing a connection from {host}: {n} already open from there", host=host,
                     n=self.by_host[host])
            return HangUp()
        return protocol.ServerFactory.buildProtocol(self, addr)

    def disconnect_all(self) -> None:
        """Drop every client connection (tracker shutdown)."""
        for p in list(self.connections):
            p.transport.loseConnection()


class TrackerClientProtocol(BoundedLineReceiver):
    """Client side: ``request(op, **args)`` returns a Deferred of the ``ok`` dict.

    A typed error reply fails the Deferred with the :class:`MbtError` subclass
    of the tracker's code (:func:`mbt.errors.error_from_wire`); a lost
    connection fails every pending request with :class:`TrackerUnavailable`.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._pending: Dict[int, defer.Deferred] = {}
        self.on_lost = None
        #: Called with each unsolicited message (a line with "push" and no "id").
        self.on_push = None

    def request(self, op: str, **args) -> defer.Deferred:
        """Send one request; fires with the result dict or fails with MbtError."""
        if not self.connected:
            return defer.fail(TrackerUnavailable("not connected to a tracker"))
        req_id = next(self._ids)
        d = defer.Deferred(canceller=lambda _d: self._pending.pop(req_id, None))
        self._pending[req_id] = d
        msg = dict(args)
        msg["id"] = req_id
        msg["op"] = op
        self.sendLine(encode(msg))
        return d

    def lineReceived(self, line: bytes) -> None:
        try:
            reply = json.loads(line)
            req_id = reply.get("id")
        except (ValueError, AttributeError, UnicodeDecodeError, RecursionError):
            log.warn("unreadable line from tracker; closing")
            self.transport.loseConnection()
            return
        d = self._pending.pop(req_id, None) if isinstance(req_id, int) else None
        if d is not None and d.called:     # already timed out on our side
            return
        if d is None:
            if isinstance(reply, dict) and "push" in reply and "id" not in reply:
                if self.on_push is not None:
                    self.on_push(reply)
                return
            err = reply.get("error") if isinstance(reply, dict) else None
            if err:
                log.warn("tracker error not tied to a request: {err}", err=err)
            return
        if "ok" in reply:
            d.callback(reply["ok"] if isinstance(reply["ok"], dict) else {})
        else:
            d.errback(error_from_wire(reply.get("error")))

    def lineLengthExceeded(self, line: bytes) -> None:
        log.warn("tracker sent an over-long line; closing")
        self.transport.loseConnection()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0      # later request() calls fail at once instead of hanging
        BoundedLineReceiver.connectionLost(self, reason)
        pending, self._pending = self._pending, {}
        for d in pending.values():
            if not d.called:
                d.errback(TrackerUnavailable("connection to the tracker was lost"))
        if self.on_lost is not None:
            self.on_lost(self)
