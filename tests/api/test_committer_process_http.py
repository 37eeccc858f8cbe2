"""A server whose groups are posted by a committer child (SETAPAY_GROUP_COMMIT_PROCESS, on PostgreSQL).

A real `setapay serve` process: its posts, single and batched, are decided and written by a child
process (engine/store/committer_process.py), which writes through a writer child of its own. The
child killed (SIGKILL) while its group commits, the server lives on: the request is answered 503
`service_unavailable`, the terminal's retry with the same key gets the committed answer, replayed,
from a new child; nothing is stored twice.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from sqlalchemy import text

from engine.store.committer_process import child_pids
from tests.lifecycle.support import Books
from tests.server import ServerProcess
from tests.store.test_committer_process import committing, slow_commits
from tests.ward import purchase

MERCHANT = {"id": "M1", "name": "店", "merchant_class": "small"}


def spawned_children(pid: int) -> list[int]:
    """The processes `pid` spawned through multiprocessing (their command line says so)."""
    found = []
    for child in child_pids(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    found.append(child)
        except OSError:
            continue
    return found


def committer_child(server: ServerProcess) -> int:
    """The server's committer child, which has a writer child of its own."""
    deadline = time.monotonic() + 30
    while True:
        children = spawned_children(server.process.pid)
        if len(children) == 1 and len(spawned_children(children[0])) == 1:
            return children[0]
        assert time.monotonic() < deadline, f"no committer child with a writer child: {children}"
        time.sleep(0.1)


def test_posts_go_through_the_committer_child_and_a_group_lost_with_it_costs_a_retry(databases, tmp_path) -> None:
    url = databases.create("postgresql")
    env = {"SETAPAY_GROUP_COMMIT_PROCESS": "true", "SETAPAY_GROUP_COMMIT_WRITER_PROCESS": "true"}
    with ServerProcess(url, tmp_path, env=env) as server:
        keys = server.configure([MERCHANT], [], {"T1": "M1"})
        with server.terminal_client(keys["T1"]) as c:
            first = c.post(
                "/v1/transactions", json=purchase("T1", "W1", 1000, merchant_id="M1"), headers={"Idempotency-Key": "k1"}
            )
            assert first.status_code == 201, first.text
            batch = c.post(
                "/v1/transactions/batch",
                json={
                    "transactions": [
                        dict(purchase("T1", f"W{n}", 500 + n, merchant_id="M1"), idempotency_key=f"b{n}")
                        for n in range(5)
                    ]
                },
            )
            assert batch.status_code == 200 and [r["status"] for r in batch.json()["results"]] == [201] * 5
            child = committer_child(server)
            # The next group's COMMIT is slow; the committer child is killed while its writer child
            # waits in it, and the commit goes through: the request is answered 503, its retry
            # (same key, same body) gets the committed answer, replayed.
            books = Books(url, migrate=False)
            try:
                slow_commits(books)
                body = purchase("T1", "W9", 2000, merchant_id="M1")
                answered: list[httpx.Response] = []
                sender = threading.Thread(
                    target=lambda: answered.append(
                        c.post("/v1/transactions", json=body, headers={"Idempotency-Key": "k2"})
                    )
                )
                sender.start()
                committing(books.engine)
                os.kill(child, signal.SIGKILL)
                sender.join(timeout=60)
                assert answered[0].status_code == 503 and answered[0].json()["code"] == "service_unavailable"
                assert answered[0].headers["Retry-After"] == "1"  # when to retry (helper-108: none was said)
                deadline = time.monotonic() + 30
                while (
                    retry := c.post("/v1/transactions", json=body, headers={"Idempotency-Key": "k2"})
                ).status_code == 503:
                    assert time.monotonic() < deadline, retry.text
                    time.sleep(0.2)
                assert retry.status_code == 201 and retry.headers.get("Idempotent-Replayed") == "true", retry.text
                assert committer_child(server) != child
                with books.engine.connect() as connection:
                    stored = connection.execute(text("SELECT count(*), count(DISTINCT id) FROM payment")).one()
                assert tuple(stored) == (7, 7)
            finally:
                books.close()
