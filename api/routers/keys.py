"""Key lifecycle for admins (SPEC §9.3): list, create (the secret shown once), revoke.

Listings never carry a secret or its hash. A revocation drops the key from
this process's principal cache at once; every other API process stops
accepting it within `SETAPAY_KEY_CACHE_TTL_S` (≤ 5 s).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import Field

from api.deps import Admin, KeysDep, ServicesDep
from api.idempotency import created_once
from api.openapi import AUTHENTICATED, idempotent, problems
from api.responses import REPLAYED_HEADER, CreatedKey, KeyListing, KeyListings
from api.strict import PathId
from engine.model import Id, Record
from engine.store.config import ROLES
from engine.store.keys import EXPIRES_IN_DAYS_MAX

router = APIRouter()


class KeyRequest(Record):
    # Checked by `Keys.create` (422 naming the roles); the enum documents them.
    role: Annotated[str, Field(strict=True, min_length=1, max_length=16, json_schema_extra={"enum": list(ROLES)})]
    merchant_id: Id | None = None
    terminal_id: Id | None = None
    expires_in_days: Annotated[int, Field(strict=True, ge=1, le=EXPIRES_IN_DAYS_MAX)] | None = None


@router.get("/v1/keys", responses={200: {"model": KeyListings}, **problems(AUTHENTICATED)})
def list_keys(_: Admin, keys: KeysDep) -> Any:
    """Every key with its role, scope and lifecycle instants; never a secret or a hash."""
    return keys.list()


@router.post(
    "/v1/keys",
    status_code=201,
    openapi_extra=idempotent(required=False),
    responses={
        201: {"model": CreatedKey, "headers": REPLAYED_HEADER},
        **problems(
            AUTHENTICATED,
            "invalid_request",
            "unknown_terminal",
            "unknown_merchant",
            "idempotency_key_invalid",
            "idempotency_key_reused",
        ),
    },
    response_model=None,
)
def create_key(
    body: KeyRequest,
    p: Admin,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> Response:
    """A new key; `key` is the secret, shown this once. With an `Idempotency-Key`, made once: a retry
    gets the same key (the answer kept sealed meanwhile)."""
    return created_once(
        services,
        p,
        idempotency_key,
        "POST /v1/keys",
        body,
        "key",
        lambda once: services.keys.create(
            body.role, body.merchant_id, body.terminal_id, body.expires_in_days, actor=p, once=once
        ),
    )


@router.post(
    "/v1/keys/{key_id}/revoke",
    responses={200: {"model": KeyListing}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
)
def revoke_key(key_id: PathId, p: Admin, services: ServicesDep) -> Any:
    """Revoke a key (again: no change, the first instant stays); 404 when unknown."""
    record = services.keys.revoke(key_id, actor=p)
    services.auth.forget(key_id)
    return record
