"""Property tests: the compiled kernel equals its twin, and SPEC §4's invariants hold.

Hypothesis draws whole scenarios: merchants (classes, 商店街 membership,
ward_local, certification intervals), campaigns (tiers over every match key,
item tags, fixed points, minimum base, per-transaction, wallet and budget
caps including a budget of 0, exclusive stacking, dekad or immediate
crediting), and purchases and refunds at instants around Asia/Tokyo day,
dekad and month boundaries written in several UTC offsets. Each scenario is
compared twice between the engines: as raw columns (every output and state
array) and as decoded outcomes and state, rated in two consecutive batches
so that refunds of purchases from an earlier batch are covered too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine import rating
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.rating import _kernel_py
from engine.rating.columns import encode

pytestmark = pytest.mark.skipif("cython" not in rating.ENGINES, reason="the compiled kernel is not built")

# Enough examples to reach the rare corners (budget exactly met, refunds of a
# declined purchase), few enough that the file runs in well under a minute.
EXAMPLES_MAX = 250
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES_MAX,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UTC = dt.UTC
# Asia/Tokyo midnights (15:00 UTC the day before): a month end, a dekad edge, a day edge.
BOUNDARIES = [
    dt.datetime(2026, 1, 31, 15, tzinfo=UTC),  # 2026-02-01 00:00 JST
    dt.datetime(2026, 2, 10, 15, tzinfo=UTC),  # 2026-02-11 00:00 JST
    dt.datetime(2026, 2, 28, 15, tzinfo=UTC),  # 2026-03-01 00:00 JST
]
OFFSETS = [
    dt.timedelta(0),
    dt.timedelta(hours=9),
    dt.timedelta(hours=-5),
    dt.timedelta(hours=5, minutes=30),
    dt.timedelta(hours=14),
    dt.timedelta(hours=-12),
]
TAGS = ["local_produce", "fair_trade", "eco", "workshop"]
MERCHANT_IDS = ["m0", "m1", "m2", "m3"]
WALLET_IDS = ["w0", "w1", "w2"]

instants = st.builds(
    lambda boundary, delta_us, offset: (boundary + dt.timedelta(microseconds=delta_us)).astimezone(dt.timezone(offset)),
    st.sampled_from(BOUNDARIES),
    st.one_of(st.sampled_from([-1, 0, 1, -1_000_000, 1_000_000]), st.integers(-3 * 86_400_000_000, 3 * 86_400_000_000)),
    st.sampled_from(OFFSETS),
)


@st.composite
def intervals(draw) -> tuple[dt.datetime, dt.datetime]:
    if draw(st.integers(0, 2)) > 0:
        # Wide enough to hold every instant drawn, so that awards are common.
        return BOUNDARIES[0] - dt.timedelta(days=4), BOUNDARIES[-1] + dt.timedelta(days=4)
    a, b = sorted([draw(instants), draw(instants)])
    return a, b if b > a else a + dt.timedelta(microseconds=1)


@st.composite
def merchants(draw, merchant_id: str) -> Merchant:
    certifications = []
    for _ in range(draw(st.integers(0, 2))):
        valid_from, valid_until = draw(intervals())
        certifications.append({"scheme": "setagaya_ethical", "valid_from": valid_from, "valid_until": valid_until})
    return Merchant.model_validate(
        {
            "id": merchant_id,
            "name": f"shop {merchant_id}",
            "merchant_class": draw(st.sampled_from(["small", "semi_large", "large"])),
            "shotengai_id": draw(st.sampled_from([None, "S_SANCHA", "S_KYODO"])),
            "ward_local": draw(st.booleans()),
            "ethical_certifications": certifications,
        }
    )


MATCH_KEYS = {
    "merchant_classes": st.lists(st.sampled_from(["small", "semi_large", "large"]), max_size=3, unique=True),
    "shotengai_member": st.booleans(),
    "ethical_certified": st.booleans(),
    "ward_local": st.booleans(),
    "merchant_ids": st.lists(st.sampled_from(MERCHANT_IDS + ["m_other"]), max_size=3, unique=True),
}
# An empty match and single keys hold often, so later tiers and campaigns are
# reached; any combination of keys covers the rest.
matches = st.one_of(
    st.just({}),
    st.one_of(*[st.fixed_dictionaries({key: value}) for key, value in MATCH_KEYS.items()]),
    st.fixed_dictionaries({}, optional=MATCH_KEYS),
)
# None (no cap) most often, 0 sometimes (a cap that always bites), else small enough to bite.
optional_points = st.sampled_from([None, None, None, 0, 1, 500, 3_000, 20_000])


@st.composite
def campaigns(draw, campaign_id: str) -> Campaign:
    starts_at, ends_at = draw(intervals())
    return Campaign.model_validate(
        {
            "id": campaign_id,
            "name": f"campaign {campaign_id}",
            "starts_at": starts_at,
            "ends_at": ends_at,
            "tiers": draw(
                st.lists(
                    st.fixed_dictionaries(
                        {
                            "match": matches,
                            "rate_bp": st.one_of(st.integers(0, 10_000), st.sampled_from([2_000, 1_000])),
                        }
                    ),
                    min_size=1,
                    max_size=4,
                )
            ),
            "item_tags": draw(st.sampled_from([None, None, None, (), ("local_produce",), ("fair_trade", "eco")])),
            "fixed_points": draw(st.sampled_from([0, 0, 1, 50])),
            "min_base": draw(st.sampled_from([0, 0, 0, 100, 1_000])),
            "per_tx_cap": draw(optional_points),
            "per_wallet_cap": draw(optional_points),
            "per_wallet_cap_period": draw(st.sampled_from(["campaign", "month", "day"])),
            "budget": draw(st.sampled_from([None, None, 0, 1, 1_000, 20_000, 1_000_000])),
            "stacking": draw(st.sampled_from(["stack", "exclusive"])),
            "priority": draw(st.integers(-2, 2)),
            "credit": {"schedule": draw(st.sampled_from(["immediate", "dekad"]))},
        }
    )


@st.composite
def purchases(draw, merchant_ids: list[str]) -> Purchase:
    items = None
    if draw(st.booleans()):
        items = [
            {
                "amount": draw(st.integers(0, 5_000)),
                "tags": draw(st.lists(st.sampled_from(TAGS + ["other"]), max_size=3)),
            }
            for _ in range(draw(st.integers(1, 4)))
        ]
        if sum(i["amount"] for i in items) == 0:
            items[0]["amount"] = 1
        amount = sum(i["amount"] for i in items)
    else:
        # The limits, and amounts that meet a minimum base exactly.
        amount = draw(st.one_of(st.sampled_from([1, 100, 1_000, 10_000_000]), st.integers(1, 20_000)))
    points_used = draw(st.sampled_from([0, 0, 0, 1, amount, min(amount, 500), amount // 2]))
    return Purchase.model_validate(
        {
            "wallet_id": draw(st.sampled_from(WALLET_IDS)),
            # Mostly known merchants: an unknown one is declined before any rule runs.
            "merchant_id": draw(st.sampled_from(merchant_ids * 4 + ["m_unknown"])),
            "terminal_id": "t1",
            "occurred_at": draw(instants),
            "amount": amount,
            "points_used": points_used,
            "items": items,
        }
    )


@st.composite
def scenarios(draw):
    merchant_list = [draw(merchants(mid)) for mid in MERCHANT_IDS[: draw(st.integers(1, len(MERCHANT_IDS)))]]
    campaign_list = [draw(campaigns(f"c{i}")) for i in range(draw(st.sampled_from([0, 1, 2, 3, 3, 4, 5])))]
    events: list[tuple[str, object]] = []
    amounts: dict[str, int] = {}
    for n in range(draw(st.integers(1, 30))):
        if amounts and draw(st.integers(0, 2)) == 0:
            original = draw(st.sampled_from(sorted(amounts) + ["p_missing"]))
            full = amounts.get(original, 1)
            # Full, partial and over-refunds alike; their order decides which is declined.
            amount = draw(st.one_of(st.just(full), st.integers(1, full), st.integers(1, 10_000_000)))
            refund = Refund(original_id=original, amount=amount, occurred_at=draw(instants))
            events.append((f"r{n}", refund))
        else:
            purchase = draw(purchases([m.id for m in merchant_list]))
            amounts[f"p{n}"] = purchase.amount
            events.append((f"p{n}", purchase))
    balance = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {w: st.one_of(st.sampled_from([-1, 0, 1, 500]), st.integers(-100, 30_000)) for w in WALLET_IDS}
            ),
        )
    )
    split = draw(st.integers(0, len(events)))
    return merchant_list, campaign_list, events, balance, split


def _assert_columns_equal(twin, compiled) -> None:
    for field in dataclasses.fields(twin):
        expected = getattr(twin, field.name)
        if isinstance(expected, np.ndarray):
            np.testing.assert_array_equal(getattr(compiled, field.name), expected, err_msg=field.name)


def _rate_in_two_batches(catalog, events, balance, split, engine):
    state = rating.RatingState(balance=None if balance is None else dict(balance))
    outcomes = rating.rate(catalog, events[:split], state, engine)
    outcomes += rating.rate(catalog, events[split:], state, engine)
    return outcomes, state


@PROPERTY_SETTINGS
@given(scenarios())
def test_kernel_equals_twin(scenario) -> None:
    merchant_list, campaign_list, events, balance, split = scenario
    catalog = rating.build_catalog(merchant_list, campaign_list)

    # Columns: every array, outputs and state alike, from copies of one encoding.
    cols, _ = encode(catalog, events, rating.RatingState(balance=None if balance is None else dict(balance)))
    twin, compiled = cols.copy(), cols.copy()
    _kernel_py.rate_columns(twin)
    rating.ENGINES["cython"].rate_columns(compiled)
    _assert_columns_equal(twin, compiled)

    # Decoded outcomes and state, with a batch boundary so later refunds meet earlier rows.
    twin_outcomes, twin_state = _rate_in_two_batches(catalog, events, balance, split, "python")
    compiled_outcomes, compiled_state = _rate_in_two_batches(catalog, events, balance, split, "cython")
    assert compiled_outcomes == twin_outcomes
    assert compiled_state == twin_state
    _report_coverage(twin_outcomes)


def _report_coverage(outcomes) -> None:
    """Name the rules a scenario reached (see pytest --hypothesis-show-statistics)."""
    for outcome in outcomes:
        if outcome.declined:
            event(f"declined {outcome.declined}")
        for award in outcome.awards:
            event(f"award capped by {award.capped_by}")
        if outcome.clawbacks:
            event("refund clawed back points")
        if outcome.points_returned:
            event("refund returned points")


@PROPERTY_SETTINGS
@given(scenarios())
def test_budgets_caps_and_full_refunds(scenario) -> None:
    merchant_list, campaign_list, events, balance, split = scenario
    catalog = rating.build_catalog(merchant_list, campaign_list)
    outcomes, state = _rate_in_two_batches(catalog, events, balance, split, None)
    by_id = {c.id: c for c in campaign_list}

    # Net issued points never exceed the budget (nor go below zero).
    for cid, spent in state.spend.items():
        assert spent >= 0
        if by_id[cid].budget is not None:
            assert spent <= by_id[cid].budget, cid

    # A wallet's usage of a window never exceeds the campaign's cap for it.
    for (cid, _wallet, _window), used in state.usage.items():
        assert used >= 0
        if by_id[cid].per_wallet_cap is not None:
            assert used <= by_id[cid].per_wallet_cap, cid

    # Refunds summed per purchase: once refunded in full, exactly the award is
    # clawed back and exactly the points used are returned.
    clawed: dict[str, dict[str, int]] = {}
    returned: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.type == "refund" and outcome.declined is None:
            per_campaign = clawed.setdefault(outcome.original_key, {})
            for clawback in outcome.clawbacks:
                per_campaign[clawback.campaign_id] = per_campaign.get(clawback.campaign_id, 0) + clawback.points
            returned[outcome.original_key] = returned.get(outcome.original_key, 0) + outcome.points_returned
    for key, purchase in state.purchases.items():
        if purchase.refunded == purchase.amount:
            awards = {cid: award.points for cid, award in purchase.awards.items()}
            assert clawed.get(key, {}) == {cid: p for cid, p in awards.items() if p}, key
            assert returned.get(key, 0) == purchase.points_used, key
            assert all(award.pending == 0 for award in purchase.awards.values()), key
        else:
            assert purchase.refunded < purchase.amount
            for cid, points in clawed.get(key, {}).items():
                assert points <= purchase.awards[cid].points


def _changed(values: dict, before: dict) -> dict:
    return {key: value for key, value in values.items() if value != before.get(key, 0)}


@PROPERTY_SETTINGS
@given(scenarios())
def test_the_campaigns_a_batch_can_meet_rate_it_as_every_campaign_does(scenario) -> None:
    """The ledger rates a group against `CatalogSnapshot.rating_for` it: only the campaigns whose
    window holds an instant between its first and last purchase. Outcomes, purchases and every
    meter that moved are those of a catalog of every campaign, batch after batch (a refund in the
    second batch meets awards of campaigns its own catalog does not hold)."""
    from engine.store.ledger import CatalogSnapshot

    merchant_list, campaign_list, events, balance, split = scenario
    merchant_list = sorted(merchant_list, key=lambda m: m.id)
    snapshot = CatalogSnapshot(
        version=1,
        campaigns={c.id: c for c in campaign_list},
        merchants={m.id: m for m in merchant_list},
        merchant_by_terminal={},
    )
    full = rating.build_catalog(merchant_list, campaign_list)
    results = []
    for catalog_of in (lambda batch: full, lambda batch: snapshot.rating_for(body for _, body in batch)):
        state = rating.RatingState(balance=None if balance is None else dict(balance))
        outcomes = []
        for batch in (events[:split], events[split:]):
            outcomes += rating.rate(catalog_of(batch), batch, state)
        results.append((outcomes, state))
    (every, every_state), (met, met_state) = results
    assert met == every
    assert met_state.purchases == every_state.purchases
    assert [list(p.awards) for p in met_state.purchases.values()] == [
        list(p.awards) for p in every_state.purchases.values()
    ]
    assert _changed(met_state.usage, {}) == _changed(every_state.usage, {})
    assert _changed(met_state.spend, {}) == _changed(every_state.spend, {})
    assert met_state.balance == every_state.balance
