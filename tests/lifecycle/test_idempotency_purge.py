"""Remembered answers are purged after the retention (at least 30 days, SPEC §6), and nothing else is.

`lifecycle.purge_remembered_answers` deletes `idempotency_key` rows older than the retention by
the engine's clock: the answers of declines and grants. The ledger keeps everything: payments,
awards, postings, grants. An accepted payment remembers its answer on its own row, under its
key, for as long as the ledger keeps it (keys are kept *at least* 30 days): its retry replays
before and after the purge, so the purge never lets a sale be posted twice. A purged decline's
key is new again; a payment accepted before payments carried their keys (its answer in an
`idempotency_key` row) sent again under its purged key is declined `receipt_already_used`. The
in-process scheduler runs the purge once a day. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from api.app import create_app
from engine import limits
from engine.clock import ManualClock
from engine.settings import Settings
from engine.store import lifecycle
from engine.store.models import GrantRow, IdempotencyRow, LifecycleRunRow, PaymentRow, PostingRow
from engine.timeutil import TOKYO, to_us
from tests.lifecycle.support import Books, campaign, cli
from tests.receipts import register_in_process
from tests.server import run_cli, setapay_env

T0 = dt.datetime(2026, 12, 1, 10, tzinfo=TOKYO)
DAY = dt.timedelta(days=1)
CAMPAIGN = {
    "id": "C1",
    "name": "10%",
    "starts_at": "2026-01-01T00:00:00+09:00",
    "ends_at": "2036-01-01T00:00:00+09:00",
    "tiers": [{"match": {}, "rate_bp": 1000}],
}


def _keys(engine) -> set[str]:
    with engine.connect() as c:
        return {row[0] for row in c.execute(select(IdempotencyRow.key))}


def _remembered_row(engine, key: str, status: int, created_at_us: int) -> None:
    """An `idempotency_key` row of terminal T1, written as the engine writes one."""
    with engine.begin() as c:
        c.execute(
            IdempotencyRow.__table__.insert().values(
                terminal_id="T1",
                key=key,
                request_hash="0" * 64,
                response_status=status,
                response_json="{}",
                created_at_us=created_at_us,
            )
        )


def _count(engine, model) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.fixture
def books(database_url):
    b = Books(database_url, start=T0)
    b.setup({"M1": ["T1"]}, [campaign("C1", budget=100_000)])
    try:
        yield b
    finally:
        b.close()


def test_answers_past_the_retention_go_and_the_ledger_stays(books: Books) -> None:
    books.at(T0)
    first = books.purchase("T1", "W1", 1000, T0 - dt.timedelta(minutes=1), key="k-old")
    assert first.status == 201
    declined = books.purchase("T1", "W2", 1000, T0, points_used=5, key="k-old-decline")
    assert declined.body["code"] == "insufficient_points"  # a remembered decline
    assert books.grant("W3", "C1", 50, key="g-old").status == 201
    _remembered_row(books.engine, "k-old-row", 201, to_us(T0))  # as before payments carried their keys
    books.at(T0 + 20 * DAY)
    assert books.purchase("T1", "W1", 2000, T0 + 20 * DAY, key="k-young").status == 201
    assert books.purchase("T1", "W4", 10, T0 + 20 * DAY, points_used=1, key="k-young-decline").status == 422
    books.at(T0 + 29 * DAY + 23 * dt.timedelta(hours=1))
    assert books.purchase("T1", "W1", 500, T0 + 29 * DAY, key="k-almost").status == 201
    assert books.purchase("T1", "W4", 10, T0 + 29 * DAY, points_used=1, key="k-almost-decline").status == 422
    payments, postings, grants = (_count(books.engine, m) for m in (PaymentRow, PostingRow, GrantRow))
    # Accepted payments are remembered on their rows; declines and grants in `idempotency_key`.
    assert _keys(books.engine) == {"k-old-decline", "g-old", "k-old-row", "k-young-decline", "k-almost-decline"}
    with books.engine.connect() as c:
        on_payments = set(c.execute(select(PaymentRow.idempotency_key)).scalars())
    assert on_payments == {"k-old", "k-young", "k-almost"}

    # 29 days after the first ones: nothing is old enough yet.
    assert lifecycle.purge_remembered_answers(books.ledger, 30)["answers_purged"] == 0
    books.at(T0 + 30 * DAY + dt.timedelta(minutes=1))
    done = lifecycle.purge_remembered_answers(books.ledger, 30, chunk=2)  # chunks of 2: two rounds
    assert done["answers_purged"] == 3
    assert _keys(books.engine) == {"k-young-decline", "k-almost-decline"}
    # An accepted payment's key outlives the purge: its retry replays, it posts nothing twice.
    retry = books.purchase("T1", "W1", 1000, T0 - dt.timedelta(minutes=1), key="k-old")
    assert retry.replayed and retry.body == first.body
    assert books.purchase("T1", "W1", 999, T0, key="k-old").body["code"] == "idempotency_key_reused"
    # A purged decline's key is new: the same request is decided again (declined again, remembered again).
    again = books.purchase("T1", "W2", 1000, T0, points_used=5, key="k-old-decline")
    assert again.body["code"] == "insufficient_points" and not again.replayed
    assert _keys(books.engine) == {"k-young-decline", "k-almost-decline", "k-old-decline"}
    # The ledger is untouched: every payment (with its own answer), posting and grant, and it checks.
    assert (_count(books.engine, PaymentRow), _count(books.engine, PostingRow), _count(books.engine, GrantRow)) == (
        payments,
        postings,
        grants,
    )
    with books.engine.connect() as c:
        stored = c.execute(select(PaymentRow.response_json).where(PaymentRow.id == first.body["id"])).scalar_one()
        runs = c.execute(
            select(LifecycleRunRow.items).where(LifecycleRunRow.kind == "idempotency").order_by(LifecycleRunRow.id)
        ).scalars()
        assert list(runs) == [0, 3]  # each run is recorded with what it purged
    assert first.body["id"] in stored
    books.check()

    # Run again: nothing more. A longer retention keeps what a shorter one would purge.
    assert lifecycle.purge_remembered_answers(books.ledger, 30)["answers_purged"] == 0
    books.at(T0 + 60 * DAY + dt.timedelta(hours=1))
    assert lifecycle.purge_remembered_answers(books.ledger, 60)["answers_purged"] == 0
    assert lifecycle.purge_remembered_answers(books.ledger, 30)["answers_purged"] == 3
    assert _keys(books.engine) == set()
    assert books.purchase("T1", "W1", 2000, T0 + 20 * DAY, key="k-young").replayed
    books.check()


def test_a_retention_under_30_days_is_refused(books: Books) -> None:
    assert limits.IDEMPOTENCY_RETENTION_DAYS_MIN == 30
    with pytest.raises(ValueError, match="at least 30 days"):
        lifecycle.purge_remembered_answers(books.ledger, 29)
    with pytest.raises(ValidationError):
        Settings(idempotency_retention_days=29)
    assert Settings().idempotency_retention_days == 30
    # Ten years at most: 36,500,000 days failed the purge with OverflowError (helper-82).
    assert Settings(idempotency_retention_days=3_650).idempotency_retention_days == 3_650
    for days in (3_651, 36_500_000, 10**20):
        with pytest.raises(ValidationError):
            Settings(idempotency_retention_days=days)
    # The command names the setting and its rule, and ends with 2, not a traceback.
    env = setapay_env(books.url) | {"SETAPAY_IDEMPOTENCY_RETENTION_DAYS": "36500000"}
    done = run_cli(env, "purge-answers")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "SETAPAY_IDEMPOTENCY_RETENTION_DAYS" in done.stderr and "36500000" not in done.stderr


def test_the_scheduler_purges_and_a_sale_is_never_posted_twice(database_url) -> None:
    clock = ManualClock(to_us(T0))
    settings = Settings(
        database_url=database_url,
        lifecycle_interval_s=0.05,
        occurred_at_max_past_days=100_000,  # so the late retry reaches the receipt check
        rate_limit_per_key="off",
    )
    app = create_app(settings, clock=clock)
    config = app.state.config
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
        for path, record in (
            ("/v1/merchants", {"id": "M1", "name": "八百屋", "merchant_class": "small"}),
            ("/v1/campaigns", CAMPAIGN),
            ("/v1/terminals", {"id": "T1", "merchant_id": "M1"}),
        ):
            made = client.post(path, json=record, headers=admin)
            assert made.status_code == 201, made.text
        terminal = {
            "Authorization": f"Bearer {config.create_key('terminal', terminal_id='T1')}",
            "Idempotency-Key": "k1",
        }
        body = register_in_process(app).sign_purchase(
            {
                "type": "purchase",
                "wallet_id": "W1",
                "merchant_id": "M1",
                "terminal_id": "T1",
                "occurred_at": T0.isoformat(),
                "amount": 1000,
            },
            jti="pay_purge_1",
        )
        first = client.post("/v1/transactions", headers=terminal, json=body)
        assert first.status_code == 201, first.text
        replay = client.post("/v1/transactions", headers=terminal, json=body)
        assert replay.headers.get("idempotent-replayed") == "true"
        # The same sale under a second key: its receipt is spent, a decline remembered under that key.
        other_key = {**terminal, "Idempotency-Key": "k2"}
        spent = client.post("/v1/transactions", headers=other_key, json=body)
        assert (spent.status_code, spent.json()["code"]) == (409, "receipt_already_used")
        assert _keys(app.state.engine) == {"k2"}

        clock.set(to_us(T0 + 30 * DAY + dt.timedelta(hours=1)))  # a new day: the scheduler purges
        deadline = time.monotonic() + 10
        while _keys(app.state.engine) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _keys(app.state.engine) == set()

        # The sale's own key is kept with its payment: the retry still replays the answer.
        again = client.post("/v1/transactions", headers=terminal, json=body)
        assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first.json()
        # The purged decline's key is new to the engine, and the receipt is still spent.
        declined = client.post("/v1/transactions", headers=other_key, json=body)
        assert (declined.status_code, declined.json()["code"]) == (409, "receipt_already_used")
        assert "idempotent-replayed" not in declined.headers
        assert _count(app.state.engine, PaymentRow) == 1
        # That decline is remembered afresh, as every decline is.
        assert client.post("/v1/transactions", headers=other_key, json=body).headers["idempotent-replayed"] == "true"
    app.state.engine.dispose()


def test_the_command_line_purges(database_url) -> None:
    """`setapay purge-answers`, as a daily cron job runs it: on the system clock, the configured retention."""
    books = Books(database_url)  # the system clock: answers remembered now
    books.setup({"M1": ["T1"]}, [campaign("C1")])
    now = dt.datetime.now(TOKYO)
    assert books.purchase("T1", "W1", 1000, now, points_used=5, key="k-now").body["code"] == "insufficient_points"
    _remembered_row(books.engine, "k-31-days", 422, to_us(now - 31 * DAY))  # one answer remembered 31 days ago
    done = cli(database_url, "purge-answers")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers_purged"] == 1
    assert _keys(books.engine) == {"k-now"}
    books.close()
