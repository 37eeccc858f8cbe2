"""The database refuses a campaign meter above its budget: campaign.budget with a CHECK.

The budget lives in each campaign version's record; the current one is copied
to `campaign.budget` so that `issued_net <= budget` is a constraint of the
row every writer updates, not only a rule of the rating kernel.
"""
import json

from alembic import op
import sqlalchemy as sa

revision = '20261129_budget_check'
down_revision = '20261129_merchant_versions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.add_column(sa.Column('budget', sa.BigInteger(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT v.campaign_id, v.record_json FROM campaign_version v JOIN campaign c "
        "ON c.id = v.campaign_id AND c.current_version = v.version")).fetchall()
    for campaign_id, record_json in rows:
        bind.execute(sa.text("UPDATE campaign SET budget = :b WHERE id = :i"),
                     {"b": json.loads(record_json).get("budget"), "i": campaign_id})
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.create_check_constraint('issued_within_budget', 'budget IS NULL OR issued_net <= budget')


def downgrade() -> None:
    with op.batch_alter_table('campaign', schema=None) as batch_op:
        batch_op.drop_constraint('issued_within_budget', type_='check')
        batch_op.drop_column('budget')
