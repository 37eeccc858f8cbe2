"""The Redis idempotency fast path: replays without the database, never at the cost of correctness."""

import json
import os
import threading
import time
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient

from api.app import create_app
from engine.settings import Settings
from tests.receipts import register_in_process

VECTORS = Path(
    os.environ.get("SETAPAY_VECTORS_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "vectors"
)


def _settings(database_url: str, redis_url: str | None) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        occurred_at_max_future_s=10**9,
        occurred_at_max_past_days=100_000,
    )


def _app(database_url: str, redis_url: str | None):
    app = create_app(_settings(database_url, redis_url))
    client = TestClient(app)
    config = app.state.config
    admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
    vector = json.loads((VECTORS / "tiered-rates.json").read_text())
    for m in vector["merchants"]:
        assert client.post("/v1/merchants", json=m, headers=admin).status_code == 201
    for c in vector["campaigns"]:
        assert client.post("/v1/campaigns", json=c, headers=admin).status_code == 201
    client.post("/v1/terminals", json={"id": "T1", "merchant_id": "M_SHOTEN"}, headers=admin)
    key = config.create_key("terminal", terminal_id="T1")
    body = {k: v for k, v in vector["events"][0].items() if k != "id"} | {"terminal_id": "T1"}
    payment_app = register_in_process(app)
    app.state.test_payment_app = payment_app  # for a test that signs a changed body
    return app, client, key, payment_app.sign_purchase(body, jti="pay_cache_1")


def test_replay_is_served_while_the_sequencer_is_locked(postgres_url, redis_url):
    app, client, key, body = _app(postgres_url, redis_url)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "storm-1"}
    first = client.post("/v1/transactions", json=body, headers=headers)
    assert first.status_code == 201
    # Hold the sequencer lock from another connection: the database path would wait on it.
    conninfo = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as blocker:
        blocker.execute("SELECT 1 FROM ledger_head WHERE id = 1 FOR UPDATE")
        started = time.monotonic()
        replay = client.post("/v1/transactions", json=body, headers=headers)
        elapsed = time.monotonic() - started
        changed = app.state.test_payment_app.sign_purchase(
            {k: v for k, v in body.items() if k != "receipt"} | {"amount": 7}, jti="pay_cache_2"
        )
        reused = client.post("/v1/transactions", json=changed, headers=headers)
        blocker.rollback()
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert elapsed < 5, "the replay waited for the sequencer lock instead of coming from Redis"
    app.state.engine.dispose()


def test_unreachable_redis_falls_back_to_the_database(sqlite_url):
    # Nothing listens on this port: every cache call fails and the database answers.
    app, client, key, body = _app(sqlite_url, "redis://127.0.0.1:1/0")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "k-1"}
    first = client.post("/v1/transactions", json=body, headers=headers)
    replay = client.post("/v1/transactions", json=body, headers=headers)
    assert first.status_code == 201
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    app.state.engine.dispose()


