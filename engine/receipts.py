"""Payment receipts (SPEC §9.1): the payment app's signed word for a purchase or refund.

The payment app's backend moves the coins; a terminal that posts a purchase or
refund must carry the app's receipt for it, a JWS compact serialization
(RFC 7515) signed with HMAC-SHA256 under one of the app's receipt secrets.
The receipt binds what the terminal cannot be trusted with: the wallet, the
merchant, the amount and the points used. Its `jti` (the app's payment or
refund id) is accepted once per app (the ledger checks it under its lock and
the database holds a unique constraint on it).

This module is pure: it signs (for the payment app, the demo, tests and
benchmarks) and checks a token against a body. Finding the app's secrets is
the caller's business (`secrets_for`); checking the `jti` against the ledger
and a refund's `original_jti` against the original purchase happens in the
ledger, which is the only place that knows them.

Codes (all 422, none remembered under the idempotency key):
`receipt_required` (no receipt), `receipt_invalid` (unknown or revoked app, bad
signature, anything malformed), `receipt_mismatch` (a claim differs from the body).
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import re
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeGuard

import orjson
from joserfc import jws
from joserfc.util import json_b64decode, urlsafe_b64decode

from engine import limits
from engine.errors import EngineError
from engine.model import Purchase, Refund

SECRET_BYTES = 32
ALGORITHM = "HS256"
# `iat` may be at most this far after the engine's clock; it is not otherwise
# checked, so an offline backlog can be uploaded later (SPEC §9.1).
IAT_MAX_FUTURE_S = 300
_ID = re.compile(limits.ID_PATTERN)
_HEADER_BYTES_MAX = jws.JWSRegistry.max_header_length  # joserfc's own bound on a protected header
_PURCHASE_CLAIMS = frozenset({"typ", "jti", "wallet_id", "merchant_id", "amount", "points_used", "iat"})
_REFUND_CLAIMS = frozenset({"typ", "jti", "original_jti", "amount", "iat"})


class Receipt(NamedTuple):
    """A verified receipt: which app vouched for the transaction, under which id. A NamedTuple,
    immutable and cheap to make: the history import makes one per line."""

    app_id: str
    jti: str
    original_jti: str | None = None  # refunds: the purchase receipt's jti
    # The end of the secret that signed it, when that secret was rotated out (None: a current
    # secret's): checked again when the request is posted, as a key's expiry is.
    secret_until_us: int | None = None


def new_secret() -> str:
    """A fresh receipt secret: 32 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(SECRET_BYTES)).decode().rstrip("=")


def decode_secret(secret: str) -> bytes:
    raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    if len(raw) != SECRET_BYTES:
        raise ValueError(f"a receipt secret decodes to {SECRET_BYTES} bytes")
    return raw


def sign(app_id: str, secret: str, claims: Mapping[str, object]) -> str:
    """A receipt for `claims`, signed as the payment app does: the compact serialization of RFC 7515
    with the protected header `{"alg":"HS256","kid":"<app id>"}` and the claims as compact JSON.
    Built here as `verify` reads it (joserfc's `serialize_compact` took ~10 us a receipt, and the
    demo signs one for every purchase and refund it posts); `tests/test_receipts.py` holds every
    receipt byte for byte equal to joserfc's."""
    payload = _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
    signing_input = _header_segment(app_id) + b"." + payload
    return (signing_input + b"." + _b64url(_mac(_raw_secret(secret), signing_input))).decode("ascii")


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


@functools.lru_cache(maxsize=256)
def _header_segment(app_id: str) -> bytes:
    """The protected header of every receipt `app_id` signs, encoded (joserfc's JSON: compact, in order)."""
    return _b64url(json.dumps({"alg": ALGORITHM, "kid": app_id}, separators=(",", ":")).encode())


@functools.lru_cache(maxsize=256)
def _raw_secret(secret: str) -> bytes:
    return decode_secret(secret)


def purchase_claims(body: Mapping[str, Any], jti: str, iat: int) -> dict[str, Any]:
    return {
        "typ": "purchase",
        "jti": jti,
        "wallet_id": body["wallet_id"],
        "merchant_id": body["merchant_id"],
        "amount": body["amount"],
        "points_used": body.get("points_used", 0),
        "iat": iat,
    }


