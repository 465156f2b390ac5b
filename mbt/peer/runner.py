"""Running a peer: the ``mbt-client`` front end and the ``mbt-peer`` twistd service."""

from __future__ import annotations

import os
import secrets
import sys
from typing import List, Optional

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from mbt.errors import ConfigError
from mbt.tls import TLSConfig
from mbt.trackerinfo import load_tracker_info, parse_address

log = Logger(namespace="mbt.peer.runner")


def default_peer_state_dir(address: str) -> str:
    """``~/.local/share/mbt/peer-IP_PORT`` (or under ``$XDG_DATA_HOME``)."""
    from mbt.tracker.service import default_state_dir
    return default_state_dir("peer-" + address.replace(":", "_"))


def add_tls_arguments(ap) -> None:
    """``--tls-cert/--tls-key/--tls-ca`` on an argparse parser."""
    ap.add_argument("--tls-cert", help="this process's certificate (PEM); turns TLS on with the two below")
    ap.add_argument("--tls-key", help="its private key (PEM)")
    ap.add_argument("--tls-ca", help="CA certificate that every server must chain to (PEM)")


def prepare(address: str, info: str, state_dir: Optional[str]):
    """Validate the common peer options; return (address, trackers, state_dir, lock)."""
    from mbt.tracker.service import StateDirLock, ensure_state_dir
    try:
        host, port = parse_address(address)
    except ValueError as e:
        raise ConfigError("bad peer address %r: %s (use IP:PORT)" % (address, e))
    address = "%s:%d" % (host, port)
    trackers = load_tracker_info(info)
    state_dir = ensure_state_dir(state_dir or default_peer_state_dir(address))
    lock = StateDirLock(state_dir)
    return address, trackers, state_dir, lock


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
    """A peer as a twistd service, with a telnet console and an optional manhole."""

    def __init__(self, address: str, info: str, state_dir: Optional[str], console: str,
                 manhole: Optional[str] = None, reactor=None, upload_rate: Optional[float] = None,
                 tls: Optional[TLSConfig] = None, web: Optional[str] = None) -> None:
        self.address, self.trackers, self.state_dir, self.lock = prepare(address, info, state_dir)
        self.web_endpoint = web
        self.web = None
        self.console_endpoint = console
        self.manhole_endpoint = manhole
        self._reactor = reactor
        self.upload_rate = upload_rate
        self.tls = tls
        self.node = None
        self.ports = []

    @defer.inlineCallbacks
    def startService(self):
        service.Service.startService(self)
        from mbt.peer.commands import CommandTable
        from mbt.peer.node import PeerNode
        from mbt.protocols.console import manhole_factory, telnet_console_factory
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        self.node = PeerNode(self.address, self.trackers, self.state_dir, reactor,
                             upload_rate=self.upload_rate, tls=self.tls)
        table = CommandTable(self.node)
        try:
            yield self.node.start()
            banner = "mbt peer %s (telnet console) - type help for commands" % self.address
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
                from mbt.web.server import start_web
                self.web = yield start_web(reactor, self.node, table, self.web_endpoint)
                log.info("web page on {url}", url=self.web[1])
                print("web page: %s" % self.web[1], flush=True)
        except Exception as e:
            log.failure("peer failed to start")
            print("error: peer failed to start: %s" % e, file=sys.stderr, flush=True)
            reactor.stop()

    @defer.inlineCallbacks
    def stopService(self):
        service.Service.stopService(self)
        if self.web is not None:
            from mbt.web.server import stop_web
            yield stop_web(self.web)
            self.web = None
        for p in self.ports:
            yield p.stopListening()
        if self.node is not None:
            yield self.node.stop()
        self.lock.release()


def run_client(argv: Optional[List[str]] = None) -> int:
    """``mbt-client IP:PORT TRACKER_INFO [--state-dir DIR]``: a peer with a stdio console."""
    from mbt.scripts import _ArgParser, _install_signal_handlers, _start_logging
    ap = _ArgParser(prog="mbt-client",
                    description="Run a peer serving pieces on IP:PORT, with its console on stdin/stdout.")
    ap.add_argument("address", metavar="IP:PORT", help="where this peer serves pieces to others")
    ap.add_argument("info", metavar="TRACKER_INFO", help="file listing every tracker")
    ap.add_argument("--state-dir", help="where this peer keeps its shares and downloads")
    ap.add_argument("--log-file", help="log file (default: <state-dir>/peer.log)")
    ap.add_argument("--upload-rate", default=None,
                    help="cap on all uploads, e.g. 25M (bytes/s; 0 = none; default: the last"
                         " 'set upload_rate', else none)")
    ap.add_argument("--web", metavar="ENDPOINT",
                    help="also serve a web page on this Twisted endpoint, e.g. tcp:8080 (loopback"
                         " unless interface= is given) or ssl:8443:privateKey=KEY:certKey=CERT")
    add_tls_arguments(ap)
    args = ap.parse_args(argv)
    from mbt.peer.ratelimit import parse_rate
    try:
        upload_rate = parse_rate(args.upload_rate) if args.upload_rate is not None else None
    except ValueError as e:
        print("error: --upload-rate: %s" % e, file=sys.stderr)
        return 2
    try:
        tls = TLSConfig(args.tls_cert, args.tls_key, args.tls_ca).check()
        address, trackers, state_dir, lock = prepare(args.address, args.info, args.state_dir)
    except ConfigError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    # The console owns stdout; the log goes to a file so it never garbles a reply.
    _start_logging(args.log_file or os.path.join(state_dir, "peer.log"))

    from twisted.internet import reactor, stdio
    from mbt.peer.commands import CommandTable
    from mbt.peer.node import PeerNode
    from mbt.protocols.console import StdioConsole

    if args.web:
        from mbt.web.server import check_endpoint
        try:
            check_endpoint(reactor, args.web)
        except ConfigError as e:
            print("error: %s" % e, file=sys.stderr)
            return 2
    node = PeerNode(address, trackers, state_dir, reactor, upload_rate=upload_rate, tls=tls)
    table = CommandTable(node)
    status = {"code": 0, "stopping": False}
    web = []

    def stop() -> None:
        if status["stopping"]:
            return
        status["stopping"] = True
        if web:
            from mbt.web.server import stop_web
            stop_web(web[0])
        d = node.stop()
        # Never hang on the way out (an unreachable tracker): 5 s at most.
        timer = reactor.callLater(5, lambda: reactor.stop() if reactor.running else None)

        def done(_):
            if timer.active():
                timer.cancel()
            lock.release()
            if reactor.running:
                reactor.stop()
        d.addBoth(done)

    @defer.inlineCallbacks
    def started():
        try:
            yield node.start()
        except Exception as e:
            print("error: cannot listen on %s: %s" % (address, getattr(e, "strerror", None) or e),
                  file=sys.stderr, flush=True)
            status["code"] = 1
            status["stopping"] = True
            reactor.stop()
            return
        banner = "mbt peer %s - type help for commands" % address
        if args.web:
            from mbt.web.server import start_web
            try:
                web.append((yield start_web(reactor, node, table, args.web)))
            except Exception as e:
                print("error: cannot serve the web page on %s: %s" % (args.web, getattr(e, "strerror", None) or e),
                      file=sys.stderr, flush=True)
                status["code"] = 1
                stop()
                return
            banner = "web page: %s\n%s" % (web[0][1], banner)
        stdio.StandardIO(StdioConsole(table, banner, stop), reactor=reactor)

    _install_signal_handlers(reactor, stop)
    reactor.callWhenRunning(started)
    reactor.run(installSignalHandlers=False)
    return status["code"]
