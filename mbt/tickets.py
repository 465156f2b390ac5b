"""Download tickets: a tracker-signed proof that a user may fetch a file from a group.

Every tracker derives the same Ed25519 signing key from the trackers' shared
secret (HKDF-SHA256, ``info=b"mbt ticket key"``), so a ticket signed by any
tracker verifies with the one public key all of them publish (``ticket_key``).

A ticket is ``B64(payload) + "." + B64(signature)`` where ``B64`` is base64url
without padding, the payload is compact JSON with sorted keys::

    {"exp": <unix seconds>, "g": "<group>", "h": "<file hash>", "k": "<holder key>", "u": "<user>"}

and the signature is Ed25519 over exactly those payload bytes. ``k`` is the
hex public half of the Ed25519 key the downloader's peer made for its tracker
session (protocol ``mbt/2``): the ticket authorises whoever holds that key,
from any address, and the holder proves it in ``HELLO`` by signing the serving
peer's fresh challenge (:func:`sign_challenge`, :func:`verify_proof`). A
session that logged in without a key (an ``mbt/1`` peer) gets the older
address-bound shape with ``"a": "<peer address>"`` instead of ``k``.

Expiry is judged in the trackers' time (``mbt.trackertime``).
:func:`verify_ticket` is pure (time is a parameter) so a peer can check a
ticket without any I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mbt.errors import BadTicket

#: How long a ticket is valid (seconds).
TICKET_LIFETIME = 300
#: Longest ticket string accepted (a real one is ~300 characters).
MAX_TICKET_CHARS = 4096
_HKDF_INFO = b"mbt ticket key"
#: Payload shapes: key-bound (mbt/2) and address-bound (mbt/1 sessions).
_KEY_PAYLOAD = ("exp", "g", "h", "k", "u")
_ADDRESS_PAYLOAD = ("a", "exp", "g", "h", "u")
#: Bytes of a HELLO challenge (sent as hex).
CHALLENGE_BYTES = 32
_PROOF_CONTEXT = b"mbt/2 hello proof"


def _bad(reason: str) -> BadTicket:
    return BadTicket(reason)


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


def _sign(key: Ed25519PrivateKey, fields: dict) -> str:
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return _b64encode(payload) + "." + _b64encode(key.sign(payload))


def make_ticket(key: Ed25519PrivateKey, user: str, group: str, file_hash: str, address: str,
                now: float, lifetime: int = TICKET_LIFETIME) -> Tuple[str, int]:
    """Sign an address-bound ticket (for an ``mbt/1`` session without a key).

    Returns ``(ticket, expires)`` with ``expires`` in whole unix seconds.
    """
    expires = int(now) + lifetime
    return _sign(key, {"u": user, "g": group, "h": file_hash, "a": address, "exp": expires}), expires


def make_key_ticket(key: Ed25519PrivateKey, user: str, group: str, file_hash: str, holder: str,
                    now: float, lifetime: int = TICKET_LIFETIME) -> Tuple[str, int]:
    """Sign a ticket for whoever holds the session key ``holder`` (64 hex digits).

    Returns ``(ticket, expires)``; ``now`` is the tracker's clock.
    """
    check_session_key(holder)
    expires = int(now) + lifetime
    return _sign(key, {"u": user, "g": group, "h": file_hash, "k": holder, "exp": expires}), expires


def new_session_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for one tracker session of a peer (never stored)."""
    return Ed25519PrivateKey.generate()


def _public(hex_key: object, what: str) -> Ed25519PublicKey:
    try:
        raw = bytes.fromhex(hex_key) if isinstance(hex_key, str) else b""
        if len(raw) != 32 or hex_key != raw.hex():
            raise ValueError
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise _bad("malformed %s: expected 64 lowercase hex digits" % what)


def check_session_key(hex_key: object) -> str:
    """``hex_key`` if it is a usable Ed25519 public key in lowercase hex, else ``bad_ticket``."""
    _public(hex_key, "session key")
    return hex_key


def new_challenge() -> str:
    """A fresh random challenge (hex) a serving peer sends in answer to HELLO."""
    return os.urandom(CHALLENGE_BYTES).hex()


def _proof_message(challenge: str, group: str, file_hash: str, user: str) -> bytes:
    # Context-bound: a signature made for one HELLO proves nothing for another
    # file, group or user, and never for anything else signed with the key.
    return b"\n".join([_PROOF_CONTEXT] + [f.encode("utf-8") for f in (challenge, group, file_hash, user)])


def sign_challenge(key: Ed25519PrivateKey, challenge: str, group: str, file_hash: str, user: str) -> str:
    """The ``PROOF`` a downloader sends: its session key's signature over the challenge."""
    return _b64encode(key.sign(_proof_message(challenge, group, file_hash, user)))


def verify_proof(holder: str, challenge: str, group: str, file_hash: str, user: str,
                 proof: object) -> None:
    """Raise ``bad_ticket`` unless ``proof`` is ``holder``'s signature of this challenge."""
    public = _public(holder, "session key")
    try:
        if not isinstance(proof, str) or len(proof) > 128 or not proof.isascii():
            raise ValueError
        signature = _b64decode(proof)
        if len(signature) != 64:
            raise ValueError
    except (ValueError, binascii.Error):
        raise _bad("malformed proof: expected a base64url Ed25519 signature")
    try:
        public.verify(signature, _proof_message(challenge, group, file_hash, user))
    except InvalidSignature:
        raise _bad("proof does not verify: the downloader does not hold the ticket's key")


def _unverified_field(ticket: str, name: str):
    """Field ``name`` of a ticket's payload, read without checking the signature (None if unreadable)."""
    try:
        return json.loads(_b64decode(ticket.split(".")[0]))[name]
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None


def ticket_expiry(ticket: str) -> Optional[int]:
    """``exp`` of a ticket already verified (or ``None`` if it cannot be read)."""
    exp = _unverified_field(ticket, "exp")
    try:
        return int(exp)
    except (TypeError, ValueError):
        return None


def ticket_holder(ticket: str) -> Optional[str]:
    """``k`` (the holder's session key) of a ticket already verified (``None`` if it names none)."""
    holder = _unverified_field(ticket, "k")
    return holder if isinstance(holder, str) else None


def verify_ticket(ticket: str, public_key_hex: str, now: float) -> dict:
    """Check a ticket; return its payload dict or raise :class:`~mbt.errors.BadTicket`.

    The message says why: ``malformed ticket ...``, ``ticket signature does not
    verify`` (forged, tampered or signed with another key) or ``ticket expired``.
    ``now`` should be the trackers' time (``mbt.trackertime.TrackerClock.now``).
    The payload has ``k`` (key-bound) or ``a`` (address-bound).
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
    if (not isinstance(payload, dict) or tuple(sorted(payload)) not in (_KEY_PAYLOAD, _ADDRESS_PAYLOAD)
            or not all(isinstance(payload[k], str) for k in payload if k != "exp")
            or not isinstance(payload["exp"], int) or isinstance(payload["exp"], bool)):
        raise _bad("malformed ticket: unexpected payload fields")
    if now >= payload["exp"]:
        raise _bad("ticket expired")
    return payload
