"""engine/store/group_commit.py against a real ledger, on SQLite and on PostgreSQL.

What a group is can be read from the database: a group is one `Ledger.submit` call, which stamps
all its payments with one acceptance instant taken once from the engine's clock (a `ManualClock`
here, which moves by a microsecond on every reading). So the payments' distinct `accepted_at_us`
are the groups. Nothing of our storage is replaced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from engine.clock import ManualClock
from engine.model import Purchase
from engine.store.db import make_engine
from engine.store.group_commit import GroupCommitter
from engine.store.ledger import Ledger, Submission
from engine.store.models import IdempotencyRow, PaymentRow
from engine.timeutil import TOKYO, to_us
from tests.lifecycle.support import Books, campaign

NOW = dt.datetime(2026, 12, 1, 10, tzinfo=TOKYO)


@pytest.fixture
def books(database_url):
    b = Books(database_url, start=NOW)
    b.setup({"M1": ["T1"]}, [campaign("C1")])
    try:
        yield b
    finally:
        b.close()


def submission(wallet: str, amount: int, key: str | None = None, unchecked: dict | None = None) -> Submission:
    fields = {
        "type": "purchase",
        "wallet_id": wallet,
        "merchant_id": "M1",
        "terminal_id": "T1",
        "occurred_at": NOW.isoformat(),
        "amount": amount,
        "points_used": 0,
    }
    if unchecked:  # a record that skipped validation, as a bug elsewhere could make one
        body = Purchase.model_construct(**{**Purchase.model_validate(fields).__dict__, **unchecked})
    else:
        body = Purchase.model_validate(fields)
    canonical = body.model_dump_json()
    return Submission("T1", key or uuid.uuid4().hex, hashlib.sha256(canonical.encode()).hexdigest(), body, canonical)


def groups(books: Books) -> Counter:
    """Payments per acceptance instant: one entry per committed group."""
    with books.engine.connect() as c:
        return Counter(c.execute(select(PaymentRow.accepted_at_us)).scalars())


def test_one_submission_is_answered_after_its_commit(books: Books) -> None:
    committer = GroupCommitter(books.ledger, wait_ms=0)
    result = committer.submit(submission("W1", 1000, key="k1"))
    assert result.status == 201 and result.body["points_awarded"] == 100
    # Answered means durable: another connection sees the payment, which remembers its answer
    # under its key itself (no second copy in `idempotency_key`).
    with books.engine.connect() as c:
        stored = c.execute(select(PaymentRow.id, PaymentRow.idempotency_key, PaymentRow.response_json)).one()
        assert stored[:2] == (result.body["id"], "k1") and json.loads(stored[2]) == result.body
        assert c.execute(select(IdempotencyRow.key)).scalars().all() == []
    again = committer.submit(submission("W1", 1000, key="k1"))
    assert again.replayed and again.body == result.body
    books.check()


def test_concurrent_submissions_share_one_transaction(books: Books) -> None:
    committer = GroupCommitter(books.ledger, wait_ms=2_000, size_max=8)
    futures = [committer.enqueue(submission(f"W{i}", 1000 + i)) for i in range(8)]
    results = [f.result(timeout=60) for f in futures]
    assert [r.status for r in results] == [201] * 8
    # Eight queued within the wait: the eighth fills the group, which commits at once as one.
    assert sorted(groups(books).values()) == [8]
    # Sequences follow the queue's order.
    assert [r.body["sequence"] for r in results] == sorted(r.body["sequence"] for r in results)
    books.check()


def test_a_group_is_never_larger_than_size_max(books: Books) -> None:
    committer = GroupCommitter(books.ledger, wait_ms=200, size_max=3)
    futures = [committer.enqueue(submission(f"W{i}", 500 + i)) for i in range(10)]
    assert all(f.result(timeout=60).status == 201 for f in futures)
    sizes = groups(books)
    assert sum(sizes.values()) == 10 and max(sizes.values()) <= 3 and len(sizes) >= 4
    books.check()


def test_submissions_from_many_threads_are_each_posted_once(books: Books) -> None:
    committer = GroupCommitter(books.ledger, wait_ms=5, size_max=50)
    answers: dict[int, object] = {}

    def terminal(i: int) -> None:
        key = f"k{i % 20}"  # every key twice: once posted, once answered from memory
        answers[i] = committer.submit(submission(f"W{i % 20}", 700 + i % 20, key=key))

    threads = [threading.Thread(target=terminal, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 40 and all(a.status == 201 for a in answers.values())
    assert sum(groups(books).values()) == 20  # one payment per key
    for i in range(20):
        assert answers[i].body == answers[i + 20].body
    books.check()


def test_a_submission_that_breaks_its_group_fails_alone(books: Books) -> None:
    """The database refuses the bad one (CHECK amount > 0), which rolls back the whole group's
    transaction; the committer then posts the group's submissions one by one."""
    committer = GroupCommitter(books.ledger, wait_ms=2_000, size_max=3)
    good_before = committer.enqueue(submission("W1", 1000))
    bad = committer.enqueue(submission("W2", 1000, unchecked={"amount": 0}))
    good_after = committer.enqueue(submission("W3", 1000))
    assert good_before.result(timeout=60).status == 201
    assert good_after.result(timeout=60).status == 201
    with pytest.raises(Exception, match="(?i)check|constraint"):
        bad.result(timeout=60)
    with books.engine.connect() as c:
        wallets = c.execute(select(PaymentRow.wallet_id)).scalars().all()
    assert sorted(wallets) == ["W1", "W3"]
    books.check()


