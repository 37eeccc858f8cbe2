"""Signed terminal requests (SPEC §9.2): terminal.public_key and the nonce table.

`terminal.public_key` holds the base64 of a terminal's raw Ed25519 public key
(null: bearer-only). `signature_nonce` remembers the nonces terminals signed
with, for 600 s, when no Redis is configured.
"""

import sqlalchemy as sa
from alembic import op

revision = '20261201_terminal_public_key'
down_revision = '20261201_receipts'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('terminal', schema=None) as batch_op:
        batch_op.add_column(sa.Column('public_key', sa.String(length=64), nullable=True))
    op.create_table(
        'signature_nonce',
        sa.Column('terminal_id', sa.String(length=64), nullable=False),
        sa.Column('nonce', sa.String(length=64), nullable=False),
        sa.Column('expires_at_us', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('terminal_id', 'nonce', name=op.f('pk_signature_nonce')),
    )
    op.create_index(op.f('ix_signature_nonce_expires_at_us'), 'signature_nonce', ['expires_at_us'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_signature_nonce_expires_at_us'), table_name='signature_nonce')
    op.drop_table('signature_nonce')
    with op.batch_alter_table('terminal', schema=None) as batch_op:
        batch_op.drop_column('public_key')
