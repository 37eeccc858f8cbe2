"""Vectorized encoder: `Columns` for a whole batch built from numpy arrays.

`columns.encode` reads pydantic records and the state's dicts (a tuple key
per wallet-window slot), which is right for a group of up to 1,000 requests
at ingestion but dominates the time of a re-rate or a simulation over a
million stored transactions. `build_columns`
takes the same batch as plain arrays (already in acceptance order) and
produces the identical columnar form with numpy operations only: the
wallet-window slot of every (purchase, campaign) is one int64 key numbered
by `np.unique`, not a dict lookup per transaction.

Indices are the caller's: `merchant` indexes `catalog.merchant_index`
order (-1: unknown), `wallet` is any dense wallet numbering, and a refund's
`original_row` indexes the purchase rows of the batch — the opening rows
first, then this batch's purchases in order (-1: unknown original). The
tests hold `build_columns` + `rate_columns` equal to `encode` + `rate_columns`
on random batches, for both engines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _kernel_py as k
from .columns import Catalog, Columns, catalog_columns, purchase_windows

I64 = np.int64

# A slot key packs (campaign column, wallet, window) into one int64, so
# numbering the slots is one np.unique over a flat array.
_WINDOW_BITS = 24
_WALLET_BITS = 32
_CAMPAIGN_SHIFT = _WINDOW_BITS + _WALLET_BITS
CAMPAIGNS_MAX = 1 << (63 - _CAMPAIGN_SHIFT)
WALLETS_MAX = 1 << _WALLET_BITS
NO_SLOT = -1


def slot_keys(campaign: np.ndarray, wallet: np.ndarray, window: np.ndarray) -> np.ndarray:
    """One int64 key per (campaign column, wallet index, window key)."""
    assert not wallet.size or (wallet.min() >= 0 and wallet.max() < WALLETS_MAX), "wallet index out of range"
    assert not window.size or (window.min() >= 0 and window.max() < (1 << _WINDOW_BITS)), "window key out of range"
    return (
        (np.asarray(campaign, I64) << _CAMPAIGN_SHIFT)
        | (np.asarray(wallet, I64) << _WINDOW_BITS)
        | np.asarray(window, I64)
    )


def split_slot_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(campaign column, wallet index, window key) of each slot key."""
    keys = np.asarray(keys, I64)
    return (keys >> _CAMPAIGN_SHIFT, (keys >> _WINDOW_BITS) & (WALLETS_MAX - 1), keys & ((1 << _WINDOW_BITS) - 1))


@dataclasses.dataclass
class Batch:
    """Transactions in acceptance order as arrays ([N] each; items flat with `item_start` [N+1])."""

    kind: np.ndarray  # int8: KIND_PURCHASE / KIND_REFUND
    merchant: np.ndarray  # catalog merchant index of a purchase, -1 unknown
    wallet: np.ndarray  # wallet index of a purchase
    occurred_at_us: np.ndarray
    amount: np.ndarray
    points_used: np.ndarray  # 0 for refunds
    original_row: np.ndarray  # refunds: purchase row (opening rows first, then this batch's), -1 unknown
    item_start: np.ndarray | None = None  # [N+1] into item_amount / item_mask; None: no items at all
    item_amount: np.ndarray | None = None
    item_mask: np.ndarray | None = None  # uint64 bits of catalog.tag_bits

    def __len__(self) -> int:
        return len(self.kind)


@dataclasses.dataclass
class Opening:
    """Rating state before the batch: earlier purchase rows, wallet-window usage, spend and balances.

    Matrices are [R0 * C] in the batch's campaign column order. `r_window` is
    the window key each award was counted in (ignored where `r_award` is 0).
    Usage entries name their campaign column, wallet index and window key.
    """

    r_wallet: np.ndarray
    r_amount: np.ndarray
    r_points_used: np.ndarray
    r_refunded: np.ndarray
    r_award: np.ndarray
    r_pending: np.ndarray
    r_window: np.ndarray
    usage_campaign: np.ndarray
    usage_wallet: np.ndarray
    usage_window: np.ndarray
    usage_points: np.ndarray
    spend: np.ndarray
    balance: np.ndarray | None = None  # [W] spendable points per wallet index; None: not checked

    @classmethod
    def empty(cls, campaigns: int) -> Opening:
        z = np.zeros(0, I64)
        return cls(z, z, z, z, z, z, z, z, z, z, z, np.zeros(campaigns, I64))


