"""The columnar `encode` and `decode` (engine.rating.columns) equal the record-at-a-time ones they
replaced (reference_codec.py) on every input: the same Columns (every array, its dtype too) and
context, then, once rated, the same outcomes and the same state after, down to the order of
its dicts and the type of its numbers (plain ints, never numpy's).

Hypothesis draws a state left by earlier batches (purchases whose awards name campaigns of the
catalog and campaigns no longer in it, in any order, with window keys as `window_key` gives
them or anywhere in int64; usage of some of the batch's windows and of others; spend; balances
or none) and two batches after it: purchases (items with tags, unknown merchants, points used
beyond the balance, instants near Asia/Tokyo day and month edges and at the first and last
instants a record may hold) and refunds (of this batch's purchases, before or after them, of the
state's, of none). The second batch is rated against some of the campaigns only, as the ledger
rates a group against those it can meet.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import rating
from engine.model import _INSTANT_END_US, _INSTANT_FIRST_US, Refund
from engine.rating import Award, Clawback, columns
from engine.rating.state import AwardState, PurchaseState, RatingState, window_key
from engine.timeutil import from_us, to_us
from tests.rating import reference_codec
from tests.rating.test_properties import WALLET_IDS, campaigns, instants, merchants, purchases

CODEC_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
OLD_CAMPAIGNS = ["c_old_a", "c_old_b"]  # campaigns an earlier batch awarded, not in any catalog here
EDGE_INSTANTS = [
    from_us(_INSTANT_FIRST_US),
    from_us(_INSTANT_END_US - 1),
    from_us(-1),  # 1969-12-31T23:59:59.999999Z: day and month keys below zero
    dt.datetime(1969, 12, 31, 15, tzinfo=dt.UTC),  # 1970-01-01 00:00 in Asia/Tokyo
]
window_keys = st.one_of(
    st.sampled_from([0, -1, 20_000, 675, -719_162, 2_932_896]),
    # Never `window_key`'s, but what a state holds is kept as it is: even too far apart to pack.
    st.integers(-(2**40), 2**40),
    st.sampled_from([-(2**63), 2**63 - 1, 2**62]),
)


@st.composite
def prior_purchases(draw, campaign_ids: list[str]) -> dict[str, PurchaseState]:
    out: dict[str, PurchaseState] = {}
    for n in range(draw(st.integers(0, 4))):
        amount = draw(st.integers(1, 20_000))
        awards: dict[str, AwardState] = {}
        # Any order: the state keeps the order its awards were read in.
        for cid in draw(st.lists(st.sampled_from(campaign_ids + OLD_CAMPAIGNS), unique=True, max_size=4)):
            points = draw(st.integers(0, 3_000))
            awards[cid] = AwardState(cid, 1, points, draw(st.integers(0, points)), draw(window_keys))
        out[f"q{n}"] = PurchaseState(
            draw(st.sampled_from(WALLET_IDS + ["w_old"])),
            "m0",
            amount,
            draw(st.integers(0, amount)),
            draw(st.integers(0, amount)),
            awards,
        )
    return out


@st.composite
def batches(draw):
    merchant_list = [draw(merchants(mid)) for mid in ["m0", "m1", "m2"][: draw(st.integers(1, 3))]]
    campaign_list = [draw(campaigns(f"c{i}")) for i in range(draw(st.integers(0, 5)))]
    events: list[tuple[str, object]] = []
    keys: list[str] = []
    for n in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            # A refund: of a purchase of the batch (maybe one still to come), of the state's, of none.
            original = draw(st.sampled_from([*keys, f"p{n + 1}", f"p{n + 2}", "q0", "q1", "q9", "p_missing"]))
            at = draw(st.sampled_from(EDGE_INSTANTS) if draw(st.integers(0, 9)) == 0 else instants)
            refund = Refund(original_id=original, amount=draw(st.integers(1, 20_000)), occurred_at=at)
            events.append((f"r{n}", refund))
        else:
            purchase = draw(purchases([m.id for m in merchant_list]))
            if draw(st.integers(0, 9)) == 0:
                purchase = purchase.model_copy(update={"occurred_at": draw(st.sampled_from(EDGE_INSTANTS))})
            events.append((f"p{n}", purchase))
            keys.append(f"p{n}")
    ids = [c.id for c in campaign_list]
    state = RatingState(purchases=draw(prior_purchases(ids)))
    # Usage: of windows the batch's purchases count in (as the ledger reads them), and of others.
    for _, ev in events:
        if ev.type == "purchase" and campaign_list and draw(st.integers(0, 2)) == 0:
            c = draw(st.sampled_from(campaign_list))
            slot = (c.id, ev.wallet_id, window_key(c.per_wallet_cap_period, to_us(ev.occurred_at)))
            state.usage[slot] = draw(st.integers(0, 20_000))
    for _ in range(draw(st.integers(0, 3))):
        slot = (draw(st.sampled_from(ids + OLD_CAMPAIGNS)), draw(st.sampled_from(WALLET_IDS)), draw(window_keys))
        state.usage[slot] = draw(st.integers(0, 20_000))
    state.spend = {cid: draw(st.integers(0, 50_000)) for cid in ids + OLD_CAMPAIGNS if draw(st.booleans())}
    if draw(st.booleans()):
        state.balance = {w: draw(st.integers(-100, 30_000)) for w in WALLET_IDS + ["w_old"] if draw(st.booleans())}
    split = draw(st.integers(0, len(events)))
    # The second batch's catalog: some of the campaigns (the ledger's `rating_for`), all ranked.
    second = draw(st.lists(st.sampled_from(ids), unique=True)) if ids else []
    return merchant_list, campaign_list, events, state, split, second


def _assert_plain_ints(value: object, where: str) -> None:
    """No numpy scalar anywhere (they compare equal to ints, but serialise and hash otherwise)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _assert_plain_ints(k, where)
            _assert_plain_ints(v, where)
    elif isinstance(value, list | tuple):
        for v in value:
            _assert_plain_ints(v, where)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _assert_plain_ints(getattr(value, f.name), f"{where}.{f.name}")
    else:
        assert value is None or type(value) in (int, str, bool), (where, type(value))


