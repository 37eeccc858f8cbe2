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
import itertools
import operator
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, cast

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from engine.model import Campaign, Merchant, Purchase, Refund, campaign_order
from engine.timeutil import S_PER_DAY, TOKYO_OFFSET_S, US_PER_S, to_us

from . import _kernel_py as k
from .state import AwardState, PurchaseState, RatingState

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


def purchase_windows(catalog: Catalog, occurred_at_us: np.ndarray) -> np.ndarray:
    """[R, len(catalog.campaigns)] window key of each purchase for each campaign's wallet-cap period."""
    out = np.empty((len(occurred_at_us), len(catalog.campaigns)), I64)
    by_period: dict[str, np.ndarray] = {}
    for ci, c in enumerate(catalog.campaigns):
        period = c.per_wallet_cap_period
        if period not in by_period:
            by_period[period] = window_keys_us(occurred_at_us, period)
        out[:, ci] = by_period[period]
    return out


@dataclasses.dataclass
class _Context:
    keys: list[str]
    events: list[Purchase | Refund]
    campaign_ids: list[str]
    row_keys: list[str]
    prior_rows: int
    wallet_ids: list[str]
    slot_keys: list[tuple[str, str, int]]
    # The batch's purchases: their indices among the events (their rows follow the prior rows
    # in this order), and each one's window key for each catalog campaign's wallet-cap period.
    purchases: np.ndarray
    purchase_keys: list[str]
    purchase_events: list[Purchase]
    windows: np.ndarray


_occurred_at = operator.attrgetter("occurred_at")
_amount = operator.attrgetter("amount")
_points_used = operator.attrgetter("points_used")
_wallet_id = operator.attrgetter("wallet_id")
_merchant_id = operator.attrgetter("merchant_id")


