"""`api_key.sessions_ended_at_us`: when the key's pages were last signed out of.

A page session is a signed cookie naming the key and when it was made. Signing out records the
instant here, and every session of the key made at or before it is refused from then on, in
every API process (pages look the key up on each load): a copied cookie no longer outlives the
sign-out.

Revision ID: 20261210_ui_sessions_ended
Revises: 20261209_payment_keys
"""
import sqlalchemy as sa
from alembic import op

revision = '20261210_ui_sessions_ended'
down_revision = '20261209_payment_keys'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sessions_ended_at_us', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('sessions_ended_at_us')
