"""twistd plugins: ``Options`` and ``makeService`` for the tracker and the peer."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from mbt.errors import ConfigError


def tracker_endpoint(host: str, port: int) -> str:
    """A server endpoint string for a tracker address."""
    host = host.replace(":", "\\:")
    return "tcp:%d:interface=%s" % (port, host)


class TrackerOptions(usage.Options):
    """``twistd mbt-tracker --info TRACKER_INFO --no N [--state-dir DIR] [--secret-file PATH]``."""

    synopsis = "--info TRACKER_INFO --no N [--state-dir DIR] [--secret-file PATH]"
    optParameters = [
        ["info", "i", "tracker_info.txt", "file listing every tracker (IP:PORT per line)"],
        ["no", "n", None, "which tracker this is: 1-based line of the info file"],
        ["state-dir", "s", None, "where the tracker keeps its database "
         "(default ~/.local/share/mbt/tracker-N)"],
        ["secret-file", None, None, "the trackers' shared secret (default: .mbt-tracker-secret "
         "next to the info file, created if missing)"],
        ["tls-cert", None, None, "this tracker's certificate (PEM); turns TLS on with the two below"],
        ["tls-key", None, None, "its private key (PEM)"],
        ["tls-ca", None, None, "CA certificate the trackers we dial must chain to (PEM)"],
    ]

    def postOptions(self) -> None:
        if self["no"] is None:
            raise usage.UsageError("--no N is required (which line of the tracker info file)")
        try:
            self["no"] = int(self["no"])
        except ValueError:
            raise usage.UsageError("--no must be a number, got %r" % self["no"])
        try:
            resolve_tracker(self)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def resolve_tracker(config) -> None:
    """Fill ``config['address']``, ``config['trackers']`` and ``config['state-dir']`` from the info file."""
    from mbt.trackerinfo import load_tracker_info, select_tracker
    from mbt.tracker.service import default_state_dir
    trackers = load_tracker_info(config["info"])
    me = select_tracker(trackers, config["no"], config["info"])
    config["address"] = me
    config["trackers"] = trackers
    from mbt.tls import TLSConfig
    config["tls"] = TLSConfig(config.get("tls-cert"), config.get("tls-key"), config.get("tls-ca")).check()
    if not config.get("state-dir"):
        config["state-dir"] = default_state_dir("tracker-%d" % config["no"])


def build_tracker(config):
    """The TrackerService a resolved config describes (shared secret loaded or created).

    Raises ConfigError for an unusable secret file or state dir.
    """
    from mbt.tracker.secret import default_secret_path, load_or_create_secret
    from mbt.tracker.service import TrackerService
    me = config["address"]
    secret_file = config.get("secret-file")
    secret = load_or_create_secret(secret_file or default_secret_path(config["info"]),
                                   create=not secret_file)
    tls = config.get("tls")
    if tls is not None and tls.enabled:
        from twisted.internet import reactor
        from mbt.tls import server_endpoint
        endpoint = server_endpoint(reactor, me.host, me.port, tls)
    else:
        endpoint = tracker_endpoint(me.host, me.port)
    from mbt.trackerinfo import load_relays
    return TrackerService(endpoint, config["state-dir"], trackers=config["trackers"],
                          number=config["no"], secret=secret, tls=tls, relays=load_relays(config["info"]))


def makeTrackerService(config) -> service.IService:
    """The tracker as a twistd service."""
    try:
        svc = build_tracker(config)
    except ConfigError as e:
        raise SystemExit("error: %s" % e)
    top = service.MultiService()
    svc.setServiceParent(top)
    return top


class PeerOptions(usage.Options):
    """``twistd mbt-peer --address IP:PORT --info TRACKER_INFO --console ENDPOINT ...``."""

    synopsis = ("--address IP:PORT --info TRACKER_INFO --console tcp:PORT:interface=127.0.0.1"
                " [--manhole tcp:PORT:interface=127.0.0.1] [--state-dir DIR]")
    optParameters = [
        ["address", "a", None, "IP:PORT where this peer serves pieces"],
        ["info", "i", "tracker_info.txt", "file listing every tracker"],
        ["console", "c", None, "endpoint of the telnet command console, e.g. tcp:7100:interface=127.0.0.1"],
        ["manhole", "m", None, "endpoint of a password-protected Python shell (off by default)"],
        ["web", "w", None, "endpoint of the web page, e.g. tcp:8080 (loopback unless interface= is given)"
         " or ssl:8443:privateKey=KEY:certKey=CERT (off by default)"],
        ["state-dir", "s", None, "where the peer keeps shares and downloads"],
        ["upload-rate", "u", None, "cap on all uploads, e.g. 25M (bytes/s; 0 = none;"
         " default: the last 'set upload_rate', else none)"],
        ["tls-cert", None, None, "this peer's certificate (PEM); turns TLS on with the two below"],
        ["tls-key", None, None, "its private key (PEM)"],
        ["tls-ca", None, None, "CA certificate every server must chain to (PEM)"],
    ]

    def postOptions(self) -> None:
        if not self["address"]:
            raise usage.UsageError("--address IP:PORT is required")
        if not self["console"]:
            raise usage.UsageError("--console ENDPOINT is required (e.g. tcp:7100:interface=127.0.0.1)")
        from mbt.peer.ratelimit import parse_rate
        from mbt.tls import TLSConfig
        try:
            if self["upload-rate"] is not None:
                self["upload-rate"] = parse_rate(self["upload-rate"])
        except ValueError as e:
            raise usage.UsageError("--upload-rate: %s" % e)
        try:
            self["tls"] = TLSConfig(self["tls-cert"], self["tls-key"], self["tls-ca"]).check()
        except ConfigError as e:
            raise usage.UsageError(str(e))
        if self["web"]:
            from mbt.web.server import normalize_endpoint
            self["web"] = normalize_endpoint(self["web"])
        for key in ("console", "manhole"):
            ep = self[key]
            if ep and ep.startswith("tcp:") and "interface=" not in ep:
                # A console or shell into the peer never listens beyond this machine by default.
                self[key] = ep + ":interface=127.0.0.1"


def makePeerService(config) -> service.IService:
    """The peer as a twistd service."""
    from mbt.peer.runner import PeerService
    try:
        return PeerService(config["address"], config["info"], config["state-dir"],
                           config["console"], config["manhole"], upload_rate=config["upload-rate"],
                           tls=config["tls"], web=config["web"])
    except ConfigError as e:
        raise SystemExit("error: %s" % e)
