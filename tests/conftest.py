"""Shared fixtures: the rating engines, and real databases and Redis for storage tests.

No mocks: a test that needs PostgreSQL or Redis gets a real, freshly made one.
When a server is unreachable such a test is skipped on a developer's machine
but fails under CI (CI=true), because a CI run that silently skipped the
production database would prove nothing about it.
"""

from __future__ import annotations

import os
import uuid

import pytest

from engine import rating

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# Redis db 0 is left to whatever else runs on the machine; tests take one of these.
REDIS_TEST_DBS = range(1, 16)
CONNECT_TIMEOUT_S = 3

ENGINE_NAMES = sorted(rating.ENGINES)


def _unavailable(what: str, error: Exception) -> None:
    message = f"{what} is unreachable: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: tests that need it must run, so this fails instead of skipping)")
    pytest.skip(message)


@pytest.fixture(params=ENGINE_NAMES)
def engine_name(request: pytest.FixtureRequest) -> str:
    """Each rating engine that is built: "python" always, "cython" when the extension loaded."""
    return request.param


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A SQLite database file of its own for one test (the embedded default)."""
    return f"sqlite+pysqlite:///{tmp_path}/setapay.db"


def _fresh_postgres():
    """Create a PostgreSQL database of its own; yield its URL; drop it."""
    import psycopg

    name = f"setapay_test_{uuid.uuid4().hex[:16]}"
    admin_dsn = f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout={CONNECT_TIMEOUT_S}"
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True)
    except psycopg.OperationalError as error:
        _unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}", error)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            # A server or pool the test left behind would keep the database busy and block the drop.
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url():
    """A freshly created PostgreSQL database, dropped after the test."""
    yield from _fresh_postgres()


@pytest.fixture
def other_postgres_url():
    """A second fresh PostgreSQL database, for tests that compare two ledgers."""
    yield from _fresh_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The same test on the embedded SQLite file and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url_pair(request: pytest.FixtureRequest, tmp_path) -> tuple[str, str]:
    """Two fresh databases of the same kind: SQLite files, or PostgreSQL databases."""
    if request.param == "sqlite":
        return f"sqlite+pysqlite:///{tmp_path}/one.db", f"sqlite+pysqlite:///{tmp_path}/two.db"
    return request.getfixturevalue("postgres_url"), request.getfixturevalue("other_postgres_url")


def _free_redis_db(newest_first: bool = False):
    """A Redis database number nobody is using, flushed before and after; yields its URL.

    The function-scoped fixture starts from a number that depends on the process, so two
    test runs at once (a developer's and CI's) rarely pick the same database; the
    module-scoped one starts from the other end, so it rarely meets a function-scoped one
    that is still empty."""
    import redis

    try:
        probe = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=CONNECT_TIMEOUT_S)
        probe.ping()
    except redis.RedisError as error:
        _unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT}", error)
    probe.close()
    if newest_first:
        candidates = list(reversed(REDIS_TEST_DBS))
    else:
        start = os.getpid() % len(REDIS_TEST_DBS)
        candidates = [REDIS_TEST_DBS[(start + i) % len(REDIS_TEST_DBS)] for i in range(len(REDIS_TEST_DBS))]
    for db in candidates:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.dbsize() == 0:
            break
        client.close()
    else:
        db = candidates[0]
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def redis_url():
    """A Redis database number nobody is using, flushed before and after the test."""
    yield from _free_redis_db()


@pytest.fixture(scope="module")
def module_redis_url():
    """A Redis database of its own for a whole test module (servers started once per module)."""
    yield from _free_redis_db(newest_first=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that reaches PostgreSQL or Redis, so `-m "not postgres"` deselects them."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec else {}
        if "postgres_url" in names or params.get("database_url") == "postgresql":
            item.add_marker(pytest.mark.postgres)
        if "redis_url" in names or "module_redis_url" in names:
            item.add_marker(pytest.mark.redis)
