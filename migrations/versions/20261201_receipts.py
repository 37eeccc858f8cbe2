"""Payment receipts (SPEC §9.1): payment apps and their sealed secrets, each payment's
receipt (app and jti, unique per app), and the `app` role for keys.

Revision ID: 20261201_receipts
Revises: 20261129_budget_check
"""
import sqlalchemy as sa
from alembic import op

revision = '20261201_receipts'
down_revision = '20261129_budget_check'
branch_labels = None
depends_on = None

ROLES_BEFORE = "role IN ('admin', 'finance', 'merchant', 'terminal')"
ROLES_AFTER = "role IN ('admin', 'finance', 'merchant', 'terminal', 'app')"


def upgrade() -> None:
    op.create_table('payment_app',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('revoked_at_us', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment_app'))
    )
    op.create_table('app_secret',
    sa.Column('app_id', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('secret_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('valid_until_us', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['payment_app.id'], name=op.f('fk_app_secret_app_id_payment_app')),
    sa.PrimaryKeyConstraint('app_id', 'position', name=op.f('pk_app_secret'))
    )
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('receipt_app_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('receipt_jti', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint('uq_payment_receipt', ['receipt_app_id', 'receipt_jti'])
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_api_key_role_known'), type_='check')
        batch_op.create_check_constraint(op.f('ck_api_key_role_known'), ROLES_AFTER)


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_api_key_role_known'), type_='check')
        batch_op.create_check_constraint(op.f('ck_api_key_role_known'), ROLES_BEFORE)
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_constraint('uq_payment_receipt', type_='unique')
        batch_op.drop_column('receipt_jti')
        batch_op.drop_column('receipt_app_id')
    op.drop_table('app_secret')
    op.drop_table('payment_app')