def refund_claims(body: Mapping[str, Any], jti: str, original_jti: str, iat: int) -> dict[str, Any]:
    return {"typ": "refund", "jti": jti, "original_jti": original_jti, "amount": body["amount"], "iat": iat}


class PaymentApp:
    """The payment app's side of receipts, for the demo, tests, benchmarks and load tests.

    It signs each purchase under a new payment id and remembers which id it gave
    each transaction the engine accepted (`accepted`), so a refund names its
    purchase's receipt as the real app would.
    """

    def __init__(self, app_id: str, secret: str, now_s: Callable[[], int] | None = None) -> None:
        import time

        self.app_id = app_id
        self.secret = secret
        self.now_s = now_s or (lambda: int(time.time()))
        self.jti_of: dict[str, str] = {}  # engine transaction id -> the jti of its receipt

    def sign_purchase(self, body: Mapping[str, Any], jti: str | None = None) -> dict[str, Any]:
        """`body` with a receipt for it (a new payment id unless `jti` is given)."""
        jti = jti or "pay_" + uuid.uuid4().hex
        return {**body, "receipt": sign(self.app_id, self.secret, purchase_claims(body, jti, self.now_s()))}

    def sign_refund(
        self, body: Mapping[str, Any], original_jti: str | None = None, jti: str | None = None
    ) -> dict[str, Any]:
        """`body` with a receipt naming its purchase's receipt (looked up from `accepted` when not given)."""
        original_jti = original_jti or self.jti_of.get(body["original_id"]) or "pay_unknown"
        jti = jti or "ref_" + uuid.uuid4().hex
        return {**body, "receipt": sign(self.app_id, self.secret, refund_claims(body, jti, original_jti, self.now_s()))}

    def sign_body(self, body: dict[str, Any]) -> dict[str, Any]:
        if "receipt" in body:
            return body
        return self.sign_purchase(body) if body.get("type", "purchase") == "purchase" else self.sign_refund(body)

    def accepted(self, body: Mapping[str, Any], answer: Mapping[str, Any]) -> None:
        """Note the engine's id for a transaction this app signed (call it with 201 answers)."""
        receipt = body.get("receipt")
        if receipt and "id" in answer:
            # A receipt this app signed: its claims are the second segment (no check needed).
            self.jti_of[answer["id"]] = orjson.loads(urlsafe_b64decode(receipt.split(".")[1].encode()))["jti"]


def _invalid(detail: str) -> EngineError:
    return EngineError("receipt_invalid", detail)


def _mismatch(claim: str) -> EngineError:
    return EngineError("receipt_mismatch", f"the receipt's {claim} differs from the transaction")


def verify(
    token: str | None,
    body: Purchase | Refund,
    secrets_for: Callable[[str], Sequence[tuple[bytes, int | None]]],
    now_us: int,
) -> Receipt:
    """The receipt of `body`, checked: signed by a live secret of its app, claims equal to the body.

    `secrets_for(app_id)` gives the app's secrets valid now (none for an unknown or
    revoked app), each with its end (None: not rotated out), which the receipt carries
    (`Receipt.secret_until_us`). Raises `EngineError` with the codes of SPEC §9.1.
    """
    if token is None:
        raise EngineError("receipt_required")
    if not isinstance(token, str) or len(token) > limits.RECEIPT_CHARS_MAX or not token.isascii():
        raise _invalid("the receipt is not a compact JWS")
    segments = token.encode("ascii").split(b".")
    if len(segments) != 3:
        raise _invalid("the receipt is not a compact JWS")
    header, payload, signature = segments
    app_id = _app_of_header(header)
    try:
        claims_json = urlsafe_b64decode(payload)
        mac = urlsafe_b64decode(signature)
    except ValueError:  # binascii.Error included
        raise _invalid("the receipt is not a compact JWS") from None
    signing_input = header + b"." + payload
    until: int | None = None  # the signing secret's end
    for raw, ends in secrets_for(app_id):
        if hmac.compare_digest(_mac(raw, signing_input), mac):
            until = ends
            break
    else:
        raise _invalid("the receipt's signature does not verify under a live secret of its app")
    try:
        # orjson: 0.4 us against json's 2.3 a receipt, and only a token the app's own secret signed
        # gets here. What it refuses (NaN, a number too large for a double, bad UTF-8, a byte-order
        # mark) is a ValueError: receipt_invalid. An integer beyond 64 bits comes back a float, which
        # the claims' checks refuse as they refused it as an int (receipt_invalid or _mismatch).
        claims = orjson.loads(claims_json)
    except (ValueError, UnicodeError, RecursionError):
        raise _invalid("the receipt's claims are not JSON") from None
    return _claims(app_id, claims, body, now_us, until)


