"""The migrations that build an index CONCURRENTLY on PostgreSQL take up a build that was cut
short. Such a build leaves its index behind invalid, and leaves the revision unstamped (a cancel,
a timeout, a lost connection, a killed deploy, on a large ledger). Upgrading again drops that
index and builds it anew; it no longer stops on "relation already exists". Each leftover is made
here as a cut build leaves it: an index of that name, marked invalid. (`20261209_payment_keys`,
which adds columns first, has its own test in test_payment_keys_migration.py.)"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from engine.store import db

CASES = [
    # (revision, the one before, {index: (table, the columns the migration indexes, partial)})
    (
        "20261203_idempotency_purge",
        "20261202_schema_parity",
        {
            "ix_idempotency_key_created_at_us": ("idempotency_key", "created_at_us", False),
        },
    ),
    (
        "20261204_wallet_history",
        "20261204_events_webhooks",
        {
            "ix_posting_debit_wallet": ("posting", "debit_account_id, sequence", True),
            "ix_posting_credit_wallet": ("posting", "credit_account_id, sequence", True),
        },
    ),
    (
        "20261205_award_wallet_pending",
        "20261204_wallet_history",
        {
            "ix_award_wallet_pending": ("award", "wallet_id, credit_at_us", True),
        },
    ),
    (
        "20261213_award_lots",
        "20261212_closeout_merchant",
        {
            # (The other, of the lot's expiry, indexes a column this revision adds.)
            "ix_award_lot_wallet": ("award", "wallet_id", True),
        },
    ),
]


@pytest.mark.parametrize(("revision", "before", "indexes"), CASES, ids=[c[0] for c in CASES])
def test_an_index_left_invalid_is_built_anew(postgres_url, revision, before, indexes) -> None:
    db.upgrade(postgres_url, before)
    engine = db.make_engine(postgres_url)
    try:
        with engine.connect() as c:
            for index, (table, columns, _) in indexes.items():  # as a cut build leaves it, but whole
                c.execute(text(f"CREATE INDEX {index} ON {table} ({columns})"))
                c.execute(text(f"UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{index}'::regclass"))
            c.commit()
        db.upgrade(postgres_url, revision)
        with engine.connect() as c:
            assert c.execute(text("SELECT version_num FROM alembic_version")).scalar() == revision
            for index, (_, columns, partial) in indexes.items():
                state = c.execute(
                    text(f"SELECT indisvalid, indpred IS NOT NULL FROM pg_index WHERE indexrelid = '{index}'::regclass")
                )
                assert tuple(state.one()) == (True, partial)  # the migration's own index, built anew
                definition = c.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :i"), {"i": index})
                assert f"({columns})" in definition.scalar()
    finally:
        engine.dispose()
