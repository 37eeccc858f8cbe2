"""engine/ledger_rules.py: accounts, postings, the posting and payment hash chains, refund splits.

The hashes are recomputed here from SPEC §5's definition (SHA-256 over the previous hash and the
record's canonical bytes), not by calling the function under test twice.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import ledger_rules as rules

POSTED_AT_US = 1_796_000_000_000_000


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- accounts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account", "parts"),
    [
        (rules.funding_account("C1"), ("campaign:C1:funding", "campaign_funding", None, "C1", None)),
        (rules.expired_account("C1"), ("campaign:C1:expired", "campaign_expired", None, "C1", None)),
        (rules.pending_account("W1", "C1"), ("wallet:W1:C1:pending", "wallet_pending", "W1", "C1", None)),
        (rules.available_account("W1", "C1"), ("wallet:W1:C1:available", "wallet_available", "W1", "C1", None)),
        (rules.payable_account("M1"), ("merchant:M1:payable", "merchant_payable", None, None, "M1")),
        (rules.payout_account("M1"), ("merchant:M1:payout", "merchant_payout", None, None, "M1")),
        (rules.COIN_CLEARING, ("coin:clearing", "coin_clearing", None, None, None)),
        (rules.WARD_FEES, ("ward:fees", "ward_fees", None, None, None)),
        (rules.BANK_PAYOUTS, ("bank:payouts", "bank_payouts", None, None, None)),
    ],
)
def test_each_account_has_its_id_kind_and_owners(account: str, parts: tuple) -> None:
    account_id, kind, wallet_id, campaign_id, merchant_id = parts
    assert account == account_id
    assert rules.account_parts(account) == {
        "kind": kind,
        "wallet_id": wallet_id,
        "campaign_id": campaign_id,
        "merchant_id": merchant_id,
    }


def test_an_unknown_account_is_a_programmer_error() -> None:
    with pytest.raises(AssertionError):
        rules.account_parts("treasury:gold")


# -- postings ----------------------------------------------------------------------------


def test_a_posting_moves_a_positive_amount_between_two_accounts_for_a_known_reason() -> None:
    posting = rules.Posting(rules.AWARD, rules.funding_account("C1"), rules.pending_account("W1", "C1"), 1, "tx_1")
    assert (posting.amount, posting.payment_id, posting.campaign_id) == (1, "tx_1", None)
    for amount in (0, -5):
        with pytest.raises(AssertionError):
            rules.Posting(rules.AWARD, "coin:clearing", "ward:fees", amount)
    with pytest.raises(AssertionError):
        rules.Posting(rules.AWARD, "coin:clearing", "coin:clearing", 10)
    with pytest.raises(AssertionError):
        rules.Posting("gift", "coin:clearing", "ward:fees", 10)


def test_the_reasons_are_a_closed_set_of_distinct_names() -> None:
    assert len(set(rules.REASONS)) == len(rules.REASONS) == 15
    assert all(len(reason) <= 24 for reason in rules.REASONS)  # posting.reason is String(24)


# -- the posting chain ------------------------------------------------------------------------


def test_genesis_is_the_hash_of_nothing() -> None:
    assert rules.GENESIS_HASH == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_chain_hash_is_sha256_over_the_previous_hash_and_the_unit_separated_fields() -> None:
    posting = rules.Posting(
        rules.CLAWBACK, rules.pending_account("W1", "C1"), rules.funding_account("C1"), 250, "tx_9", "C1", 3
    )
    fields = ["7", "tx_9", "C1", "3", "clawback", "wallet:W1:C1:pending", "campaign:C1:funding", "250"]
    expected = sha256(rules.GENESIS_HASH + "\x1f".join([*fields, str(POSTED_AT_US)]))
    assert rules.chain_hash(rules.GENESIS_HASH, 7, posting, POSTED_AT_US) == expected
    # Absent payment, campaign and version are empty fields, not "None".
    bare = rules.Posting(rules.PAYOUT_PAID, rules.payout_account("M1"), rules.BANK_PAYOUTS, 5)
    bare_fields = ["8", "", "", "", "payout_paid", "merchant:M1:payout", "bank:payouts", "5", str(POSTED_AT_US)]
    assert rules.chain_hash(expected, 8, bare, POSTED_AT_US) == sha256(expected + "\x1f".join(bare_fields))


def test_any_changed_field_changes_the_chain_hash() -> None:
    values = dict(
        previous_hash=rules.GENESIS_HASH,
        sequence=1,
        payment_id="tx_1",
        campaign_id="C1",
        campaign_version=1,
        reason=rules.AWARD,
        debit_account_id="campaign:C1:funding",
        credit_account_id="wallet:W1:C1:pending",
        amount=100,
        posted_at_us=POSTED_AT_US,
    )
    original = rules.chain_hash_of(**values)
    changed = {
        "previous_hash": "0" * 64,
        "sequence": 2,
        "payment_id": "tx_2",
        "campaign_id": "C2",
        "campaign_version": 2,
        "reason": rules.GRANT,
        "debit_account_id": "campaign:C2:funding",
        "credit_account_id": "wallet:W2:C1:pending",
        "amount": 101,
        "posted_at_us": POSTED_AT_US + 1,
    }
    for name, value in changed.items():
        assert rules.chain_hash_of(**{**values, name: value}) != original, name
    # Version 0 is not "no version".
    assert rules.chain_hash_of(**{**values, "campaign_version": 0}) != rules.chain_hash_of(
        **{**values, "campaign_version": None}
    )


# -- the payment chain ------------------------------------------------------------------------


def test_the_payment_hash_covers_the_stored_request_and_answer() -> None:
    payment = {
        "sequence": 12,
        "id": "tx_12",
        "type": "refund",
        "terminal_id": "T1",
        "merchant_id": "M1",
        "wallet_id": "W1",
        "occurred_at_us": 1,
        "accepted_at_us": 2,
        "amount": 300,
        "points_used": 0,
        "original_id": None,
        "request_json": '{"amount": 300}',
        "response_json": '{"id": "tx_12"}',
        "refunded_amount": 999,  # rating state, updated later: not hashed
    }
    body = "\x1f".join(
        ["12", "tx_12", "refund", "T1", "M1", "W1", "1", "2", "300", "0", "", '{"amount": 300}', '{"id": "tx_12"}']
    )
    assert rules.payment_hash(rules.GENESIS_HASH, payment) == sha256(rules.GENESIS_HASH + body)
    assert rules.payment_hash(rules.GENESIS_HASH, {**payment, "refunded_amount": 0}) == rules.payment_hash(
        rules.GENESIS_HASH, payment
    )
    edited = {**payment, "request_json": '{"amount": 30}'}
    assert rules.payment_hash(rules.GENESIS_HASH, edited) != rules.payment_hash(rules.GENESIS_HASH, payment)


# -- refunds return points leg by leg ----------------------------------------------------------


def test_split_in_order_takes_a_window_of_the_concatenated_legs() -> None:
    legs = [("C1", 100), ("C2", 50), ("C3", 25)]
    assert rules.split_in_order(legs, 0, 100) == [("C1", 100)]
    assert rules.split_in_order(legs, 90, 20) == [("C1", 10), ("C2", 10)]
    assert rules.split_in_order(legs, 140, 35) == [("C2", 10), ("C3", 25)]
    assert rules.split_in_order(legs, 0, 175) == legs
    assert rules.split_in_order(legs, 175, 0) == []
    with pytest.raises(AssertionError):  # past the end of the legs
        rules.split_in_order(legs, 170, 10)


@given(
    legs=st.lists(st.tuples(st.sampled_from(["C1", "C2", "C3"]), st.integers(1, 500)), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10**6), max_size=5),
)
def test_successive_refunds_return_each_leg_exactly(legs, cuts) -> None:
    """Refunds that together return everything give back every leg's points, no more, no less."""
    total = sum(points for _, points in legs)
    bounds = sorted({0, total, *(c % (total + 1) for c in cuts)})
    returned: dict[str, int] = {}
    for start, end in zip(bounds, bounds[1:]):
        for campaign_id, points in rules.split_in_order(legs, start, end - start):
            assert points > 0
            returned[campaign_id] = returned.get(campaign_id, 0) + points
    wanted: dict[str, int] = {}
    for campaign_id, points in legs:
        wanted[campaign_id] = wanted.get(campaign_id, 0) + points
    assert returned == wanted
