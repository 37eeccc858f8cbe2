"""The record-at-a-time `encode` and `decode` that `engine.rating.columns` replaced: the reference
the property tests (test_codec.py) hold the columnar ones equal to, Columns, outcomes and state
alike. Kept as it was (one dict lookup per purchase and campaign), not used by the engine."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from engine.model import Purchase, Refund
from engine.rating import Award, Clawback, Outcome
from engine.rating import _kernel_py as k
from engine.rating.columns import CAPPED_BY, I64, STATUS_CODES, Catalog, Columns, Event, _a, catalog_columns
from engine.rating.state import AwardState, PurchaseState, RatingState, window_key
from engine.timeutil import to_us


@dataclasses.dataclass
class _Context:
    keys: list[str]
    events: list[Purchase | Refund]
    campaign_ids: list[str]
    row_keys: list[str]
    prior_rows: int
    wallet_ids: list[str]
    slot_keys: list[tuple[str, str, int]]


def encode(catalog: Catalog, events: Sequence[Event], state: RatingState) -> tuple[Columns, _Context]:
    """Columns for `events` (a list of (key, Purchase | Refund)) against `state`."""
    campaigns = catalog.campaigns
    campaign_ids = list(catalog.campaign_ids)
    campaign_index = {cid: i for i, cid in enumerate(campaign_ids)}
    batch_purchases = {key for key, ev in events if isinstance(ev, Purchase)}

    # Purchase rows: earlier purchases that refunds here refer to, then this batch's.
    row_keys: list[str] = []
    row_index: dict[str, int] = {}
    for _, ev in events:
        if (
            ev.type == "refund"
            and ev.original_id not in batch_purchases
            and ev.original_id in state.purchases
            and ev.original_id not in row_index
        ):
            row_index[ev.original_id] = len(row_keys)
            row_keys.append(ev.original_id)
            for cid in state.purchases[ev.original_id].awards:
                if cid not in campaign_index:  # an award of a campaign no longer in the catalog
                    campaign_index[cid] = len(campaign_ids)
                    campaign_ids.append(cid)
    prior_rows = len(row_keys)
    for key, ev in events:
        if isinstance(ev, Purchase):
            assert key not in row_index and key not in state.purchases, f"duplicate purchase key {key}"
            row_index[key] = len(row_keys)
            row_keys.append(key)

    C, R, N = len(campaign_ids), len(row_keys), len(events)
    extra = C - len(campaigns)
    wallet_index: dict[str, int] = {}
    slot_index: dict[tuple[str, str, int], int] = {}
    # A wallet's and a (campaign, wallet, window) slot's index, given in order of first sight:
    # `new_wallet(wid, len(wallet_index))`, `new_slot(key, len(slot_index))`.
    new_wallet, new_slot = wallet_index.setdefault, slot_index.setdefault

    r_wallet = np.zeros(R, np.int32)
    r_amount = np.zeros(R, I64)
    r_points_used = np.zeros(R, I64)
    r_refunded = np.zeros(R, I64)
    r_valid = np.zeros(R, np.int8)
    r_award = np.zeros(R * C, I64)
    r_pending = np.zeros(R * C, I64)
    r_slot = np.full(R * C, -1, np.int32)
    for row, key in enumerate(row_keys[:prior_rows]):
        p = state.purchases[key]
        r_wallet[row] = new_wallet(p.wallet_id, len(wallet_index))
        r_amount[row], r_points_used[row], r_refunded[row], r_valid[row] = p.amount, p.points_used, p.refunded, 1
        for cid, award in p.awards.items():
            ci = campaign_index[cid]
            r_award[row * C + ci] = award.points
            r_pending[row * C + ci] = award.pending
            r_slot[row * C + ci] = new_slot((cid, p.wallet_id, award.window_key), len(slot_index))

    # Built as lists, turned into arrays once: an array's item assignment costs more.
    x_kind = [0] * N
    x_merchant = [-1] * N
    x_occurred_at = [0] * N
    x_amount = [0] * N
    x_points_used = [0] * N
    x_row = [-1] * N
    x_item_start = [0] * (N + 1)
    slots = r_slot.tolist()
    rows_wallet = r_wallet.tolist()
    rows_amount = r_amount.tolist()
    rows_points_used = r_points_used.tolist()
    item_amount: list[int] = []
    item_mask: list[int] = []
    merchant_index, tag_bits = catalog.merchant_index, catalog.tag_bits
    cap_periods = [(ci, c.id, c.per_wallet_cap_period) for ci, c in enumerate(campaigns)]
    tag_masks: dict[tuple[str, ...], int] = {}  # an item's tags -> the catalog's bits of them
    for i, (key, ev) in enumerate(events):
        at = to_us(ev.occurred_at)
        x_occurred_at[i], x_amount[i] = at, ev.amount
        if ev.type == "purchase":
            row = row_index[key]
            x_row[i] = row
            x_merchant[i] = merchant_index.get(ev.merchant_id, -1)
            x_points_used[i] = ev.points_used
            wid = ev.wallet_id
            rows_wallet[row] = new_wallet(wid, len(wallet_index))
            rows_amount[row], rows_points_used[row] = ev.amount, ev.points_used
            # Usage is counted for every campaign, capped or not, so a later
            # version that adds a wallet cap still sees what was awarded.
            base = row * C
            for ci, cid, period in cap_periods:
                slots[base + ci] = new_slot((cid, wid, window_key(period, at)), len(slot_index))
            for item in ev.items or ():
                item_amount.append(item.amount)
                mask = tag_masks.get(item.tags)  # a batch's items carry a few tag lists, over and over
                if mask is None:
                    mask = tag_masks[item.tags] = sum(1 << tag_bits[t] for t in set(item.tags) if t in tag_bits)
                item_mask.append(mask)
        else:
            x_kind[i] = k.KIND_REFUND
            x_row[i] = row_index.get(ev.original_id, -1)
        x_item_start[i + 1] = len(item_amount)
    r_slot = np.array(slots, np.int32)
    r_wallet = np.array(rows_wallet, np.int32)
    r_amount = np.array(rows_amount, I64)
    r_points_used = np.array(rows_points_used, I64)

    wallet_ids = list(wallet_index)
    cols = Columns(
        **catalog_columns(catalog, extra),
        x_kind=np.array(x_kind, np.int8),
        x_merchant=np.array(x_merchant, np.int32),
        x_occurred_at=np.array(x_occurred_at, I64),
        x_amount=np.array(x_amount, I64),
        x_points_used=np.array(x_points_used, I64),
        x_row=np.array(x_row, np.int32),
        x_item_start=np.array(x_item_start, np.int32),
        item_amount=_a(item_amount),
        item_mask=_a(item_mask, np.uint64),
        r_wallet=r_wallet,
        r_amount=r_amount,
        r_points_used=r_points_used,
        r_refunded=r_refunded,
        r_valid=r_valid,
        r_award=r_award,
        r_pending=r_pending,
        r_slot=r_slot,
        usage=_a([state.usage.get(s, 0) for s in slot_index]),
        spend=_a([state.spend.get(cid, 0) for cid in campaign_ids]),
        balance=_a([(state.balance or {}).get(w, 0) for w in wallet_ids]),
        check_balance=int(state.balance is not None),
        out_status=np.zeros(N, np.int8),
        out_capped=np.zeros(N * C, np.int8),
        out_clawback=np.zeros(N * C, I64),
        out_returned=np.zeros(N, I64),
    )
    ctx = _Context(
        [key for key, _ in events],
        [ev for _, ev in events],
        campaign_ids,
        row_keys,
        prior_rows,
        wallet_ids,
        list(slot_index),
    )
    return cols, ctx


def decode(catalog: Catalog, cols: Columns, ctx: _Context, state: RatingState) -> list[Outcome]:
    """Outcomes of a rated batch, folding the batch's effects into `state`."""
    C = len(ctx.campaign_ids)
    versions = {c.id: c.version for c in catalog.campaigns}
    periods = {c.id: c.per_wallet_cap_period for c in catalog.campaigns}
    status = cols.out_status.tolist()
    capped = cols.out_capped.tolist()
    clawback = cols.out_clawback.tolist()
    returned = cols.out_returned.tolist()
    r_award = cols.r_award.tolist()
    r_pending = cols.r_pending.tolist()

    # Earlier purchases a refund touched: their refunded amount and pending points.
    for row, key in enumerate(ctx.row_keys[: ctx.prior_rows]):
        p = state.purchases[key]
        p.refunded = int(cols.r_refunded[row])
        for cid, award in p.awards.items():
            award.pending = r_pending[row * C + ctx.campaign_ids.index(cid)]

    outcomes: list[Outcome] = []
    x_row = cols.x_row.tolist()
    x_occurred_at = cols.x_occurred_at.tolist()
    campaign_ids = ctx.campaign_ids
    for i, (key, ev) in enumerate(zip(ctx.keys, ctx.events)):
        code = STATUS_CODES[status[i]]
        if code is not None:
            outcomes.append(Outcome(key, ev.type, code))
            continue
        row = x_row[i]
        if ev.type == "purchase":
            at = x_occurred_at[i]
            purchase = PurchaseState(ev.wallet_id, ev.merchant_id, ev.amount, ev.points_used)
            awards = []
            base, out = row * C, i * C
            for ci in range(C):
                points = r_award[base + ci]
                if points:
                    cid = campaign_ids[ci]
                    awards.append(Award(cid, versions[cid], points, CAPPED_BY[capped[out + ci]]))
                    purchase.awards[cid] = AwardState(cid, versions[cid], points, points, window_key(periods[cid], at))
            state.purchases[key] = purchase
            outcomes.append(Outcome(key, "purchase", None, awards=awards))
        else:
            purchase = state.purchases[ctx.row_keys[row]]
            clawbacks = []
            for ci in range(C):
                if clawback[i * C + ci]:
                    clawbacks.append(Clawback(ctx.campaign_ids[ci], clawback[i * C + ci]))
            # Keep clawbacks in the order of the original's awards (evaluation order).
            order = list(purchase.awards)
            clawbacks.sort(key=lambda cb: order.index(cb.campaign_id))
            outcomes.append(
                Outcome(
                    key,
                    "refund",
                    None,
                    clawbacks=clawbacks,
                    points_returned=returned[i],
                    original_key=ctx.row_keys[row],
                )
            )

    # New rows were decoded above in order; refresh pending of new rows a later refund in the batch touched.
    for row in range(ctx.prior_rows, len(ctx.row_keys)):
        key = ctx.row_keys[row]
        new = state.purchases.get(key)
        if new is None:
            continue
        new.refunded = int(cols.r_refunded[row])
        for cid, award in new.awards.items():
            award.pending = r_pending[row * C + ctx.campaign_ids.index(cid)]

    for s, value in zip(ctx.slot_keys, cols.usage.tolist()):
        state.usage[s] = value
    for cid, value in zip(ctx.campaign_ids, cols.spend.tolist()):
        state.spend[cid] = value
    if state.balance is not None:
        for w, value in zip(ctx.wallet_ids, cols.balance.tolist()):
            state.balance[w] = value
    return outcomes
