"""The peer's link to the trackers: first reachable tracker, failover, reconnect.

:class:`TrackerClient` keeps one connection to a tracker from TRACKER_INFO,
trying them in file order. When the connection drops (tracker killed or
restarted) it reconnects by itself with backoff, to the same tracker if it is
back or to the next one in the file, and runs the ``on_connected`` hook (the
peer logs back in and re-announces its shares) before it lets user requests
through again. A request made while no tracker is reachable fails within
``request_timeout`` seconds instead of hanging.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from mbt.errors import MbtError, TrackerUnavailable
from mbt.protocols.tracker import TrackerClientProtocol
from mbt.tls import client_endpoint
from mbt.trackerinfo import TrackerAddress

log = Logger(namespace="mbt.peer.tracker")


class TrackerClient:
    """A self-healing connection to one of several trackers."""

    connect_timeout = 3.0
    request_timeout = 8.0
    keepalive = 60.0
    max_backoff = 4.0

    def __init__(self, trackers: List[TrackerAddress], reactor,
                 on_connected: Optional[Callable[["TrackerClient"], defer.Deferred]] = None,
                 notify: Callable[[str], None] = lambda msg: None, tls=None,
                 on_time: Optional[Callable[[float, float, object], None]] = None,
                 on_push: Optional[Callable[[dict], None]] = None) -> None:
        self.trackers = trackers
        #: ``on_time(sent, received, tracker_time)`` after every timed ping.
        self.on_time = on_time
        self.on_push = on_push
        self.reactor = reactor
        self.on_connected = on_connected
        self.notify = notify
        self.tls = tls
        self.proto: Optional[TrackerClientProtocol] = None
        self.current: Optional[TrackerAddress] = None
        self.ready = False
        self._index = 0
        self._failures_in_row = 0
        self._running = False
        self._retry = None
        self._keepalive: Optional[task.LoopingCall] = None
        self._waiters: List[defer.Deferred] = []
        self._announced_loss = False
        self._ever_connected = False
        self._move_on = False

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (returns at once)."""
        self._running = True
        self._connect()

    def stop(self) -> None:
        """Disconnect and stop reconnecting."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_keepalive()
        if self.proto is not None and self.proto.transport is not None:
            self.proto.on_lost = None
            self.proto.transport.loseConnection()
        self.proto = None
        self.ready = False
        self._fail_waiters(TrackerUnavailable("peer is shutting down"))

    # -- connecting ----------------------------------------------------------

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        target = self.trackers[self._index]
        ep = client_endpoint(self.reactor, target.host, target.port, self.tls, self.connect_timeout)
        d = endpoints.connectProtocol(ep, TrackerClientProtocol())
        d.addCallbacks(self._connected, self._connect_failed, callbackArgs=(target,),
                       errbackArgs=(target,))

    def _connect_failed(self, failure, target: TrackerAddress) -> None:
        log.info("tracker {t} unreachable: {why}", t=str(target), why=failure.getErrorMessage())
        self._schedule_next(advance=True)

    def _schedule_next(self, advance: bool) -> None:
        if not self._running:
            return
        if advance:
            self._index = (self._index + 1) % len(self.trackers)
        self._failures_in_row += 1
        # Try every tracker quickly once, then back off per full round.
        rounds = self._failures_in_row // len(self.trackers)
        delay = 0.05 if rounds == 0 else min(self.max_backoff, 0.5 * (2 ** (rounds - 1)))
        self._retry = self.reactor.callLater(delay, self._connect)

    def _connected(self, proto: TrackerClientProtocol, target: TrackerAddress) -> None:
        if not self._running:
            proto.transport.loseConnection()
            return
        previous = self.current
        self.proto = proto
        self.current = target
        proto.on_lost = self._lost
        proto.on_push = self.on_push
        self._failures_in_row = 0
        log.info("connected to tracker {t}", t=str(target))
        if self._ever_connected and previous is not None and previous != target:
            self.notify("switched to tracker %s (tracker %s is unreachable)" % (target, previous))
        elif self._announced_loss:
            self.notify("reconnected to tracker %s" % target)
        self._announced_loss = False
        self._ever_connected = True
        # A ping first: it proves the other end speaks our protocol and, with TLS,
        # that the handshake (certificate checks included) went through.
        d = self._timed_ping(proto)
        d.addCallback(lambda _: self.on_connected(self) if self.on_connected else None)

        def done(result):
            if self.proto is proto and proto.connected:
                self.ready = True
                self._start_keepalive(proto)
                waiters, self._waiters = self._waiters, []
                for w in waiters:
                    w.callback(proto)
            return result

        def failed(f):
            if f.check(TrackerUnavailable):
                log.info("tracker {t} did not answer: {why}", t=str(target), why=f.getErrorMessage())
                return None
            log.failure("re-login after connecting to {t} failed", f, t=str(target))
        d.addCallback(done)
        d.addErrback(failed)

    def _start_keepalive(self, proto: TrackerClientProtocol) -> None:
        """A ping every ``keepalive`` seconds: the tracker closes idle connections."""
        self._stop_keepalive()

        def ping():
            if self.proto is proto and proto.connected:
                self._timed_ping(proto).addErrback(lambda f: None)
        self._keepalive = task.LoopingCall(ping)
        self._keepalive.clock = self.reactor
        self._keepalive.start(self.keepalive, now=False)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _timed_ping(self, proto: TrackerClientProtocol) -> defer.Deferred:
        """A ping that also asks the tracker's clock (``mbt.trackertime``)."""
        sent = self.reactor.seconds()

        def answered(result):
            if self.on_time is not None:
                self.on_time(sent, self.reactor.seconds(), result.get("time"))
            return result
        return self._with_timeout(proto, proto.request("ping", time=True)).addCallback(answered)

    def _lost(self, proto: TrackerClientProtocol) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.ready = False
        self._stop_keepalive()
        if not self._running:
            return
        log.info("lost connection to tracker {t}", t=str(self.current))
        if not self._announced_loss:
            self._announced_loss = True
            self.notify("lost connection to tracker %s; reconnecting" % self.current)
        if self._move_on:
            # That tracker could not answer from current state: try the next one.
            self._move_on = False
            self._index = (self._index + 1) % len(self.trackers)
            self._retry = self.reactor.callLater(0, self._connect)
            return
        # Retry the same tracker first (a quick restart), then move on.
        self._failures_in_row = 0
        self._retry = self.reactor.callLater(0.1, self._connect)

    def _catching_up(self, proto: TrackerClientProtocol) -> None:
        """The tracker says it is not current (restarting, electing): leave it."""
        if proto is self.proto and len(self.trackers) > 1 and proto.transport is not None:
            log.info("tracker {t} is catching up; moving to the next one", t=str(self.current))
            self._move_on = True
            self.ready = False        # requests from now on wait for the next tracker
            proto.transport.loseConnection()

    # -- requests ------------------------------------------------------------

    def raw_request(self, op: str, **args) -> defer.Deferred:
        """Send on the current connection even before it is ready (for the hook)."""
        if self.proto is None:
            return defer.fail(TrackerUnavailable("not connected to a tracker"))
        return self._with_timeout(self.proto, self.proto.request(op, **args))

    def request(self, op: str, **args) -> defer.Deferred:
        """Send a request once a tracker is ready; fails with TrackerUnavailable on timeout.

        A ``catching_up`` answer means the request was not executed: it is sent
        once more, to the next tracker.
        """
        d = self._request_once(op, args)

        def retry(f):
            if f.check(MbtError) and f.value.code == "catching_up" and len(self.trackers) > 1:
                return self._request_once(op, args)
            return f
        return d.addErrback(retry)

    def _request_once(self, op: str, args: dict) -> defer.Deferred:
        if self.ready and self.proto is not None:
            return self._with_timeout(self.proto, self.proto.request(op, **args))
        if self._failures_in_row >= len(self.trackers) and self.proto is None:
            # Every tracker has just refused a connection: say so now, not in 8 s.
            tried = ", ".join(str(t) for t in self.trackers)
            return defer.fail(TrackerUnavailable(
                "no tracker reachable (tried %s); still retrying in the background" % tried))
        waiter = defer.Deferred()
        self._waiters.append(waiter)

        def give_up():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                tried = ", ".join(str(t) for t in self.trackers)
                waiter.errback(TrackerUnavailable(
                    "no tracker reachable (tried %s); still retrying in the background" % tried))
        timer = self.reactor.callLater(self.request_timeout, give_up)

        def go(proto):
            if timer.active():
                timer.cancel()
            return self._with_timeout(proto, proto.request(op, **args))
        waiter.addCallback(go)
        return waiter

    def _with_timeout(self, proto, d: defer.Deferred) -> defer.Deferred:
        def check(f):
            if f.check(MbtError) and f.value.code == "catching_up":
                self._catching_up(proto)
            return f
        d.addErrback(check)

        def expire():
            if not d.called:
                log.warn("tracker did not answer within {s}s; reconnecting", s=self.request_timeout)
                d.errback(TrackerUnavailable("the tracker did not answer within %.0f seconds"
                                             % self.request_timeout))
                if proto.transport is not None:
                    proto.transport.loseConnection()
        timer = self.reactor.callLater(self.request_timeout, expire)

        def finished(result):
            if timer.active():
                timer.cancel()
            return result
        return d.addBoth(finished)

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.errback(exc)
