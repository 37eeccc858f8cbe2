"""The ward's configuration, for admins: merchants, campaigns (finance reads them too) and terminals.

Every change is audited with the admin's key (engine/store/config.py). A PATCH
merges into the stored record and validates the result, so a bad field is 422
`invalid_request` naming it. A terminal's public key (SPEC §9.2) is set or
removed here; the change reaches this process's signature checks at once.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import Field, field_validator

from api import responses
from api.deps import Admin, ConfigDep, ServicesDep, role
from api.errors import validated
from api.openapi import AUTHENTICATED, problems
from api.strict import PathId
from engine import limits
from engine.http_signing import parse_public_key
from engine.model import Campaign, Id, Merchant, Record
from engine.store.config import Principal

router = APIRouter()

CampaignReader = Annotated[Principal, Depends(role("admin", "finance"))]


class TerminalRecord(Record):
    id: Id
    merchant_id: Id


class TerminalPatch(Record):
    merchant_id: Id | None = None
    # SPEC §9.2: base64 of the raw 32-byte Ed25519 public key; null removes it (bearer-only again).
    public_key: Annotated[str, Field(strict=True, max_length=64)] | None = None

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str | None) -> str | None:
        return None if value is None else parse_public_key(value)


# -- merchants -------------------------------------------------------------


@router.post(
    "/v1/merchants",
    status_code=201,
    responses={
        201: {"model": responses.MerchantView},
        **problems(AUTHENTICATED, "invalid_request", "already_exists"),
    },
)
def create_merchant(body: Merchant, p: Admin, config: ConfigDep) -> Any:
    return config.create_merchant(body, actor=p)


@router.get("/v1/merchants", responses={200: {"model": responses.MerchantViews}, **problems(AUTHENTICATED)})
def list_merchants(_: Admin, config: ConfigDep) -> Any:
    return config.list_merchants()


@router.get(
    "/v1/merchants/{merchant_id}",
    responses={200: {"model": responses.MerchantView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
)
def get_merchant(merchant_id: PathId, _: Admin, config: ConfigDep) -> Any:
    return config.get_merchant(merchant_id)


@router.patch(
    "/v1/merchants/{merchant_id}",
    responses={200: {"model": responses.MerchantView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
)
def patch_merchant(merchant_id: PathId, patch: Annotated[dict[str, Any], Body()], p: Admin, config: ConfigDep) -> Any:
    return validated(lambda: config.update_merchant(merchant_id, patch, actor=p))


# -- campaigns -------------------------------------------------------------


@router.post(
    "/v1/campaigns",
    status_code=201,
    responses={
        201: {"model": Campaign},
        **problems(AUTHENTICATED, "invalid_request", "already_exists", "too_many_active_campaigns"),
    },
)
def create_campaign(body: Campaign, p: Admin, config: ConfigDep) -> Any:
    return config.create_campaign(body, actor=p).model_dump(mode="json")


@router.get("/v1/campaigns", responses={200: {"model": responses.Campaigns}, **problems(AUTHENTICATED)})
def list_campaigns(_: CampaignReader, config: ConfigDep) -> Any:
    return [c.model_dump(mode="json") for c in config.list_campaigns()]


@router.get(
    "/v1/campaigns/{campaign_id}",
    responses={200: {"model": Campaign}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
)
def get_campaign(
    campaign_id: PathId,
    _: CampaignReader,
    config: ConfigDep,
    version: Annotated[int | None, Query(ge=1, le=limits.VERSION_MAX)] = None,
) -> Any:
    return config.get_campaign(campaign_id, version).model_dump(mode="json")


@router.patch(
    "/v1/campaigns/{campaign_id}",
    responses={
        200: {"model": Campaign},
        **problems(AUTHENTICATED, "invalid_request", "not_found", "campaign_started", "too_many_active_campaigns"),
    },
)
def patch_campaign(campaign_id: PathId, patch: Annotated[dict[str, Any], Body()], p: Admin, config: ConfigDep) -> Any:
    return validated(lambda: config.update_campaign(campaign_id, patch, actor=p)).model_dump(mode="json")


# -- terminals -------------------------------------------------------------


@router.post(
    "/v1/terminals",
    status_code=201,
    responses={
        201: {"model": responses.TerminalView},
        **problems(AUTHENTICATED, "invalid_request", "unknown_merchant", "already_exists"),
    },
)
def create_terminal(body: TerminalRecord, p: Admin, config: ConfigDep) -> Any:
    return config.create_terminal(body.id, body.merchant_id, actor=p)


@router.get("/v1/terminals", responses={200: {"model": responses.TerminalViews}, **problems(AUTHENTICATED)})
def list_terminals(_: Admin, config: ConfigDep) -> Any:
    return config.list_terminals()


@router.get(
    "/v1/terminals/{terminal_id}",
    responses={200: {"model": responses.TerminalView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
)
def get_terminal(terminal_id: PathId, _: Admin, config: ConfigDep) -> Any:
    return config.get_terminal(terminal_id)


@router.patch(
    "/v1/terminals/{terminal_id}",
    responses={
        200: {"model": responses.TerminalView},
        **problems(AUTHENTICATED, "invalid_request", "not_found", "unknown_merchant"),
    },
)
def patch_terminal(terminal_id: PathId, body: TerminalPatch, p: Admin, services: ServicesDep) -> Any:
    patch = body.model_dump(exclude_unset=True)  # "public_key": null removes the key
    if patch.get("merchant_id", "") is None:
        del patch["merchant_id"]
    try:
        return services.config.update_terminal(terminal_id, patch, actor=p)
    finally:
        services.signatures.forget(terminal_id)
