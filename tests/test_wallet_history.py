"""engine/wallet_history.py: postings grouped into the events a resident sees."""

from engine import ledger_rules as rules
from engine.wallet_history import WalletPosting, award_status, group_events


def _p(sequence: int, reason: str, source: str | None, campaign: str | None, amount: int = 10, at: int = 1):
    return WalletPosting(sequence, source, campaign, 1, reason, amount, at)


def test_postings_of_one_change_are_one_event() -> None:
    newest_first = [
        _p(9, rules.AWARD, "tx3", "C1"),
        _p(8, rules.AWARD, "tx3", "C2"),  # another campaign of the same purchase: its own event
        _p(7, rules.REDEMPTION, "tx3", "C2", 5),
        _p(6, rules.REDEMPTION, "tx3", "C1", 7),  # legs from two campaigns' lots: one redemption
        _p(5, rules.DEBT_SETTLEMENT, "tx2", "C1"),  # between the wallet's own buckets: no event
        _p(4, rules.CLAWBACK, "tx2", "C1", 3),
        _p(3, rules.CLAWBACK, "tx2", "C1", 4),  # pending, then available: one clawback
        _p(2, rules.EXPIRY, "tx1", "C1", at=2),
        _p(1, rules.EXPIRY, "tx1", "C1", at=1),  # the same lot source in another run: another event
    ]
    events = group_events(newest_first)
    assert [(e.type, e.sequence, e.first_sequence, e.points) for e in events] == [
        ("earned", 9, 9, 10),
        ("earned", 8, 8, 10),
        ("redeemed", 7, 6, 12),
        ("clawed_back", 4, 3, 7),
        ("expired", 2, 2, 10),
        ("expired", 1, 1, 10),
    ]
    assert events[2].campaign_id is None and [p.sequence for p in events[2].postings] == [6, 7]
    assert group_events([]) == []


def test_award_status() -> None:
    assert award_status(10, 10, 0) == "pending"
    assert award_status(10, 0, 0) == "credited"
    assert award_status(10, 0, 10) == "clawed_back"
    assert award_status(10, 4, 6) == "pending"
