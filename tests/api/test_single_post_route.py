"""`POST /v1/transactions`'s short way (`api.routers.transactions.SinglePostRoute`) answers every
request exactly as FastAPI's own handler does, and is the way a well-formed request takes.

Each request below is sent twice to the same application, once with the short way on and
once with everything through FastAPI's handler (`SHORT_WAY = False`), each time under a fresh
idempotency key where it carries one: status, Content-Type and body must be equal. Which way
a request took is told by the short way handing it to FastAPI's handler (`ParsedBodyRoute.handle`).
An accepted purchase cannot be posted twice (its receipt is used once), so for those the
short way's answer is replayed through FastAPI's handler and must come back as it was stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.routers import transactions
from api.strict import ParsedBodyRoute
from engine.settings import Settings
from tests.receipts import register_in_process
from tests.ward import now_tokyo

MERCHANT = {"id": "M_ROUTE", "name": "Route Shoten", "merchant_class": "small", "ward_local": True}


class Calls:
    """How many POSTs the short way left to FastAPI's handler (`ParsedBodyRoute.handle`, which the
    short way calls when it takes no body)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        handle = ParsedBodyRoute.handle

        async def counted(route: ParsedBodyRoute, scope: Any, receive: Any, send: Any) -> None:
            if isinstance(route, transactions.SinglePostRoute) and transactions.SHORT_WAY and scope["method"] == "POST":
                self.count += 1
            await handle(route, scope, receive, send)

        monkeypatch.setattr(ParsedBodyRoute, "handle", counted)


@pytest.fixture
def setup(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_key="off"))
    config = app.state.config
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
        assert client.post("/v1/merchants", json=MERCHANT, headers=admin).status_code == 201
        assert client.post("/v1/terminals", json={"id": "T_ROUTE", "merchant_id": "M_ROUTE"}, headers=admin).is_success
        yield {
            "client": client,
            "terminal": {"Authorization": f"Bearer {config.create_key('terminal', terminal_id='T_ROUTE')}"},
            "merchant": {"Authorization": f"Bearer {config.create_key('merchant', merchant_id='M_ROUTE')}"},
            "app": register_in_process(app),
            "calls": Calls(monkeypatch),
        }
    app.state.engine.dispose()


def _purchase(s: dict[str, Any], **changes: Any) -> dict[str, Any]:
    body = {
        "type": "purchase",
        "terminal_id": "T_ROUTE",
        "merchant_id": "M_ROUTE",
        "wallet_id": "W_ROUTE",
        "amount": 1200,
        "occurred_at": now_tokyo(-5),
        **changes,
    }
    return dict(s["app"].sign_purchase(body))


def _both_ways(
    s: dict[str, Any], monkeypatch: pytest.MonkeyPatch, content: bytes, headers: dict[str, str], keyed: bool = True
) -> tuple[tuple[int, str, Any], int]:
    """The answer of the request each way (equal, else the test fails) and how many times the short
    way left it to FastAPI's handler."""
    answers = []
    general_calls = 0
    for short in (True, False):
        monkeypatch.setattr(transactions, "SHORT_WAY", short)
        sent = {**headers, "Idempotency-Key": uuid.uuid4().hex} if keyed else headers
        before = s["calls"].count
        r = s["client"].post("/v1/transactions", content=content, headers=sent)
        if short:
            general_calls = s["calls"].count - before
        answers.append((r.status_code, r.headers.get("content-type"), r.json()))
    assert answers[0] == answers[1]
    return answers[0], general_calls


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


JSON = {"Content-Type": "application/json"}


def test_refusals_of_well_formed_bodies_take_the_short_way_with_fastapis_answers(setup, monkeypatch) -> None:
    s = setup
    valid = _json(_purchase(s))
    cases = [
        # (content, headers, keyed, status, code)
        (valid, JSON, True, 401, "unauthenticated"),  # no key
        (valid, {**JSON, "Authorization": "Bearer nope"}, True, 401, "unauthenticated"),
        (valid, {**JSON, **s["merchant"]}, True, 403, "forbidden"),  # not a terminal's key
        (valid, {**JSON, **s["terminal"]}, False, 400, "idempotency_key_missing"),
        (_json(_purchase(s, terminal_id="T_OTHER")), {**JSON, **s["terminal"]}, True, 403, "forbidden"),
        (_json(_purchase(s, occurred_at="2001-01-01T00:00:00+09:00")), {**JSON, **s["terminal"]}, True, 422, None),
        (_json({k: v for k, v in _purchase(s).items() if k != "receipt"}), {**JSON, **s["terminal"]}, True, 422, None),
        (_json({**_purchase(s), "amount": 999}), {**JSON, **s["terminal"]}, True, 422, "receipt_mismatch"),
        (valid, {"Content-Type": "application/vnd.setapay+json; charset=utf-8", **s["terminal"]}, False, 400, None),
    ]
    for content, headers, keyed, status, code in cases:
        (got_status, content_type, body), general = _both_ways(s, monkeypatch, content, headers, keyed)
        assert got_status == status, body
        assert code is None or body["code"] == code, body
        assert content_type == "application/problem+json"
        assert general == 0, f"a well-formed body went through FastAPI's handler: {body}"


