"""An index on idempotency_key.created_at_us, for the purge of answers past the retention.

Remembered answers older than SETAPAY_IDEMPOTENCY_RETENTION_DAYS (at least 30)
are deleted by the lifecycle runs, oldest first; the index makes that a range
scan instead of a walk of the whole table. On PostgreSQL it is built
CONCURRENTLY, so terminals keep posting while it is made.

Revision ID: 20261203_idempotency_purge
Revises: 20261202_schema_parity
"""
from alembic import op

revision = '20261203_idempotency_purge'
down_revision = '20261202_schema_parity'
branch_labels = None
depends_on = None

INDEX = 'ix_idempotency_key_created_at_us'


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # One an interrupted build left behind, invalid and unstamped, is built anew.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {INDEX}")
            op.create_index(INDEX, 'idempotency_key', ['created_at_us'], unique=False,
                            postgresql_concurrently=True)
    else:
        op.create_index(INDEX, 'idempotency_key', ['created_at_us'], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name='idempotency_key')
