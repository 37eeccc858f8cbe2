"""Columnar form of a rating batch, shared by the kernel and its twin.

`encode` turns records and state into plain integer arrays (no Python object
per transaction survives into the kernel); `decode` turns the kernel's output
arrays back into outcomes and folds them into the state. Both engines see the
same arrays, so the only thing that differs between them is the loop.

Layout (C campaigns in evaluation order, T tiers, M merchants, N transactions,
R purchase rows, S wallet-window slots); matrices are flattened row-major:

- campaigns: c_* [C], tiers t_* [T] with c_tier_start [C+1]
- mt_static_ok [M*T]: the tier's match keys other than certification hold
- merchants: m_cert_start [M+1] into cert_from / cert_until [K]
- transactions: x_* [N]; x_row is the purchase row a purchase creates or a
  refund refers to (-1: unknown original); items via x_item_start [N+1]
- purchase rows: r_* [R] and r_award / r_pending / r_slot [R*C]; rows of
  earlier batches come first, loaded from the state
- usage [S] (points counted against a wallet window), spend [C] (net issued),
  balance [W] (spendable points of each wallet, negative when in debt)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from engine.model import Campaign, Merchant, Purchase, Refund, campaign_order
from engine.timeutil import S_PER_DAY, TOKYO_OFFSET_S, US_PER_S, to_us

from . import _kernel_py as k
from .state import AwardState, PurchaseState, RatingState, window_key

if TYPE_CHECKING:
    from . import Outcome

I64 = np.int64

# One transaction of a batch: its key (the engine's transaction id) and its record.
Event = tuple[str, Purchase | Refund]


@dataclasses.dataclass
class Columns:
    c_starts_at: np.ndarray
    c_ends_at: np.ndarray
    c_uses_tags: np.ndarray
    c_tag_mask: np.ndarray
    c_fixed_points: np.ndarray
    c_min_base: np.ndarray
    c_per_tx_cap: np.ndarray
    c_wallet_cap: np.ndarray
    c_budget: np.ndarray
    c_exclusive: np.ndarray
    c_immediate: np.ndarray
    c_tier_start: np.ndarray
    t_rate_bp: np.ndarray
    t_cert_required: np.ndarray
    mt_static_ok: np.ndarray
    m_cert_start: np.ndarray
    cert_from: np.ndarray
    cert_until: np.ndarray
    x_kind: np.ndarray
    x_merchant: np.ndarray
    x_occurred_at: np.ndarray
    x_amount: np.ndarray
    x_points_used: np.ndarray
    x_row: np.ndarray
    x_item_start: np.ndarray
    item_amount: np.ndarray
    item_mask: np.ndarray
    r_wallet: np.ndarray
    r_amount: np.ndarray
    r_points_used: np.ndarray
    r_refunded: np.ndarray
    r_valid: np.ndarray
    r_award: np.ndarray
    r_pending: np.ndarray
    r_slot: np.ndarray
    usage: np.ndarray
    spend: np.ndarray
    balance: np.ndarray
    check_balance: int
    out_status: np.ndarray
    out_capped: np.ndarray
    out_clawback: np.ndarray
    out_returned: np.ndarray

    def copy(self) -> Columns:
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name).copy()
                for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), np.ndarray)
            },
        )


def _a(values: ArrayLike, dtype: DTypeLike = I64) -> np.ndarray:
    return np.asarray(values, dtype=dtype)


def _opt(value: int | None) -> int:
    return k.UNLIMITED if value is None else value


@dataclasses.dataclass
class Catalog:
    """Merchants and campaigns in kernel form; built once, reused for every batch."""

    campaigns: list[Campaign]
    merchant_index: dict[str, int]
    tag_bits: dict[str, int]
    arrays: dict[str, np.ndarray]
    # Every campaign of the ward in evaluation order (`campaign_order`), those not rated here
    # too: a catalog built for some campaigns only still orders any campaign's awards the same.
    rank: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def campaign_ids(self) -> list[str]:
        return [c.id for c in self.campaigns]


def campaigns_met(windows: Iterable[tuple[str, int, int]], first_us: int, last_us: int) -> tuple[str, ...]:
    """The ids of the campaigns, of (id, starts_at_us, ends_at_us) `windows`, whose half-open
    window holds an instant between `first_us` and `last_us`: the only ones that can award a
    purchase of that span (the kernel skips a campaign outside its window)."""
    return tuple(cid for cid, starts, ends in windows if starts <= last_us and first_us < ends)


def build_catalog(merchants: list[Merchant], campaigns: list[Campaign], rank: dict[str, int] | None = None) -> Catalog:
    """The kernel's catalog of `campaigns`; `rank`: every campaign of the ward in evaluation
    order, when `campaigns` are some of them (by default, they are all)."""
    campaigns = sorted(campaigns, key=campaign_order)
    assert len({c.id for c in campaigns}) == len(campaigns), "one version per campaign in a batch"
    tag_bits: dict[str, int] = {}
    for c in campaigns:
        for tag in c.item_tags or ():
            tag_bits.setdefault(tag, len(tag_bits))
    if len(tag_bits) > 64:
        raise ValueError("campaigns name more than 64 distinct item tags together")

    tiers = [(ci, tier) for ci, c in enumerate(campaigns) for tier in c.tiers]
    tier_start = [0]
    for c in campaigns:
        tier_start.append(tier_start[-1] + len(c.tiers))
    static_ok = np.zeros(len(merchants) * len(tiers), dtype=np.int8)
    cert_start = [0]
    cert_from: list[int] = []
    cert_until: list[int] = []
    for mi, merchant in enumerate(merchants):
        for ti, (_, tier) in enumerate(tiers):
            # Certification depends on the instant; the kernel checks it per purchase.
            static = tier.match.model_copy(update={"ethical_certified": None})
            static_ok[mi * len(tiers) + ti] = static.holds(merchant, None)
        for cert in merchant.ethical_certifications:
            cert_from.append(to_us(cert.valid_from))
            cert_until.append(to_us(cert.valid_until))
        cert_start.append(len(cert_from))

    arrays = dict(
        c_starts_at=_a([to_us(c.starts_at) for c in campaigns]),
        c_ends_at=_a([to_us(c.ends_at) for c in campaigns]),
        c_uses_tags=_a([c.item_tags is not None for c in campaigns], np.int8),
        c_tag_mask=_a([sum(1 << tag_bits[t] for t in set(c.item_tags or ())) for c in campaigns], np.uint64),
        c_fixed_points=_a([c.fixed_points for c in campaigns]),
        c_min_base=_a([c.min_base for c in campaigns]),
        c_per_tx_cap=_a([_opt(c.per_tx_cap) for c in campaigns]),
        c_wallet_cap=_a([_opt(c.per_wallet_cap) for c in campaigns]),
        c_budget=_a([_opt(c.budget) for c in campaigns]),
        c_exclusive=_a([c.exclusive for c in campaigns], np.int8),
        c_immediate=_a([c.credit.schedule == "immediate" for c in campaigns], np.int8),
        c_tier_start=_a(tier_start, np.int32),
        t_rate_bp=_a([t.rate_bp for _, t in tiers]),
        t_cert_required=_a(
            [k.CERT_ANY if t.match.ethical_certified is None else int(t.match.ethical_certified) for _, t in tiers],
            np.int8,
        ),
        mt_static_ok=static_ok,
        m_cert_start=_a(cert_start, np.int32),
        cert_from=_a(cert_from),
        cert_until=_a(cert_until),
    )
    return Catalog(
        campaigns,
        {m.id: i for i, m in enumerate(merchants)},
        tag_bits,
        arrays,
        rank if rank is not None else {c.id: i for i, c in enumerate(campaigns)},
    )


def catalog_columns(catalog: Catalog, extra: int = 0) -> dict[str, np.ndarray]:
    """The catalog's campaign, tier and merchant columns, with `extra` placeholder
    campaigns (awards of campaigns no longer in the catalog) that are never active."""
    a = catalog.arrays

    def pad(name: str, value: int) -> np.ndarray:
        return np.concatenate([a[name], np.full(extra, value, a[name].dtype)])

    return dict(
        c_starts_at=pad("c_starts_at", 0),
        c_ends_at=pad("c_ends_at", 0),
        c_uses_tags=pad("c_uses_tags", 0),
        c_tag_mask=pad("c_tag_mask", 0),
        c_fixed_points=pad("c_fixed_points", 0),
        c_min_base=pad("c_min_base", 0),
        c_per_tx_cap=pad("c_per_tx_cap", k.UNLIMITED),
        c_wallet_cap=pad("c_wallet_cap", k.UNLIMITED),
        c_budget=pad("c_budget", k.UNLIMITED),
        c_exclusive=pad("c_exclusive", 0),
        c_immediate=pad("c_immediate", 1),
        c_tier_start=pad("c_tier_start", a["c_tier_start"][-1]),
        **{
            name: a[name]
            for name in ("t_rate_bp", "t_cert_required", "mt_static_ok", "m_cert_start", "cert_from", "cert_until")
        },
    )


def window_keys_us(occurred_at_us: np.ndarray, period: str) -> np.ndarray:
    """Vectorised `state.window_key`: Asia/Tokyo day or month keys of many instants."""
    days = (occurred_at_us // US_PER_S + TOKYO_OFFSET_S) // S_PER_DAY
    if period == "day":
        return days
    if period == "month":
        return days.astype("datetime64[D]").astype("datetime64[M]").astype(I64)
    return np.zeros_like(occurred_at_us)


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
    from . import Award, Clawback, Outcome

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


STATUS_CODES = {
    k.STATUS_ACCEPTED: None,
    k.STATUS_UNKNOWN_MERCHANT: "unknown_merchant",
    k.STATUS_ORIGINAL_NOT_FOUND: "original_not_found",
    k.STATUS_REFUND_EXCEEDS_ORIGINAL: "refund_exceeds_original",
    k.STATUS_INSUFFICIENT_POINTS: "insufficient_points",
}
CAPPED_BY = {
    k.CAPPED_NONE: None,
    k.CAPPED_PER_TX: "per_tx_cap",
    k.CAPPED_WALLET: "wallet_cap",
    k.CAPPED_BUDGET: "budget",
}
