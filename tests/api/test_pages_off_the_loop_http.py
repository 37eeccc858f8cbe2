"""The pages under /ui/ run their store calls in a worker thread: a page waiting on the database
(here a table it reads, locked by another session on PostgreSQL) does not hold the event loop, so
every other request (a terminal's, a health check) is answered meanwhile; then the page arrives."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.loop import answered_while_waiting
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
    try:
        assert client.get("/ui/merchants/M_SHOTEN").status_code == 200
        page = answered_while_waiting(
            ward.server.base_url, ward.server.database_url, "payment", lambda: client.get("/ui/merchants/M_SHOTEN")
        )
    finally:
        client.close()
    assert page.status_code == 200 and "M_SHOTEN" in page.text
