"""A server whose groups are posted by a committer child (SETAPAY_GROUP_COMMIT_PROCESS, on PostgreSQL).

A real `setapay serve` process: its posts, single and batched, are decided and written by a child
process (engine/store/committer_process.py), which writes through a writer child of its own. The
child killed (SIGKILL), the server lives on: a request whose group the child held is answered 503
`service_unavailable`, the terminal's retry with the same key gets its answer, and a new child
posts from then on; nothing is stored twice.
"""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import text

from engine.store.db import make_engine
from tests.server import ServerProcess
from tests.ward import purchase

MERCHANT = {"id": "M1", "name": "店", "merchant_class": "small"}


def spawned_children(pid: int) -> list[int]:
    """The processes `pid` spawned through multiprocessing (their command line says so)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in command:
            found.append(int(entry))
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


def test_posts_go_through_the_committer_child_and_a_lost_child_costs_a_retry(databases, tmp_path) -> None:
    url = databases.create("postgresql")
    env = {"SETAPAY_GROUP_COMMIT_PROCESS": "true", "SETAPAY_GROUP_COMMIT_WRITER_PROCESS": "true"}
    with ServerProcess(url, tmp_path, env=env) as server:
        keys = server.configure([MERCHANT], [], {"T1": "M1"})
        with server.terminal_client(keys["T1"]) as c:
            one = purchase("T1", "W1", 1000, merchant_id="M1")
            first = c.post("/v1/transactions", json=one, headers={"Idempotency-Key": "k1"})
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
            os.kill(child, signal.SIGKILL)
            body = purchase("T1", "W9", 2000, merchant_id="M1")
            statuses = []
            deadline = time.monotonic() + 30
            while True:
                r = c.post("/v1/transactions", json=body, headers={"Idempotency-Key": "k2"})
                statuses.append(r.status_code)
                if r.status_code != 503:
                    break
                assert r.json()["code"] == "service_unavailable"
                assert time.monotonic() < deadline, statuses
                time.sleep(0.2)
            assert r.status_code == 201, r.text
            assert committer_child(server) != child
            replay = c.post("/v1/transactions", json=one, headers={"Idempotency-Key": "k1"})
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            stored = connection.execute(text("SELECT count(*), count(DISTINCT id) FROM payment")).one()
    finally:
        engine.dispose()
    assert tuple(stored) == (7, 7)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
