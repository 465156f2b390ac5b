"""Does anything accept TCP connections at a peer's announced address?

At login the tracker dials the address a peer announced (``IP:PORT``) and
closes at once: a peer behind NAT or a firewall announces a private or
filtered address nobody outside can reach, and other peers are then brought
to it by connect-back or a relay instead of dialling it (``connect_peer``).
"""

from __future__ import annotations

from twisted.internet import defer, endpoints, protocol

from mbt.trackerinfo import parse_address

#: Seconds the tracker waits for a peer's address to accept.
PROBE_TIMEOUT = 3.0


class _Close(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


def tcp_probe(reactor, address: str, timeout: float = PROBE_TIMEOUT) -> defer.Deferred:
    """Fires True if a TCP connection to ``address`` succeeds within ``timeout``, else False."""
    try:
        host, port = parse_address(address)
    except ValueError:
        return defer.succeed(False)
    ep = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    d = ep.connect(protocol.Factory.forProtocol(_Close))
    return d.addCallbacks(lambda _: True, lambda _f: False)
