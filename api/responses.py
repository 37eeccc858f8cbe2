"""Typed 2xx answers, for the OpenAPI document only (issue 10, deliverable 2).

These models describe the JSON the routes return today; they are given to FastAPI as
`responses={status: {"model": ...}}`, never as `response_model=`, so nothing the API
returns is filtered or re-serialized by them (tests/api/test_response_models_http.py checks
that real answers validate). Every model allows extra fields: a newer answer may add one.
The transaction examples are the rating vector `refunds.json` (shared/vectors): purchase
`t1` (¥1,999 at M_SHOTEN, 20 % point-back: 399 points) and its refund `r1` (¥1,000: 199 clawed back).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydantic.json_schema import SkipJsonSchema

from api.openapi import REPLAYED_HEADER as REPLAYED_HEADER  # the routes' 2xx headers
from api.openapi import Problem
from engine.events import EventType
from engine.model import Campaign


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# -- transactions (SPEC §6) -----------------------------------------------------


class Award(_Answer):
    campaign_id: str
    campaign_version: int
    points: int
    capped_by: Literal["per_tx_cap", "wallet_cap", "budget"] | None
    status: Literal["pending", "credited", "clawed_back"]
    credit_at: str = Field(description="RFC 3339 instant the points are (or were) credited")
    expires_at: str = Field(description="RFC 3339 instant the credited points expire")
    points_clawed_back: int | SkipJsonSchema[None] = Field(
        None, description="GET /v1/transactions/{id} only: points refunds took back"
    )


class Clawback(_Answer):
    campaign_id: str
    points: int


class _TransactionBase(_Answer):
    id: str
    sequence: int = Field(description="The acceptance sequence: gapless, in the order the ledger accepted")
    wallet_id: str
    merchant_id: str
    terminal_id: str
    occurred_at: str
    accepted_at: str
    amount: int
    points_used: int
    points_awarded: int
    awards: list[Award]


class PurchaseAnswer(_TransactionBase):
    type: Literal["purchase"]
    refunded_amount: int | SkipJsonSchema[None] = Field(
        None, description="GET /v1/transactions/{id} only: yen refunded so far"
    )

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "tx_01a25de4b7fb3f1c9a0d5e7b2c4a6e8f",
                    "sequence": 1,
                    "type": "purchase",
                    "wallet_id": "W1",
                    "merchant_id": "M_SHOTEN",
                    "terminal_id": "T_M_SHOTEN",
                    "occurred_at": "2026-12-10T12:00:00+09:00",
                    "accepted_at": "2026-12-10T12:00:00.123456+09:00",
                    "amount": 1999,
                    "points_used": 0,
                    "points_awarded": 399,
                    "awards": [
                        {
                            "campaign_id": "C_POINTBACK",
                            "campaign_version": 1,
                            "points": 399,
                            "capped_by": None,
                            "status": "credited",
                            "credit_at": "2026-12-10T12:00:00.123456+09:00",
                            "expires_at": "2027-07-01T00:00:00+09:00",
                        }
                    ],
                }
            ]
        },
    )


class RefundAnswer(_TransactionBase):
    type: Literal["refund"]
    original_id: str
    clawbacks: list[Clawback]
    points_clawed_back: int
    points_returned: int
    coin_refunded: int

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "id": "tx_01a29164520e9b2d4f6a8c0e1a3b5c7d",
                    "sequence": 2,
                    "type": "refund",
                    "original_id": "tx_01a25de4b7fb3f1c9a0d5e7b2c4a6e8f",
                    "wallet_id": "W1",
                    "merchant_id": "M_SHOTEN",
                    "terminal_id": "T_M_SHOTEN",
                    "occurred_at": "2026-12-20T12:00:00+09:00",
                    "accepted_at": "2026-12-20T12:00:00.654321+09:00",
                    "amount": 1000,
                    "points_used": 0,
                    "points_awarded": 0,
                    "awards": [],
                    "clawbacks": [{"campaign_id": "C_POINTBACK", "points": 199}],
                    "points_clawed_back": 199,
                    "points_returned": 0,
                    "coin_refunded": 1000,
                }
            ]
        },
    )


class TransactionAnswer(RootModel[Annotated[PurchaseAnswer | RefundAnswer, Field(discriminator="type")]]):
    """An accepted purchase or refund, as POST /v1/transactions answers it (201) and replays it."""


class BatchItemAnswer(_Answer):
    status: int = Field(description="The status this item would have had as a POST /v1/transactions")
    replayed: bool
    body: TransactionAnswer | Problem


class BatchAnswer(_Answer):
    results: list[BatchItemAnswer] = Field(description="One per transaction sent, in order")


# -- merchants' reward status, grants (SPEC §6) -----------------------------------


class MerchantTransactions(_Answer):
    transactions: list[TransactionAnswer] = Field(description="In acceptance order, each as GET /v1/transactions/{id}")
    next_cursor: str | None = Field(description="Set while more may follow")


class CampaignRewards(_Answer):
    campaign_id: str
    awarded: int
    pending: int
    credited: int
    clawed_back: int


class RewardPoints(_Answer):
    awarded: int
    pending: int
    credited: int
    clawed_back: int


class MerchantRewards(_Answer):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    merchant_id: str
    from_: str | None = Field(alias="from")
    to: str | None
    transactions: int
    purchases: int
    refunds: int
    coin_sales: int
    coin_refunded: int
    points_redeemed: int
    points_returned: int
    campaigns: list[CampaignRewards]
    points: RewardPoints


class GrantAnswer(_Answer):
    id: str
    wallet_id: str
    campaign_id: str
    points: int
    reason: str
    campaign_version: int
    granted_at: str
    expires_at: str


# -- configuration (SPEC §3, §6) ------------------------------------------------


class MerchantView(_Answer):
    """A merchant record as the API shows it: never the payout account itself."""

    id: str
    name: str
    merchant_class: str
    shotengai_id: str | None = None
    ward_local: bool = False
    ethical_certifications: list[dict[str, Any]] = []
    fee_bp: int = 0
    bank_account_masked: dict[str, Any] | SkipJsonSchema[None] = Field(
        None, description="The payout account's bank, branch, type and last 4 digits, with when it was set"
    )
    bank_account_on_file: bool
    bank_account_pending_confirmation: bool


class MerchantViews(RootModel[list[MerchantView]]):
    pass


class TerminalView(_Answer):
    id: str
    merchant_id: str
    public_key: str | None = Field(description="base64 of the terminal's Ed25519 public key, when registered")


class TerminalViews(RootModel[list[TerminalView]]):
    pass


class Campaigns(RootModel[list[Campaign]]):
    pass


# -- finance (SPEC §6, §7) ----------------------------------------------------------


class CampaignBudget(_Answer):
    campaign_id: str
    campaign_version: int
    budget: int | None
    issued: int
    clawed_back: int
    net_issued: int
    remaining: int | None
    exhausted: bool
    burn_last_hour: int
    burn_last_day: int
    forecast_exhaustion_at: str | None
    as_of: str


class Period(_Answer):
    kind: str
    start: str
    end: str


class Payout(_Answer):
    merchant_id: str
    net_payout: int
    payout_status: str


class SettlementRun(_Answer):
    id: str
    period: Period
    created_at: str
    statement: dict[str, Any] = Field(description="The signed statement of the run")
    payouts: list[Payout]
    zengin_bytes: int


class PayoutStatus(_Answer):
    merchant_id: str
    payout_status: str


class PayoutResultsAnswer(_Answer):
    run_id: str
    applied: int
    unchanged: int
    payouts: list[PayoutStatus]


class SignedChainHeads(_Answer):
    signed: list[str]


class Check(_Answer):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    pass_: bool = Field(alias="pass")
    rows: list[Any] | SkipJsonSchema[None] = Field(None, description="The offending rows, empty when the check passes")
    checked: int | SkipJsonSchema[None] = Field(None, description="rerate_matches_ledger: the transactions re-rated")
    copies_compared: int | SkipJsonSchema[None] = Field(
        None,
        description="signed_chain_heads_valid, with SETAPAY_HEADS_DIR set: the copies of the signed heads kept outside "
        "the database that were compared with its heads",
    )
    problem: str | SkipJsonSchema[None] = Field(
        None,
        description="Why the check failed without naming rows: a row it reads is malformed, or the heads' copies "
        "could not be read",
    )


class Reconciliation(_Answer):
    ok: bool
    as_of: str
    postings: int
    checks: dict[str, Check]


class CountTotal(_Answer):
    count: int
    total: int


class CloseoutReport(_Answer):
    terminal_id: str
    business_date: str
    submitted: CountTotal
    ledger: CountTotal
    matches: bool
    transactions: list[Any] | SkipJsonSchema[None] = Field(
        None, description="When they differ: the ledger's transactions of the day"
    )


class SimulatedTransactions(_Answer):
    purchases: int
    refunds: int
    declined: int


class Simulation(_Answer):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

    campaign_id: str
    from_: str = Field(alias="from")
    to: str
    transactions: SimulatedTransactions
    by_campaign: Any
    by_merchant_class: Any
    by_day: dict[str, dict[str, int]]
    budget: int | None
    budget_exhausted_at: str | None
    timings_s: dict[str, float]


# -- wallets -------------------------------------------------------------------


class CampaignPoints(_Answer):
    campaign_id: str
    pending: int
    available: int


class PendingCredit(_Answer):
    campaign_id: str
    credit_at: str
    points: int


class Expiring(_Answer):
    expires_at: str
    points: int


class WalletPoints(_Answer):
    wallet_id: str
    pending: int
    available: int
    debt: int
    by_campaign: list[CampaignPoints]
    pending_by_credit_date: list[PendingCredit]
    expiring: list[Expiring]


# -- keys (SPEC §9.3) ----------------------------------------------------------


class KeyListing(_Answer):
    id: str
    role: Literal["terminal", "merchant", "app", "finance", "admin"]
    merchant_id: str | None
    terminal_id: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class KeyListings(RootModel[list[KeyListing]]):
    pass


class CreatedKey(KeyListing):
    key: str = Field(description="The secret, shown this once")


# -- audit (SPEC §9.5) ---------------------------------------------------------


class AuditActor(_Answer):
    key_id: str
    role: str


class AuditEntry(_Answer):
    sequence: int
    at: str
    actor: AuditActor
    action: str
    target: str
    before: Any = Field(description="The record before the change (secrets masked), or null")
    after: Any = Field(description="The record after the change (secrets masked), or null")
    hash: str


class AuditPage(_Answer):
    entries: list[AuditEntry]
    next_cursor: str | None


# -- events and webhooks (SPEC §10) ---------------------------------------------------------


class EventView(_Answer):
    id: int = Field(description="The feed's order: page on with `after` set to the last id read")
    type: EventType
    timestamp: str = Field(description="RFC 3339 instant the event was written")
    wallet_id: str | None = Field(description="The wallet it is about, or null (campaign and settlement events)")
    data: dict[str, Any]


class EventPage(_Answer):
    events: list[EventView]
    next_after: int = Field(description="`after` for the next page (the last id listed, or the one asked)")


class DeliveryCounts(_Answer):
    pending: int
    delivered: int
    failed: int


class WebhookView(_Answer):
    id: str
    url: str
    event_types: list[str]
    created_at: str
    deleted_at: str | None
    deliveries: DeliveryCounts


class WebhookViews(RootModel[list[WebhookView]]):
    pass


class CreatedWebhook(WebhookView):
    secret: str = Field(description="The signing secret (whsec_...), shown this once")


class DeliveryView(_Answer):
    id: int
    webhook_id: str
    event_id: int
    event_type: str
    wallet_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: str
    last_attempt_at: str | None
    finished_at: str | None


class DeliveryPage(_Answer):
    deliveries: list[DeliveryView]
    next_after: int


# -- health ----------------------------------------------------------------------


class Health(_Answer):
    status: Literal["ok"]


class Readiness(_Answer):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str]
