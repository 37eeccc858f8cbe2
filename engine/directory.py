"""The directory (SPEC §10): what a resident may see of merchants and running campaigns.

Pure rules over the catalog (merchant and campaign records) and the campaigns' budget
meters, at one instant: a merchant's ethical certifications valid now (scheme and end),
the running campaigns it earns points in (the first tier whose match holds, SPEC §4) and
whether one of them rewards local produce, and each running campaign's public terms with
its remaining budget share. Never a bank account, a fee, a funding source or a version:
nothing beyond the merchant id and the campaign id identifies a record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from engine.model import Campaign, Merchant, Tier, campaign_order
from engine.timeutil import format_instant, to_us

# Item tags of local produce (せたがやそだち); a campaign on one of them is a local-produce campaign.
LOCAL_PRODUCE_TAGS = frozenset({"local_produce", "setagaya_sodachi"})


def remaining_budget_percent(budget: int | None, issued_net: int) -> int | None:
    """The share of the budget still to issue, in whole percent rounded down (so 0 once less than
    1 % is left, 100 only when nothing was issued); None for a campaign without a budget."""
    if budget is None:
        return None
    if budget == 0:
        return 0
    left = min(max(budget - issued_net, 0), budget)
    return left * 100 // budget


def running(campaigns: Iterable[Campaign], now: dt.datetime) -> list[Campaign]:
    """The campaigns running at `now`, in rating order (SPEC §4: priority desc, id asc)."""
    return sorted((c for c in campaigns if c.active_at(now)), key=campaign_order)


def _tier_for(campaign: Campaign, merchant: Merchant, now: dt.datetime) -> Tier | None:
    return next((t for t in campaign.tiers if t.match.holds(merchant, now)), None)


def is_local_produce(campaign: Campaign) -> bool:
    return bool(campaign.item_tags) and bool(LOCAL_PRODUCE_TAGS.intersection(campaign.item_tags or ()))


def merchant_entry(merchant: Merchant, campaigns: list[Campaign], now: dt.datetime) -> dict[str, Any]:
    """One merchant as the directory shows it; `campaigns` are the running ones in rating order."""
    earning = []
    for campaign in campaigns:
        tier = _tier_for(campaign, merchant, now)
        if tier is None or (tier.rate_bp == 0 and campaign.fixed_points == 0):
            continue
        earning.append(
            {
                "campaign_id": campaign.id,
                "name": campaign.name,
                "rate_bp": tier.rate_bp,
                "fixed_points": campaign.fixed_points,
                "item_tags": list(campaign.item_tags) if campaign.item_tags is not None else None,
            }
        )
    local = {c.id for c in campaigns if is_local_produce(c)}
    return {
        "merchant_id": merchant.id,
        "name": merchant.name,
        "merchant_class": merchant.merchant_class,
        "shotengai_id": merchant.shotengai_id,
        "ward_local": merchant.ward_local,
        "certifications": [
            {"scheme": c.scheme, "valid_until": format_instant(to_us(c.valid_until))}
            for c in merchant.ethical_certifications
            if c.covers(now)
        ],
        "local_produce": any(e["campaign_id"] in local for e in earning),
        "campaigns": earning,
    }


def campaign_entry(campaign: Campaign, issued_net: int) -> dict[str, Any]:
    """A running campaign's public terms and the share of its budget left."""
    return {
        "campaign_id": campaign.id,
        "name": campaign.name,
        "starts_at": format_instant(to_us(campaign.starts_at)),
        "ends_at": format_instant(to_us(campaign.ends_at)),
        "tiers": [t.model_dump(mode="json", exclude_none=True) for t in campaign.tiers],
        "item_tags": list(campaign.item_tags) if campaign.item_tags is not None else None,
        "local_produce": is_local_produce(campaign),
        "fixed_points": campaign.fixed_points,
        "min_base": campaign.min_base,
        "per_tx_cap": campaign.per_tx_cap,
        "per_wallet_cap": campaign.per_wallet_cap,
        "per_wallet_cap_period": campaign.per_wallet_cap_period,
        "stacking": campaign.stacking,
        "credit": campaign.credit.model_dump(mode="json"),
        "validity_months": campaign.validity_months,
        "budget_remaining_percent": remaining_budget_percent(campaign.budget, issued_net),
    }


def merchant_page(
    merchants: Mapping[str, Merchant],
    campaigns: Iterable[Campaign],
    now: dt.datetime,
    *,
    shotengai_id: str | None,
    certified: bool | None,
    merchant_class: str | None,
    after_id: str,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Merchants matching the filters in id order after `after_id`; the last id when more follow."""
    running_now = running(campaigns, now)
    page: list[dict[str, Any]] = []
    for merchant_id in sorted(m for m in merchants if m > after_id):
        merchant = merchants[merchant_id]
        if shotengai_id is not None and merchant.shotengai_id != shotengai_id:
            continue
        if merchant_class is not None and merchant.merchant_class != merchant_class:
            continue
        if certified is not None and merchant.certified_at(now) != certified:
            continue
        if len(page) == limit:
            return page, page[-1]["merchant_id"]
        page.append(merchant_entry(merchant, running_now, now))
    return page, None
