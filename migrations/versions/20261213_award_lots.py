"""An award's lot kept on the award row: one row less for every purchase that earns points at once.

Credited points are spent and expire as lots. Every award credited at once wrote a `point_lot`
row repeating the award (its wallet, campaign, payment, points and credit instant), with three
index entries: about a seventh of the rows a purchase wrote. From this revision an award's lot
is three columns of the award itself (`lot_expires_at_us`, `lot_remaining`, `lot_expired`), set
when the points are credited (at once, or by a crediting run later), with two partial indexes
that hold an entry only while the lot holds points. `point_lot` keeps the lots of grants and
those written before this revision; nothing is moved. The view `wallet_lot` reads both as one
relation, with the same columns as `point_lot`.

Plain ALTER TABLE on SQLite too: a batch would rebuild `award` and lose its triggers
(`20261207_award_references`); SQLite checks a column's CHECK on the rows written after.

Revision ID: 20261213_award_lots
Revises: 20261212_closeout_merchant
"""
import sqlalchemy as sa
from alembic import op

revision = '20261213_award_lots'
down_revision = '20261212_closeout_merchant'
branch_labels = None
depends_on = None

LOT_WHOLE = (
    "(lot_expires_at_us IS NULL AND lot_remaining IS NULL AND lot_expired IS NULL)"
    " OR (lot_expires_at_us IS NOT NULL AND lot_remaining >= 0 AND lot_expired >= 0)"
)
VIEW = (
    "CREATE VIEW wallet_lot AS"
    " SELECT id, wallet_id, campaign_id, source_id, credited_at_us, expires_at_us, points, remaining, expired"
    " FROM point_lot"
    " UNION ALL"
    " SELECT payment_id || ':' || campaign_id, wallet_id, campaign_id, payment_id, credit_at_us,"
    " lot_expires_at_us, points, lot_remaining, lot_expired"
    " FROM award WHERE lot_expires_at_us IS NOT NULL"
)
INDEXES = {'ix_award_lot_wallet': 'wallet_id', 'ix_award_lot_expires_at_us': 'lot_expires_at_us'}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE award ADD COLUMN lot_expires_at_us BIGINT, ADD COLUMN lot_remaining BIGINT,"
                   " ADD COLUMN lot_expired BIGINT")
        op.execute(f"ALTER TABLE award ADD CONSTRAINT ck_award_lot_whole CHECK ({LOT_WHOLE})")
    else:
        op.execute("ALTER TABLE award ADD COLUMN lot_expires_at_us BIGINT")
        op.execute("ALTER TABLE award ADD COLUMN lot_remaining BIGINT")
        op.execute(f"ALTER TABLE award ADD COLUMN lot_expired BIGINT CONSTRAINT ck_award_lot_whole CHECK ({LOT_WHOLE})")
    where = sa.text('lot_remaining > 0')
    for name, column in INDEXES.items():
        op.create_index(name, 'award', [column], postgresql_where=where, sqlite_where=where)
    op.execute(VIEW)


def downgrade() -> None:
    # The lots kept on awards go back to `point_lot`, where the revision before reads every lot.
    op.execute("DROP VIEW wallet_lot")
    op.execute(
        "INSERT INTO point_lot (id, wallet_id, campaign_id, source_id, credited_at_us, expires_at_us, points,"
        " remaining, expired) SELECT payment_id || ':' || campaign_id, wallet_id, campaign_id, payment_id,"
        " credit_at_us, lot_expires_at_us, points, lot_remaining, lot_expired FROM award"
        " WHERE lot_expires_at_us IS NOT NULL"
    )
    for name in INDEXES:
        op.drop_index(name, table_name='award')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE award DROP CONSTRAINT ck_award_lot_whole")
    for column in ('lot_expired', 'lot_remaining', 'lot_expires_at_us'):
        op.execute(f"ALTER TABLE award DROP COLUMN {column}")  # SQLite: the CHECK goes with its column
