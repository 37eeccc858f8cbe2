"""The payment app's part in the tests: receipts on every purchase and refund a terminal posts.

SPEC §9.1: the payment app's backend moves the coins and signs a receipt for
each purchase and refund; the terminal carries it. Tests that are about
something else (rating, idempotency, lifecycle, settlement) post through a
terminal client whose transport plays the app: it signs every transaction body
that has no receipt yet, with the app's secret registered by `setapay apps add`,
and notes which receipt each accepted transaction carried so a later refund
names its purchase's receipt, exactly as the real app does.

Signing is deterministic: the same idempotency key and body always get the same
receipt (a retry is the same request, as SPEC §6 needs), and `iat` is the
instant the test's app was made. Tests about receipts themselves build their
own with `PaymentApp.sign_purchase` / `sign_refund` or post without one.
"""

from __future__ import annotations

import hashlib
import json

import httpx

from engine.receipts import PaymentApp

TRANSACTION_PATHS = ("/v1/transactions", "/v1/transactions/batch")
TEST_APP_ID = "SETAPAY_TEST_APP"


# Every test receipt says it was issued at this instant (2026-01-01T00:00:00Z): a retry signs
# identically, and it is before every clock the tests set (SPEC §9.1 only bounds `iat` from above).
TEST_IAT = 1_767_225_600


def payment_app(app_id: str, secret: str) -> PaymentApp:
    """A test's payment app: receipts issued at one instant, so a retry signs identically."""
    return PaymentApp(app_id, secret, now_s=lambda: TEST_IAT)


def register_in_process(app) -> PaymentApp:
    """The test payment app registered on an in-process application's database."""
    return payment_app(TEST_APP_ID, app.state.apps.add(TEST_APP_ID))


def _jti(prefix: str, idempotency_key: str, body: dict) -> str:
    digest = hashlib.sha256((idempotency_key + "\x1f" + json.dumps(body, sort_keys=True)).encode()).hexdigest()
    return f"{prefix}_{digest[:40]}"


def sign_item(app: PaymentApp, body, idempotency_key: str):
    """`body` with a deterministic receipt, or as it was when it is not a transaction we can sign
    (malformed bodies must reach the engine as the test wrote them)."""
    if not isinstance(body, dict) or "receipt" in body:
        return body
    try:
        if body.get("type", "purchase") == "purchase":
            return app.sign_purchase(body, jti=_jti("pay", idempotency_key, body))
        if body.get("type") == "refund":
            return app.sign_refund(body, jti=_jti("ref", idempotency_key, body))
    except (KeyError, TypeError, AttributeError):
        pass
    return body


def sign_payload(app: PaymentApp, payload, batch: bool, seed: str, idempotency_key: str = ""):
    """A single or batch transaction payload with receipts on every item that has none
    (the same object when there was nothing to sign)."""
    if batch:
        if not (isinstance(payload, dict) and isinstance(payload.get("transactions"), list)):
            return payload
        items = [
            sign_item(
                app, {k: v for k, v in item.items() if k != "idempotency_key"}, seed + str(item.get("idempotency_key"))
            )
            | {"idempotency_key": item["idempotency_key"]}
            if isinstance(item, dict) and "idempotency_key" in item and "receipt" not in item
            else item
            for item in payload["transactions"]
        ]
        return payload if items == payload["transactions"] else {**payload, "transactions": items}
    return sign_item(app, payload, seed + idempotency_key)


def _answered(app: PaymentApp, body, status: int, answer) -> None:
    if status == 201 and isinstance(body, dict) and isinstance(answer, dict):
        app.accepted(body, answer)


class SigningTransport(httpx.BaseTransport):
    """An httpx transport that plays the payment app for a terminal client."""

    def __init__(self, app: PaymentApp, inner: httpx.BaseTransport | None = None) -> None:
        self.app = app
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path not in TRANSACTION_PATHS:
            return self.inner.handle_request(request)
        try:
            payload = json.loads(request.read())
        except (ValueError, RecursionError):
            return self.inner.handle_request(request)
        batch = request.url.path.endswith("/batch")
        signed_payload = payload
        # The terminal's credential is part of the seed: two terminals may use one idempotency key.
        seed = request.headers.get("Authorization", "") + "\x1f"
        batch = request.url.path.endswith("/batch")
        signed_payload = sign_payload(self.app, payload, batch, seed, request.headers.get("Idempotency-Key", ""))
        if signed_payload is payload:  # nothing to sign: the request goes out byte for byte as written
            signed = request
        else:
            headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
            signed = httpx.Request(
                request.method,
                request.url,
                headers=headers,
                content=json.dumps(signed_payload, ensure_ascii=False).encode(),
                extensions=request.extensions,
            )
        payload = signed_payload
        response = self.inner.handle_request(signed)
        if response.status_code in (200, 201):
            response.read()
            with_answer = response.json() if response.content else None
            if batch and isinstance(with_answer, dict):
                for item, result in zip(payload["transactions"], with_answer.get("results", [])):
                    _answered(self.app, item, result.get("status"), result.get("body"))
            elif not batch:
                _answered(self.app, payload, response.status_code, with_answer)
        return response

    def close(self) -> None:
        self.inner.close()
