"""Download tickets: derivation from the shared secret, signing, and every way verification fails."""

import base64
import json

import pytest

from mbt.errors import MbtError
from mbt.tickets import (MAX_TICKET_CHARS, TICKET_LIFETIME, make_ticket, public_key_hex,
                         signing_key_from_secret, verify_ticket)

SECRET = b"0123456789abcdef" * 4
KEY = signing_key_from_secret(SECRET)
PUB = public_key_hex(KEY)
NOW = 1_800_000_000.5
HASH = "c" * 64


def ticket(key=KEY, **over):
    args = dict(user="alice", group="club", file_hash=HASH, address="10.0.0.1:7000", now=NOW)
    args.update(over)
    return make_ticket(key, **args)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def reason(t, pub=PUB, now=NOW):
    with pytest.raises(MbtError) as e:
        verify_ticket(t, pub, now)
    assert e.value.code == "bad_ticket"
    return e.value.message


def test_a_good_ticket_verifies_to_its_payload():
    t, expires = ticket()
    assert expires == int(NOW) + TICKET_LIFETIME == 1_800_000_300
    assert verify_ticket(t, PUB, NOW) == {"u": "alice", "g": "club", "h": HASH, "a": "10.0.0.1:7000",
                                          "exp": expires}
    assert verify_ticket(t, PUB, expires - 0.001)["u"] == "alice"


def test_the_format_is_base64url_payload_dot_signature_of_compact_sorted_json():
    t, expires = ticket()
    payload, signature = t.split(".")
    assert "=" not in t and "+" not in t and "/" not in t
    raw = unb64(payload)
    assert raw == json.dumps({"a": "10.0.0.1:7000", "exp": expires, "g": "club", "h": HASH, "u": "alice"},
                             separators=(",", ":"), sort_keys=True).encode()
    assert len(unb64(signature)) == 64
    KEY.public_key().verify(unb64(signature), raw)      # plain Ed25519 over the payload bytes


def test_the_key_is_derived_from_the_secret_the_same_way_everywhere():
    assert public_key_hex(signing_key_from_secret(SECRET)) == PUB
    assert public_key_hex(signing_key_from_secret(SECRET + b"x")) != PUB
    assert len(PUB) == 64 and int(PUB, 16) >= 0


def test_an_expired_ticket_is_refused():
    t, expires = ticket()
    assert reason(t, now=expires) == "ticket expired"
    assert reason(t, now=expires + 3600) == "ticket expired"


def test_a_forged_signature_is_refused():
    forged, _ = make_ticket(signing_key_from_secret(b"not the trackers' secret at all"), "alice", "club",
                            HASH, "10.0.0.1:7000", NOW)
    assert reason(forged) == "ticket signature does not verify"


def test_a_tampered_payload_is_refused():
    t, expires = ticket()
    payload, signature = t.split(".")
    for change in ({"u": "mallory"}, {"exp": expires + 10 ** 6}, {"g": "other"}, {"a": "6.6.6.6:1"}):
        data = dict(json.loads(unb64(payload)), **change)
        raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
        assert reason(b64(raw) + "." + signature) == "ticket signature does not verify"


def test_the_wrong_public_key_is_refused():
    t, _ = ticket()
    other = public_key_hex(signing_key_from_secret(b"another secret, another key!!"))
    assert reason(t, pub=other) == "ticket signature does not verify"
    assert reason(t, pub="zz" * 32).startswith("malformed ticket key")
    assert reason(t, pub=PUB[:-2]).startswith("malformed ticket key")
    assert reason(t, pub=None).startswith("malformed ticket key")


@pytest.mark.parametrize("garbage", [
    "", ".", "..", "abc", "a.b.c", "!!!.???", "a" * (MAX_TICKET_CHARS + 1), "é.é", None, 42,
    b64(b"{}") + "=." + b64(b"x" * 64), b64(b"{}") + "." + b64(b"short"),
    "YQ.YQ", " " + b64(b"{}") + "." + b64(b"x" * 64),
])
def test_garbage_is_malformed(garbage):
    assert reason(garbage).startswith("malformed ticket")


def test_a_signed_payload_of_the_wrong_shape_is_malformed():
    for payload in (b"[1]", b"not json", json.dumps({"u": "a", "g": "b", "h": "c", "a": "d"}).encode(),
                    json.dumps({"u": "a", "g": "b", "h": "c", "a": "d", "exp": "soon"}).encode(),
                    json.dumps({"u": "a", "g": "b", "h": "c", "a": "d", "exp": True}).encode(),
                    json.dumps({"u": 1, "g": "b", "h": "c", "a": "d", "exp": 5}).encode()):
        signed = b64(payload) + "." + b64(KEY.sign(payload))
        assert reason(signed, now=0).startswith("malformed ticket")
