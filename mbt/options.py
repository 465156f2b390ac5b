"""One definition of each program's command-line options, for both of its front ends.

Each program has a base class holding every flag its two front ends share and
the checks on them; a small subclass per front end says only how the
positional parts are given:

=====================  ==========================================================
``mbt-tracker``        :class:`TrackerCommandOptions`: ``TRACKER_INFO N [flags]``
``twistd mbt-tracker`` :class:`TrackerOptions`: ``--info TRACKER_INFO --no N [flags]``
``mbt-client``         :class:`ClientCommandOptions`: ``IP:PORT TRACKER_INFO [flags]``
``twistd mbt-peer``    :class:`PeerOptions`: ``--address IP:PORT --info TRACKER_INFO
                       --console ENDPOINT [--manhole ENDPOINT] [flags]``
``twistd mbt-relay``   :class:`RelayOptions`: ``--listen ENDPOINT [flags]``
=====================  ==========================================================

To give both front ends of a program a new flag, add one line to
``TrackerFlags.optParameters`` or ``PeerFlags.optParameters`` (Twisted merges
``optParameters`` along the class hierarchy); check or convert its value in
the base class's ``postOptions``. Parsing reads the tracker info and TLS files
to check them, nothing more: creating and locking the state dir, opening the
database and replaying it happen when the service starts.

After ``parseOptions`` the options also hold ready values for the services:
``trackers`` (the parsed TRACKER_INFO), ``tls`` (a checked :class:`TLSConfig`),
for the tracker ``address`` (its own line), ``no`` as an int and ``relays``
(TRACKER_INFO's ``relay`` lines), for the peer
``address`` normalised to ``IP:PORT`` and ``upload-rate`` in bytes per second.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import List, Optional

from twisted.python import usage

from mbt.errors import ConfigError
from mbt.peer.ratelimit import parse_rate
from mbt.statedir import default_state_dir
from mbt.tls import TLSConfig
from mbt.tracker.pgstore import is_url
from mbt.trackerinfo import load_relays, load_tracker_info, parse_address, select_tracker
from mbt.web.server import check_endpoint


def default_peer_state_dir(address: str) -> str:
    """``~/.local/share/mbt/peer-IP_PORT`` (or under ``$XDG_DATA_HOME``)."""
    return default_state_dir("peer-" + address.replace(":", "_"))


#: The TLS flags, worded the same for every program.
TLS_PARAMETERS = [
    ["tls-cert", None, None,
     "this process's certificate (PEM); TLS is on when --tls-cert, --tls-key and --tls-ca are given"],
    ["tls-key", None, None, "the private key of --tls-cert (PEM)"],
    ["tls-ca", None, None, "the CA certificate (PEM) every server this process connects to "
     "must chain to"],
]

INFO_HELP = "file listing every tracker, one IP:PORT a line"
TRACKER_NO_HELP = "which tracker this is: the 1-based line of TRACKER_INFO"
PEER_ADDRESS_HELP = "IP:PORT where this peer serves pieces to other peers"


class BadConfig(usage.UsageError):
    """The arguments are well formed but name something unusable (a bad TRACKER_INFO, ...)."""


class _Options(usage.Options):
    """usage.Options that check their positional arguments' count with a clear message."""

    #: Names of the positional arguments, for messages ("TRACKER_INFO", "N").
    positional: List[str] = []

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """Options may also follow the positional arguments (``mbt-tracker INFO 1 --state-dir D``).

        usage.Options stops at the first positional argument (POSIX getopt);
        the arguments are put in that order first (GNU getopt) and then parsed
        as usual.
        """
        if options is None:
            options = sys.argv[1:]
        if self.positional:
            try:
                opts, args = getopt.gnu_getopt(options, self.shortOpt, self.longOpt)
            except getopt.error as e:
                raise usage.UsageError(str(e))
            ordered: List[str] = []
            for opt, value in opts:
                if opt.startswith("--"):
                    ordered.append(opt if opt[2:] in self.longOpt else "%s=%s" % (opt, value))
                else:
                    ordered.extend([opt, value] if opt[1] + ":" in self.shortOpt else [opt])
            options = ordered + ["--"] + args
        usage.Options.parseOptions(self, options)

    def _take_positional(self, args, keys) -> None:
        if len(args) != len(self.positional):
            if not args:
                raise usage.UsageError("missing %s" % " ".join(self.positional))
            if len(args) < len(self.positional):
                raise usage.UsageError("missing %s" % " ".join(self.positional[len(args):]))
            raise usage.UsageError("too many arguments: %s" % " ".join(args[len(self.positional):]))
        for key, value in zip(keys, args):
            self[key] = value

    def _check_tls(self) -> None:
        try:
            self["tls"] = TLSConfig(self["tls-cert"], self["tls-key"], self["tls-ca"]).check()
        except ConfigError as e:
            raise BadConfig(str(e))

    def _load_trackers(self):
        try:
            self["trackers"] = load_tracker_info(self["info"])
        except ConfigError as e:
            raise BadConfig(str(e))
        return self["trackers"]