def test_bodies_fastapi_must_read_go_its_way_with_its_answers(setup, monkeypatch) -> None:
    s = setup
    auth = s["terminal"]
    valid = _json(_purchase(s))
    cases = [
        (b"", {**JSON, **auth}, 422, "invalid_request"),  # no body
        (b'{"amount": NaN}', {**JSON, **auth}, 422, "invalid_request"),  # JSON to Python's reader, not orjson's
        (_json(_purchase(s, amount=-1)), {**JSON, **auth}, 422, "invalid_request"),
        (_json(_purchase(s, amount=10**30)), {**JSON, **auth}, 422, "invalid_request"),  # past 64 bits
        (_json(["a list"]), {**JSON, **auth}, 422, "invalid_request"),
        (valid, auth, 415, "unsupported_media_type"),  # no Content-Type: FastAPI does not read it as JSON
        (valid, {"Content-Type": "text/plain", **auth}, 415, "unsupported_media_type"),
        (valid, {"Content-Type": "application/x-www-form-urlencoded", **auth}, 415, "unsupported_media_type"),
        (valid, {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),  # the media type before the key
    ]
    for content, headers, status, code in cases:
        (got_status, content_type, body), general = _both_ways(s, monkeypatch, content, headers)
        assert (got_status, body["code"]) == (status, code), (content, headers, body)
        assert content_type == "application/problem+json"
        assert general == 1, f"FastAPI's handler must answer {content!r} {headers}"
    # A body sent as JSON that is not JSON is refused as soon as it is parsed, either way, once its
    # caller is authenticated: before that, no one's body is parsed (`strict.ParsedBodyRoute`), and
    # an invalid one is not validated.
    for headers, status, code in (({**JSON, **auth}, 400, "malformed_json"), (JSON, 401, "unauthenticated")):
        for content in (b"{", b'{"amount": 1, "amount": 2}', _json(_purchase(s, amount=-1))):
            if status == 400 and content.startswith(b'{"type"'):
                continue  # invalid, not malformed: FastAPI's 422 above
            (got_status, content_type, body), general = _both_ways(s, monkeypatch, content, headers)
            assert (got_status, body["code"], content_type) == (status, code, "application/problem+json")
            assert general == 0, body


def test_an_accepted_purchase_takes_the_short_way_and_replays_through_fastapis_handler(setup, monkeypatch) -> None:
    s = setup
    body = _purchase(s)
    headers = {**s["terminal"], "Idempotency-Key": "route-1"}
    first = s["client"].post("/v1/transactions", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert s["calls"].count == 0, "an accepted purchase went through FastAPI's handler"
    assert first.json()["amount"] == 1200 and first.json()["merchant_id"] == "M_ROUTE"
    monkeypatch.setattr(transactions, "SHORT_WAY", False)
    replay = s["client"].post("/v1/transactions", json=body, headers=headers)
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    # And the other way round: a key FastAPI's handler answered, replayed by the short way.
    second = _purchase(s, wallet_id="W_ROUTE_2")
    other = {**s["terminal"], "Idempotency-Key": "route-2"}
    answered = s["client"].post("/v1/transactions", json=second, headers=other)
    monkeypatch.setattr(transactions, "SHORT_WAY", True)
    again = s["client"].post("/v1/transactions", json=second, headers=other)
    assert s["calls"].count == 0
    assert answered.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == answered.json()


def test_a_client_gone_before_its_body_reaches_no_route_and_is_no_500(setup, monkeypatch) -> None:
    """The client disconnected (or its request was refused) before its body was whole: the
    strict-input middleware answers 400 (dropped, the client being gone) and no route runs, on
    either way; a route that reads no body acted on such a request (helper-109)."""
    s = setup
    headers = [(b"content-type", b"application/json"), (b"idempotency-key", b"gone-1")]
    headers += [(k.lower().encode(), v.encode()) for k, v in s["terminal"].items()]
    statuses = []
    for short in (True, False):
        monkeypatch.setattr(transactions, "SHORT_WAY", short)
        statuses.append(s["client"].portal.call(_disconnected, s["client"].app, headers))
    assert statuses == [400, 400]
    assert s["calls"].count == 0


async def _disconnected(app: Any, headers: list[tuple[bytes, bytes]]) -> int:
    """The status the application answers a POST whose client is gone before sending its body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/transactions",
        "raw_path": b"/v1/transactions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    return int(sent[0]["status"])


def test_another_method_with_a_well_formed_body_is_refused_not_posted(setup, monkeypatch) -> None:
    """The router hands `SinglePostRoute` requests of other methods too (a partial match): each is
    FastAPI's 405 whatever its body, and posts nothing: its receipt is still unused after."""
    s = setup
    body = _json(_purchase(s))
    headers = {**JSON, **s["terminal"]}
    for method in ("PUT", "PATCH", "DELETE"):
        answers = []
        for short in (True, False):
            monkeypatch.setattr(transactions, "SHORT_WAY", short)
            sent = {**headers, "Idempotency-Key": uuid.uuid4().hex}
            r = s["client"].request(method, "/v1/transactions", content=body, headers=sent)
            answers.append((r.status_code, r.headers.get("content-type"), r.json()))
        assert answers[0] == answers[1]
        assert answers[0][:2] == (405, "application/problem+json"), answers[0]
    monkeypatch.setattr(transactions, "SHORT_WAY", True)
    posted = s["client"].post("/v1/transactions", content=body, headers={**headers, "Idempotency-Key": "after-405"})
    assert posted.status_code == 201, posted.text
