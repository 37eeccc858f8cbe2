"""Two refunds of one purchase in the same group post exactly what they would one group apart."""

import datetime as dt

from engine.clock import ManualClock
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.store import db, queries
from engine.store.config import Config
from engine.store.ledger import Ledger, Submission
from engine.timeutil import TOKYO, to_us

START = dt.datetime(2026, 12, 10, 12, tzinfo=TOKYO)


def _ledger(url: str) -> Ledger:
    db.upgrade(url)
    clock = ManualClock(to_us(START - dt.timedelta(days=1)))
    engine = db.make_engine(url)
    config = Config(engine, clock=clock)
    config.create_merchant(Merchant(id="M1", name="八百屋", merchant_class="small", shotengai_id="S1"))
    for cid, schedule in (("C_DEKAD", "dekad"), ("C_NOW", "immediate")):
        config.create_campaign(
            Campaign.model_validate(
                dict(
                    id=cid,
                    name=cid,
                    starts_at="2026-12-01T00:00:00+09:00",
                    ends_at="2027-01-01T00:00:00+09:00",
                    tiers=[{"match": {}, "rate_bp": 1000}],
                    credit={"schedule": schedule, "delay_business_days": 5},
                )
            )
        )
    config.create_terminal("T1", "M1")
    clock.set(to_us(START))
    return Ledger(engine, clock)


def _submission(key: str, body) -> Submission:
    return Submission("T1", key, key, body, body.model_dump_json())


def _story(url: str, together: bool) -> tuple[list[dict], dict]:
    ledger = _ledger(url)
    # Earn immediate points, then buy partly with them so refunds also return points.
    (earn,) = ledger.submit(
        [
            _submission(
                "p0", Purchase(wallet_id="W1", merchant_id="M1", terminal_id="T1", occurred_at=START, amount=5000)
            )
        ]
    )
    (buy,) = ledger.submit(
        [
            _submission(
                "p1",
                Purchase(
                    wallet_id="W1", merchant_id="M1", terminal_id="T1", occurred_at=START, amount=3001, points_used=401
                ),
            )
        ]
    )
    assert earn.status == buy.status == 201, (earn.body, buy.body)
    refunds = [
        _submission(f"r{i}", Refund(original_id=buy.body["id"], amount=amount, occurred_at=START))
        for i, amount in enumerate((1000, 2001))
    ]
    results = ledger.submit(refunds) if together else [ledger.submit([r])[0] for r in refunds]
    check = queries.ledger_check(ledger.engine)
    wallet = queries.wallet_points(ledger.engine, "W1")
    ledger.engine.dispose()
    answers = [
        {k: r.body[k] for k in ("clawbacks", "points_clawed_back", "points_returned", "coin_refunded")} for r in results
    ]
    assert all(r.status == 201 for r in results), [r.body for r in results]
    assert check["ok"], check["checks"]
    return answers, {k: wallet[k] for k in ("pending", "available", "debt")}


def test_two_refunds_in_one_group_equal_two_groups(database_url_pair):
    # A second, fresh database (dropped after the test, as the first) for the same story with
    # both refunds in one group.
    database_url, other = database_url_pair
    apart, wallet_apart = _story(database_url, together=False)
    together, wallet_together = _story(other, together=True)
    assert together == apart
    assert wallet_together == wallet_apart
    # The purchase's dekad award was still pending, so its clawbacks came out of pending
    # points: what stays pending is the first purchase's 500.
    assert wallet_apart["pending"] == 500
    assert sum(a["points_returned"] for a in apart) == 401
    assert sum(a["coin_refunded"] for a in apart) == 3001 - 401
