"""`bulk.ReadBatch.where_each` on both databases: every row of each value that the `among`
columns allow, and nothing else; the ledger reads a group's cap usage with it, by wallet."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from engine.store import bulk, db
from engine.store.models import WalletWindowUsageRow

TABLE = WalletWindowUsageRow.__table__
COLUMNS = ["campaign_id", "wallet_id", "window_key", "points"]
ROWS = [
    (campaign, wallet, window, 10 * i + j)
    for i, wallet in enumerate(["W1", "W2", "W3"])
    for j, (campaign, window) in enumerate([("C1", 0), ("C1", 5), ("C2", 5), ("C2", 6), ("C3", 5)])
]


@pytest.fixture
def session(database_url: str):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    with Session(engine) as s, s.begin():
        batch = bulk.WriteBatch(s)
        batch.insert_tuples(TABLE, COLUMNS, ROWS)
        batch.send()
    with Session(engine) as s:
        yield s
    engine.dispose()


def read(session: Session, values, among=None) -> set[tuple]:
    reads = bulk.ReadBatch(session)
    found = reads.where_each(TABLE, COLUMNS, "wallet_id", values, among=among)
    reads.run()
    return set(found.rows)


def test_every_row_of_each_value_the_among_columns_allow(session: Session) -> None:
    among = {"campaign_id": ["C1", "C2"], "window_key": [5]}
    assert read(session, ["W1", "W3", "W9"], among) == {
        r for r in ROWS if r[1] in ("W1", "W3") and r[0] in ("C1", "C2") and r[2] == 5
    }
    assert read(session, ["W2"]) == {r for r in ROWS if r[1] == "W2"}  # no `among`: all of its rows
    assert read(session, [], among) == set()
    assert read(session, ["W1"], {"campaign_id": []}) == set()  # nothing allowed: nothing read


def test_many_values_in_one_read(session: Session) -> None:
    # More values than SQLite takes in one statement: chunked there, one array on PostgreSQL.
    values = [f"X{i}" for i in range(bulk.SQLITE_VARIABLES_MAX + 5)] + ["W2"]
    assert read(session, values, {"window_key": [0, 6]}) == {r for r in ROWS if r[1] == "W2" and r[2] in (0, 6)}
