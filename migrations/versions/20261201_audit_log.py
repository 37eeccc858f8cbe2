"""Audit log (SPEC §9.5) and held bank account changes (SPEC §9.6).

`audit_log` is append-only: triggers refuse UPDATE and DELETE on both
PostgreSQL and SQLite (and TRUNCATE on PostgreSQL); `audit_head` holds the
chain's last sequence and hash and is the lock appends take. `merchant`
gains the pending bank account change (who made it, when), and settlement
lines the status `held_bank_change`.

Revision ID: 20261201_audit_log
Revises: 20261201_terminal_public_key
"""
import sqlalchemy as sa
from alembic import op

revision = '20261201_audit_log'
down_revision = '20261201_terminal_public_key'
branch_labels = None
depends_on = None

GENESIS_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
STATUSES_BEFORE = "payout_status IN ('pending', 'paid', 'failed', 'nothing_due')"
STATUSES_AFTER = "payout_status IN ('pending', 'paid', 'failed', 'nothing_due', 'held_bank_change')"


def upgrade() -> None:
    op.create_table('audit_head',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.Column('last_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_head'))
    )
    op.create_table('audit_log',
    sa.Column('sequence', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at_us', sa.BigInteger(), nullable=False),
    sa.Column('actor_key_id', sa.String(length=64), nullable=False),
    sa.Column('actor_role', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=200), nullable=False),
    sa.Column('before_json', sa.Text(), nullable=True),
    sa.Column('after_json', sa.Text(), nullable=True),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('sequence', name=op.f('pk_audit_log'))
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_at_us'), ['at_us'], unique=False)
        batch_op.create_index('ix_audit_log_target_sequence', ['target', 'sequence'], unique=False)
    op.execute("INSERT INTO audit_head (id, last_sequence, last_hash) VALUES (1, 0, '" + GENESIS_HASH + "')")

    with op.batch_alter_table('merchant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bank_change_by', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('bank_change_at_us', sa.BigInteger(), nullable=True))

    with op.batch_alter_table('settlement_line', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_settlement_line_payout_status_known'), type_='check')
        batch_op.create_check_constraint('payout_status_known', STATUSES_AFTER)

    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION 'the audit log is append-only (% refused)', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, 'the audit log is append-only ({verb} refused)'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")
    # Held lines become plain failed payouts: the amount stayed payable either way.
    op.execute("UPDATE settlement_line SET payout_status = 'failed' WHERE payout_status = 'held_bank_change'")
    with op.batch_alter_table('settlement_line', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_settlement_line_payout_status_known'), type_='check')
        batch_op.create_check_constraint('payout_status_known', STATUSES_BEFORE)
    # A plain ALTER TABLE … DROP COLUMN (SQLite 3.35+): a batch rebuild of `merchant` would
    # trip the foreign keys of its terminals and versions.
    op.drop_column('merchant', 'bank_change_at_us')
    op.drop_column('merchant', 'bank_change_by')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_target_sequence')
        batch_op.drop_index(batch_op.f('ix_audit_log_at_us'))
    op.drop_table('audit_log')
    op.drop_table('audit_head')
