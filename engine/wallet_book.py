"""A wallet's available points as lots, debt, and the postings that move them (SPEC §4).

Credited points live in *lots*: one per credited award or grant, each with
the instant it expires (an award's lot is stored on the award's own row).
The wallet's per-campaign available accounts always equal its lots'
remaining points minus its debt, campaign by campaign:

    available(w, c) = sum(lot.remaining for lots of c) - debt(w, c)

and a wallet never holds debt and spendable lots at once: debt appears only
when a clawback has exhausted every lot, and any later inflow (a credit, a
grant, returned points) repays debt before it becomes spendable.

Moves between a wallet's campaign buckets (repaying one campaign's debt with
another campaign's points, or clawing back one campaign's award from another
campaign's lot) are `debt_settlement` postings, so every account still equals
the sum of its postings. `WalletBook` is pure: it returns postings and changes
lots in memory; the storage layer persists both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from engine import ledger_rules as rules

# A lot's stored columns, in the order of `Lot`'s first fields.
LOT_COLUMNS = (
    "id",
    "wallet_id",
    "campaign_id",
    "source_id",
    "credited_at_us",
    "expires_at_us",
    "points",
    "remaining",
    "expired",
)


@dataclasses.dataclass(slots=True)
class Lot:
    id: str
    wallet_id: str
    campaign_id: str
    source_id: str
    credited_at_us: int
    expires_at_us: int
    points: int
    remaining: int
    expired: int = 0
    new: bool = False
    dirty: bool = False
    on_award: bool = False  # kept on its award's row (`award.lot_*`), not a `point_lot` row

    def order(self) -> tuple[int, str]:
        """Earliest-expiring first; ties by id so the order is total."""
        return (self.expires_at_us, self.id)


class WalletBook:
    def __init__(self, wallet_id: str, lots: list[Lot], debts: dict[str, int]) -> None:
        self.wallet_id = wallet_id
        # (Most books a group reads hold neither: no comprehension run for nothing.)
        self.lots = {lot.id: lot for lot in lots} if lots else {}
        self.debts = {c: d for c, d in debts.items() if d} if debts else {}
        self.dirty_debts: set[str] = set()
        self.touched: dict[str, Lot] = {}  # lots added or changed since the book was read (or saved)
        self.postings: list[rules.Posting] = []
        assert not (self.debts and any(lot.remaining for lot in lots)), "debt and spendable lots at once"

    # -- reading -----------------------------------------------------------

    def spendable(self) -> int:
        if not self.lots and not self.debts:  # most books a group reads: wallets only earning
            return 0
        return sum([lot.remaining for lot in self.lots.values()]) - sum(self.debts.values())

    def available_by_campaign(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for lot in self.lots.values():
            out[lot.campaign_id] = out.get(lot.campaign_id, 0) + lot.remaining
        for c, d in self.debts.items():
            out[c] = out.get(c, 0) - d
        return out

    # -- inflows -----------------------------------------------------------

    def inflow(self, lot: Lot, points: int, payment_id: str | None) -> int:
        """`points` just posted into available(w, lot.campaign) go to `lot`, after repaying debt.

        Returns the points that reached the lot.
        """
        assert points > 0
        for debt_campaign in sorted(self.debts):
            if points == 0:
                break
            settled = min(points, self.debts[debt_campaign])
            if debt_campaign != lot.campaign_id:
                self._post(rules.DEBT_SETTLEMENT, lot.campaign_id, debt_campaign, settled, payment_id)
            self._reduce_debt(debt_campaign, settled)
            points -= settled
        if points:
            if lot.id not in self.lots:
                self.lots[lot.id] = lot
            lot.remaining += points
            self.touch(lot)
        return points

    # -- outflows ----------------------------------------------------------

    def consume(self, points: int) -> list[tuple[Lot, int]]:
        """Take `points` for a redemption, earliest-expiring lots first."""
        assert 0 < points <= self.spendable(), (points, self.spendable())
        legs = []
        for lot in sorted(self.lots.values(), key=Lot.order):
            if points == 0:
                break
            take = min(lot.remaining, points)
            if take:
                lot.remaining -= take
                self.touch(lot)
                legs.append((lot, take))
                points -= take
        return legs

    def claw_available(self, campaign_id: str, points: int, own_lot_id: str | None, payment_id: str) -> None:
        """Make `points` of campaign `campaign_id` leave available(w, c) for a clawback.

        The award's own lot goes first, then other lots earliest-expiring first
        (their points move into the campaign's bucket by settlement), and what
        is still missing becomes debt. The caller posts the clawback itself.
        """
        own = self.lots.get(own_lot_id) if own_lot_id else None
        order = ([own] if own else []) + sorted((lot for lot in self.lots.values() if lot is not own), key=Lot.order)
        for lot in order:
            if points == 0:
                break
            take = min(lot.remaining, points)
            if not take:
                continue
            if lot.campaign_id != campaign_id:
                self._post(rules.DEBT_SETTLEMENT, lot.campaign_id, campaign_id, take, payment_id)
            lot.remaining -= take
            self.touch(lot)
            points -= take
        if points:
            self.debts[campaign_id] = self.debts.get(campaign_id, 0) + points
            self.dirty_debts.add(campaign_id)

    def expire(self, as_of_us: int) -> list[tuple[Lot, int]]:
        """Lots whose expiry has come: their remaining points leave the wallet."""
        out = []
        for lot in sorted(self.lots.values(), key=Lot.order):
            if lot.expires_at_us <= as_of_us and lot.remaining:
                out.append((lot, lot.remaining))
                lot.expired += lot.remaining
                lot.remaining = 0
                self.touch(lot)
        return out

    # -- helpers -----------------------------------------------------------

    def touch(self, lot: Lot) -> None:
        """Mark `lot`, held by this book, changed: saved with the book."""
        lot.dirty = True
        self.touched[lot.id] = lot

    def _reduce_debt(self, campaign_id: str, points: int) -> None:
        self.debts[campaign_id] -= points
        self.dirty_debts.add(campaign_id)
        if not self.debts[campaign_id]:
            del self.debts[campaign_id]

    def _post(self, reason: str, from_campaign: str, to_campaign: str, points: int, payment_id: str | None) -> None:
        self.postings.append(
            rules.Posting(
                reason,
                rules.available_account(self.wallet_id, from_campaign),
                rules.available_account(self.wallet_id, to_campaign),
                points,
                payment_id,
                from_campaign,
            )
        )


def expire_due(books: Mapping[str, WalletBook], at_us: int) -> list[tuple[str, Lot, int]]:
    """Expire the lots of `books` whose expiry has come by `at_us` (`WalletBook.expire`): what a
    posting accepted at `at_us` does before it spends or claws back anything, as the expiry run
    would have had it run at that instant (SPEC §4: points past their expiry are not available;
    the run only sweeps the wallets no posting touched). Each as (wallet, lot, points expired),
    for `expiry_posting`."""
    out: list[tuple[str, Lot, int]] = []
    for wallet_id, book in books.items():
        if book.lots:  # most books a group reads hold none: wallets only earning
            out.extend((wallet_id, lot, points) for lot, points in book.expire(at_us))
    return out


def expiry_posting(wallet_id: str, lot: Lot, points: int) -> rules.Posting:
    """The posting that takes a lot's expired points out of its wallet."""
    return rules.Posting(
        rules.EXPIRY,
        rules.available_account(wallet_id, lot.campaign_id),
        rules.expired_account(lot.campaign_id),
        points,
        lot.source_id,
        lot.campaign_id,
    )


def lot_id(source_id: str, campaign_id: str) -> str:
    """A lot's id: its source's (a payment's or a grant's) and its campaign's, neither of which
    holds a ':' (`limits.ID_PATTERN`; `tx_`/`gr_` and hex), so the id splits back into both
    (`engine.store.books.lot_keys`: an award's lot is found by its award's key)."""
    return f"{source_id}:{campaign_id}"
