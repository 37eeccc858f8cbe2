"""`ledger_head.ledger_id`: this ledger's incarnation, random.

What is kept beside the database, the answers cached in Redis, is kept under it, and every
`setapay restore` makes a new one: a restored copy, or another database on the same Redis, never
replays an answer for a sale it does not hold (helper-82's probe: after a restore, a retry was
answered 201 `Idempotent-Replayed` for a sale the restored ledger did not have).

Revision ID: 20261215_ledger_id
Revises: 20261214_stamp_floor
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = '20261215_ledger_id'
down_revision = '20261214_stamp_floor'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ledger_id', sa.String(length=32), nullable=True))
    op.get_bind().execute(sa.text("UPDATE ledger_head SET ledger_id = :id"), {"id": secrets.token_hex(16)})


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('ledger_id')
