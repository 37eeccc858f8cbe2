"""`ledger_head.stamp_floor_us`: no unit of work stamps an instant before it.

The end of what is closed: a settlement run moves it to its period's end, signing chain heads to
the last signed day's end (and a catalog change made on a clock not past it is dated just past it,
and moves it there). Every unit of work stamps `max(its clock, the floor)`, and the history
import's past instants before it are refused. So a process whose clock is behind the one that
settled a period or signed a day (another host, a cron job) stamps after it all the same, and an
import running while finance settles cannot post into the settled period (helper-81's probe did
both). An existing ledger's floor is its last settled period's end and its last signed day's end.

Revision ID: 20261214_stamp_floor
Revises: 20261213_award_lots
"""
import datetime as dt
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import op

revision = '20261214_stamp_floor'
down_revision = '20261213_award_lots'
branch_labels = None
depends_on = None


def _day_end_us(business_date: str) -> int:
    day = dt.date.fromisoformat(business_date) + dt.timedelta(days=1)
    start = dt.datetime.combine(day, dt.time(), ZoneInfo("Asia/Tokyo"))
    return int(start.timestamp()) * 1_000_000


def upgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stamp_floor_us', sa.BigInteger(), server_default='0', nullable=False))
    bind = op.get_bind()
    floor = bind.execute(sa.text("SELECT max(period_end_us) FROM settlement_run")).scalar() or 0
    signed = bind.execute(sa.text("SELECT max(business_date) FROM chain_head")).scalar()
    if signed:
        floor = max(floor, _day_end_us(signed))
    bind.execute(sa.text("UPDATE ledger_head SET stamp_floor_us = :floor"), {"floor": floor})


def downgrade() -> None:
    with op.batch_alter_table('ledger_head', schema=None) as batch_op:
        batch_op.drop_column('stamp_floor_us')
