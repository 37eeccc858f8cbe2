"""The demo ward and day are realistic, stable for a seed, and rate within every cap and budget.

These run the same functions `setapay demo` runs, on a small day, and check
properties a ward finance officer relies on rather than particular numbers.
"""

from __future__ import annotations

import collections
import dataclasses

import pytest

from engine import demo
from engine.model import Purchase, Refund
from engine.rating import RatingState, build_catalog

N = 2_000
SEED = 11


@pytest.fixture(scope="module")
def ward():
    return demo.ward(SEED)


@pytest.fixture(scope="module")
def events(ward):
    merchants, _ = ward
    return demo.day(merchants, N, SEED)


@dataclasses.dataclass
class RatedDay:
    outcomes: list
    state: RatingState
    opening: RatingState


@pytest.fixture
def rated(ward, events, engine_name) -> RatedDay:
    merchants, campaigns = ward
    state = demo.opening_state(campaigns, events, SEED)
    opening = demo.opening_state(campaigns, events, SEED)
    outcomes = demo.rate_day(build_catalog(merchants, campaigns), events, state, batch_size=250, engine=engine_name)
    return RatedDay(outcomes, state, opening)


def test_the_ward_has_a_realistic_merchant_mix(ward):
    merchants, campaigns = ward
    by_class = collections.Counter(m.merchant_class for m in merchants)
    assert 200 <= len(merchants) <= 500
    assert by_class["small"] > by_class["semi_large"] > by_class["large"] > 0
    assert {m.shotengai_id for m in merchants} >= set(demo.SHOTENGAI)
    assert any(m.ward_local for m in merchants) and not all(m.ward_local for m in merchants)
    noon = demo._at(demo.DEMO_DATE, 12)
    certified = [m for m in merchants if m.certified_at(noon)]
    assert 0 < len(certified) < len(merchants) // 4
    assert len({m.id for m in merchants}) == len(merchants)
    assert {c.id for c in campaigns} == {"PB_2026_12", "ETHICAL_BONUS", "LOCAL_PRODUCE", "WELCOME_SHIMOKITA"}
    assert all(c.active_at(noon) for c in campaigns)


def test_ward_and_day_are_stable_for_a_seed(ward, events):
    assert demo.ward(SEED) == ward
    assert demo.day(ward[0], N, SEED) == events
    assert demo.ward(SEED + 1)[0] != ward[0]


def test_the_day_is_in_acceptance_order(events):
    purchases = [ev for _, ev in events if isinstance(ev, Purchase)]
    refunds = [(key, ev) for key, ev in events if isinstance(ev, Refund)]
    assert len(purchases) == N
    assert 0 < len(refunds) < N // 10
    assert any(p.items for p in purchases) and any(p.points_used for p in purchases)
    assert all(ev.occurred_at.date() == demo.DEMO_DATE for _, ev in events)
    times = [ev.occurred_at for _, ev in events]
    assert times == sorted(times)
    position = {key: i for i, (key, _) in enumerate(events)}
    by_key = dict(events)
    for key, refund in refunds:
        assert position[refund.original_id] < position[key]
        assert refund.amount <= by_key[refund.original_id].amount


def test_budgets_are_never_exceeded(ward, rated):
    _, campaigns = ward
    for c in campaigns:
        assert rated.state.spend[c.id] <= c.budget, c.id


def test_wallet_caps_hold_in_every_window(ward, rated):
    _, campaigns = ward
    caps = {c.id: c.per_wallet_cap for c in campaigns if c.per_wallet_cap is not None}
    for (campaign_id, _, _), used in rated.state.usage.items():
        if campaign_id in caps:
            assert 0 <= used <= caps[campaign_id]


