"""`engine.receipts.verify` against joserfc's own compact-JWS path, token by token.

`verify` splits a receipt and checks its HMAC itself (issue 11: joserfc's extraction was
most of a receipt check's 35 us, a check per purchase of a batch); joserfc still decodes
(its strict base64url, its header decoding) and signs. The reference below is the check as
it was, through `jws.extract_compact` and `jws.verify_compact`: on every token, valid,
mutated or crafted and signed with the app's secret, both accept the same receipts and
refuse the same ones with the same code.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Sequence

import pytest
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

from engine import receipts
from engine.errors import EngineError
from engine.model import Purchase, Refund

NOW_US = 1_780_000_000 * 1_000_000
APP = "app_ref"
SECRET = receipts.new_secret()
OTHER = receipts.new_secret()
BODY = Purchase.model_validate(
    {
        "type": "purchase",
        "wallet_id": "W1",
        "merchant_id": "M1",
        "terminal_id": "T1",
        "occurred_at": "2026-12-04T10:00:00+09:00",
        "amount": 1234,
        "points_used": 0,
    }
)
CLAIMS = receipts.purchase_claims(BODY.model_dump(), "pay_1", NOW_US // 1_000_000)


ROTATED_UNTIL_US = NOW_US + 1_000_000  # OTHER: rotated out, valid a second more


def secrets_for(app_id: str) -> Sequence[bytes]:
    return [receipts.decode_secret(OTHER), receipts.decode_secret(SECRET)] if app_id == APP else []


def live_secrets(app_id: str) -> Sequence[tuple[bytes, int | None]]:
    """`secrets_for`'s, with their ends, as `verify` takes them (`Apps.live_secrets`)."""
    return [(raw, ROTATED_UNTIL_US if n == 0 else None) for n, raw in enumerate(secrets_for(app_id))]


def reference(
    token: str | None, body: Purchase | Refund, keys: Callable[[str], Sequence[bytes]], now_us: int
) -> receipts.Receipt:
    """The check through joserfc's compact serialization, as `verify` did it before."""
    if token is None:
        raise EngineError("receipt_required")
    if not isinstance(token, str) or len(token) > 4096:
        raise EngineError("receipt_invalid")
    try:
        signed = jws.extract_compact(token.encode("ascii"))
    except (JoseError, ValueError, UnicodeError, RecursionError):
        raise EngineError("receipt_invalid") from None
    header = signed.headers()
    if not isinstance(header, dict):  # joserfc takes a list naming "alg" (the old check answered 500)
        raise EngineError("receipt_invalid")
    app_id = header.get("kid")
    if (
        header.get("alg") != "HS256"
        or set(header) != {"alg", "kid"}
        or not isinstance(app_id, str)
        or not receipts._ID.fullmatch(app_id)
    ):
        raise EngineError("receipt_invalid")
    hs256 = jws.JWSRegistry.algorithms["HS256"]

    def verifies(raw: bytes) -> bool:
        try:
            return jws.verify_compact(signed, hs256, OctKey.import_key(raw))
        except (JoseError, ValueError):
            return False

    if not any(verifies(raw) for raw in keys(app_id)):
        raise EngineError("receipt_invalid")
    try:
        claims = json.loads(signed.payload)
    except (ValueError, UnicodeError, RecursionError):
        raise EngineError("receipt_invalid") from None
    return receipts._claims(app_id, claims, body, now_us)


