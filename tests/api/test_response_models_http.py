"""Real answers validate against the typed 2xx models of the OpenAPI document (api/responses.py),
on SQLite and PostgreSQL: the models describe what the API returns, they do not shape it."""

from __future__ import annotations

import uuid

from api.openapi import Problem
from api.responses import (
    AuditPage,
    BatchAnswer,
    CampaignBudget,
    Campaigns,
    CloseoutReport,
    CreatedKey,
    GrantAnswer,
    Health,
    KeyListing,
    KeyListings,
    MerchantRewards,
    MerchantTransactions,
    MerchantView,
    MerchantViews,
    PurchaseAnswer,
    Readiness,
    Reconciliation,
    RefundAnswer,
    SettlementRun,
    SignedChainHeads,
    Simulation,
    TerminalView,
    TerminalViews,
    TransactionAnswer,
    WalletPoints,
)
from engine.model import Campaign
from tests.ward import WARD_CAMPAIGNS, now_tokyo, purchase, refund


def _strictly(model, answer):
    """The answer validates, and every field the model names is in it with the same value."""
    parsed = model.model_validate(answer)
    assert parsed.model_dump(mode="json", exclude_unset=True, by_alias=True) == answer
    return parsed


def test_transactions_validate(ward) -> None:
    wallet = "W_MODELS_" + uuid.uuid4().hex[:8]
    key = uuid.uuid4().hex
    body = purchase("T_SHOTEN_1", wallet, 3300, items=[{"amount": 1100, "tags": ["ethical"]}, {"amount": 2200}])
    first = ward.post("T_SHOTEN_1", body, key=key)
    assert first.status_code == 201, first.text
    assert isinstance(_strictly(TransactionAnswer, first.json()).root, PurchaseAnswer)
    assert first.json()["awards"], "the example purchase earns points"

    replay = ward.post("T_SHOTEN_1", body, key=key)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    _strictly(TransactionAnswer, replay.json())

    back = ward.post("T_SHOTEN_1", refund(first.json()["id"], 1100))
    assert back.status_code == 201, back.text
    assert isinstance(_strictly(TransactionAnswer, back.json()).root, RefundAnswer)

    declined = ward.post("T_SHOTEN_1", refund(first.json()["id"], 999_999))
    assert declined.status_code == 422 and declined.headers["content-type"] == "application/problem+json"
    Problem.model_validate(declined.json())

    for transaction_id, kind in ((first.json()["id"], PurchaseAnswer), (back.json()["id"], RefundAnswer)):
        read = ward.terminal("T_SHOTEN_1").get(f"/v1/transactions/{transaction_id}")
        assert read.status_code == 200, read.text
        assert isinstance(_strictly(TransactionAnswer, read.json()).root, kind)

    batch = ward.terminal("T_SHOTEN_1").post(
        "/v1/transactions/batch",
        json={
            "transactions": [
                {**purchase("T_SHOTEN_1", wallet, 1200), "idempotency_key": uuid.uuid4().hex},
                {**purchase("T_SHOTEN_1", wallet, 1200), "idempotency_key": 7},
                "not an object",
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    parsed = _strictly(BatchAnswer, batch.json())
    assert [r.status for r in parsed.results] == [201, 400, 422]  # a number as key: idempotency_key_invalid
    assert isinstance(parsed.results[0].body, TransactionAnswer)
    assert all(isinstance(r.body, Problem) for r in parsed.results[1:])

    points = ward.app_client.get(f"/v1/wallets/{wallet}/points")
    assert points.status_code == 200, points.text
    _strictly(WalletPoints, points.json())

    with ward.server.client(ward.finance_key) as finance:
        page = finance.get("/v1/merchants/M_SHOTEN/transactions", params={"limit": 2})
        assert page.status_code == 200 and page.json()["transactions"], page.text
        _strictly(MerchantTransactions, page.json())
        rewards = finance.get("/v1/merchants/M_SHOTEN/rewards", params={"from": "2026-01-01T00:00:00+09:00"})
        assert rewards.status_code == 200, rewards.text
        _strictly(MerchantRewards, rewards.json())
        grant = finance.post(
            "/v1/grants",
            json={"wallet_id": wallet, "campaign_id": "C_POINTBACK", "points": 5, "reason": "typed answers"},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert grant.status_code == 201, grant.text
        _strictly(GrantAnswer, grant.json())


def test_keys_audit_and_health_validate(ward) -> None:
    server = ward.server
    with server.client(server.admin_key) as admin:
        created = admin.post("/v1/keys", json={"role": "merchant", "merchant_id": "M_SHOTEN"})
        assert created.status_code == 201, created.text
        _strictly(CreatedKey, created.json())
        listing = admin.get("/v1/keys")
        assert listing.status_code == 200
        _strictly(KeyListings, listing.json())
        revoked = admin.post(f"/v1/keys/{created.json()['id']}/revoke")
        assert revoked.status_code == 200
        _strictly(KeyListing, revoked.json())
        audit = admin.get("/v1/audit", params={"limit": 5})
        assert audit.status_code == 200 and audit.json()["entries"]
        _strictly(AuditPage, audit.json())
        _strictly(Health, admin.get("/healthz").json())
        ready = admin.get("/readyz")
        assert ready.status_code == 200
        _strictly(Readiness, ready.json())


def test_configuration_validates(ward) -> None:
    with ward.server.client(ward.server.admin_key) as admin:
        _strictly(MerchantViews, admin.get("/v1/merchants").json())
        _strictly(MerchantView, admin.get("/v1/merchants/M_SHOTEN").json())
        _strictly(Campaigns, admin.get("/v1/campaigns").json())
        _strictly(Campaign, admin.get("/v1/campaigns/C_POINTBACK").json())
        _strictly(TerminalViews, admin.get("/v1/terminals").json())
        _strictly(TerminalView, admin.get("/v1/terminals/T_SHOTEN_1").json())
        merchant = {
            "id": "M_TYPED_" + uuid.uuid4().hex[:6],
            "name": "型付き商店",
            "merchant_class": "small",
            "bank_account": {
                "bank_code": "0001",
                "branch_code": "001",
                "account_type": "ordinary",
                "account_number": "1234567",
                "holder_kana": "ｶﾀﾂｷ",
            },
        }
        created = admin.post("/v1/merchants", json=merchant)
        assert created.status_code == 201, created.text
        _strictly(MerchantView, created.json())
        patched = admin.patch(f"/v1/merchants/{merchant['id']}", json={"name": "型付き商店 2"})
        assert patched.status_code == 200, patched.text
        _strictly(MerchantView, patched.json())


def test_finance_validates(ward) -> None:
    ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_FINANCE_MODELS", 2200))
    closeout = ward.terminal("T_SHOTEN_1").post(
        "/v1/terminals/T_SHOTEN_1/closeouts", json={"business_date": now_tokyo()[:10], "count": 0, "total": 0}
    )
    assert closeout.status_code == 201, closeout.text
    assert not closeout.json()["matches"]
    _strictly(CloseoutReport, closeout.json())
    with ward.server.client(ward.finance_key) as finance:
        budget = finance.get("/v1/campaigns/C_ETHICAL/budget")
        assert budget.status_code == 200, budget.text
        _strictly(CampaignBudget, budget.json())
        run = finance.post("/v1/settlement-runs", json={})
        assert run.status_code in (200, 201), run.text
        _strictly(SettlementRun, run.json())
        again = finance.get(f"/v1/settlement-runs/{run.json()['id']}")
        assert again.status_code == 200
        _strictly(SettlementRun, again.json())
        heads = finance.post("/v1/chain-heads")
        assert heads.status_code == 201, heads.text
        _strictly(SignedChainHeads, heads.json())
        report = finance.get("/v1/reconciliation")
        assert report.status_code == 200, report.text
        _strictly(Reconciliation, report.json())
        draft = {**WARD_CAMPAIGNS[0], "budget": 100}
        simulated = finance.post(
            "/v1/campaigns/C_POINTBACK/simulate",
            json={"campaign": draft, "from": "2026-01-01T00:00:00+09:00", "to": now_tokyo(60)},
        )
        assert simulated.status_code == 200, simulated.text
        _strictly(Simulation, simulated.json())
