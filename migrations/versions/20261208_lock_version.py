"""`ledger_head.lock_version`: how many units of work committed under the sequencer lock.

Every holder of the sequencer lock that commits adds one, whether or not it moved a chain or
the catalog: a settlement run that paid nothing, the expiry warnings' events, a group that only
declined. A group decided ahead of its write (the posting pipeline) is written only if the head,
this counter with it, is still the one it was decided against; so no unit of work can come
between its decision and its write unseen.

Revision ID: 20261208_lock_version
Revises: 20261207_award_references
"""
import sqlalchemy as sa
from alembic import op

revision = '20261208_lock_version'
down_revision = '20261207_award_references'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lock_version', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('lock_version')
