"""An award's payment and campaign checked once per statement; two unused indexes gone.

An award names its payment and its campaign. As foreign keys, PostgreSQL checked each award
row by row: a query per key and a share lock on the payment row it names (a WAL record per
award, on a payment written a moment before in the same transaction): 2.0 s of 2.7 s to insert
180,000 awards. The same rule is now checked once per statement, over the statement's new
rows (a transition table): one index probe of the payment each, no lock, ~0.9 s for the same
rows. Payments and campaigns are never deleted by the engine; deleting one an award names is
refused (after waiting for the award writers in flight, so no award can name a row deleted
under it), and so is changing an award's payment or campaign to one that does not exist. The
functions run with the migrated schema first and `pg_temp` last, so no temporary table stands
in. On SQLite, triggers check the same per row (the engine's connections turn on
`recursive_triggers`, so a row a REPLACE removes meets the delete guard too).

Unused on the money path's reads and written on every payment: `ix_payment_wallet_id` (no
query reads payments by wallet: a wallet's history reads its postings) and
`ix_posting_payment_id` (no query reads postings by payment but the re-rate's whole-table
join); `ix_payment_original_id` keeps only refunds' entries (purchases have none to find).

Revision ID: 20261207_award_references
Revises: 20261206_usage_by_wallet
"""
import sqlalchemy as sa
from alembic import op

revision = '20261207_award_references'
down_revision = '20261206_usage_by_wallet'
branch_labels = None
depends_on = None

FOREIGN_KEYS = {'payment_id': 'payment', 'campaign_id': 'campaign'}
REFUSAL = 'an award names a payment or campaign that does not exist'

PG_UPGRADE = [
    # New awards: each statement's rows, one probe of the payment each (a LATERAL with LIMIT stays
    # a nested loop whatever the planner guesses of the transition table's size), and its few
    # distinct campaigns.
    f"""CREATE FUNCTION award_references_check() RETURNS trigger LANGUAGE plpgsql SET search_path = {{SCHEMA}}, pg_temp AS $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM added AS a
    LEFT JOIN LATERAL (SELECT 1 AS found FROM payment AS p WHERE p.id = a.payment_id LIMIT 1) AS p ON TRUE
    WHERE p.found IS NULL
  ) OR EXISTS (
    SELECT 1 FROM (SELECT DISTINCT campaign_id FROM added) AS a
    WHERE NOT EXISTS (SELECT 1 FROM campaign AS c WHERE c.id = a.campaign_id)
  ) THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = '{REFUSAL}';
  END IF;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER award_references_insert AFTER INSERT ON award REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION award_references_check()",
    # An award's payment or campaign changed (the engine never does): per row, only then.
    f"""CREATE FUNCTION award_references_check_row() RETURNS trigger LANGUAGE plpgsql SET search_path = {{SCHEMA}}, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM payment WHERE id = NEW.payment_id)
     OR NOT EXISTS (SELECT 1 FROM campaign WHERE id = NEW.campaign_id) THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = '{REFUSAL}';
  END IF;
  RETURN NEW;
END $$""",
    "CREATE TRIGGER award_references_update BEFORE UPDATE OF payment_id, campaign_id ON award "
    "FOR EACH ROW EXECUTE FUNCTION award_references_check_row()",
    # A payment or campaign an award names stays. SHARE on award waits for the transactions
    # writing awards to end and keeps new ones out until this one ends; the check then reads
    # with a snapshot taken after them.
    f"""CREATE FUNCTION award_referenced_keep() RETURNS trigger LANGUAGE plpgsql SET search_path = {{SCHEMA}}, pg_temp AS $$
BEGIN
  LOCK TABLE award IN SHARE MODE;
  IF TG_OP = 'TRUNCATE' THEN
    IF EXISTS (SELECT 1 FROM award) THEN
      RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = 'awards name rows of ' || TG_TABLE_NAME;
    END IF;
    RETURN NULL;
  END IF;
  IF (TG_TABLE_NAME = 'payment' AND EXISTS (SELECT 1 FROM award WHERE payment_id = OLD.id))
     OR (TG_TABLE_NAME = 'campaign' AND EXISTS (SELECT 1 FROM award WHERE campaign_id = OLD.id)) THEN
    RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = 'an award names this ' || TG_TABLE_NAME;
  END IF;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  RETURN NEW;
