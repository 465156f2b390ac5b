"""Reaching a peer that cannot be dialled: connect-back and relay, both sides.

The tracker learns at login whether a peer's announced address accepts
connections. A downloader that cannot dial a seeder asks the tracker
(``connect_peer``); the tracker then pushes ``dial`` to the seeder:

* **connect-back** (the downloader accepts connections): the seeder dials the
  downloader's address and opens with ``CALLBACK <token>``; the downloader's
  listener hands that connection to the waiting download, which sends its
  ``HELLO`` as if it had dialled.
* **relay** (neither accepts): both dial the relay named by the tracker and
  send ``RELAY <token> serve|fetch``; after the relay's ``OK`` the peer wire
  runs through it unchanged -- inside TLS between the two peers when TLS is
  on (the seeder the TLS server, the downloader verifying the seeder's
  certificate against the seeder's announced address), so the relay sees
  only ciphertext.

Either way the downloader still proves its ticket's key to the seeder, and
every piece is still checked against the manifest's hashes: a relay can drop
bytes but never forge them.
"""

from __future__ import annotations

from typing import Callable

from typing import Optional

from twisted.internet import endpoints, protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mbt.protocols.peer import PeerServerProtocol
from mbt.relay.client import RelayClientFactory, RelayHandshake
from mbt.relay.pairing import TOKEN_RE
from mbt.tls import client_endpoint
from mbt.trackerinfo import parse_address

log = Logger(namespace="mbt.peer.reaching")

#: Seconds to dial a downloader or a relay.
DIAL_TIMEOUT = 5.0


class _One(protocol.ClientFactory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def end_to_end(node, inner: protocol.Protocol, server_host: Optional[str] = None) -> protocol.Protocol:
    """``inner`` inside TLS between the two peers when TLS is on (else ``inner`` itself).

    Over a relay the peers run TLS through the relay's plain byte pipe: the
    seeder (``server_host`` None) is the TLS server with its certificate, the
    downloader the client that checks it chains to the CA and names
    ``server_host`` (the seeder's announced address).
    """
    tls = node.tls
    if tls is None or not tls.enabled:
        return inner
    if server_host is None:
        factory = TLSMemoryBIOFactory(tls.server_options(), False, _One(inner))
    else:
        factory = TLSMemoryBIOFactory(tls.client_options(server_host), True, _One(inner))
    return factory.buildProtocol(None)


def dial_for_downloader(node, message: dict) -> None:
    """Act on the tracker's ``dial`` push: serve a downloader over an outbound connection."""
    token, group, file_hash = message.get("token"), message.get("group"), message.get("file_hash")
    if not all(isinstance(v, str) for v in (token, group, file_hash)) or not TOKEN_RE.match(token):
        log.warn("ignoring a malformed dial request from the tracker")
        return
    if (group, file_hash) not in node.servables:
        log.info("dial request for a file not served here; ignored")
        return
    server = PeerServerProtocol()
    server.factory = node.server_factory
    via = message.get("via")
    try:
        if via == "connect-back":
            host, port = parse_address(str(message.get("address")))
            server.preamble = b"CALLBACK " + token.encode("ascii")
            ep = client_endpoint(node.reactor, host, port, node.tls, timeout=DIAL_TIMEOUT, direct=True)
            factory = _One(server)
        elif via == "relay":
            host, port = parse_address(str(message.get("relay")))
            handshake = RelayHandshake(token, "serve", end_to_end(node, server), node.reactor,
                                       failed=lambda why: log.info("relay for a downloader: {why}", why=why))
            ep = endpoints.TCP4ClientEndpoint(node.reactor, host, port, timeout=DIAL_TIMEOUT)
            factory = RelayClientFactory(handshake)
        else:
            log.warn("ignoring a dial request of unknown kind {via!r}", via=str(via)[:20])
            return
    except ValueError as e:
        log.warn("ignoring a dial request with a bad address: {err}", err=e)
        return
    log.info("dialling {how} {where} to serve a downloader", how=via, where="%s:%d" % (host, port))
    ep.connect(factory).addErrback(
        lambda f: log.info("cannot dial {how} {h}:{p}: {why}", how=via, h=host, p=port, why=f.getErrorMessage()))


def reach_through_tracker(node, group: str, file_hash: str, peer_id: str,
                          build: Callable[[str], protocol.Protocol],
                          failed: Callable[[str], None], seeder_host: str):
    """Ask the tracker to bring seeder ``peer_id`` to us; ``build(via)`` makes our downloading protocol.

    ``seeder_host``: the host of the seeder's announced address, which its
    TLS certificate must name when the connection comes through a relay.

    Returns the Deferred of the ``connect_peer`` request (fires with ``via``);
    ``failed(reason)`` is called if the connection never comes about.
    """
    d = node.tracker.request("connect_peer", group=group, file_hash=file_hash, peer=peer_id)

    def arranged(reply):
        via, token = reply.get("via"), reply.get("token")
        if via == "connect-back" and isinstance(token, str):
            node.expect_callback(token, lambda: build("connect-back"),
                                 on_timeout=lambda: failed("the seeder did not call back"))
        elif via == "relay" and isinstance(token, str):
            try:
                host, port = parse_address(str(reply.get("relay")))
            except ValueError as e:
                failed("bad relay address from the tracker: %s" % e)
                return via
            inner = end_to_end(node, build("relay"), seeder_host)
            handshake = RelayHandshake(token, "fetch", inner, node.reactor, failed=failed)
            ep = endpoints.TCP4ClientEndpoint(node.reactor, host, port, timeout=DIAL_TIMEOUT)
            ep.connect(RelayClientFactory(handshake)).addErrback(
                lambda f: failed("relay %s:%d unreachable: %s" % (host, port, f.getErrorMessage())))
        else:
            failed("the tracker answered connect_peer oddly")
        return via
    return d.addCallback(arranged)
