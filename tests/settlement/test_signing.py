"""Signed documents verify only as signed, by the key that signed them.

Covers the canonical form (sorted keys, no whitespace, UTF-8 as itself,
stable under key order, floats refused), the sign/verify round trip
through JSON text, tampering with any member of the document or of the
signature, another key, malformed envelopes, and key loading from PEM and
raw base64 with key ids.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.settlement import signing
from engine.settlement.signing import SigningKeyError

# A fixed seed, so key ids and signatures are reproducible.
PRIVATE = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = PRIVATE.public_key()
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

STATEMENT = {
    "merchant_id": "M001",
    "merchant_name": "世田谷ベーカリー",
    "period": {"from": "2026-11-01T00:00:00+09:00", "until": "2026-12-01T00:00:00+09:00"},
    "coin_sales_yen": 1_234_500,
    "coin_refunds_yen": 3_300,
    "points_redeemed": 4_200,
    "fee_bp": 0,
    "net_payout_yen": 1_235_400,
    "closed": True,
    "previous_statement": None,
    "lines": [{"campaign_id": "C1", "points": 120}, {"campaign_id": "C2", "points": 0}],
}
CHAIN_HEAD = {"business_day": "2026-12-01", "sequence": 41_000, "hash": "ab" * 32}


# --- Canonical form ----------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8():
    assert signing.canonical_json({"b": 1, "a": [True, None, "ｶﾅ"], "é": {"y": 2, "x": 1}}) == (
        '{"a":[true,null,"ｶﾅ"],"b":1,"é":{"x":1,"y":2}}'.encode()
    )


def test_canonical_form_is_stable_under_key_order():
    reversed_statement = dict(reversed(list(STATEMENT.items())))
    reversed_statement["period"] = {"until": STATEMENT["period"]["until"], "from": STATEMENT["period"]["from"]}
    assert list(reversed_statement) != list(STATEMENT)
    assert signing.canonical_json(reversed_statement) == signing.canonical_json(STATEMENT)
    signed = signing.sign_document(PRIVATE, STATEMENT)
    assert signing.verify_document(PUBLIC, {"signature": signed["signature"], "document": reversed_statement})


def test_canonical_form_survives_a_trip_through_pretty_json():
    text = json.dumps(STATEMENT, indent=4, ensure_ascii=True)
    assert signing.canonical_json(json.loads(text)) == signing.canonical_json(STATEMENT)


@pytest.mark.parametrize(
    "document, where",
    [
        ({"amount": 1.5}, r"\$\.amount: floats"),
        ({"lines": [{"rate": 0.1}]}, r"\$\.lines\[0\]\.rate: floats"),
        ({1: "a"}, "keys must be strings"),
        ({"at": object()}, "object is not a JSON value"),
        ({"nan": float("nan")}, "floats"),
    ],
)
def test_canonical_form_refuses_what_has_no_single_encoding(document, where):
    with pytest.raises(TypeError, match=where):
        signing.canonical_json(document)


# --- Signing and verifying ---------------------------------------------------------


@pytest.mark.parametrize("document", [STATEMENT, CHAIN_HEAD, {}], ids=["statement", "chain-head", "empty"])
def test_round_trip_through_json_text(document):
    signed = signing.sign_document(PRIVATE, document)
    assert signed["document"] == document
    assert signed["signature"]["algorithm"] == "Ed25519"
    assert signed["signature"]["key_id"] == signing.key_id(PUBLIC)
    assert len(base64.b64decode(signed["signature"]["value"])) == 64
    as_file = json.loads(json.dumps(signed, ensure_ascii=False, indent=2))
    assert signing.verify_document(PUBLIC, as_file)


def test_signature_is_over_the_canonical_bytes():
    # What an auditor does with any Ed25519 tool: verify the canonical bytes directly.
    signed = signing.sign_document(PRIVATE, STATEMENT)
    PUBLIC.verify(base64.b64decode(signed["signature"]["value"]), signing.canonical_json(STATEMENT))


def _paths(value, prefix=()):
    """Every leaf path in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))
    else:
        yield prefix


def _tampered(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return 0
    return value + "x"


SIGNED = signing.sign_document(PRIVATE, STATEMENT)


@pytest.mark.parametrize("path", list(_paths(SIGNED)), ids=lambda p: ".".join(map(str, p)))
def test_tampering_with_any_field_fails(path):
    signed = copy.deepcopy(SIGNED)
    parent = signed
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = _tampered(parent[path[-1]])
    assert not signing.verify_document(PUBLIC, signed)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(extra=1),  # a member added
        lambda d: d.pop("fee_bp"),  # a member removed
        lambda d: d["lines"].append({"campaign_id": "C3", "points": 1}),
        lambda d: d["lines"].reverse(),  # arrays are ordered
        lambda d: d.update(coin_sales_yen=str(d["coin_sales_yen"])),  # same digits, another type
        lambda d: d.update(closed=1),  # true is not 1
    ],
    ids=["added", "removed", "appended", "reordered", "retyped", "bool-as-int"],
)
def test_structural_changes_to_the_document_fail(change):
    signed = copy.deepcopy(SIGNED)
    change(signed["document"])
    assert not signing.verify_document(PUBLIC, signed)


