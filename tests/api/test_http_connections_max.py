"""The connections one worker holds at once (`SETAPAY_CONNECTIONS_MAX`, api/http_protocol.py), on an
in-process uvicorn server running the protocol `setapay serve` runs. A new connection past them
makes room by closing the one idle longest (kept alive between requests, silent, or with a head
still incomplete `LINGER_S` after its first byte): a thousand silent sockets locked a worker out for
the read time when the new one was refused instead (helper-113). Only when every connection has a
request going is a request 503 `too_many_connections` with `Retry-After`, and the connection
closes; a silent one then closes soon."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from api.http_protocol import LINGER_S
from tests.api.raw_http import protocol_server, read_all, statuses

CONNECTIONS_MAX = 3
GET = b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
# A POST whose body is half sent: its request is going (the app waits for the rest).
HALF_POST = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345"


async def _app(scope, receive, send) -> None:
    """Reads the whole body, then answers 200 `{}`."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        more = message.get("more_body", False)
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


def _connect(held: contextlib.ExitStack, port: int, first: bytes = b"") -> socket.socket:
    s = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
    if first:
        s.sendall(first)
    return s


def _closed(s: socket.socket) -> bool:
    """Whether the server closed `s` (nothing more to read)."""
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


def _counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_new_connection_past_the_limit_closes_the_one_idle_longest(port: int) -> None:
    shed = _counted("setapay_connections_shed_total")
    with contextlib.ExitStack() as held:
        kept = []
        for _ in range(CONNECTIONS_MAX):
            s = _connect(held, port, GET)
            assert statuses(_answer(s)) == [200]
            kept.append(s)
        kept[0].sendall(GET)  # the first is used again: the second is now idle longest
        assert statuses(_answer(kept[0])) == [200]
        new = _connect(held, port, GET)
        assert statuses(_answer(new)) == [200]
        assert _closed(kept[1])
        for s in (kept[0], kept[2], new):  # the others are served as before
            s.sendall(GET)
            assert statuses(_answer(s)) == [200]
    assert _counted("setapay_connections_shed_total") == shed + 1


def test_a_head_still_incomplete_after_its_time_is_shed_for_a_new_connection(port: int) -> None:
    with contextlib.ExitStack() as held:
        trickling = [_connect(held, port, b"GET /x HTTP/1.1\r\n") for _ in range(CONNECTIONS_MAX)]
        time.sleep(LINGER_S + 0.5)
        new = _connect(held, port, GET)
        assert statuses(_answer(new)) == [200]
        assert sum(_closed(s) for s in trickling[:1]) == 1, "the head begun first is shed"


def test_a_request_past_connections_each_with_a_request_going_is_503(port: int) -> None:
    refused = _counted("setapay_protocol_refusals_total", code="too_many_connections")
    shed = _counted("setapay_connections_shed_total")
    with contextlib.ExitStack() as held:
        going = [_connect(held, port, HALF_POST) for _ in range(CONNECTIONS_MAX)]
        time.sleep(0.2)  # the server has read their heads
        # Opened over the limit, silent: never shed for the next one, which would then hold a slot
        # past the limit (helper-114), and closed soon.
        silent = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=LINGER_S * 5))
        opened = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as over:
            over.sendall(GET)
            answer = read_all(over)  # the server closes it
        assert statuses(answer) == [503]
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        assert {b"retry-after: 1", b"connection: close", b"content-type: application/problem+json"} <= set(lines)
        assert json.loads(body)["code"] == "too_many_connections"
        assert read_all(silent) == b"", "closed with nothing owed"
        assert time.monotonic() - opened < LINGER_S * 4, "not held for the whole read time (30 s)"
        for s in going:  # the requests going are answered as before
            s.sendall(b"67890")
            assert statuses(_answer(s)) == [200]
        new = _connect(held, port, GET)  # they are idle now: one makes room
        assert statuses(_answer(new)) == [200]
    assert _counted("setapay_protocol_refusals_total", code="too_many_connections") == refused + 1
    assert _counted("setapay_connections_shed_total") == shed + 1, "only the idle one at the end"
