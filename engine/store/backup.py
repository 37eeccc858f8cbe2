"""Backups that restore: a consistent copy of the ledger database and its restore into an empty one.

PostgreSQL: `pg_dump --format=custom` (one snapshot, so a backup taken under load is a state the
ledger was in at one instant: every chain, meter and balance consistent) and `pg_restore` in one
transaction. SQLite: the online backup API in one step (one read snapshot under WAL: the API
goes on committing, nothing is half-copied). Restoring refuses a database that holds any table, so a restore never
merges two ledgers; `setapay reconcile` on the copy then proves it whole (chains, meters, balances,
signed chain heads, a full re-rate).

The password of a PostgreSQL URL reaches the tools through PGPASSWORD, never their command line.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import URL, inspect, make_url

from engine.store.db import MIGRATIONS_DIR, make_engine, new_ledger_id


class BackupError(Exception):
    """A backup or restore that cannot be done; its message says why (never a secret)."""


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database has nothing to back up")
    return Path(url.database)


def _libpq(url: URL) -> tuple[list[str], dict[str, str]]:
    """Connection options for pg_dump/pg_restore, and the environment carrying the password."""
    args = ["--host", url.host or "127.0.0.1", "--port", str(url.port or 5432), "--dbname", url.database or ""]
    if url.username:
        args += ["--username", url.username]
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return args, env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} is not installed (Debian: postgresql-client)")
    return path


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {done.stderr.strip()[-2000:]}")


def backup(database_url: str, out: Path) -> None:
    """Write a consistent copy of the database at `database_url` to `out` (which must not exist)."""
    url = make_url(database_url)
    if out.exists():
        raise BackupError(f"{out} exists; a backup never overwrites a file")
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)
    if url.get_backend_name() == "sqlite":
        path = _sqlite_path(url)
        if not path.is_file():
            raise BackupError(f"no database file at {path}")
        if not out.parent.is_dir():
            raise BackupError(f"no directory {out.parent} to write the backup in")
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        target = sqlite3.connect(partial)
        try:
            # One step: under WAL the copy reads one snapshot while the API goes on committing. In
            # steps of a few thousand pages, every commit between two steps restarted the copy
            # from its first page, and a busy ledger's backup never ended (helper-82's probe).
            source.backup(target)
        finally:
            target.close()
            source.close()
    elif url.get_backend_name() == "postgresql":
        args, env = _libpq(url)
        _run([_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges", "--file", str(partial), *args], env)
    else:
        raise BackupError(f"no backup for {url.get_backend_name()} databases")
    partial.rename(out)  # only a finished backup carries the name asked for


def _require_empty(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise BackupError(f"the target database is not empty ({len(tables)} tables); restore only into an empty one")


def restore(backup_file: Path, database_url: str) -> None:
    """Restore `backup_file` (made by `backup` for the same kind of database, by this release or an
    earlier one) into the empty database at `database_url`; all or nothing. The restored ledger
    gets a new `ledger_id`: it is another incarnation, and what was kept beside the old one (the
    answers cached in Redis) must not be taken for its own."""
    if not backup_file.is_file():
        raise BackupError(f"no backup file at {backup_file}")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        target_path = _sqlite_path(url)
        existed = target_path.exists()
        if existed and target_path.stat().st_size > 0:
            _require_empty(database_url)
        with backup_file.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise BackupError(f"{backup_file} is not an SQLite backup")
        source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        try:
            try:
                check = source.execute("PRAGMA integrity_check").fetchone()
                revision = source.execute("SELECT version_num FROM alembic_version").fetchone()
            except sqlite3.DatabaseError as error:
                raise BackupError(f"{backup_file} is not a whole SQLite backup ({error})") from None
            if check is None or check[0] != "ok":
                raise BackupError(f"{backup_file} fails SQLite's integrity check")
            _check_revision(backup_file, revision[0] if revision else None)
            target = sqlite3.connect(target_path)
            try:
                source.backup(target)
            except BaseException:
                target.close()
                if not existed:
                    target_path.unlink(missing_ok=True)  # no empty file left to be taken for a ledger
                raise
            target.close()
        finally:
            source.close()
    elif url.get_backend_name() == "postgresql":
        with backup_file.open("rb") as f:
            if f.read(5) != b"PGDMP":
                raise BackupError(f"{backup_file} is not a pg_dump custom-format backup")
        _require_empty(database_url)
        _check_revision(backup_file, _pg_dump_revision(backup_file))
        args, env = _libpq(url)
        _run(
            [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", *args]
            + [str(backup_file)],
            env,
        )
    else:
        raise BackupError(f"no restore for {url.get_backend_name()} databases")
    _new_incarnation(database_url)


def _new_incarnation(database_url: str) -> None:
    """A new `ledger_id` for the restored ledger (a backup from before the column has none yet: the
    migration that adds it makes one when the copy is next upgraded)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            if "ledger_id" in {c["name"] for c in inspect(connection).get_columns("ledger_head")}:
                connection.exec_driver_sql(
                    "UPDATE ledger_head SET ledger_id = %s"
                    if engine.dialect.name == "postgresql"
                    else "UPDATE ledger_head SET ledger_id = ?",
                    (new_ledger_id(),),
                )
    finally:
        engine.dispose()


def _pg_dump_revision(backup_file: Path) -> str | None:
    """The migration revision a pg_dump custom-format backup holds (its `alembic_version` row),
    read by `pg_restore` into text, without a database."""
    done = subprocess.run(
        [_tool("pg_restore"), "--data-only", "--table=alembic_version", "--file=-", str(backup_file)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise BackupError(f"{backup_file} cannot be read by pg_restore: {done.stderr.strip()[-500:]}")
    lines = done.stdout.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("COPY ") and "alembic_version" in line and i + 1 < len(lines):
            value = lines[i + 1].strip()
            return None if value == "\\." else value
    return None


def _check_revision(backup_file: Path, revision: str | None) -> None:
    """A backup this release can upgrade: its schema's revision is one of this release's
    migrations. A backup from a newer release would restore, then fail every command after it."""
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}
    if revision not in known:
        raise BackupError(
            f"{backup_file} holds schema revision {revision!r}, which this release does not know "
            "(a backup of a newer release, or not a ledger): restore it with the release that made it"
        )
