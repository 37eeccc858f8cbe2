"""Events and webhooks (SPEC §10).

- `GET /v1/events?after=&types=&limit=` (app, finance): the event feed, oldest first, keyset by
  id; `next_after` is the `after` of the next page (poll with it; an empty page keeps it).
- `POST /v1/webhooks` (admin): register an endpoint (URL, event types); the answer carries the
  signing secret `whsec_...` this once. `GET /v1/webhooks` lists endpoints with their delivery
  counts (pending, delivered, failed), never a secret; `DELETE /v1/webhooks/{id}` stops
  deliveries to one (its pending deliveries end failed).
- `GET /v1/webhook-deliveries?status=failed&after=&limit=` (finance, admin): deliveries given up
  after the retry window, for finance to follow up (also `pending`, `delivered`).
"""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import Field

from api import responses
from api.deps import Admin, DatabaseDep, ServicesDep, role
from api.idempotency import created_once
from api.openapi import AUTHENTICATED, idempotent, problems
from api.strict import PageLimit, PathId, QuerySequence
from engine import events
from engine.errors import EngineError
from engine.events import EventType
from engine.model import Record
from engine.store import events as outbox
from engine.store.config import Principal
from engine.webhooks import URL_CHARS_MAX

router = APIRouter()

After = Annotated[QuerySequence, Query(description="List what comes after this id")]
TYPES_PATTERN = r"^[a-z_]{1,32}(,[a-z_]{1,32}){0,15}$"


class WebhookRequest(Record):
    url: Annotated[str, Field(strict=True, min_length=1, max_length=URL_CHARS_MAX)]
    event_types: Annotated[list[EventType], Field(min_length=1, max_length=len(events.TYPES))]


@router.get(
    "/v1/events",
    responses={200: {"model": responses.EventPage}, **problems(AUTHENTICATED, "invalid_request")},
    response_model=None,
)
def event_feed(
    _: Annotated[Principal, Depends(role("app", "finance"))],
    database: DatabaseDep,
    after: After = 0,
    types: Annotated[
        str | None, Query(pattern=TYPES_PATTERN, description="Comma-separated event types (default: all)")
    ] = None,
    limit: PageLimit = 100,
) -> dict[str, Any]:
    wanted = types.split(",") if types else None
    unknown = sorted(set(wanted or ()) - set(events.TYPES))
    if unknown:
        raise EngineError("invalid_request", f"unknown event types {unknown}; known: {', '.join(events.TYPES)}")
    page = outbox.page(database, after, wanted, limit)
    return {"events": page, "next_after": page[-1]["id"] if page else after}


@router.post(
    "/v1/webhooks",
    status_code=201,
    openapi_extra=idempotent(required=False),
    responses={
        201: {"model": responses.CreatedWebhook, "headers": responses.REPLAYED_HEADER},
        **problems(
            AUTHENTICATED,
            "invalid_request",
            "webhook_url_not_allowed",
            "idempotency_key_invalid",
            "idempotency_key_reused",
        ),
    },
    response_model=None,
)
def create_webhook(
    body: WebhookRequest,
    p: Admin,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> Response:
    """A new endpoint; `secret` signs its deliveries (Standard Webhooks) and is shown this once. With an
    `Idempotency-Key`, made once: a retry gets the same endpoint and secret."""
    return created_once(
        services,
        p,
        idempotency_key,
        "POST /v1/webhooks",
        # The types as the endpoint keeps them (sorted, once each): a retry listing them in another
        # order is the same request.
        body.model_copy(update={"event_types": sorted(set(body.event_types))}),
        "secret",
        lambda once: services.webhooks.create(body.url, body.event_types, actor=p, once=once),
    )


@router.get(
    "/v1/webhooks",
    responses={200: {"model": responses.WebhookViews}, **problems(AUTHENTICATED)},
    response_model=None,
)
def list_webhooks(_: Admin, services: ServicesDep) -> list[dict[str, Any]]:
    return services.webhooks.list()


@router.delete(
    "/v1/webhooks/{webhook_id}",
    responses={200: {"model": responses.WebhookView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    response_model=None,
)
def delete_webhook(webhook_id: PathId, p: Admin, services: ServicesDep) -> dict[str, Any]:
    """Stop deliveries to the endpoint (again: no change); 404 when unknown."""
    return services.webhooks.delete(webhook_id, actor=p)


@router.get(
    "/v1/webhook-deliveries",
    responses={200: {"model": responses.DeliveryPage}, **problems(AUTHENTICATED, "invalid_request")},
    response_model=None,
)
def webhook_deliveries(
    _: Annotated[Principal, Depends(role("finance", "admin"))],
    services: ServicesDep,
    status: Literal["failed", "pending", "delivered"] = "failed",
    after: After = 0,
    limit: PageLimit = 100,
) -> dict[str, Any]:
    page = services.webhooks.deliveries(status, after, limit)
    return {"deliveries": page, "next_after": page[-1]["id"] if page else after}