def outcome(check: Callable[..., receipts.Receipt], token: object) -> object:
    try:
        if check is receipts.verify:
            return receipts.verify(token, BODY, live_secrets, NOW_US)._replace(secret_until_us=None)
        return check(token, BODY, secrets_for, NOW_US)
    except EngineError as refused:
        return refused.code


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def signed_raw(header: bytes, payload: bytes, secret: str = SECRET) -> str:
    """A token of these exact header and payload bytes, signed with `secret`."""
    import hashlib
    import hmac

    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(receipts.decode_secret(secret), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


VALID = receipts.sign(APP, SECRET, CLAIMS)
CRAFTED = {
    "valid": VALID,
    "older secret": receipts.sign(APP, OTHER, CLAIMS),
    "unknown app": receipts.sign("app_unknown", SECRET, CLAIMS),
    "wrong secret": receipts.sign(APP, receipts.new_secret(), CLAIMS),
    "header with spaces": signed_raw(b'{ "alg" : "HS256" , "kid" : "app_ref" }', json.dumps(CLAIMS).encode()),
    "header past 512 bytes": signed_raw(
        b'{"alg":"HS256",' + b" " * 600 + b'"kid":"app_ref"}', json.dumps(CLAIMS).encode()
    ),
    "header without alg": signed_raw(b'{"kid":"app_ref"}', json.dumps(CLAIMS).encode()),
    "header a list": signed_raw(b'["alg","kid"]', json.dumps(CLAIMS).encode()),
    "header a number": signed_raw(b"7", json.dumps(CLAIMS).encode()),
    "header not JSON": signed_raw(b"{alg", json.dumps(CLAIMS).encode()),
    "header not UTF-8": signed_raw(b'{"alg":"\xff"}', json.dumps(CLAIMS).encode()),
    "header b64 false": signed_raw(b'{"alg":"HS256","kid":"app_ref","b64":false}', json.dumps(CLAIMS).encode()),
    "header none": signed_raw(b'{"alg":"none","kid":"app_ref"}', json.dumps(CLAIMS).encode()),
    "header extra": signed_raw(b'{"alg":"HS256","kid":"app_ref","typ":"JWT"}', json.dumps(CLAIMS).encode()),
    "kid not an id": signed_raw(b'{"alg":"HS256","kid":"app ref"}', json.dumps(CLAIMS).encode()),
    "empty payload": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b""),
    "payload not JSON": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b"{claims"),
    "payload NaN": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b'{"amount": NaN}'),
    "payload a list": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b"[1, 2]"),
    "payload not UTF-8": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b'{"typ":"\xff"}'),
    "payload deep": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', b"[" * 100_00 + b"]" * 100_00),
    "claims differ": receipts.sign(APP, SECRET, {**CLAIMS, "amount": 1}),
    "claims big int": signed_raw(b'{"alg":"HS256","kid":"app_ref"}', json.dumps({**CLAIMS, "amount": 2**70}).encode()),
    "claims duplicate": signed_raw(
        b'{"alg":"HS256","kid":"app_ref"}', json.dumps(CLAIMS).encode()[:-1] + b',"amount":1234}'
    ),
    "claims refund": receipts.sign(APP, SECRET, receipts.refund_claims({"amount": 1234}, "ref_1", "pay_1", 1)),
    "iat in the future": receipts.sign(APP, SECRET, {**CLAIMS, "iat": NOW_US // 1_000_000 + 301}),
    "two segments": VALID.rsplit(".", 1)[0],
    "four segments": VALID + ".x",
    "padded signature": VALID + "=",
    "signature with +": VALID[:-1] + "+",
    "not ASCII": VALID[:-1] + "é",
    "too long": VALID + "A" * 4096,
    "empty": "",
    "not a string": 12,
    "none": None,
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_tokens_answer_as_joserfc_does(case: str) -> None:
    token = CRAFTED[case]
    expected = outcome(reference, token)
    assert outcome(receipts.verify, token) == expected
    if case in ("valid", "older secret", "header with spaces", "claims duplicate"):  # the last duplicate counts
        assert expected == receipts.Receipt(APP, "pay_1")
    elif case != "none":
        assert isinstance(expected, str) and expected.startswith("receipt_")


def test_a_receipt_carries_the_end_of_the_secret_that_signed_it() -> None:
    """Checked again when the request is posted (`Submission`, the ledger): a rotated-out secret's
    receipt let in just before the secret's end posts nothing after it."""
    assert receipts.verify(VALID, BODY, live_secrets, NOW_US).secret_until_us is None
    older = receipts.verify(CRAFTED["older secret"], BODY, live_secrets, NOW_US)
    assert older == receipts.Receipt(APP, "pay_1", None, ROTATED_UNTIL_US)


def test_mutated_tokens_answer_as_joserfc_does() -> None:
    """20,000 mutations of valid tokens: characters changed, dropped, doubled or inserted, the
    base64url alphabet and the separators included. The same answer from both, every time."""
    rng = random.Random(11)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ "
    seeds = [VALID, CRAFTED["header with spaces"], CRAFTED["older secret"], CRAFTED["claims refund"]]
    answers: set[object] = set()
    for _ in range(20_000):
        token = list(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(token) + 1)
            kind = rng.randrange(4)
            if kind == 0 and at < len(token):
                token[at] = rng.choice(alphabet)
            elif kind == 1 and at < len(token):
                del token[at]
            elif kind == 2 and at < len(token):
                token.insert(at, token[at])
            else:
                token.insert(at, rng.choice(alphabet))
        text = "".join(token)
        expected = outcome(reference, text)
        assert outcome(receipts.verify, text) == expected, text
        answers.add(expected if isinstance(expected, str) else "accepted")
    # The mutations reach every answer, not one refusal throughout.
    assert {"receipt_invalid", "receipt_mismatch", "accepted"} <= answers


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 300, 2047, 2048, 4096, 10_000])
def test_mac_is_hmac_sha256(length: int) -> None:
    """`_mac` (a copy of a keyed object, kept per secret) gives `hmac.digest`'s HMAC-SHA256 for
    every secret and message length, across hashlib's 2,048-byte threshold; a copy leaves the
    keyed object as it was, so the next check under that secret starts clean."""
    import hmac

    rng = random.Random(length)
    message = bytes(rng.getrandbits(8) for _ in range(length))
    for secret in (SECRET, OTHER, receipts.new_secret()):
        raw = receipts.decode_secret(secret)
        expected = hmac.digest(raw, message, "sha256")
        assert receipts._mac(raw, message) == expected
        assert receipts._mac(raw, message) == expected  # again: the kept object was not fed
    assert receipts._mac(b"k" * 100, message) != receipts._mac(b"k" * 99, message)


