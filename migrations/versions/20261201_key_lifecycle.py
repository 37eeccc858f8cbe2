"""Key lifecycle (SPEC §9.3): api_key gains expiry, revocation and last use.

All three are instants in microseconds, NULL when the key does not expire, is
not revoked, or was never used. The role CHECK is left as it is.
"""
import sqlalchemy as sa
from alembic import op

revision = '20261201_key_lifecycle'
down_revision = '20261201_audit_log'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at_us', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('revoked_at_us', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('last_used_at_us', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('api_key', schema=None) as batch_op:
        batch_op.drop_column('last_used_at_us')
        batch_op.drop_column('revoked_at_us')
        batch_op.drop_column('expires_at_us')
