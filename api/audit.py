"""The audit log (SPEC §9.5) and the confirmation of payout account changes (SPEC §9.6).

`GET /v1/audit?from=&to=&target=&cursor=&limit=` (admin, finance) lists entries in
sequence order, keyset-paginated: `next_cursor` is set while more may follow.
`POST /v1/merchants/{id}/bank-account/confirm` (admin, finance) releases a held
payout account change; the key that made the change may not confirm it.
"""

import base64
import datetime as dt
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query

from engine import limits
from engine.errors import EngineError
from engine.store import audit
from engine.timeutil import to_us

TARGET_PATTERN = r"^[A-Za-z0-9_:.\-]{1,200}$"
_CURSOR_PREFIX = "aud"
_SEQUENCE_MAX = 2**63 - 1


def encode_cursor(sequence: int) -> str:
    return base64.urlsafe_b64encode(f"{_CURSOR_PREFIX}:{sequence}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        text_value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        prefix, _, number = text_value.partition(":")
        if prefix != _CURSOR_PREFIX or not re.fullmatch(r"[0-9]{1,19}", number) or int(number) > _SEQUENCE_MAX:
            raise ValueError(cursor)
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise EngineError(422, "invalid_request", "cursor is not valid") from None


# RFC 3339 with an offset (SPEC §2: instants are strings, never numbers).
_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def _instant(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        if not _RFC3339.match(value):
            raise ValueError(value)
        instant = dt.datetime.fromisoformat(value.upper())
        return to_us(instant)
    except (OverflowError, ValueError):
        raise EngineError(422, "invalid_request", f"{name} must be an RFC 3339 instant with an offset") from None


def install(app: FastAPI, role, ledger, config, settings) -> None:
    Reader = Annotated[Any, Depends(role("admin", "finance"))]

    @app.get("/v1/audit")
    def audit_log(_: Reader,
                  from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
                  to: Annotated[str | None, Query(max_length=40)] = None,
                  target: Annotated[str | None, Query(max_length=200, pattern=TARGET_PATTERN)] = None,
                  cursor: Annotated[str | None, Query(max_length=64)] = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 100):
        page, last = audit.entries(ledger.engine, _instant(from_, "from"), _instant(to, "to"), target,
                                   decode_cursor(cursor), limit)
        return {"entries": page, "next_cursor": encode_cursor(last) if last is not None else None}

    @app.post("/v1/merchants/{merchant_id}/bank-account/confirm")
    def confirm_bank_account(merchant_id: str, p: Reader):
        if not re.fullmatch(limits.ID_PATTERN, merchant_id):
            raise EngineError(422, "invalid_request", "merchant id is not valid")
        return config.confirm_bank_account(merchant_id, actor=p)
