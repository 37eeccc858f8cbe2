"""Checks that a request waiting on the database does not hold the server's event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from sqlalchemy import Connection, text

from engine.store.db import make_engine


def wait_for_waiters(locker: Connection, table: str, at_least: int, timeout_s: float) -> None:
    """Wait until `at_least` sessions of this database wait for `table`'s lock, which `locker` holds."""
    deadline = time.monotonic() + timeout_s
    while (
        locker.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = CAST(:t AS regclass)"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"t": table},
        ).scalar_one()
        < at_least
    ):
        assert time.monotonic() < deadline, f"the requests never reached their read of {table}"
        time.sleep(0.02)


def answered_while_waiting(base_url: str, database_url: str, table: str, request: Callable[[], httpx.Response]):
    """Send `request` (in a thread) while another session holds `table` locked on PostgreSQL; once
    it waits on that lock, check the server answers `/healthz` at once (its event loop is free) and
    that `request` is still waiting; then let the lock go and return `request`'s answer."""
    engine = make_engine(database_url)
    answered: list[httpx.Response] = []
    try:
        with engine.connect() as locker:
            locker.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            waiting = threading.Thread(target=lambda: answered.append(request()), daemon=True)
            waiting.start()
            wait_for_waiters(locker, table, 1, timeout_s=10)
            started = time.monotonic()
            health = httpx.get(base_url + "/healthz", timeout=10)
            assert health.status_code == 200 and time.monotonic() - started < 1.0
            assert waiting.is_alive() and not answered  # still waiting on the lock
            locker.rollback()  # the lock goes
        waiting.join(10)
        assert answered, "the request did not finish once the lock went"
        return answered[0]
    finally:
        engine.dispose()
