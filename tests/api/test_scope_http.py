"""Scope findings of the trust issue, as regression tests over HTTP (SQLite and PostgreSQL).

- a terminal moved to another merchant no longer reads its old merchant's transactions;
- terminals no longer read wallets; the payment app's backend (role `app`) and finance do;
- the `app` role reads wallets and nothing that moves money.
"""

from __future__ import annotations

import uuid

from tests.ward import Ward, purchase


def test_a_moved_terminal_leaves_its_old_merchants_transactions_behind(ward: Ward) -> None:
    admin = ward.server.client(ward.server.admin_key)
    terminal_id = "T_MOVING_" + uuid.uuid4().hex[:6]
    assert admin.post("/v1/terminals", json={"id": terminal_id, "merchant_id": "M_SHOTEN"}).status_code == 201
    client = ward.server.terminal_client(ward.terminal_key(terminal_id))
    body = {**purchase("T_SHOTEN_1", "W_MOVED", 1000), "terminal_id": terminal_id}
    bought = client.post("/v1/transactions", json=body, headers={"Idempotency-Key": "moving-1"})
    assert bought.status_code == 201, bought.text
    path = f"/v1/transactions/{bought.json()['id']}"
    assert client.get(path).status_code == 200
    assert admin.patch(f"/v1/terminals/{terminal_id}", json={"merchant_id": "M_CONV"}).status_code == 200
    r = client.get(path)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden"), r.text
    # It now posts for its new merchant, and not for the old one.
    moved = client.post(
        "/v1/transactions", json={**body, "merchant_id": "M_CONV"}, headers={"Idempotency-Key": "moving-2"}
    )
    assert moved.status_code == 201, moved.text
    old = client.post(
        "/v1/transactions", json={**body, "wallet_id": "W_MOVED_2"}, headers={"Idempotency-Key": "moving-3"}
    )
    assert (old.status_code, old.json()["code"]) == (403, "forbidden")
    client.close()
    admin.close()


def test_wallets_are_read_by_the_app_and_finance_only(ward: Ward) -> None:
    assert ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_PRIVATE", 2000)).status_code == 201
    path = "/v1/wallets/W_PRIVATE/points"
    for key in (
        ward.terminal_key("T_SHOTEN_1"),
        ward.terminal_key("T_CONV"),
        ward.key("merchant", "M_SHOTEN"),
        ward.server.admin_key,
    ):
        with ward.server.client(key) as c:
            r = c.get(path)
        assert (r.status_code, r.json()["code"]) == (403, "forbidden"), key.split("_")[1]
    for key in (ward.key("app"), ward.finance_key):
        with ward.server.client(key) as c:
            r = c.get(path)
        assert r.status_code == 200 and r.json()["available"] > 0, r.text


def test_the_app_role_moves_no_money(ward: Ward) -> None:
    app_key = ward.key("app")
    with ward.server.client(app_key) as c:
        for method, path, body in (
            ("POST", "/v1/transactions", ward.server.payment_app.sign_purchase(purchase("T_SHOTEN_1", "W_APP", 100))),
            ("POST", "/v1/grants", {"wallet_id": "W_APP", "campaign_id": "C_POINTBACK", "points": 10, "reason": "app"}),
            ("POST", "/v1/settlement-runs", {"period": "2026-11"}),
            ("GET", "/v1/merchants/M_SHOTEN/transactions", None),
            ("POST", "/v1/merchants", {"id": "M_APP", "name": "x", "merchant_class": "small"}),
        ):
            r = c.request(method, path, json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            assert (r.status_code, r.json()["code"]) == (403, "forbidden"), (path, r.text)


def test_a_moved_terminals_closeout_shows_only_its_new_merchants_sales(ward: Ward) -> None:
    admin = ward.server.client(ward.server.admin_key)
    terminal_id = "T_CLOSING_" + uuid.uuid4().hex[:6]
    assert admin.post("/v1/terminals", json={"id": terminal_id, "merchant_id": "M_SHOTEN"}).status_code == 201
    client = ward.server.terminal_client(ward.terminal_key(terminal_id))
    body = {**purchase("T_SHOTEN_1", "W_CLOSING", 1234), "terminal_id": terminal_id}
    sold = client.post("/v1/transactions", json=body, headers={"Idempotency-Key": "closing-1"})
    assert sold.status_code == 201, sold.text
    day = body["occurred_at"][:10]
    mismatch = client.post(
        f"/v1/terminals/{terminal_id}/closeouts", json={"business_date": day, "count": 0, "total": 0}
    )
    assert mismatch.json()["transactions"][0]["id"] == sold.json()["id"]  # at its merchant it sees its day
    assert admin.patch(f"/v1/terminals/{terminal_id}", json={"merchant_id": "M_CONV"}).status_code == 200
    r = client.post(f"/v1/terminals/{terminal_id}/closeouts", json={"business_date": day, "count": 1, "total": 1234})
    assert r.status_code == 201, r.text
    assert r.json()["ledger"] == {"count": 0, "total": 0} and sold.json()["id"] not in r.text
    client.close()
    admin.close()
