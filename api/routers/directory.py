"""The directory (SPEC §10): where residents earn points. Merchants with class, 商店街, ethical
certifications valid now and the campaigns they earn in; running campaigns with their public
terms and remaining budget share. For the payment app's key, or anyone when the ward publishes
it (`SETAPAY_DIRECTORY_PUBLIC=1`). Cacheable: a strong ETag over the body (If-None-Match → 304)
and Cache-Control, private unless published.
"""

import datetime as dt
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from api import responses_app
from api.deps import ServicesDep, principal
from api.openapi import AUTHENTICATED, BEARER, problems
from api.strict import Cursor, PageLimit, QueryBool, decode_id_cursor, encode_cursor
from engine import directory, limits
from engine.errors import EngineError
from engine.model import MerchantClass
from engine.store.config import Principal
from engine.store.directory import directory_state
from engine.timeutil import from_us

router = APIRouter()

CACHE_MAX_AGE_S = 60
_CURSOR_PREFIX = "dir"  # merchants in id order, after the id a cursor names


async def directory_reader(
    request: Request,
    services: ServicesDep,
    _documented: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None,
) -> Principal | None:
    """Anyone when the directory is published (None), else an `app` key (403 for other roles)."""
    if services.settings.directory_public:
        return None
    caller = await principal(request)
    if caller.role != "app":
        raise EngineError("forbidden", "this endpoint needs an app key")
    return caller


Reader = Annotated[Principal | None, Depends(directory_reader)]


def _cached(request: Request, body: dict[str, Any], public: bool) -> Response:
    """`body` as JSON with a strong ETag over its bytes; 304 when If-None-Match names it."""
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()
    etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    headers = {
        "ETag": etag,
        "Cache-Control": f"{'public' if public else 'private'}, max-age={CACHE_MAX_AGE_S}",
        "Vary": "Authorization",
    }
    wanted = request.headers.get("if-none-match", "")
    if etag in {t.strip().removeprefix("W/") for t in wanted.split(",")} or wanted.strip() == "*":
        return Response(status_code=304, headers=headers)
    return Response(content, media_type="application/json", headers=headers)


_CACHE_HEADERS: dict[str, Any] = {
    "ETag": {
        "description": "Strong validator of the body; send it back as If-None-Match",
        "schema": {"type": "string"},
    },
    "Cache-Control": {"description": "How long the answer may be reused", "schema": {"type": "string"}},
}
_NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the If-None-Match ETag is current", "headers": _CACHE_HEADERS}
}


@router.get(
    "/v1/directory/merchants",
    responses={
        200: {"model": responses_app.DirectoryMerchants, "headers": _CACHE_HEADERS},
        **_NOT_MODIFIED,
        **problems(AUTHENTICATED, "invalid_request"),
    },
    response_model=None,
)
async def directory_merchants(
    request: Request,
    p: Reader,
    services: ServicesDep,
    shotengai: Annotated[str | None, Query(pattern=limits.ID_PATTERN)] = None,
    certified: QueryBool | None = None,
    class_: Annotated[MerchantClass | None, Query(alias="class")] = None,
    cursor: Cursor = None,
    limit: PageLimit = 100,
) -> Response:
    """Merchants in id order, filtered by 商店街, certification valid now and class."""
    after = decode_id_cursor(_CURSOR_PREFIX, cursor)
    merchants, campaigns, _ = await run_in_threadpool(directory_state, services.ledger)
    page, last = directory.merchant_page(
        merchants,
        campaigns.values(),
        _now(services),
        shotengai_id=shotengai,
        certified=certified,
        merchant_class=class_,
        after_id=after,
        limit=limit,
    )
    body = {"merchants": page, "next_cursor": encode_cursor(_CURSOR_PREFIX, last) if last is not None else None}
    return _cached(request, body, services.settings.directory_public)


@router.get(
    "/v1/directory/campaigns",
    responses={
        200: {"model": responses_app.DirectoryCampaigns, "headers": _CACHE_HEADERS},
        **_NOT_MODIFIED,
        **problems(AUTHENTICATED),
    },
    response_model=None,
)
async def directory_campaigns(request: Request, p: Reader, services: ServicesDep) -> Response:
    """The campaigns running now, in rating order, with their public terms and remaining budget share."""
    _, campaigns, meters = await run_in_threadpool(directory_state, services.ledger)
    body = {
        "campaigns": [
            directory.campaign_entry(c, meters.get(c.id, 0))
            for c in directory.running(campaigns.values(), _now(services))
        ]
    }
    return _cached(request, body, services.settings.directory_public)


def _now(services: ServicesDep) -> dt.datetime:
    return from_us(services.clock.now_us())
