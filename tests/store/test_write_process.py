"""Decided groups written by a child process (engine/store/write_process.py), on PostgreSQL.

The same traffic through a committer whose writes go to a `WriterProcess` and through one deciding
under the lock gets the same answers and leaves ledgers that check; a unit of work between decision
and write still has the group posted under the lock; a child killed (SIGKILL) between groups and
while it writes is started again, and every submission is answered once, as decided, and stored
once; a write the database refuses comes back as the error's class name, with nothing written.
Real PostgreSQL and real child processes; nothing of our storage replaced.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from engine.store.group_commit import GroupCommitter
from engine.store.write_process import WriteFailed, WriterLost, WriterProcess
from tests.store.test_committer_process import committing, slow_commits
from tests.store.test_group_commit_ahead import Slowed, answer, both_ways, post
from tests.store.test_pipeline import assert_checks, fresh, setup, traffic


@pytest.fixture
def committers() -> Iterator[list[GroupCommitter]]:
    """Committers a test makes; their children are ended when it ends, passed or failed."""
    made: list[GroupCommitter] = []
    yield made
    for committer in made:
        committer.close()


def test_groups_written_by_the_child_get_the_answers_of_groups_decided_under_the_lock(two, committers) -> None:
    groups = traffic(seed=7, n=300)
    committer, _, _ = both_ways(two, groups, writer_process=True, made=committers)
    assert committer.writer_process is not None and committer.writer_process.started == 1
    assert committer.redecided == 0
    assert committer.written_ahead >= len(groups) * 9 // 10
    assert_checks(two[0])


def test_a_unit_of_work_between_decision_and_write_is_seen_by_the_child(two, committers) -> None:
    committer, _, _ = both_ways(two, traffic(seed=9, n=120), intruder_at=3, writer_process=True, made=committers)
    assert committer.redecided == 2
    assert committer.written_ahead == 2
    assert_checks(two[0])


class Killing(Slowed):
    """Kills the child (SIGKILL) before the writes numbered in `between`, when it waits for work."""

    def __init__(self, *args, between: set[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.between = between

    def _write(self, decided, group, started) -> None:
        if self.writes + 1 in self.between and self.writer_process is not None and self.writer_process.pid:
            os.kill(self.writer_process.pid, signal.SIGKILL)
            time.sleep(0.05)
        super()._write(decided, group, started)


def test_a_child_killed_between_groups_and_while_it_writes_loses_and_doubles_nothing(
    two, monkeypatch, committers
) -> None:
    from engine.store import group_commit

    monkeypatch.setattr(group_commit, "LOCKED_AFTER_REFUSAL_S", 0.0)  # back to the child at once
    groups = traffic(seed=13, n=400)
    committer = Killing(two[0].ledger, wait_ms=0, size_max=1, writer_process=True, between={5, 20})
    committers.append(committer)
    reference = GroupCommitter(two[1].ledger, wait_ms=0, size_max=1, ahead=False)
    stop = threading.Event()
    killed = []

    def killer() -> None:  # kills the child at moments that fall inside writes, mostly
        while not stop.wait(0.15):
            pid = committer.writer_process.pid if committer.writer_process is not None else None
            if pid is not None and len(killed) < 3:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        got = post(committer, groups)
    finally:
        stop.set()
        thread.join()
    want = post(reference, groups)
    # Each answer as decided under the lock (a group lost with its child is posted under the
    # lock; one the child committed before it died is recognised as written).
    assert [answer(r)[0::2] for r in got] == [answer(r)[0::2] for r in want]
    assert committer.writer_process is not None and committer.writer_process.started >= 3
    assert committer.redecided >= 2
    accepted = [r.body["id"] for r in got if r.status == 201 and not r.replayed]
    with two[0].engine.connect() as c:
        stored = c.execute(text("SELECT id FROM payment")).scalars().all()
    assert sorted(stored) == sorted(set(accepted)) and len(stored) == len(set(stored))
    assert_checks(two[0])


def test_a_child_killed_while_its_commit_finishes_has_the_group_recognised_as_written(postgres_url, committers) -> None:
    """Killed after it sent COMMIT: its database session still commits, holding the sequencer lock
    until done; the committer waits for that lock before it asks whether the group was written,
    so it is (not posted again, its answers first answers, not replays)."""
    books = setup(postgres_url)
    committer = GroupCommitter(books.ledger, wait_ms=0, size_max=1, writer_process=True)
    committers.append(committer)
    groups = traffic(seed=7, n=60)
    try:
        for g in groups[:3]:
            committer.enqueue_many([fresh(s) for s in g]).result(timeout=60)
        slow_commits(books)
        purchases = next(g for g in groups[3:] if all(s.body.type == "purchase" for s in g))
        future = committer.enqueue_many([fresh(s) for s in purchases])
        committing(books.engine)
        assert committer.writer_process is not None and committer.writer_process.pid is not None
        os.kill(committer.writer_process.pid, signal.SIGKILL)
        results = future.result(timeout=60)
        accepted = [r for r in results if r.status == 201]
        assert accepted and not any(r.replayed for r in results)
        assert committer.redecided == 0 and committer.written_ahead == 4
        with books.engine.connect() as c:
            ids = {r.body["id"] for r in accepted}
            assert c.execute(
                text("SELECT count(*) FROM payment WHERE id = ANY(:ids)"), {"ids": list(ids)}
            ).scalar() == len(ids)
        assert_checks(books)
    finally:
        books.close()


def test_a_hung_child_is_killed_and_its_write_settled(postgres_url, monkeypatch, committers) -> None:
    """A child that stops answering (SIGSTOP) is killed after `WRITE_TIMEOUT_S`; the group is found
    not written and posted under the lock; closing never waits past `CLOSE_WAIT_S`."""
    from engine.store import group_commit, write_process

    monkeypatch.setattr(group_commit, "LOCKED_AFTER_REFUSAL_S", 0.0)
    monkeypatch.setattr(write_process, "CLOSE_WAIT_S", 0.5)
    books = setup(postgres_url)
    committer = GroupCommitter(books.ledger, wait_ms=0, size_max=1, writer_process=True)
    committers.append(committer)
    groups = traffic(seed=9, n=40)
    try:
        first = committer.enqueue_many([fresh(s) for s in groups[0]]).result(timeout=60)
        assert committer.writer_process is not None and committer.writer_process.pid is not None
        os.kill(committer.writer_process.pid, signal.SIGSTOP)
        monkeypatch.setattr(write_process, "WRITE_TIMEOUT_S", 1.0)  # the child started long ago
        started = time.monotonic()
        second = committer.enqueue_many([fresh(s) for s in groups[1]]).result(timeout=60)
        assert 1.0 <= time.monotonic() - started < 30
        assert committer.redecided == 1 and not any(r.replayed for r in first + second)
        assert_checks(books)
        # The next group has a new child (given time to start); stopped while a write waits on
        # it, `close` kills it within its wait and the write comes back lost.
        monkeypatch.setattr(write_process, "WRITE_TIMEOUT_S", 60.0)
        third = committer.enqueue_many([fresh(s) for s in groups[2]]).result(timeout=60)
        assert committer.writer_process.started == 2 and committer.redecided == 1
        assert not any(r.replayed for r in third)
        assert committer.writer_process.pid is not None
        os.kill(committer.writer_process.pid, signal.SIGSTOP)
        outcome: list[BaseException] = []
        head = (0, "", 0, "", 0, 0)

        def write() -> None:
            try:
                committer.writer_process.write(head, head, [])
            except WriteFailed as lost:
                outcome.append(lost)

        pending = threading.Thread(target=write)
        pending.start()
        time.sleep(0.2)
        started = time.monotonic()
        committer.close()
        assert time.monotonic() - started < 5
        pending.join(timeout=5)
        assert not pending.is_alive() and isinstance(outcome[0], WriterLost)
        with pytest.raises(WriterLost):
            committer.writer_process.write(head, head, [])
        assert committer.writer_process.pid is None
    finally:
        books.close()


def test_a_write_the_database_refuses_names_the_error_and_writes_nothing(postgres_url) -> None:
    books = setup(postgres_url)
    writer = WriterProcess(postgres_url)
    try:
        with books.engine.connect() as c:
            head = tuple(
                c.execute(
                    text(
                        "SELECT last_posting_sequence, last_hash, last_payment_sequence, last_payment_hash, "
                        "catalog_version, lock_version, stamp_floor_us, order_floor_us FROM ledger_head"
                    )
                ).one()
            )
        end = (head[0], head[1], head[2], head[3], head[4], head[5] + 1, head[6], head[7])
        secret = "T1-secret-value"
        refused = [
            ("INSERT INTO terminal (id, merchant_id, created_at_us) VALUES (%s, %s, 0)", [secret, "NO_SUCH_MERCHANT"])
        ]
        with pytest.raises(WriteFailed) as failure:
            writer.write(head, end, refused)
        assert str(failure.value) == "ForeignKeyViolation"  # the class only: no values quoted
        # The head moved by nobody: a write against another head is refused, nothing sent.
        assert writer.write((head[0] + 1, *head[1:]), end, refused) is False
        # An empty group against the right head moves the lock version, in the same child.
        assert writer.write(head, end, []) is True
        assert writer.started == 1
        with books.engine.connect() as c:
            assert c.execute(text("SELECT lock_version FROM ledger_head")).scalar_one() == head[5] + 1
            assert c.execute(text("SELECT count(*) FROM terminal WHERE id = :i"), {"i": secret}).scalar_one() == 0
    finally:
        writer.close()
        books.close()
