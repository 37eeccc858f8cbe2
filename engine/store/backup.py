"""Backups that restore: a consistent copy of the ledger database and its restore into an empty one.

PostgreSQL: `pg_dump --format=custom` (one snapshot, so a backup taken under load is a state the
ledger was in at one instant: every chain, meter and balance consistent) and `pg_restore` in one
transaction. SQLite: the online backup API (pages copied under a read lock; writers wait for each
step, nothing is half-copied). Restoring refuses a database that holds any table, so a restore never
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

from engine.store.db import make_engine


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
        source = sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True)
        target = sqlite3.connect(partial)
        try:
            source.backup(target, pages=4096)
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
    """Restore `backup_file` (made by `backup` for the same kind of database) into the empty
    database at `database_url`; all or nothing."""
    if not backup_file.is_file():
        raise BackupError(f"no backup file at {backup_file}")
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        target_path = _sqlite_path(url)
        if target_path.exists() and target_path.stat().st_size > 0:
            _require_empty(database_url)
        with backup_file.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise BackupError(f"{backup_file} is not an SQLite backup")
        source = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        target = sqlite3.connect(target_path)
        try:
            check = source.execute("PRAGMA integrity_check").fetchone()
            if check is None or check[0] != "ok":
                raise BackupError(f"{backup_file} fails SQLite's integrity check")
            source.backup(target)
        finally:
            target.close()
            source.close()
    elif url.get_backend_name() == "postgresql":
        with backup_file.open("rb") as f:
            if f.read(5) != b"PGDMP":
                raise BackupError(f"{backup_file} is not a pg_dump custom-format backup")
        _require_empty(database_url)
        args, env = _libpq(url)
        _run(
            [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction", *args]
            + [str(backup_file)],
            env,
        )
    else:
        raise BackupError(f"no restore for {url.get_backend_name()} databases")
