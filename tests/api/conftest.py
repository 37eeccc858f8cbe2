"""Fixtures for the HTTP tests: fresh databases, a real uvicorn server, keys from the CLI.

Every test here talks to `setapay serve` over a socket with httpx, exactly as a
terminal would; nothing runs in-process. A server is started once per test
module and backend (SQLite file, PostgreSQL database), on a database of its own,
and stopped at teardown. API keys are created the way an operator creates them,
with `setapay keys create` under the server's environment. The ward those tests
post into is tests/ward.py's, the one harness of the ward behind a server.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engine.store.db import make_engine
from engine.store.models import PaymentRow, PostingRow
from tests.conftest import CONNECT_TIMEOUT_S, PG_HOST, PG_PORT, PG_USER, _unavailable
from tests.server import ServerProcess
from tests.ward import Ward

REPO = Path(__file__).resolve().parents[2]
VECTORS_DIR = Path(os.environ.get("SETAPAY_VECTORS_DIR") or REPO.parent / "shared" / "vectors").resolve()
VECTOR_FILES = sorted(VECTORS_DIR.glob("*.json"))

# Vectors are dated December 2026 and later; replaying them needs the
# occurred_at window opened wide, as importing history would.
WIDE_OCCURRED_AT_ENV = {
    "SETAPAY_OCCURRED_AT_MAX_FUTURE_S": str(10**9),
    "SETAPAY_OCCURRED_AT_MAX_PAST_DAYS": "100000",
}
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


class Databases:
    """Fresh databases for one module: SQLite files or PostgreSQL databases, dropped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pg_names: list[str] = []

    @staticmethod
    def _admin_dsn() -> str:
        return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout={CONNECT_TIMEOUT_S}"

    def create(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite+pysqlite:///{self.directory}/setapay_{uuid.uuid4().hex[:12]}.db"
        import psycopg

        name = f"setapay_test_{uuid.uuid4().hex[:16]}"
        try:
            with psycopg.connect(self._admin_dsn(), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as error:
            _unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}", error)
        self.pg_names.append(name)
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def drop_all(self) -> None:
        if not self.pg_names:
            return
        import psycopg

        with psycopg.connect(self._admin_dsn(), autocommit=True) as admin:
            for name in self.pg_names:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Server(ServerProcess):
    """`setapay serve` in a subprocess of its own on a database of its own, with the database at hand."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        cli_in_process: bool = False,
    ) -> None:
        super().__init__(database_url, log_dir, env, workers, cli_in_process=cli_in_process)
        self._db = None

    def stop(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None
        super().stop()

    # -- the database, read directly -------------------------------------------

    @property
    def db(self):
        if self._db is None:
            self._db = make_engine(self.database_url)
        return self._db

    def count(self, model) -> int:
        with self.db.connect() as connection:
            return connection.execute(select(func.count()).select_from(model)).scalar_one()

    def postings(self) -> int:
        return self.count(PostingRow)

    def payments(self) -> int:
        return self.count(PaymentRow)


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    made = Databases(tmp_path_factory.mktemp("db"))
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture(scope="module")
def start_server(databases, tmp_path_factory):
    """A factory: `start_server(backend, env=..., workers=...)` → a running `Server`, stopped at module end."""
    started: list[Server] = []
    log_dir = tmp_path_factory.mktemp("logs")

    def start(
        backend: str, env: dict[str, str] | None = None, workers: int = 1, cli_in_process: bool = False
    ) -> Server:
        server = Server(databases.create(backend), log_dir, env, workers, cli_in_process)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """The module's tests on the embedded SQLite file and on PostgreSQL."""
    return request.param


@pytest.fixture(scope="module")
def ward(backend, start_server):
    """The small ward (tests/ward.py) on this module's backend, with the default occurred_at window (near now)."""
    w = Ward(start_server(backend))
    try:
        yield w
    finally:
        w.close()
