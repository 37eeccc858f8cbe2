"""`payment.idempotency_key` and `payment.request_hash`: an accepted payment's answer remembered
on its own row.

A payment row already holds its request and its answer (`request_json`, `response_json`); the
`idempotency_key` row of every accepted payment was a second copy of that answer, one more row,
two more index entries and the answer's text written again for every purchase. From this
revision a payment accepted under a key carries the key and its request's hash, unique per
terminal (a partial index: the history import's payments, accepted without a key, cost no
entry), and only declines and grants are remembered in `idempotency_key`. Answers remembered
there before this revision still replay until the purge forgets them; nothing is moved. On
PostgreSQL the index is built CONCURRENTLY, so terminals keep posting while it is made.

Revision ID: 20261209_payment_keys
Revises: 20261208_lock_version
"""
import sqlalchemy as sa
from alembic import op

revision = '20261209_payment_keys'
down_revision = '20261208_lock_version'
branch_labels = None
depends_on = None


def _create_index(**kw: object) -> None:
    where = sa.text('idempotency_key IS NOT NULL')
    op.create_index('uq_payment_terminal_key', 'payment', ['terminal_id', 'idempotency_key'], unique=True,
                    postgresql_where=where, sqlite_where=where, **kw)


def upgrade() -> None:
    # Plain ALTER TABLE, on SQLite too: a batch would rebuild `payment` under the award triggers
    # that name it (`20261207_award_references`). A nullable column without a default: no rewrite.
    if op.get_bind().dialect.name != "postgresql":
        op.add_column('payment', sa.Column('idempotency_key', sa.String(length=255), nullable=True))
        op.add_column('payment', sa.Column('request_hash', sa.String(length=64), nullable=True))
        _create_index()
        return
    # The index reads the whole of `payment` (to find no key in it): on PostgreSQL CONCURRENTLY,
    # so that terminals keep posting while a large ledger is read. The autocommit block commits
    # the columns first; a build that fails or is interrupted leaves them committed, the revision
    # not stamped and the index invalid, so upgrading again takes the columns as they are and
    # builds the index anew.
    op.execute("ALTER TABLE payment ADD COLUMN IF NOT EXISTS idempotency_key VARCHAR(255),"
               " ADD COLUMN IF NOT EXISTS request_hash VARCHAR(64)")
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS uq_payment_terminal_key")
        _create_index(postgresql_concurrently=True)


def downgrade() -> None:
    # The answers of payments accepted since go back where the revision before looks for them.
    op.execute(
        "INSERT INTO idempotency_key (terminal_id, key, request_hash, response_status, response_json,"
        " payment_id, created_at_us) SELECT terminal_id, idempotency_key, request_hash, 201, response_json,"
        " id, accepted_at_us FROM payment WHERE idempotency_key IS NOT NULL"
    )
    op.drop_index('uq_payment_terminal_key', table_name='payment')
    for column in ('request_hash', 'idempotency_key'):
        op.execute(f"ALTER TABLE payment DROP COLUMN {column}")  # SQLite 3.35 and later too, no rebuild
