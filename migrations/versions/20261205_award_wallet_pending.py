"""A partial index of a wallet's awards still pending, for its points.

`GET /v1/wallets/{id}/points` lists the wallet's pending points by crediting date from
`award WHERE wallet_id = ? AND pending > 0` (engine/store/queries.py); without an index
that is a scan of every award of the ward (831 ms at the median for a wallet of 10,000
events in `bench/wallet_history.py`'s database). Partial: credited awards, most of them,
cost no index entry. On PostgreSQL it is built CONCURRENTLY, so terminals keep posting.

Revision ID: 20261205_award_wallet_pending
Revises: 20261204_wallet_history
"""
import sqlalchemy as sa
from alembic import op

revision = '20261205_award_wallet_pending'
down_revision = '20261204_wallet_history'
branch_labels = None
depends_on = None

WHERE = sa.text("pending > 0")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # One an interrupted build left behind, invalid and unstamped, is built anew.
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_award_wallet_pending")
            op.create_index('ix_award_wallet_pending', 'award', ['wallet_id', 'credit_at_us'],
                            postgresql_where=WHERE, postgresql_concurrently=True)
    else:
        op.create_index('ix_award_wallet_pending', 'award', ['wallet_id', 'credit_at_us'], sqlite_where=WHERE)


def downgrade() -> None:
    op.drop_index('ix_award_wallet_pending', table_name='award')
