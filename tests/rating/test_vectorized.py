"""The vectorized encoder equals `columns.encode`: same outcomes, state and usage on random batches.

Each scenario draws merchants, campaigns (tiers over the match keys, item
tags, caps of every kind and period, budgets that run out, exclusive
stacking, dekad crediting) and two consecutive batches of purchases and
refunds (refunds of this batch's and of the earlier batch's purchases,
unknown originals, over-refunds, redemptions beyond the balance). The first
batch is rated from zero state and the second from the state the first
left, both through `encode` and through `build_columns`; the rated arrays
must say the same thing, for both engines.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from engine import rating
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.rating import RatingState
from engine.rating import _kernel_py as k
from engine.rating.columns import build_catalog, encode
from engine.rating.vectorized import Batch, Opening, build_columns, item_masks, split_slot_keys
from engine.timeutil import to_us

JST = dt.timezone(dt.timedelta(hours=9))
START = dt.datetime(2026, 5, 28, tzinfo=JST)
SPAN_US = 9 * 86_400_000_000  # over a month end and a few day edges
TAGS = ["local", "fair", "eco"]
SEEDS = range(12)


def _merchants(rng) -> list[Merchant]:
    out = []
    for i in range(6):
        certs = []
        if rng.random() < 0.4:
            start = START + dt.timedelta(days=int(rng.integers(0, 8)))
            certs.append(
                {"scheme": "setagaya_ethical", "valid_from": start, "valid_until": start + dt.timedelta(days=3)}
            )
        out.append(
            Merchant.model_validate(
                {
                    "id": f"m{i}",
                    "name": f"shop {i}",
                    "merchant_class": ["small", "semi_large", "large"][i % 3],
                    "shotengai_id": "S1" if rng.random() < 0.5 else None,
                    "ward_local": bool(rng.random() < 0.6),
                    "ethical_certifications": certs,
                }
            )
        )
    return out


def _campaigns(rng) -> list[Campaign]:
    out = []
    for i in range(int(rng.integers(1, 5))):
        tiers = [
            {"match": {"merchant_classes": ["small"], "shotengai_member": True}, "rate_bp": 2000},
            {"match": {"ethical_certified": True}, "rate_bp": 700},
            {"match": {}, "rate_bp": int(rng.integers(0, 1500))},
        ]
        record = {
            "id": f"c{i}",
            "name": f"campaign {i}",
            "starts_at": START + dt.timedelta(days=int(rng.integers(0, 3))),
            "ends_at": START + dt.timedelta(days=int(rng.integers(5, 10))),
            "tiers": tiers[int(rng.integers(0, 3)) :],
            "priority": int(rng.integers(0, 3)),
            "fixed_points": int(rng.integers(0, 3)) * 5,
            "min_base": int(rng.choice([0, 0, 300])),
            "stacking": "exclusive" if rng.random() < 0.25 else "stack",
            "per_wallet_cap_period": str(rng.choice(["day", "month", "campaign"])),
        }
        if rng.random() < 0.5:
            record["per_tx_cap"] = int(rng.integers(10, 200))
        if rng.random() < 0.6:
            record["per_wallet_cap"] = int(rng.integers(50, 600))
        if rng.random() < 0.6:
            record["budget"] = int(rng.integers(0, 4000))
        if rng.random() < 0.3:
            record["item_tags"] = [str(rng.choice(TAGS))]
        if rng.random() < 0.3:
            record["credit"] = {"schedule": "dekad", "delay_business_days": 1}
        out.append(Campaign.model_validate(record))
    return out


def _events(rng, n: int, prefix: str, earlier: list[str], amounts: dict[str, int]) -> list:
    events, purchases = [], []
    for i in range(n):
        at = START + dt.timedelta(microseconds=int(rng.integers(0, SPAN_US)))
        key = f"{prefix}{i}"
        pool = purchases + earlier
        if pool and rng.random() < 0.25:
            original = str(rng.choice(pool)) if rng.random() < 0.95 else "nowhere"
            amount = int(rng.integers(1, amounts.get(original, 500) + 50))
            events.append((key, Refund(original_id=original, amount=amount, occurred_at=at)))
            continue
        amount = int(rng.integers(1, 3000))
        items = None
        if rng.random() < 0.4:
            first = int(rng.integers(0, amount + 1))
            items = [
                {"amount": first, "tags": [str(t) for t in rng.choice(TAGS, int(rng.integers(0, 3)))]},
                {"amount": amount - first, "tags": []},
            ]
        merchant = f"m{int(rng.integers(0, 6))}" if rng.random() < 0.97 else "unknown"
        events.append(
            (
                key,
                Purchase(
                    wallet_id=f"w{int(rng.integers(0, 5))}",
                    merchant_id=merchant,
                    terminal_id="t",
                    occurred_at=at,
                    amount=amount,
                    points_used=int(rng.integers(0, min(200, amount))) if rng.random() < 0.3 else 0,
                    items=items,
                ),
            )
        )
        purchases.append(key)
        amounts[key] = amount
    return events


def _batch(catalog, events, wallet_of: dict[str, int], row_of: dict[str, int]) -> Batch:
    """Arrays of `events`; `row_of` holds the earlier rows and gains this batch's purchases."""
    N = len(events)
    kind, merchant, wallet = np.zeros(N, np.int8), np.full(N, -1, np.int32), np.zeros(N, np.int64)
    at, amount, used, original = (np.zeros(N, np.int64) for _ in range(4))
    item_start, item_amount, tags = np.zeros(N + 1, np.int32), [], []
    next_row = len(row_of)
    for i, (key, ev) in enumerate(events):
        at[i], amount[i] = to_us(ev.occurred_at), ev.amount
        if ev.type == "purchase":
            merchant[i] = catalog.merchant_index.get(ev.merchant_id, -1)
            wallet[i] = wallet_of.setdefault(ev.wallet_id, len(wallet_of))
            used[i] = ev.points_used
            row_of[key] = next_row
            next_row += 1
            for item in ev.items or ():
                item_amount.append(item.amount)
                tags.append(item.tags)
        else:
            kind[i] = k.KIND_REFUND
            original[i] = row_of.get(ev.original_id, -1)
        item_start[i + 1] = len(item_amount)
    return Batch(
        kind,
        merchant,
        wallet,
        at,
        amount,
        used,
        original,
        item_start,
        np.array(item_amount, np.int64),
        item_masks(catalog, tags),
    )


