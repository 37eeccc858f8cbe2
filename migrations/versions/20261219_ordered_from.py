"""`ledger_head.ordered_from_sequence`: the payment from which acceptance instants never go back
along the payment chain, which reconciliation checks (`payments_accepted_in_order`).

Since `20261218_order_floor`, every live stamp is at least the latest instant a payment was
accepted at, and the history import refuses a group before the ledger's last payment
(`StampBehindLedger`): a payment's acceptance instant lies between those of its neighbours in the
chain. A ledger written before that may hold inversions (two hosts a second apart, by design
then), so the check starts at the last payment this migration finds (0 for a new ledger): an
acceptance instant moved later by someone who can write the database, with the chains hashed
again, is named, where before the re-rate took the versions in force at the instant written.

Revision ID: 20261219_ordered_from
Revises: 20261218_order_floor
"""
import sqlalchemy as sa
from alembic import op

revision = '20261219_ordered_from'
down_revision = '20261218_order_floor'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ordered_from_sequence', sa.BigInteger(), server_default='0', nullable=False))
    op.execute("UPDATE ledger_head SET ordered_from_sequence = last_payment_sequence")


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('ordered_from_sequence')