def build_columns(
    catalog: Catalog, batch: Batch, opening: Opening | None = None, extra_campaigns: int = 0, wallets: int | None = None
) -> tuple[Columns, np.ndarray]:
    """Columns for `batch` against `opening` (zero state when None), and the slot keys of `usage`.

    `extra_campaigns` placeholder columns follow the catalog's campaigns (for
    awards of campaigns no longer in it); they are never active.
    """
    C = len(catalog.campaigns) + extra_campaigns
    assert C < CAMPAIGNS_MAX, "too many campaigns for a slot key"
    opening = opening or Opening.empty(C)
    R0 = len(opening.r_wallet)
    assert opening.r_award.size == R0 * C and opening.spend.size == C, "opening state of another campaign count"
    is_purchase = batch.kind == k.KIND_PURCHASE
    p_at = batch.occurred_at_us[is_purchase]
    p_wallet = np.asarray(batch.wallet, I64)[is_purchase]
    R = R0 + int(is_purchase.sum())

    # Slot keys: each new row counts usage for every catalog campaign (so a later
    # version adding a wallet cap still sees what was awarded); earlier rows only
    # where they hold an award; then the opening usage entries.
    windows = purchase_windows(catalog, p_at)
    new_keys = np.full((len(p_at), C), NO_SLOT, I64)
    for ci in range(len(catalog.campaigns)):
        new_keys[:, ci] = slot_keys(np.full(len(p_at), ci), p_wallet, windows[:, ci])
    old_award = opening.r_award.reshape(R0, C)
    old_keys = np.full((R0, C), NO_SLOT, I64)
    held = np.nonzero(old_award)
    old_keys[held] = slot_keys(
        held[1], np.asarray(opening.r_wallet, I64)[held[0]], np.asarray(opening.r_window, I64).reshape(R0, C)[held]
    )
    usage_keys = slot_keys(opening.usage_campaign, opening.usage_wallet, opening.usage_window)
    all_keys = np.concatenate([old_keys.ravel(), new_keys.ravel(), usage_keys])
    valid = all_keys != NO_SLOT
    keys, inverse = np.unique(all_keys[valid], return_inverse=True)
    slot = np.full(all_keys.size, NO_SLOT, np.int32)
    slot[valid] = inverse
    r_slot = slot[: R * C]
    usage = np.zeros(keys.size, I64)
    if usage_keys.size:
        np.add.at(usage, slot[R * C :], np.asarray(opening.usage_points, I64))

    cols = assemble(catalog, batch, opening, C, r_slot, usage, wallets)
    return cols, keys


def assemble(
    catalog: Catalog,
    batch: Batch,
    opening: Opening,
    C: int,
    r_slot: np.ndarray,
    usage: np.ndarray,
    wallets: int | None = None,
) -> Columns:
    """Columns from a batch whose slots are already numbered (`r_slot` [R*C] into `usage`)."""
    N = len(batch)
    R0 = len(opening.r_wallet)
    is_purchase = batch.kind == k.KIND_PURCHASE
    P = int(is_purchase.sum())
    R = R0 + P
    extra = C - len(catalog.campaigns)
    x_row = np.where(is_purchase, R0 + np.cumsum(is_purchase) - 1, batch.original_row).astype(np.int32)
    if wallets is None:
        top = [int(np.max(batch.wallet[is_purchase])) + 1] if P else [0]
        if R0:
            top.append(int(np.max(opening.r_wallet)) + 1)
        if opening.balance is not None:
            top.append(len(opening.balance))
        wallets = max(top)
    balance = np.zeros(wallets, I64)
    if opening.balance is not None:
        balance[: len(opening.balance)] = opening.balance
    if batch.item_start is None:
        item_start = np.zeros(N + 1, np.int32)
        item_amount, item_mask = np.zeros(0, I64), np.zeros(0, np.uint64)
    else:
        item_start = np.asarray(batch.item_start, np.int32)
        item_amount = np.asarray(batch.item_amount, I64)
        item_mask = np.asarray(batch.item_mask, np.uint64)

    def cat(old: ArrayLike, new: ArrayLike, dtype: DTypeLike) -> np.ndarray:
        return np.concatenate([np.asarray(old, dtype), np.asarray(new, dtype)])

    r_award = np.zeros(R * C, I64)
    r_award[: R0 * C] = opening.r_award
    r_pending = np.zeros(R * C, I64)
    r_pending[: R0 * C] = opening.r_pending
    return Columns(
        **catalog_columns(catalog, extra),
        x_kind=np.asarray(batch.kind, np.int8),
        x_merchant=np.where(is_purchase, batch.merchant, -1).astype(np.int32),
        x_occurred_at=np.asarray(batch.occurred_at_us, I64),
        x_amount=np.asarray(batch.amount, I64),
        x_points_used=np.where(is_purchase, batch.points_used, 0).astype(I64),
        x_row=x_row,
        x_item_start=item_start,
        item_amount=item_amount,
        item_mask=item_mask,
        r_wallet=cat(opening.r_wallet, np.asarray(batch.wallet)[is_purchase], np.int32),
        r_amount=cat(opening.r_amount, np.asarray(batch.amount)[is_purchase], I64),
        r_points_used=cat(opening.r_points_used, np.asarray(batch.points_used)[is_purchase], I64),
        r_refunded=cat(opening.r_refunded, np.zeros(P), I64),
        r_valid=cat(np.ones(R0), np.zeros(P), np.int8),
        r_award=r_award,
        r_pending=r_pending,
        r_slot=np.ascontiguousarray(r_slot, np.int32),
        usage=usage,
        spend=np.array(opening.spend, I64),
        balance=balance,
        check_balance=int(opening.balance is not None),
        out_status=np.zeros(N, np.int8),
        out_capped=np.zeros(N * C, np.int8),
        out_clawback=np.zeros(N * C, I64),
        out_returned=np.zeros(N, I64),
    )


def item_masks(catalog: Catalog, tags_per_item: Iterable[Iterable[str]]) -> np.ndarray:
    """uint64 tag bits of each item's tags (tags no campaign of the catalog names count for nothing)."""
    bits = catalog.tag_bits
    return np.array([sum(1 << bits[t] for t in set(tags) if t in bits) for tags in tags_per_item], np.uint64)
