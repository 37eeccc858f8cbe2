"""Partial indexes of the postings that touch a wallet account, for the wallet history.

`GET /v1/wallets/{id}/history` reads, for each account of the wallet, its postings by
descending sequence (engine/store/history.py); (debit_account_id, sequence) and
(credit_account_id, sequence), each only over postings whose account is a wallet's, make
every page a few short index scans whatever the wallet's age. On PostgreSQL they are built
CONCURRENTLY, so terminals keep posting while they are made.

Revision ID: 20261204_wallet_history
Revises: 20261204_events_webhooks
"""
import sqlalchemy as sa
from alembic import op

revision = '20261204_wallet_history'
down_revision = '20261204_events_webhooks'
branch_labels = None
depends_on = None

SIDES = ('debit', 'credit')


def _create(side: str, **kw: object) -> None:
    where = sa.text(f"{side}_account_id LIKE 'wallet:%'")
    op.create_index(f'ix_posting_{side}_wallet', 'posting', [f'{side}_account_id', 'sequence'], unique=False,
                    postgresql_where=where, sqlite_where=where, **kw)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for side in SIDES:
                # One an interrupted build left behind, invalid and unstamped, is built anew.
                op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS ix_posting_{side}_wallet")
                _create(side, postgresql_concurrently=True)
    else:
        for side in SIDES:
            _create(side)


def downgrade() -> None:
    for side in SIDES:
        op.drop_index(f'ix_posting_{side}_wallet', table_name='posting')