def test_concurrent_first_requests_apply_once_with_the_cache(postgres_url, redis_url):
    app, client, key, body = _app(postgres_url, redis_url)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "race-1"}
    answers = []

    def post():
        response = client.post("/v1/transactions", json=body, headers=headers)
        answers.append((response.status_code, response.json().get("id")))

    threads = [threading.Thread(target=post) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {i for status, i in answers if status == 201}
    assert len(ids) == 1
    assert all(status in (201, 409) for status, _ in answers)
    with app.state.engine.connect() as connection:
        from sqlalchemy import text

        assert connection.execute(text("SELECT count(*) FROM payment")).scalar_one() == 1
    app.state.engine.dispose()


def _a_sale_after_a_backup(postgres_url, redis_url, tmp_path):
    """A ward served with Redis, backed up, then a sale: (app, client, key, body, headers, backup)."""
    from engine.store import backup

    app, client, key, body = _app(postgres_url, redis_url)
    snapshot = tmp_path / "before-the-sale.backup"
    backup.backup(postgres_url, snapshot)
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "after-the-backup"}
    first = client.post("/v1/transactions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    return app, client, key, body, headers, snapshot


def test_a_restored_ledger_never_replays_an_answer_it_does_not_hold(
    postgres_url, other_postgres_url, redis_url, tmp_path
):
    """A sale posted after the backup was taken is not in the restored copy: its retry must be
    posted anew there, not answered from Redis as recorded (helper-82's probe: 201
    `Idempotent-Replayed` with an id `GET /v1/transactions/{id}` did not know). Answers are kept
    under the ledger's incarnation, which a restore makes anew."""
    app, client, key, body, headers, snapshot = _a_sale_after_a_backup(postgres_url, redis_url, tmp_path)
    app.state.engine.dispose()
    from engine.store import backup

    backup.restore(snapshot, other_postgres_url)
    restored = create_app(_settings(other_postgres_url, redis_url))
    with TestClient(restored) as again:
        retry = again.post("/v1/transactions", json=body, headers=headers)
        assert retry.status_code == 201, retry.text
        assert retry.headers.get("Idempotent-Replayed") != "true", "answered from the old ledger's cache"
        found = again.get(f"/v1/transactions/{retry.json()['id']}", headers={"Authorization": f"Bearer {key}"})
        assert found.status_code == 200, found.text
    restored.state.engine.dispose()


def test_a_process_left_running_across_a_restore_replays_no_answer_of_the_ledger_before(
    postgres_url, redis_url, tmp_path
):
    """The operator empties the database and restores a backup into it while an API process keeps
    running (helper-84): that process read the ledger's id at start-up and went on replaying, from
    Redis, the answer of a sale made after the backup, which the restored ledger does not hold. The
    id is read again before a replay: the retry is posted anew."""
    import psycopg
    from sqlalchemy.engine import make_url

    from engine.store import backup

    app, client, key, body, headers, snapshot = _a_sale_after_a_backup(postgres_url, redis_url, tmp_path)
    cached = client.post("/v1/transactions", json=body, headers=headers)
    assert cached.headers.get("Idempotent-Replayed") == "true"  # from Redis, before the restore

    name = make_url(postgres_url).database
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # the process's connections end
        admin.execute(f'CREATE DATABASE "{name}"')
    backup.restore(snapshot, postgres_url)

    answers = []
    for _ in range(3):  # a terminal retries an unavailable service
        answers.append(client.post("/v1/transactions", json=body, headers=headers))
        if answers[-1].status_code != 503:
            break
    retry = answers[-1]
    assert all(a.headers.get("Idempotent-Replayed") != "true" for a in answers), "replayed the old ledger's answer"
    assert retry.status_code == 201, retry.text
    found = client.get(f"/v1/transactions/{retry.json()['id']}", headers={"Authorization": f"Bearer {key}"})
    assert found.status_code == 200, found.text
    again = client.post("/v1/transactions", json=body, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == retry.json()
    app.state.engine.dispose()


class _Ledgers:
    """The database's ledger id as a test sets it; a read may be held until the test lets it go."""

    def __init__(self, first: str) -> None:
        self.now = first
        self.hold = threading.Event()
        self.hold.set()
        self.reads = 0

    def __call__(self) -> str:
        self.reads += 1
        assert self.hold.wait(30)
        return self.now


def test_a_replay_is_checked_against_the_ledger_it_was_read_under(redis_url) -> None:
    """Two retries right after a restore (helper-87): the first read its answer under the old id
    and waited for the database; the second found the new id and switched the cache to it; the
    first then compared the new id with the cache's, now equal, and replayed the old ledger's
    answer. Each replay is held to the id its answer was read under."""
    import asyncio

    from engine.store.answer_cache import AnswerCache

    ledgers = _Ledgers("L1")
    cache = AnswerCache(redis_url, ledgers)

    async def run() -> tuple:
        await cache.put("T1", "k1", "h1", 201, b'{"id":"old-ledger-sale"}')
        ledgers.now = "L2"  # restored meanwhile
        ledgers.hold.clear()
        first = asyncio.create_task(cache.get("T1", "k1"))
        while ledgers.reads < 2:  # the start-up read and the first retry's
            await asyncio.sleep(0.01)
        ledgers.hold.set()
        second = await cache.get("T1", "k1")
        return await first, second

    first, second = asyncio.run(run())
    assert (first, second) == (None, None), "replayed the old ledger's answer"
    assert cache.ledger_id == "L2"


def test_a_database_that_does_not_answer_holds_a_replay_no_longer_than_a_second(redis_url) -> None:
    """The check reads the database: one that hangs (a pooled connection nobody answers on) made
    every replay wait as long, each on a thread of the event loop's executor (helper-87). It is
    waited for a second on a thread of its own, then the request goes the database's way."""
    import asyncio

    from engine.store.answer_cache import AnswerCache

    ledgers = _Ledgers("L1")
    cache = AnswerCache(redis_url, ledgers)

    async def run():
        await cache.put("T1", "k1", "h1", 201, b'{"id":"sale"}')
        ledgers.hold.clear()
        started = time.monotonic()
        got = await cache.get("T1", "k1")
        return got, time.monotonic() - started

    try:
        got, took = asyncio.run(run())
    finally:
        ledgers.hold.set()
    assert got is None and took < 3, took


def test_a_storm_of_replays_reads_the_ledger_id_once_not_once_each(redis_url) -> None:
    """Fifty retries of one sale at once: each read the head row, at most eight at a time, and the
    rest went the database's way (to wait for the sequencer lock the fast path is there to avoid).
    A replay whose answer came from Redis before a read began waits for that read."""
    import asyncio

    from engine.store.answer_cache import AnswerCache

    ledgers = _Ledgers("L1")
    cache = AnswerCache(redis_url, ledgers)

    async def run() -> list:
        await cache.put("T1", "k1", "h1", 201, b'{"id":"sale"}')
        ledgers.hold.clear()
        retries = [asyncio.create_task(cache.get("T1", "k1")) for _ in range(50)]
        await asyncio.sleep(0.3)  # every look-up in Redis done, waiting on the read
        ledgers.hold.set()
        return await asyncio.gather(*retries)

    answers = asyncio.run(run())
    assert all(a == ("h1", 201, {"id": "sale"}) for a in answers), answers
    assert ledgers.reads - 1 <= 3, ledgers.reads  # the start-up read, then a few