# ---------------------------------------------------------------------------
# tracker


class TrackerFlags(_Options):
    """The flags both tracker front ends take, and the checks on all tracker options."""

    optParameters = [
        ["state-dir", "s", None, "where the tracker keeps its database "
         "[default: ~/.local/share/mbt/tracker-N]"],
        ["secret-file", None, None, "the trackers' shared secret "
         "[default: .mbt-tracker-secret next to TRACKER_INFO, created if missing]"],
        ["store", None, None, "postgresql://USER@HOST/DB: keep the state in this database, shared by "
         "any number of trackers (password from PGPASSWORD, ~/.pgpass or the URL); no state dir"],
        ["import-from", None, None, "with --store: first copy the SQLite tracker state in this "
         "state dir into the (empty) database"],
    ] + TLS_PARAMETERS

    def postOptions(self) -> None:
        if not self.get("info"):
            raise usage.UsageError("TRACKER_INFO is required (%s)" % INFO_HELP)
        if self.get("no") is None:
            raise usage.UsageError("N is required (%s)" % TRACKER_NO_HELP)
        try:
            self["no"] = int(self["no"])
        except ValueError:
            raise usage.UsageError("N must be a number, got %r" % self["no"])
        trackers = self._load_trackers()
        try:
            self["address"] = select_tracker(trackers, self["no"], self["info"])
            self["relays"] = load_relays(self["info"])
        except ConfigError as e:
            raise BadConfig(str(e))
        self._check_tls()
        self._check_store()
        if not self["state-dir"] and not self["store"]:
            self["state-dir"] = default_state_dir("tracker-%d" % self["no"])
        self._default_pidfile("mbt-tracker-%d.pid" % self["no"])

    def _check_store(self) -> None:
        """``--store`` must be a PostgreSQL URL; ``--import-from``/``--export-to`` need it."""
        if self["store"] and not is_url(self["store"]):
            raise BadConfig("--store must be a postgresql://USER@HOST/DB URL")
        for key in ("import-from", "export-to"):
            if self.get(key) and not self["store"]:
                raise BadConfig("--%s needs --store postgresql://..." % key)

    def _default_pidfile(self, name: str) -> None:
        """Under twistd, a pid file per tracker/peer instead of one ``twistd.pid``.

        Without this, a tracker and a peer started side by side in one
        directory (as README shows) clash on twistd's default pid file. An
        explicit ``--pidfile`` is left alone.
        """
        parent = getattr(self, "parent", None)
        if parent is not None and parent.get("pidfile") == "twistd.pid":
            parent["pidfile"] = name


class TrackerOptions(TrackerFlags):
    """``twistd mbt-tracker --info TRACKER_INFO --no N [flags]``."""

    synopsis = "--info TRACKER_INFO --no N [options]"
    optParameters = [
        ["info", "i", None, INFO_HELP + " (required)"],
        ["no", "n", None, TRACKER_NO_HELP + " (required)"],
    ]

    def postOptions(self) -> None:
        if not self["info"]:
            raise usage.UsageError("--info TRACKER_INFO is required (%s)" % INFO_HELP)
        if self["no"] is None:
            raise usage.UsageError("--no N is required (%s)" % TRACKER_NO_HELP)
        TrackerFlags.postOptions(self)


class TrackerCommandOptions(TrackerFlags):
    """``mbt-tracker TRACKER_INFO N [flags]``."""

    synopsis = "Usage: mbt-tracker TRACKER_INFO N [options]"
    longdesc = ("Run tracker N of TRACKER_INFO (%s). Reads stdin: quit stops it; "
                "end of input does not." % INFO_HELP)
    positional = ["TRACKER_INFO", "N"]
    optParameters = [
        ["log-file", None, None, "write the log here [default: stderr]"],
        ["export-to", None, None, "with --store: copy the database's state into this new state dir "
         "(a backup an SQLite tracker runs on) and exit"],
    ]

    def parseArgs(self, *args: str) -> None:
        self._take_positional(args, ["info", "no"])


# ---------------------------------------------------------------------------
# peer


class PeerFlags(_Options):
    """The flags both peer front ends take, and the checks on all peer options."""

    optParameters = [
        ["state-dir", "s", None, "where the peer keeps its shares and downloads "
         "[default: ~/.local/share/mbt/peer-IP_PORT]"],
        ["upload-rate", "u", None, "cap on all uploads in bytes/s, e.g. 25M (0 = none) "
         "[default: the last 'set upload_rate', else none]"],
        ["web", "w", None, "endpoint of the web page, e.g. tcp:8080 (loopback unless interface= "
         "is given) or ssl:8443:privateKey=KEY:certKey=CERT [default: off]"],
    ] + TLS_PARAMETERS

    def postOptions(self) -> None:
        try:
            host, port = parse_address(self["address"])
        except ValueError as e:
            raise usage.UsageError("bad peer address %r: %s (use IP:PORT)" % (self["address"], e))
        self["address"] = "%s:%d" % (host, port)
        try:
            if self["upload-rate"] is not None:
                self["upload-rate"] = parse_rate(str(self["upload-rate"]))
        except ValueError as e:
            raise usage.UsageError("--upload-rate: %s" % e)
        if self["web"]:
            from twisted.internet import reactor
            try:
                self["web"] = check_endpoint(reactor, self["web"])
            except ConfigError as e:
                raise BadConfig(str(e))
        self._load_trackers()
        self._check_tls()
        if not self["state-dir"]:
            self["state-dir"] = default_peer_state_dir(self["address"])


