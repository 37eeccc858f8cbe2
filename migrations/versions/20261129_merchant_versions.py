"""Merchant versions, an index on posting time, and which payments carry items.

- `merchant_version`: every merchant record as it was from `created_at_us`
  on, so a re-rate or a simulation uses the record in force when a payment
  was accepted (as `campaign_version` does for campaigns). Existing merchants
  get a version 1 holding their current record from their creation instant:
  the history before this revision was not kept, so that is the best known.
- `ix_posting_posted_at_us`: settlement periods and budget burn filter
  postings by posting time.
- `payment.has_items`: whether the stored request lists items, so the re-rate
  parses only those requests; NULL (payments accepted before this revision)
  means "not known: parse it".

Revision ID: 20261129_merchant_versions
Revises: 20261129_finance
Create Date: 2026-11-29 19:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '20261129_merchant_versions'
down_revision = '20261129_finance'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('merchant_version',
    sa.Column('merchant_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('record_json', sa.Text(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'],
                            name=op.f('fk_merchant_version_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('merchant_id', 'version', name=op.f('pk_merchant_version'))
    )
    op.execute("INSERT INTO merchant_version (merchant_id, version, record_json, created_at_us) "
               "SELECT id, 1, record_json, created_at_us FROM merchant")
    # Plain CREATE INDEX, not batch mode: a batch that rebuilt `posting` on SQLite
    # would drop its append-only triggers.
    op.create_index(op.f('ix_posting_posted_at_us'), 'posting', ['posted_at_us'], unique=False)
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('has_items', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_column('has_items')
    op.drop_index(op.f('ix_posting_posted_at_us'), table_name='posting')
    op.drop_table('merchant_version')
