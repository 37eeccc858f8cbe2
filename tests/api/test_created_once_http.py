"""An admin's creations with an `Idempotency-Key` are made once (`engine.store.remembered`): a key
(`POST /v1/keys`) or a webhook endpoint (`POST /v1/webhooks`) retried under the same key gets the
same answer, its secret included, marked replayed; another body under the key is refused; two at
once make one. The secret is kept sealed, never in the clear. Over HTTP, on both databases."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from engine.store.models import ApiKeyRow, WebhookEndpointRow
from tests.ward import Ward

URL = "https://hooks.example.org/once"


def _stored(ward: Ward, key: str) -> str:
    with ward.server.db.connect() as c:
        return c.execute(text("SELECT response_json FROM idempotency_key WHERE key = :k"), {"k": key}).scalar_one()


def test_a_key_retried_under_its_idempotency_key_is_made_once(ward: Ward) -> None:
    key = f"once-{uuid.uuid4().hex}"
    before = ward.server.count(ApiKeyRow)
    with ward.server.client(ward.server.admin_key) as admin:
        body = {"role": "finance"}
        first = admin.post("/v1/keys", json=body, headers={"Idempotency-Key": key})
        again = admin.post("/v1/keys", json=body, headers={"Idempotency-Key": key})
        assert (first.status_code, again.status_code) == (201, 201), (first.text, again.text)
        assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
        assert again.json() == first.json() and again.content == first.content
        made = first.json()
        assert ward.server.count(ApiKeyRow) == before + 1
        # The key works, and was kept sealed only: neither it nor its hash is in the remembered row.
        with ward.server.client(made["key"]) as finance:
            assert finance.get("/v1/campaigns").status_code == 200
        assert made["key"] not in _stored(ward, key) and made["id"] in _stored(ward, key)
        # Another body under the same key: refused, nothing made; so is another route's.
        other = admin.post("/v1/keys", json={"role": "admin"}, headers={"Idempotency-Key": key})
        assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused"), other.text
        hook = admin.post(
            "/v1/webhooks", json={"url": URL, "event_types": ["clawback"]}, headers={"Idempotency-Key": key}
        )
        assert (hook.status_code, hook.json()["code"]) == (422, "idempotency_key_reused"), hook.text
        assert ward.server.count(ApiKeyRow) == before + 1
        # Without the header, each request makes its own, as before; a bad header makes nothing.
        assert admin.post("/v1/keys", json=body).json()["id"] != admin.post("/v1/keys", json=body).json()["id"]
        bad = admin.post("/v1/keys", json=body, headers={"Idempotency-Key": "tab\tkey"})
        assert (bad.status_code, bad.json()["code"]) == (400, "idempotency_key_invalid")
        assert ward.server.count(ApiKeyRow) == before + 3
    # The key is the admin key's: another admin's same key makes its own.
    with ward.server.client(ward.server.create_key("admin")) as other_admin:
        theirs = other_admin.post("/v1/keys", json=body, headers={"Idempotency-Key": key})
        assert theirs.status_code == 201 and theirs.json()["id"] != made["id"]


def test_a_webhook_endpoint_retried_under_its_idempotency_key_is_made_once(ward: Ward) -> None:
    key = f"once-{uuid.uuid4().hex}"
    before = ward.server.count(WebhookEndpointRow)
    body = {"url": URL, "event_types": ["clawback", "budget_threshold"]}
    with ward.server.client(ward.server.admin_key) as admin:
        first = admin.post("/v1/webhooks", json=body, headers={"Idempotency-Key": key})
        again = admin.post("/v1/webhooks", json=body, headers={"Idempotency-Key": key})
        assert (first.status_code, again.status_code) == (201, 201), (first.text, again.text)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json() == first.json()
        assert first.json()["secret"].startswith("whsec_") and first.json()["secret"] not in _stored(ward, key)
        assert ward.server.count(WebhookEndpointRow) == before + 1
        listed = [w for w in admin.get("/v1/webhooks").json() if w["id"] == first.json()["id"]]
        assert len(listed) == 1 and "secret" not in listed[0]
        # The types in another order, or one twice: the same endpoint asked for, so the same answer.
        reordered = {**body, "event_types": ["budget_threshold", "clawback", "clawback"]}
        same = admin.post("/v1/webhooks", json=reordered, headers={"Idempotency-Key": key})
        assert same.status_code == 201 and same.json() == first.json(), same.text
        assert ward.server.count(WebhookEndpointRow) == before + 1


def test_requests_at_once_under_one_idempotency_key_make_one_key(ward: Ward) -> None:
    key = f"once-{uuid.uuid4().hex}"
    before = ward.server.count(ApiKeyRow)

    def post(_: int):
        with ward.server.client(ward.server.admin_key) as admin:
            return admin.post(
                "/v1/keys", json={"role": "merchant", "merchant_id": "M_SHOTEN"}, headers={"Idempotency-Key": key}
            )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {201}, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1  # one key, its secret, for all eight
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    assert ward.server.count(ApiKeyRow) == before + 1
