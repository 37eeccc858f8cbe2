"""The event outbox (SPEC §10) on a real database, on a clock the test moves: each event type is
written by the change it describes, once where it must be once, and `GET /v1/events` pages them."""

from __future__ import annotations

import pytest

from engine.store import lifecycle
from tests.finance.support import Ward
from tests.tokyo import us


@pytest.fixture
def ward(database_url):
    w = Ward(database_url, webhook_delivery_interval_s=0)
    try:
        yield w
    finally:
        w.close()


def _events(ward: Ward, **params) -> list[dict]:
    r = ward.client.get("/v1/events", headers=ward.finance, params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return r.json()["events"]


def test_budget_thresholds_are_said_once_each_and_clawbacks_name_the_wallet(ward: Ward) -> None:
    ward.merchant("M1")
    ward.campaign("C_BUDGET", 1000, budget=1000)  # 10 % back, 1,000 points in all
    first = ward.purchase("M1", "W1", "2026-12-01T10:00", 7_000)  # 700: below 80 %
    assert _events(ward, types="budget_threshold") == []
    ward.purchase("M1", "W2", "2026-12-01T11:00", 1_000)  # 800: 80 % reached
    ward.refund(first, "2026-12-01T12:00", 2_000)  # 600: below again
    ward.purchase("M1", "W2", "2026-12-01T13:00", 3_000)  # 900: 80 % crossed again, said once
    ward.purchase("M1", "W3", "2026-12-01T14:00", 5_000)  # capped by the budget: 1,000
    said = _events(ward, types="budget_threshold")
    assert [(e["data"]["threshold_percent"], e["data"]["issued"]) for e in said] == [(80, 800), (100, 1000)]
    assert all(e["wallet_id"] is None and e["data"]["campaign_id"] == "C_BUDGET" for e in said)
    clawbacks = _events(ward, types="clawback")
    assert len(clawbacks) == 1 and clawbacks[0]["wallet_id"] == "W1"
    assert clawbacks[0]["data"]["original_id"] == first["id"]
    assert clawbacks[0]["data"]["clawbacks"] == [{"campaign_id": "C_BUDGET", "points": 200}]


def test_expiry_warnings_30_and_7_days_ahead_once_per_lot_then_expired(ward: Ward) -> None:
    ward.merchant("M1")
    ward.campaign("C_SHORT", 1000, validity_months=1)
    ward.purchase("M1", "W1", "2026-12-01T10:00", 5_000)  # 500 points, expiring 2027-02-01 00:00 JST
    ward.purchase("M1", "W2", "2026-12-20T10:00", 1_000)  # 100 points, the same expiry
    for day in ("2026-12-31", "2027-01-02", "2027-01-03"):  # 31, 30 then 29 days ahead
        lifecycle.expire_due(ward.ledger, us(f"{day}T01:00"))
    warned = _events(ward, types="points_expiring")
    assert sorted((e["wallet_id"], e["data"]["days_ahead"], e["data"]["points"]) for e in warned) == [
        ("W1", 30, 500),
        ("W2", 30, 100),
    ]
    for day in ("2027-01-25", "2027-01-26"):
        lifecycle.expire_due(ward.ledger, us(f"{day}T01:00"))
    assert len(_events(ward, types="points_expiring")) == 4
    ward.at("2027-02-02T09:00")
    lifecycle.expire_due(ward.ledger, us("2027-02-02T01:00"))
    expired = _events(ward, types="points_expired")
    assert sorted((e["wallet_id"], e["data"]["points"]) for e in expired) == [("W1", 500), ("W2", 100)]
    # A lot first seen within 7 days of its expiry is told 7 days ahead only.
    ward.purchase("M1", "W3", "2027-03-28T10:00", 1_000)  # expires 2027-05-01
    lifecycle.expire_due(ward.ledger, us("2027-04-27T01:00"))
    late = [e for e in _events(ward, types="points_expiring") if e["wallet_id"] == "W3"]
    assert [e["data"]["days_ahead"] for e in late] == [7]


def test_credit_settlement_and_failed_payouts_and_paging(ward: Ward) -> None:
    ward.merchant("M1", bank=1)
    ward.merchant("M2")  # no bank account: its payout fails
    ward.campaign("C_LATER", 1000, credit={"schedule": "dekad", "delay_business_days": 1})
    bought = ward.purchase("M1", "W1", "2026-12-01T10:00", 1_000)
    ward.purchase("M2", "W2", "2026-12-02T10:00", 2_000)
    assert _events(ward, types="award_credited") == []
    ward.at("2026-12-20T09:00")
    lifecycle.credit_due(ward.ledger, ward.now_us())
    credited = _events(ward, types="award_credited")
    assert sorted((e["wallet_id"], e["data"]["points"]) for e in credited) == [("W1", 100), ("W2", 200)]
    assert bought["id"] in {e["data"]["transaction_id"] for e in credited}
    ward.at("2027-01-02T09:00")
    run = ward.settle("2026-12")
    completed = _events(ward, types="settlement_completed")
    assert [e["data"]["run_id"] for e in completed] == [run["id"]]
    failed = _events(ward, types="payout_failed")
    assert [(e["data"]["merchant_id"], e["data"]["reason"]) for e in failed] == [("M2", "no_bank_account")]
    r = ward.client.post(
        f"/v1/settlement-runs/{run['id']}/payout-results",
        headers=ward.finance,
        json={"results": [{"merchant_id": "M1", "status": "failed"}]},
    )
    assert r.status_code == 200, r.text
    failed = _events(ward, types="payout_failed")
    assert [(e["data"]["merchant_id"], e["data"]["reason"]) for e in failed][-1] == ("M1", "bank_rejected")

    # Keyset paging: every event once, in id order, whatever the page size.
    everything = _events(ward)
    seen, after = [], 0
    while True:
        page = ward.client.get("/v1/events", headers=ward.finance, params={"after": after, "limit": 2}).json()
        if not page["events"]:
            assert page["next_after"] == after
            break
        seen += page["events"]
        after = page["next_after"]
    assert seen == everything and [e["id"] for e in seen] == sorted(e["id"] for e in seen)
    bad = ward.client.get("/v1/events", headers=ward.finance, params={"types": "award_credited,nope"})
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
