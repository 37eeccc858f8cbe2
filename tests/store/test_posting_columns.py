"""Plain purchases posted as columns (`engine.posting_columns`) store exactly what the
per-object reference (`PostingWriter.purchase`) stores: the same groups, with the same
payment ids and clock, posted both ways into two fresh databases of one kind, leave
every row of every money table equal, hashes included, and answer the same."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pytest
from sqlalchemy import text

from engine.clock import ManualClock
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.store import db, ledger, queries
from engine.store.config import Config
from engine.store.ledger import Ledger, Submission
from engine.timeutil import TOKYO, to_us

START = dt.datetime(2026, 12, 10, 12, tzinfo=TOKYO)
WALLETS = [f"W{i}" for i in range(6)]
SHARED_MINUTES = (7, 61)  # minutes before START of instants many purchases share
# Every table a purchase or refund writes, ordered by a key that does not depend on insertion order.
TABLES = {
    "payment": "sequence",
    "award": "payment_id, campaign_id",
    "posting": "sequence",
    "point_lot": "id",
    "wallet_lot": "id",  # every lot, kept on its award or in point_lot
    "redemption_leg": "payment_id, position",
    "account": "id",
    "wallet_window_usage": "campaign_id, wallet_id, window_key",
    "wallet_debt": "wallet_id, campaign_id",
    "idempotency_key": "terminal_id, key",
    "campaign": "id",
    "ledger_head": "id",
}


def _campaign(cid: str, **terms) -> Campaign:
    return Campaign.model_validate(
        dict(
            id=cid,
            name=cid,
            starts_at="2026-12-01T00:00:00+09:00",
            ends_at="2027-01-01T00:00:00+09:00",
            tiers=[{"match": {}, "rate_bp": 1000}],
            **terms,
        )
    )


def _ledger(url: str) -> Ledger:
    db.upgrade(url)
    clock = ManualClock(to_us(START - dt.timedelta(days=1)))
    engine = db.make_engine(url)
    config = Config(engine, clock=clock)
    config.create_merchant(Merchant(id="M1", name="八百屋", merchant_class="small", shotengai_id="S1"))
    config.create_merchant(Merchant(id="M2", name="書店", merchant_class="large"))
    for campaign in (
        _campaign("C_NOW", per_tx_cap=300),
        _campaign("C_DEKAD", credit={"schedule": "dekad", "delay_business_days": 5}),
        _campaign("C_LOCAL", item_tags=["local_produce"], per_wallet_cap=400, per_wallet_cap_period="month"),
        _campaign("C_BUDGET", fixed_points=50, budget=1200, per_wallet_cap=100, per_wallet_cap_period="day"),
    ):
        config.create_campaign(campaign)
    config.create_terminal("T1", "M1")
    config.create_terminal("T2", "M2")
    clock.set(to_us(START))
    ids = itertools.count(1)
    ledger_ = Ledger(engine, clock)
    ledger_.new_payment_ids = lambda n, at: [f"tx_{next(ids):032d}" for _ in range(n)]  # type: ignore[method-assign]
    return ledger_


def _instant_text(rng: random.Random) -> str:
    """A purchase's instant as a terminal writes it: often one a few other purchases of the group
    share, in Tokyo's offset or in UTC (the answer shows it as it came: same instant, other text)."""
    minutes = rng.choice(SHARED_MINUTES) if rng.random() < 0.4 else rng.randrange(0, 3000)
    instant = START - dt.timedelta(minutes=minutes)
    return instant.isoformat() if rng.random() < 0.5 else instant.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _purchase(rng: random.Random, key: str, points_used: int = 0) -> Submission:
    terminal, merchant = rng.choice((("T1", "M1"), ("T2", "M2")))
    amount = rng.randrange(max(points_used, 1), 12_000)
    items = None
    if rng.random() < 0.4:
        local = rng.randrange(0, amount + 1)
        items = [{"amount": local, "tags": ["local_produce"]}, {"amount": amount - local, "tags": []}]
    body = Purchase.model_validate(
        dict(
            wallet_id=rng.choice(WALLETS[:2] if rng.random() < 0.5 else WALLETS),
            merchant_id=merchant,
            terminal_id=terminal,
            occurred_at=_instant_text(rng),
            amount=amount,
            points_used=points_used,
            items=items,
        )
    )
    return Submission(terminal, key, key, body, body.model_dump_json())


