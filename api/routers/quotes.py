"""Quotes (SPEC §10, `POST /v1/quotes`): what a purchase would earn now, for the payment app and
terminals. Rated by `Ledger.quote` (the same kernel and state as posting, read-only, no
sequencer lock); writes nothing and promises nothing.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import ConfigDict
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from api import responses_app, strict
from api.deps import ServicesDep, role
from api.openapi import TERMINAL, problems, terminal_headers
from engine.errors import EngineError
from engine.model import Purchase
from engine.quotes import quote_awards
from engine.store.config import Principal
from engine.timeutil import format_instant, to_us

router = APIRouter()


QUOTE_EXAMPLE: JsonDict = {
    "type": "purchase",
    "wallet_id": "W_FUZZ",
    "merchant_id": "M_SHOTEN",
    "terminal_id": "T_SHOTEN_1",
    "occurred_at": "2026-12-01T10:15:00+09:00",
    "amount": 3300,
    "points_used": 0,
    "items": [{"amount": 1100, "tags": ["ethical"]}, {"amount": 2200, "tags": ["local_produce"]}],
}


def _schema(schema: JsonDict) -> None:
    purchase_schema = Purchase.model_config.get("json_schema_extra")
    assert callable(purchase_schema), "a purchase's schema requires its type"
    purchase_schema(schema)  # type: ignore[call-arg]
    schema["examples"] = [QUOTE_EXAMPLE]


class QuoteRequest(Purchase):
    """A purchase body without the payment app's receipt: nothing is paid."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_schema)

    receipt: SkipJsonSchema[None] = None


@router.post(
    "/v1/quotes",
    openapi_extra=terminal_headers(),  # a terminal whose key is registered signs its quotes too (SPEC §9.2)
    responses={
        200: {"model": responses_app.Quote},
        **problems(
            TERMINAL,
            "invalid_request",
            "occurred_at_out_of_range",
            "unknown_merchant",
            "unknown_terminal",
            "insufficient_points",
        ),
    },
    response_model=None,
)
async def post_quote(
    body: Annotated[QuoteRequest, Body()],
    p: Annotated[Principal, Depends(role("app", "terminal"))],
    services: ServicesDep,
) -> dict[str, Any]:
    """The awards this purchase would get if posted now (campaign, points, the cap that bit,
    when credited and until when); a decline answers as posting would. Not a promise.

    A terminal reads no wallet (SPEC §6: the payment app and finance do), so its quotes tell
    nothing of one: it quotes what a purchase earns (`points_used` 0; a quote spending points
    would answer whether the wallet holds that many) and is rated as if the wallet had no
    history, so per-wallet caps bite as for a first purchase (`wallet_caps_applied` false)
    whatever the wallet has earned; the app's quotes apply the wallet's own state."""
    wallet_state = p.role != "terminal"
    if not wallet_state:
        if body.terminal_id != p.terminal_id:
            raise EngineError("forbidden", "a terminal key quotes only for its own terminal")
        if body.points_used:
            raise EngineError("forbidden", "a terminal quotes earning only (points_used 0); the app quotes redemptions")
    now = services.clock.now_us()
    strict.check_occurred_at(services.settings, body.occurred_at, now)
    outcome, catalog = await run_in_threadpool(services.ledger.quote, body, wallet_state)
    terminal_merchant = catalog.merchant_by_terminal.get(body.terminal_id)
    if terminal_merchant != body.merchant_id:
        if p.role == "terminal":
            raise EngineError("forbidden", "a terminal key quotes only for its own merchant")
        if body.merchant_id not in catalog.merchants:
            raise EngineError("unknown_merchant", f"merchant {body.merchant_id} is not known")
        raise EngineError("unknown_terminal", f"terminal {body.terminal_id} is not at merchant {body.merchant_id}")
    if outcome.declined is not None:
        raise EngineError(outcome.declined, "posting this purchase now would be declined")
    return {
        "wallet_id": body.wallet_id,
        "merchant_id": body.merchant_id,
        "terminal_id": body.terminal_id,
        "amount": body.amount,
        "points_used": body.points_used,
        "quoted_at": format_instant(now),
        "wallet_caps_applied": wallet_state,
        "points_awarded": outcome.points_awarded,
        "awards": quote_awards(outcome, catalog.campaigns, to_us(body.occurred_at), now),
    }
