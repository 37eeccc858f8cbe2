"""Finance: settlement runs and lines, closeouts, signed chain heads, the payment hash chain.

Revision ID: 20261129_finance
Revises: 20261129_lifecycle
Create Date: 2026-11-29 17:20:25.273612
"""
from alembic import op
import sqlalchemy as sa


revision = '20261129_finance'
down_revision = '20261129_lifecycle'
branch_labels = None
depends_on = None

GENESIS_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def upgrade() -> None:
    op.create_table('chain_head',
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('signed_json', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('business_date', name=op.f('pk_chain_head'))
    )
    op.create_table('closeout',
    sa.Column('terminal_id', sa.String(length=64), nullable=False),
    sa.Column('business_date', sa.String(length=10), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('submitted_at_us', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('terminal_id', 'business_date', name=op.f('pk_closeout'))
    )
    op.create_table('settlement_run',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('period_start_us', sa.BigInteger(), nullable=False),
    sa.Column('period_end_us', sa.BigInteger(), nullable=False),
    sa.Column('period_kind', sa.String(length=16), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('last_posting_sequence', sa.BigInteger(), nullable=False),
    sa.Column('statement_json', sa.Text(), nullable=False),
    sa.Column('csv_text', sa.Text(), nullable=False),
    sa.Column('zengin_file', sa.LargeBinary(), nullable=False),
    sa.CheckConstraint('period_end_us > period_start_us', name=op.f('ck_settlement_run_period_ordered')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_settlement_run')),
    sa.UniqueConstraint('period_start_us', name=op.f('uq_settlement_run_period_start_us'))
    )
    op.create_table('settlement_line',
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('merchant_id', sa.String(length=64), nullable=False),
    sa.Column('coin_sales', sa.BigInteger(), nullable=False),
    sa.Column('coin_refunds', sa.BigInteger(), nullable=False),
    sa.Column('points_redeemed', sa.BigInteger(), nullable=False),
    sa.Column('points_returned', sa.BigInteger(), nullable=False),
    sa.Column('merchant_funded_points', sa.BigInteger(), nullable=False),
    sa.Column('fee', sa.BigInteger(), nullable=False),
    sa.Column('carried_in', sa.BigInteger(), nullable=False),
    sa.Column('net_payout', sa.BigInteger(), nullable=False),
    sa.Column('payout_status', sa.String(length=16), nullable=False),
    sa.CheckConstraint("payout_status IN ('pending', 'paid', 'failed', 'nothing_due')", name=op.f('ck_settlement_line_payout_status_known')),
    sa.ForeignKeyConstraint(['run_id'], ['settlement_run.id'], name=op.f('fk_settlement_line_run_id_settlement_run')),
    sa.PrimaryKeyConstraint('run_id', 'merchant_id', name=op.f('pk_settlement_line'))
    )
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_payment_hash', sa.String(length=64), nullable=False,
                                      server_default=GENESIS_HASH))

    with op.batch_alter_table('payment', schema=None) as batch_op:
        # Payments accepted before this revision have no chain hash; reconciliation reports them.
        batch_op.add_column(sa.Column('hash', sa.String(length=64), nullable=False, server_default=''))



def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_column('hash')

    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('last_payment_hash')

    op.drop_table('settlement_line')
    op.drop_table('settlement_run')
    op.drop_table('closeout')
    op.drop_table('chain_head')
