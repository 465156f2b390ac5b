"""Seed-style front ends: ``mbt-tracker TRACKER_INFO N`` and ``mbt-client IP:PORT TRACKER_INFO``.

Options come from :mod:`mbt.options` (shared with the twistd plugins), the
services from :mod:`mbt.tap`; each process runs under :func:`task.react`
until ``quit``, end of input (mbt-client) or SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

from twisted.internet import defer, stdio, task
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, \
    textFileLogObserver
from zope.interface import implementer

from mbt.errors import ConfigError
from mbt.options import BadConfig, ClientCommandOptions, TrackerCommandOptions
from mbt.protocols.console import StdioConsole
from mbt.tap import build_peer, build_tracker, start_failure_message
from mbt.tracker.migrate import export_state_dir

#: mbt-client waits at most this long for a clean stop (an unreachable tracker).
CLIENT_STOP_TIMEOUT = 5.0


def _start_logging(path: Optional[str] = None) -> None:
    """Structured log lines to stderr (or a file); stdout stays for the console."""
    level = LogLevel.levelWithName(os.environ.get("MBT_LOG_LEVEL", "info").lower()) \
        if os.environ.get("MBT_LOG_LEVEL", "info").lower() in ("debug", "info", "warn", "error") else LogLevel.info
    # The log may hold user and group names: readable by its owner only.
    out = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                    encoding="utf-8") if path else sys.stderr
    observer = FilteringLogObserver(textFileLogObserver(out),
                                    [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def parse(options: usage.Options, argv: Optional[List[str]]) -> usage.Options:
    """Parse ``argv`` or exit 2 with one ``error:`` line (plus the usage for a wrong argument count)."""
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print("error: %s" % e, file=sys.stderr)
        if not isinstance(e, BadConfig):   # a wrong argument or option, not a bad file
            print("%s (--help for all options)" % options.synopsis, file=sys.stderr)
        raise SystemExit(2)
    return options


def _fail(message: str, code: int) -> None:
    print("error: %s" % message, file=sys.stderr, flush=True)
    raise SystemExit(code)


@defer.inlineCallbacks
def start(svc, ready: Callable[[], defer.Deferred], log_file: Optional[str]):
    """Start ``svc`` and wait for ``ready()``; exit 2 for a ConfigError, 1 if it cannot serve."""
    try:
        svc.startService()
    except ConfigError as e:
        _fail(str(e), 2)
    _start_logging(log_file)
    try:
        result = yield ready()
    except Exception:
        message = start_failure_message(Failure())
        yield svc.stopService()
        _fail(message, 1)
    return result


# ---------------------------------------------------------------------------
# mbt-tracker


@implementer(IHalfCloseableProtocol)
class TrackerConsole(LineReceiver):
    """The tracker's stdin: ``quit`` stops it; end of input does not."""

    delimiter = b"\n"

    def __init__(self, on_quit: Callable[[], None]) -> None:
        self.on_quit = on_quit
        self.closed = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        cmd = line.decode("utf-8", "replace").strip()
        if cmd == "quit":
            self.sendLine(b"bye")
            self.on_quit()
        elif cmd:
            self.sendLine(b"error: unknown command; the tracker understands: quit")

    def close(self, clock) -> defer.Deferred:
        """Flush and close stdout (bounded), so the last line (``bye``) is not lost."""
        if not self.closed.called:
            self.transport.loseConnection()
            self.closed.addTimeout(2, clock)
        return self.closed

    def readConnectionLost(self) -> None:
        pass   # end of input: keep serving (and keep stdout open) until quit or a signal

    def writeConnectionLost(self) -> None:
        self._closed()

    def connectionLost(self, reason=None) -> None:
        self._closed()

    def _closed(self) -> None:
        if not self.closed.called:
            self.closed.callback(None)


def tracker_main(argv: Optional[List[str]] = None) -> None:
    """``mbt-tracker TRACKER_INFO N [options]``: run tracker N until ``quit`` or a signal."""
    config = parse(TrackerCommandOptions(), argv)
    task.react(run_tracker, [config])


@defer.inlineCallbacks
def run_tracker(reactor, config):
    """The tracker process: start, print where it listens, serve until ``quit`` or a signal."""
    if config.get("export-to"):
        try:
            counts = export_state_dir(config["store"], config["export-to"])
        except ConfigError as e:
            _fail(str(e), 2)
        print("exported %(users)d users, %(groups)d groups, %(requests)d requests, %(files)d files"
              % counts + " to %s" % config["export-to"], flush=True)
        return 0
    svc = build_tracker(config, reactor)
    port = yield start(svc, lambda: svc.listening, config["log-file"])
    h = port.getHost()
    print("tracker %d listening on %s:%d; state in %s" % (config["no"], h.host, h.port, svc.where),
          flush=True)

    done = defer.Deferred()
    stopping = []

    def stop():
        """``quit``: stop the service, then let the console flush ``bye``, then exit 0."""
        if stopping:
            return
        stopping.append(True)
        d = defer.maybeDeferred(svc.stopService)
        d.addBoth(lambda _: console.close(reactor).addErrback(lambda _: None)
                  if console is not None else None)
        d.addBoth(lambda _: done.callback(0))

    def on_signal():
        if not stopping:
            stopping.append(True)
            return svc.stopService()
    reactor.addSystemEventTrigger("before", "shutdown", on_signal)
    console = TrackerConsole(stop)
    try:
        stdio.StandardIO(console, reactor=reactor)
        if os.isatty(0):
            print("type quit to stop", flush=True)
    except (OSError, ValueError):
        console = None   # no usable stdin: run until a signal
    code = yield done
    return code


# ---------------------------------------------------------------------------
# mbt-client


def client_main(argv: Optional[List[str]] = None) -> None:
    """``mbt-client IP:PORT TRACKER_INFO [options]``: a peer with its console on stdio."""
    config = parse(ClientCommandOptions(), argv)
    task.react(run_client, [config])


@defer.inlineCallbacks
def run_client(reactor, config):
    """The peer process: start, then run the stdio console until ``quit``, end of input or a signal."""
    svc = build_peer(config, reactor)
    # The console owns stdout; the log goes to a file so it never garbles a reply.
    node = yield start(svc, lambda: svc.started, config["log-file"])

    done = defer.Deferred()
    stopping = []

    def stop():
        if stopping:
            return None
        stopping.append(True)
        # Never hang on the way out (an unreachable tracker): CLIENT_STOP_TIMEOUT at most.
        d = defer.maybeDeferred(svc.stopService).addTimeout(CLIENT_STOP_TIMEOUT, reactor)
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: done.callback(0) if not done.called else None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    banner = "mbt peer %s - type help for commands" % node.address
    if svc.web is not None:
        banner = "web page: %s\n%s" % (svc.web[1], banner)
    stdio.StandardIO(StdioConsole(svc.commands, banner, stop), reactor=reactor)
    code = yield done
    return code


if __name__ == "__main__":
    tracker_main()