def test_awards_respect_per_tx_caps_and_exclusivity(ward, events, rated):
    merchants, campaigns = ward
    by_id = {c.id: c for c in campaigns}
    merchant = {m.id: m for m in merchants}
    by_key = dict(events)
    for o in rated.outcomes:
        if o.type != "purchase" or o.declined:
            continue
        for a in o.awards:
            cap = by_id[a.campaign_id].per_tx_cap
            assert a.points > 0 and (cap is None or a.points <= cap)
        if any(by_id[a.campaign_id].exclusive for a in o.awards):
            assert len(o.awards) == 1
        if merchant[by_key[o.key].merchant_id].merchant_class == "large":
            assert "PB_2026_12" not in {a.campaign_id for a in o.awards}


def test_spend_moves_by_awards_less_clawbacks(ward, rated):
    _, campaigns = ward
    awarded = collections.Counter()
    clawed = collections.Counter()
    for o in rated.outcomes:
        for a in o.awards:
            awarded[a.campaign_id] += a.points
        for cb in o.clawbacks:
            clawed[cb.campaign_id] += cb.points
    for c in campaigns:
        assert rated.state.spend[c.id] - rated.opening.spend[c.id] == awarded[c.id] - clawed[c.id], c.id


def test_full_refunds_claw_back_exactly_the_award(events, rated):
    by_key = dict(events)
    outcome = {o.key: o for o in rated.outcomes}
    seen = 0
    for key, ev in events:
        if isinstance(ev, Refund) and not outcome[key].declined and ev.amount == by_key[ev.original_id].amount:
            original = outcome[ev.original_id]
            assert {c.campaign_id: c.points for c in outcome[key].clawbacks} == {
                a.campaign_id: a.points for a in original.awards
            }
            assert outcome[key].points_returned == by_key[ev.original_id].points_used
            seen += 1
    assert seen > 0


def test_the_summary_adds_up(engine_name):
    summary = demo.run_rating_demo(N, SEED, batch_size=300, engine=engine_name)
    assert summary["engine"] == engine_name
    # Wallets hold what they redeem, so nothing in the demo day is declined.
    assert summary["declined"] == {}
    assert summary["points_returned"] > 0
    assert (
        summary["purchases_accepted"] + summary["refunds_accepted"] + sum(summary["declined"].values())
        == (summary["events"])
    )
    assert summary["points_awarded"] == sum(c["points_awarded"] for c in summary["campaigns"].values())
    assert summary["points_clawed_back"] == sum(c["points_clawed_back"] for c in summary["campaigns"].values())
    for c in summary["campaigns"].values():
        assert c["spend"] - c["opening_spend"] == c["points_awarded"] - c["points_clawed_back"]
        assert c["budget_left"] == c["budget"] - c["spend"] >= 0
        assert sum(c["cap_hits"].values()) <= c["awards"]
        assert set(c["cap_hits"]) <= {"per_tx_cap", "wallet_cap", "budget"}
    assert summary["tx_per_s"] > 0


def test_every_engine_rates_the_demo_alike(engine_name):
    def numbers(summary: dict) -> dict:
        return {k: v for k, v in summary.items() if k not in ("engine", "seconds", "tx_per_s")}

    assert numbers(demo.run_rating_demo(N, SEED, engine=engine_name)) == numbers(
        demo.run_rating_demo(N, SEED, engine="python")
    )


def test_batch_size_does_not_change_the_result():
    one = demo.run_rating_demo(500, SEED, batch_size=1)
    many = demo.run_rating_demo(500, SEED, batch_size=500)
    assert {k: v for k, v in one.items() if k not in ("seconds", "tx_per_s")} == {
        k: v for k, v in many.items() if k not in ("seconds", "tx_per_s")
    }


def test_the_demo_command_prints_the_campaigns(capsys):
    from engine.cli import main

    assert main(["demo", "--transactions", "300", "--seed", str(SEED)]) == 0
    out = capsys.readouterr().out
    for campaign_id in ("PB_2026_12", "ETHICAL_BONUS", "LOCAL_PRODUCE", "WELCOME_SHIMOKITA"):
        assert campaign_id in out
    assert "tx/s" in out
