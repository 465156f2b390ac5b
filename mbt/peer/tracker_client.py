"""The peer's link to the trackers: first reachable tracker, failover, reconnect.

:class:`TrackerClient` keeps one connection to a tracker from TRACKER_INFO.
The connection is a :class:`twisted.application.internet.ClientService`:

* its endpoint is a :class:`RotatingEndpoint` over the trackers in file order,
  so every failed attempt makes the next attempt go to the next tracker (the
  failover); a lost connection is retried on the same tracker first;
* its retry policy is the backoff of docs/protocol.rst 2.13 (every tracker
  once, 0.05 s apart; then 0.5 s doubling up to 4 s; 0.1 s after a loss);
* its ``prepareConnection`` step is the handshake ``ping`` followed by the
  ``on_connected`` hook (the peer logs back in and re-announces its shares):
  user requests go through only once that is done;
* a request made while no tracker is ready waits on
  ``whenConnected(failAfterFailures=...)``: it fails as soon as every tracker
  has failed once in a row ("no tracker reachable"), or after
  ``request_timeout`` seconds; every request has the same timeout on its
  answer (``Deferred.addTimeout`` on the injected clock).
"""

from __future__ import annotations

from typing import Callable, List, Optional

from twisted.application.internet import ClientService
from twisted.internet import defer, protocol, task
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mbt.errors import CatchingUp, TrackerUnavailable
from mbt.protocols.tracker import TrackerClientProtocol
from mbt.timers import cancel_pending
from mbt.tls import client_endpoint
from mbt.trackerinfo import TrackerAddress

log = Logger(namespace="mbt.peer.tracker")


@implementer(IStreamClientEndpoint)
class RotatingEndpoint:
    """An endpoint over a list of trackers: each attempt goes to the current one.

    A failed attempt moves on to the next tracker in file order (wrapping), so a
    :class:`ClientService` retrying on this endpoint fails over by itself.
    ``make_endpoint(tracker)`` builds the real endpoint for one tracker (TCP, or
    TLS when the peer runs with TLS).
    """

    def __init__(self, trackers: List[TrackerAddress],
                 make_endpoint: Callable[[TrackerAddress], IStreamClientEndpoint]) -> None:
        self.trackers = list(trackers)
        self.make_endpoint = make_endpoint
        self.index = 0
        #: The tracker of the latest attempt (the connected one once it succeeded).
        self.attempted: Optional[TrackerAddress] = None

    @property
    def current(self) -> TrackerAddress:
        """The tracker the next attempt goes to."""
        return self.trackers[self.index]

    def advance(self) -> None:
        """Make the next attempt go to the next tracker."""
        self.index = (self.index + 1) % len(self.trackers)

    def connect(self, factory) -> defer.Deferred:
        """Connect ``factory`` to the current tracker; on failure, move on to the next."""
        target = self.attempted = self.current

        def failed(f):
            if not f.check(defer.CancelledError, ConnectingCancelledError):
                log.info("tracker {t} unreachable: {why}", t=str(target), why=f.getErrorMessage())
                self.advance()
            return f
        return self.make_endpoint(target).connect(factory).addErrback(failed)


