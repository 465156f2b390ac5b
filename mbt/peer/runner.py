"""The peer as a service (both front ends) and the ``mbt-client`` process around it."""

from __future__ import annotations

import os
import secrets
from typing import Optional

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from mbt.peer.commands import CommandTable
from mbt.peer.node import PeerNode
from mbt.protocols.console import manhole_factory, telnet_console_factory
from mbt.statedir import StateDirLock, ensure_state_dir
from mbt.tls import TLSConfig
from mbt.web.server import start_web, stop_web

log = Logger(namespace="mbt.peer.runner")


def manhole_credentials(state_dir: str):
    """The manhole's user name and password, generated once into ``manhole.passwd`` (0600)."""
    path = os.path.join(state_dir, "manhole.passwd")
    try:
        with open(path, encoding="utf-8") as f:
            user, password = f.read().strip().split(":", 1)
            return user, password, path
    except (OSError, ValueError):
        pass
    user, password = "admin", secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("%s:%s\n" % (user, password))
    return user, password, path


class PeerService(service.Service):
    """A peer, with an optional telnet console and manhole.

    Building it touches nothing. :meth:`startService` creates and locks the
    state dir (raising ConfigError if it cannot), then starts the peer in the
    background; ``started`` fires once it serves (with the PeerNode) or fails
    with the reason. ``mbt-client`` attaches its stdio console to ``node``;
    ``twistd mbt-peer`` gives ``console`` (and maybe ``manhole``) endpoints.
    """

    def __init__(self, address: str, trackers, state_dir: str, console: Optional[str] = None,
                 manhole: Optional[str] = None, reactor=None, upload_rate: Optional[float] = None,
                 tls: Optional[TLSConfig] = None, web: Optional[str] = None) -> None:
        self.address = address
        self.trackers = trackers
        self.state_dir = os.path.abspath(os.path.expanduser(state_dir))
        self.console_endpoint = console
        self.manhole_endpoint = manhole
        self._reactor = reactor
        self.upload_rate = upload_rate
        self.tls = tls
        self.web_endpoint = web
        #: ``(port, url, app)`` of the web page once it serves (see mbt.web.server).
        self.web = None
        self.lock = None
        self.node = None
        self.commands = None
        self.ports: list = []
        self.started: defer.Deferred = defer.Deferred()

    def startService(self) -> None:
        self.state_dir = ensure_state_dir(self.state_dir)
        self.lock = StateDirLock(self.state_dir)
        service.Service.startService(self)
        self._start().chainDeferred(self.started)

    @defer.inlineCallbacks
    def _start(self):
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self.node = PeerNode(self.address, self.trackers, self.state_dir, reactor,
                             upload_rate=self.upload_rate, tls=self.tls)
        self.commands = table = CommandTable(self.node)
        yield self.node.start()
        if self.console_endpoint:
            node = self.node

            def banner() -> str:
                who = "logged in as %s" % node.user if node.user else "not logged in"
                return ("mbt peer %s (telnet console; %s; no password: every session acts as the"
                        " logged-in user) - type help for commands" % (node.address, who))
            port = yield endpoints.serverFromString(reactor, self.console_endpoint).listen(
                telnet_console_factory(table, banner))
            self.ports.append(port)
            log.info("console on {ep}", ep=self.console_endpoint)
        if self.manhole_endpoint:
            user, password, path = manhole_credentials(self.state_dir)
            port = yield endpoints.serverFromString(reactor, self.manhole_endpoint).listen(
                manhole_factory({"node": self.node, "commands": table}, user, password))
            self.ports.append(port)
            log.info("manhole on {ep}; credentials in {path}", ep=self.manhole_endpoint, path=path)
        if self.web_endpoint:
            self.web = yield start_web(reactor, self.node, table, self.web_endpoint)
            log.info("web page on {url}", url=self.web[1])
        return self.node

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        for p in self.ports:
            yield p.stopListening()
        if self.web is not None:
            yield stop_web(self.web)
            self.web = None
        if self.node is not None:
            yield self.node.stop()
        if self.lock is not None:
            self.lock.release()
