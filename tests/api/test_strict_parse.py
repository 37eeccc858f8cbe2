"""A JSON body is parsed once (`api.strict.parse_unique`), by its route once the caller is
authenticated (`api.strict.strict_body`: `ParsedBodyRoute`, the single post's short way), never
for no one; FastAPI's handler takes that value instead of parsing the body again
(`api.strict.parsed_body`): the same value `json.loads` gives, and only for that very body."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Form, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api import errors, strict
from api.app import create_app
from api.deps import AUTHENTICATED
from api.idempotency import render
from api.middleware import BodyLimit
from api.strict import (
    BODY_SENT,
    DUPLICATE_KEY,
    NOT_JSON,
    PARSED_BODY,
    ParsedBodyRoute,
    parse_unique,
    parsed_body,
    reads_as_json,
    strict_body,
)
from engine import limits
from engine.errors import EngineError
from engine.settings import Settings
from engine.store.config import Principal
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


def test_the_middleware_hands_a_body_on_unparsed() -> None:
    """The middleware reads a body whole and parses none: it does not know who sent it."""
    for body in (b'{"a": 1}', b"{not json", b'{"a": 1, "a": 2}'):
        scope = _middleware_scope(body)
        assert scope[BODY_SENT] is True and PARSED_BODY not in scope


def test_strict_body_keeps_the_parse_of_json_bodies_up_to_the_limit() -> None:
    for text in ("x" * 1000, "x" * (limits.BODY_BYTES_MAX - 20)):
        body = json.dumps({"a": text}).encode()
        scope: dict[str, Any] = {}
        assert strict_body(scope, body, "application/json") == {"a": text}
        assert scope[PARSED_BODY] == (body, {"a": text})
    for bad in (b"{not json", b'{"a": 1, "a": 2}', b"[" * 100_000):
        with pytest.raises(EngineError) as refused:
            strict_body({}, bad, "application/json")
        assert refused.value.code == "malformed_json"
    # With no Content-Type, no route reads a body as JSON: not refused for not being JSON, but a
    # key twice is refused all the same (a route that reads no body must not act on it).
    assert strict_body({}, b"{not json", None) is NOT_JSON
    with pytest.raises(EngineError):
        strict_body({}, b'{"a": 1, "a": 2}', None)


def test_every_route_of_the_application_parses_its_body_once_after_its_key(sqlite_url: str) -> None:
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
    """The parse of a 1 MiB body is up to ~24 MiB of objects: a route that will not read it (no
    JSON body declared, a form, a request FastAPI does not read as JSON) must not hold it while it
    works; one that reads it takes it. A route that authenticates no one parses no JSON body at
    all: 415. (The caller is marked known here as `api.deps.principal` keeps it for a request.)"""
    from api.deps import principal

    seen: dict[str, bool] = {}
    app = FastAPI()
    app.router.route_class = ParsedBodyRoute
    app.add_middleware(BodyLimit, limit_bytes=limits.BODY_BYTES_MAX)
    errors.install(app)
    caller = Principal(key_id="k1", role="admin", merchant_id=None, terminal_id=None)

    @app.middleware("http")
    async def known(request: Request, call_next: Any) -> Any:
        request.scope[AUTHENTICATED] = caller
        return await call_next(request)

    @app.get("/page", dependencies=[Depends(principal)])
    def page(request: Request) -> dict[str, bool]:
        seen["page"] = PARSED_BODY in request.scope
        return {}

    @app.post("/form", dependencies=[Depends(principal)])
    def form(request: Request, name: str = Form("x")) -> dict[str, bool]:
        seen["form"] = PARSED_BODY in request.scope
        return {}

    @app.post("/json", dependencies=[Depends(principal)])
    def json_route(request: Request, body: _Numbers) -> dict[str, int]:
        seen["json"] = PARSED_BODY in request.scope
        return {"n": len(body.a)}

    @app.get("/open")
    def open_route(request: Request) -> dict[str, bool]:
        seen["open"] = True
        return {}

    body = json.dumps({"a": list(range(100_000))}).encode()
    as_json = {"Content-Type": "application/json"}
    with TestClient(app) as client:
        assert client.request("GET", "/page", content=body, headers=as_json).status_code == 200
        assert client.post("/form", content=body, headers=as_json).status_code == 200
        assert client.post("/json", content=body, headers=as_json).json() == {"n": 100_000}
        assert client.post("/json", content=body).status_code == 415  # no Content-Type: not read as JSON
        refused = client.request("GET", "/open", content=body, headers=as_json)
        assert (refused.status_code, refused.json()["code"]) == (415, "unsupported_media_type")
        assert client.request("GET", "/open", content=body).status_code == 200  # not sent as JSON: not read
    assert seen == {"page": False, "form": False, "json": False, "open": True}


def test_no_body_is_parsed_before_its_caller_is_authenticated(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unauthenticated client looping 1 MiB bodies of nested arrays cost the worker 75–220 ms a
    body, also once its address was over its failure limit (helper-106): the body was parsed
    before the key was looked at. Now no route parses a body before its caller's key holds: no key,
    a bad one, an address over its limit, a key of another role, and the routes that authenticate no
    one (probes, the directory, the pages) leave the body unparsed; a good key's malformed body is
    still 400."""
    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_key="off", auth_failures_per_ip="3/minute"))
    parsed: list[int] = []
    parse = strict.parse_unique

    def counted(body: bytes) -> Any:
        parsed.append(len(body))
        return parse(body)

    monkeypatch.setattr(strict, "parse_unique", counted)
    nested = b"[" * (limits.BODY_BYTES_MAX // 2 - 1) + b"]" * (limits.BODY_BYTES_MAX // 2 - 1)
    as_json = {"Content-Type": "application/json"}
    try:
        with TestClient(app) as client:
            admin = {**as_json, "Authorization": f"Bearer {app.state.config.create_key('admin')}"}
            r = client.post("/v1/merchants", content=nested, headers=admin)
            assert (r.status_code, r.json()["code"]) == (400, "malformed_json")
            assert parsed == [len(nested)]
            parsed.clear()
            # A key that holds but is not of the route's role: 403, its body not parsed (helper-113).
            finance = {**as_json, "Authorization": f"Bearer {app.state.config.create_key('finance')}"}
            for path in ("/v1/merchants", "/v1/transactions", "/v1/transactions/batch"):
                r = client.post(path, content=nested, headers={**finance, "Idempotency-Key": "k2"})
                assert (r.status_code, r.json()["code"]) == (403, "forbidden"), (path, r.text)
            answers = []
            for path in ("/v1/transactions", "/v1/transactions/batch", "/v1/grants", "/v1/merchants"):
                for headers in (as_json, {**as_json, "Authorization": "Bearer sp_terminal_nope_nope"}):
                    r = client.post(path, content=nested, headers={**headers, "Idempotency-Key": "k1"})
                    answers.append((r.status_code, r.json()["code"]))
            assert set(answers) == {(401, "unauthenticated"), (429, "rate_limited")}, answers
            assert answers[-1] == (429, "rate_limited"), "over the address's failure limit"
            for method, path in (("GET", "/healthz"), ("GET", "/v1/directory/merchants"), ("POST", "/ui/login")):
                r = client.request(method, path, content=nested, headers=as_json)
                assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type"), (path, r.text)
            assert parsed == [], "a body was parsed for no one"
    finally:
        app.state.engine.dispose()


def test_a_batch_is_parsed_once_and_answered_as_before(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI's handler of the batch route takes the route's own parse: `json.loads` reads the
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
            assert len(parsed) == 1, "the route's parse only"
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