@functools.lru_cache(maxsize=256)
def _keyed(raw: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with the secret `raw`, copied for each check (`_mac`)."""
    return hmac.new(raw, digestmod="sha256")


def _mac(raw: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 of `message` under `raw`, computed holding the interpreter lock. `hmac.digest`
    lets go of the lock while it hashes; on a serving process's event loop, taking it back can wait
    for another thread's switch interval (up to 5 ms, behind a busy thread), and every request on the
    loop waits with it. A copy of a keyed object hashes a message shorter than 2,048 bytes (hashlib's
    threshold; a receipt is a few hundred) without letting go, in about the same time.
    `tests/test_receipts.py` holds the two equal."""
    keyed = _keyed(raw).copy()
    keyed.update(message)
    return keyed.digest()


@functools.lru_cache(maxsize=1024)
def _app_of_header(segment: bytes) -> str:
    """The app id a receipt's protected header names, the header checked: decoded as joserfc
    decodes it (`json_b64decode`), exactly `{"alg": "HS256", "kid": "<app id>"}`. Every receipt
    of one app carries the same header segment, so it is decoded once (a refusal is not kept)."""
    if len(segment) > _HEADER_BYTES_MAX:
        raise _invalid("the receipt is not a compact JWS")
    try:
        header = json_b64decode(segment)
    except (ValueError, UnicodeError, RecursionError):  # binascii.Error and JSON errors included
        raise _invalid("the receipt is not a compact JWS") from None
    if not isinstance(header, dict):
        raise _invalid("the receipt is not a compact JWS")
    app_id = header.get("kid")
    if (
        header.get("alg") != ALGORITHM
        or set(header) != {"alg", "kid"}
        or not isinstance(app_id, str)
        or not _ID.fullmatch(app_id)
    ):
        raise _invalid('the receipt header must be {"alg": "HS256", "kid": "<app id>"}')
    return app_id


def _int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _claims(
    app_id: str, claims: object, body: Purchase | Refund, now_us: int, secret_until_us: int | None = None
) -> Receipt:
    if not isinstance(claims, dict):
        raise _invalid("the receipt's claims are not an object")
    expected = _PURCHASE_CLAIMS if claims.get("typ") == "purchase" else _REFUND_CLAIMS
    if claims.get("typ") not in ("purchase", "refund") or set(claims) != expected:
        raise _invalid(f"a {claims.get('typ')} receipt has exactly the claims {sorted(expected)}")
    jti = claims["jti"]
    if not isinstance(jti, str) or not _ID.fullmatch(jti):
        raise _invalid("the receipt's jti is not a valid id")
    iat = claims["iat"]
    if not _int(iat) or iat < 0:
        raise _invalid("the receipt's iat is not Unix seconds")
    if iat * 1_000_000 > now_us + IAT_MAX_FUTURE_S * 1_000_000:
        raise _invalid(f"the receipt's iat is more than {IAT_MAX_FUTURE_S} s after the engine's clock")
    if claims["typ"] != body.type:
        raise _mismatch("typ")
    for claim in ("amount",) + (("wallet_id", "merchant_id", "points_used") if body.type == "purchase" else ()):
        value = claims[claim]
        if (claim in ("amount", "points_used") and not _int(value)) or value != getattr(body, claim):
            raise _mismatch(claim)
    original_jti = None
    if body.type == "refund":
        original_jti = claims["original_jti"]
        if not isinstance(original_jti, str) or not _ID.fullmatch(original_jti):
            raise _invalid("the receipt's original_jti is not a valid id")
    return Receipt(app_id, jti, original_jti, secret_until_us)