class PeerOptions(PeerFlags):
    """``twistd mbt-peer --address IP:PORT --info TRACKER_INFO --console ENDPOINT [flags]``."""

    synopsis = ("--address IP:PORT --info TRACKER_INFO --console tcp:PORT:interface=127.0.0.1"
                " [options]")
    optParameters = [
        ["address", "a", None, PEER_ADDRESS_HELP + " (required)"],
        ["info", "i", None, INFO_HELP + " (required)"],
        ["console", "c", None, "endpoint of the telnet command console (required), "
         "e.g. tcp:7100:interface=127.0.0.1; tcp:PORT listens on loopback only"],
        ["manhole", "m", None, "endpoint of a password-protected Python shell into the peer "
         "[default: off]; tcp:PORT listens on loopback only"],
    ]

    def postOptions(self) -> None:
        if not self["address"]:
            raise usage.UsageError("--address IP:PORT is required (%s)" % PEER_ADDRESS_HELP)
        if not self["info"]:
            raise usage.UsageError("--info TRACKER_INFO is required (%s)" % INFO_HELP)
        if not self["console"]:
            raise usage.UsageError("--console ENDPOINT is required (e.g. tcp:7100:interface=127.0.0.1)")
        PeerFlags.postOptions(self)
        for key in ("console", "manhole"):
            self[key] = loopback_by_default(self[key])
        TrackerFlags._default_pidfile(self, "mbt-peer-%s.pid" % self["address"].replace(":", "_"))


class ClientCommandOptions(PeerFlags):
    """``mbt-client IP:PORT TRACKER_INFO [flags]``."""

    synopsis = "Usage: mbt-client IP:PORT TRACKER_INFO [options]"
    longdesc = ("Run a peer that serves pieces to other peers on IP:PORT, with its command "
                "console on stdin/stdout. TRACKER_INFO: %s. quit or end of input stops it."
                % INFO_HELP)
    positional = ["IP:PORT", "TRACKER_INFO"]
    optParameters = [
        ["log-file", None, None, "write the log here [default: STATE_DIR/peer.log]"],
    ]

    def parseArgs(self, *args: str) -> None:
        self._take_positional(args, ["address", "info"])

    def postOptions(self) -> None:
        PeerFlags.postOptions(self)
        if not self["log-file"]:
            self["log-file"] = os.path.join(os.path.abspath(os.path.expanduser(self["state-dir"])),
                                            "peer.log")


def loopback_by_default(endpoint: Optional[str]) -> Optional[str]:
    """``tcp:PORT`` without an interface listens on 127.0.0.1 only (consoles, shells)."""
    if endpoint and endpoint.startswith("tcp:") and "interface=" not in endpoint:
        return endpoint + ":interface=127.0.0.1"
    return endpoint


# ---------------------------------------------------------------------------
# relay


class RelayOptions(_Options):
    """``twistd -n mbt-relay --listen ENDPOINT [--rate R] [--total-rate R] [--max-pairs N]``.

    No TLS flags: peers with TLS on run TLS end to end *through* the relay,
    which only ever pipes their ciphertext.
    """

    synopsis = "--listen ENDPOINT [--rate R] [--total-rate R] [--max-pairs N] [--no-zero-copy]"
    optParameters = [
        ["listen", "l", None, "where to accept peers, a Twisted endpoint, e.g. tcp:7400"],
        ["rate", "r", "0", "bytes/s each connection may send, e.g. 10M (0 = no limit)"],
        ["total-rate", "t", "0", "bytes/s through the whole relay, e.g. 100M (0 = no limit)"],
        ["max-pairs", None, "500", "pairs relayed at once"],
    ]
    optFlags = [
        ["no-zero-copy", None, "copy relayed bytes through Python instead of splice(2) (for comparison)"],
    ]

    def postOptions(self) -> None:
        if not self["listen"]:
            raise usage.UsageError("--listen ENDPOINT is required (e.g. tcp:7400)")
        for key in ("rate", "total-rate"):
            try:
                self[key] = parse_rate(self[key])
            except ValueError as e:
                raise usage.UsageError("--%s: %s" % (key, e))
        try:
            self["max-pairs"] = int(self["max-pairs"])
            if self["max-pairs"] < 1:
                raise ValueError
        except ValueError:
            raise usage.UsageError("--max-pairs must be a positive number")
