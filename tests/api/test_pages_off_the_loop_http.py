"""The pages under /ui/ run their store calls in a worker thread: a page waiting on the database
(here a table it reads, locked by another session on PostgreSQL) does not hold the event loop, so
every other request (a terminal's, a health check) is answered meanwhile; then the page arrives."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from engine.store.db import make_engine
from tests.ward import Ward


def _signed_in(ward: Ward, key: str) -> httpx.Client:
    """A browser-like client with a session of `key` (the sign-in form and its CSRF token)."""
    client = httpx.Client(base_url=ward.server.base_url, follow_redirects=False, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text)
    assert token is not None
    answer = client.post("/ui/login", data={"key": key, "csrf": token.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def test_a_page_waiting_on_the_database_does_not_hold_other_requests(ward: Ward) -> None:
    if not ward.server.database_url.startswith("postgresql"):
        pytest.skip("SQLite's readers never wait for a lock (WAL)")
    client = _signed_in(ward, ward.key("merchant", "M_SHOTEN"))
    assert client.get("/ui/merchants/M_SHOTEN").status_code == 200
    engine = make_engine(ward.server.database_url)
    answered: list[httpx.Response] = []
    try:
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE payment IN ACCESS EXCLUSIVE MODE"))
            page = threading.Thread(target=lambda: answered.append(client.get("/ui/merchants/M_SHOTEN")))
            page.start()
            deadline = time.monotonic() + 10
            while not locker.execute(
                text("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'payment'::regclass")
            ).scalar_one():
                assert time.monotonic() < deadline, "the page never reached its read"
                time.sleep(0.02)
            started = time.monotonic()
            health = httpx.get(ward.server.base_url + "/healthz", timeout=10)
            assert health.status_code == 200 and time.monotonic() - started < 1.0
            assert page.is_alive() and not answered  # the page still waits on the lock
            locker.rollback()  # the lock goes
        page.join(10)
        assert answered[0].status_code == 200 and "M_SHOTEN" in answered[0].text
    finally:
        engine.dispose()
        client.close()
