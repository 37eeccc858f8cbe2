"""Bulk writes and keyed reads that are fast on PostgreSQL and plain on SQLite.

On PostgreSQL, writes and key look-ups pass whole arrays as single binary
parameters (`unnest`, `= ANY`), and a unit of work's writes go out as one
pipeline, so a group of 1,000 transactions costs a handful of round trips
and no per-row statement parsing. On SQLite the same calls are plain SQL
text run on the driver's own connection of the session's transaction
(`sqlite_run`: executemany for writes; for keyed reads `IN` lists and a
`VALUES` list joined to the table), so the group's row reads and writes go
through neither SQLAlchemy's compiler nor its result machinery.
"""

from __future__ import annotations

import functools
import operator
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from engine.store.db import psycopg_connection

if TYPE_CHECKING:
    import psycopg

# A row to write: column name -> value.
Values = Mapping[str, Any]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def raw_connection(session: Session) -> psycopg.Connection[tuple[Any, ...]]:
    """The psycopg connection of `session`'s transaction (PostgreSQL), for statements sent
    without SQLAlchemy's compilation and flush."""
    return psycopg_connection(session.connection())


def sqlite_run(session: Session, sql: str, params: Any = (), many: bool = False) -> list[tuple[Any, ...]]:
    """Run `sql` (once, or for each of `params` when `many`) on the sqlite3 connection of
    `session`'s transaction (begun by SQLAlchemy as every transaction is: `engine.store.db`) and
    return its rows. SQLAlchemy's `exec_driver_sql` costs ~15 us more a write and ~30 a read (its
    result's metadata), ~14 statements a group; a failure is raised as SQLAlchemy would raise it
    (`DBAPIError.instance`: an `OperationalError` stays a 503, `db.UNREACHABLE`)."""
    connection = session.connection()
    raw = cast("sqlite3.Connection", connection.connection.driver_connection)
    try:
        return (raw.executemany(sql, params) if many else raw.execute(sql, params)).fetchall()
    except sqlite3.Error as failure:
        raise DBAPIError.instance(
            sql, params, failure, sqlite3.Error, hide_parameters=connection.engine.hide_parameters, ismulti=many
        ) from failure