def encode(catalog: Catalog, events: Sequence[Event], state: RatingState) -> tuple[Columns, _Context]:
    """Columns for `events` (a list of (key, Purchase | Refund)) against `state`.

    Columnar: a group's purchases are read attribute by attribute, and their (campaign, wallet,
    window) slots are numbered by one `np.unique` over packed integer keys, in order of first
    sight (earlier rows' awards, then each purchase's campaigns), not by a dict lookup per
    purchase and campaign (tests/rating/reference_codec.py is the record-at-a-time form the
    tests hold this one equal to)."""
    campaigns = catalog.campaigns
    campaign_ids = list(catalog.campaign_ids)
    keys = [key for key, _ in events]
    evs = [ev for _, ev in events]
    N, Cc = len(evs), len(campaigns)
    types = [ev.type for ev in evs]
    refunds = [i for i, t in enumerate(types) if t == "refund"] if "refund" in types else []
    if refunds:
        purchases = np.array([i for i, t in enumerate(types) if t == "purchase"], np.intp)
        p_events = cast(list[Purchase], [evs[i] for i in purchases.tolist()])
        p_keys = [keys[i] for i in purchases.tolist()]
    else:
        purchases = np.arange(N)
        p_events, p_keys = cast(list[Purchase], evs), keys

    # Purchase rows: earlier purchases that refunds here refer to, then this batch's.
    prior: dict[str, PurchaseState] = {}
    if refunds:
        batch_purchases = set(p_keys)
        for i in refunds:
            original_id = cast(Refund, evs[i]).original_id
            if original_id not in batch_purchases and original_id not in prior and original_id in state.purchases:
                prior[original_id] = state.purchases[original_id]
    campaign_index = {cid: i for i, cid in enumerate(campaign_ids)}
    for p in prior.values():
        for cid in p.awards:
            if cid not in campaign_index:  # an award of a campaign no longer in the catalog
                campaign_index[cid] = len(campaign_ids)
                campaign_ids.append(cid)
    assert len(set(p_keys)) == len(p_keys) and state.purchases.keys().isdisjoint(p_keys), (
        f"duplicate purchase key {_duplicate(p_keys, state.purchases.keys())}"
    )
    prior_rows, P = len(prior), len(p_keys)
    row_keys = [*prior, *p_keys]
    C, R = len(campaign_ids), prior_rows + P

    # Wallets in order of first sight over the rows.
    row_wallets = [p.wallet_id for p in prior.values()] + list(map(_wallet_id, p_events))
    wallet_ids = list(dict.fromkeys(row_wallets))
    wallet_index = dict(zip(wallet_ids, range(len(wallet_ids))))
    r_wallet = np.fromiter(map(wallet_index.__getitem__, row_wallets), np.int32, R)
    x_amount = np.fromiter(map(_amount, evs), I64, N)
    x_points_used = np.zeros(N, I64)
    x_points_used[purchases] = np.fromiter(map(_points_used, p_events), I64, P)
    r_amount = np.concatenate([np.array([p.amount for p in prior.values()], I64), x_amount[purchases]])
    r_points_used = np.concatenate([np.array([p.points_used for p in prior.values()], I64), x_points_used[purchases]])
    r_refunded = np.zeros(R, I64)
    r_valid = np.zeros(R, np.int8)
    r_award = np.zeros(R * C, I64)
    r_pending = np.zeros(R * C, I64)
    # The slot of each earlier row's award, in the order of its awards: (position, campaign, window).
    old_slots: list[tuple[int, int, int]] = []
    if prior:
        r_refunded[:prior_rows] = [p.refunded for p in prior.values()]
        r_valid[:prior_rows] = 1
        held: list[int] = []  # positions of their awards in r_award and r_pending
        for row, p in enumerate(prior.values()):
            for cid, award in p.awards.items():
                held.append(row * C + campaign_index[cid])
                old_slots.append((row * C + campaign_index[cid], campaign_index[cid], award.window_key))
        r_award[held] = [a.points for p in prior.values() for a in p.awards.values()]
        r_pending[held] = [a.pending for p in prior.values() for a in p.awards.values()]

    x_occurred_at = np.fromiter(map(to_us, map(_occurred_at, evs)), I64, N)
    windows = purchase_windows(catalog, x_occurred_at[purchases])

    # Slots: usage is counted for every catalog campaign of a new row, capped or not, so a
    # later version that adds a wallet cap still sees what was awarded; an earlier row's where
    # it holds an award. Each slot is numbered at its first sight, earlier rows first.
    if old_slots:
        old_position, old_campaign, old_window = (np.array(v, I64) for v in zip(*old_slots))
    else:
        old_position = old_campaign = old_window = np.zeros(0, I64)
    new_rows = np.arange(prior_rows, R, dtype=I64)
    columns = np.arange(Cc, dtype=I64)
    position = np.concatenate([old_position, (new_rows[:, None] * C + columns).ravel()])
    campaign = np.concatenate([old_campaign, np.tile(columns, P)])
    wallet = r_wallet.astype(I64)[position // C] if C else np.zeros(0, I64)
    window = np.concatenate([old_window, windows.ravel()])
    slot, seen = _first_sight(_pack(campaign, wallet, window, len(wallet_ids)))
    r_slot = np.full(R * C, -1, np.int32)
    r_slot[position] = slot
    slot_keys = list(
        zip(
            np.array(campaign_ids, object)[campaign[seen]].tolist(),
            np.array(wallet_ids, object)[wallet[seen]].tolist(),
            window[seen].tolist(),
        )
    )

    x_kind = np.zeros(N, np.int8)
    x_merchant = np.full(N, -1, np.int32)
    x_row = np.empty(N, np.int32)
    x_merchant[purchases] = np.fromiter(
        map(catalog.merchant_index.get, map(_merchant_id, p_events), itertools.repeat(-1)), np.int32, P
    )
    x_row[purchases] = new_rows
    if refunds:
        row_index = dict(zip(row_keys, range(R)))
        x_kind[refunds] = k.KIND_REFUND
        x_row[refunds] = [row_index.get(cast(Refund, evs[i]).original_id, -1) for i in refunds]

    # Items, of the purchases that list them.
    item_count = np.zeros(N + 1, np.int32)
    item_amount: list[int] = []
    item_mask: list[int] = []
    tag_bits = catalog.tag_bits
    tag_masks: dict[tuple[str, ...], int] = {}  # an item's tags -> the catalog's bits of them
    for i, ev in zip(purchases.tolist(), p_events):
        if ev.items:
            item_count[i + 1] = len(ev.items)
            for item in ev.items:
                item_amount.append(item.amount)
                mask = tag_masks.get(item.tags)  # a batch's items carry a few tag lists, over and over
                if mask is None:
                    mask = tag_masks[item.tags] = sum(1 << tag_bits[t] for t in set(item.tags) if t in tag_bits)
                item_mask.append(mask)

    balance = state.balance or {}
    cols = Columns(
        **catalog_columns(catalog, C - Cc),
        x_kind=x_kind,
        x_merchant=x_merchant,
        x_occurred_at=x_occurred_at,
        x_amount=x_amount,
        x_points_used=x_points_used,
        x_row=x_row,
        x_item_start=np.cumsum(item_count, dtype=np.int32),
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
        usage=np.fromiter(map(state.usage.get, slot_keys, itertools.repeat(0)), I64, len(slot_keys)),
        spend=_a([state.spend.get(cid, 0) for cid in campaign_ids]),
        balance=np.fromiter(map(balance.get, wallet_ids, itertools.repeat(0)), I64, len(wallet_ids)),
        check_balance=int(state.balance is not None),
        out_status=np.zeros(N, np.int8),
        out_capped=np.zeros(N * C, np.int8),
        out_clawback=np.zeros(N * C, I64),
        out_returned=np.zeros(N, I64),
    )
    return cols, _Context(
        keys, evs, campaign_ids, row_keys, prior_rows, wallet_ids, slot_keys, purchases, p_keys, p_events, windows
    )


def _pack(campaign: np.ndarray, wallet: np.ndarray, window: np.ndarray, wallets: int) -> np.ndarray:
    """One int64 key per (campaign column, wallet index < `wallets`, window key) triple, equal
    for equal triples only."""
    if not window.size:
        return np.zeros(0, I64)
    low = int(window.min())
    span = int(window.max()) - low + 1
    if (int(campaign.max()) + 1) * wallets * span < 1 << 62:
        offset = window - low
    else:  # windows too far apart to pack as they are (never those of `window_key`): by rank
        distinct, inverse = np.unique(window, return_inverse=True)
        offset, span = inverse.reshape(-1).astype(I64), distinct.size
    packed: np.ndarray = (campaign * wallets + wallet) * span + offset
    return packed


def _first_sight(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct `keys` numbered in order of first sight: each key's number (int32) and where each
    number is first seen. What numbering them with `dict.setdefault(key, len(dict))` gives."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # the distinct keys by first sight
    number = np.empty(order.size, np.int32)
    number[order] = np.arange(order.size, dtype=np.int32)
    return number[inverse.reshape(-1)], first[order]


def _duplicate(keys: list[str], earlier: Iterable[str]) -> str | None:
    seen = set(earlier)
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def decode(catalog: Catalog, cols: Columns, ctx: _Context, state: RatingState) -> list[Outcome]:
    """Outcomes of a rated batch, folding the batch's effects into `state`.

    Columnar too: every award of the batch's purchases is read at once (row by row, in campaign
    order), its records made by `map`, and each purchase's state and outcome from its run of them."""
    from . import Award, Clawback, Outcome

    C, N = len(ctx.campaign_ids), len(ctx.keys)
    R0, P = ctx.prior_rows, len(ctx.purchases)
    campaign_index = {cid: i for i, cid in enumerate(ctx.campaign_ids)}
    status = cols.out_status.tolist()

    # Earlier purchases a refund touched: their refunded amount and pending points.
    if R0:
        r_refunded = cols.r_refunded.tolist()
        r_pending = cols.r_pending[: R0 * C].tolist()
        for row, key in enumerate(ctx.row_keys[:R0]):
            p = state.purchases[key]
            p.refunded = r_refunded[row]
            for cid, award in p.awards.items():
                award.pending = r_pending[row * C + campaign_index[cid]]

    # The batch's purchases. A declined one holds no award; an accepted one's pending points and
    # refunded amount are the batch's last (a refund later in the batch may have taken some).
    award_rows, award_columns = np.nonzero(cols.r_award[R0 * C :].reshape(P, C))
    points = cols.r_award[R0 * C :].reshape(P, C)[award_rows, award_columns].tolist()
    pending = cols.r_pending[R0 * C :].reshape(P, C)[award_rows, award_columns].tolist()
    capped = cols.out_capped.reshape(N, C)[ctx.purchases[award_rows], award_columns]
    campaign_ids = np.array(ctx.campaign_ids, object)[award_columns].tolist()
    versions = np.array([c.version for c in catalog.campaigns], object)[award_columns].tolist()
    windows = ctx.windows[award_rows, award_columns].tolist()
    capped_by = np.array(_CAPPED_NAMES, object)[capped].tolist()
    # Award is a NamedTuple: tuple.__new__ is what its own __new__ calls, without the Python frame.
    awards: list[Award] = list(
        map(tuple.__new__, itertools.repeat(Award), zip(campaign_ids, versions, points, capped_by))
    )
    award_states = list(map(AwardState, campaign_ids, versions, points, pending, windows))
    row_states: list[dict[str, AwardState]] = [{} for _ in range(P)]
    row_awards: list[list[Award]] = [[] for _ in range(P)]
    for row, cid, new_state, new_award in zip(award_rows.tolist(), campaign_ids, award_states, awards):
        row_states[row][cid] = new_state
        row_awards[row].append(new_award)
    p_events = ctx.purchase_events
    purchase_states = list(
        map(
            PurchaseState,
            map(_wallet_id, p_events),
            map(_merchant_id, p_events),
            map(_amount, p_events),
            map(_points_used, p_events),
            cols.r_refunded[R0:].tolist(),
            row_states,
        )
    )
    p_keys = ctx.purchase_keys
    p_outcomes = list(map(Outcome, p_keys, itertools.repeat("purchase"), itertools.repeat(None), row_awards))
    p_status = cols.out_status[ctx.purchases]
    if p_status.any():
        for j in np.flatnonzero(p_status).tolist():
            p_outcomes[j] = Outcome(p_keys[j], "purchase", STATUS_CODES[int(p_status[j])])
        accepted = np.flatnonzero(p_status == k.STATUS_ACCEPTED).tolist()
        state.purchases.update((p_keys[j], purchase_states[j]) for j in accepted)
    else:
        state.purchases.update(zip(p_keys, purchase_states))
    if P == N:
        outcomes = p_outcomes
    else:
        # Refunds, their originals' states all in place now.
        slots: list[Outcome | None] = [None] * N
        for i, outcome in zip(ctx.purchases.tolist(), p_outcomes):
            slots[i] = outcome
        x_row = cols.x_row.tolist()
        clawback = cols.out_clawback.reshape(N, C)
        returned = cols.out_returned.tolist()
        for i in np.flatnonzero(cols.x_kind == k.KIND_REFUND).tolist():
            key = ctx.keys[i]
            code = STATUS_CODES[status[i]]
            if code is not None:
                slots[i] = Outcome(key, "refund", code)
                continue
            original_key = ctx.row_keys[x_row[i]]
            clawed = clawback[i].tolist()
            clawbacks = [  # in the order of the original's awards (evaluation order)
                Clawback(cid, clawed[campaign_index[cid]])
                for cid in state.purchases[original_key].awards
                if clawed[campaign_index[cid]]
            ]
            slots[i] = Outcome(key, "refund", None, [], clawbacks, returned[i], original_key)
        outcomes = cast(list["Outcome"], slots)

    state.usage.update(zip(ctx.slot_keys, cols.usage.tolist()))
    state.spend.update(zip(ctx.campaign_ids, cols.spend.tolist()))
    if state.balance is not None:
        state.balance.update(zip(ctx.wallet_ids, cols.balance.tolist()))
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
_CAPPED_NAMES = [CAPPED_BY[code] for code in range(len(CAPPED_BY))]  # indexed by the kernel's code
