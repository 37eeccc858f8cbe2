"""Schema parity: the migrated schema is the models' schema.

Two columns kept the server defaults that were only there to fill rows that
existed when the columns were added (20261129_finance): `payment.hash` ('' for
payments accepted before the payment chain) and `ledger_head.last_payment_hash`
(the genesis hash). Rows written since always carry their own value; the
models declare none, and a payment written without its hash must be refused,
not stored with ''. Existing rows keep their values.

On SQLite dropping a default rebuilds the table (batch mode); migrations/env.py
runs SQLite migrations with foreign keys off and checks them before commit.

Revision ID: 20261202_schema_parity
Revises: 20261201_key_lifecycle
"""
import sqlalchemy as sa
from alembic import op

revision = '20261202_schema_parity'
down_revision = '20261201_key_lifecycle'
branch_labels = None
depends_on = None

GENESIS_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def upgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.alter_column('hash', existing_type=sa.String(length=64), existing_nullable=False,
                              server_default=None)
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.alter_column('last_payment_hash', existing_type=sa.String(length=64), existing_nullable=False,
                              server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.alter_column('last_payment_hash', existing_type=sa.String(length=64), existing_nullable=False,
                              server_default=GENESIS_HASH)
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.alter_column('hash', existing_type=sa.String(length=64), existing_nullable=False,
                              server_default='')
