"""Typed 2xx answers of the payment app's routes (SPEC §10): wallet history, quotes, directory.

For the OpenAPI document only, like api/responses.py (given as `responses={200: {"model": ...}}`,
never as `response_model=`); every model allows extra fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.responses import _Answer

# -- wallet history --------------------------------------------------------------


class RedeemedLot(_Answer):
    lot_id: str
    campaign_id: str
    points: int
    expires_at: str | None


class ReturnedPoints(_Answer):
    campaign_id: str
    points: int


class HistoryEvent(_Answer):
    sequence: int = Field(description="The posting sequence of the event's newest posting")
    type: Literal["earned", "credited", "redeemed", "returned", "clawed_back", "expired", "granted"]
    at: str = Field(description="RFC 3339 instant the ledger posted it")
    points: int
    campaign_id: str | None = Field(description="null for a redemption or returned points, which list their lots")
    campaign_version: int | None
    transaction_id: str | None = Field(description="The purchase or refund; null for a grant")
    merchant_id: str | None
    status: Literal["pending", "credited", "clawed_back"] | None = Field(
        None, description="earned: the award's status now"
    )
    capped_by: Literal["per_tx_cap", "wallet_cap", "budget"] | None = None
    credit_at: str | None = Field(None, description="earned: when the points are (or were) credited")
    expires_at: str | None = Field(None, description="when the credited points expire")
    original_id: str | None = Field(None, description="returned, clawed_back: the refunded purchase")
    grant_id: str | None = None
    reason: str | None = Field(None, description="granted: finance's reason")
    lots: list[RedeemedLot] | None = Field(None, description="redeemed: the lots the points came from, in order")
    campaigns: list[ReturnedPoints] | None = Field(None, description="returned: points back per campaign")


class WalletHistory(_Answer):
    wallet_id: str
    events: list[HistoryEvent]
    next_cursor: str | None = Field(description="Older events: pass as `cursor`; null at the oldest")


# -- quotes ------------------------------------------------------------------------


class QuotedAward(_Answer):
    campaign_id: str
    campaign_version: int
    points: int
    capped_by: Literal["per_tx_cap", "wallet_cap", "budget"] | None
    status: Literal["pending", "credited"] = Field(description="What the award's status would be once posted")
    credit_at: str = Field(description="RFC 3339 instant the points would be credited")
    expires_at: str = Field(description="RFC 3339 instant the credited points would expire")


class Quote(_Answer):
    wallet_id: str
    merchant_id: str
    terminal_id: str
    amount: int
    points_used: int
    quoted_at: str = Field(description="The engine's instant the quote was rated at")
    wallet_caps_applied: bool = Field(
        description="Whether the wallet's own earnings so far were applied to per-wallet caps: true for the "
        "payment app; false for a terminal, whose quote is rated as for a wallet without history"
    )
    points_awarded: int
    awards: list[QuotedAward]


# -- directory ---------------------------------------------------------------------


class ValidCertification(_Answer):
    scheme: str
    valid_until: str = Field(description="RFC 3339 instant the certification ends (exclusive)")


class EarningCampaign(_Answer):
    campaign_id: str
    name: str
    rate_bp: int = Field(description="Point-back at this merchant, in basis points of the coin paid")
    fixed_points: int
    item_tags: list[str] | None = Field(description="Only items with one of these tags earn; null: every item")


class DirectoryMerchant(_Answer):
    merchant_id: str
    name: str
    merchant_class: Literal["small", "semi_large", "large"]
    shotengai_id: str | None = Field(description="The 商店街 the merchant belongs to")
    ward_local: bool
    certifications: list[ValidCertification] = Field(description="Ethical certifications valid now")
    local_produce: bool = Field(description="Earns in a running local-produce campaign")
    campaigns: list[EarningCampaign] = Field(description="Running campaigns the merchant earns points in")


class DirectoryMerchants(_Answer):
    merchants: list[DirectoryMerchant]
    next_cursor: str | None


class PublicTier(_Answer):
    match: dict[str, object]
    rate_bp: int


class DirectoryCampaign(_Answer):
    campaign_id: str
    name: str
    starts_at: str
    ends_at: str
    tiers: list[PublicTier]
    item_tags: list[str] | None
    local_produce: bool
    fixed_points: int
    min_base: int
    per_tx_cap: int | None
    per_wallet_cap: int | None
    per_wallet_cap_period: Literal["campaign", "month", "day"]
    stacking: Literal["stack", "exclusive"]
    credit: dict[str, object]
    validity_months: int
    budget_remaining_percent: int | None = Field(
        description="Share of the budget left, whole percent rounded down (0 once under 1 % is left); "
        "null without a budget",
        ge=0,
        le=100,
    )


class DirectoryCampaigns(_Answer):
    campaigns: list[DirectoryCampaign]
