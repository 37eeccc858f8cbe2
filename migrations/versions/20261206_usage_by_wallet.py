"""The wallet-window usage keyed wallet first: (wallet_id, campaign_id, window_key).

A group of purchases reads the cap usage of its wallets. Keyed (campaign, wallet, window), that
took one index probe per campaign and wallet, most of them finding nothing (a wallet has a row
only where it earned): 20.7 ms for the 3,668 keys of 917 wallets in a table of 151,000 rows.
Keyed wallet first, one probe per wallet finds all its rows: 3.3 ms. The same columns and the
same uniqueness; the ledger's upserts name the columns, not their order.

Revision ID: 20261206_usage_by_wallet
Revises: 20261205_award_wallet_pending
"""
from alembic import op

revision = '20261206_usage_by_wallet'
down_revision = '20261205_award_wallet_pending'
branch_labels = None
depends_on = None

NAME = 'pk_wallet_window_usage'


def _key(columns: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE wallet_window_usage DROP CONSTRAINT {NAME}, "
            f"ADD CONSTRAINT {NAME} PRIMARY KEY ({', '.join(columns)})"
        )
        return
    with op.batch_alter_table('wallet_window_usage', recreate='always') as batch:
        batch.drop_constraint(NAME, type_='primary')
        batch.create_primary_key(NAME, columns)


def upgrade() -> None:
    _key(['wallet_id', 'campaign_id', 'window_key'])


def downgrade() -> None:
    _key(['campaign_id', 'wallet_id', 'window_key'])