class TrackerClient:
    """A self-healing connection to one of several trackers."""

    connect_timeout = 3.0
    request_timeout = 8.0
    keepalive = 60.0
    #: Wait between attempts in the first round (every tracker tried once).
    first_round_delay = 0.05
    #: Wait before the second round; it doubles every round up to ``max_backoff``.
    backoff = 0.5
    max_backoff = 4.0
    #: Wait before retrying the same tracker after a lost connection.
    lost_delay = 0.1

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
        self.endpoint = RotatingEndpoint(trackers, self._tracker_endpoint)
        self._factory = _LinkFactory(self)
        self.service = ClientService(_GatedEndpoint(self), self._factory,
                                     retryPolicy=self.retry_delay, clock=reactor,
                                     prepareConnection=self._prepare)
        self.proto: Optional[TrackerClientProtocol] = None
        self.current: Optional[TrackerAddress] = None
        #: A tracker connection is prepared (logged back in) and takes requests.
        self.ready = False
        #: Attempts (connections or preparations) failed since the last ready connection.
        self.failures_in_row = 0
        self._streak_start = 0          # ClientService's attempt count when this streak began
        self._next_delay: Optional[float] = None
        self._keepalive: Optional[task.LoopingCall] = None
        self._gate: Optional[_LossGate] = None          # the connection being prepared
        #: The connection we are dropping because its tracker is catching up.
        self._moving_on: Optional[TrackerClientProtocol] = None
        self._after_drop: List[defer.Deferred] = []     # requests waiting for that drop
        self._announced_loss = False
        self._ever_connected = False

    def _tracker_endpoint(self, target: TrackerAddress) -> IStreamClientEndpoint:
        return client_endpoint(self.reactor, target.host, target.port, self.tls, self.connect_timeout)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Begin connecting (returns at once)."""
        self.service.startService()

    def stop(self) -> defer.Deferred:
        """Disconnect and stop reconnecting; fires once the connection is closed."""
        self.ready = False
        self._keepalive = cancel_pending(self._keepalive)
        done = self.service.stopService() if self.service.running else defer.succeed(None)
        self.proto = self._moving_on = None
        waiting, self._after_drop = self._after_drop, []
        for w in waiting:
            w.errback(defer.CancelledError())
        return done

    def retry_delay(self, attempts: int) -> float:
        """ClientService's retry policy: seconds to wait after ``attempts`` failures in a row.

        The first round tries every tracker ``first_round_delay`` apart; each
        later round waits ``backoff`` seconds, doubling up to ``max_backoff``.
        After a lost connection the first retry comes ``lost_delay`` seconds later
        (at once when leaving a tracker that is catching up) and the streak
        counts from there.
        """
        if self._next_delay is not None:
            delay, self._next_delay = self._next_delay, None
            self._streak_start = attempts
            return delay
        rounds = (attempts - self._streak_start) // max(1, len(self.trackers))
        if rounds == 0:
            return self.first_round_delay
        return min(self.max_backoff, self.backoff * (2 ** (rounds - 1)))

    # -- connecting ----------------------------------------------------------

    def _connect_failed(self, f: Failure) -> Failure:
        if not f.check(defer.CancelledError, ConnectingCancelledError):
            self.failures_in_row += 1
        return f

    def _prepare(self, proxy) -> defer.Deferred:
        """ClientService's prepare step: ping, then the ``on_connected`` hook (re-login)."""
        gate = self._gate
        assert gate is not None and gate.proxy is proxy
        proto = gate.inner
        target = self.endpoint.attempted
        previous = self.current
        self.proto = proto
        self.current = target
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

        def done(_):
            if self.proto is not proto or not proto.connected or self._moving_on is proto:
                raise TrackerUnavailable("connection to the tracker was lost")
            self.ready = True
            self.failures_in_row = 0
            self._streak_start = 0      # ClientService starts counting afresh too
            gate.live = True
            self._start_keepalive(proto)
            return proto

        def failed(f):
            if proto.transport is not None:
                proto.transport.loseConnection()
            if f.check(defer.CancelledError) or not self.service.running:
                return f            # stopping
            if f.check(TrackerUnavailable):
                log.info("tracker {t} did not answer: {why}", t=str(target), why=f.getErrorMessage())
            else:
                log.failure("re-login after connecting to {t} failed", f, t=str(target))
            self.failures_in_row += 1
            self.endpoint.advance()
            return f
        return d.addCallback(done).addErrback(failed)

    def _start_keepalive(self, proto: TrackerClientProtocol) -> None:
        """A ping every ``keepalive`` seconds: the tracker closes idle connections."""
        cancel_pending(self._keepalive)

        def ping():
            if self.proto is proto and proto.connected:
                self._timed_ping(proto).addErrback(lambda f: None)
        self._keepalive = task.LoopingCall(ping)
        self._keepalive.clock = self.reactor
        self._keepalive.start(self.keepalive, now=False)

    def _timed_ping(self, proto: TrackerClientProtocol) -> defer.Deferred:
        """A ping that also asks the tracker's clock (``mbt.trackertime``)."""
        sent = self.reactor.seconds()

        def answered(result):
            if self.on_time is not None:
                self.on_time(sent, self.reactor.seconds(), result.get("time"))
            return result
        return self._with_timeout(proto, proto.request("ping", time=True)).addCallback(answered)

    def _lost(self, proto: TrackerClientProtocol, prepared: bool) -> None:
        """A connection ended (called before ClientService hears of it)."""
        if proto is not self.proto:
            return          # a connection we had already given up
        self.proto = None
        self.ready = False
        self._keepalive = cancel_pending(self._keepalive)
        if not self.service.running:
            return
        log.info("lost connection to tracker {t}", t=str(self.current))
        if not self._announced_loss:
            self._announced_loss = True
            self.notify("lost connection to tracker %s; reconnecting" % self.current)
        if prepared:
            # ClientService asks retry_delay next. A tracker that could not answer
            # from current state: the next one at once. Else the same one first.
            if self._moving_on is proto:
                self._next_delay = 0.0
                self.endpoint.advance()
            else:
                self._next_delay = self.lost_delay
        # (A connection lost while being prepared fails the preparation: the
        # next attempt goes to the next tracker, with the usual backoff.)

    def _loss_handled(self, proto: TrackerClientProtocol) -> None:
        """ClientService knows of the loss: requests held for it may wait anew."""
        if self._moving_on is not proto:
            return
        self._moving_on = None
        waiting, self._after_drop = self._after_drop, []
        for w in waiting:
            w.callback(None)

    def _catching_up(self, proto: TrackerClientProtocol) -> None:
        """The tracker says it is not current (restarting, electing): leave it."""
        if proto is self.proto and len(self.trackers) > 1 and proto.transport is not None:
            log.info("tracker {t} is catching up; moving to the next one", t=str(self.current))
            self._moving_on = proto
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
            if f.check(CatchingUp) and len(self.trackers) > 1:
                return self._request_once(op, args)
            return f
        return d.addErrback(retry)

    def _request_once(self, op: str, args: dict) -> defer.Deferred:
        if self.ready and self.proto is not None:
            return self._with_timeout(self.proto, self.proto.request(op, **args))
        return self._ready_protocol().addCallback(
            lambda proto: self._with_timeout(proto, proto.request(op, **args)))

    def _unreachable(self) -> TrackerUnavailable:
        tried = ", ".join(str(t) for t in self.trackers)
        return TrackerUnavailable("no tracker reachable (tried %s); still retrying in the background" % tried)

    def _ready_protocol(self) -> defer.Deferred:
        """The next ready connection; fails once every tracker failed in a row, or on timeout."""
        if self.failures_in_row >= len(self.trackers) and self.proto is None:
            # Every tracker has just failed: say so now, not in 8 s.
            return defer.fail(self._unreachable())
        if self._moving_on is not None:
            # ClientService still holds the connection we are dropping: wait for the drop.
            dropped = defer.Deferred()
            self._after_drop.append(dropped)
            d = dropped.addCallback(lambda _: self._when_connected())
        else:
            d = self._when_connected()
        d.addTimeout(self.request_timeout, self.reactor)

        def gave_up(f):
            if f.check(defer.CancelledError):
                return Failure(TrackerUnavailable("peer is shutting down"))
            return Failure(self._unreachable())
        return d.addErrback(gave_up)

    def _when_connected(self) -> defer.Deferred:
        """``whenConnected``, fired on a later reactor turn.

        ClientService fires it from inside a state transition, where a caller's
        callback that stops the link (``quit`` after an error) would re-enter
        the state machine, which refuses that.
        """
        left = max(1, len(self.trackers) - self.failures_in_row)
        connected = self.service.whenConnected(failAfterFailures=left)
        later = defer.Deferred(lambda _: connected.cancel())

        def fire(result):
            if not later.called:
                (later.errback if isinstance(result, Failure) else later.callback)(result)

        def hand_over(result):
            self.reactor.callLater(0, fire, result)
        connected.addBoth(hand_over)
        return later

    def _with_timeout(self, proto: TrackerClientProtocol, d: defer.Deferred) -> defer.Deferred:
        def check(f):
            if f.check(CatchingUp):
                self._catching_up(proto)
            return f
        d.addErrback(check)

        def expired(result, timeout):
            log.warn("tracker did not answer within {s}s; reconnecting", s=timeout)
            if proto.transport is not None:
                proto.transport.loseConnection()
            return Failure(TrackerUnavailable("the tracker did not answer within %.0f seconds" % timeout))
        return d.addTimeout(self.request_timeout, self.reactor, onTimeoutCancel=expired)