def _opening(catalog, state: RatingState, wallet_of, row_of, periods) -> Opening:
    C = len(catalog.campaigns)
    index = {cid: ci for ci, cid in enumerate(catalog.campaign_ids)}
    keys = sorted(row_of, key=row_of.get)
    award, pending, window = (np.zeros(len(keys) * C, np.int64) for _ in range(3))
    for row, key in enumerate(keys):
        for cid, a in state.purchases[key].awards.items():
            award[row * C + index[cid]], pending[row * C + index[cid]] = a.points, a.pending
            window[row * C + index[cid]] = a.window_key
    usage = [(index[c], wallet_of[w], wk, v) for (c, w, wk), v in state.usage.items()]
    u = np.array(usage, np.int64).reshape(-1, 4)
    balance = np.zeros(len(wallet_of), np.int64)
    for w, v in state.balance.items():
        balance[wallet_of[w]] = v
    return Opening(
        np.array([wallet_of[state.purchases[key].wallet_id] for key in keys], np.int64),
        np.array([state.purchases[key].amount for key in keys], np.int64),
        np.array([state.purchases[key].points_used for key in keys], np.int64),
        np.array([state.purchases[key].refunded for key in keys], np.int64),
        award,
        pending,
        window,
        u[:, 0],
        u[:, 1],
        u[:, 2],
        u[:, 3],
        np.array([state.spend.get(cid, 0) for cid in catalog.campaign_ids], np.int64),
        balance,
    )


def _outcomes(cols, catalog, events, slot_keys, wallet_names) -> tuple[list, dict, list]:
    """What the vectorized columns say, in the shape of `Outcome.as_expected`, plus usage and spend."""
    C = len(catalog.campaigns)
    out = []
    for i, (_, ev) in enumerate(events):
        status = int(cols.out_status[i])
        if status:
            out.append({"declined": status})
            continue
        row = int(cols.x_row[i])
        if ev.type == "purchase":
            out.append(
                {
                    "awards": [
                        (catalog.campaign_ids[c], int(cols.r_award[row * C + c]), int(cols.out_capped[i * C + c]))
                        for c in range(C)
                        if cols.r_award[row * C + c]
                    ]
                }
            )
        else:
            out.append(
                {
                    "clawbacks": sorted(
                        (catalog.campaign_ids[c], int(cols.out_clawback[i * C + c]))
                        for c in range(C)
                        if cols.out_clawback[i * C + c]
                    ),
                    "returned": int(cols.out_returned[i]),
                }
            )
    campaign, wallet, window = split_slot_keys(slot_keys)
    usage = {
        (catalog.campaign_ids[c], wallet_names[w], wk): int(v)
        for c, w, wk, v in zip(campaign, wallet, window, cols.usage)
        if v
    }
    return out, usage, cols.spend.tolist()


