"""What a merchant reads about itself: its reward status and its transactions, keyset-paginated.

A merchant key reads only its own merchant; a finance key reads any. The merchant
records themselves are admin configuration (api/routers/configuration.py).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from api import responses
from api.deps import DatabaseDep, merchant_scope, role
from api.openapi import AUTHENTICATED, problems
from api.strict import Cursor, PageLimit, PathId, decode_cursor, encode_cursor, window
from engine.model import WindowBound
from engine.store import queries
from engine.store.config import Principal

router = APIRouter()

_CURSOR_PREFIX = "seq"  # a merchant's transactions, by payment sequence

MerchantReader = Annotated[Principal, Depends(role("merchant", "finance"))]


@router.get(
    "/v1/merchants/{merchant_id}/rewards",
    responses={
        200: {"model": responses.MerchantRewards},
        **problems(AUTHENTICATED, "invalid_request", "not_found"),
    },
    response_model=None,
)
def merchant_rewards(
    merchant_id: PathId,
    p: MerchantReader,
    database: DatabaseDep,
    from_: Annotated[WindowBound | None, Query(alias="from")] = None,
    to: Annotated[WindowBound | None, Query()] = None,
) -> dict[str, Any]:
    merchant_scope(p, merchant_id)
    return queries.merchant_rewards(database, merchant_id, *window(from_, to))


@router.get(
    "/v1/merchants/{merchant_id}/transactions",
    responses={
        200: {"model": responses.MerchantTransactions},
        **problems(AUTHENTICATED, "invalid_request", "not_found"),
    },
    response_model=None,
)
def merchant_transactions(
    merchant_id: PathId,
    p: MerchantReader,
    database: DatabaseDep,
    from_: Annotated[WindowBound | None, Query(alias="from")] = None,
    to: Annotated[WindowBound | None, Query()] = None,
    cursor: Cursor = None,
    limit: PageLimit = 100,
) -> dict[str, Any]:
    merchant_scope(p, merchant_id)
    page, last = queries.merchant_transactions(
        database, merchant_id, *window(from_, to), decode_cursor(_CURSOR_PREFIX, cursor), limit
    )
    return {"transactions": page, "next_cursor": encode_cursor(_CURSOR_PREFIX, last) if last is not None else None}
