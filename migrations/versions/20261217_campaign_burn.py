"""`campaign_burn`: each campaign's points issued and clawed back, by hour of posting time.

A campaign's budget (`GET /v1/campaigns/{id}/budget`), its page and the campaigns' list summed
every posting of the ledger for each campaign shown, a full read of `posting` that grew with
the ledger's whole history (~120–180 ms a campaign at helper-89's size; the list reads one a
campaign). Now a trigger on `posting` adds each award, grant and clawback to its campaign's row
of the hour it was posted in, in the transaction that posts it, whatever process or version of
the code inserts it (a process still running the code before this revision, too), and the reads
sum those rows. On PostgreSQL the trigger runs once a statement, over the statement's new rows
(a group's COPY); on SQLite once a row. The rows are filled here from the postings made before;
the trigger is made first, so that on PostgreSQL its lock holds other postings back until the
fill has read them all.

Revision ID: 20261217_campaign_burn
Revises: 20261216_customer_code
"""
import sqlalchemy as sa
from alembic import op

revision = '20261217_campaign_burn'
down_revision = '20261216_customer_code'
branch_labels = None
depends_on = None

HOUR_US = 3_600_000_000
BURNS = "reason IN ('award', 'grant', 'clawback') AND campaign_id IS NOT NULL"
ISSUED = "CASE WHEN reason = 'clawback' THEN 0 ELSE amount END"
CLAWED = "CASE WHEN reason = 'clawback' THEN amount ELSE 0 END"
ADD = (
    "ON CONFLICT (campaign_id, hour_us) DO UPDATE SET issued = campaign_burn.issued + excluded.issued,"
    " clawed_back = campaign_burn.clawed_back + excluded.clawed_back"
)


def upgrade() -> None:
    op.create_table('campaign_burn',
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('hour_us', sa.BigInteger(), nullable=False),
    sa.Column('issued', sa.BigInteger(), nullable=False),
    sa.Column('clawed_back', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('issued >= 0', name=op.f('ck_campaign_burn_issued_nonnegative')),
    sa.CheckConstraint('clawed_back >= 0', name=op.f('ck_campaign_burn_clawed_back_nonnegative')),
    sa.PrimaryKeyConstraint('campaign_id', 'hour_us', name=op.f('pk_campaign_burn'))
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION posting_burn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO campaign_burn (campaign_id, hour_us, issued, clawed_back)"
            f" SELECT campaign_id, posted_at_us - posted_at_us % {HOUR_US}, SUM({ISSUED}), SUM({CLAWED})"
            f" FROM posted WHERE {BURNS} GROUP BY 1, 2 ORDER BY 1, 2 {ADD}; "
            "RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER posting_burn AFTER INSERT ON posting REFERENCING NEW TABLE AS posted "
            "FOR EACH STATEMENT EXECUTE FUNCTION posting_burn()"
        )
    else:
        op.execute(
            f"CREATE TRIGGER posting_burn AFTER INSERT ON posting WHEN NEW.{BURNS.replace(' AND ', ' AND NEW.')} BEGIN "
            "INSERT INTO campaign_burn (campaign_id, hour_us, issued, clawed_back)"
            f" VALUES (NEW.campaign_id, NEW.posted_at_us - NEW.posted_at_us % {HOUR_US},"
            f" {ISSUED.replace('reason', 'NEW.reason').replace('amount', 'NEW.amount')},"
            f" {CLAWED.replace('reason', 'NEW.reason').replace('amount', 'NEW.amount')}) {ADD}; "
            "END"
        )
    op.execute(
        "INSERT INTO campaign_burn (campaign_id, hour_us, issued, clawed_back)"
        f" SELECT campaign_id, hour_us, SUM({ISSUED}), SUM({CLAWED})"
        f" FROM (SELECT campaign_id, reason, amount, posted_at_us - posted_at_us % {HOUR_US} AS hour_us"
        f" FROM posting WHERE {BURNS}) AS burn GROUP BY campaign_id, hour_us"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS posting_burn ON posting")
        op.execute("DROP FUNCTION IF EXISTS posting_burn()")
    else:
        op.execute("DROP TRIGGER IF EXISTS posting_burn")
    op.drop_table('campaign_burn')