_CAPPED = {None: 0, "per_tx_cap": 1, "wallet_cap": 2, "budget": 3}
_STATUS = {code: status for status, code in __import__("engine.rating.columns", fromlist=["x"]).STATUS_CODES.items()}


def _reference(catalog, events, state, engine_name) -> tuple[list, dict, list]:
    outcomes = rating.rate(catalog, events, state, engine_name)
    out = []
    for o in outcomes:
        if o.declined:
            out.append({"declined": _STATUS[o.declined]})
        elif o.type == "purchase":
            out.append({"awards": [(a.campaign_id, a.points, _CAPPED[a.capped_by]) for a in o.awards]})
        else:
            out.append(
                {"clawbacks": sorted((c.campaign_id, c.points) for c in o.clawbacks), "returned": o.points_returned}
            )
    usage = {key: v for key, v in state.usage.items() if v}
    return out, usage, [state.spend.get(cid, 0) for cid in catalog.campaign_ids]


@pytest.mark.parametrize("seed", SEEDS)
def test_vectorized_equals_encode_over_two_batches(seed: int, engine_name: str) -> None:
    rng = np.random.default_rng(seed)
    catalog = build_catalog(_merchants(rng), _campaigns(rng))
    periods = [c.per_wallet_cap_period for c in catalog.campaigns]
    amounts: dict[str, int] = {}
    first = _events(rng, 120, "a", [], amounts)
    second = _events(rng, 120, "b", [key for key, ev in first if ev.type == "purchase"], amounts)

    # Reference: encode + rate with a state carried between the batches.
    state = RatingState(balance={f"w{i}": int(rng.integers(0, 400)) for i in range(5)})
    wallet_of = {f"w{i}": i for i in range(5)}
    wallet_names = list(wallet_of)
    opening_balance = np.array([state.balance[w] for w in wallet_names], np.int64)

    row_of: dict[str, int] = {}
    batch = _batch(catalog, first, wallet_of, row_of)
    opening = Opening.empty(len(catalog.campaigns))
    opening.balance = opening_balance
    cols, slot_keys = build_columns(catalog, batch, opening)
    rating.rate_columns(cols, engine_name)
    got = _outcomes(cols, catalog, first, slot_keys, wallet_names)
    assert got == _reference(catalog, first, state, engine_name)
    assert cols.balance.tolist() == [state.balance[w] for w in wallet_names]

    # Second batch from the state the first left; rows of purchases the first declined are not carried.
    accepted = {key for (key, ev), s in zip(first, cols.out_status) if ev.type == "purchase" and s == 0}
    row_of = {key: i for i, key in enumerate(key for key, _ in first if key in accepted)}
    opening = _opening(catalog, state, wallet_of, row_of, periods)
    batch = _batch(catalog, second, wallet_of, row_of)
    cols, slot_keys = build_columns(catalog, batch, opening)
    rating.rate_columns(cols, engine_name)
    got = _outcomes(cols, catalog, second, slot_keys, wallet_names)
    assert got == _reference(catalog, second, state, engine_name)
    assert cols.balance.tolist() == [state.balance[w] for w in wallet_names]


def test_columns_identical_to_encode_from_zero_state(engine_name: str) -> None:
    """Same arrays as `encode` where the layout is the same (slots are numbered differently)."""
    rng = np.random.default_rng(99)
    catalog = build_catalog(_merchants(rng), _campaigns(rng))
    events = _events(rng, 200, "x", [], {})
    reference, _ = encode(catalog, events, RatingState())
    cols, _ = build_columns(catalog, _batch(catalog, events, {}, {}))
    for name in (
        "x_kind",
        "x_merchant",
        "x_occurred_at",
        "x_amount",
        "x_points_used",
        "x_row",
        "x_item_start",
        "item_amount",
        "item_mask",
        "r_amount",
        "r_points_used",
        "r_valid",
        "c_budget",
        "c_tier_start",
    ):
        np.testing.assert_array_equal(getattr(cols, name), getattr(reference, name), err_msg=name)
    rating.rate_columns(reference, engine_name)
    rating.rate_columns(cols, engine_name)
    for name in ("out_status", "out_capped", "out_clawback", "out_returned", "r_award", "r_pending", "spend"):
        np.testing.assert_array_equal(getattr(cols, name), getattr(reference, name), err_msg=name)
