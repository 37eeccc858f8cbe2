"""Loading and saving wallet books (point lots and debt) for a unit of work."""

from __future__ import annotations

import operator
from collections.abc import Callable
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
    reads = bulk.ReadBatch(session)
    books = queue_books(reads, wallets, lot_ids, spending)
    reads.run()
    return books()


def queue_books(
    reads: bulk.ReadBatch,
    wallets: AbstractSet[str],
    lot_ids: AbstractSet[str] = frozenset(),
    spending: AbstractSet[str] | None = None,
) -> Callable[[], dict[str, WalletBook]]:
    """`load_books` as reads queued on `reads` (sent with others in one round trip): the
    books, built from their rows once `reads` has run."""
    spendable = reads.where_in(
        PointLotRow.__table__,
        LOT_COLUMNS,
        "wallet_id",
        sorted(wallets if spending is None else spending),
        extra="remaining > 0",
    )
    named = reads.where_in(PointLotRow.__table__, LOT_COLUMNS, "id", sorted(lot_ids))
    debt_rows = reads.where_in(
        WalletDebtRow.__table__,
        ["wallet_id", "campaign_id", "points"],
        "wallet_id",
        sorted(wallets),
        extra="points > 0",
    )

    def build() -> dict[str, WalletBook]:
        lots: dict[str, Lot] = {}
        for row in spendable.rows:
            lots[row[0]] = Lot(*row)
        for row in named.rows:  # a named lot also spendable is the same row (lots change under the lock only)
            if row[0] not in lots:
                lots[row[0]] = Lot(*row)
        debts: dict[str, dict[str, int]] = {w: {} for w in wallets}
        for wallet_id, campaign_id, points in debt_rows.rows:
            debts[wallet_id][campaign_id] = points
        by_wallet: dict[str, list[Lot]] = {w: [] for w in wallets}
        for lot in lots.values():
            by_wallet.setdefault(lot.wallet_id, []).append(lot)
        return {w: WalletBook(w, by_wallet.get(w, []), debts.get(w, {})) for w in set(wallets) | set(by_wallet)}

    return build


_lot_values = operator.attrgetter(*LOT_COLUMNS)  # a lot's stored columns, as a tuple in that order


def save_books(batch: bulk.WriteBatch, books: dict[str, WalletBook]) -> None:
    new, changed, debts = [], [], []
    for book in books.values():
        for lot in book.touched.values():
            if lot.new:
                new.append(_lot_values(lot))
                lot.new = lot.dirty = False
            elif lot.dirty:
                changed.append({"id": lot.id, "remaining": lot.remaining, "expired": lot.expired})
                lot.dirty = False
        for campaign_id in sorted(book.dirty_debts):
            debts.append(dict(wallet_id=book.wallet_id, campaign_id=campaign_id, points=book.debts.get(campaign_id, 0)))
        book.dirty_debts.clear()
        book.touched.clear()
    batch.insert_tuples(PointLotRow.__table__, LOT_COLUMNS, new)
    batch.update(PointLotRow.__table__, ["id"], changed)
    batch.upsert(WalletDebtRow.__table__, debts, key=["wallet_id", "campaign_id"], replace="points")
