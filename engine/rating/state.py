"""Rating state that must survive between batches, as plain values.

The kernel is stateless: everything a later batch needs (how much of each
wallet window is used, what each campaign has issued net, what each purchase
was awarded and how much of it is refunded, each wallet's spendable balance)
is passed in and handed back here, so the ledger can persist it and a
restarted server rates exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools

from engine.timeutil import tokyo_day_key, tokyo_month_key


# Asked for each purchase's instant several times (reading its state, encoding, decoding,
# posting its awards): cached, a repeat is one hash of the pair.
@functools.lru_cache(maxsize=1 << 14)
def window_key(period: str, occurred_at_us: int) -> int:
    """Key of the wallet-cap window containing an instant (0 for a whole campaign)."""
    if period == "day":
        return tokyo_day_key(occurred_at_us)
    if period == "month":
        return tokyo_month_key(occurred_at_us)
    assert period == "campaign", period
    return 0


@dataclasses.dataclass(slots=True)
class AwardState:
    campaign_id: str
    campaign_version: int
    points: int
    pending: int  # part of `points` not yet credited (nor clawed back)
    window_key: int


@dataclasses.dataclass(slots=True)
class PurchaseState:
    wallet_id: str
    merchant_id: str
    amount: int
    points_used: int
    refunded: int = 0
    awards: dict[str, AwardState] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RatingState:
    # (campaign_id, wallet_id, window_key) -> points counted against the wallet cap
    usage: dict[tuple[str, str, int], int] = dataclasses.field(default_factory=dict)
    # campaign_id -> points issued net of clawbacks
    spend: dict[str, int] = dataclasses.field(default_factory=dict)
    # purchase key -> what a refund of it needs
    purchases: dict[str, PurchaseState] = dataclasses.field(default_factory=dict)
    # wallet_id -> spendable points (negative: debt); None when balances are not checked
    balance: dict[str, int] | None = None
