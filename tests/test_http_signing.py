"""The client signer (engine/http_signing.py) against RFC 9421 and against the server's verifier.

The signer builds signature bases by hand for speed; RFC 9421 Appendix B.2.6
(Ed25519 is deterministic) pins it to the standard byte for byte, and the
round trips pin it to the `http-message-signatures` package the server uses.
"""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import (
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from starlette.requests import Request

from api.signatures import TerminalSignatures
from engine import http_signing
from engine.clock import SystemClock
from engine.errors import EngineError

# RFC 9421 Appendix B.1.4, test-key-ed25519 (JWK "d" and "x", base64url).
RFC_SEED = base64.urlsafe_b64decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU=")
RFC_PUBLIC = base64.urlsafe_b64decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs=")


def test_rfc9421_b26_signature_is_reproduced_exactly():
    key = http_signing.private_key_from(RFC_SEED)
    assert base64.b64decode(http_signing.public_key_b64(key)) == RFC_PUBLIC
    values = [
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("@method", "POST"),
        ("@path", "/foo"),
        ("@authority", "example.com"),
        ("content-type", "application/json"),
        ("content-length", "18"),
    ]
    params = http_signing.signature_params(
        [n for n, _ in values], [("created", 1618884473), ("keyid", "test-key-ed25519")]
    )
    headers = http_signing.sign_base(key, "sig-b26", http_signing.signature_base(values, params), params)
    assert headers == {
        "Signature-Input": 'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
        ';created=1618884473;keyid="test-key-ed25519"',
        "Signature": "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPp"
        "BKRCw==:",
    }


def test_rfc9530_content_digest():
    # RFC 9530 Appendix B.1: {"hello": "world"}\n
    assert (
        http_signing.content_digest(b'{"hello": "world"}\n') == "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    )


class _Key(HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_public_key(self, key_id):
        return self.key


class _Message:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers


@pytest.mark.parametrize(
    "target,body,idempotency",
    [
        ("/v1/transactions", b'{"type": "purchase"}', True),
        ("/v1/transactions/batch", b'{"transactions": []}', False),
        ("/v1/transactions/P1?expand=awards&x=%20y", None, False),
        ("/v1/wallets/W1/points", b"", False),
    ],
)
def test_signed_requests_verify_with_the_package(target, body, idempotency):
    key = Ed25519PrivateKey.generate()
    headers = {"Idempotency-Key": "k-1"} if idempotency else {}
    added = http_signing.sign_request(key, "T1", "POST" if body else "GET", target, headers, body)
    assert ("Content-Digest" in added) == bool(body)
    message = _Message("POST" if body else "GET", "http://x.example" + target, {**headers, **added})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=_Key(key.public_key()))
    (result,) = verifier.verify(message, body=body or b"")
    covered = [c for c in result.covered_components if c != '"@signature-params"']
    assert covered == [f'"{c}"' for c in http_signing.covered_components("?" in target, bool(body), idempotency)]
    assert list(result.parameters) == ["created", "keyid", "nonce", "alg"]
    assert result.label == "sig1" and 16 <= len(result.nonce) <= 64


def _request(method: str, target: str, headers: dict, body: bytes) -> Request:
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


class _Config:
    def __init__(self, public_b64):
        self.public_b64 = public_b64

    def terminal_public_key(self, terminal_id):
        return self.public_b64 if terminal_id == "T1" else None

    def terminal_public_keys(self, terminal_ids):  # the cache's refresher asks this
        return {t: self.terminal_public_key(t) for t in terminal_ids}


class _Nonces:
    def __init__(self):
        self.seen = set()

    async def claim(self, terminal_id, nonce, now_us):
        fresh = (terminal_id, nonce) not in self.seen
        self.seen.add((terminal_id, nonce))
        return fresh


def _code(signatures, request) -> str | None:
    try:
        asyncio.run(signatures.verify(request, "T1"))
    except EngineError as exc:
        return exc.code
    return None


def test_the_server_path_accepts_the_signer_and_names_each_failure():
    """The same checks as the HTTP tests, in process, for quick feedback on each rule."""
    key = Ed25519PrivateKey.generate()
    signatures = TerminalSignatures(_Config(http_signing.public_key_b64(key)), _Nonces(), SystemClock())
    body = b'{"amount": 1100}'

    def signed(target="/v1/transactions", body=body, headers=None, **kw):
        headers = {"Idempotency-Key": "k1"} if headers is None else headers
        return {**headers, **http_signing.sign_request(key, "T1", "POST", target, headers, body, **kw)}

    ok = signed()
    assert _code(signatures, _request("POST", "/v1/transactions", ok, body)) is None
    assert _code(signatures, _request("POST", "/v1/transactions", ok, body)) == "signature_replayed"
    assert _code(signatures, _request("POST", "/v1/transactions?a=1", signed("/v1/transactions?a=1"), body)) is None
    assert (
        _code(signatures, _request("POST", "/v1/transactions", {"Idempotency-Key": "k1"}, body)) == "signature_required"
    )
    assert _code(signatures, _request("POST", "/v1/transactions", signed(), body + b" ")) == "signature_invalid"
    assert _code(signatures, _request("POST", "/v1/transactions?a=1", signed(), body)) == "signature_invalid"
    assert _code(signatures, _request("POST", "/v1/transactions", signed(nonce="short"), body)) == "signature_invalid"
    other = http_signing.sign_request(key, "T2", "POST", "/v1/transactions", {"Idempotency-Key": "k1"}, body)
    assert (
        _code(signatures, _request("POST", "/v1/transactions", {"Idempotency-Key": "k1", **other}, body))
        == "signature_invalid"
    )
    # Signed without covering the Idempotency-Key it sends.
    uncovered = {"Idempotency-Key": "k1", **http_signing.sign_request(key, "T1", "POST", "/v1/transactions", {}, body)}
    assert _code(signatures, _request("POST", "/v1/transactions", uncovered, body)) == "signature_invalid"
    now = int(time.time())
    assert (
        _code(signatures, _request("POST", "/v1/transactions", signed(created=now - 301), body)) == "signature_expired"
    )
    assert (
        _code(signatures, _request("POST", "/v1/transactions", signed(created=now + 301), body)) == "signature_expired"
    )
    assert _code(signatures, _request("POST", "/v1/transactions", signed(created=now - 290), body)) is None
    # A terminal without a key is bearer-only.
    asyncio.run(signatures.verify(_request("POST", "/v1/transactions", {}, body), "T2"))


@pytest.mark.parametrize(
    "value,accepted",
    [
        (base64.b64encode(RFC_PUBLIC).decode(), True),
        ("not base64!", False),
        (base64.b64encode(RFC_PUBLIC[:31]).decode(), False),
        (base64.b64encode(RFC_PUBLIC + b"\0").decode(), False),
        (base64.b64encode(bytes(32)).decode(), False),  # small order (x² = -1)
        (base64.b64encode((1).to_bytes(32, "little")).decode(), False),  # the identity
        (base64.b64encode(b"\xff" * 32).decode(), False),  # y ≥ p
        (base64.b64encode((2).to_bytes(32, "little")).decode(), False),  # no x for y = 2
    ],
)
def test_public_keys_are_checked(value, accepted):
    if accepted:
        assert http_signing.parse_public_key(value) == value
    else:
        with pytest.raises(ValueError):
            http_signing.parse_public_key(value)


def test_random_keys_are_accepted():
    for _ in range(20):
        key = Ed25519PrivateKey.generate()
        assert http_signing.parse_public_key(http_signing.public_key_b64(key))


def test_a_terminal_key_that_cannot_be_looked_up_is_a_503_not_a_500():
    """The database went away (a pool dropped, PostgreSQL restarting) while a terminal's key was
    not cached: the terminal gets a 503 it retries, as for every other read of the request."""
    from engine.store import db
    from engine.store.config import Config

    nowhere = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing_listens_here")
    try:
        signatures = TerminalSignatures(Config(nowhere), _Nonces(), SystemClock())
        assert _code(signatures, _request("POST", "/v1/transactions", {"Idempotency-Key": "k1"}, b"{}")) == (
            "service_unavailable"
        )
    finally:
        nowhere.dispose()
