"""The audit log (SPEC §9.5) and the confirmation of payout account changes (SPEC §9.6).

`GET /v1/audit?from=&to=&target=&cursor=&limit=` (admin, finance) lists entries in
sequence order, keyset-paginated: `next_cursor` is set while more may follow.
`POST /v1/merchants/{id}/bank-account/confirm` (admin, finance) releases a held
payout account change, the one its body names by the new account's `set_at` (in the audit
entry `merchant.bank_account.change`; an admin also sees it on the merchant); the key that made
the change may not confirm it, and a change made since the confirming key read it is not
released by it (409 `bank_change_superseded`).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query

from api import strict
from api.deps import ConfigDep, DatabaseDep, role
from api.openapi import AUTHENTICATED, problems
from api.responses import AuditPage, MerchantView
from api.strict import Cursor, PageLimit, PathId, window
from engine.model import BankAccount, Instant, Record, WindowBound
from engine.store import audit
from engine.store.config import Principal
from engine.timeutil import to_us

router = APIRouter()

TARGET_PATTERN = r"^[A-Za-z0-9_:.\-]{1,200}$"
_CURSOR_PREFIX = "aud"

Reader = Annotated[Principal, Depends(role("admin", "finance"))]


class BankChangeConfirmation(Record):
    """The change confirmed: the new account's `set_at` as the confirming key read it (the audit
    entry `merchant.bank_account.change`, `after.bank_account.set_at`), so a change made after
    that read is never released unseen; and the whole account, as the merchant gave it to the
    confirming person (its application, by another channel than the changer), which must be the
    account awaiting confirmation (409 `bank_change_mismatch`). The engine only ever shows an account
    masked (bank, branch, last four digits), so without it a change to another account of the same
    branch and last digits looked the same as the one on file, and was confirmed blind."""

    set_at: Instant
    bank_account: BankAccount


def encode_cursor(sequence: int) -> str:
    return strict.encode_cursor(_CURSOR_PREFIX, sequence)


def decode_cursor(cursor: str | None) -> int:
    return strict.decode_cursor(_CURSOR_PREFIX, cursor)


@router.get(
    "/v1/audit",
    responses={200: {"model": AuditPage}, **problems(AUTHENTICATED, "invalid_request")},
    response_model=None,
)
def audit_log(
    _: Reader,
    database: DatabaseDep,
    from_: Annotated[WindowBound | None, Query(alias="from")] = None,
    to: Annotated[WindowBound | None, Query()] = None,
    target: Annotated[str | None, Query(max_length=200, pattern=TARGET_PATTERN)] = None,
    cursor: Cursor = None,
    limit: PageLimit = 100,
) -> dict[str, Any]:
    page, last = audit.entries(database, *window(from_, to), target, decode_cursor(cursor), limit)
    return {"entries": page, "next_cursor": encode_cursor(last) if last is not None else None}


@router.post(
    "/v1/merchants/{merchant_id}/bank-account/confirm",
    responses={
        200: {"model": MerchantView},
        **problems(
            AUTHENTICATED,
            "invalid_request",
            "not_found",
            "bank_change_not_pending",
            "bank_change_same_key",
            "bank_change_superseded",
            "bank_change_mismatch",
        ),
    },
    response_model=None,
)
def confirm_bank_account(
    merchant_id: PathId, body: Annotated[BankChangeConfirmation, Body()], p: Reader, config: ConfigDep
) -> dict[str, Any]:
    return config.confirm_bank_account(merchant_id, to_us(body.set_at), body.bank_account, actor=p)
