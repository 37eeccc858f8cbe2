"""`ledger_head.order_floor_us`: the latest instant a payment was accepted at or a catalog change
or grant was dated at; no live unit of work stamps an instant before it.

The re-rate takes the campaign and merchant versions, and the grants, in force at a payment's
acceptance instant; live, a payment is rated under what was in force when its group was decided,
in acceptance order. Two API hosts whose clocks differed by a second dated a change before a
payment the other stamped earlier in the chain, or stamped a payment rated under a change before
the change, and reconciliation named payments whose live award was right (helper-107, helper-110).
Now acceptance instants never go back along the chain, and a change (and a grant) is dated past
the floor (`ledger.date_catalog_change`, `UnitOfWork.now_us`). An existing ledger's floor is the
latest of its payments' acceptance instants, versions and grants (one read of each table).

Revision ID: 20261218_order_floor
Revises: 20261217_campaign_burn
"""
import sqlalchemy as sa
from alembic import op

revision = '20261218_order_floor'
down_revision = '20261217_campaign_burn'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_floor_us', sa.BigInteger(), server_default='0', nullable=False))
    bind = op.get_bind()
    floor = max(
        bind.execute(sa.text(f"SELECT max({column}) FROM {table}")).scalar() or 0
        for table, column in (
            ("campaign_version", "created_at_us"),
            ("merchant_version", "created_at_us"),
            ("point_grant", "granted_at_us"),
            ("payment", "accepted_at_us"),
        )
    )
    bind.execute(sa.text("UPDATE ledger_head SET order_floor_us = :floor"), {"floor": floor})


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('order_floor_us')