def driver_run(session: Session, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run one statement written with `%s` placeholders on the driver connection of `session`'s
    transaction and return its rows (none for a statement that returns none): psycopg's on
    PostgreSQL (as `raw_connection`), sqlite3's on SQLite (`sqlite_run`, `?` placeholders).
    For the few small statements every unit of work sends, past the ORM and SQLAlchemy's
    compiler."""
    if _is_pg(session):
        cursor = raw_connection(session).execute(sql, params)
        return cursor.fetchall() if cursor.description is not None else []
    return sqlite_run(session, _qmark(sql), tuple(params))


@functools.lru_cache(maxsize=64)
def _qmark(sql: str) -> str:
    return sql.replace("%s", "?")


def select_where_tuples(
    session: Session, table: Table, columns: list[str], key: list[str], tuples: Sequence[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Rows of `table` whose `key` columns equal one of `tuples` (`ReadBatch.where_tuples`)."""
    reads = ReadBatch(session)
    read = reads.where_tuples(table, columns, key, tuples)
    reads.run()
    return read.rows


class Read:
    """One read of a `ReadBatch`: its rows once the batch has run."""

    __slots__ = ("pg", "sqlite", "rows")

    def __init__(self, pg: tuple[str, list[Any]] | None, sqlite: list[tuple[str, tuple[Any, ...]]]) -> None:
        self.pg = pg  # the statement and its parameters on PostgreSQL; None: nothing to read
        self.sqlite = sqlite  # the statements on SQLite (chunked under its parameter limit)
        self.rows: list[tuple[Any, ...]] = []


class ReadBatch:
    """Reads that do not depend on one another, sent together: on PostgreSQL in one pipeline
    (one round trip however many), on SQLite one after another. Each call returns a `Read`
    whose `rows` are filled by `run()`; a read of no keys costs no statement at all."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pg = _is_pg(session)
        self.reads: list[Read] = []
        self.settings: list[str] = []  # statements without rows that go first (PostgreSQL only)
        self.closings: list[str] = []  # and last

    def _add(self, read: Read) -> Read:
        self.reads.append(read)
        return read

    def setting(self, sql: str) -> None:
        """A statement without rows sent ahead of the reads on PostgreSQL, e.g. `SET TRANSACTION`."""
        if self.pg:
            self.settings.append(sql)

    def closing(self, sql: str) -> None:
        """A statement without rows sent after the reads on PostgreSQL, e.g. `ROLLBACK`."""
        if self.pg:
            self.closings.append(sql)

    def query(self, sql: str) -> Read:
        """A fixed statement without parameters, the same SQL on both databases."""
        return self._add(Read((sql, []), [(sql, ())]))

    def where_in(
        self,
        table: Table,
        columns: Sequence[str],
        column: str,
        values: Sequence[object],
        pg_type: str = "text",
        extra: str = "",
    ) -> Read:
        """Rows of `table` whose `column` is one of `values` (plus an optional SQL condition)."""
        if not values:
            return Read(None, [])
        where = f" AND {extra}" if extra else ""
        select = f"SELECT {', '.join(columns)} FROM {table.name} WHERE {column}"
        if self.pg:
            array_sql, array_value = _array(pg_type, values)
            return self._add(Read((f"{select} = ANY({array_sql}){where}", [array_value]), []))
        statements = [
            (f"{select} IN ({', '.join('?' * len(chunk))}){where}", tuple(chunk))
            for chunk in _chunks(list(values), SQLITE_VARIABLES_MAX)
        ]
        return self._add(Read(None, statements))

    def where_each(
        self,
        table: Table,
        columns: Sequence[str],
        column: str,
        values: Sequence[object],
        among: Mapping[str, Sequence[object]] | None = None,
    ) -> Read:
        """Rows of `table` whose `column` is one of `values` and, for each (column, allowed) of
        `among`, whose column is one of `allowed`: every row of each value, not at most one.

        On PostgreSQL one index probe per value (a LATERAL subquery over an index that leads with
        `column`, `among` checked on the rows it finds): a thousand values cost about a thousand
        short index walks, where `= ANY` over the same index plans a bitmap scan of every
        matching page (3.3 ms against 16.7 ms for the usage rows of 917 wallets in a table of
        151,000). The plan of each probe follows the table's statistics."""
        if not values:
            return Read(None, [])
        among = dict(among or {})
        if any(not allowed for allowed in among.values()):
            return Read(None, [])
        if self.pg:
            array_sql, array_value = _array(_pg_type(table, column), values)
            conditions, params = [], [array_value]
            for name, allowed in among.items():
                allowed_sql, allowed_value = _array(_pg_type(table, name), allowed)
                conditions.append(f"s.{name} = ANY({allowed_sql})")
                params.append(allowed_value)
            # Each OFFSET 0 fences a subquery: the outer keeps the probe a nested loop (not a join
            # hashing the table), the inner keeps `among` out of the index condition (an array
            # there is one index descent per element: 8 a wallet for 4 campaigns and 2 windows).
            sql = (
                f"SELECT {', '.join('t.' + c for c in columns)} FROM unnest({array_sql}) AS v(value) "
                f"CROSS JOIN LATERAL (SELECT * FROM (SELECT {', '.join(columns)} FROM {table.name} "
                f"WHERE {column} = v.value OFFSET 0) AS s WHERE {' AND '.join(conditions) or 'TRUE'} OFFSET 0) AS t"
            )
            return self._add(Read((sql, params), []))
        fixed = [(name, list(allowed)) for name, allowed in among.items()]
        where = "".join(f" AND {name} IN ({', '.join('?' * len(allowed))})" for name, allowed in fixed)
        fixed_params = tuple(v for _, allowed in fixed for v in allowed)
        select = f"SELECT {', '.join(columns)} FROM {table.name} WHERE {column} IN"
        statements = [
            (f"{select} ({', '.join('?' * len(chunk))}){where}", (*chunk, *fixed_params))
            for chunk in _chunks(list(values), SQLITE_VARIABLES_MAX - len(fixed_params))
        ]
        return self._add(Read(None, statements))

    def where_tuples(self, table: Table, columns: list[str], key: list[str], tuples: Sequence[tuple[Any, ...]]) -> Read:
        """Rows of `table` whose `key` columns equal one of `tuples`. `key` is the primary key
        or a unique one (a partial one too: the key's equality implies its `IS NOT NULL`): at
        most one row per tuple (`tuples` distinct).

        On PostgreSQL one index probe per tuple (a LATERAL subquery with LIMIT 1), so the
        look-up costs the same however large the table grows; as a plain join the planner
        hashes the whole table once it guesses that cheaper, which it does for tables of tens
        of thousands of rows and a thousand keys (30 ms against 7 ms, and growing with it). On
        SQLite a join of the tuples (a VALUES list) to the table, which SQLite serves by one
        index search per tuple; `(key) IN (VALUES …)` of two tuples or more it served by reading
        the whole table (or index): 4.5 ms against 0.08 ms at 50,000 rows."""
        if not tuples:
            return Read(None, [])
        if self.pg:
            arrays = [_array(_pg_type(table, k), [t[i] for t in tuples]) for i, k in enumerate(key)]
            on = " AND ".join(f"t.{k} = v.{k}" for k in key)
            sql = (
                f"SELECT {', '.join('t.' + c for c in columns)} "
                f"FROM unnest({', '.join(a for a, _ in arrays)}) AS v({', '.join(key)}) "
                f"CROSS JOIN LATERAL (SELECT {', '.join(columns)} FROM {table.name} AS t WHERE {on} LIMIT 1) AS t"
            )
            return self._add(Read((sql, [value for _, value in arrays]), []))
        row = "(" + ", ".join("?" * len(key)) + ")"
        on = " AND ".join(f"t.{k} = v.column{i + 1}" for i, k in enumerate(key))
        statements = [
            (
                f"SELECT {', '.join('t.' + c for c in columns)} "
                f"FROM (VALUES {', '.join([row] * len(chunk))}) AS v JOIN {table.name} AS t ON {on}",
                tuple(v for t in chunk for v in t),
            )
            for chunk in _chunks(list(tuples), SQLITE_VARIABLES_MAX // len(key))
        ]
        return self._add(Read(None, statements))

    def run(self) -> None:
        """Run every statement queued so far and fill each read's rows."""
        reads, self.reads = self.reads, []
        settings, self.settings = self.settings, []
        closings, self.closings = self.closings, []
        if not self.pg:
            for read in reads:
                read.rows = [row for sql, params in read.sqlite for row in sqlite_run(self.session, sql, params)]
            return
        if reads or settings or closings:  # nothing to send: not even the connection
            found = pipelined(raw_connection(self.session), [r.pg for r in reads], settings, closings)  # type: ignore[misc]
            for read, rows in zip(reads, found):
                read.rows = rows


def pipelined(
    raw: psycopg.Connection[tuple[Any, ...]],
    reads: Sequence[tuple[str, Sequence[Any]]],
    before: Sequence[str] = (),
    after: Sequence[str] = (),
) -> list[list[tuple[Any, ...]]]:
    """Each of `reads` (statement, parameters) run on PostgreSQL in one round trip, its rows;
    `before` and `after`, statements without rows (`SET …`, `BEGIN …`, `ROLLBACK`), around
    them in the same pipeline. A lone read goes without a pipeline; nothing, without a round trip."""
    if not (reads or before or after):
        return []
    if len(reads) == 1 and not (before or after):
        with raw.cursor() as cursor:
            cursor.execute(*reads[0])
            return [cursor.fetchall()]
    cursors = []
    with raw.pipeline():  # their results come back together when the pipeline ends
        for sql in before:
            raw.execute(sql)
        for sql, params in reads:
            cursor = raw.cursor()
            cursor.execute(sql, params)
            cursors.append(cursor)
        for sql in after:
            raw.execute(sql)
    found = []
    for cursor in cursors:
        found.append(cursor.fetchall())
        cursor.close()
    return found


# SQLite's limit on the parameters of one statement (SQLITE_MAX_VARIABLE_NUMBER is 32,766 since 3.32).
SQLITE_VARIABLES_MAX = 30_000


def _chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def stream(session: Session, sql: str, chunk_rows: int = 50_000) -> Iterator[Sequence[Any]]:
    """Rows of a read-only query as plain tuples, streamed in large chunks.

    For whole-ledger walks (reconciliation): on PostgreSQL a server-side cursor
    without any ORM row processing, which is most of the cost at a million rows.
    """
    if _is_pg(session):
        raw = raw_connection(session)
        with raw.cursor(name="setapay_stream") as cursor:
            cursor.itersize = chunk_rows
            cursor.execute(sql)
            yield from cursor
        return
    yield from session.connection().exec_driver_sql(sql)


_PG_TYPES = {
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "VARCHAR": "text",
    "TEXT": "text",
    "BLOB": "bytea",
    "BYTEA": "bytea",
    "BOOLEAN": "boolean",
}


def _marks(columns: list[str]) -> str:
    return ", ".join("?" * len(columns))


# Arrays of text or integers without NULLs or empty strings travel as one text parameter,
# their values joined by the unit separator (which no id, key or number contains: checked
# by counting) and split by the server: psycopg dumps a list parameter element by element
# in Python, several times slower than one join. Any other array goes as a binary array.
_SEPARATOR = "\x1f"
_SPLITTABLE = ("text", "bigint", "integer")


def _array(pg_type: str, values: Sequence[Any]) -> tuple[str, Any]:
    """The SQL of an array parameter of `pg_type` holding `values`, and the parameter."""
    if pg_type in _SPLITTABLE and values:
        # Every value's type exactly str (non-empty) or int, checked by the set of their types (no
        # Python-level call a value).
        if pg_type == "text":
            joined = _SEPARATOR.join(values) if set(map(type, values)) == {str} and "" not in values else None
        else:
            joined = _SEPARATOR.join(map(str, values)) if set(map(type, values)) == {int} else None
        if joined is not None and joined.count(_SEPARATOR) == len(values) - 1:
            return f"string_to_array(%s, E'\\x1f')::{pg_type}[]", joined
    return f"%b::{pg_type}[]", list(values)


@functools.cache
def _pg_type(table: Table, column: str) -> str:
    compiled = str(table.c[column].type.compile(dialect=sqlite.dialect())).split("(")[0].upper()
    return _PG_TYPES[compiled]


# Below this many rows an insert goes as array parameters inside the pipeline (one round trip
# for the whole batch); from it on by COPY, whose own round trip the cheaper dumping repays.
COPY_ROWS_MIN = 100


class WriteBatch:
    """The writes of one unit of work, sent to PostgreSQL in a few round trips.

    New rows go out by binary COPY (each value dumped by psycopg's C dumpers,
    several times cheaper than the same rows as array parameters), unless they are
    few (`COPY_ROWS_MIN`): a group commit of a handful of single posts then stays one
    round trip while it holds the sequencer lock; updates and
    upserts pass their rows as arrays (`unnest`), the statements between two
    COPYs in one pipeline. Statements run in the order they were added. On
    SQLite the statements run one by one as they are added.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pg = _is_pg(session)
        # (sql, array parameters) of a statement, or (COPY sql, (column types, rows)) of new rows.
        self.statements: list[tuple[str, Any]] = []

    @staticmethod
    def _unnest(table: Table, columns: Sequence[str], values: Sequence[Sequence[Any]]) -> tuple[str, list[Any]]:
        """`unnest(...)` of one array parameter per column (`values[i]`: column i's values)."""
        arrays = [_array(_pg_type(table, c), column) for c, column in zip(columns, values)]
        return f"unnest({', '.join(a for a, _ in arrays)})", [value for _, value in arrays]

    def _arrays(self, table: Table, columns: list[str], rows: Sequence[Values]) -> tuple[str, list[Any]]:
        return self._unnest(table, columns, [[row[c] for row in rows] for c in columns])

    def insert(self, table: Table, rows: Sequence[Values]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        values = operator.itemgetter(*columns)  # a tuple per row, unless there is one column
        self.insert_tuples(
            table, columns, list(map(values, rows)) if len(columns) > 1 else [(value,) for value in map(values, rows)]
        )

    def insert_tuples(self, table: Table, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows given as tuples of `columns`' values."""
        if not rows:
            return
        names = ", ".join(columns)
        if not self.pg:
            sqlite_run(self.session, f"INSERT INTO {table.name} ({names}) VALUES ({_marks(list(columns))})", rows, True)
            return
        if len(rows) < COPY_ROWS_MIN:  # a few rows ride in the pipeline instead of a round trip of their own
            source, params = self._unnest(table, columns, list(zip(*rows)))
            self.statements.append((f"INSERT INTO {table.name} ({names}) SELECT * FROM {source}", params))
            return
        types = [_pg_type(table, c) for c in columns]
        self.statements.append((f"COPY {table.name} ({names}) FROM STDIN (FORMAT BINARY)", (types, rows)))

    def upsert(
        self, table: Table, rows: Sequence[Values], key: list[str], add: str | None = None, replace: str | None = None
    ) -> None:
        """Insert rows; on a key conflict add to column `add`, or replace column `replace`; with
        neither, a row whose key is taken is left out (`DO NOTHING`)."""
        if not rows:
            return
        columns = list(rows[0])
        self.upsert_columns(table, columns, [[row[c] for row in rows] for c in columns], key, add, replace)

    def upsert_columns(
        self,
        table: Table,
        columns: Sequence[str],
        values: Sequence[Sequence[Any]],
        key: list[str],
        add: str | None = None,
        replace: str | None = None,
    ) -> None:
        """`upsert` of rows given as columns: `values[i]` holds column `columns[i]`'s values."""
        if not values or not values[0]:
            return
        column = add or replace
        columns = list(columns)
        if column is None:
            conflict = f"ON CONFLICT ({', '.join(key)}) DO NOTHING"
        else:
            sql_value = f"{table.name}.{column} + EXCLUDED.{column}" if add else f"EXCLUDED.{column}"
            conflict = f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {column} = {sql_value}"
        if not self.pg:
            sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({_marks(columns)}) {conflict}"
            sqlite_run(self.session, sql, list(zip(*values)), True)
            return
        source, params = self._unnest(table, columns, values)
        self.statements.append(
            (f"INSERT INTO {table.name} ({', '.join(columns)}) SELECT * FROM {source} {conflict}", params)
        )

    def update(self, table: Table, key: list[str], rows: Sequence[Values], add: tuple[str, ...] = ()) -> None:
        """Set (or, for columns in `add`, increase) columns of the rows matching `key`.

        Rows must be unique by key: each is updated once. Rows that set different columns go in
        one statement per set of columns, in the order each set first appears.
        """
        if not rows:
            return
        assert len({tuple(r[k] for k in key) for r in rows}) == len(rows), "update rows must be unique by key"
        by_columns: dict[tuple[str, ...], list[Values]] = {}
        for row in rows:
            by_columns.setdefault(tuple(sorted(row)), []).append(row)
        for same in by_columns.values():
            self._update(table, key, same, add)

    def _update(self, table: Table, key: list[str], rows: Sequence[Values], add: tuple[str, ...]) -> None:
        columns = list(rows[0])
        setters = [c for c in columns if c not in key]
        if not self.pg:
            assignments = ", ".join(f"{c} = {c} + ?" if c in add else f"{c} = ?" for c in setters)
            where = " AND ".join(f"{k} = ?" for k in key)
            self._executemany(f"UPDATE {table.name} SET {assignments} WHERE {where}", rows, setters + key)
            return
        source, params = self._arrays(table, columns, rows)
        assignments = ", ".join(f"{c} = t.{c} + v.{c}" if c in add else f"{c} = v.{c}" for c in setters)
        where = " AND ".join(f"t.{k} = v.{k}" for k in key)
        self.statements.append(
            (
                f"UPDATE {table.name} AS t SET {assignments} FROM {source} AS v({', '.join(columns)}) WHERE {where}",
                params,
            )
        )

    def _executemany(self, sql: str, rows: Sequence[Values], columns: list[str] | None = None) -> None:
        names = columns or list(rows[0])
        sqlite_run(self.session, sql, [tuple(row[c] for c in names) for row in rows], True)

    def send(self) -> None:
        if not self.statements:
            return
        raw = raw_connection(self.session)
        with raw.cursor() as cursor:
            pending: list[tuple[str, Any]] = []  # the statements since the last COPY

            def send_pending() -> None:
                if pending:
                    with raw.pipeline():  # one round trip for all of them
                        for queued in pending:
                            cursor.execute(*queued)
                    pending.clear()

            for sql, params in self.statements:
                if not sql.startswith("COPY"):
                    pending.append((sql, params))
                    continue
                send_pending()
                types, rows = params
                with cursor.copy(sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
            send_pending()
        self.statements.clear()
