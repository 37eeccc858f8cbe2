"""Events and webhooks (SPEC §10): the event outbox, webhook endpoints and their deliveries.

`event` is written in the same transaction as the change it describes; its id is the
feed's order. `webhook_endpoint` holds what an admin registered (the signing secret
sealed); `webhook_delivery` one row per event owed to an endpoint, pending, delivered or
failed.

Revision ID: 20261204_events_webhooks
Revises: 20261203_idempotency_purge
"""
import sqlalchemy as sa
from alembic import op

revision = '20261204_events_webhooks'
down_revision = '20261203_idempotency_purge'
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('event',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=True),
    sa.Column('dedupe_key', sa.String(length=200), nullable=True),
    sa.Column('data_json', sa.Text(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_event_dedupe_key'))
    )
    op.create_index('ix_event_type_id', 'event', ['type', 'id'], unique=False)
    op.create_table('webhook_endpoint',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('event_types_json', sa.Text(), nullable=False),
    sa.Column('secret_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('last_event_id', sa.BigInteger(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('deleted_at_us', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoint'))
    )
    op.create_table('webhook_delivery',
    sa.Column('id', ID, autoincrement=True, nullable=False),
    sa.Column('endpoint_id', sa.String(length=40), nullable=False),
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at_us', sa.BigInteger(), nullable=False),
    sa.Column('leased_until_us', sa.BigInteger(), nullable=True),
    sa.Column('last_attempt_at_us', sa.BigInteger(), nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.String(length=200), nullable=True),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('finished_at_us', sa.BigInteger(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name=op.f('ck_webhook_delivery_status_known')),
    sa.ForeignKeyConstraint(['endpoint_id'], ['webhook_endpoint.id'], name=op.f('fk_webhook_delivery_endpoint_id_webhook_endpoint')),
    sa.ForeignKeyConstraint(['event_id'], ['event.id'], name=op.f('fk_webhook_delivery_event_id_event')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_delivery')),
    sa.UniqueConstraint('endpoint_id', 'event_id', name='uq_webhook_delivery_endpoint_event')
    )
    op.create_index('ix_webhook_delivery_status_next', 'webhook_delivery', ['status', 'next_attempt_at_us'], unique=False)
    op.create_index('ix_webhook_delivery_endpoint_wallet', 'webhook_delivery',
                    ['endpoint_id', 'wallet_id', 'status', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_webhook_delivery_endpoint_wallet', table_name='webhook_delivery')
    op.drop_index('ix_webhook_delivery_status_next', table_name='webhook_delivery')
    op.drop_table('webhook_delivery')
    op.drop_table('webhook_endpoint')
    op.drop_index('ix_event_type_id', table_name='event')
    op.drop_table('event')
