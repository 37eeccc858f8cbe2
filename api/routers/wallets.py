"""A wallet's points and history (SPEC §5, §6, §10), for the payment app and finance."""

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response

from api import responses, responses_app
from api.deps import DatabaseDep, ServicesDep, role
from api.openapi import AUTHENTICATED, problems
from api.strict import Cursor, PageLimit, PathId, decode_cursor, encode_cursor
from engine.store import history, queries
from engine.store.config import Principal

router = APIRouter()

_HISTORY_CURSOR = "hist"  # a wallet's history, by posting sequence (older than)

WalletReader = Annotated[Principal, Depends(role("app", "finance"))]


@router.get(
    "/v1/wallets/{wallet_id}/points",
    responses={200: {"model": responses.WalletPoints}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def wallet_points(wallet_id: PathId, p: WalletReader, services: ServicesDep) -> dict[str, Any]:
    return queries.wallet_detail(services.engine, wallet_id, services.clock.now_us())


@router.get(
    "/v1/wallets/{wallet_id}/history",
    responses={200: {"model": responses_app.WalletHistory}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def wallet_history(
    wallet_id: PathId, p: WalletReader, database: DatabaseDep, cursor: Cursor = None, limit: PageLimit = 50
) -> Response:
    """Every event of the wallet, newest first, keyset-paginated: a page never shifts as new events arrive."""
    # A cursor names the posting sequence the next page lies below (`hist:0`, below the first: none).
    before = None if cursor is None else decode_cursor(_HISTORY_CURSOR, cursor)
    events, older_than = history.wallet_history(database, wallet_id, before, limit)
    body = {
        "wallet_id": wallet_id,
        "events": events,
        "next_cursor": encode_cursor(_HISTORY_CURSOR, older_than) if older_than is not None else None,
    }
    # Plain JSON values already: dumped as they are, without FastAPI's per-value encoder.
    return Response(json.dumps(body, ensure_ascii=False), media_type="application/json")
