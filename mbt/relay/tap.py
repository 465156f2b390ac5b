"""``twistd -n mbt-relay --listen ENDPOINT [--rate R] [--total-rate R] [TLS flags]``."""

from __future__ import annotations

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from mbt.errors import ConfigError
from mbt.peer.ratelimit import parse_rate
from mbt.relay.server import RelayFactory
from mbt.tls import TLSConfig


class Options(usage.Options):
    """Options of the relay (twistd plugin ``mbt-relay``)."""

    synopsis = "--listen ENDPOINT [--rate R] [--total-rate R] [--max-pairs N] [TLS flags]"
    optParameters = [
        ["listen", "l", None, "where to accept peers, a Twisted endpoint, e.g. tcp:7400"],
        ["rate", "r", "0", "bytes/s each connection may send, e.g. 10M (0 = no limit)"],
        ["total-rate", "t", "0", "bytes/s through the whole relay, e.g. 100M (0 = no limit)"],
        ["max-pairs", None, "500", "pairs relayed at once"],
        ["tls-cert", None, None, "the relay's certificate (PEM); TLS between peers and relay"],
        ["tls-key", None, None, "its private key (PEM)"],
        ["tls-ca", None, None, "the CA certificate (PEM)"],
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
        try:
            self["tls"] = TLSConfig(self["tls-cert"], self["tls-key"], self["tls-ca"]).check()
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(config, reactor=None) -> service.IService:
    """The relay as a twistd service listening on ``config['listen']``."""
    if reactor is None:
        from twisted.internet import reactor
    factory = RelayFactory(reactor, rate=config["rate"], total_rate=config["total-rate"],
                           max_pairs=config["max-pairs"])
    tls = config.get("tls")
    wrapped = factory
    if tls is not None and tls.enabled:
        # TLS on the hop (peer <-> relay), on whatever endpoint --listen names.
        wrapped = TLSMemoryBIOFactory(tls.server_options(), False, factory)
    try:
        endpoint = endpoints.serverFromString(reactor, config["listen"])
    except (ValueError, TypeError) as e:
        raise SystemExit("error: bad --listen endpoint %r: %s" % (config["listen"], e))
    svc = internet.StreamServerEndpointService(endpoint, wrapped)
    svc.factory = factory
    return svc
