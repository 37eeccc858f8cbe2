"""An award names a payment and a campaign that exist, on both databases (migration
`20261207_award_references`): checked per statement on PostgreSQL (the binary COPY of a group's
awards included), per row on SQLite; a payment or campaign an award names is not deleted, its id
not changed, and an award's payment or campaign not changed to one that does not exist. A
refused statement writes none of its rows."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.store import bulk, db
from engine.store.models import AwardRow

AWARD_COLUMNS = [
    "payment_id", "campaign_id", "campaign_version", "wallet_id", "points", "pending", "clawed_back", "window_key",
    "credit_at_us",
]  # fmt: skip
# The refusal: SQLAlchemy's IntegrityError, or psycopg's where bulk writes on the raw connection,
# with the triggers' own message (not some other constraint's).
REFUSED = (IntegrityError, psycopg.IntegrityError)
BY_THE_TRIGGERS = r"an award names|awards name rows"
PAYMENTS = 150  # more than bulk.COPY_ROWS_MIN: the awards go by COPY on PostgreSQL


def award(payment: str, campaign: str = "C1") -> tuple:
    return (payment, campaign, 1, "W1", 10, 0, 0, 0, 0)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    db.upgrade(database_url)
    made = db.make_engine(database_url)
    with made.begin() as c:
        c.execute(text("INSERT INTO campaign (id, current_version, issued_net, created_at_us) VALUES ('C1', 1, 0, 0)"))
        c.execute(text("INSERT INTO campaign (id, current_version, issued_net, created_at_us) VALUES ('C2', 1, 0, 0)"))
        for i in range(PAYMENTS):
            c.execute(
                text(
                    "INSERT INTO payment (id, sequence, type, terminal_id, merchant_id, wallet_id, occurred_at_us, "
                    "accepted_at_us, amount, points_used, refunded_amount, request_json, response_json, hash) "
                    "VALUES (:id, :s, 'purchase', 'T1', 'M1', 'W1', 0, 0, 100, 0, 0, '{}', '{}', 'h')"
                ),
                {"id": f"p{i}", "s": i + 1},
            )
    yield made
    made.dispose()


def write_awards(engine: Engine, rows: list[tuple]) -> None:
    with Session(engine) as session, session.begin():
        batch = bulk.WriteBatch(session)
        batch.insert_tuples(AwardRow.__table__, AWARD_COLUMNS, rows)
        batch.send()


def awards(engine: Engine) -> int:
    with engine.connect() as c:
        return c.execute(text("SELECT count(*) FROM award")).scalar_one()


@pytest.mark.parametrize("size", [1, PAYMENTS])  # one row (in the pipeline) and a COPY
@pytest.mark.parametrize("bad", [award("nowhere"), award("p0", "C9")], ids=["payment", "campaign"])
def test_an_award_naming_nothing_refuses_its_whole_statement(engine: Engine, size: int, bad: tuple) -> None:
    rows = [award(f"p{i}") for i in range(size - 1)] + [bad]
    with pytest.raises(REFUSED, match=BY_THE_TRIGGERS):
        write_awards(engine, rows)
    assert awards(engine) == 0
    write_awards(engine, [award(f"p{i}") for i in range(size)])  # the same rows, all named: written
    assert awards(engine) == size


def test_what_an_award_names_stays(engine: Engine) -> None:
    write_awards(engine, [award("p1"), award("p2", "C2")])
    refused = [
        "DELETE FROM payment WHERE id = 'p1'",
        "DELETE FROM campaign WHERE id = 'C2'",
        "UPDATE payment SET id = 'p1x' WHERE id = 'p1'",
        "UPDATE campaign SET id = 'C2x' WHERE id = 'C2'",
        "UPDATE award SET payment_id = 'nowhere' WHERE payment_id = 'p1'",
        "UPDATE award SET campaign_id = 'C9' WHERE payment_id = 'p2'",
    ]
    if engine.dialect.name == "postgresql":
        refused += ["TRUNCATE payment", "TRUNCATE campaign CASCADE"]
    else:  # a REPLACE that removes the named payment by another unique key (its sequence)
        refused += [
            "INSERT OR REPLACE INTO payment (id, sequence, type, terminal_id, merchant_id, wallet_id, "
            "occurred_at_us, accepted_at_us, amount, points_used, refunded_amount, request_json, response_json, "
            "hash) VALUES ('pz', 2, 'purchase', 'T1', 'M1', 'W1', 0, 0, 100, 0, 0, '{}', '{}', 'h')"
        ]
    for sql in refused:
        # A trigger's refusal: IntegrityError (foreign_key_violation; SQLite's RAISE(ABORT));
        # TRUNCATE campaign without CASCADE would already be refused by campaign_version's key.
        with pytest.raises(REFUSED, match=BY_THE_TRIGGERS), engine.begin() as c:
            c.execute(text(sql))
    with engine.begin() as c:
        # What no award names goes; an award's payment may change to another that exists.
        assert c.execute(text("DELETE FROM payment WHERE id = 'p3'")).rowcount == 1
        assert c.execute(text("UPDATE payment SET id = 'p5x' WHERE id = 'p5'")).rowcount == 1
        assert c.execute(text("SELECT count(*) FROM payment WHERE id = 'p5x'")).scalar_one() == 1
        assert c.execute(text("UPDATE award SET payment_id = 'p4' WHERE payment_id = 'p1'")).rowcount == 1
        assert c.execute(text("DELETE FROM payment WHERE id = 'p1'")).rowcount == 1
    assert awards(engine) == 2


def test_a_temporary_table_does_not_stand_in_for_the_ledger_s(engine: Engine) -> None:
    """The checks read the migrated schema's tables, never a session's temporary table of the same name."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's triggers name their own schema's tables")
    write_awards(engine, [award("p1")])
    with pytest.raises(REFUSED, match=BY_THE_TRIGGERS), engine.begin() as c:
        c.execute(text("CREATE TEMPORARY TABLE payment (id text)"))
        c.execute(text("INSERT INTO payment VALUES ('ghost')"))
        c.execute(text("INSERT INTO award VALUES ('ghost', 'C1', 1, 'W1', 10, 0, 0, NULL, 0, 0)"))
    with pytest.raises(REFUSED, match=BY_THE_TRIGGERS), engine.begin() as c:
        c.execute(text("CREATE TEMPORARY TABLE award (payment_id text, campaign_id text)"))
        c.execute(text("DELETE FROM public.payment WHERE id = 'p1'"))
    assert awards(engine) == 1
