"""Migration `20261209_payment_keys`: an accepted payment's answer remembered on its own row.

A ledger with answers remembered both ways (a payment of before, its answer in `idempotency_key`;
a payment since, its key on its row; a decline) answers every key the same after the upgrade;
downgraded, every answer of a payment accepted since is back in `idempotency_key`, where the
revision before looks for it, and the payment rows are as they were; upgraded again, the same.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from engine.store import bulk, db
from engine.store.models import PaymentRow
from engine.timeutil import TOKYO
from tests.lifecycle.support import Books, campaign

T0 = dt.datetime(2026, 12, 1, 10, tzinfo=TOKYO)

REMEMBERED = "SELECT terminal_id, key, response_status, payment_id FROM idempotency_key ORDER BY key"
VALIDITY = (  # the keys index on PostgreSQL: valid, unique, partial
    "SELECT i.indisvalid, i.indisunique, i.indpred IS NOT NULL FROM pg_index i"
    " JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'uq_payment_terminal_key'"
)


def test_answers_survive_the_upgrade_and_go_back_on_the_downgrade(database_url) -> None:
    books = Books(database_url, start=T0)
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    try:
        accepted = books.purchase("T1", "W1", 1000, T0 - dt.timedelta(minutes=1), key="k-new")
        declined = books.purchase("T1", "W2", 1000, T0, points_used=5, key="k-declined")
        assert accepted.status == 201 and declined.body["code"] == "insufficient_points"
        with books.engine.connect() as c:
            on_row = c.execute(text("SELECT id, terminal_id, idempotency_key FROM payment")).one()
            assert tuple(on_row) == (accepted.body["id"], "T1", "k-new")
            assert [tuple(r) for r in c.execute(text(REMEMBERED))] == [("T1", "k-declined", 422, None)]
            payments = [tuple(r) for r in c.execute(text("SELECT id, sequence, hash, response_json FROM payment"))]
        books.engine.dispose()

        db.downgrade(database_url, "20261208_lock_version")
        with books.engine.connect() as c:
            assert [tuple(r) for r in c.execute(text(REMEMBERED))] == [
                ("T1", "k-declined", 422, None),
                ("T1", "k-new", 201, accepted.body["id"]),
            ]
            assert [tuple(r) for r in c.execute(text("SELECT id, sequence, hash, response_json FROM payment"))] == (
                payments
            )
        books.engine.dispose()

        # Upgraded again: the payment's answer is remembered in its old row, and replays from there.
        db.upgrade(database_url)
        retry = books.purchase("T1", "W1", 1000, T0 - dt.timedelta(minutes=1), key="k-new")
        assert retry.replayed and retry.body == accepted.body
        assert books.purchase("T1", "W1", 999, T0, key="k-new").body["code"] == "idempotency_key_reused"
        books.check()
    finally:
        books.close()


def test_a_remembered_answer_is_found_by_the_payments_key_index(database_url) -> None:
    """The keyed read the ledger makes of `payment` by (terminal, key) is served by
    `uq_payment_terminal_key` on both databases, one index search per key (on SQLite,
    `(key) IN (VALUES …)` of two keys or more read the whole table instead)."""
    books = Books(database_url, start=T0)
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    try:
        answers = [books.purchase("T1", f"W{n}", 1000 + n, T0, key=f"k{n}") for n in range(30)]
        assert all(a.status == 201 for a in answers)
        with Session(books.engine) as session:
            reads = bulk.ReadBatch(session)
            read = reads.where_tuples(
                PaymentRow.__table__,
                ["terminal_id", "idempotency_key", "response_json"],
                ["terminal_id", "idempotency_key"],
                [("T1", "k3"), ("T1", "none")],
            )
            if read.pg is not None:
                sql, params = read.pg
                connection = session.connection().connection.driver_connection
                plan = "\n".join(r[0] for r in connection.execute("EXPLAIN " + sql, params).fetchall())
                assert "Index Scan using uq_payment_terminal_key on payment" in plan, plan
            else:
                sql, values = read.sqlite[0]
                explained = session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, values)
                plan = "\n".join(str(r) for r in explained)
                assert "SEARCH t USING INDEX uq_payment_terminal_key" in plan, plan
            reads.run()
            assert [row[:2] for row in read.rows] == [("T1", "k3")]
        # The ledger's own look-up finds the answer there.
        with books.engine.connect() as c:
            request_hash = c.execute(text("SELECT request_hash FROM payment WHERE idempotency_key = 'k3'")).scalar_one()
        again = books.ledger.remembered_answer("T1", "k3", request_hash)
        assert again is not None and again.replayed and again.body == answers[3].body
        assert books.ledger.remembered_answer("T1", "k3", "0" * 64) is None  # another request under the key
    finally:
        books.close()


def test_the_keys_index_is_built_concurrently_on_postgresql(postgres_url) -> None:
    """On PostgreSQL the index reads the whole of `payment` CONCURRENTLY, outside the migration's
    transaction (PostgreSQL refuses CONCURRENTLY inside one), so terminals keep posting while a
    large ledger is read; the index comes out valid, unique and partial."""
    db.upgrade(postgres_url, "20261208_lock_version")
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append(" ".join(statement.split()))

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        db.upgrade(postgres_url, "20261209_payment_keys")
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert [s for s in statements if "uq_payment_terminal_key" in s] == [
        "DROP INDEX CONCURRENTLY IF EXISTS uq_payment_terminal_key",  # one an interrupted build left
        "CREATE UNIQUE INDEX CONCURRENTLY uq_payment_terminal_key ON payment (terminal_id, idempotency_key)"
        " WHERE idempotency_key IS NOT NULL",
    ]
    engine = db.make_engine(postgres_url)
    try:
        with engine.connect() as c:
            valid, unique, partial = c.execute(text(VALIDITY)).one()
        assert (valid, unique, partial) == (True, True, True)
    finally:
        engine.dispose()


def test_an_interrupted_index_build_is_taken_up_by_the_next_upgrade(postgres_url) -> None:
    """CONCURRENTLY commits the columns before the index is built: a build that fails (here two
    payments under one key; in a deploy a cancel, a timeout, a lost connection) leaves them
    committed, the revision unstamped and the index invalid. The next upgrade goes on from there."""
    books = Books(postgres_url, start=T0)
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    try:
        first = books.purchase("T1", "W1", 1000, T0, key="k1")
        second = books.purchase("T1", "W2", 1000, T0, key="k2")
        assert first.status == second.status == 201
        books.engine.dispose()
        db.downgrade(postgres_url, "20261208_lock_version")
        with books.engine.connect() as c:  # the first upgrade's columns, committed; a key twice
            c.execute(
                text("ALTER TABLE payment ADD COLUMN idempotency_key VARCHAR(255), ADD COLUMN request_hash VARCHAR(64)")
            )
            c.execute(text("UPDATE payment SET idempotency_key = 'twice'"))
            c.commit()
        books.engine.dispose()
        with pytest.raises(Exception, match="uq_payment_terminal_key"):
            db.upgrade(postgres_url)
        with books.engine.connect() as c:
            assert c.execute(text(VALIDITY)).one() == (False, True, True)  # left behind, invalid
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "20261208_lock_version"
            c.execute(text("UPDATE payment SET idempotency_key = NULL WHERE id = :id"), {"id": second.body["id"]})
            c.commit()
        books.engine.dispose()

        db.upgrade(postgres_url, "20261209_payment_keys")  # this revision's take-up, whatever comes after it
        with books.engine.connect() as c:
            assert c.execute(text(VALIDITY)).one() == (True, True, True)
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == "20261209_payment_keys"
        books.engine.dispose()
    finally:
        books.close()
