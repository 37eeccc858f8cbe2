"""Database engines for SQLite (embedded) and PostgreSQL, and migrations.

SQLite runs with WAL and every transaction BEGIN IMMEDIATE, so the one
writer is decided when a transaction starts rather than by a failed lock
upgrade halfway through. PostgreSQL runs through psycopg 3.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import psycopg
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry

if TYPE_CHECKING:
    from alembic.config import Config


class Unreachable(RuntimeError):
    """The database could not be reached through a process of ours: a committer child
    (`engine.store.committer_process`) reported it, or was lost before it answered. The message is
    an error's class name only."""


# A database that cannot be reached, or a connection that broke: SQLAlchemy's errors, and
# psycopg's own for what runs on the driver connection (pipelines, COPY), which SQLAlchemy
# does not wrap, and ours. The API answers them 503 `service_unavailable`, which a client may retry.
UNREACHABLE: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    Unreachable,
)

CONNECT_TIMEOUT_S = 5  # PostgreSQL: how long a new connection may take before it fails (libpq's minimum is 2)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent.parent / "migrations"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def psycopg_connection(connection: Connection) -> psycopg.Connection[tuple[Any, ...]]:
    """The psycopg connection under a PostgreSQL `connection` (the caller checked the dialect),
    for what SQLAlchemy does not expose: COPY, binary array parameters, pipelines. Its transaction
    is begun first, as SQLAlchemy begins one (its "begin" event, which `one_snapshot`'s connections
    import their snapshot in), so what is sent on it raw is in that transaction, not one psycopg
    began by itself."""
    if not connection.in_transaction():
        connection.begin()
    return cast("psycopg.Connection[tuple[Any, ...]]", connection.connection.dbapi_connection)


