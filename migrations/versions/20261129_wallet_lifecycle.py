"""Wallet lifecycle: point lots with expiry, redemption legs, wallet debt, grants, runs.

Revision ID: 20261129_lifecycle
Revises: 20261129_initial
Create Date: 2026-11-29 17:15:34.395894
"""
from alembic import op
import sqlalchemy as sa


revision = '20261129_lifecycle'
down_revision = '20261129_initial'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lifecycle_run',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('as_of_us', sa.BigInteger(), nullable=False),
    sa.Column('started_at_us', sa.BigInteger(), nullable=False),
    sa.Column('items', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lifecycle_run'))
    )
    op.create_table('point_lot',
    sa.Column('id', sa.String(length=120), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('source_id', sa.String(length=64), nullable=False),
    sa.Column('credited_at_us', sa.BigInteger(), nullable=False),
    sa.Column('expires_at_us', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('expired', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('expired >= 0', name=op.f('ck_point_lot_expired_nonnegative')),
    sa.CheckConstraint('points > 0', name=op.f('ck_point_lot_points_positive')),
    sa.CheckConstraint('remaining >= 0', name=op.f('ck_point_lot_remaining_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_point_lot'))
    )
    with op.batch_alter_table('point_lot', schema=None) as batch_op:
        batch_op.create_index('ix_point_lot_expires_at_us', ['expires_at_us'], unique=False)
        batch_op.create_index('ix_point_lot_wallet_remaining', ['wallet_id', 'remaining'], unique=False)

    op.create_table('redemption_leg',
    sa.Column('payment_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('lot_id', sa.String(length=120), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('points > 0', name=op.f('ck_redemption_leg_points_positive')),
    sa.PrimaryKeyConstraint('payment_id', 'position', name=op.f('pk_redemption_leg'))
    )
    op.create_table('wallet_debt',
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('points >= 0', name=op.f('ck_wallet_debt_points_nonnegative')),
    sa.PrimaryKeyConstraint('wallet_id', 'campaign_id', name=op.f('pk_wallet_debt'))
    )
    op.create_table('point_grant',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('campaign_version', sa.Integer(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('granted_at_us', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('points > 0', name=op.f('ck_point_grant_points_positive')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_point_grant_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_point_grant'))
    )
    with op.batch_alter_table('point_grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_point_grant_wallet_id'), ['wallet_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('point_grant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_point_grant_wallet_id'))

    op.drop_table('point_grant')
    op.drop_table('wallet_debt')
    op.drop_table('redemption_leg')
    with op.batch_alter_table('point_lot', schema=None) as batch_op:
        batch_op.drop_index('ix_point_lot_wallet_remaining')
        batch_op.drop_index('ix_point_lot_expires_at_us')

    op.drop_table('point_lot')
    op.drop_table('lifecycle_run')
