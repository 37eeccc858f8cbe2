"""Structured logs (issue 14): one JSON line per request from a real `setapay serve`, found by its
request id; the id is the caller's `X-Request-Id` when usable, else made, and always returned;
no key, receipt or signature ever reaches the log."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import httpx
import pytest

from tests.ward import Ward, purchase


@pytest.fixture(scope="module")
def ward(start_server):
    made = Ward(start_server("sqlite"))
    yield made
    made.close()


def _lines(ward: Ward, request_id: str, timeout_s: float = 5.0) -> list[dict]:
    """The access-log lines of `request_id` (the line is written as the answer goes out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for line in ward.server.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                record = json.loads(line)
                if record.get("event") == "request" and record["request_id"] == request_id:
                    found.append(record)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_a_request_is_found_by_its_id(ward):
    client = ward["finance"]
    answer = client.get("/v1/campaigns/C_POINTBACK/budget", headers={"X-Request-Id": "till-7:run.42"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == "till-7:run.42"
    [line] = _lines(ward, "till-7:run.42")
    assert line["method"] == "GET"
    assert line["route"] == "/v1/campaigns/{campaign_id}/budget"
    assert line["path"] == "/v1/campaigns/C_POINTBACK/budget"
    assert line["status"] == 200
    assert line["role"] == "finance" and line["key_id"] and line["key_id"] in ward.finance_key
    assert line["replayed"] is False
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
    # When it was written, UTC to the millisecond: a line is placed in time from the log alone.
    written = dt.datetime.fromisoformat(line["time"])
    assert line["time"].endswith("Z") and abs((dt.datetime.now(dt.UTC) - written).total_seconds()) < 60
    # The README's grep finds it: the line's own format, `json.dumps`' separators.
    assert '"request_id": "till-7:run.42"' in ward.server.log_path.read_text(errors="replace")


@pytest.mark.parametrize("sent", [None, "", "has space", "x" * 129, "semi;colon", "日本語"])
def test_an_unusable_or_missing_id_is_replaced(ward, sent):
    headers = {} if sent is None else {"X-Request-Id": sent.encode()}
    answer = httpx.get(ward.server.base_url + "/healthz", headers=headers)
    made = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    [line] = _lines(ward, made)
    assert line["status"] == 200 and line["key_id"] is None and line["role"] is None


def test_a_replayed_transaction_says_so_and_secrets_stay_out(ward):
    body = purchase("T_SHOTEN_1", "W_LOG", 1200)
    terminal = ward.terminal("T_SHOTEN_1")
    for request_id in ("buy-first", "buy-retry"):
        response = terminal.post(
            "/v1/transactions", json=body, headers={"Idempotency-Key": "log-key-1", "X-Request-Id": request_id}
        )
        assert response.status_code == 201, response.text
    [first] = _lines(ward, "buy-first")
    [retry] = _lines(ward, "buy-retry")
    assert first["replayed"] is False and retry["replayed"] is True
    assert first["role"] == retry["role"] == "terminal"
    assert first["route"] == "/v1/transactions" and first["status"] == 201

    # Refused before any route (a header sent twice) and refused keys are logged too.
    twice = httpx.get(
        ward.server.base_url + "/v1/campaigns",
        headers=[("Authorization", "Bearer a"), ("Authorization", "Bearer b"), ("X-Request-Id", "twice-1")],
    )
    assert twice.status_code == 400
    assert _lines(ward, "twice-1")[0]["status"] == 400
    stranger = httpx.get(
        ward.server.base_url + "/v1/campaigns",
        headers={"Authorization": "Bearer sp_admin_nobody_secretsecret", "X-Request-Id": "unknown-key-1"},
    )
    assert stranger.status_code == 401
    [refused] = _lines(ward, "unknown-key-1")
    assert refused["status"] == 401 and refused["key_id"] is None

    log = ward.server.log_path.read_text(errors="replace")
    secrets = [ward.finance_key, ward.terminal_key("T_SHOTEN_1"), "sp_admin_nobody_secretsecret"]
    assert not [s for s in secrets if s in log]
    # Receipts (JWS compact: a base64url JSON header, payload and signature) never appear either.
    assert not re.search(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", log)
