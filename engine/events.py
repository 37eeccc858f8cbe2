"""The events of SPEC §10, as plain values: what happened, to which wallet, said once.

An `Event` is what the outbox (`engine/store/events.py`) writes in the same
transaction as the change it describes, what `GET /v1/events` lists and what
webhooks deliver. The functions here decide the events of a change from plain
values; they read nothing and write nothing. An event that must be said at most
once (a lot's expiry warning at one threshold, a campaign's budget crossing one
threshold) carries a `dedupe_key` the outbox keeps unique.

| type | wallet | when |
| --- | --- | --- |
| `award_credited` | yes | a crediting run moved an award from pending to available |
| `points_expiring` | yes | a lot's remaining points expire within 30 (then 7) days |
| `points_expired` | yes | an expiry run took a lot's remaining points |
| `clawback` | yes | an accepted refund took back awarded points |
| `budget_threshold` | no | a campaign's meter reached 80 % (then 100 %) of its budget |
| `settlement_completed` | no | a settlement run closed a period |
| `payout_failed` | no | a merchant's payout failed (`reason` below) |

A failed payout's `reason`: `no_bank_account`; `bank_account_unusable` (an account on file that
no Zengin record can carry); `amount_over_transfer_limit` (more than one Zengin record's 10 digits
of yen); `payout_file_full` (the run's file held its 12 digits of yen or 6 of records already: paid
by a later run); `bank_rejected` (the bank's answer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from engine.timeutil import format_instant

AWARD_CREDITED = "award_credited"
POINTS_EXPIRING = "points_expiring"
POINTS_EXPIRED = "points_expired"
CLAWBACK = "clawback"
BUDGET_THRESHOLD = "budget_threshold"
SETTLEMENT_COMPLETED = "settlement_completed"
PAYOUT_FAILED = "payout_failed"
EventType = Literal[
    "award_credited",
    "points_expiring",
    "points_expired",
    "clawback",
    "budget_threshold",
    "settlement_completed",
    "payout_failed",
]
TYPES: tuple[str, ...] = get_args(EventType)
assert TYPES == (
    AWARD_CREDITED,
    POINTS_EXPIRING,
    POINTS_EXPIRED,
    CLAWBACK,
    BUDGET_THRESHOLD,
    SETTLEMENT_COMPLETED,
    PAYOUT_FAILED,
)

# Days ahead of a lot's expiry its wallet is told, each once per lot; largest first.
EXPIRING_DAYS = (30, 7)
# Percentages of a campaign's budget whose crossing is told, each once per campaign and budget.
BUDGET_THRESHOLDS_PERCENT = (80, 100)


@dataclasses.dataclass(frozen=True)
class Event:
    """One event to write: `data` is its JSON payload (plain values only)."""

    type: str
    data: dict[str, Any]
    wallet_id: str | None = None
    dedupe_key: str | None = None  # unique in the outbox: the event is written at most once

    def __post_init__(self) -> None:
        assert self.type in TYPES, self.type


def award_credited(
    wallet_id: str, payment_id: str, campaign_id: str, campaign_version: int, points: int, credited_at_us: int
) -> Event:
    return Event(
        AWARD_CREDITED,
        {
            "wallet_id": wallet_id,
            "transaction_id": payment_id,
            "campaign_id": campaign_id,
            "campaign_version": campaign_version,
            "points": points,
            "credited_at": format_instant(credited_at_us),
        },
        wallet_id,
    )


def points_expiring(
    wallet_id: str, lot_id: str, campaign_id: str, points: int, expires_at_us: int, days_ahead: int
) -> Event:
    assert days_ahead in EXPIRING_DAYS, days_ahead
    return Event(
        POINTS_EXPIRING,
        {
            "wallet_id": wallet_id,
            "lot_id": lot_id,
            "campaign_id": campaign_id,
            "points": points,
            "expires_at": format_instant(expires_at_us),
            "days_ahead": days_ahead,
        },
        wallet_id,
        f"{POINTS_EXPIRING}:{days_ahead}:{lot_id}",
    )


def expiring_window_us(as_of_us: int, days_ahead: int) -> tuple[int, int]:
    """The expiry instants (lower exclusive, upper inclusive) whose lots are told `days_ahead`
    days ahead at `as_of_us`: within `days_ahead` days, and not yet within the next threshold,
    so a lot first seen 5 days before its expiry gets the 7-day warning only."""
    day_us = 86_400_000_000
    smaller = [d for d in EXPIRING_DAYS if d < days_ahead]
    lower = as_of_us + (max(smaller) * day_us if smaller else 0)
    return lower, as_of_us + days_ahead * day_us


def points_expired(wallet_id: str, lot_id: str, campaign_id: str, points: int, expired_at_us: int) -> Event:
    return Event(
        POINTS_EXPIRED,
        {
            "wallet_id": wallet_id,
            "lot_id": lot_id,
            "campaign_id": campaign_id,
            "points": points,
            "expired_at": format_instant(expired_at_us),
        },
        wallet_id,
    )


def clawbacks(answers: Iterable[Mapping[str, Any]]) -> list[Event]:
    """A `clawback` event per accepted refund answer (SPEC §6's body) that took points back."""
    out = []
    for answer in answers:
        if answer.get("type") != "refund" or not answer.get("points_clawed_back"):
            continue
        out.append(
            Event(
                CLAWBACK,
                {
                    "wallet_id": answer["wallet_id"],
                    "transaction_id": answer["id"],
                    "original_id": answer["original_id"],
                    "points_clawed_back": answer["points_clawed_back"],
                    "clawbacks": [dict(c) for c in answer.get("clawbacks", [])],
                    "accepted_at": answer["accepted_at"],
                },
                answer["wallet_id"],
            )
        )
    return out


def budget_crossings(
    before: Mapping[str, int], after: Mapping[str, int], budgets: Mapping[str, int | None], at_us: int
) -> list[Event]:
    """A `budget_threshold` event per campaign and threshold its meter went from below to at or
    above between `before` and `after` (points issued net); campaigns without a budget have none.
    The dedupe key names the budget too: a raised budget is crossed afresh."""
    out = []
    for campaign_id, issued in sorted(after.items()):
        budget = budgets.get(campaign_id)
        if not budget or budget <= 0:
            continue
        was = before.get(campaign_id, 0)
        for percent in BUDGET_THRESHOLDS_PERCENT:
            # Integer comparison: issued * 100 >= budget * percent, no rounding.
            if was * 100 < budget * percent <= issued * 100:
                out.append(
                    Event(
                        BUDGET_THRESHOLD,
                        {
                            "campaign_id": campaign_id,
                            "threshold_percent": percent,
                            "budget": budget,
                            "issued": issued,
                            "remaining": max(budget - issued, 0),
                            "reached_at": format_instant(at_us),
                        },
                        None,
                        budget_threshold_key(campaign_id, budget, percent),
                    )
                )
    return out


def budget_threshold_key(campaign_id: str, budget: int, percent: int) -> str:
    return f"{BUDGET_THRESHOLD}:{campaign_id}:{budget}:{percent}"


def budget_threshold_keys(budgets: Mapping[str, int | None]) -> list[str]:
    """The dedupe keys of every `budget_threshold` event these budgets could give."""
    return [
        budget_threshold_key(campaign_id, budget, percent)
        for campaign_id, budget in sorted(budgets.items())
        if budget and budget > 0
        for percent in BUDGET_THRESHOLDS_PERCENT
    ]


def settlement_completed(run_id: str, period: Mapping[str, Any], totals: Mapping[str, int], at_us: int) -> Event:
    return Event(
        SETTLEMENT_COMPLETED,
        {"run_id": run_id, "period": dict(period), "totals": dict(totals), "completed_at": format_instant(at_us)},
        None,
        f"{SETTLEMENT_COMPLETED}:{run_id}",
    )


def payout_failed(run_id: str, merchant_id: str, net_payout: int, reason: str, at_us: int) -> Event:
    return Event(
        PAYOUT_FAILED,
        {
            "run_id": run_id,
            "merchant_id": merchant_id,
            "net_payout": net_payout,
            "reason": reason,
            "failed_at": format_instant(at_us),
        },
        None,
        f"{PAYOUT_FAILED}:{run_id}:{merchant_id}",
    )


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1 for the first): exponential from
    `base_s`, at most `max_s`, with "equal jitter" (`jitter` uniform in [0, 1) picks a point in the
    upper half), so retries of many deliveries spread out instead of arriving together."""
    assert attempt >= 1 and 0 <= jitter < 1, (attempt, jitter)
    delay = min(max_s, base_s * float(2 ** min(attempt - 1, 40)))
    return delay / 2 + delay / 2 * jitter
