"""The ledger half of the demo: a ward day posted through the API leaves a whole ledger."""

import random

from engine import demo as ward_demo
from engine.model import Purchase, Refund
from setapay_demo import ledger as ledger_demo
from setapay_demo.ledger import run_ledger_demo


def test_ledger_demo_posts_through_the_api_and_the_ledger_checks(sqlite_url):
    summary = run_ledger_demo(300, database_url=sqlite_url)
    counts = summary["counts"]
    assert counts["purchases accepted"] == 300
    assert counts["retries replayed"] >= 3
    assert not [name for name in counts if name.startswith("declined")]
    check = summary["check"]
    assert check["ok"], check["checks"]
    assert check["trial_balance"] == 0
    issued = sum(c["issued"] for c in check["campaigns"].values())
    assert issued > 0
    wallet = summary["sample_wallet"]
    assert wallet["available"] + wallet["pending"] > 0


def _outcome(summary):
    """What the demo shows of a run, without the ids and instants that differ between runs."""
    settlement = summary["settlement"]["statement"]["document"]
    return {
        "counts": summary["counts"],
        "check": summary["check"],
        "sample_wallet": summary["sample_wallet"],
        "after_credit": summary["sample_wallet_after_credit"],
        "rewards": summary["merchant_rewards"],
        "totals": settlement["totals"],
        "reconciled": summary["reconciliation"]["ok"],
    }


def test_posting_many_at_once_answers_as_posting_one_at_a_time(sqlite_url, tmp_path, monkeypatch):
    """Many transactions in flight (so groups of many) leave the same ledger as the day posted
    strictly in order: no answer depends on the order within a group."""
    many = run_ledger_demo(300, database_url=sqlite_url, out_dir=str(tmp_path / "many"))
    monkeypatch.setattr(ledger_demo, "IN_FLIGHT_MAX", 1)
    one = run_ledger_demo(300, database_url=f"sqlite+pysqlite:///{tmp_path}/one.db", out_dir=str(tmp_path / "one"))
    assert _outcome(many) == _outcome(one)
    assert many["counts"]["refunds accepted"] > 0 and many["counts"]["redemptions"] > 0


def test_the_schedule_keeps_each_wallet_in_order_and_one_at_a_time():
    """Whatever order the answers come back in, a wallet (a refund counts for its purchase's) has
    one transaction in flight at most, its transactions go out in the day's order, nothing goes
    out more than LOOKAHEAD past the earliest unanswered one, and every one goes out once."""
    members, _ = ward_demo.ward()
    events = ward_demo.day(members, 3_000)
    wallet_of = {key: ev.wallet_id for key, ev in events if isinstance(ev, Purchase)}
    chain = [ev.wallet_id if isinstance(ev, Purchase) else wallet_of[ev.original_id] for _, ev in events]
    assert any(isinstance(ev, Refund) for _, ev in events)
    rng = random.Random(7)
    schedule = ledger_demo._Schedule(events)
    in_flight: list[int] = []
    sent: list[int] = []
    answered: set[int] = set()
    largest = 0
    while not schedule.done():
        out = schedule.ready(ledger_demo.IN_FLIGHT_MAX - len(in_flight))
        earliest = min(set(range(len(events))) - answered)
        for i in out:
            assert i < earliest + ledger_demo.LOOKAHEAD
            assert chain[i] not in {chain[j] for j in in_flight}, "a wallet twice in flight"
            earlier = [j for j in range(i) if chain[j] == chain[i]]
            assert all(j in answered for j in earlier), "a wallet's transaction before an earlier one's answer"
        in_flight += out
        sent += out
        largest = max(largest, len(in_flight))
        assert in_flight, "nothing in flight and nothing ready"
        for i in rng.sample(in_flight, rng.randint(1, len(in_flight))):
            in_flight.remove(i)
            answered.add(i)
            schedule.answered(i)
    assert sorted(sent) == list(range(len(events)))
    assert largest > 32, "the schedule keeps many transactions in flight"
