"""`closeout.merchant_id`: the terminal's merchant when its closeout was submitted.

A closeout is compared with the terminal's sales of that day at the merchant it belonged to
then (a terminal moved from another merchant is not shown that merchant's sales), and
reconciliation now compares with the same day: it counted every sale of the terminal, so a
closeout that matched when submitted failed reconciliation. Closeouts submitted before this
revision keep a null merchant and are compared with every sale of the terminal that day, as
before.

Revision ID: 20261212_closeout_merchant
Revises: 20261211_label_names
"""
import sqlalchemy as sa
from alembic import op

revision = '20261212_closeout_merchant'
down_revision = '20261211_label_names'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('closeout', schema=None) as batch_op:
        batch_op.add_column(sa.Column('merchant_id', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('closeout', schema=None) as batch_op:
        batch_op.drop_column('merchant_id')
