"""Expected failures as data: one exception base with an HTTP status and a stable code.

The API renders every `EngineError` as RFC 9457 problem+json; the same codes
appear in remembered idempotent answers, so they never change once published.
"""

from __future__ import annotations

TITLES = {
    "invalid_request": "The request is not valid",
    "malformed_json": "The body is not valid JSON",
    "body_too_large": "The body is larger than allowed",
    "header_duplicated": "A header that must appear once was sent more than once",
    "unauthenticated": "A valid API key is required",
    "forbidden": "This key may not do that",
    "signature_required": "This terminal signs its requests (RFC 9421); the signature is missing",
    "signature_invalid": "The request signature is not valid",
    "signature_expired": "The request signature was created too far from the engine's clock",
    "signature_replayed": "The request signature's nonce was used already",
    "not_found": "No such resource",
    "already_exists": "The resource exists already",
    "idempotency_key_missing": "An Idempotency-Key header is required",
    "idempotency_key_invalid": "The Idempotency-Key header is not valid",
    "idempotency_key_reused": "The Idempotency-Key was used with another request",
    "request_in_progress": "A request with this Idempotency-Key is in progress",
    "unknown_merchant": "The merchant is not known",
    "unknown_terminal": "The terminal is not known",
    "original_not_found": "The original purchase is not known",
    "refund_merchant_mismatch": "The original purchase was made at another merchant",
    "refund_exceeds_original": "Refunds would exceed the original amount",
    "budget_exceeded": "The campaign's budget does not cover this",
    "insufficient_points": "The wallet does not have enough available points",
    "occurred_at_out_of_range": "occurred_at is too far in the future or the past",
    "campaign_started": "A started campaign can only end earlier or raise its budget",
    "service_unavailable": "The ledger is not reachable; retry with the same Idempotency-Key",
    "batch_too_large": "The batch holds more transactions than allowed",
    "period_open": "The settlement period has not ended yet",
    "period_overlaps": "The period overlaps a settled one",
    "period_out_of_order": "Periods settle in order and a later one is settled already",
    "payout_already_settled": "The payout has a different result already",
    "receipt_required": "A payment receipt from the payment app is required",
    "receipt_invalid": "The payment receipt is not valid",
    "receipt_mismatch": "The payment receipt does not match the transaction",
    "receipt_already_used": "The payment receipt was used by an accepted transaction",
    "app_revoked": "The payment app is revoked",
    "bank_change_not_pending": "No bank account change awaits confirmation",
    "bank_change_same_key": "A bank account change must be confirmed by a different key",
    "rate_limited": "Too many requests; retry after the number of seconds in Retry-After",
    "internal_error": "Internal error",
}


class EngineError(Exception):
    def __init__(self, status: int, code: str, detail: str | None = None, **extra) -> None:
        assert code in TITLES, code
        super().__init__(detail or TITLES[code])
        self.status = status
        self.code = code
        self.detail = detail or TITLES[code]
        self.extra = extra

    def problem(self) -> dict:
        return problem(self.status, self.code, self.detail, **self.extra)


def problem(status: int, code: str, detail: str | None = None, **extra) -> dict:
    """An RFC 9457 problem document with our stable `code`."""
    body = {
        "type": f"https://setapay.city.setagaya.example/problems/{code}",
        "title": TITLES[code],
        "status": status,
        "code": code,
        "detail": detail or TITLES[code],
    }
    body.update(extra)
    return body