END $$""",
    *(
        statement
        for table in ('payment', 'campaign')
        for statement in (
            f"CREATE TRIGGER award_referenced_{table} BEFORE DELETE OR UPDATE OF id ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION award_referenced_keep()",
            f"CREATE TRIGGER award_referenced_{table}_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION award_referenced_keep()",
        )
    ),
]

PG_DOWNGRADE = [
    "DROP TRIGGER award_references_insert ON award",
    "DROP TRIGGER award_references_update ON award",
    "DROP TRIGGER award_referenced_payment ON payment",
    "DROP TRIGGER award_referenced_payment_truncate ON payment",
    "DROP TRIGGER award_referenced_campaign ON campaign",
    "DROP TRIGGER award_referenced_campaign_truncate ON campaign",
    "DROP FUNCTION award_references_check()",
    "DROP FUNCTION award_references_check_row()",
    "DROP FUNCTION award_referenced_keep()",
]

_NAMES_MISSING = (
    "NOT EXISTS (SELECT 1 FROM payment WHERE id = NEW.payment_id) "
    "OR NOT EXISTS (SELECT 1 FROM campaign WHERE id = NEW.campaign_id)"
)
SQLITE_UPGRADE = [
    f"CREATE TRIGGER award_references_insert BEFORE INSERT ON award WHEN {_NAMES_MISSING} "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
    f"CREATE TRIGGER award_references_update BEFORE UPDATE OF payment_id, campaign_id ON award "
    f"WHEN {_NAMES_MISSING} BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
    *(
        f"CREATE TRIGGER award_referenced_{table}_{name} BEFORE {verb} ON {table} "
        f"WHEN EXISTS (SELECT 1 FROM award WHERE {column} = OLD.id) "
        f"BEGIN SELECT RAISE(ABORT, 'an award names this {table}'); END"
        for column, table in FOREIGN_KEYS.items()
        for name, verb in (('delete', 'DELETE'), ('update', 'UPDATE OF id'))
    ),
]
SQLITE_TRIGGERS = ['award_references_insert', 'award_references_update'] + [
    f"award_referenced_{table}_{name}" for table in FOREIGN_KEYS.values() for name in ('delete', 'update')
]


def _foreign_key(column: str) -> str:
    return f'fk_award_{column}_{FOREIGN_KEYS[column]}'


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    # The functions read the tables of the schema migrated, never a temporary table of the same name.
    schema = op.get_bind().exec_driver_sql("SELECT quote_ident(current_schema())").scalar_one() if pg else ""
    with op.batch_alter_table('award', recreate='auto') as batch:
        for column in FOREIGN_KEYS:
            batch.drop_constraint(_foreign_key(column), type_='foreignkey')
    with op.batch_alter_table('payment') as batch:
        batch.drop_index('ix_payment_wallet_id')
        batch.drop_index('ix_payment_original_id')
        batch.create_index(
            'ix_payment_original_id',
            ['original_id'],
            postgresql_where=sa.text('original_id IS NOT NULL'),
            sqlite_where=sa.text('original_id IS NOT NULL'),
        )
    with op.batch_alter_table('posting') as batch:
        batch.drop_index('ix_posting_payment_id')
    for statement in PG_UPGRADE if pg else SQLITE_UPGRADE:
        op.execute(statement.replace("{SCHEMA}", schema))


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    if pg:
        for statement in PG_DOWNGRADE:
            op.execute(statement)
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    with op.batch_alter_table('posting') as batch:
        batch.create_index('ix_posting_payment_id', ['payment_id'])
    with op.batch_alter_table('payment') as batch:
        batch.drop_index('ix_payment_original_id')
        batch.create_index('ix_payment_original_id', ['original_id'])
        batch.create_index('ix_payment_wallet_id', ['wallet_id'])
    with op.batch_alter_table('award', recreate='auto') as batch:
        for column, table in FOREIGN_KEYS.items():
            batch.create_foreign_key(_foreign_key(column), table, [column], ['id'])
