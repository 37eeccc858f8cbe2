"""Idempotency over HTTP (SPEC §6): a retry never doubles anything.

Against a real server on SQLite and PostgreSQL, and for concurrency also a
two-worker server on PostgreSQL, where the in-process guard of one worker
cannot see the other and the database alone must keep a key applied once.
The ledger is counted directly in the database before and after.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import httpx
import pytest

from engine.store.models import IdempotencyRow
from tests.ward import Ward, purchase

CONCURRENT_REQUESTS = 24


def _counts(ward: Ward) -> tuple[int, int]:
    return ward.server.payments(), ward.server.postings()


def test_replay_returns_the_original_answer_and_writes_nothing(ward: Ward) -> None:
    body = purchase(
        "T_SHOTEN_1", "W_REPLAY", 3300, items=[{"amount": 1100, "tags": ["ethical"]}, {"amount": 2200, "tags": []}]
    )
    first = ward.post("T_SHOTEN_1", body, key="replay-1")
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    assert first.json()["points_awarded"] > 0
    counts = _counts(ward)

    for _ in range(3):
        again = ward.post("T_SHOTEN_1", body, key="replay-1")
        assert again.status_code == 201
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json() == first.json()
    assert _counts(ward) == counts
    assert ward.terminal("T_SHOTEN_1").get(f"/v1/transactions/{first.json()['id']}").status_code == 200


def test_same_key_with_another_body_is_refused(ward: Ward) -> None:
    body = purchase("T_SHOTEN_1", "W_REUSE", 1000)
    first = ward.post("T_SHOTEN_1", body, key="reuse-1")
    assert first.status_code == 201, first.text
    counts = _counts(ward)

    for changed in ({**body, "amount": 1001}, {**body, "wallet_id": "W_OTHER"}, {**body, "points_used": 1}):
        r = ward.post("T_SHOTEN_1", changed, key="reuse-1")
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "idempotency_key_reused"
    assert _counts(ward) == counts
    # The original is still what the key answers.
    again = ward.post("T_SHOTEN_1", body, key="reuse-1")
    assert (again.status_code, again.json()) == (201, first.json())


def test_declines_are_remembered_and_replayed(ward: Ward) -> None:
    redeem = purchase("T_SHOTEN_1", "W_DECLINE", 1000, points_used=100)
    declined = ward.post("T_SHOTEN_1", redeem, key="decline-1")
    assert declined.status_code == 422, declined.text
    assert declined.json()["code"] == "insufficient_points"
    counts = _counts(ward)

    # The wallet earns 200 points, enough for the redemption now...
    earned = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_DECLINE", 1000))
    assert earned.status_code == 201 and earned.json()["points_awarded"] >= 100, earned.text
    counts = _counts(ward)
    # ...but the remembered key still answers the decline it gave, and writes nothing.
    again = ward.post("T_SHOTEN_1", redeem, key="decline-1")
    assert again.status_code == 422
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == declined.json()
    assert _counts(ward) == counts
    # A new key is a new request and is accepted.
    fresh = ward.post("T_SHOTEN_1", redeem, key="decline-2")
    assert fresh.status_code == 201, fresh.text
    assert "idempotent-replayed" not in fresh.headers


@pytest.mark.parametrize(
    "bad_body, status, code",
    [
        (b'{"type": "purchase", "amount": ', 400, "malformed_json"),
        (b'{"type": "purchase", "amount": "lots"}', 422, "invalid_request"),
    ],
    ids=["malformed_json", "invalid_request"],
)
def test_malformed_requests_are_not_remembered(ward: Ward, bad_body: bytes, status: int, code: str) -> None:
    key = f"malformed-{uuid.uuid4().hex}"
    bad = ward.post("T_SHOTEN_1", bad_body, key=key)
    assert (bad.status_code, bad.json()["code"]) == (status, code), bad.text
    with ward.server.db.connect() as connection:
        assert connection.execute(IdempotencyRow.__table__.select().where(IdempotencyRow.key == key)).first() is None
    good = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_MALFORMED", 500), key=key)
    assert good.status_code == 201, good.text
    assert "idempotent-replayed" not in good.headers


def test_missing_key_is_refused(ward: Ward) -> None:
    counts = _counts(ward)
    r = ward.terminal("T_SHOTEN_1").post("/v1/transactions", json=purchase("T_SHOTEN_1", "W_NOKEY", 500))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "idempotency_key_missing"
    assert _counts(ward) == counts


def test_keys_are_scoped_to_the_terminal(ward: Ward) -> None:
    counts = _counts(ward)
    one = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_SCOPE", 800), key="shared-key")
    two = ward.post("T_SHOTEN_2", purchase("T_SHOTEN_2", "W_SCOPE", 800), key="shared-key")
    three = ward.post("T_CONV", purchase("T_CONV", "W_SCOPE", 800), key="shared-key")
    for r in (one, two, three):
        assert r.status_code == 201, r.text
        assert "idempotent-replayed" not in r.headers
    assert len({one.json()["id"], two.json()["id"], three.json()["id"]}) == 3
    assert _counts(ward)[0] == counts[0] + 3


def _storm(ward: Ward, terminal_id: str, body: dict, key: str) -> list[httpx.Response]:
    """CONCURRENT_REQUESTS threads send the same request with the same key at the same moment."""
    secret = ward.terminal_key(terminal_id)
    barrier = threading.Barrier(CONCURRENT_REQUESTS)
    responses: list[httpx.Response | BaseException] = [None] * CONCURRENT_REQUESTS  # type: ignore[list-item]

    def send(i: int) -> None:
        with ward.server.terminal_client(secret) as c:
            barrier.wait()
            try:
                responses[i] = c.post("/v1/transactions", json=body, headers={"Idempotency-Key": key})
            except BaseException as exc:  # reported below
                responses[i] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(CONCURRENT_REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, httpx.Response) for r in responses), responses
    return responses  # type: ignore[return-value]


def _assert_applied_once(ward: Ward, responses: list[httpx.Response], counts_before: tuple[int, int]) -> None:
    outcomes = Counter(
        (r.status_code, r.headers.get("idempotent-replayed") == "true", r.json().get("code")) for r in responses
    )
    applied = [r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers]
    assert len(applied) == 1, outcomes
    for r in responses:
        if r.status_code == 201:
            assert r.json() == applied[0].json()
        else:
            assert (r.status_code, r.json()["code"]) == (409, "request_in_progress"), r.text
    # One payment; a second request with the key would have added postings again.
    payments, postings = _counts(ward)
    assert payments == counts_before[0] + 1
    answer = applied[0].json()
    tx = ward.terminal("T_CONV").get(f"/v1/transactions/{answer['id']}")
    assert tx.status_code == 200
    stored = [{k: a[k] for k in b} for a, b in zip(tx.json()["awards"], answer["awards"])]
    assert stored == answer["awards"]
    # The award postings plus the coin sale, and no more.
    assert postings == counts_before[1] + 1 + len(applied[0].json()["awards"])


def test_concurrent_requests_with_one_key_apply_once(ward: Ward) -> None:
    counts = _counts(ward)
    body = purchase("T_CONV", "W_STORM", 2000)
    _assert_applied_once(ward, _storm(ward, "T_CONV", body, "storm-1"), counts)


@pytest.fixture(scope="module")
def ward_two_workers(start_server):
    """The ward on PostgreSQL behind `setapay serve --workers 2`."""
    w = Ward(start_server("postgresql", workers=2))
    try:
        yield w
    finally:
        w.close()


@pytest.mark.postgres
def test_concurrent_requests_with_one_key_apply_once_across_two_workers(ward_two_workers: Ward) -> None:
    ward = ward_two_workers
    for round_ in range(3):
        counts = _counts(ward)
        body = purchase("T_CONV", f"W_STORM2_{round_}", 2000 + round_)
        _assert_applied_once(ward, _storm(ward, "T_CONV", body, f"storm-2w-{round_}"), counts)
