"""Seed-style front ends: ``mbt-tracker TRACKER_INFO N`` and ``mbt-client IP:PORT TRACKER_INFO``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from mbt.errors import ConfigError


def _start_logging(path: Optional[str] = None) -> None:
    """Structured log lines to stderr (or a file); stdout stays for the console."""
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, \
        globalLogBeginner, textFileLogObserver
    level = LogLevel.levelWithName(os.environ.get("MBT_LOG_LEVEL", "info").lower()) \
        if os.environ.get("MBT_LOG_LEVEL", "info").lower() in ("debug", "info", "warn", "error") else LogLevel.info
    # The log may hold user and group names: readable by its owner only.
    out = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                    encoding="utf-8") if path else sys.stderr
    observer = FilteringLogObserver(textFileLogObserver(out),
                                    [LogLevelFilterPredicate(defaultLogLevel=level)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


class _ArgParser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, "error: %s\n" % message)


def _install_signal_handlers(reactor, stop) -> None:
    def handler(signum, frame):
        reactor.callFromThread(stop)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def tracker_main(argv: Optional[List[str]] = None) -> int:
    """``mbt-tracker TRACKER_INFO N [--state-dir DIR] [--secret-file PATH]``: run tracker N until ``quit``."""
    ap = _ArgParser(prog="mbt-tracker", description="Run tracker N of TRACKER_INFO.")
    ap.add_argument("info", metavar="TRACKER_INFO", help="file listing every tracker, IP:PORT per line")
    ap.add_argument("no", metavar="N", type=int, help="which tracker this is (1-based line)")
    ap.add_argument("--state-dir", help="database directory (default ~/.local/share/mbt/tracker-N)")
    from mbt.peer.runner import add_tls_arguments
    add_tls_arguments(ap)
    ap.add_argument("--secret-file", help="the trackers' shared secret (default: .mbt-tracker-secret"
                    " next to TRACKER_INFO, created if missing)")
    ap.add_argument("--log-file", help="write the log here instead of stderr")
    args = ap.parse_args(argv)

    from mbt.tap import build_tracker, resolve_tracker
    config = {"info": args.info, "no": args.no, "state-dir": args.state_dir,
              "secret-file": args.secret_file, "tls-cert": args.tls_cert, "tls-key": args.tls_key,
              "tls-ca": args.tls_ca}
    try:
        resolve_tracker(config)
        svc = build_tracker(config)
    except ConfigError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2

    _start_logging(args.log_file)
    from twisted.internet import defer, reactor, stdio
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.protocols.basic import LineReceiver
    from zope.interface import implementer

    status = {"code": 0, "stopping": False}
    consoles = []

    def close_console(_=None):
        """Flush and close stdout (bounded), so the last lines (``bye``) are not lost."""
        if not consoles or consoles[0].closed.called:
            return None
        console = consoles[0]
        console.transport.loseConnection()
        return console.closed.addTimeout(2, reactor)

    def stop(code: int = 0) -> None:
        if status["stopping"]:
            return
        status["stopping"] = True
        status["code"] = code
        d = defer.maybeDeferred(svc.stopService)
        d.addBoth(close_console)
        d.addBoth(lambda _: reactor.stop())

    @implementer(IHalfCloseableProtocol)
    class TrackerConsole(LineReceiver):
        """The tracker's stdin: ``quit`` stops it; end of input does not."""
        delimiter = b"\n"

        def __init__(self) -> None:
            self.closed = defer.Deferred()

        def lineReceived(self, line: bytes) -> None:
            cmd = line.decode("utf-8", "replace").strip()
            if cmd == "quit":
                self.sendLine(b"bye")
                stop(0)
            elif cmd:
                self.sendLine(b"error: unknown command; the tracker understands: quit")

        def readConnectionLost(self) -> None:
            pass   # end of input: keep serving (and keep stdout open) until quit or a signal

        def writeConnectionLost(self) -> None:
            self._closed()

        def connectionLost(self, reason=None) -> None:
            self._closed()

        def _closed(self) -> None:
            if not self.closed.called:
                self.closed.callback(None)

    def started():
        svc.startService()

        def ok(port):
            h = port.getHost()
            print("tracker %d listening on %s:%d; state in %s"
                  % (args.no, h.host, h.port, svc.state_dir), flush=True)
            if os.isatty(0):
                print("type quit to stop", flush=True)

        def failed(f):
            print("error: cannot listen on %s: %s" % (config["address"], f.getErrorMessage()),
                  file=sys.stderr, flush=True)
            status["stopping"] = True
            status["code"] = 1
            svc.store.close()
            reactor.stop()
        svc.listening.addCallbacks(ok, failed)
        try:
            console = TrackerConsole()
            stdio.StandardIO(console, reactor=reactor)
            consoles.append(console)
        except (OSError, ValueError):
            pass   # no usable stdin: run until a signal

    _install_signal_handlers(reactor, stop)
    reactor.callWhenRunning(started)
    reactor.run(installSignalHandlers=False)
    return status["code"]


def client_main(argv: Optional[List[str]] = None) -> int:
    """``mbt-client IP:PORT TRACKER_INFO [--state-dir DIR]``: a peer with its console on stdio."""
    from mbt.peer.runner import run_client
    return run_client(argv)


if __name__ == "__main__":
    sys.exit(tracker_main())
