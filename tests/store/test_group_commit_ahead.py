"""The group committer deciding ahead (engine/store/group_commit.py, PostgreSQL): each group decided
outside the lock while the one before it is being written. The same traffic through a committer that
decides ahead and one that decides under the lock gets the same answers, and both ledgers check; a
unit of work that comes between a group's decision and its write has the group posted under the
lock, and the committer stays there for a while. Real PostgreSQL, nothing of our storage replaced.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

from sqlalchemy import text

from engine.clock import ManualClock
from engine.store import queries
from engine.store.group_commit import GroupCommitter
from engine.store.ledger import Result
from engine.timeutil import TOKYO
from tests.lifecycle.support import Books
from tests.store.test_pipeline import assert_checks, fresh, setup, traffic


class Slowed(GroupCommitter):
    """Each write waits a moment first, so the committer decides the next group meanwhile; with
    `intruder_at`, a unit of work of another writer comes before that write (counted from 1)."""

    def __init__(self, *args, intruder_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0
        self.intruder_at = intruder_at

    def _write(self, decided, group, started) -> None:
        self.writes += 1
        time.sleep(0.02)
        if self.writes == self.intruder_at:
            with self.ledger.unit_of_work():
                pass  # moves nothing but the lock version, as a settlement run that paid nothing
        super()._write(decided, group, started)


def answer(r: Result) -> tuple:
    """What a terminal reads of an answer, but the instants (each group is stamped by the clock)."""
    body = {k: v for k, v in r.body.items() if k not in ("accepted_at", "credit_at")}
    if "awards" in body:
        body["awards"] = [{k: v for k, v in a.items() if k != "credit_at"} for a in body["awards"]]
    return (r.status, r.replayed, body)


def post(committer: GroupCommitter, groups) -> list[Result]:
    """Every group queued at once, each as one batch (`size_max=1`: a batch is a group of its own)."""
    futures = [committer.enqueue_many([fresh(s) for s in g]) for g in groups]
    return [r for f in futures for r in f.result(timeout=120)]


def both_ways(
    two: tuple[Books, Books], groups, made: list[GroupCommitter] | None = None, **slowed: Any
) -> tuple[Slowed, list[Result], list[Result]]:
    """The groups through a committer deciding ahead and through one deciding under the lock: the
    former and its answers, which must be the latter's. The committer is added to `made` first."""
    committer = Slowed(two[0].ledger, wait_ms=0, size_max=1, **slowed)
    if made is not None:
        made.append(committer)
    reference = GroupCommitter(two[1].ledger, wait_ms=0, size_max=1, ahead=False)
    got, want = post(committer, groups), post(reference, groups)
    assert [answer(r) for r in got] == [answer(r) for r in want]
    assert reference.written_ahead == reference.overlaid == 0
    return committer, got, want


def test_groups_decided_ahead_get_the_answers_of_groups_decided_under_the_lock(two) -> None:
    ahead, locked = two
    groups = traffic(seed=7, n=400)
    committer, got, want = both_ways(two, groups)
    # Decided ahead and over the group being written, all but those posted in two rounds.
    assert committer.redecided == 0
    assert committer.written_ahead >= len(groups) * 9 // 10
    assert committer.overlaid >= len(groups) * 8 // 10
    # Retries of answered keys only: answered from the committed rows, without the lock.
    with ahead.engine.connect() as c:
        before = c.execute(text("SELECT lock_version FROM ledger_head")).scalar_one()
    ends = [sum(len(g) for g in groups[: i + 1]) for i in range(len(groups))]
    accepted = [g for g, end in zip(groups, ends) if all(r.status == 201 for r in got[end - len(g) : end])][:5]
    assert len(accepted) == 5
    again = post(committer, accepted)
    first = {r.body["id"]: r.body for r in got if r.status == 201}
    assert all(r.replayed and r.body == first[r.body["id"]] for r in again)
    with ahead.engine.connect() as c:
        assert c.execute(text("SELECT lock_version FROM ledger_head")).scalar_one() == before
    codes = {r.body.get("code") for r in want if r.status >= 400}
    assert {"insufficient_points", "refund_exceeds_original", "receipt_already_used"} <= codes
    assert_checks(ahead)
    assert_checks(locked)


def test_a_unit_of_work_between_decision_and_write_has_the_group_posted_under_the_lock(two) -> None:
    committer, _, _ = both_ways(two, traffic(seed=9, n=120), intruder_at=3)
    # The third group found the head moved and was posted under the lock; so was the fourth,
    # decided over it; the groups after them were decided under the lock (within the second).
    assert committer.redecided == 2
    assert committer.written_ahead == 2
    assert_checks(two[0])


def test_after_the_pause_the_committer_decides_ahead_again(postgres_url, monkeypatch) -> None:
    from engine.store import group_commit

    monkeypatch.setattr(group_commit, "LOCKED_AFTER_REFUSAL_S", 0.0)
    books = setup(postgres_url)
    try:
        groups = traffic(seed=9, n=120)
        committer = Slowed(books.ledger, wait_ms=0, size_max=1, intruder_at=3)
        post(committer, groups)
        assert committer.redecided == 2
        assert committer.written_ahead >= len(groups) * 8 // 10
        assert queries.ledger_check(books.engine)["ok"]
    finally:
        books.close()


class Intruding(ManualClock):
    """The manual clock of `books`: armed, the committer thread's next reading of it first lets
    another writer post and commit (in a thread of its own, which reads this clock unhooked), then
    answers the instant of before that post: a unit of work committing just as a group is stamped."""

    def __init__(self, books: Books) -> None:
        super().__init__(books.clock.now_us())
        self.books = books
        self.armed = False
        self.intruded = 0

    def now_us(self) -> int:
        instant = super().now_us()
        if self.armed and threading.current_thread().name.startswith("group-commit"):
            self.armed = False
            other = threading.Thread(target=self.intrude)
            other.start()
            other.join()
        return instant

    def intrude(self) -> None:
        result = self.books.purchase("T1", "W9", 5000, dt.datetime(2026, 1, 6, 23, tzinfo=TOKYO), key="intruder")
        self.intruded += result.status == 201


def test_a_unit_committed_while_a_group_is_stamped_never_leaves_stamps_going_back(postgres_url) -> None:
    # A settlement run committing between the instant a group is stamped with and the snapshot it
    # is decided in would be in the snapshot: the group would be written after the run with an
    # earlier stamp. The stamp is read once the snapshot holds, so such a unit moves the head.
    books = setup(postgres_url)
    try:
        clock = Intruding(books)
        books.ledger.clock = clock
        committer = Slowed(books.ledger, wait_ms=0, size_max=1)
        groups = traffic(seed=21, n=60)
        post(committer, groups[:2])
        clock.armed = True
        post(committer, groups[2:])
        assert clock.intruded == 1 and not clock.armed
        with books.engine.connect() as c:
            for table, stamp in (("posting", "posted_at_us"), ("payment", "accepted_at_us")):
                stamps = c.execute(text(f"SELECT {stamp} FROM {table} ORDER BY sequence")).scalars().all()
                assert stamps == sorted(stamps), f"{table} stamps go back along the chain"
        assert committer.redecided >= 1  # the group being stamped found the intruder's head
        assert_checks(books)
    finally:
        books.close()
