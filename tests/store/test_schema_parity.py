"""The models (engine/store/models.py) and the migrations (migrations/) describe one schema.

A fresh database upgraded to the head revision is compared with the models' MetaData:
- by Alembic's autogenerate (`compare_metadata`), with column types and server defaults
  compared: tables, columns, nullability, types, defaults, indexes, unique constraints
  and foreign keys;
- for what autogenerate does not look at (primary keys and CHECK constraints) and as a
  second opinion on columns, by reflecting the migrated tables next to the same tables
  made by `create_all` from the models in the same kind of database, so both sides pass
  through the server's own normalisation.

On SQLite and on PostgreSQL. The last tests break the migrated schema on purpose and
check that each comparison reports it, so a pass is not a comparison that sees nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations
from alembic.script import ScriptDirectory
from sqlalchemy import BigInteger, Column, Integer, String, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from engine.ledger_rules import GENESIS_HASH
from engine.store import db
from engine.store.models import Base

MODELS_SCHEMA = "models_only"
COMPARE_OPTIONS = {"compare_type": True, "compare_server_default": True}


@dataclass
class Migrated:
    engine: Engine
    models: Engine  # where the models' tables were made by create_all
    models_schema: str | None


@pytest.fixture
def migrated(database_url: str, tmp_path) -> Iterator[Migrated]:
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    if db.is_sqlite(engine):
        models = db.make_engine(f"sqlite+pysqlite:///{tmp_path}/models_only.db")
        Base.metadata.create_all(models)
        yield Migrated(engine, models, None)
        models.dispose()
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {MODELS_SCHEMA}")
            Base.metadata.create_all(connection.execution_options(schema_translate_map={None: MODELS_SCHEMA}))
        yield Migrated(engine, engine, MODELS_SCHEMA)
    engine.dispose()


def autogenerate_differences(engine: Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts=COMPARE_OPTIONS)
        return compare_metadata(context, Base.metadata)


def _clean(sql: str | None, schema: str | None) -> str | None:
    if sql is None:
        return None
    if schema:
        sql = sql.replace(f"{schema}.", "")
    return re.sub(r"\s+", " ", sql).strip()


def _reflect(engine: Engine, schema: str | None) -> dict[str, dict]:
    """What the database says about each of the models' tables, in comparable form."""
    found = inspect(engine)
    tables = {}
    for name in sorted(Base.metadata.tables):
        pk = found.get_pk_constraint(name, schema=schema)
        tables[name] = {
            # By name: a column added by a later migration comes last, which is no difference.
            "columns": sorted(
                (c["name"], str(c["type"]), c["nullable"], _clean(c.get("default"), schema))
                for c in found.get_columns(name, schema=schema)
            ),
            "primary_key": (pk["name"], pk["constrained_columns"]),
            "checks": sorted(
                (c["name"], _clean(c["sqltext"], schema)) for c in found.get_check_constraints(name, schema=schema)
            ),
        }
    return tables


def reflected_differences(migrated: Migrated) -> dict[str, tuple[dict, dict]]:
    """Tables whose reflected columns, primary key or CHECKs differ: {table: (migrated, models)}."""
    ours = _reflect(migrated.engine, None)
    theirs = _reflect(migrated.models, migrated.models_schema)
    return {name: (ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]}


def _alter(engine: Engine):
    """Alembic operations on the migrated database (batch mode, so SQLite can alter too)."""

    class _Ops:
        def __enter__(self) -> Operations:
            self.connection: Connection = engine.connect()
            self.transaction = self.connection.begin()
            return Operations(MigrationContext.configure(self.connection, opts={"render_as_batch": True}))

        def __exit__(self, *exc) -> None:
            if exc[0] is None:
                self.transaction.commit()
            self.connection.close()

    return _Ops()


# -- the parity itself ---------------------------------------------------------------------


