"""The group committer in a child process (engine/store/committer_process.py), on PostgreSQL.

The same traffic through a `CommitterProcess` (its child writing by a thread, or by a writer child
of its own) and through a committer in this process deciding under the lock gets the same answers
and leaves ledgers that check. A child killed (SIGKILL) while groups are in it fails just those
(503 at the API); retried with the same keys, as terminals do, each answer is the one decided
under the lock and every payment is stored once. A child that stops answering is killed after
`ANSWER_TIMEOUT_S`; a database that cannot be reached is answered as such; `close` answers what
the child holds and refuses what comes after. Real PostgreSQL and real child processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from engine.clock import ManualClock, SystemClock
from engine.store import db
from engine.store.committer_process import CommitterProcess, child_pids
from engine.store.group_commit import GroupCommitter
from engine.store.ledger import Ledger, Result
from tests.store.test_group_commit_ahead import answer
from tests.store.test_pipeline import assert_checks, fresh, setup, traffic


@pytest.fixture
def made() -> Iterator[list[CommitterProcess]]:
    """Committer processes a test makes; their children are ended when it ends, passed or failed."""
    processes: list[CommitterProcess] = []
    yield processes
    for process in processes:
        process.close()


def reference_answers(books, groups) -> list[Result]:
    """The groups posted one by one under the lock, in this process, on the system clock."""
    reference = GroupCommitter(Ledger(books.engine, SystemClock()), wait_ms=0, size_max=1, ahead=False)
    futures = [reference.enqueue_many([fresh(s) for s in g]) for g in groups]
    return [r for f in futures for r in f.result(timeout=120)]


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stored_ids(books) -> list[str]:
    with books.engine.connect() as c:
        return list(c.execute(text("SELECT id FROM payment")).scalars())


@pytest.mark.parametrize("writer_process", [False, True], ids=["thread-writer", "writer-child"])
def test_groups_posted_by_the_child_get_the_answers_of_groups_posted_in_process(two, made, writer_process) -> None:
    groups = traffic(seed=7, n=300)
    committer = CommitterProcess(two[0].url, SystemClock(), size_max=1, writer_process=writer_process)
    made.append(committer)
    futures = [committer.enqueue_many([fresh(s) for s in g]) for g in groups]
    got = [r for f in futures for r in f.result(timeout=120)]
    want = reference_answers(two[1], groups)
    assert [answer(r) for r in got] == [answer(r) for r in want]
    assert committer.started == 1
    assert sorted(stored_ids(two[0])) == sorted({r.body["id"] for r in got if r.status == 201})
    assert_checks(two[0])
    # A single post is answered alone, as a Result, the one the committer in process gives.
    one = traffic(seed=8, n=1)[0][0]
    single = committer.enqueue(fresh(one)).result(timeout=60)
    in_process = GroupCommitter(Ledger(two[1].engine, SystemClock()), wait_ms=0, ahead=False)
    assert isinstance(single, Result) and answer(single) == answer(in_process.submit(fresh(one)))


def test_a_child_killed_under_load_fails_only_its_groups_and_their_retries_lose_and_double_nothing(two, made) -> None:
    groups = traffic(seed=13, n=400)
    committer = CommitterProcess(two[0].url, SystemClock(), size_max=1)
    made.append(committer)
    kill_at = {10, 25, 40}  # groups the child is killed under, a moment after they are sent
    killed: list[int] = []
    got: list[Result] = []
    lost = 0
    # Like a terminal: each batch sent until it is answered, the same keys every time.
    for i, g in enumerate(groups):
        attempt = 0
        while True:
            future = committer.enqueue_many([fresh(s) for s in g])
            if i in kill_at and attempt == 0:
                time.sleep(0.003 * (i % 4))
                pid = committer.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            try:
                got.extend(future.result(timeout=60))
                break
            except db.Unreachable:
                lost += 1
                attempt += 1
                time.sleep(0.2)
    assert len(set(killed)) == 3 and committer.started == 4 and lost >= 1
    want = reference_answers(two[1], groups)
    # A retried group that was committed before its child died is answered as replays.
    assert [answer(r)[0::2] for r in got] == [answer(r)[0::2] for r in want]
    accepted = {r.body["id"] for r in got if r.status == 201}
    stored = stored_ids(two[0])
    assert sorted(stored) == sorted(accepted) and len(stored) == len(set(stored))
    assert_checks(two[0])


@contextlib.contextmanager
def writer_child_running(url: str, made) -> Iterator[tuple[Any, list, CommitterProcess, list[Result], list[int]]]:
    """A committer process writing through a writer child, with a first group posted: the books,
    the traffic, the committer, the first group's answers and the child's writer child (one),
    killed at the end should it still run."""
    books = setup(url)
    groups = traffic(seed=9, n=40)
    writers: list[int] = []
    try:
        committer = CommitterProcess(url, SystemClock(), size_max=1, writer_process=True)
        made.append(committer)
        first = committer.enqueue_many([fresh(s) for s in groups[0]]).result(timeout=60)
        assert committer.pid is not None
        writers = child_pids(committer.pid)
        assert len(writers) == 1  # its writer child
        yield books, groups, committer, first, writers
    finally:
        for pid in writers:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        books.close()


def lost_then_posted_anew(committer: CommitterProcess, books, first: list[Result], group) -> None:
    """Nothing of `group`, lost with the first child, was written (the ledger holds `first`'s
    payments only); posted again on a new child, it is posted as new, and the ledger checks."""
    from engine.store import committer_process

    assert len(stored_ids(books)) == sum(1 for r in first if r.status == 201 and not r.replayed)
    time.sleep(committer_process.RESPAWN_MIN_S)
    second = committer.enqueue_many([fresh(s) for s in group]).result(timeout=60)
    assert committer.started == 2 and not any(r.replayed for r in second)
    assert_checks(books)


def test_a_hung_child_is_killed_and_the_next_group_gets_a_new_one(postgres_url, made, monkeypatch) -> None:
    from engine.store import committer_process

    with writer_child_running(postgres_url, made) as (books, groups, committer, first, writers):
        # Both stopped: a stopped writer cannot end by itself when its parent goes, only be killed.
        ready_for_the_next(committer)
        os.kill(writers[0], signal.SIGSTOP)
        os.kill(committer.pid, signal.SIGSTOP)
        answer_timeout_s = committer_process.ANSWER_TIMEOUT_S
        monkeypatch.setattr(committer_process, "ANSWER_TIMEOUT_S", 1.0)
        started = time.monotonic()
        with pytest.raises(db.Unreachable, match="CommitterLost"):
            committer.enqueue_many([fresh(s) for s in groups[1]]).result(timeout=60)
        assert 1.0 <= time.monotonic() - started < 30
        # Killed with the child: the writer child, which could have held the sequencer lock.
        deadline = time.monotonic() + 10
        while running(writers[0]):
            assert time.monotonic() < deadline, "the writer child outlived its committer child"
            time.sleep(0.05)
        # The next group waits for a new child to start (seconds on a slow machine): the usual timeout.
        monkeypatch.setattr(committer_process, "ANSWER_TIMEOUT_S", answer_timeout_s)
        # The stopped child was killed holding the group: nothing of it was written.
        lost_then_posted_anew(committer, books, first, groups[1])


def waiting_for_a_lock(connection) -> int:
    """How many backends of this database wait for a lock now (the activity read anew: a
    transaction keeps what it first read of it)."""
    connection.execute(text("SELECT pg_stat_clear_snapshot()"))
    return connection.execute(
        text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
    ).scalar_one()


def test_a_writer_child_ends_when_its_committer_child_dies_by_itself(postgres_url, made) -> None:
    """A committer child that dies by itself (SIGKILL from outside; not the watchdog's kill, which
    takes the writer with it) while its writer child waits inside a write: the writer ends within
    `PARENT_WATCH_S` with its transaction rolled back, instead of committing alone, once the lock
    it waits for is let go, a group whose request was answered 503."""
    from engine.store import write_process

    with writer_child_running(postgres_url, made) as (books, groups, committer, first, writers):
        ready_for_the_next(committer)
        with books.engine.connect() as holder:
            holder.execute(text("SELECT 1 FROM ledger_head FOR UPDATE"))  # the sequencer lock, held here
            pending = committer.enqueue_many([fresh(s) for s in groups[1]])
            deadline = time.monotonic() + 30
            while not waiting_for_a_lock(holder):
                assert time.monotonic() < deadline, "the writer child never waited for the lock"
                time.sleep(0.02)
            os.kill(committer.pid, signal.SIGKILL)
            with pytest.raises(db.Unreachable, match="CommitterLost"):
                pending.result(timeout=60)
            deadline = time.monotonic() + write_process.PARENT_WATCH_S + 5
            while running(writers[0]):
                assert time.monotonic() < deadline, "the writer child outlived its committer child"
                time.sleep(0.02)
            holder.rollback()  # the lock let go: nothing may be left waiting to commit
        time.sleep(0.5)
        lost_then_posted_anew(committer, books, first, groups[1])


def test_a_database_that_cannot_be_reached_is_answered_unreachable(made) -> None:
    committer = CommitterProcess("postgresql+psycopg://postgres@127.0.0.1:1/none", SystemClock())
    made.append(committer)
    one = traffic(seed=8, n=1)[0][0]
    with pytest.raises(db.Unreachable, match="OperationalError"):
        committer.enqueue(fresh(one)).result(timeout=60)


def ready_for_the_next(committer: CommitterProcess) -> None:
    """Wait until the child has said it can take the next group: its READY for the last group may
    come after that group's answer (the child's answering thread can send first)."""
    deadline = time.monotonic() + 30
    while not committer._ready:
        assert time.monotonic() < deadline, "the child never said it can take the next group"
        time.sleep(0.005)


def held_by_the_child(committer: CommitterProcess) -> None:
    """Wait until the committer has sent a group its child has not answered."""
    deadline = time.monotonic() + 30
    while not committer._pending:
        assert time.monotonic() < deadline, "no group was sent to the child"
        time.sleep(0.005)


def slow_commits(books) -> None:
    """From now on each COMMIT that moved the head takes a second (a slow disk, a sync standby)."""
    with books.engine.begin() as c:
        c.execute(
            text(
                "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$"
            )
        )
        c.execute(
            text(
                "CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON ledger_head "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
            )
        )


def committing(engine) -> None:
    """Wait until a session of the database sleeps in a slowed COMMIT."""
    deadline = time.monotonic() + 30
    with engine.connect() as c:
        while not c.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND datname = current_database()")
        ).scalar_one():
            assert time.monotonic() < deadline, "no write reached its COMMIT"
            time.sleep(0.005)
            c.rollback()


def test_a_group_lost_with_its_child_before_it_was_posted_is_posted_by_its_retry(postgres_url, made) -> None:
    books = setup(postgres_url)
    groups = traffic(seed=9, n=60)
    try:
        committer = CommitterProcess(postgres_url, SystemClock(), size_max=1)
        made.append(committer)
        first = committer.enqueue_many([fresh(s) for s in groups[0]]).result(timeout=60)
        pid = committer.pid
        assert pid is not None
        ready_for_the_next(committer)
        os.kill(pid, signal.SIGSTOP)  # the group waits in the pipe, unread
        future = committer.enqueue_many([fresh(s) for s in groups[1]])
        held_by_the_child(committer)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(db.Unreachable, match="CommitterLost"):
            future.result(timeout=60)
        accepted = {r.body["id"] for r in first if r.status == 201}
        assert set(stored_ids(books)) == accepted
        time.sleep(1.0)  # RESPAWN_MIN_S: the next group starts a new child
        retried = committer.enqueue_many([fresh(s) for s in groups[1]]).result(timeout=60)
        assert committer.started == 2 and not any(r.replayed for r in retried)
        assert set(stored_ids(books)) == accepted | {r.body["id"] for r in retried if r.status == 201}
        assert_checks(books)
    finally:
        books.close()


def test_a_group_committed_as_its_child_died_is_answered_to_its_retry_as_replays(postgres_url, made) -> None:
    """Killed in the group's COMMIT: its database session still commits. The group fails (503, as
    the child answered nothing); its retry, the same keys, replays the committed answers."""
    books = setup(postgres_url)
    groups = traffic(seed=7, n=60)
    try:
        committer = CommitterProcess(postgres_url, SystemClock(), size_max=1)
        made.append(committer)
        for g in groups[:3]:
            committer.enqueue_many([fresh(s) for s in g]).result(timeout=60)
        before = set(stored_ids(books))
        slow_commits(books)
        purchases = next(g for g in groups[3:] if all(s.body.type == "purchase" for s in g))
        future = committer.enqueue_many([fresh(s) for s in purchases])
        committing(books.engine)
        assert committer.pid is not None
        os.kill(committer.pid, signal.SIGKILL)
        with pytest.raises(db.Unreachable, match="CommitterLost"):
            future.result(timeout=60)
        time.sleep(1.0)  # RESPAWN_MIN_S
        retried = committer.enqueue_many([fresh(s) for s in purchases]).result(timeout=60)
        assert all(r.replayed for r in retried) and any(r.status == 201 for r in retried)
        accepted = {r.body["id"] for r in retried if r.status == 201}
        stored = stored_ids(books)
        assert set(stored) == before | accepted and len(stored) == len(set(stored))
        assert_checks(books)
    finally:
        books.close()


def test_close_answers_what_the_child_holds_and_refuses_what_comes_after(postgres_url, made, monkeypatch) -> None:
    from engine.store import committer_process

    books = setup(postgres_url)
    groups = traffic(seed=11, n=60)
    try:
        committer = CommitterProcess(postgres_url, SystemClock(), size_max=1)
        made.append(committer)
        first = committer.enqueue_many([fresh(s) for s in groups[0]]).result(timeout=60)
        # A child that answers: closing waits for the group it holds. Its commit takes a second, so
        # that it is still held when looked for (a group of one is answered in a few milliseconds).
        slow_commits(books)
        purchases = next(g for g in groups[4:] if all(s.body.type == "purchase" for s in g))
        held = committer.enqueue_many([fresh(s) for s in purchases])
        held_by_the_child(committer)
        pid = committer.pid
        assert pid is not None
        committer.close()
        answered = first + held.result(timeout=1)
        with pytest.raises(db.Unreachable, match="CommitterClosed"):
            committer.enqueue_many([fresh(s) for s in groups[2]]).result(timeout=10)
        assert committer.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert set(stored_ids(books)) == {r.body["id"] for r in answered if r.status == 201}
        assert_checks(books)
        # A child that stopped answering: closing gives up after its waits and kills it.
        monkeypatch.setattr(committer_process, "CLOSE_WAIT_S", 0.5)
        stuck = CommitterProcess(postgres_url, SystemClock(), size_max=1)
        made.append(stuck)
        stuck.enqueue_many([fresh(s) for s in groups[2]]).result(timeout=60)
        assert stuck.pid is not None
        ready_for_the_next(stuck)
        os.kill(stuck.pid, signal.SIGSTOP)
        lost = stuck.enqueue_many([fresh(s) for s in groups[3]])
        held_by_the_child(stuck)
        started = time.monotonic()
        stuck.close()
        assert time.monotonic() - started < 5
        with pytest.raises(db.Unreachable):
            lost.result(timeout=1)
        assert stuck.pid is None
    finally:
        books.close()


def test_a_manual_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="SystemClock"):
        CommitterProcess("postgresql+psycopg://postgres@127.0.0.1:5432/none", ManualClock(0))
