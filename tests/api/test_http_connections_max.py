"""The connections one worker holds at once (`SETAPAY_CONNECTIONS_MAX`, api/http_protocol.py), on an
in-process uvicorn server running the protocol `setapay serve` runs: a request on a connection past
them is 503 problem+json with `Retry-After` and the connection closes; one that sends nothing is
closed soon; a connection freed makes room again."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from api.http_protocol import LINGER_S
from tests.api.raw_http import protocol_server, read_all, statuses

CONNECTIONS_MAX = 3
GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"


async def _app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"application/json"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with protocol_server(_app, {"SETAPAY_CONNECTIONS_MAX": str(CONNECTIONS_MAX)}) as free:
        yield free


def _answer(s: socket.socket) -> bytes:
    """One answer of a kept-alive connection (its head and a 2-byte body)."""
    got = b""
    while not (b"\r\n\r\n" in got and got.endswith(b"{}")):
        part = s.recv(65536)
        assert part, f"closed after {got!r}"
        got += part
    return got


def test_a_request_past_the_connections_at_once_is_503_and_room_comes_back(port: int) -> None:
    with contextlib.ExitStack() as held:
        kept = []
        for _ in range(CONNECTIONS_MAX):
            s = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            s.sendall(GET)
            assert statuses(_answer(s)) == [200]
            kept.append(s)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as over:
            over.sendall(GET)
            answer = read_all(over)  # the server closes it
        assert statuses(answer) == [503]
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert {b"retry-after: 1", b"connection: close", b"content-type: application/problem+json"} <= set(lines)
        assert json.loads(body)["code"] == "service_unavailable"
        for s in kept:  # the connections held are served as before
            s.sendall(GET)
            assert statuses(_answer(s)) == [200]
        kept.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the server sees the close a moment later
            with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
                again.sendall(GET + b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                got = statuses(read_all(again))
            if got == [200, 200] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got == [200, 200]


def test_a_connection_past_the_limit_that_sends_nothing_is_closed_soon(port: int) -> None:
    with contextlib.ExitStack() as held:
        for _ in range(CONNECTIONS_MAX):
            s = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            s.sendall(GET)
            assert statuses(_answer(s)) == [200]
        with socket.create_connection(("127.0.0.1", port), timeout=LINGER_S * 5) as silent:
            opened = time.monotonic()
            assert read_all(silent) == b"", "closed with nothing owed"
            assert time.monotonic() - opened < LINGER_S * 4, "not held for the whole read time (30 s)"
