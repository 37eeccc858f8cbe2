"""A small history with catalog eras: campaign and merchant versions change between purchases.

`build(ward)` posts it through the HTTP API (so through `Ledger.submit`) and
returns what the test sent, in acceptance order, with the configuration in
force at each acceptance — enough to rate it again independently.
"""

from __future__ import annotations

from tests.finance.support import Ward, jst

TAG = "local_produce"


def build(ward: Ward, before_budget_runs_out=None) -> dict:
    ward.merchant("M001", shotengai_id="S01")
    ward.merchant("M002", merchant_class="semi_large")
    ward.campaign(
        "PB",
        1000,
        budget=2_000,
        per_wallet_cap=900,
        per_wallet_cap_period="day",
        tiers=[
            {"match": {"merchant_classes": ["small"]}, "rate_bp": 1000},
            {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 500},
        ],
    )
    ward.campaign("TAGGED", 2000, item_tags=[TAG], credit={"schedule": "dekad", "delay_business_days": 1})
    sent = []

    def purchase(merchant, wallet, occurred, amount, items=None):
        ward.clock.set(__import__("tests.finance.support", fromlist=["us"]).us(occurred) + 2_000_000)
        body = {
            "type": "purchase",
            "wallet_id": wallet,
            "merchant_id": merchant,
            "terminal_id": f"T{merchant}",
            "occurred_at": jst(occurred).isoformat(),
            "amount": amount,
            "points_used": 0,
        }
        if items is not None:
            body["items"] = items
        answer = ward._post(f"T{merchant}", body)
        sent.append(answer)
        return answer

    a = purchase("M001", "W1", "2026-12-01T10:00", 5_000)
    purchase(
        "M002", "W2", "2026-12-01T11:00", 3_000, items=[{"amount": 1_000, "tags": [TAG]}, {"amount": 2_000, "tags": []}]
    )
    purchase("M001", "W1", "2026-12-01T12:00", 6_000)  # wallet cap of the day
    # A new PB version and a merchant that changes class: later payments see them, earlier ones not.
    r = ward.client.patch(
        "/v1/campaigns/PB",
        json={"tiers": [{"match": {"merchant_classes": ["small"]}, "rate_bp": 1200}]},
        headers=ward.admin,
    )
    assert r.status_code == 200, r.text
    r = ward.client.patch("/v1/merchants/M002", json={"merchant_class": "small"}, headers=ward.admin)
    assert r.status_code == 200, r.text
    purchase("M002", "W3", "2026-12-02T09:00", 4_000, items=[{"amount": 4_000, "tags": [TAG]}])
    sent.append(ward.refund(a, "2026-12-02T10:00", 2_000))
    if before_budget_runs_out:
        before_budget_runs_out()
    purchase("M001", "W4", "2026-12-02T11:00", 9_000)  # the budget runs out
    purchase("M001", "W5", "2026-12-03T11:00", 2_000)
    return {"sent": sent, "first": a}
