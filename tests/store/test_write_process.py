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

import pytest
from sqlalchemy import text

from engine.store.group_commit import GroupCommitter
from engine.store.write_process import WriteFailed, WriterProcess
from tests.store.test_group_commit_ahead import Slowed, answer, both_ways, post
from tests.store.test_pipeline import assert_checks, setup, traffic


def test_groups_written_by_the_child_get_the_answers_of_groups_decided_under_the_lock(two) -> None:
    groups = traffic(seed=7, n=300)
    committer, _, _ = both_ways(two, groups, writer_process=True)
    assert committer.writer_process is not None and committer.writer_process.started == 1
    assert committer.redecided == 0
    assert committer.written_ahead >= len(groups) * 9 // 10
    assert_checks(two[0])
    committer.writer_process.close()


def test_a_unit_of_work_between_decision_and_write_is_seen_by_the_child(two) -> None:
    committer, _, _ = both_ways(two, traffic(seed=9, n=120), intruder_at=3, writer_process=True)
    assert committer.redecided == 2
    assert committer.written_ahead == 2
    assert_checks(two[0])
    assert committer.writer_process is not None
    committer.writer_process.close()


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


def test_a_child_killed_between_groups_and_while_it_writes_loses_and_doubles_nothing(two, monkeypatch) -> None:
    from engine.store import group_commit

    monkeypatch.setattr(group_commit, "LOCKED_AFTER_REFUSAL_S", 0.0)  # back to the child at once
    groups = traffic(seed=13, n=400)
    committer = Killing(two[0].ledger, wait_ms=0, size_max=1, writer_process=True, between={5, 20})
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
    committer.writer_process.close()


def test_a_write_the_database_refuses_names_the_error_and_writes_nothing(postgres_url) -> None:
    books = setup(postgres_url)
    writer = WriterProcess(postgres_url)
    try:
        with books.engine.connect() as c:
            head = tuple(
                c.execute(
                    text(
                        "SELECT last_posting_sequence, last_hash, last_payment_sequence, last_payment_hash, "
                        "catalog_version, lock_version FROM ledger_head"
                    )
                ).one()
            )
        end = (head[0], head[1], head[2], head[3], head[4], head[5] + 1)
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
