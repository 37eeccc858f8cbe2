"""Expected failures as data: one catalog of error codes, one exception base, one problem document.

`CATALOG` is the one table of every stable `code` the engine and the API answer:
code → (HTTP status, title). The kernel's decline codes (engine.rating), the
ledger's declines (engine.store.ledger), `EngineError` and the API's error
handlers all take their status and title from it, and the OpenAPI document's
`Problem.code` enum is generated from it (api/openapi.py). The API renders
every `EngineError` as RFC 9457 problem+json; the same codes appear in
remembered idempotent answers, so they never change once published.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class ErrorCode(NamedTuple):
    status: int
    title: str


CATALOG: dict[str, ErrorCode] = {
    # -- the request itself (SPEC §2, §6) ------------------------------------
    "invalid_request": ErrorCode(422, "The request is not valid"),
    "malformed_json": ErrorCode(400, "The body is not valid JSON"),
    "body_too_large": ErrorCode(413, "The body is larger than allowed"),
    "header_duplicated": ErrorCode(400, "A header that must appear once was sent more than once"),
    "headers_too_large": ErrorCode(431, "The request line and headers are larger than allowed"),
    "malformed_request": ErrorCode(400, "The request is not valid HTTP"),
    "request_timeout": ErrorCode(408, "The request did not arrive whole in time"),
    "too_many_pipelined": ErrorCode(429, "More requests wait on this connection than allowed"),
    "unsupported_media_type": ErrorCode(
        415, "The body's media type or content coding is not one this route takes (JSON, not encoded)"
    ),
    "batch_too_large": ErrorCode(422, "The batch holds more transactions than allowed"),
    # -- who asks (SPEC §6, §9.2, §9.4) --------------------------------------
    "unauthenticated": ErrorCode(401, "A valid API key is required"),
    "forbidden": ErrorCode(403, "This key may not do that"),
    "signature_required": ErrorCode(401, "This terminal signs its requests (RFC 9421); the signature is missing"),
    "signature_invalid": ErrorCode(401, "The request signature is not valid"),
    "signature_expired": ErrorCode(401, "The request signature was created too far from the engine's clock"),
    "signature_replayed": ErrorCode(401, "The request signature's nonce was used already"),
    "rate_limited": ErrorCode(429, "Too many requests; retry after the number of seconds in Retry-After"),
    # -- resources -------------------------------------------------------------
    "not_found": ErrorCode(404, "No such resource"),
    "already_exists": ErrorCode(409, "The resource exists already"),
    # -- idempotency (SPEC §6) -------------------------------------------------
    "idempotency_key_missing": ErrorCode(400, "An Idempotency-Key header is required"),
    "idempotency_key_invalid": ErrorCode(400, "The Idempotency-Key header is not valid"),
    "idempotency_key_reused": ErrorCode(422, "The Idempotency-Key was used with another request"),
    "request_in_progress": ErrorCode(409, "A request with this Idempotency-Key is in progress"),
    # -- declines: the kernel's (engine.rating.columns.STATUS_CODES) and the ledger's ------
    "unknown_merchant": ErrorCode(422, "The merchant is not known"),
    "unknown_terminal": ErrorCode(422, "The terminal is not known"),
    "original_not_found": ErrorCode(404, "The original purchase is not known"),
    "refund_merchant_mismatch": ErrorCode(422, "The original purchase was made at another merchant"),
    "refund_exceeds_original": ErrorCode(422, "Refunds would exceed the original amount"),
    "budget_exceeded": ErrorCode(422, "The campaign's budget does not cover this"),
    "campaign_merchant_funded": ErrorCode(422, "Points are not granted against a merchant-funded campaign"),
    "insufficient_points": ErrorCode(422, "The wallet does not have enough available points"),
    "occurred_at_out_of_range": ErrorCode(422, "occurred_at is too far in the future or the past"),
    # -- receipts (SPEC §9.1) ----------------------------------------------------
    "receipt_required": ErrorCode(422, "A payment receipt from the payment app is required"),
    "receipt_invalid": ErrorCode(422, "The payment receipt is not valid"),
    "receipt_mismatch": ErrorCode(422, "The payment receipt does not match the transaction"),
    "receipt_already_used": ErrorCode(409, "The payment receipt was used by an accepted transaction"),
    "receipt_in_use": ErrorCode(
        409, "Other transactions carrying this payment receipt were being decided with this one: retry it"
    ),
    "wallet_in_use": ErrorCode(409, "Other transactions of this wallet were being decided with this one: retry it"),
    "app_revoked": ErrorCode(409, "The payment app is revoked"),
    # -- configuration, settlement (SPEC §7, §9.6) ------------------------------------
    "campaign_started": ErrorCode(422, "A started campaign can only end earlier or raise its budget"),
    "too_many_active_campaigns": ErrorCode(422, "As many campaigns as allowed are running or scheduled already"),
    "too_many_item_tags": ErrorCode(
        422, "The campaigns whose windows meet this one's would name more than 64 item tags together"
    ),
    "period_open": ErrorCode(422, "The settlement period has not ended yet"),
    "period_overlaps": ErrorCode(409, "The period overlaps a settled one"),
    "period_out_of_order": ErrorCode(409, "Periods settle in order, each right after the last settled one"),
    "payout_already_settled": ErrorCode(409, "The payout has a different result already"),
    "payout_amount_mismatch": ErrorCode(409, "The result's amount is not the run's payout to that merchant"),
    "reconciliation_in_progress": ErrorCode(409, "A reconciliation is running already; retry when it has ended"),
    "bank_change_not_pending": ErrorCode(409, "No bank account change awaits confirmation"),
    "bank_change_same_key": ErrorCode(403, "A bank account change must be confirmed by a different key"),
    "bank_change_superseded": ErrorCode(409, "The bank account change named is not the one awaiting confirmation"),
    "bank_change_mismatch": ErrorCode(409, "The bank account given is not the one awaiting confirmation"),
    # -- events and webhooks (SPEC §10) -------------------------------------------------
    "webhook_url_not_allowed": ErrorCode(422, "The webhook URL is not allowed (https:// to a public address)"),
    # -- the service -------------------------------------------------------------
    "service_unavailable": ErrorCode(503, "The ledger is not reachable; retry with the same Idempotency-Key"),
    "too_many_connections": ErrorCode(503, "The server holds as many connections as it serves at once; retry shortly"),
    "internal_error": ErrorCode(500, "Internal error"),
    # Starlette's own refusals the API does not map to a code of its own: a method the path
    # does not have (its body's title is Starlette's text, "Method Not Allowed").
    "http_error": ErrorCode(405, "Method Not Allowed"),
}

TITLES = {code: entry.title for code, entry in CATALOG.items()}


def status_of(code: str) -> int:
    """The HTTP status the catalog gives `code` (KeyError for a code not in the catalog)."""
    return CATALOG[code].status


class EngineError(Exception):
    """An expected failure: `EngineError("not_found", "transaction T is not known")`.

    The status is the catalog's; `status=` overrides it where a route really needs another
    (none does today). The older form `EngineError(404, "not_found", ...)` is still accepted,
    its status an override like `status=` (tests/test_error_catalog.py checks that every
    literal status in the code is the catalog's).
    """

    def __init__(self, *args: int | str | None, status: int | None = None, **extra: Any) -> None:
        if args and isinstance(args[0], int):
            status, args = args[0], args[1:]
        code, *rest = args
        detail = rest[0] if rest else extra.pop("detail", None)
        assert isinstance(code, str) and code in CATALOG, code
        assert detail is None or isinstance(detail, str), detail
        super().__init__(detail or TITLES[code])
        self.status = status_of(code) if status is None else status
        self.code = code
        self.detail = detail or TITLES[code]
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return problem(self.status, self.code, self.detail, **self.extra)


def problem(status: int, code: str, detail: str | None = None, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document with our stable `code`; `status` is the catalog's
    (`status_of(code)`) everywhere today."""
    body: dict[str, Any] = {
        "type": f"https://setapay.city.setagaya.example/problems/{code}",
        "title": TITLES[code],
        "status": status,
        "code": code,
        "detail": detail or TITLES[code],
    }
    body.update(extra)
    return body


def decline(code: str, detail: str | None = None, **extra: Any) -> tuple[int, dict[str, Any]]:
    """(status, problem document) of `code`, the status being the catalog's: what a ledger
    decline or an API handler answers without raising (`Result(*decline(...))`)."""
    status = status_of(code)
    return status, problem(status, code, detail, **extra)
