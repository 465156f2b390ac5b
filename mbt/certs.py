"""Make a local CA and certificates for a test cluster: ``mbt-certs`` / ``python -m mbt.certs``.

::

    python -m mbt.certs certs/ tracker1 tracker2 alice bob --ip 127.0.0.1

writes ``certs/ca.pem`` (+ ``ca.key``, created once and reused) and, for each
name, ``NAME.pem`` and ``NAME.key`` signed by that CA, with a subjectAltName
listing every ``--ip`` (default 127.0.0.1) and ``--dns`` (default localhost).
Keys are written mode 0600. Then run every process with
``--tls-cert certs/NAME.pem --tls-key certs/NAME.key --tls-ca certs/ca.pem``.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from typing import List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str = "mbt test CA", days: int = 3650) -> Tuple[object, x509.Certificate]:
    """A new self-signed CA key and certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca_key, ca_cert: x509.Certificate, common_name: str, ips: Sequence[str] = ("127.0.0.1",),
              dns: Sequence[str] = ("localhost",), days: int = 825,
              not_before: Optional[datetime.datetime] = None) -> Tuple[object, x509.Certificate]:
    """A key and a certificate for ``common_name`` signed by the CA, with IP and DNS SANs.

    ``not_before``/``days`` let tests make certificates that are already expired.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5))
    sans: List[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    sans += [x509.DNSName(d) for d in dns]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_pair(directory: str, name: str, key, cert: x509.Certificate) -> Tuple[str, str]:
    """Write ``NAME.pem`` and ``NAME.key`` (0600); return their paths."""
    cert_path = os.path.join(directory, name + ".pem")
    key_path = os.path.join(directory, name + ".key")
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), private=True)
    return cert_path, key_path


def load_or_make_ca(directory: str) -> Tuple[object, x509.Certificate]:
    """The CA in ``directory`` (``ca.pem`` + ``ca.key``), created on first use."""
    cert_path, key_path = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        return key, cert
    key, cert = make_ca()
    write_pair(directory, "ca", key, cert)
    return key, cert


def main(argv: Optional[List[str]] = None) -> int:
    """Command line: make a CA (once) and one certificate per name."""
    ap = argparse.ArgumentParser(prog="mbt-certs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory", help="where to write ca.pem and NAME.pem / NAME.key")
    ap.add_argument("names", nargs="+", help="one certificate per name (e.g. tracker1 alice)")
    ap.add_argument("--ip", action="append", help="IP subjectAltName (repeatable; default 127.0.0.1)")
    ap.add_argument("--dns", action="append", help="DNS subjectAltName (repeatable; default localhost)")
    ap.add_argument("--days", type=int, default=825, help="validity in days (default 825)")
    args = ap.parse_args(argv)
    try:
        ips = [str(ipaddress.ip_address(ip)) for ip in (args.ip or ["127.0.0.1"])]
    except ValueError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    os.makedirs(args.directory, mode=0o700, exist_ok=True)
    ca_key, ca_cert = load_or_make_ca(args.directory)
    for name in args.names:
        key, cert = make_cert(ca_key, ca_cert, name, ips, args.dns or ["localhost"], days=args.days)
        cert_path, key_path = write_pair(args.directory, name, key, cert)
        print("%s: %s %s (SAN %s)" % (name, cert_path, key_path, ", ".join(ips + (args.dns or ["localhost"]))))
    print("CA: %s" % os.path.join(args.directory, "ca.pem"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
