"""Loading and saving wallet books (point lots and debt) for a unit of work."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from sqlalchemy.orm import Session

from engine.store import bulk
from engine.store.models import PointLotRow, WalletDebtRow
from engine.wallet_book import LOT_COLUMNS, Lot, WalletBook


def load_books(
    session: Session,
    wallets: AbstractSet[str],
    lot_ids: AbstractSet[str] = frozenset(),
    spending: AbstractSet[str] | None = None,
) -> dict[str, WalletBook]:
    """Books of `wallets`: their spendable lots, their debt, and the named lots (spent or not).

    With `spending`, only those wallets' spendable lots are loaded: the book of any other
    wallet holds its debt and the named lots only, enough for points flowing in (which repay
    debt first, then fill a new lot) but not for spending, and its `spendable()` leaves out
    the lots it does not hold. A wallet's lots grow with its history; most units of work
    only add points to most of their wallets."""
    lots: dict[str, Lot] = {}
    for row in bulk.select_where_in(
        session,
        PointLotRow.__table__,
        LOT_COLUMNS,
        "wallet_id",
        sorted(wallets if spending is None else spending),
        extra="remaining > 0",
    ):
        lots[row[0]] = Lot(*row)
    missing = sorted(set(lot_ids) - set(lots))
    for row in bulk.select_where_in(session, PointLotRow.__table__, LOT_COLUMNS, "id", missing):
        lots[row[0]] = Lot(*row)
    debts: dict[str, dict[str, int]] = {w: {} for w in wallets}
    for wallet_id, campaign_id, points in bulk.select_where_in(
        session,
        WalletDebtRow.__table__,
        ["wallet_id", "campaign_id", "points"],
        "wallet_id",
        sorted(wallets),
        extra="points > 0",
    ):
        debts[wallet_id][campaign_id] = points
    by_wallet: dict[str, list[Lot]] = {w: [] for w in wallets}
    for lot in lots.values():
        by_wallet.setdefault(lot.wallet_id, []).append(lot)
    return {w: WalletBook(w, by_wallet.get(w, []), debts.get(w, {})) for w in set(wallets) | set(by_wallet)}


def save_books(batch: bulk.WriteBatch, books: dict[str, WalletBook]) -> None:
    new, changed, debts = [], [], []
    for book in books.values():
        for lot in book.lots.values():
            if lot.new:
                new.append(tuple(getattr(lot, c) for c in LOT_COLUMNS))
                lot.new = lot.dirty = False
            elif lot.dirty:
                changed.append({"id": lot.id, "remaining": lot.remaining, "expired": lot.expired})
                lot.dirty = False
        for campaign_id in sorted(book.dirty_debts):
            debts.append(dict(wallet_id=book.wallet_id, campaign_id=campaign_id, points=book.debts.get(campaign_id, 0)))
        book.dirty_debts.clear()
    batch.insert_tuples(PointLotRow.__table__, LOT_COLUMNS, new)
    batch.update(PointLotRow.__table__, ["id"], changed)
    batch.upsert(WalletDebtRow.__table__, debts, key=["wallet_id", "campaign_id"], replace="points")
