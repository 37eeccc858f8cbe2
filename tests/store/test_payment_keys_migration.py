"""Migration `20261209_payment_keys`: an accepted payment's answer remembered on its own row.

A ledger with answers remembered both ways (a payment of before, its answer in `idempotency_key`;
a payment since, its key on its row; a decline) answers every key the same after the upgrade;
downgraded, every answer of a payment accepted since is back in `idempotency_key`, where the
revision before looks for it, and the payment rows are as they were; upgraded again, the same.
On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text
from sqlalchemy.orm import Session

from engine.store import bulk, db
from engine.store.ledger import Ledger
from engine.timeutil import TOKYO
from tests.lifecycle.support import Books, campaign

T0 = dt.datetime(2026, 12, 1, 10, tzinfo=TOKYO)

REMEMBERED = "SELECT terminal_id, key, response_status, payment_id FROM idempotency_key ORDER BY key"


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
    """The look-up of keys on `payment` is served by `uq_payment_terminal_key` on both databases
    (SQLite does not infer a partial index's predicate from the key's equality to a row of
    values: without the predicate in the query, it read the whole table for each group)."""
    books = Books(database_url, start=T0)
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    try:
        for n in range(30):
            assert books.purchase("T1", f"W{n}", 1000 + n, T0, key=f"k{n}").status == 201
        with Session(books.engine) as session:
            reads = bulk.ReadBatch(session)
            remembered = Ledger._queue_remembered(reads, {("T1", "k3"), ("T1", "none")})
            if remembered.payments.pg is not None:
                sql, params = remembered.payments.pg
                connection = session.connection().connection.driver_connection
                plan = "\n".join(r[0] for r in connection.execute("EXPLAIN " + sql, params).fetchall())
                assert "Index Scan using uq_payment_terminal_key on payment" in plan, plan
            else:
                sql, values = remembered.payments.sqlite[0]
                explained = session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, values)
                plan = "\n".join(str(r) for r in explained)
                assert "SEARCH t USING INDEX uq_payment_terminal_key" in plan, plan
            reads.run()
            assert [row[:2] for row in remembered.rows] == [("T1", "k3")]
    finally:
        books.close()
