"""Initial ledger: configuration, payments, awards, postings, idempotency.

Postings are append-only: triggers refuse UPDATE and DELETE on both
PostgreSQL and SQLite, and CHECK constraints refuse a non-positive amount
or a posting from an account to itself.

Revision ID: 20261129_initial
Revises: 
Create Date: 2026-11-29 16:56:59.742368
"""
from alembic import op
import sqlalchemy as sa


revision = '20261129_initial'
down_revision = None
branch_labels = None
depends_on = None

# SHA-256 of nothing: the hash before the first posting.
GENESIS_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def upgrade() -> None:
    op.create_table('account',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=True),
    sa.Column('campaign_id', sa.String(length=64), nullable=True),
    sa.Column('merchant_id', sa.String(length=64), nullable=True),
    sa.Column('balance', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_account'))
    )
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_account_wallet_id'), ['wallet_id'], unique=False)

    op.create_table('api_key',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('merchant_id', sa.String(length=64), nullable=True),
    sa.Column('terminal_id', sa.String(length=64), nullable=True),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.CheckConstraint("role IN ('admin', 'finance', 'merchant', 'terminal')", name=op.f('ck_api_key_role_known')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_key')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_key_key_hash'))
    )
    op.create_table('campaign',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('current_version', sa.Integer(), nullable=False),
    sa.Column('issued_net', sa.BigInteger(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('issued_net >= 0', name=op.f('ck_campaign_issued_net_nonnegative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign'))
    )
    op.create_table('idempotency_key',
    sa.Column('terminal_id', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('response_status', sa.Integer(), nullable=False),
    sa.Column('response_json', sa.Text(), nullable=False),
    sa.Column('payment_id', sa.String(length=40), nullable=True),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('terminal_id', 'key', name=op.f('pk_idempotency_key'))
    )
    op.create_table('ledger_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_payment_sequence', sa.BigInteger(), nullable=False),
    sa.Column('last_posting_sequence', sa.BigInteger(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.Column('catalog_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_head'))
    )
    op.create_table('merchant',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('record_json', sa.Text(), nullable=False),
    sa.Column('bank_account_sealed', sa.LargeBinary(), nullable=True),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.Column('updated_at_us', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merchant'))
    )
    op.create_table('payment',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('type', sa.String(length=8), nullable=False),
    sa.Column('terminal_id', sa.String(length=64), nullable=False),
    sa.Column('merchant_id', sa.String(length=64), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('occurred_at_us', sa.BigInteger(), nullable=False),
    sa.Column('accepted_at_us', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('points_used', sa.BigInteger(), nullable=False),
    sa.Column('original_id', sa.String(length=40), nullable=True),
    sa.Column('refunded_amount', sa.BigInteger(), nullable=False),
    sa.Column('request_json', sa.Text(), nullable=False),
    sa.Column('response_json', sa.Text(), nullable=False),
    sa.CheckConstraint("type IN ('purchase', 'refund')", name=op.f('ck_payment_type_known')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_payment_amount_positive')),
    sa.CheckConstraint('points_used >= 0 AND points_used <= amount', name=op.f('ck_payment_points_used_within_amount')),
    sa.CheckConstraint('refunded_amount >= 0 AND refunded_amount <= amount', name=op.f('ck_payment_refund_within_amount')),
    sa.ForeignKeyConstraint(['original_id'], ['payment.id'], name=op.f('fk_payment_original_id_payment')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_payment')),
    sa.UniqueConstraint('sequence', name=op.f('uq_payment_sequence'))
    )
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.create_index('ix_payment_merchant_sequence', ['merchant_id', 'sequence'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_original_id'), ['original_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_payment_wallet_id'), ['wallet_id'], unique=False)

    op.create_table('posting',
    sa.Column('sequence', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('payment_id', sa.String(length=40), nullable=True),
    sa.Column('campaign_id', sa.String(length=64), nullable=True),
    sa.Column('campaign_version', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=24), nullable=False),
    sa.Column('debit_account_id', sa.String(length=200), nullable=False),
    sa.Column('credit_account_id', sa.String(length=200), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('posted_at_us', sa.BigInteger(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_posting_amount_positive')),
    sa.CheckConstraint('debit_account_id <> credit_account_id', name=op.f('ck_posting_accounts_differ')),
    sa.PrimaryKeyConstraint('sequence', name=op.f('pk_posting'))
    )
    with op.batch_alter_table('posting', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_posting_payment_id'), ['payment_id'], unique=False)

    op.create_table('wallet_window_usage',
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('window_key', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('points >= 0', name=op.f('ck_wallet_window_usage_points_nonnegative')),
    sa.PrimaryKeyConstraint('campaign_id', 'wallet_id', 'window_key', name=op.f('pk_wallet_window_usage'))
    )
    op.create_table('award',
    sa.Column('payment_id', sa.String(length=40), nullable=False),
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('campaign_version', sa.Integer(), nullable=False),
    sa.Column('wallet_id', sa.String(length=64), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('pending', sa.BigInteger(), nullable=False),
    sa.Column('clawed_back', sa.BigInteger(), nullable=False),
    sa.Column('capped_by', sa.String(length=16), nullable=True),
    sa.Column('window_key', sa.BigInteger(), nullable=False),
    sa.Column('credit_at_us', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('clawed_back >= 0 AND clawed_back <= points', name=op.f('ck_award_clawed_back_within_points')),
    sa.CheckConstraint('pending >= 0 AND pending <= points', name=op.f('ck_award_pending_within_points')),
    sa.CheckConstraint('points > 0', name=op.f('ck_award_points_positive')),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_award_campaign_id_campaign')),
    sa.ForeignKeyConstraint(['payment_id'], ['payment.id'], name=op.f('fk_award_payment_id_payment')),
    sa.PrimaryKeyConstraint('payment_id', 'campaign_id', name=op.f('pk_award'))
    )
    op.create_table('campaign_version',
    sa.Column('campaign_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('record_json', sa.Text(), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaign.id'], name=op.f('fk_campaign_version_campaign_id_campaign')),
    sa.PrimaryKeyConstraint('campaign_id', 'version', name=op.f('pk_campaign_version'))
    )
    op.create_table('terminal',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('merchant_id', sa.String(length=64), nullable=False),
    sa.Column('created_at_us', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['merchant_id'], ['merchant.id'], name=op.f('fk_terminal_merchant_id_merchant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_terminal'))
    )
    with op.batch_alter_table('terminal', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_terminal_merchant_id'), ['merchant_id'], unique=False)


    op.execute("INSERT INTO ledger_head (id, last_payment_sequence, last_posting_sequence, last_hash, catalog_version) "
               "VALUES (1, 0, 0, '" + GENESIS_HASH + "', 0)")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION posting_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'postings are append-only (% refused)', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER posting_append_only BEFORE UPDATE OR DELETE ON posting "
            "FOR EACH ROW EXECUTE FUNCTION posting_append_only()"
        )
        op.execute(
            "CREATE TRIGGER posting_no_truncate BEFORE TRUNCATE ON posting "
            "FOR EACH STATEMENT EXECUTE FUNCTION posting_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER posting_no_{verb.lower()} BEFORE {verb} ON posting "
                f"BEGIN SELECT RAISE(ABORT, 'postings are append-only ({verb} refused)'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS posting_no_truncate ON posting")
        op.execute("DROP TRIGGER IF EXISTS posting_append_only ON posting")
        op.execute("DROP FUNCTION IF EXISTS posting_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS posting_no_update")
        op.execute("DROP TRIGGER IF EXISTS posting_no_delete")
    with op.batch_alter_table('terminal', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_terminal_merchant_id'))

    op.drop_table('terminal')
    op.drop_table('campaign_version')
    op.drop_table('award')
    op.drop_table('wallet_window_usage')
    with op.batch_alter_table('posting', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_posting_payment_id'))

    op.drop_table('posting')
    with op.batch_alter_table('payment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_payment_wallet_id'))
        batch_op.drop_index(batch_op.f('ix_payment_original_id'))
        batch_op.drop_index('ix_payment_merchant_sequence')

    op.drop_table('payment')
    op.drop_table('merchant')
    op.drop_table('ledger_head')
    op.drop_table('idempotency_key')
    op.drop_table('campaign')
    op.drop_table('api_key')
    with op.batch_alter_table('account', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_account_wallet_id'))

    op.drop_table('account')
