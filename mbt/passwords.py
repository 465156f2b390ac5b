"""Salted slow password hashes (scrypt) and constant-time verification.

Hashing is deliberately slow (tens of milliseconds) and must run off the
reactor thread (``deferToThread``). Records look like
``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>`` so parameters can change later.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
MAX_PASSWORD_BYTES = 1024


def make_record(password: str, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """Hash ``password`` with a fresh random salt; return the record to store."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p,
                            maxmem=128 * 1024 * 1024, dklen=32)
    return "scrypt$%d$%d$%d$%s$%s" % (n, r, p, salt.hex(), digest.hex())


# Verified against when the user does not exist, so a missing user costs the
# same time as a wrong password (no user enumeration by timing).
_DUMMY_RECORD = None


def verify(record: str | None, password: str) -> bool:
    """True if ``password`` matches ``record`` (constant-time compare)."""
    global _DUMMY_RECORD
    if record is None:
        if _DUMMY_RECORD is None:
            _DUMMY_RECORD = make_record("x")
        record, real = _DUMMY_RECORD, False
    else:
        real = True
    try:
        scheme, n, r, p, salt, digest = record.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=bytes.fromhex(salt),
                             n=int(n), r=int(r), p=int(p), maxmem=128 * 1024 * 1024, dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest)) and real