def test_receipts_are_signed_byte_for_byte_as_joserfc_signs_them() -> None:
    """`sign` builds the compact JWS itself; joserfc's `serialize_compact` of the same header and
    claims gives the same token, for purchase and refund claims, app ids of every length the id
    pattern allows, every secret, and claims in every script (the payload is UTF-8, not escaped)."""
    rng = random.Random(5)
    words = ["pay_1", "世田谷", "ｶﾌｪ", "e\u0301", "\u2028", "😀", 'a"b\\c', "", "x" * 200]
    for i in range(2_000):
        app_id = rng.choice([APP, "A", "app-" + "x" * rng.randint(0, 50), f"SETAGAYA_PAY_{i}"])
        secret = rng.choice([SECRET, OTHER, receipts.new_secret()])
        claims = receipts.purchase_claims(
            {"wallet_id": rng.choice(words), "merchant_id": f"M{i}", "amount": rng.randint(1, 10**12)},
            rng.choice(words),
            rng.randint(0, 2**40),
        )
        if i % 2:
            claims = receipts.refund_claims({"amount": rng.randint(1, 10**9)}, f"ref_{i}", rng.choice(words), i)
        payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
        key = OctKey.import_key(receipts.decode_secret(secret))
        assert receipts.sign(app_id, secret, claims) == jws.serialize_compact(
            {"alg": "HS256", "kid": app_id}, payload, key
        )


def test_the_payment_app_notes_the_jti_of_each_receipt_the_engine_accepted() -> None:
    """`PaymentApp.accepted` reads the jti back from the receipt it signed; a refund of that
    purchase then names it as `original_jti`, and a refund of a purchase it never saw accepted
    names none of its receipts."""
    app = receipts.PaymentApp(APP, SECRET, now_s=lambda: NOW_US // 1_000_000)
    body = app.sign_purchase(BODY.model_dump(mode="json"), jti="pay_demo_1")
    other = app.sign_purchase(BODY.model_dump(mode="json"))
    app.accepted(body, {"id": "tx_1"})
    app.accepted(other, {"code": "declined"})  # no id: not accepted
    assert app.jti_of == {"tx_1": "pay_demo_1"}
    refund = app.sign_refund({"original_id": "tx_1", "amount": 1})
    claims = json.loads(base64.urlsafe_b64decode(refund["receipt"].split(".")[1] + "=="))
    assert claims["original_jti"] == "pay_demo_1"
    refund_body = {"type": "refund", "original_id": "tx_1", "occurred_at": "2026-12-04T10:00:00+09:00", "amount": 1}
    verified = receipts.verify(refund["receipt"], Refund.model_validate(refund_body), live_secrets, NOW_US)
    assert verified.original_jti == "pay_demo_1"
