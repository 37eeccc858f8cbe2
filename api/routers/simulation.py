"""`POST /v1/campaigns/{id}/simulate` (admin, finance): a draft campaign over a historical window.

The body is {"campaign": <draft campaign record>, "from": instant, "to":
instant}. The draft is validated like a campaign record (a bad one is 422
`invalid_request` naming the field), its id must be the path's, and the
window must be non-empty; the answer is `engine.store.simulate.simulate`'s.
Nothing is written.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field

from api.deps import DatabaseDep, role
from api.openapi import AUTHENTICATED, problems
from api.responses import Simulation
from api.strict import PathId
from engine.errors import EngineError
from engine.model import Campaign, Record, WindowBound
from engine.store import simulate
from engine.store.config import Principal
from engine.timeutil import to_us

router = APIRouter()

Planner = Annotated[Principal, Depends(role("admin", "finance"))]


class SimulateRequest(Record):
    campaign: Campaign
    from_: Annotated[WindowBound, Field(alias="from")]
    to: WindowBound


@router.post(
    "/v1/campaigns/{campaign_id}/simulate",
    responses={200: {"model": Simulation}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def simulate_campaign(campaign_id: PathId, body: SimulateRequest, _: Planner, database: DatabaseDep) -> dict[str, Any]:
    if body.campaign.id != campaign_id:
        raise EngineError(
            "invalid_request",
            "campaign.id must be the campaign of the path",
            errors=[{"loc": ["body", "campaign", "id"], "msg": "differs from the path", "type": "value_error"}],
        )
    if to_us(body.to) <= to_us(body.from_):
        raise EngineError(
            "invalid_request",
            "to must be after from",
            errors=[{"loc": ["body", "to"], "msg": "must be after from", "type": "value_error"}],
        )
    return simulate.simulate(database, body.campaign, to_us(body.from_), to_us(body.to))
