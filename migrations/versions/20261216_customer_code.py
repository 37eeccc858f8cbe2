"""`merchant.customer_code`: the merchant's number in the ward's payout files (顧客コード1).

It was the merchant id's digits, zero-filled, and two merchants whose ids carry the same digits
(`M4`, `MB004`) had one code in one file, which made a bank's notice of a failed transfer
ambiguous (helper-81). Each merchant now has its own number, one more than the last merchant's,
given at creation; existing merchants are numbered in the order they were created.

Revision ID: 20261216_customer_code
Revises: 20261215_ledger_id
"""
import sqlalchemy as sa
from alembic import op

revision = '20261216_customer_code'
down_revision = '20261215_ledger_id'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('merchant', sa.Column('customer_code', sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    merchants = bind.execute(sa.text("SELECT id FROM merchant ORDER BY created_at_us, id")).scalars().all()
    for number, merchant_id in enumerate(merchants, start=1):
        bind.execute(sa.text("UPDATE merchant SET customer_code = :n WHERE id = :id"), {"n": number, "id": merchant_id})
    op.create_index('uq_merchant_customer_code', 'merchant', ['customer_code'], unique=True)


def downgrade() -> None:
    op.drop_index('uq_merchant_customer_code', table_name='merchant')
    with op.batch_alter_table('merchant', schema=None) as batch_op:
        batch_op.drop_column('customer_code')
