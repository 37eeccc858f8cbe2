"""A wallet's points (SPEC §5): available, pending and expiring, for the payment app and finance."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from api import responses
from api.deps import DatabaseDep, role
from api.openapi import AUTHENTICATED, problems
from api.strict import PathId
from engine.store import queries
from engine.store.config import Principal

router = APIRouter()


@router.get(
    "/v1/wallets/{wallet_id}/points",
    responses={200: {"model": responses.WalletPoints}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def wallet_points(
    wallet_id: PathId, p: Annotated[Principal, Depends(role("app", "finance"))], database: DatabaseDep
) -> dict[str, Any]:
    return queries.wallet_detail(database, wallet_id)