def test_signature_flipped_bit_fails():
    signed = copy.deepcopy(SIGNED)
    raw = bytearray(base64.b64decode(signed["signature"]["value"]))
    raw[10] ^= 0x01
    signed["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    assert not signing.verify_document(PUBLIC, signed)


def test_wrong_key_fails():
    assert not signing.verify_document(OTHER.public_key(), SIGNED)
    # Even when the key id is rewritten to match the other key, the signature does not.
    forged = copy.deepcopy(SIGNED)
    forged["signature"]["key_id"] = signing.key_id(OTHER)
    assert not signing.verify_document(OTHER.public_key(), forged)


def test_signature_from_another_document_fails():
    other = signing.sign_document(PRIVATE, CHAIN_HEAD)
    assert not signing.verify_document(PUBLIC, {"document": STATEMENT, "signature": other["signature"]})


@pytest.mark.parametrize(
    "signed",
    [
        None,
        "text",
        [],
        {},
        {"document": STATEMENT},
        {"document": STATEMENT, "signature": SIGNED["signature"], "note": "extra"},
        {"document": [1], "signature": SIGNED["signature"]},
        {"document": STATEMENT, "signature": "abc"},
        {"document": STATEMENT, "signature": {**SIGNED["signature"], "algorithm": "ed25519"}},
        {"document": STATEMENT, "signature": {**SIGNED["signature"], "value": "***"}},
        {"document": STATEMENT, "signature": {**SIGNED["signature"], "value": base64.b64encode(bytes(63)).decode()}},
        {"document": STATEMENT, "signature": {**SIGNED["signature"], "value": 7}},
        {"document": {**STATEMENT, "fee_bp": 0.0}, "signature": SIGNED["signature"]},
        {"document": STATEMENT, "signature": {k: v for k, v in SIGNED["signature"].items() if k != "key_id"}},
    ],
    ids=lambda s: "malformed",
)
def test_malformed_envelopes_are_invalid_not_errors(signed):
    assert signing.verify_document(PUBLIC, signed) is False


def test_signing_refuses_non_objects_and_floats():
    with pytest.raises(TypeError):
        signing.sign_document(PRIVATE, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floats"):
        signing.sign_document(PRIVATE, {"amount": 1.0})


# --- Keys --------------------------------------------------------------------------


def test_key_id_is_sha256_prefix_of_the_raw_public_key():
    raw = PUBLIC.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert signing.key_id(PUBLIC) == hashlib.sha256(raw).hexdigest()[:16]
    assert signing.key_id(PRIVATE) == signing.key_id(PUBLIC)
    assert len(signing.key_id(PUBLIC)) == 16 and signing.key_id(OTHER) != signing.key_id(PUBLIC)


def test_generated_keys_sign_and_verify():
    key = signing.generate_private_key()
    assert signing.verify_document(key.public_key(), signing.sign_document(key, CHAIN_HEAD))


def test_private_key_round_trips_through_raw_base64_and_pem():
    b64 = signing.private_key_b64(PRIVATE)
    assert base64.b64decode(b64) == bytes(range(32))
    pem = PRIVATE.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for loaded in (
        signing.load_private_key(b64),
        signing.load_private_key(f"{b64}\n"),
        signing.load_private_key(pem),
        signing.load_private_key(pem.encode()),
    ):
        assert signing.key_id(loaded) == signing.key_id(PUBLIC)
        assert signing.verify_document(PUBLIC, signing.sign_document(loaded, CHAIN_HEAD))


def test_public_key_round_trips_through_raw_base64_and_pem():
    for text in (signing.public_key_b64(PRIVATE), signing.public_key_b64(PUBLIC), signing.public_key_pem(PRIVATE)):
        loaded = signing.load_public_key(text)
        assert signing.verify_document(loaded, SIGNED)
    assert signing.public_key_pem(PUBLIC).startswith("-----BEGIN PUBLIC KEY-----")


def test_signatures_are_deterministic():
    # Ed25519 signs deterministically: the same document and key give the same bytes.
    assert signing.sign_document(PRIVATE, STATEMENT) == signing.sign_document(PRIVATE, dict(STATEMENT))


@pytest.mark.parametrize(
    "value, message",
    [
        (None, "SETAPAY_SIGNING_KEY_B64 is not set"),
        ("", "SETAPAY_SIGNING_KEY_B64 is not set"),
        ("not base64!", "neither PEM nor valid base64"),
        (base64.b64encode(bytes(31)).decode(), "32 bytes, got 31"),
        (base64.b64encode(bytes(64)).decode(), "32 bytes, got 64"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "PEM cannot be read"),
    ],
)
def test_private_key_errors_are_clear(value, message):
    with pytest.raises(SigningKeyError, match=message):
        signing.load_private_key(value)


def test_a_non_ed25519_pem_is_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(SigningKeyError, match="not Ed25519"):
        signing.load_private_key(pem)
    public_pem = (
        other.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(SigningKeyError, match="not Ed25519"):
        signing.load_public_key(public_pem)


def test_public_key_errors_are_clear():
    with pytest.raises(SigningKeyError, match="32 bytes, got 33"):
        signing.load_public_key(base64.b64encode(bytes(33)).decode())
    with pytest.raises(SigningKeyError, match="PEM cannot be read"):
        signing.load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_key_errors_never_echo_the_value():
    seed_b64 = base64.b64encode(bytes(range(31))).decode()
    with pytest.raises(SigningKeyError) as caught:
        signing.load_private_key(seed_b64)
    assert seed_b64 not in str(caught.value) and caught.value.__cause__ is None
