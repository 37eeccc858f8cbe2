"""Rate limits (SPEC §9.4) of a server counting in its own memory: without Redis, and with a
Redis that cannot be reached (the limits still hold, in process, and nothing fails).

One SQLite server of each kind, limits at their defaults; tests/api/test_keys_http.py
covers the shared (Redis) case on PostgreSQL.
"""

from __future__ import annotations

import uuid

import pytest

from tests.api.test_keys_http import (
    FAILURES,
    FAILURES_N,
    PER_KEY,
    PER_KEY_N,
    _assert_limited,
    _one_window_burst,
    client,
)

LIMITS = {"SETAPAY_RATE_LIMIT_PER_KEY": PER_KEY, "SETAPAY_AUTH_FAILURES_PER_IP": FAILURES}
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module", params=["memory", "redis_unreachable"])
def server(request, start_server):
    env = dict(LIMITS)
    if request.param == "redis_unreachable":
        env["SETAPAY_REDIS_URL"] = UNREACHABLE_REDIS
    return start_server("sqlite", env=env)


def test_failed_authentications_per_address(server) -> None:
    address = "127.0.3.7"
    answers = []
    with client(server, None, address) as c:
        for _ in range(FAILURES_N + 5):
            r = c.get("/v1/campaigns", headers={"Authorization": f"Bearer sp_admin_{uuid.uuid4().hex}"})
            answers.append((r.status_code, r.headers.get("Retry-After")))
        missing = c.get("/v1/campaigns")  # no key at all: a failure too, and over the limit
        assert (missing.status_code, missing.json()["code"]) == (429, "rate_limited")
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code in (200, 503)
    assert [s for s, _ in answers] == [401] * FAILURES_N + [429] * 5, answers
    assert all(ra is not None and 1 <= int(ra) <= 60 for s, ra in answers if s == 429), answers
    with server.client(server.admin_key) as c:  # another address is not held back
        assert c.get("/v1/keys").status_code == 200


def test_requests_per_key(server) -> None:
    _assert_limited(_one_window_burst([server], PER_KEY_N + 20))


def test_a_forwarded_for_header_does_not_pick_the_counted_address(server) -> None:
    """Without SETAPAY_TRUSTED_PROXIES nobody's X-Forwarded-For is believed: a guesser cannot
    spread its failures over made-up addresses."""
    answers = []
    with client(server, None, "127.0.0.1") as c:  # the address uvicorn would trust by default
        for i in range(FAILURES_N + 3):
            r = c.get(
                "/v1/campaigns",
                headers={"Authorization": f"Bearer sp_admin_{uuid.uuid4().hex}", "X-Forwarded-For": f"10.9.{i}.1"},
            )
            answers.append(r.status_code)
    assert answers == [401] * FAILURES_N + [429] * 3, answers
