"""The strict-input middleware parses a JSON body once (`api.strict.parse_unique`), and the single
post's short way takes that value instead of parsing the body again (`api.strict.parsed_body`):
the same value `json.loads` gives, and only for the very body the middleware read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from api.idempotency import render
from api.middleware import BodyLimit
from api.strict import (
    DUPLICATE_KEY,
    NOT_JSON,
    PARSED_BODY,
    PARSED_BODY_BYTES_MAX,
    parse_unique,
    parsed_body,
    reads_as_json,
)
from engine import limits
from engine.store.ledger import Result

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


def test_the_middleware_keeps_the_parse_of_small_bodies_only() -> None:
    small = json.dumps({"a": "x" * 1000}).encode()
    assert _middleware_scope(small)[PARSED_BODY] == (small, {"a": "x" * 1000})
    large = json.dumps({"a": "x" * PARSED_BODY_BYTES_MAX}).encode()
    assert PARSED_BODY not in _middleware_scope(large)
    assert PARSED_BODY not in _middleware_scope(b"{not json")


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
