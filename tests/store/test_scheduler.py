"""The in-process lifecycle scheduler credits due awards by itself and stops with the app."""

import datetime as dt
import time

from fastapi.testclient import TestClient

from api.app import create_app
from engine.clock import ManualClock
from engine.settings import Settings
from engine.timeutil import TOKYO, to_us
from tests.receipts import register_in_process

DAY = dt.datetime(2026, 12, 3, 12, tzinfo=TOKYO)


def test_scheduler_credits_due_awards(sqlite_url):
    clock = ManualClock(to_us(DAY - dt.timedelta(days=1)))
    app = create_app(Settings(database_url=sqlite_url, lifecycle_interval_s=0.05), clock=clock)
    config = app.state.config
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
        client.post("/v1/merchants", json={"id": "M1", "name": "八百屋", "merchant_class": "small"}, headers=admin)
        client.post(
            "/v1/campaigns",
            headers=admin,
            json={
                "id": "C1",
                "name": "dekad",
                "starts_at": "2026-12-01T00:00:00+09:00",
                "ends_at": "2027-01-01T00:00:00+09:00",
                "tiers": [{"match": {}, "rate_bp": 1000}],
                "credit": {"schedule": "dekad", "delay_business_days": 5},
            },
        )
        client.post("/v1/terminals", json={"id": "T1", "merchant_id": "M1"}, headers=admin)
        terminal = {
            "Authorization": f"Bearer {config.create_key('terminal', terminal_id='T1')}",
            "Idempotency-Key": "k1",
        }
        clock.set(to_us(DAY))
        answer = client.post(
            "/v1/transactions",
            headers=terminal,
            json=register_in_process(app).sign_purchase(
                {
                    "type": "purchase",
                    "wallet_id": "W1",
                    "merchant_id": "M1",
                    "terminal_id": "T1",
                    "occurred_at": DAY.isoformat(),
                    "amount": 1000,
                }
            ),
        ).json()
        award = answer["awards"][0]
        assert award["status"] == "pending" and award["points"] == 100
        finance = {"Authorization": f"Bearer {config.create_key('finance')}"}
        time.sleep(0.3)  # ticks before the crediting day credit nothing
        assert client.get("/v1/wallets/W1/points", headers=finance).json()["pending"] == 100
        clock.set(to_us(dt.datetime.fromisoformat(award["credit_at"])))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            points = client.get("/v1/wallets/W1/points", headers=finance).json()
            if points["available"] == 100:
                break
            time.sleep(0.05)
        assert points["pending"] == 0 and points["available"] == 100
        threads_before_exit = [t.name for t in __import__("threading").enumerate()]
        assert "lifecycle" in threads_before_exit
    time.sleep(0.3)
    assert "lifecycle" not in [t.name for t in __import__("threading").enumerate()]
    app.state.engine.dispose()
