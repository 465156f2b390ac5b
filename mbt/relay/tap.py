"""``twistd -n mbt-relay --listen ENDPOINT [--rate R] [--total-rate R] [--max-pairs N]``."""

from __future__ import annotations

from twisted.application import internet, service
from twisted.internet import endpoints

from mbt.relay.server import RelayFactory


def makeService(config, reactor=None) -> service.IService:
    """The relay as a twistd service listening on ``config['listen']``."""
    if reactor is None:
        from twisted.internet import reactor
    factory = RelayFactory(reactor, rate=config["rate"], total_rate=config["total-rate"],
                           max_pairs=config["max-pairs"], zero_copy=not config["no-zero-copy"])
    try:
        endpoint = endpoints.serverFromString(reactor, config["listen"])
    except (ValueError, TypeError) as e:
        raise SystemExit("error: bad --listen endpoint %r: %s" % (config["listen"], e))
    svc = internet.StreamServerEndpointService(endpoint, factory)
    svc.factory = factory
    return svc
