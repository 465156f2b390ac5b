"""Optional TLS on every channel: contexts, certificate loading, endpoints.

TLS is off unless a process gets ``--tls-cert``, ``--tls-key`` and
``--tls-ca``. Then it listens with its certificate and, as a client, accepts
only servers whose certificate chains to the CA *and* names the address it
dialled (an IP subjectAltName for ``127.0.0.1``, checked by
``service_identity`` through Twisted's ``optionsForClientTLS``). There is no
switch to skip verification. ``mbt.certs`` makes a CA and certificates for a
local cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from twisted.internet import endpoints, ssl

from mbt.errors import ConfigError


@dataclass(frozen=True)
class TLSConfig:
    """Paths of this process's certificate, its key and the CA it trusts."""

    cert: Optional[str] = None
    key: Optional[str] = None
    ca: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    def check(self) -> "TLSConfig":
        """Raise ConfigError unless all three files are given, readable and match."""
        if not self.enabled:
            return self
        missing = [flag for flag, value in (("--tls-cert", self.cert), ("--tls-key", self.key),
                                            ("--tls-ca", self.ca)) if not value]
        if missing:
            raise ConfigError("TLS needs --tls-cert, --tls-key and --tls-ca; missing %s" % ", ".join(missing))
        for path in (self.cert, self.key, self.ca):
            if not os.access(path, os.R_OK):
                raise ConfigError("cannot read %s" % path)
        try:
            self.private_certificate()
            self.trust_root()
        except Exception as e:      # OpenSSL's errors are many; one clear line for the user
            raise ConfigError("unusable TLS files (%s, %s, %s): %s" % (self.cert, self.key, self.ca, e))
        return self

    def private_certificate(self) -> ssl.PrivateCertificate:
        with open(self.cert, "rb") as f:
            cert = f.read()
        with open(self.key, "rb") as f:
            key = f.read()
        return ssl.PrivateCertificate.loadPEM(cert + b"\n" + key)

    def trust_root(self) -> ssl.Certificate:
        with open(self.ca, "rb") as f:
            return ssl.Certificate.loadPEM(f.read())

    def server_options(self):
        """Context factory for a listening socket (our certificate, TLS 1.2+)."""
        pc = self.private_certificate()
        return ssl.CertificateOptions(privateKey=pc.privateKey.original, certificate=pc.original,
                                      raiseMinimumTo=ssl.TLSVersion.TLSv1_2)

    def client_options(self, host: str):
        """Connection creator that verifies the server against the CA and ``host``."""
        return ssl.optionsForClientTLS(host, trustRoot=self.trust_root(),
                                       clientCertificate=self.private_certificate(),
                                       extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})


def server_endpoint(reactor, host: str, port: int, tls: Optional[TLSConfig], backlog: int = 128,
                    direct: bool = False):
    """A listening endpoint on host:port, TLS when configured.

    ``direct``: TLS through :mod:`mbt.protocols.tlsdirect` (the peer wire's
    bulk transfers; same TLS, fewer copies) instead of Twisted's ``listenSSL``.
    """
    if tls is not None and tls.enabled:
        if direct:
            from mbt.protocols.tlsdirect import DirectTLSServerEndpoint
            tcp = endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)
            return DirectTLSServerEndpoint(tcp, tls.server_options())
        return endpoints.SSL4ServerEndpoint(reactor, port, tls.server_options(), backlog=backlog,
                                            interface=host)
    return endpoints.TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


def client_endpoint(reactor, host: str, port: int, tls: Optional[TLSConfig], timeout: float = 5.0,
                    direct: bool = False):
    """A connecting endpoint to host:port, verifying the server when TLS is on (``direct``: as above)."""
    tcp = endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    if tls is not None and tls.enabled:
        if direct:
            from mbt.protocols.tlsdirect import DirectTLSClientEndpoint
            return DirectTLSClientEndpoint(tcp, tls.client_options(host))
        return endpoints.wrapClientTLS(tls.client_options(host), tcp)
    return tcp
