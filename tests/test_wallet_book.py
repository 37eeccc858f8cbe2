"""engine/wallet_book.py: a wallet's lots and debt, and the settlement postings between its campaigns.

Scenario tests for each move (inflow repays debt first, redemption takes the earliest-expiring
points, a clawback takes the award's own lot first and leaves the rest as debt, expiry), and a
property test of the module's invariant: every campaign's available account, summed from the
caller's postings and the book's own, equals the book's lots minus its debt, and a wallet never
holds debt and spendable lots at once.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import ledger_rules as rules
from engine.wallet_book import Lot, WalletBook, expire_due, expiry_posting, lot_id

W = "W1"
DAY_US = 86_400_000_000


def lot(source: str, campaign: str, expires_day: int, remaining: int = 0, points: int | None = None) -> Lot:
    return Lot(
        id=lot_id(source, campaign),
        wallet_id=W,
        campaign_id=campaign,
        source_id=source,
        credited_at_us=0,
        expires_at_us=expires_day * DAY_US,
        points=points if points is not None else max(remaining, 1),
        remaining=remaining,
    )


def settlement(from_campaign: str, to_campaign: str, points: int, payment_id: str | None) -> rules.Posting:
    return rules.Posting(
        rules.DEBT_SETTLEMENT,
        rules.available_account(W, from_campaign),
        rules.available_account(W, to_campaign),
        points,
        payment_id,
        from_campaign,
    )


def test_lot_ids_and_order() -> None:
    assert lot_id("tx_1", "C1") == "tx_1:C1"
    a, b, c = lot("tx_b", "C1", 10), lot("tx_a", "C1", 10), lot("tx_c", "C1", 5)
    assert sorted([a, b, c], key=Lot.order) == [c, b, a]  # earliest expiry, then id


def test_debt_and_spendable_lots_at_once_are_refused() -> None:
    with pytest.raises(AssertionError):
        WalletBook(W, [lot("tx_1", "C1", 10, remaining=5)], {"C2": 3})
    book = WalletBook(W, [lot("tx_1", "C1", 10, remaining=0)], {"C2": 3, "C3": 0})
    assert book.debts == {"C2": 3}  # zero debts are dropped
    assert book.spendable() == -3
    assert book.available_by_campaign() == {"C1": 0, "C2": -3}


def test_an_inflow_without_debt_fills_its_lot() -> None:
    book = WalletBook(W, [], {})
    fresh = lot("tx_1", "C1", 30)
    assert book.inflow(fresh, 120, "tx_1") == 120
    assert book.lots == {"tx_1:C1": fresh} and fresh.remaining == 120 and fresh.dirty
    assert book.postings == [] and book.available_by_campaign() == {"C1": 120}


def test_an_inflow_repays_debt_first_campaign_by_campaign() -> None:
    book = WalletBook(W, [], {"C2": 30, "C1": 50, "C3": 40})
    fresh = lot("tx_9", "C1", 30)
    # C1's own debt is repaid in place; C2's and C3's by settlement postings out of C1 (debts by campaign id).
    assert book.inflow(fresh, 100, "tx_9") == 0
    assert book.postings == [settlement("C1", "C2", 30, "tx_9"), settlement("C1", "C3", 20, "tx_9")]
    assert book.debts == {"C3": 20}
    assert book.dirty_debts == {"C1", "C2", "C3"}
    assert "tx_9:C1" not in book.lots  # nothing reached the lot
    assert book.inflow(fresh, 50, "tx_9") == 30
    assert book.debts == {} and fresh.remaining == 30
    assert book.available_by_campaign() == {"C1": 30}


def test_a_redemption_takes_the_earliest_expiring_points_first() -> None:
    late, early, middle = lot("tx_1", "C1", 90, 100), lot("tx_2", "C2", 30, 40), lot("tx_3", "C1", 60, 50)
    book = WalletBook(W, [late, early, middle], {})
    legs = book.consume(70)
    assert [(leg.id, points) for leg, points in legs] == [("tx_2:C2", 40), ("tx_3:C1", 30)]
    assert (early.remaining, middle.remaining, late.remaining) == (0, 20, 100)
    assert book.postings == []  # the caller posts the redemption itself
    assert book.consume(120) and book.spendable() == 0
    with pytest.raises(AssertionError):
        book.consume(1)
    with pytest.raises(AssertionError):
        WalletBook(W, [lot("tx_4", "C1", 10, 5)], {}).consume(0)


def test_a_clawback_takes_its_own_lot_then_others_then_becomes_debt() -> None:
    own, other_early, other_late = lot("tx_1", "C1", 90, 30), lot("tx_2", "C2", 10, 20), lot("tx_3", "C1", 50, 15)
    book = WalletBook(W, [own, other_early, other_late], {})
    book.claw_available("C1", 100, "tx_1:C1", "tx_r")
    assert (own.remaining, other_early.remaining, other_late.remaining) == (0, 0, 0)
    # C2's points move into C1's bucket first; C1's own other lot needs no settlement.
    assert book.postings == [settlement("C2", "C1", 20, "tx_r")]
    assert book.debts == {"C1": 35} and book.dirty_debts == {"C1"}
    assert book.available_by_campaign() == {"C1": -35, "C2": 0}


def test_a_clawback_without_its_own_lot_goes_by_expiry() -> None:
    early, late = lot("tx_2", "C2", 10, 20), lot("tx_3", "C3", 50, 15)
    book = WalletBook(W, [late, early], {})
    book.claw_available("C1", 25, None, "tx_r")
    assert (early.remaining, late.remaining) == (0, 10)
    assert book.postings == [settlement("C2", "C1", 20, "tx_r"), settlement("C3", "C1", 5, "tx_r")]
    assert book.debts == {}


def test_expiry_takes_what_is_left_of_every_lot_whose_time_has_come() -> None:
    gone, today, later, spent = lot("a", "C1", 10, 7), lot("b", "C2", 20, 3), lot("c", "C1", 21, 9), lot("d", "C1", 5)
    book = WalletBook(W, [later, today, gone, spent], {})
    expired = book.expire(20 * DAY_US)  # "expires at" is exclusive: at that instant the points are gone
    assert [(x.id, points) for x, points in expired] == [("a:C1", 7), ("b:C2", 3)]
    assert (gone.remaining, gone.expired, today.expired, later.remaining) == (0, 7, 3, 9)
    assert book.expire(20 * DAY_US) == []
    assert book.postings == []


def test_a_posting_expires_the_due_lots_of_every_book_it_read_before_spending() -> None:
    """`expire_due`: what a unit accepted at an instant takes out first (SPEC §4), book by book;
    a book without lots (a wallet only earning) is left alone; each with its expiry posting."""
    due, valid = lot("a", "C1", 10, 7), lot("b", "C2", 30, 5)
    spender, earner = WalletBook(W, [due, valid], {}), WalletBook("W2", [], {"C1": 4})
    assert spender.spendable() == 12
    expired = expire_due({W: spender, "W2": earner}, 20 * DAY_US)
    assert [(w, x.id, points) for w, x, points in expired] == [(W, "a:C1", 7)]
    assert spender.spendable() == 5 and spender.touched == {"a:C1": due} and earner.debts == {"C1": 4}
    assert expiry_posting(W, due, 7) == rules.Posting(
        rules.EXPIRY, rules.available_account(W, "C1"), rules.expired_account("C1"), 7, "a", "C1"
    )
    assert expire_due({W: spender}, 20 * DAY_US) == []


# -- the invariant, under any sequence of moves ---------------------------------------------------

CAMPAIGNS = ["C1", "C2", "C3"]
moves = st.lists(
    st.one_of(
        st.tuples(st.just("inflow"), st.sampled_from(CAMPAIGNS), st.integers(1, 300), st.integers(1, 12)),
        st.tuples(st.just("consume"), st.integers(1, 400)),
        st.tuples(st.just("claw"), st.sampled_from(CAMPAIGNS), st.integers(1, 300), st.booleans()),
        st.tuples(st.just("expire"), st.integers(1, 12)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(moves)
def test_available_accounts_always_equal_lots_minus_debt(sequence) -> None:
    book = WalletBook(W, [], {})
    balance: dict[str, int] = defaultdict(int)  # available(w, c), from every posting so far
    sources = 0
    for move in sequence:
        if move[0] == "inflow":
            _, campaign, points, month = move
            sources += 1
            target = lot(f"tx_{sources}", campaign, month * 30)
            target.new = True
            balance[campaign] += points  # the caller's credit or grant posting
            reached = book.inflow(target, points, f"tx_{sources}")
            assert 0 <= reached <= points
        elif move[0] == "consume":
            points = min(move[1], book.spendable())
            if points <= 0:
                continue
            for taken, amount in book.consume(points):
                balance[taken.campaign_id] -= amount  # the redemption posting, leg by leg
        elif move[0] == "claw":
            _, campaign, points, own = move
            own_lot = next((x.id for x in book.lots.values() if x.campaign_id == campaign), None) if own else None
            book.claw_available(campaign, points, own_lot, "tx_claw")
            balance[campaign] -= points  # the clawback posting
        else:
            for gone, amount in book.expire(move[1] * 30 * DAY_US):
                balance[gone.campaign_id] -= amount  # the expiry posting
        for posting in book.postings:
            assert posting.reason == rules.DEBT_SETTLEMENT and posting.amount > 0
            balance[posting.debit_account_id.split(":")[2]] -= posting.amount
            balance[posting.credit_account_id.split(":")[2]] += posting.amount
        book.postings.clear()

        by_campaign = book.available_by_campaign()
        assert {c: b for c, b in balance.items() if b} == {c: v for c, v in by_campaign.items() if v}
        assert not (book.debts and any(x.remaining for x in book.lots.values())), "debt and spendable lots"
        assert all(x.remaining >= 0 for x in book.lots.values()) and all(d > 0 for d in book.debts.values())
        assert book.spendable() == sum(balance.values())