def _story(url: str, seed: int, columnar: bool) -> tuple[list[tuple[int, dict]], dict[str, list[tuple]]]:
    """Post the story of `seed` and return every answer and every row of the money tables."""
    rng = random.Random(seed)
    ledger.COLUMNAR_PURCHASES = columnar
    try:
        book = _ledger(url)
        answers: list[tuple[int, dict]] = []
        accepted: list[dict] = []  # accepted purchases' answers, for refunds and redemptions
        for group in range(4):
            submissions = []
            for n in range(rng.randrange(20, 60)):
                key = f"g{group}-{n}"
                roll = rng.random()
                if group and roll < 0.15 and accepted:
                    original = rng.choice(accepted)
                    amount = rng.randrange(1, original["amount"] + 1)
                    body = Refund(original_id=original["id"], amount=amount, occurred_at=START)
                    terminal = original["terminal_id"]
                    submissions.append(Submission(terminal, key, key, body, body.model_dump_json()))
                elif group and roll < 0.3:
                    submissions.append(_purchase(rng, key, points_used=rng.randrange(1, 400)))
                else:
                    submissions.append(_purchase(rng, key))
            if group == 2:
                # W0 spends all it holds, then its earlier purchases are refunded: its points
                # are clawed back from an empty balance, so it goes into debt for group 3.
                held = queries.wallet_points(book.engine, "W0")["available"]
                if held > 0:
                    body = Purchase(
                        wallet_id="W0",
                        merchant_id="M1",
                        terminal_id="T1",
                        occurred_at=START,
                        amount=held + 100,
                        points_used=held,
                    )
                    submissions.append(Submission("T1", "spend-all", "spend-all", body, body.model_dump_json()))
                for n, original in enumerate(a for a in accepted if a["wallet_id"] == "W0" and a["points_awarded"]):
                    body = Refund(original_id=original["id"], amount=original["amount"], occurred_at=START)
                    submissions.append(
                        Submission(original["terminal_id"], f"claw-{n}", f"claw-{n}", body, body.model_dump_json())
                    )
            if submissions and rng.random() < 0.5:
                submissions.append(submissions[0])  # a retry inside the group
            results = book.submit(submissions)
            answers += [(r.status, r.body) for r in results]
            accepted += [r.body for r in results if r.status == 201 and r.body["type"] == "purchase"]
        check = queries.ledger_check(book.engine)
        assert check["ok"], check["checks"]
        with book.engine.connect() as conn:
            rows = {
                table: [
                    # the ledger's incarnation is random, one per database: not a row the group writes
                    tuple(v for k, v in r._mapping.items() if k != "ledger_id")
                    for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY {order}"))
                ]
                for table, order in TABLES.items()
            }
        book.engine.dispose()
        return answers, rows
    finally:
        ledger.COLUMNAR_PURCHASES = True


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_columns_store_what_the_reference_stores(database_url_pair, seed):
    reference_url, columnar_url = database_url_pair
    reference_answers, reference_rows = _story(reference_url, seed, columnar=False)
    answers, rows = _story(columnar_url, seed, columnar=True)
    assert answers == reference_answers
    for table in TABLES:
        assert rows[table] == reference_rows[table], table
    # The story exercised what it is about: accepted purchases, redemptions, refunds and debt.
    statuses = [status for status, _ in answers]
    assert statuses.count(201) > 60
    kinds = {body.get("type") for status, body in answers if status == 201}
    assert kinds == {"purchase", "refund"}
    assert any(body.get("points_used") for _, body in answers)
    assert len(rows["posting"]) > len(rows["payment"])
    assert rows["wallet_debt"], "no wallet went into debt: the story misses purchases of indebted wallets"
    # Purchases of one instant were written with two offsets, and answered as written.
    shared = START - dt.timedelta(minutes=SHARED_MINUTES[0])
    texts = {body["occurred_at"] for status, body in answers if status == 201 and body["type"] == "purchase"}
    assert {shared.isoformat(), shared.astimezone(dt.UTC).isoformat()} <= texts
