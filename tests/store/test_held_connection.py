"""`db.HeldConnection` (real PostgreSQL): one connection kept for a thread's repeated sessions (the
committer's snapshots, the writer child's writes); a connection broken while held fails one
session and the next connects anew; another thread meanwhile gets the pool's. And the group
committer whose held snapshot connection is killed between groups answers every group."""

from __future__ import annotations

import threading

import psycopg
import pytest
from sqlalchemy import text

from engine.store import db
from engine.store.group_commit import GroupCommitter
from engine.store.ledger import write_rows
from tests.store.test_group_commit_ahead import answer
from tests.store.test_pipeline import assert_checks, fresh, traffic


def _backend(session) -> int:
    return session.execute(text("SELECT pg_backend_pid()")).scalar_one()


def _terminate(url: str, pid: int) -> None:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_sessions_share_one_connection_and_a_broken_one_is_replaced(postgres_url):
    engine = db.make_engine(postgres_url)
    held = db.HeldConnection(engine.execution_options(isolation_level="AUTOCOMMIT"))
    try:
        pids = []
        for _ in range(3):
            with held.session() as session:
                pids.append(_backend(session))
        assert len(set(pids)) == 1 and held.connects == 1

        _terminate(postgres_url, pids[0])
        with pytest.raises(Exception), held.session() as session:  # noqa: B017 - whatever the driver raises
            _backend(session)
        with held.session() as session:
            again = _backend(session)
        assert again != pids[0] and held.connects == 2

        # While one thread holds it, another's session is the pool's: another backend.
        inside = threading.Event()
        leave = threading.Event()
        seen: list[int] = []

        def hold() -> None:
            with held.session() as session:
                seen.append(_backend(session))
                inside.set()
                leave.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        assert inside.wait(10)
        with held.session() as session:
            other = _backend(session)
        leave.set()
        holder.join()
        assert seen == [again] and other != again and held.connects == 2
    finally:
        held.close()
        engine.dispose()


def test_a_writers_transaction_commits_on_the_held_connection(postgres_url):
    engine = db.make_engine(postgres_url)
    held = db.HeldConnection(engine)
    try:
        with held.session() as session, session.begin():
            session.execute(text("CREATE TABLE t (n int)"))
            session.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(ZeroDivisionError), held.session() as session, session.begin():
            session.execute(text("INSERT INTO t VALUES (2)"))
            raise ZeroDivisionError  # rolled back, and the connection dropped
        with held.session() as session:
            assert session.execute(text("SELECT array_agg(n) FROM t")).scalar_one() == [1]
        assert held.connects == 2
    finally:
        held.close()
        engine.dispose()


def test_the_committer_answers_every_group_when_its_snapshot_connection_is_killed(two):
    groups = traffic(seed=5, n=60)
    assert len(groups) >= 6
    answered = []
    for books, kill in zip(two, (True, False)):
        committer = GroupCommitter(books.ledger, wait_ms=0)
        try:
            results = [committer.enqueue_many([fresh(s) for s in g]).result(timeout=60) for g in groups[:3]]
            snapshots = books.ledger.snapshots
            assert snapshots.connects == 1
            if kill:  # between groups: the next snapshot finds it broken, that group goes under the lock
                with snapshots.session() as session:
                    _terminate(books.engine.url.render_as_string(hide_password=False), _backend(session))
            results += [committer.enqueue_many([fresh(s) for s in g]).result(timeout=60) for g in groups[3:]]
            assert snapshots.connects == (2 if kill else 1)
            answered.append([answer(r) for group in results for r in group])
            assert_checks(books)
        finally:
            committer.close()
    assert answered[0] == answered[1]
    assert any(status == 201 for status, _, _ in answered[0])


def _plans(session) -> dict[str, tuple[int, int]]:
    """The prepared statements of `session`'s connection: (generic plans, custom plans) each."""
    rows = session.execute(text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"))
    return {statement: (generic, custom) for statement, generic, custom in rows}


def test_groups_decided_ahead_and_their_writes_are_planned_once(two):
    """A prepared probe over `unnest` of an array is costed generic at 100 rows, so PostgreSQL
    would plan it anew at every group (custom plans); in the snapshots of groups decided ahead and
    in their writes, every prepared statement takes its generic plan (`GENERIC_PLANS_SQL`)."""
    books = two[0]
    ledger = books.ledger
    writes = db.HeldConnection(books.engine)
    try:
        # Groups of purchases only: the same statements again and again, prepared by the driver
        # from their fifth execution (psycopg's `prepare_threshold`).
        plain = [g for g in traffic(seed=5, n=400) if all(s.body.type == "purchase" for s in g)]
        assert len(plain) >= 12
        for group in plain:
            decided = ledger.decide_ahead([fresh(s) for s in group], accepted_at_us=None)
            assert decided is not None
            with writes.session() as session, session.begin():
                assert write_rows(session, decided.base, decided.end, decided.batch.statements)
        with ledger.snapshots.session() as session:
            read = _plans(session)
        with writes.session() as session:
            written = _plans(session)
    finally:
        writes.close()
    probes = {s: plans for s, plans in read.items() if "CROSS JOIN LATERAL" in s}
    assert probes and all(generic > 0 and custom == 0 for generic, custom in probes.values()), probes
    updates = {s: plans for s, plans in written.items() if s.startswith("UPDATE campaign")}
    assert updates and all(generic > 0 and custom == 0 for generic, custom in updates.values()), updates
    heads = [plans for s, plans in written.items() if s.startswith("UPDATE ledger_head")]
    assert heads and heads[0][0] > 0  # the head's move is prepared too, and takes its generic plan
    assert all(custom == 0 for _, custom in written.values()), written
