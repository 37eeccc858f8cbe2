"""Bulk writes and keyed reads that are fast on PostgreSQL and plain on SQLite.

On PostgreSQL, inserts go through COPY and upserts and key look-ups pass
whole arrays as single parameters (`unnest`, `= ANY`), so a group of 1,000
transactions costs a handful of round trips and no per-row statement
parsing. On SQLite the same calls use ordinary executemany.
"""

from __future__ import annotations

from sqlalchemy import Table, bindparam, text
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session


def _is_pg(session: Session) -> bool:
    return session.bind.dialect.name == "postgresql"


def _raw(session: Session):
    return session.connection().connection.dbapi_connection


def insert_rows(session: Session, table: Table, rows: list[dict]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    if _is_pg(session):
        with _raw(session).cursor() as cursor:
            with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(tuple(row[c] for c in columns))
    else:
        session.execute(table.insert(), rows)


def upsert(session: Session, table: Table, rows: list[dict], key: list[str], pg_types: dict[str, str],
           add: str | None = None, replace: str | None = None) -> None:
    """Insert rows; on a key conflict add column `add` to the stored value, or replace column `replace`."""
    if not rows:
        return
    columns = list(rows[0])
    column = add or replace
    if _is_pg(session):
        value = f"{table.name}.{column} + EXCLUDED.{column}" if add else f"EXCLUDED.{column}"
        arrays = ", ".join(f"%s::{pg_types[c]}[]" for c in columns)
        sql = (
            f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {column} = {value}"
        )
        with _raw(session).cursor() as cursor:
            cursor.execute(sql, [[row[c] for row in rows] for c in columns])
    else:
        stmt = sqlite.insert(table)
        value = table.c[column] + stmt.excluded[column] if add else stmt.excluded[column]
        session.execute(stmt.on_conflict_do_update(index_elements=key, set_={column: value}), rows)


def select_where_in(session: Session, table: Table, columns: list[str], column: str, values: list,
                    pg_type: str = "text", extra: str = "") -> list[tuple]:
    """Rows of `table` whose `column` is one of `values` (plus an optional SQL condition)."""
    if not values:
        return []
    where = f" AND {extra}" if extra else ""
    if _is_pg(session):
        with _raw(session).cursor() as cursor:
            cursor.execute(
                f"SELECT {', '.join(columns)} FROM {table.name} WHERE {column} = ANY(%s::{pg_type}[]){where}",
                [list(values)],
            )
            return cursor.fetchall()
    stmt = text(f"SELECT {', '.join(columns)} FROM {table.name} WHERE {column} IN :values{where}").bindparams(
        bindparam("values", expanding=True)
    )
    return [tuple(r) for r in session.execute(stmt, {"values": list(values)})]
