"""`ledger_head.change_floor_us`: no live unit of work stamps an instant before the last catalog
change or grant.

The re-rate takes the campaign and merchant versions, and the grants, in force at a payment's
acceptance instant; live, a payment is rated under what was in force when its group was decided,
in acceptance order. Two API hosts whose clocks differed by a second dated a change before a
payment the other stamped earlier in the chain, or after one it stamped later, and reconciliation
named payments whose live award was right (helper-107). Now a change (and a grant) is dated past
the ledger's last payment, the floor moves to it, and every live stamp after it is at least the
floor (`ledger.date_catalog_change`, `UnitOfWork.now_us`). An existing ledger's floor is its last
change or grant.

Revision ID: 20261218_change_floor
Revises: 20261217_campaign_burn
"""
import sqlalchemy as sa
from alembic import op

revision = '20261218_change_floor'
down_revision = '20261217_campaign_burn'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('change_floor_us', sa.BigInteger(), server_default='0', nullable=False))
    bind = op.get_bind()
    floor = max(
        bind.execute(sa.text(f"SELECT max({column}) FROM {table}")).scalar() or 0
        for table, column in (
            ("campaign_version", "created_at_us"),
            ("merchant_version", "created_at_us"),
            ("point_grant", "granted_at_us"),
        )
    )
    bind.execute(sa.text("UPDATE ledger_head SET change_floor_us = :floor"), {"floor": floor})


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('change_floor_us')
