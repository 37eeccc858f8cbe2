"""The strict-input middleware parses a JSON body once (`api.strict.parse_unique`), and the routes
take that value instead of parsing the body again (`api.strict.parsed_body`: the single post's
short way, FastAPI's handler through `ParsedBodyRoute`): the same value `json.loads` gives, and
only for the very body the middleware read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI, Form, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors
from api.app import create_app
from api.idempotency import render
from api.middleware import BodyLimit
from api.strict import (
    DUPLICATE_KEY,
    NOT_JSON,
    PARSED_BODY,
    ParsedBodyRoute,
    parse_unique,
    parsed_body,
    reads_as_json,
)
from engine import limits
from engine.settings import Settings
from engine.store.ledger import Result
from tests.receipts import register_in_process
from tests.ward import now_tokyo

BODIES = [
    b'{"type": "purchase", "amount": 1200, "items": [{"sku": "a", "qty": 2}], "n": null}',
    b'{"a": {"b": {"c": [1, 2, {"d": "\\u00e9"}]}}}',
    b"[1, 2, 3]",
    b'{"amount": NaN}',  # JSON to Python's reader: the route decides what it means
    b'"text"',
]


@pytest.mark.parametrize("body", BODIES)
def test_parse_unique_reads_json_as_json_loads_does(body: bytes) -> None:
    parsed = parse_unique(body)
    assert json.dumps(parsed) == json.dumps(json.loads(body))


@pytest.mark.parametrize(
    "body", [b'{"amount": 1, "amount": 2}', b'{"a": [{"k": 1, "k": 1}]}', b'{"\\u0061": 1, "a": 2}']
)
def test_parse_unique_finds_a_key_twice_at_any_depth_after_unescaping(body: bytes) -> None:
    assert parse_unique(body) is DUPLICATE_KEY


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"", b"[" * 100_000])
def test_parse_unique_leaves_what_is_not_json_to_the_route(body: bytes) -> None:
    assert parse_unique(body) is NOT_JSON


def test_parsed_body_takes_what_the_middleware_parsed_for_that_body_only() -> None:
    body = BODIES[0]
    kept = parse_unique(body)
    scope = {PARSED_BODY: (body, kept)}
    assert parsed_body(scope, body) is kept
    assert PARSED_BODY not in scope, "taken once: the request holds no second copy after"
    assert parsed_body(scope, body) == json.loads(body) and parsed_body(scope, body) is not kept
    scope = {PARSED_BODY: (body, kept)}
    assert parsed_body(scope, bytes(bytearray(body))) is kept  # equal bytes, another object
    other = b'{"type": "refund"}'
    assert parsed_body({PARSED_BODY: (body, kept)}, other) == {"type": "refund"}  # another body: parsed afresh


def _middleware_scope(body: bytes) -> dict[str, Any]:
    """The scope the strict-input middleware hands on for a JSON POST of `body`."""
    seen: dict[str, Any] = {}

    async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError(f"the middleware answered: {message}")

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-type", b"application/json")]}
    asyncio.run(BodyLimit(inner, limits.BODY_BYTES_MAX)(scope, receive, send))
    return seen


def test_the_middleware_keeps_the_parse_of_json_bodies_up_to_the_limit() -> None:
    small = json.dumps({"a": "x" * 1000}).encode()
    assert _middleware_scope(small)[PARSED_BODY] == (small, {"a": "x" * 1000})
    large = json.dumps({"a": "x" * (limits.BODY_BYTES_MAX - 20)}).encode()
    assert _middleware_scope(large)[PARSED_BODY] == (large, {"a": "x" * (limits.BODY_BYTES_MAX - 20)})
    with pytest.raises(AssertionError, match="'status': 400"):  # not JSON: refused, whatever the route
        _middleware_scope(b"{not json")


def test_every_route_of_the_application_takes_the_middlewares_parse(sqlite_url: str) -> None:
    from fastapi.routing import APIRoute

    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_key="off"))
    try:
        routes = [r for r in app.routes if isinstance(r, APIRoute)]
        assert routes and all(isinstance(r, ParsedBodyRoute) for r in routes)
    finally:
        app.state.engine.dispose()


class _Numbers(BaseModel):
    a: list[int]


def test_a_route_that_reads_no_json_drops_the_parse_before_it_works() -> None:
    """The middleware's parse of a 1 MiB body is up to ~24 MiB of objects: a route that will not
    read it (no JSON body declared, a form, a request FastAPI does not read as JSON) must not
    hold it while it works; one that reads it takes it."""
    seen: dict[str, bool] = {}
    app = FastAPI()
    app.router.route_class = ParsedBodyRoute
    app.add_middleware(BodyLimit, limit_bytes=limits.BODY_BYTES_MAX)
    errors.install(app)

    @app.get("/page")
    def page(request: Request) -> dict[str, bool]:
        seen["page"] = PARSED_BODY in request.scope
        return {}

    @app.post("/form")
    def form(request: Request, name: str = Form("x")) -> dict[str, bool]:
        seen["form"] = PARSED_BODY in request.scope
        return {}

    @app.post("/json")
    def json_route(request: Request, body: _Numbers) -> dict[str, int]:
        seen["json"] = PARSED_BODY in request.scope
        return {"n": len(body.a)}

    body = json.dumps({"a": list(range(100_000))}).encode()
    as_json = {"Content-Type": "application/json"}
    with TestClient(app) as client:
        assert client.request("GET", "/page", content=body, headers=as_json).status_code == 200
        assert client.post("/form", content=body, headers=as_json).status_code == 200
        assert client.post("/json", content=body, headers=as_json).json() == {"n": 100_000}
        assert client.post("/json", content=body).status_code == 415  # no Content-Type: not read as JSON
    assert seen == {"page": False, "form": False, "json": False}


def test_a_batch_is_parsed_once_and_answered_as_before(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI's handler of the batch route takes the middleware's parse: `json.loads` reads the
    700 KB body once, not twice; a body that is not JSON is still answered 400 `malformed_json`."""
    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_key="off"))
    config = app.state.config
    try:
        with TestClient(app) as client:
            admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
            merchant = {"id": "M_PARSE", "name": "Parse", "merchant_class": "small", "ward_local": True}
            assert client.post("/v1/merchants", json=merchant, headers=admin).status_code == 201
            assert client.post(
                "/v1/terminals", json={"id": "T_PARSE", "merchant_id": "M_PARSE"}, headers=admin
            ).is_success
            terminal = {"Authorization": f"Bearer {config.create_key('terminal', terminal_id='T_PARSE')}"}
            signer = register_in_process(app)
            items = [
                {
                    **signer.sign_purchase(
                        {
                            "type": "purchase",
                            "terminal_id": "T_PARSE",
                            "merchant_id": "M_PARSE",
                            "wallet_id": f"W_{i}",
                            "amount": 1000 + i,
                            "occurred_at": now_tokyo(-5),
                        }
                    ),
                    "idempotency_key": f"parse-{i}",
                }
                for i in range(limits.BATCH_TRANSACTIONS_MAX)
            ]
            body = json.dumps({"transactions": items}).encode()
            parsed: list[bytes] = []
            loads = json.loads

            def counted(text: Any, *args: Any, **kwargs: Any) -> Any:
                if text in (body, body.decode()):  # bytes are decoded as UTF-8 first
                    parsed.append(text)
                return loads(text, *args, **kwargs)

            monkeypatch.setattr(json, "loads", counted)
            headers = {**terminal, "Content-Type": "application/json"}
            r = client.post("/v1/transactions/batch", content=body, headers=headers)
            assert r.status_code == 200
            assert [x["status"] for x in r.json()["results"]] == [201] * len(items)
            assert len(parsed) == 1, "the middleware's parse only"
            bad = client.post("/v1/transactions/batch", content=b'{"transactions": [', headers=headers)
            assert (bad.status_code, bad.json()["code"]) == (400, "malformed_json")
    finally:
        app.state.engine.dispose()


def test_render_falls_back_to_json_dumps_for_what_orjson_refuses() -> None:
    for body in ({"id": "p_1", "amount": 1200, "awards": [{"points": 3}], "name": "世田谷"}, {"n": 2**70}):
        response = render(Result(201, body))
        assert json.loads(response.body) == body
        assert response.headers["content-type"] == "application/json"


def test_parsed_body_fails_as_json_loads_does_for_a_body_that_is_not_json() -> None:
    body = b'{"amount": 1'
    with pytest.raises(ValueError):
        parsed_body({PARSED_BODY: (body, parse_unique(body))}, body)


@pytest.mark.parametrize(
    ("content_type", "json_"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.setapay+json", True),
        ("application/json\xa0", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("", False),
        (None, False),
    ],
)
def test_reads_as_json_answers_the_same_each_time(content_type: str | None, json_: bool) -> None:
    assert [reads_as_json(content_type) for _ in range(3)] == [json_] * 3
