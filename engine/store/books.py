"""Loading and saving wallet books (point lots and debt) for a unit of work.

A lot lives in one of two places: an award's lot on the award's own row (`award.lot_*`, the
lot's id `<payment_id>:<campaign_id>`), any other lot (a grant's, and every lot written before
migration `20261213_award_lots`) as a `point_lot` row. Books read both and write each lot back
where it lives; a new award's lot goes out with its award (`PostingWriter.flush`)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

from sqlalchemy.orm import Session

from engine.posting_columns import AWARD_COLUMNS
from engine.store import bulk
from engine.store.models import AwardRow, PointLotRow, WalletDebtRow
from engine.wallet_book import LOT_COLUMNS, Lot, WalletBook, lot_id

# An award's lot on its row: the columns `LOT_COLUMNS` does not share with the award.
LOT_ON_AWARD = ("lot_expires_at_us", "lot_remaining", "lot_expired")
AWARD_LOT_COLUMNS = (*AWARD_COLUMNS, *LOT_ON_AWARD)  # a new award's row with its lot
# An award's lot read back, as `Lot` takes it (its id and source from the award's key).
_AWARD_LOT_READ = [
    "payment_id",
    "campaign_id",
    "wallet_id",
    "credit_at_us",
    "lot_expires_at_us",
    "points",
    "lot_remaining",
    "lot_expired",
]
_NO_LOT = (None, None, None)


def lot_values(lot: Lot | None) -> tuple[Any, ...]:
    """`LOT_ON_AWARD`'s values of an award whose lot is `lot` (None: no lot, or not yet)."""
    return _NO_LOT if lot is None else (lot.expires_at_us, lot.remaining, lot.expired)


def _award_lot(row: tuple[Any, ...]) -> Lot:
    payment_id, campaign_id, wallet_id, credited_at, expires_at, points, remaining, expired = row
    return Lot(
        lot_id(payment_id, campaign_id),
        wallet_id,
        campaign_id,
        payment_id,
        credited_at,
        expires_at,
        points,
        remaining,
        expired,
        on_award=True,
    )


def lot_keys(lot_ids: Iterable[str]) -> list[tuple[str, str]]:
    """The (source, campaign) of each lot id: an award's lot is found by its award's key."""
    return [tuple(i.rsplit(":", 1)) for i in lot_ids]  # type: ignore[misc]  # a campaign id holds no ':'


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


def lot_expiry(session: Session, lot_ids: AbstractSet[str]) -> dict[str, int]:
    """The expiry instant of each of `lot_ids` that exists, wherever it is kept."""
    reads = bulk.ReadBatch(session)
    in_rows = reads.where_in(PointLotRow.__table__, ["id", "expires_at_us"], "id", sorted(lot_ids))
    on_awards = reads.where_tuples(
        AwardRow.__table__,
        ["payment_id", "campaign_id", "lot_expires_at_us"],
        ["payment_id", "campaign_id"],
        lot_keys(sorted(lot_ids)),
    )
    reads.run()
    found = {lot_id(pid, cid): expires_at for pid, cid, expires_at in on_awards.rows if expires_at is not None}
    found.update(in_rows.rows)
    return found


def queue_books(
    reads: bulk.ReadBatch,
    wallets: AbstractSet[str],
    lot_ids: AbstractSet[str] = frozenset(),
    spending: AbstractSet[str] | None = None,
) -> Callable[[], dict[str, WalletBook]]:
    """`load_books` as reads queued on `reads` (sent with others in one round trip): the
    books, built from their rows once `reads` has run."""
    readers = sorted(wallets if spending is None else spending)
    spendable = reads.where_in(PointLotRow.__table__, LOT_COLUMNS, "wallet_id", readers, extra="remaining > 0")
    spendable_on_awards = reads.where_in(
        AwardRow.__table__, _AWARD_LOT_READ, "wallet_id", readers, extra="lot_remaining > 0"
    )
    named = reads.where_in(PointLotRow.__table__, LOT_COLUMNS, "id", sorted(lot_ids))
    named_on_awards = reads.where_tuples(
        AwardRow.__table__, _AWARD_LOT_READ, ["payment_id", "campaign_id"], lot_keys(sorted(lot_ids))
    )
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
        for row in (*spendable_on_awards.rows, *named_on_awards.rows):
            if row[4] is not None:  # an award named whose lot is elsewhere (or none) has none here
                lot = _award_lot(row)
                lots.setdefault(lot.id, lot)
        debts: dict[str, dict[str, int]] = {w: {} for w in wallets}
        for wallet_id, campaign_id, points in debt_rows.rows:
            debts[wallet_id][campaign_id] = points
        by_wallet: dict[str, list[Lot]] = {w: [] for w in wallets}
        for lot in lots.values():
            by_wallet.setdefault(lot.wallet_id, []).append(lot)
        return {w: WalletBook(w, by_wallet.get(w, []), debts.get(w, {})) for w in set(wallets) | set(by_wallet)}

    return build


_lot_values = operator.attrgetter(*LOT_COLUMNS)  # a lot's stored columns, as a tuple in that order


def save_books(
    batch: bulk.WriteBatch, books: dict[str, WalletBook]
) -> tuple[dict[tuple[str, str], Lot], dict[tuple[str, str], dict[str, Any]]]:
    """Queue the books' changes on `batch`: new and changed `point_lot` lots, and debts. Returns
    the lots kept on award rows, by (payment, campaign), for the caller to write with the rest of
    each award's changes (one update a row): the new ones, and the columns of those changed."""
    new, changed, debts = [], [], []
    new_on_awards: dict[tuple[str, str], Lot] = {}
    changed_on_awards: dict[tuple[str, str], dict[str, Any]] = {}
    for book in books.values():
        for lot in book.touched.values():
            if lot.new:
                if lot.on_award:
                    new_on_awards[(lot.source_id, lot.campaign_id)] = lot
                else:
                    new.append(_lot_values(lot))
                lot.new = lot.dirty = False
            elif lot.dirty:
                if lot.on_award:
                    changed_on_awards[(lot.source_id, lot.campaign_id)] = {
                        "lot_remaining": lot.remaining,
                        "lot_expired": lot.expired,
                    }
                else:
                    changed.append({"id": lot.id, "remaining": lot.remaining, "expired": lot.expired})
                lot.dirty = False
        if book.dirty_debts:  # (few books: most of a group's only earn)
            for campaign_id in sorted(book.dirty_debts):
                debts.append(
                    dict(wallet_id=book.wallet_id, campaign_id=campaign_id, points=book.debts.get(campaign_id, 0))
                )
            book.dirty_debts.clear()
        book.touched.clear()
    batch.insert_tuples(PointLotRow.__table__, LOT_COLUMNS, new)
    batch.update(PointLotRow.__table__, ["id"], changed)
    batch.upsert(WalletDebtRow.__table__, debts, key=["wallet_id", "campaign_id"], replace="points")
    return new_on_awards, changed_on_awards
