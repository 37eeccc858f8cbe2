"""Alembic environment: runs the static migrations in versions/ online.

On SQLite the migrations run with foreign keys off, as SQLite prescribes for
a table rebuild (a batch-mode ALTER drops the old table, which foreign keys
from other tables would refuse), and `PRAGMA foreign_key_check` must find
nothing before the migration commits.
"""

from alembic import context

from engine.store.db import is_sqlite, make_engine
from engine.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    sqlite = is_sqlite(engine)
    with engine.connect() as connection:
        if sqlite:
            # Outside any transaction (SQLite ignores the pragma inside one), on the raw connection.
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:10]}")
        if sqlite:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")
    engine.dispose()


run_migrations_online()
