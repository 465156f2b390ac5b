"""The framing both tracker channels share: one compact JSON object per line."""

from __future__ import annotations

import json


def encode(obj: dict) -> bytes:
    """One protocol line (without the delimiter)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:      # lone surrogates (e.g. an echoed id): escape them
        return json.dumps(obj, separators=(",", ":")).encode("ascii")