def test_autogenerate_finds_nothing_between_the_migrations_and_the_models(migrated: Migrated) -> None:
    heads = ScriptDirectory.from_config(db.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1
    with migrated.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == heads[0]
    assert autogenerate_differences(migrated.engine) == []


def test_columns_primary_keys_and_checks_match_the_models(migrated: Migrated) -> None:
    reflected = _reflect(migrated.engine, None)
    assert set(reflected) == set(Base.metadata.tables)
    assert sum(len(table["checks"]) for table in reflected.values()) >= 20  # the CHECKs are really reflected
    assert reflected_differences(migrated) == {}


# -- the comparisons can fail --------------------------------------------------------------


def test_a_dropped_column_an_extra_column_and_a_dropped_index_are_reported(migrated: Migrated) -> None:
    with _alter(migrated.engine) as op:
        with op.batch_alter_table("idempotency_key") as batch:
            batch.drop_column("payment_id")
        with op.batch_alter_table("closeout") as batch:
            batch.add_column(Column("note", String(10), nullable=True))
        op.drop_index("ix_posting_posted_at_us", table_name="posting")
    found = {(d[0], d[2] if d[0] in ("add_column", "remove_column") else None) for d in _flatten(migrated)}
    assert ("add_column", "idempotency_key") in found  # the models have it, the database lost it
    assert ("remove_column", "closeout") in found  # the database has a column the models do not
    assert any(kind == "remove_index" or kind == "add_index" for kind, _ in found)
    assert set(reflected_differences(migrated)) >= {"idempotency_key", "closeout"}


def test_a_changed_type_nullability_and_server_default_are_reported(migrated: Migrated) -> None:
    with _alter(migrated.engine) as op, op.batch_alter_table("closeout") as batch:
        batch.alter_column("count", existing_type=BigInteger(), type_=Integer(), existing_nullable=False)
        batch.alter_column("total", existing_type=BigInteger(), nullable=True)
        batch.alter_column("submitted_at_us", existing_type=BigInteger(), existing_nullable=False, server_default="0")
    kinds = {(d[0], d[3]) for d in _flatten(migrated)}
    assert ("modify_type", "count") in kinds
    assert ("modify_nullable", "total") in kinds
    assert ("modify_default", "submitted_at_us") in kinds
    assert "closeout" in reflected_differences(migrated)


def test_a_changed_check_and_primary_key_are_reported(migrated: Migrated) -> None:
    # Neither is compared by autogenerate; the reflected comparison must see both.
    with _alter(migrated.engine) as op:
        with op.batch_alter_table("wallet_debt") as batch:
            batch.drop_constraint("ck_wallet_debt_points_nonnegative", type_="check")
            batch.create_check_constraint("ck_wallet_debt_points_nonnegative", "points > -1")
        with op.batch_alter_table("chain_head") as batch:
            batch.drop_constraint("pk_chain_head", type_="primary")
            batch.create_primary_key("pk_chain_head", ["business_date", "last_sequence"])
    assert set(reflected_differences(migrated)) == {"wallet_debt", "chain_head"}


PAYMENT_COLUMNS = (
    "id, sequence, type, terminal_id, merchant_id, wallet_id, occurred_at_us, accepted_at_us, amount, "
    "points_used, original_id, refunded_amount, request_json, response_json"
)
PAYMENT_VALUES = ":id, :sequence, :type, 'T1', 'M1', 'W1', 0, 0, 100, 0, :original, 0, '{}', '{}'"
ROWS = text(
    "SELECT p.id, p.original_id, p.hash, a.points FROM payment p LEFT JOIN award a ON a.payment_id = p.id ORDER BY p.id"
)


def _insert_payment(connection: Connection, id_: str, sequence: int, original: str | None, hash_: str | None) -> None:
    """A payment row written by hand; without `hash_`, the column is left to its default."""
    columns, values = (
        (PAYMENT_COLUMNS, PAYMENT_VALUES)
        if hash_ is None
        else (
            PAYMENT_COLUMNS + ", hash",
            PAYMENT_VALUES + ", :hash",
        )
    )
    kind = "refund" if original else "purchase"
    connection.execute(
        text(f"INSERT INTO payment ({columns}) VALUES ({values})"),
        {"id": id_, "sequence": sequence, "type": kind, "original": original, "hash": hash_},
    )


def test_the_parity_revision_keeps_rows_and_refuses_a_payment_without_its_hash(database_url: str) -> None:
    """20261202_schema_parity drops two backfill defaults; on SQLite that rebuilds `payment`,
    which awards and refunds refer to: the rows and their references survive, down and up."""
    db.upgrade(database_url, "20261201_key_lifecycle")
    engine = db.make_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO campaign (id, current_version, issued_net, created_at_us) VALUES ('C1', 1, 10, 0)")
        )
        # Written without a hash, as payments accepted before the payment chain were: the default fills ''.
        _insert_payment(connection, "p1", 1, None, None)
        _insert_payment(connection, "p2", 2, "p1", "h2")
        connection.execute(
            text(
                "INSERT INTO award (payment_id, campaign_id, campaign_version, wallet_id, points, pending, "
                "clawed_back, window_key, credit_at_us) VALUES ('p1', 'C1', 1, 'W1', 10, 10, 0, 0, 0)"
            )
        )

    def rows() -> list:
        with engine.connect() as connection:
            found = connection.execute(ROWS).all()
        engine.dispose()  # no pooled connection stays open across a migration
        return found

    before = [("p1", None, "", 10), ("p2", "p1", "h2", None)]
    assert rows() == before
    db.upgrade(database_url)
    assert rows() == before
    with engine.connect() as connection:
        assert connection.execute(text("SELECT last_payment_hash FROM ledger_head")).scalar_one() == GENESIS_HASH
        with pytest.raises(IntegrityError):  # NOT NULL, no default: a payment needs its hash
            _insert_payment(connection, "p3", 3, None, None)
    engine.dispose()
    db.downgrade(database_url, "20261201_key_lifecycle")
    assert rows() == before
    db.upgrade(database_url)
    assert rows() == before


def _flatten(migrated: Migrated) -> list[tuple]:
    """Autogenerate's differences, one tuple each (it groups column changes in lists)."""
    flat = []
    for difference in autogenerate_differences(migrated.engine):
        flat.extend(difference if isinstance(difference, list) else [difference])
    return flat
