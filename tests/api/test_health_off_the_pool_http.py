"""`/healthz` answers on the event loop: while more requests than the server has worker threads
wait on the database (a table locked by another session, on PostgreSQL), the liveness probe is
answered at once. A probe answered in a worker thread would queue behind them, and an
orchestrator would restart a server that is only busy."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import text

from engine.store.db import make_engine
from tests.loop import wait_for_waiters
from tests.ward import Ward

WAITING = 48  # more than anyio's 40 worker threads


def test_the_liveness_probe_is_answered_while_every_worker_thread_waits(ward: Ward) -> None:
    if not ward.server.database_url.startswith("postgresql"):
        pytest.skip("SQLite's readers never wait for a lock (WAL)")
    key = ward.finance_key
    base = ward.server.base_url
    answers: list[int] = []

    def read() -> None:  # a sync route reading `payment`: it waits in a worker thread
        answer = httpx.get(
            f"{base}/v1/transactions/tx_000000000000000000000000",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
        )
        answers.append(answer.status_code)

    engine = make_engine(ward.server.database_url)
    try:
        with engine.connect() as locker:
            locker.execute(text("LOCK TABLE payment IN ACCESS EXCLUSIVE MODE"))
            readers = [threading.Thread(target=read, daemon=True) for _ in range(WAITING)]
            for r in readers:
                r.start()
            wait_for_waiters(locker, "payment", 10, timeout_s=20)
            time.sleep(0.5)  # the rest take the remaining worker threads, waiting for connections
            started = time.monotonic()
            health = httpx.get(base + "/healthz", timeout=5, trust_env=False)
            assert health.status_code == 200 and time.monotonic() - started < 1.0
            assert not answers, "the reads are still waiting"
            locker.rollback()
        for r in readers:
            r.join(60)
    finally:
        engine.dispose()
    assert answers == [404] * WAITING
