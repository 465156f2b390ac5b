"""The tracker and the peer as services: ``makeService(config, reactor=reactor)``.

``config`` is a parsed option object from :mod:`mbt.options` (either front
end's). Building a service has no side effects; the state dir, its lock, the
database and the shared secret are opened when the service starts. The twistd
plugin modules (:mod:`mbt.tap_tracker`, :mod:`mbt.tap_peer`) wrap these in
:class:`TwistdService` so a configuration error at start is one ``error:`` line.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure

from mbt.errors import ConfigError
from mbt.peer.runner import PeerService
from mbt.tls import server_endpoint
from mbt.tracker.secret import default_secret_path
from mbt.tracker.service import TrackerService


def tracker_endpoint(host: str, port: int) -> str:
    """A server endpoint string for a tracker address."""
    host = host.replace(":", "\\:")
    return "tcp:%d:interface=%s" % (port, host)


def build_tracker(config, reactor=None):
    """The TrackerService a parsed tracker config describes (nothing opened yet)."""
    if reactor is None:
        from twisted.internet import reactor
    me = config["address"]
    tls = config.get("tls")
    if tls is not None and tls.enabled:
        endpoint = server_endpoint(reactor, me.host, me.port, tls)
    else:
        endpoint = tracker_endpoint(me.host, me.port)
    secret_file = config.get("secret-file")
    return TrackerService(endpoint, config["state-dir"], reactor=reactor, trackers=config["trackers"],
                          number=config["no"], tls=tls,
                          secret_file=secret_file or default_secret_path(config["info"]),
                          create_secret=not secret_file, relays=config.get("relays"),
                          store_url=config.get("store"), import_from=config.get("import-from"))


def build_peer(config, reactor=None, kind=None):
    """The PeerService (or ``kind``) a parsed peer config describes (nothing opened yet).

    Its telnet console and manhole are those of ``config`` if it has them
    (``twistd mbt-peer``); ``mbt-client`` runs its console on stdio instead.
    """
    return (kind or PeerService)(config["address"], config["trackers"], config["state-dir"],
                       config.get("console"), config.get("manhole"), reactor=reactor,
                       upload_rate=config["upload-rate"], tls=config["tls"], web=config["web"])


def makeTrackerService(config, reactor=None) -> service.IService:
    """``twistd mbt-tracker``: the tracker under a :class:`TwistdService`."""
    tracker = build_tracker(config, reactor)
    return twistd_service(tracker, config, lambda: tracker.listening, reactor)


def makePeerService(config, reactor=None) -> service.IService:
    """``twistd mbt-peer``: the peer under a :class:`TwistdService`."""
    peer = build_peer(config, reactor)
    if config["web"]:
        peer.started.addCallback(_print_web_url, peer)
    return twistd_service(peer, config, lambda: peer.started, reactor)


def _print_web_url(node, peer):
    print("web page: %s" % peer.web[1], flush=True)
    return node


class TwistdService(service.MultiService):
    """twistd's top service: a process that cannot start says why in one ``error:`` line.

    A ConfigError at start (a state dir in use, an unreadable secret file) or
    a port that cannot be listened on ends twistd with that line and exit
    status 1 instead of a traceback (or, for the port, a process that runs
    on without serving). twistd has written its pid file by then and removes
    it only for an ``Exception``, not for ``SystemExit``: this does it.

    ``ready()`` gives the child's "serving now" Deferred once it has started;
    with TCP and TLS endpoints it has fired by the time ``startService``
    returns. Should it fire later and fail, the reactor is stopped.
    """

    def __init__(self, pidfile: Optional[str] = None,
                 ready: Optional[Callable[[], defer.Deferred]] = None, reactor=None) -> None:
        service.MultiService.__init__(self)
        self.pidfile = pidfile
        self._ready = ready
        self._reactor = reactor

    def startService(self) -> None:
        try:
            service.MultiService.startService(self)
        except ConfigError as e:
            self._exit(str(e))
        if self._ready is None:
            return
        failed: list = []
        starting = [True]

        def on_failure(f: Failure) -> None:
            if starting:
                failed.append(f)
                return
            # Failed later, while the reactor runs.
            print("error: %s" % start_failure_message(f), file=sys.stderr, flush=True)
            reactor = self._reactor
            if reactor is None:
                from twisted.internet import reactor
            reactor.stop()
        self._ready().addErrback(on_failure)
        starting.clear()
        if failed:
            self._exit(start_failure_message(failed[0]))

    def _exit(self, message: str) -> None:
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError:
                pass
        raise SystemExit("error: %s" % message)


def twistd_service(child, config=None, ready=None, reactor=None) -> service.IService:
    """``child`` under a :class:`TwistdService` (which knows twistd's pid file from ``config``)."""
    parent = getattr(config, "parent", None)
    top = TwistdService(parent.get("pidfile") if parent is not None else None, ready, reactor)
    child.setServiceParent(top)
    return top


def start_failure_message(failure: Failure) -> str:
    """Why a tracker or peer could not start, said once: ``cannot listen on H:P: address already in use``."""
    err = failure.value
    if isinstance(err, net_error.CannotListenError):
        host = err.interface or "0.0.0.0"
        return "cannot listen on %s:%s: %s" % (host, err.port, listen_failure_reason(failure))
    return "cannot start: %s" % (getattr(err, "strerror", None) or failure.getErrorMessage())


def listen_failure_reason(failure: Failure) -> str:
    """Why listening failed, said once: ``address already in use``, not Twisted's whole sentence."""
    err = failure.value
    if isinstance(err, net_error.CannotListenError) and err.socketError is not None:
        reason = getattr(err.socketError, "strerror", None) or str(err.socketError)
        return reason[:1].lower() + reason[1:]
    return getattr(err, "strerror", None) or failure.getErrorMessage()