def _snapshot(state: RatingState) -> object:
    """Everything the state holds, in its dicts' order."""
    return (
        list(state.usage.items()),
        list(state.spend.items()),
        [(key, p, list(p.awards.items())) for key, p in state.purchases.items()],
        None if state.balance is None else list(state.balance.items()),
    )


def _rate_both(catalog, batch, ref_state: RatingState, new_state: RatingState) -> None:
    ref_cols, ref_ctx = reference_codec.encode(catalog, batch, ref_state)
    cols, ctx = columns.encode(catalog, batch, new_state)
    for field in dataclasses.fields(ref_cols):
        expected, got = getattr(ref_cols, field.name), getattr(cols, field.name)
        if isinstance(expected, np.ndarray):
            assert got.dtype == expected.dtype, field.name
            np.testing.assert_array_equal(got, expected, err_msg=field.name)
        else:
            assert got == expected, field.name
    for field in dataclasses.fields(ref_ctx):
        assert getattr(ctx, field.name) == getattr(ref_ctx, field.name), field.name
    rating.rate_columns(ref_cols)
    rating.rate_columns(cols)
    expected_outcomes = reference_codec.decode(catalog, ref_cols, ref_ctx, ref_state)
    outcomes = columns.decode(catalog, cols, ctx, new_state)
    assert outcomes == expected_outcomes
    for outcome in outcomes:
        assert all(type(a) is Award for a in outcome.awards)
        assert all(type(c) is Clawback for c in outcome.clawbacks)
    _assert_plain_ints(outcomes, "outcomes")
    assert _snapshot(new_state) == _snapshot(ref_state)
    _assert_plain_ints(dataclasses.asdict(new_state), "state")


@CODEC_SETTINGS
@given(batches())
def test_columnar_codec_equals_the_reference(scenario) -> None:
    merchant_list, campaign_list, events, state, split, second = scenario
    full = rating.build_catalog(merchant_list, campaign_list)
    some = rating.build_catalog(merchant_list, [c for c in campaign_list if c.id in second], full.rank)
    ref_state, new_state = copy.deepcopy(state), copy.deepcopy(state)
    _rate_both(full, events[:split], ref_state, new_state)
    _rate_both(some, events[split:], ref_state, new_state)


def test_a_plain_group_has_every_slot_of_its_purchases() -> None:
    """The common case spelled out: distinct wallets, capped campaigns of each period."""
    from engine.demo import ward
    from engine.model import Purchase

    merchant_list, campaign_list = ward(7, dt.date(2026, 6, 1))
    catalog = rating.build_catalog(merchant_list, campaign_list)
    at = dt.datetime(2026, 6, 1, 12, tzinfo=dt.UTC)
    batch = [
        (
            f"p{i}",
            Purchase(
                wallet_id=f"w{i % 70}",
                merchant_id=merchant_list[i % len(merchant_list)].id,
                terminal_id="t",
                occurred_at=at + dt.timedelta(hours=i),
                amount=100 + i,
            ),
        )
        for i in range(200)
    ]
    for balance in (None, {"w1": 5}):
        _rate_both(catalog, batch, RatingState(balance=copy.copy(balance)), RatingState(balance=copy.copy(balance)))


@pytest.mark.parametrize("codec", [reference_codec, columns], ids=["reference", "columnar"])
def test_a_purchase_key_twice_is_refused(codec) -> None:
    from engine.model import Purchase

    purchase = Purchase(
        wallet_id="w", merchant_id="m", terminal_id="t", occurred_at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC), amount=1
    )
    catalog = rating.build_catalog([], [])
    with pytest.raises(AssertionError, match="duplicate purchase key p1"):
        codec.encode(catalog, [("p1", purchase), ("p1", purchase)], RatingState())
    state = RatingState(purchases={"p1": PurchaseState("w", "m", 1, 0)})
    with pytest.raises(AssertionError, match="duplicate purchase key p1"):
        codec.encode(catalog, [("p0", purchase), ("p1", purchase)], state)