class _LinkFactory(protocol.Factory):
    """Builds the tracker protocol for each connection of the link."""

    noisy = False

    def __init__(self, link: TrackerClient) -> None:
        self.link = link
        self.last_built: Optional[TrackerClientProtocol] = None

    def buildProtocol(self, addr) -> TrackerClientProtocol:
        proto = TrackerClientProtocol()
        proto.factory = self
        proto.on_push = self.link.on_push
        self.last_built = proto
        return proto


class _LossGate(protocol.Protocol):
    """Stands between a transport and ClientService's wrapper of our protocol.

    ClientService (Twisted 26) has no state transition for a connection that
    ends while ``prepareConnection`` runs, or after it failed: its wrapper's
    loss notice then raises ``NoTransition`` into the reactor. A tracker killed
    while we log back in does exactly that. So until the preparation has
    succeeded (``live``), the end of the connection goes to our protocol alone
    (which fails the preparation's pending request; ClientService counts a
    failed attempt); afterwards it goes through ClientService's wrapper.
    """

    def __init__(self, link: TrackerClient, proxy, inner: TrackerClientProtocol) -> None:
        self.link = link
        self.proxy = proxy
        self.inner = inner
        self.live = False

    def makeConnection(self, transport) -> None:
        self.connected = 1
        self.transport = transport
        self.proxy.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.proxy.dataReceived(data)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self.connected = 0
        self.link._lost(self.inner, self.live)
        try:
            (self.proxy if self.live else self.inner).connectionLost(reason)
        finally:
            self.link._loss_handled(self.inner)


class _GateFactory(protocol.Factory):
    """Wraps ClientService's protocol factory so each connection gets a :class:`_LossGate`."""

    noisy = False

    def __init__(self, wrapped, link: TrackerClient, built: _LinkFactory) -> None:
        self.wrapped = wrapped
        self.link = link
        self.built = built

    def buildProtocol(self, addr):
        proxy = self.wrapped.buildProtocol(addr)
        if proxy is None:
            return None
        gate = self.link._gate = _LossGate(self.link, proxy, self.built.last_built)
        return gate


@implementer(IStreamClientEndpoint)
class _GatedEndpoint:
    """The rotating endpoint as the link's ClientService sees it (gated, failures counted)."""

    def __init__(self, link: TrackerClient) -> None:
        self.link = link

    def __repr__(self) -> str:      # ClientService logs "Scheduling retry N to connect <this> in S seconds"
        return "tracker %s" % self.link.endpoint.current

    def connect(self, factory) -> defer.Deferred:
        link = self.link
        gated = _GateFactory(factory, link, link._factory)
        d = link.endpoint.connect(gated)
        # ClientService expects the protocol its factory built (its own wrapper).
        return d.addCallbacks(lambda gate: gate.proxy, link._connect_failed)