class HeldConnection:
    """One connection of `engine` kept open for a thread that opens a short session again and
    again (the committer's snapshots, `Ledger.decide_ahead`; the writer child's writes,
    `engine.store.write_process`): no pool checkout, ping, reset and check-in a group (measured: a
    group of one ~0.3–0.5 ms less CPU in all, in the writer child and PostgreSQL; `docs/BENCHMARKS.md`).

    A session that raises anything discards the connection (invalidated: closed, and a
    transaction it held rolled back by the server), and the next session connects anew: a
    connection broken while held (the database restarted) fails one session, whose caller
    recovers as from any failed session (a group is then posted under the lock). While one
    thread holds the connection, another one's session comes from the pool as before."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self.connects = 0  # connections made (the first one included)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        if not self._lock.acquire(blocking=False):
            with Session(self.engine) as pooled:
                yield pooled
            return
        try:
            connection = self._connection
            if connection is None or connection.closed or connection.invalidated:
                connection = self._connection = self.engine.connect()
                self.connects += 1
            try:
                with Session(bind=connection) as session:
                    yield session
            except BaseException:
                self._connection = None
                with contextlib.suppress(Exception):
                    connection.invalidate()
                with contextlib.suppress(Exception):
                    connection.close()
                raise
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    self._connection.close()
                self._connection = None


READ_ONLY_OPTION = "setapay_read_only"


def reader(engine: Engine) -> Engine:
    """`engine` for transactions that only read (same pool), each of them one snapshot: on SQLite
    they begin DEFERRED instead of IMMEDIATE (under WAL a snapshot, taken at the first read), so a
    per-request read (a key, a terminal's signing key) never queues behind the ledger's writer; on
    PostgreSQL they are `REPEATABLE READ, READ ONLY`, so the statements of one read (a budget's
    meter and its postings, a wallet's accounts and its lots) agree with each other while groups
    commit between them (READ COMMITTED gave each statement its own snapshot: helper-77's probe
    saw issued − clawed back differ from the meter under load)."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(
            **{READ_ONLY_OPTION: True}, isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    return engine.execution_options(**{READ_ONLY_OPTION: True})


@contextlib.contextmanager
def one_snapshot(engine: Engine) -> Iterator[Engine]:
    """`engine` whose every transaction, on every connection, reads the one snapshot taken on
    entry, for a reader that spans many statements and connections (the reconciliation: postings
    streamed, then counted; payments, then the head; the re-rate's own connections). On PostgreSQL a
    `REPEATABLE READ, READ ONLY` transaction is held open for the block and its snapshot exported;
    each connection's transaction imports it (`SET TRANSACTION SNAPSHOT`) before its first query.
    On SQLite, `reader(engine)`: each transaction is a snapshot of its own."""
    if engine.dialect.name != "postgresql":
        yield reader(engine)
        return
    follower = reader(engine)
    with reader(engine).connect() as leader:
        snapshot = leader.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()

        def _import(connection: Connection) -> None:
            connection.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")

        event.listen(follower, "begin", _import)
        yield follower


def ledger_id(engine: Engine) -> str:
    """This database's ledger incarnation (`ledger_head.ledger_id`; a restore makes a new one)."""
    with engine.connect() as connection:
        return str(connection.exec_driver_sql("SELECT ledger_id FROM ledger_head WHERE id = 1").scalar_one() or "")


def new_ledger_id() -> str:
    return secrets.token_hex(16)


class Busy(RuntimeError):
    """`alone(..., wait=False)` found the work running already, in this process or another."""


_MEMORY_LOCKS: dict[tuple[str, int], threading.Lock] = {}
_MEMORY_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def alone(engine: Engine, key: int, *, wait: bool) -> Iterator[None]:
    """Run the block as the only holder of `key` on `engine`'s database, across every process that
    uses it: a PostgreSQL session advisory lock on a connection of its own (autocommit: no
    transaction is held open for the block); on SQLite an exclusive `flock` of a file beside the
    database file (`<file>.lock-<key>`), or a process lock for an in-memory database. Either is let go
    when the holder's connection or process ends, however it ends. `wait=False` raises `Busy` at
    once instead of waiting for the holder."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            if wait:
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({key:d})")
            elif not connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({key:d})").scalar_one():
                raise Busy(f"{key:#x}")
            try:
                yield
            finally:
                # The pool keeps the connection: a session lock would outlive the block.
                try:
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key:d})")
                except UNREACHABLE:
                    connection.invalidate()  # the lock ended with the session
        return
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        with _MEMORY_LOCKS_GUARD:
            lock = _MEMORY_LOCKS.setdefault((str(engine.url), key), threading.Lock())
        if not lock.acquire(blocking=wait):
            raise Busy(f"{key:#x}")
        try:
            yield
        finally:
            lock.release()
        return
    # Read-only (flock needs no more): a lock file another user made first (an operator's
    # `setapay reconcile` as root) still opens for the API's user, who may read it.
    held = os.open(f"{database}.lock-{key:x}", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(f"{key:#x}") from None
        yield
    finally:
        os.close(held)  # lets the lock go


# A statement that fails is logged and raised without its parameters: they may be a sealed bank
# account, a key's hash or a stored request (helper-77 found them in the logs of chain-head errors).
HIDE_PARAMETERS = True


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=HIDE_PARAMETERS
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry) -> None:
            # Let SQLAlchemy's "begin" event decide how a transaction starts.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # A row a REPLACE removes fires delete triggers too (the award references' guards).
            cursor.execute("PRAGMA recursive_triggers=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            # Writers begin IMMEDIATE (they take the write lock first, so two never deadlock
            # upgrading); a `reader` engine's transactions only read and begin DEFERRED: under
            # WAL they see a snapshot and never wait for a writer.
            deferred = connection.get_execution_options().get(READ_ONLY_OPTION)
            connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith("postgresql+psycopg://"):  # another database or driver: not one this engine runs on
        raise ArgumentError("the engine runs on SQLite (sqlite:///PATH) or PostgreSQL (postgresql+psycopg://…)")
    # A server that accepts the connection and never answers (hung, or a half-dead network path)
    # fails a new connection after CONNECT_TIMEOUT_S, a 503 the client retries, instead of holding
    # its request, and the worker thread it runs in, for as long as the OS waits. (A pooled
    # connection whose server hangs mid-session is not covered.) A URL that sets its own
    # `connect_timeout` keeps it; this setting takes precedence over PGCONNECT_TIMEOUT.
    connect_args = {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(
        url,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        connect_args=connect_args,
        hide_parameters=HIDE_PARAMETERS,
    )


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
