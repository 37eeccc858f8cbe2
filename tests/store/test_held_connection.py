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
