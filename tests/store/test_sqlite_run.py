"""`bulk.sqlite_run`: the SQLite group path's reads and writes on the driver's connection of the
session's transaction. They belong to that transaction (rolled back with it, seen by its ORM
reads), and a failure is the exception SQLAlchemy would have raised for it: an integrity error
stays an `IntegrityError`, an operational one an `OperationalError` (a 503, `db.UNREACHABLE`)."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from engine.store import bulk, db
from engine.store.models import WalletWindowUsageRow

TABLE = WalletWindowUsageRow.__table__
COLUMNS = ["campaign_id", "wallet_id", "window_key", "points"]


@pytest.fixture
def engine(sqlite_url: str):
    db.upgrade(sqlite_url)
    engine = db.make_engine(sqlite_url)
    yield engine
    engine.dispose()


def test_writes_and_reads_belong_to_the_sessions_transaction(engine) -> None:
    with Session(engine) as session, session.begin():
        batch = bulk.WriteBatch(session)
        batch.insert_tuples(TABLE, COLUMNS, [("C1", "W1", 0, 5), ("C1", "W2", 0, 7)])
        batch.upsert_columns(
            TABLE, COLUMNS, [["C1"], ["W1"], [0], [3]], ["wallet_id", "campaign_id", "window_key"], add="points"
        )
        # The ORM sees them in the same transaction, and the keyed read finds them.
        assert dict(session.execute(select(WalletWindowUsageRow.wallet_id, WalletWindowUsageRow.points)).all()) == {
            "W1": 8,
            "W2": 7,
        }
        reads = bulk.ReadBatch(session)
        found = reads.where_tuples(TABLE, COLUMNS, ["wallet_id", "campaign_id", "window_key"], [("W2", "C1", 0)])
        reads.run()
        assert found.rows == [("C1", "W2", 0, 7)]
        session.rollback()
    with Session(engine) as session:
        assert session.execute(select(WalletWindowUsageRow)).all() == []  # rolled back with it


def test_failures_are_raised_as_sqlalchemy_raises_them(engine) -> None:
    with Session(engine) as session, session.begin():
        batch = bulk.WriteBatch(session)
        batch.insert_tuples(TABLE, COLUMNS, [("C1", "W1", 0, 5)])
        with pytest.raises(IntegrityError) as duplicate:
            batch.insert_tuples(TABLE, COLUMNS, [("C1", "W1", 0, 6)])
        assert "UNIQUE" in str(duplicate.value.orig)
        with pytest.raises(OperationalError) as broken:
            bulk.sqlite_run(session, "SELECT nothing FROM no_such_table")
        assert isinstance(broken.value, db.UNREACHABLE)
