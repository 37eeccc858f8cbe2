"""An award's lot kept on the award row: one row less for every purchase that earns points at once.

Credited points are spent and expire as lots. Every award credited at once wrote a `point_lot`
row repeating the award (its wallet, campaign, payment, points and credit instant), with three
index entries: about a seventh of the rows a purchase wrote. From this revision an award's lot
is three columns of the award itself (`lot_expires_at_us`, `lot_remaining`, `lot_expired`), set
when the points are credited (at once, or by a crediting run later), with two partial indexes
that hold an entry only while the lot holds points. `point_lot` keeps the lots of grants and
those written before this revision; nothing is moved. The view `wallet_lot` reads both as one
relation, with the same columns as `point_lot`.

An award's lot counts the award's points (`points`); one credited after part of the award was
clawed back while pending starts with fewer remaining, as before.

The code that keeps lots on awards and the code before it must not run side by side: the code
before reads `point_lot` only. Migrate, then replace every process (the migration itself runs
under either).

On PostgreSQL the columns come first (no rewrite), the CHECK is added NOT VALID and validated,
and the indexes are built CONCURRENTLY, so terminals keep posting while a large `award` is read;
a build cut short (invalid, the revision unstamped) is dropped and built anew on the next
upgrade. On SQLite a plain ALTER TABLE too: a batch would rebuild `award` and lose its triggers
(`20261207_award_references`).

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
    " OR (lot_expires_at_us IS NOT NULL AND lot_remaining IS NOT NULL AND lot_expired IS NOT NULL"
    " AND lot_remaining >= 0 AND lot_expired >= 0)"
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
    where = sa.text('lot_remaining > 0')
    if op.get_bind().dialect.name != "postgresql":
        op.execute("ALTER TABLE award ADD COLUMN lot_expires_at_us BIGINT")
        op.execute("ALTER TABLE award ADD COLUMN lot_remaining BIGINT")
        op.execute(f"ALTER TABLE award ADD COLUMN lot_expired BIGINT CONSTRAINT ck_award_lot_whole CHECK ({LOT_WHOLE})")
        for name, column in INDEXES.items():
            op.create_index(name, 'award', [column], sqlite_where=where)
        op.execute(VIEW)
        return
    op.execute("ALTER TABLE award ADD COLUMN IF NOT EXISTS lot_expires_at_us BIGINT,"
               " ADD COLUMN IF NOT EXISTS lot_remaining BIGINT, ADD COLUMN IF NOT EXISTS lot_expired BIGINT")
    op.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'ck_award_lot_whole'"
        " AND conrelid = 'award'::regclass) THEN"
        f" ALTER TABLE award ADD CONSTRAINT ck_award_lot_whole CHECK ({LOT_WHOLE}) NOT VALID; END IF; END $$"
    )
    op.execute(VIEW.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"))
    with op.get_context().autocommit_block():  # commits the above; each statement below on its own
        op.execute("ALTER TABLE award VALIDATE CONSTRAINT ck_award_lot_whole")  # reads, writers go on
        for name, column in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
            op.create_index(name, 'award', [column], postgresql_where=where, postgresql_concurrently=True)


def downgrade() -> None:
    # The lots kept on awards go back to `point_lot`, where the revision before reads every lot;
    # on PostgreSQL no lot changes from the copy to the columns' end.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("LOCK TABLE award IN EXCLUSIVE MODE")
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
