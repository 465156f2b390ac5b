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


# -- key-bound tickets (mbt/2) and the HELLO challenge ------------------------

from mbt.tickets import (check_session_key, make_key_ticket, new_challenge, new_session_key,  # noqa: E402
                         sign_challenge, ticket_expiry, verify_proof)

HOLDER = new_session_key()
HOLDER_PUB = public_key_hex(HOLDER)


def key_ticket(**over):
    args = dict(user="alice", group="club", file_hash=HASH, holder=HOLDER_PUB, now=NOW)
    args.update(over)
    return make_key_ticket(KEY, **args)


def test_a_key_bound_ticket_names_the_holders_key_and_no_address():
    t, expires = key_ticket()
    payload = verify_ticket(t, PUB, NOW)
    assert payload == {"u": "alice", "g": "club", "h": HASH, "k": HOLDER_PUB, "exp": expires}
    assert "a" not in payload
    assert ticket_expiry(t) == expires
    assert reason(t, now=expires) == "ticket expired"


def test_a_key_bound_ticket_with_a_swapped_key_no_longer_verifies():
    t, _ = key_ticket()
    payload, signature = t.split(".")
    data = dict(json.loads(unb64(payload)), k=public_key_hex(new_session_key()))
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    assert reason(b64(raw) + "." + signature) == "ticket signature does not verify"


def test_a_ticket_cannot_be_made_for_a_malformed_key():
    for bad in ("", "zz" * 32, HOLDER_PUB.upper(), HOLDER_PUB[:-2], None, 5):
        with pytest.raises(MbtError) as e:
            key_ticket(holder=bad)
        assert e.value.code == "bad_ticket"
    assert check_session_key(HOLDER_PUB) == HOLDER_PUB


def test_a_payload_with_both_key_and_address_is_malformed():
    payload = json.dumps({"a": "x", "exp": 5, "g": "b", "h": "c", "k": HOLDER_PUB, "u": "a"}).encode()
    assert reason(b64(payload) + "." + b64(KEY.sign(payload)), now=0).startswith("malformed ticket")


def test_the_holder_proves_possession_by_signing_the_challenge():
    challenge = new_challenge()
    assert len(challenge) == 64 and challenge != new_challenge()
    proof = sign_challenge(HOLDER, challenge, "club", HASH, "alice")
    verify_proof(HOLDER_PUB, challenge, "club", HASH, "alice", proof)     # no exception


def proof_refusal(holder, challenge, proof, group="club", user="alice"):
    with pytest.raises(MbtError) as e:
        verify_proof(holder, challenge, group, HASH, user, proof)
    assert e.value.code == "bad_ticket"
    return e.value.message


def test_a_replayed_proof_fails_against_a_fresh_challenge():
    # Someone who captured a ticket and a proof from the wire cannot reuse them:
    # the serving peer's next challenge differs, and only the key can sign it.
    old = new_challenge()
    captured = sign_challenge(HOLDER, old, "club", HASH, "alice")
    assert proof_refusal(HOLDER_PUB, new_challenge(), captured).startswith("proof does not verify")


def test_a_proof_by_another_key_or_for_another_context_fails():
    challenge = new_challenge()
    thief = new_session_key()
    assert proof_refusal(HOLDER_PUB, challenge, sign_challenge(thief, challenge, "club", HASH, "alice")) \
        .startswith("proof does not verify")
    good = sign_challenge(HOLDER, challenge, "club", HASH, "alice")
    assert proof_refusal(HOLDER_PUB, challenge, good, group="other").startswith("proof does not verify")
    assert proof_refusal(HOLDER_PUB, challenge, good, user="mallory").startswith("proof does not verify")


@pytest.mark.parametrize("garbage", ["", "!", "a" * 200, None, 7, b64(b"short"), b64(b"x" * 64) + "=", "é"])
def test_a_garbage_proof_is_malformed(garbage):
    assert proof_refusal(HOLDER_PUB, new_challenge(), garbage).startswith("malformed proof")


def test_ticket_expiry_of_garbage_is_none():
    for garbage in ("", "x", "!!.!!", b64(b"[]") + ".x"):
        assert ticket_expiry(garbage) is None