@pytest.mark.parametrize(
    "unreachable",
    ["sqlite+pysqlite:////nonexistent-setapay-dir/ledger.db", "postgresql+psycopg://postgres@127.0.0.1:1/setapay"],
)
def test_an_unreachable_database_fails_the_group_at_once(unreachable: str, caplog) -> None:
    """No retry one by one against a database that cannot be reached: every submission of the group
    gets the group's error, and the group is one log line without a traceback (issue 14)."""
    engine = make_engine(unreachable)
    try:
        committer = GroupCommitter(Ledger(engine), wait_ms=1_000, size_max=3)
        with caplog.at_level(logging.INFO, logger="engine.store.group_commit"):
            futures = [committer.enqueue(submission(f"W{i}", 1000)) for i in range(3)]
            for future in futures:
                with pytest.raises(OperationalError):
                    future.result(timeout=60)
    finally:
        engine.dispose()
    records = [r for r in caplog.records if r.name == "engine.store.group_commit"]
    assert [r.getMessage() for r in records] == [
        "group of 3 failed: the database cannot be reached (OperationalError/OperationalError)"
    ]
    assert records[0].exc_info is None


def test_a_group_draws_distinct_time_ordered_ids(books: Books) -> None:
    """The ids of a group come from one draw (`Ledger.new_payment_ids`): each `tx_`, the
    acceptance millisecond in 12 hex digits and 20 random ones; no two alike within the group
    or across groups, and a later group's ids sort after an earlier one's."""
    first = books.ledger.submit([submission(f"W{i}", 1000 + i) for i in range(300)])
    books.at(books.clock.now_us() + 1_000)
    second = books.ledger.submit([submission(f"W{i}", 2000 + i) for i in range(300)])
    ids = [r.body["id"] for r in first + second]
    assert all(r.status == 201 for r in first + second)
    assert all(re.fullmatch(r"tx_[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids) == 600
    for r in first + second:  # the stamp is the answer's acceptance millisecond
        assert int(r.body["id"][3:15], 16) == to_us(dt.datetime.fromisoformat(r.body["accepted_at"])) // 1000
    assert max(ids[:300]) < min(ids[300:])
    with books.engine.connect() as c:
        assert set(c.execute(select(PaymentRow.id)).scalars()) == set(ids)
    assert Ledger.new_payment_ids(0, 0) == []
    drawn = Ledger.new_payment_ids(10_000, 1_796_500_000_123_456)
    assert len(set(drawn)) == 10_000
    assert {i[:15] for i in drawn} == {"tx_" + format(1_796_500_000_123, "012x")}
    # Random, not counted: the digits after the stamp are spread evenly over the whole draw.
    digits = Counter("".join(i[15:] for i in drawn))
    assert set(digits) == set("0123456789abcdef") and max(digits.values()) < 1.1 * min(digits.values())


class SteppingClock(ManualClock):
    """A clock a millisecond further on at every reading: a second reading of it for one group
    (the id's stamp apart from `accepted_at`) could not go unseen."""

    def now_us(self) -> int:
        self.set(super().now_us() + 999)
        return super().now_us() - 1


def test_an_id_is_stamped_with_its_payment_acceptance_on_both_paths(books: Books) -> None:
    """Under the lock (`submit`) and decided ahead (`decide_ahead`, PostgreSQL), each id's stamp is
    the millisecond of the `accepted_at` its answer gives and its payment row stores."""
    ledger = Ledger(books.engine, clock=SteppingClock(books.clock.now_us()))
    try:
        results = ledger.submit([submission(f"W{i}", 1000 + i) for i in range(5)])
        if books.engine.dialect.name == "postgresql":
            decided = ledger.decide_ahead([submission(f"V{i}", 1000 + i) for i in range(5)], accepted_at_us=None)
            assert decided is not None and ledger.write_decided(decided)
            results += decided.results
    finally:
        ledger.close()
    assert len(results) == (10 if books.engine.dialect.name == "postgresql" else 5)
    with books.engine.connect() as c:
        stored = dict(c.execute(select(PaymentRow.id, PaymentRow.accepted_at_us)).all())
    for r in results:
        assert r.status == 201
        accepted = to_us(dt.datetime.fromisoformat(r.body["accepted_at"]))
        assert int(r.body["id"][3:15], 16) == accepted // 1000 == stored[r.body["id"]] // 1000
