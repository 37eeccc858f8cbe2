"""What a quote answers (SPEC §10): the awards a prospective purchase would get now, shaped
like the awards of a posted purchase's answer. Pure: the storage layer rates
(`Ledger.quote`, the same state loading and kernel as `Ledger.submit`) and hands the
outcome here with the campaigns it was rated against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import crediting
from engine.model import Campaign
from engine.rating import Award, Outcome
from engine.timeutil import format_instant


def quote_awards(
    outcome: Outcome, campaigns: Mapping[str, Campaign], occurred_at_us: int, now_us: int
) -> list[dict[str, Any]]:
    """Each award of an accepted `outcome` with its cap, status, credit and expiry instants, as
    `Ledger.submit` would answer them were the purchase accepted at `now_us`."""
    assert outcome.declined is None, outcome.declined
    awards = []
    for award in outcome.awards:
        campaign = campaigns[award.campaign_id]
        schedule = campaign.credit.schedule
        credit_at = crediting.credit_at_us(schedule, campaign.credit.delay_business_days, occurred_at_us, now_us)
        awards.append(
            award_answer(
                award, schedule == "immediate", credit_at, crediting.expires_at_us(credit_at, campaign.validity_months)
            )
        )
    return awards


def award_answer(award: Award, immediate: bool, credit_at_us: int, expires_at_us: int) -> dict[str, Any]:
    """One award as a purchase's answer (and a quote) shows it: cap, status, credit and expiry."""
    return award_answer_of(award, award_status(immediate), format_instant(credit_at_us), format_instant(expires_at_us))


def award_status(immediate: bool) -> str:
    """An award's status in an answer: credited at once, or pending until its crediting day."""
    return "credited" if immediate else "pending"


def award_answer_of(award: Award, status: str, credit_at: str, expires_at: str) -> dict[str, Any]:
    """`award_answer` with its status (`award_status`) and instants already as texts
    (`format_instant`): what a run of purchases posted as columns computes once per campaign."""
    return {
        "campaign_id": award.campaign_id,
        "campaign_version": award.campaign_version,
        "points": award.points,
        "capped_by": award.capped_by,
        "status": status,
        "credit_at": credit_at,
        "expires_at": expires_at,
    }
