"""Download tickets: a tracker-signed proof that a user may fetch a file from a group.

Every tracker derives the same Ed25519 signing key from the trackers' shared
secret (HKDF-SHA256, ``info=b"mbt ticket key"``), so a ticket signed by any
tracker verifies with the one public key all of them publish (``ticket_key``).

A ticket is ``B64(payload) + "." + B64(signature)`` where ``B64`` is base64url
without padding, the payload is compact JSON with sorted keys::

    {"a": "<peer address>", "exp": <unix seconds>, "g": "<group>", "h": "<file hash>", "u": "<user>"}

and the signature is Ed25519 over exactly those payload bytes.
:func:`verify_ticket` is pure (time is a parameter) so a peer can check a
ticket without any I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mbt.errors import MbtError

#: How long a ticket is valid (seconds).
TICKET_LIFETIME = 300
#: Longest ticket string accepted (a real one is ~300 characters).
MAX_TICKET_CHARS = 4096
_HKDF_INFO = b"mbt ticket key"
_PAYLOAD_KEYS = ("a", "exp", "g", "h", "u")


def _bad(reason: str) -> MbtError:
    return MbtError(reason, "bad_ticket")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url without padding (rejects stray characters)."""
    if not text or "=" in text or len(text) % 4 == 1:
        raise ValueError("bad base64url length or padding")
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)


def signing_key_from_secret(secret: bytes) -> Ed25519PrivateKey:
    """The trackers' common ticket signing key, derived from their shared secret."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_hex(key: Ed25519PrivateKey) -> str:
    """Hex of the 32-byte raw Ed25519 public key (what ``ticket_key`` returns)."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def make_ticket(key: Ed25519PrivateKey, user: str, group: str, file_hash: str, address: str,
                now: float, lifetime: int = TICKET_LIFETIME) -> Tuple[str, int]:
    """Sign a ticket for ``user`` at peer ``address`` to fetch ``file_hash`` in ``group``.

    Returns ``(ticket, expires)`` with ``expires`` in whole unix seconds.
    """
    expires = int(now) + lifetime
    payload = json.dumps({"u": user, "g": group, "h": file_hash, "a": address, "exp": expires},
                         sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return _b64encode(payload) + "." + _b64encode(key.sign(payload)), expires


def verify_ticket(ticket: str, public_key_hex: str, now: float) -> dict:
    """Check a ticket; return its payload dict or raise ``MbtError(code="bad_ticket")``.

    The message says why: ``malformed ticket ...``, ``ticket signature does not
    verify`` (forged, tampered or signed with another key) or ``ticket expired``.
    """
    try:
        raw_key = bytes.fromhex(public_key_hex) if isinstance(public_key_hex, str) else b""
        if len(raw_key) != 32:
            raise ValueError
        public = Ed25519PublicKey.from_public_bytes(raw_key)
    except ValueError:
        raise _bad("malformed ticket key: expected 64 hex digits")
    if not isinstance(ticket, str) or len(ticket) > MAX_TICKET_CHARS or not ticket.isascii():
        raise _bad("malformed ticket")
    parts = ticket.split(".")
    if len(parts) != 2:
        raise _bad("malformed ticket: expected <payload>.<signature>")
    try:
        payload_bytes, signature = _b64decode(parts[0]), _b64decode(parts[1])
    except (ValueError, binascii.Error):
        raise _bad("malformed ticket: not base64url")
    if len(signature) != 64:
        raise _bad("malformed ticket: signature is not 64 bytes")
    # The signature first: a forged or tampered payload is a bad signature,
    # whatever it contains, and nothing unsigned is ever parsed.
    try:
        public.verify(signature, payload_bytes)
    except InvalidSignature:
        raise _bad("ticket signature does not verify")
    try:
        payload = json.loads(payload_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("malformed ticket: payload is not JSON")
    if (not isinstance(payload, dict) or sorted(payload) != list(_PAYLOAD_KEYS)
            or not all(isinstance(payload[k], str) for k in ("a", "g", "h", "u"))
            or not isinstance(payload["exp"], int) or isinstance(payload["exp"], bool)):
        raise _bad("malformed ticket: unexpected payload fields")
    if now >= payload["exp"]:
        raise _bad("ticket expired")
    return payload
