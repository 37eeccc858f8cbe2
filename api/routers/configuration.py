"""The ward's configuration, for admins: merchants, campaigns (finance reads them too) and terminals.

Every change is audited with the admin's key (engine/store/config.py). A PATCH
merges into the stored record and validates the result, so a bad field is 422
`invalid_request` naming it, and a field no patch changes (an id, a campaign's version) too; a
PATCH that changes nothing writes nothing. A terminal's public key (SPEC §9.2) is set or
removed here; the change reaches this process's signature checks at once.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, create_model, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails

from api import responses
from api.deps import Admin, ConfigDep, ServicesDep, role
from api.errors import json_safe, validated
from api.openapi import AUTHENTICATED, problems
from api.strict import PathId, QueryVersion
from engine.errors import EngineError
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


# -- PATCH bodies ----------------------------------------------------------
#
# A PATCH body is merged into the stored record, and the result validated as a whole
# (engine/store/config.py `update_merchant`, `update_campaign`): the handler takes the body as
# sent, so a field absent and a field null keep their meaning there. Only the document is typed:
# `Documented(MerchantPatch)` makes the body's schema that partial model's, every field the
# client may change, optional, with the full model's types and constraints, and no other.


def _no_defaults(schema: dict[str, Any]) -> None:
    # An absent field is left as stored, not set to a default.
    for field in schema.get("properties", {}).values():
        field.pop("default", None)
    schema.pop("required", None)


def _partial(model: type[BaseModel], name: str, immutable: tuple[str, ...], doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {
        field: (info.rebuild_annotation(), Field(None, description=info.description))
        for field, info in model.model_fields.items()
        if field not in immutable
    }
    return create_model(
        name,
        __config__=ConfigDict(extra="forbid", frozen=True, json_schema_extra=_no_defaults),
        __doc__=doc,
        **fields,
    )


def patch_fields(model: type[BaseModel], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch` when it names only fields of `model` (the record's partial model), else 422
    `invalid_request` naming the others, as FastAPI refuses an `id` in PATCH /v1/terminals' body:
    the id, a campaign's version (the server numbers versions) and unknown names alike."""
    extra = [name for name in patch if name not in model.model_fields]
    if extra:
        errors = [
            ErrorDetails(type="extra_forbidden", loc=("body", name), msg="Extra inputs are not permitted", input=None)
            for name in extra
        ]
        shown = json_safe(errors[:1])[0]["loc"][-1]
        raise EngineError("invalid_request", f"{shown} is not a field a patch may change", errors=json_safe(errors))
    return patch


class Documented:
    """Documents a body as `model` while it is still validated as the annotated type."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model

    def __get_pydantic_json_schema__(self, _: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return handler(self.model.__pydantic_core_schema__)


MerchantPatch = _partial(
    Merchant,
    "MerchantPatch",
    ("id",),
    "The merchant's fields to change; an absent field keeps its stored value, and the merged record "
    "must still be a valid merchant (422 `invalid_request` naming the field otherwise). `null` clears "
    "`shotengai_id`; `bank_account` sets a new payout account, held until a different admin or "
    "finance key confirms it (SPEC §9.6), and `null` leaves the account on file as it is (a client "
    "that sends every field, unset ones as null, changes nothing it did not mean to). The id "
    "cannot change: an `id`, or any field not listed here, is 422 `invalid_request` naming it. A "
    "patch that changes nothing (`{}` too) makes no version and no audit entry: 200 with the record as it is.",
)
CampaignPatch = _partial(
    Campaign,
    "CampaignPatch",
    ("id", "version"),
    "The campaign's fields to change, making a new version; an absent field keeps its stored value, "
    "`null` clears a nullable one, and the merged record must still be a valid campaign (422 "
    "`invalid_request` naming the field otherwise). A started campaign keeps its `starts_at`, may not "
    "end before now nor have a budget below the points it issued (422 `campaign_started`); an ended "
    "campaign made to run again counts towards the active campaigns (422 `too_many_active_campaigns`); the "
    "campaigns whose windows come within `occurred_at`'s bounds of its own name at most 64 item tags together "
    "(422 `too_many_item_tags`). The id cannot change and the server numbers versions: an `id`, a "
    "`version`, or any field not listed here, is 422 `invalid_request` naming it. A patch that changes "
    "nothing (`{}` too) makes no version and no audit entry: 200 with the campaign as it is.",
)


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
def patch_merchant(
    merchant_id: PathId,
    patch: Annotated[dict[str, Any], Documented(MerchantPatch), Body(title="MerchantPatch")],
    p: Admin,
    config: ConfigDep,
) -> Any:
    return validated(lambda: config.update_merchant(merchant_id, patch_fields(MerchantPatch, patch), actor=p))


# -- campaigns -------------------------------------------------------------


@router.post(
    "/v1/campaigns",
    status_code=201,
    responses={
        201: {"model": Campaign},
        **problems(
            AUTHENTICATED,
            "invalid_request",
            "already_exists",
            "too_many_active_campaigns",
            "too_many_item_tags",
            "unknown_merchant",
        ),
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
    version: QueryVersion | None = None,
) -> Any:
    return config.get_campaign(campaign_id, version).model_dump(mode="json")


@router.patch(
    "/v1/campaigns/{campaign_id}",
    responses={
        200: {"model": Campaign},
        **problems(
            AUTHENTICATED,
            "invalid_request",
            "not_found",
            "campaign_started",
            "too_many_active_campaigns",
            "too_many_item_tags",
            "unknown_merchant",
        ),
    },
)
def patch_campaign(
    campaign_id: PathId,
    patch: Annotated[dict[str, Any], Documented(CampaignPatch), Body(title="CampaignPatch")],
    p: Admin,
    config: ConfigDep,
) -> Any:
    changed = validated(lambda: config.update_campaign(campaign_id, patch_fields(CampaignPatch, patch), actor=p))
    return changed.model_dump(mode="json")


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
