"""The pages under /ui/ run their store calls in a worker thread: a page waiting on the database
(here a table it reads, locked by another session on PostgreSQL) does not hold the event loop, so
every other request (a terminal's, a health check) is answered meanwhile; then the page arrives."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from tests.loop import answered_while_waiting
from tests.ward import Ward


def test_a_page_waiting_on_the_database_does_not_hold_other_requests(ward: Ward) -> None:
    if not ward.server.database_url.startswith("postgresql"):
        pytest.skip("SQLite's readers never wait for a lock (WAL)")
    client = ward.pages(ward.key("merchant", "M_SHOTEN"))
    try:
        assert client.get("/ui/merchants/M_SHOTEN").status_code == 200
        page = answered_while_waiting(
            ward.server.base_url, ward.server.database_url, "payment", lambda: client.get("/ui/merchants/M_SHOTEN")
        )
    finally:
        client.close()
    assert page.status_code == 200 and "M_SHOTEN" in page.text


def test_many_sign_ins_at_once_leave_the_server_answering(ward: Ward) -> None:
    """Sign-ins with unknown keys, more at once than the pages have threads (`PAGE_THREADS`): each
    is answered (401, or 429 once the address is over its limit) and the server answers everything
    else meanwhile. (The pages build in threads of their own, so a sign-in's page thread never
    waits for its key look-up's thread from the same pool; this run does not force that
    interleaving, it checks the sign-ins' answers under the load.)"""
    with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as first:
        form = first.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        cookies = dict(first.cookies)
    statuses: list[int] = []
    lock = threading.Lock()

    def sign_in(i: int) -> None:
        with httpx.Client(base_url=ward.server.base_url, cookies=cookies, timeout=30) as c:
            answer = c.post("/ui/login", data={"key": f"sk_unknown_{i:04d}", "csrf": token.group(1)})
        with lock:
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=sign_in, args=(i,), daemon=True) for i in range(64)]
    for t in threads:
        t.start()
    health = httpx.get(ward.server.base_url + "/healthz", timeout=10)
    assert health.status_code == 200
    for t in threads:
        t.join(40)
    assert sorted(set(statuses)) in ([401], [401, 429], [429]) and len(statuses) == 64
