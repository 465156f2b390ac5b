"""TLS: a download over TLS passes its hash check, and bad certificates are refused."""

import datetime
import os
import random

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from mbt import certs
from mbt.peer.node import PeerNode
from mbt.peer.commands import CommandTable
from mbt.tls import TLSConfig, client_endpoint, server_endpoint
from mbt.tracker.service import TrackerService
from mbt.trackerinfo import TrackerAddress
from tests.cluster import make_file, sha256_file, wait_download, wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA with good, wrong-SAN and expired certificates, and a second CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = certs.make_ca()
    certs.write_pair(str(d), "ca", ca_key, ca_cert)
    out = {"dir": d, "ca": str(d / "ca.pem")}
    for name, kwargs in [("good", {}), ("good2", {}),
                         ("wrong_ip", {"ips": ["127.0.0.2"], "dns": []}),
                         ("expired", {"not_before": datetime.datetime.now(datetime.timezone.utc)
                                      - datetime.timedelta(days=10), "days": 2})]:
        key, cert = certs.make_cert(ca_key, ca_cert, name, **kwargs)
        out[name] = certs.write_pair(str(d), name, key, cert)
    other_key, other_cert = certs.make_ca("another CA")
    certs.write_pair(str(d), "other_ca", other_key, other_cert)
    key, cert = certs.make_cert(other_key, other_cert, "foreign")
    out["foreign"] = certs.write_pair(str(d), "foreign", key, cert)
    out["other_ca"] = str(d / "other_ca.pem")
    return out


def cfg(pki, name, ca=None):
    cert, key = pki[name]
    return TLSConfig(cert, key, ca or pki["ca"]).check()


class Greeter(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello\n")


class Collector(protocol.Protocol):
    def __init__(self):
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.done.callback(self.data)


@pytest_twisted.inlineCallbacks
def exchange(server_tls, client_tls, direct=False):
    """Listen with ``server_tls`` (None = plaintext), connect with ``client_tls``; return bytes got.

    ``direct``: both ends through mbt.protocols.tlsdirect (the peer wire's TLS).
    """
    port = yield server_endpoint(reactor, "127.0.0.1", 0, server_tls, direct=direct).listen(
        protocol.Factory.forProtocol(Greeter))
    try:
        c = Collector()
        ep = client_endpoint(reactor, "127.0.0.1", port.getHost().port, client_tls, direct=direct)
        p = yield ep.connect(protocol.Factory.forProtocol(lambda: c))
        reactor.callLater(2, lambda: p.transport.loseConnection() if p.transport else None)
        data = yield c.done
        return data
    finally:
        yield port.stopListening()


@pytest.mark.parametrize("direct", [False, True])
@pytest_twisted.inlineCallbacks
def test_matching_certificates_talk(pki, direct):
    assert (yield exchange(cfg(pki, "good"), cfg(pki, "good2"), direct)) == b"hello\n"


@pytest.mark.parametrize("direct", [False, True])
@pytest.mark.parametrize("server", ["wrong_ip", "expired", "foreign"])
@pytest_twisted.inlineCallbacks
def test_client_refuses_bad_server_certificate(pki, server, direct):
    server_cfg = cfg(pki, server, pki["other_ca"] if server == "foreign" else None)
    assert (yield exchange(server_cfg, cfg(pki, "good"), direct)) == b""


@pytest.mark.parametrize("direct", [False, True])
@pytest_twisted.inlineCallbacks
def test_plaintext_client_gets_nothing_from_a_tls_port(pki, direct):
    assert (yield exchange(cfg(pki, "good"), None, direct)) == b""


def test_incomplete_tls_options_are_a_clear_error(pki):
    with pytest.raises(Exception, match="missing --tls-ca"):
        TLSConfig(pki["good"][0], pki["good"][1], None).check()
    with pytest.raises(Exception, match="cannot read"):
        TLSConfig("/nonexistent.pem", pki["good"][1], pki["ca"]).check()


@pytest_twisted.inlineCallbacks
def test_download_over_tls_passes_its_hash_check(pki, tmp_path):
    cert, key = pki["good"]
    ep = "ssl:0:interface=127.0.0.1:certKey=%s:privateKey=%s" % (cert, key)
    tracker = TrackerService(ep, str(tmp_path / "tracker"))
    tracker.startService()
    port = yield tracker.listening
    trackers = [TrackerAddress(1, "127.0.0.1", port.getHost().port)]
    nodes = []
    try:
        for name in ("ann", "ben"):
            os.makedirs(tmp_path / name)
            n = PeerNode("127.0.0.1:0", trackers, str(tmp_path / name), reactor, rng=random.Random(1),
                         cwd=str(tmp_path), tls=cfg(pki, "good2"))
            n.commands = CommandTable(n)
            yield n.start()
            nodes.append(n)
            yield wait_for(lambda: n.tracker.ready, 10, what="TLS tracker connection")
            yield n.create_user(name, "pw")
            yield n.login(name, "pw")
        ann, ben = nodes
        yield ann.create_group("g")
        yield ben.join_group("g")
        yield ann.accept_request("g", "ben")
        sha = make_file(tmp_path / "f.bin", 3 * 512 * 1024 + 5)
        yield ann.upload_file("f.bin", "g")
        (tmp_path / "dl").mkdir()
        yield ben.download_file("g", "f.bin", "dl")
        assert (yield wait_download(ben, "g", "f.bin")) == "C"
        assert sha256_file(tmp_path / "dl" / "f.bin") == sha
        assert ann.server_factory.uploaded > 0
    finally:
        for n in nodes:
            yield n.stop()
        yield tracker.stopService()


@pytest_twisted.inlineCallbacks
def test_peer_with_foreign_ca_cannot_reach_a_tls_tracker(pki, tmp_path):
    cert, key = pki["good"]
    tracker = TrackerService("ssl:0:interface=127.0.0.1:certKey=%s:privateKey=%s" % (cert, key),
                             str(tmp_path / "tracker"))
    tracker.startService()
    port = yield tracker.listening
    n = PeerNode("127.0.0.1:0", [TrackerAddress(1, "127.0.0.1", port.getHost().port)], str(tmp_path),
                 reactor, tls=TLSConfig(*pki["foreign"], pki["other_ca"]))
    n.tracker.request_timeout = 1.5
    try:
        yield n.start()
        with pytest.raises(Exception, match="no tracker reachable|connection to the tracker was lost"):
            yield n.create_user("x", "pw")
        assert not n.tracker.ready
    finally:
        yield n.stop()
        yield tracker.stopService()
