"""Closing a connection in stages (api/http_protocol.py `close_in_stages`), on an in-process uvicorn
server running the protocol `setapay serve` runs, with an app that answers without reading bodies:
a closed connection leaves nothing behind for the collector of cycles, and a client still reading
a long answer is not cut off by the linger's time (helper-111)."""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from api.http_protocol import LINGER_S, BoundedHttpToolsProtocol
from tests.api.raw_http import protocol_server, read_all, statuses

LONG_ANSWER = b"x" * 6_000_000  # more than the sockets' buffers hold


async def _app(scope, receive, send) -> None:
    """Answers at once, reading no body: `/long` a long answer, else 413 with `Connection: close`
    for a request with a body and 200 for one without."""
    if scope["type"] != "http":
        return
    body, status, headers = b"{}", 200, [(b"content-type", b"application/json")]
    if scope["path"] == "/long":
        body = LONG_ANSWER
    elif any(name == b"content-length" for name, _ in scope["headers"]):
        status, headers = 413, [*headers, (b"connection", b"close")]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


READ_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with protocol_server(_app, {"SETAPAY_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}) as free:
        yield free


def _protocols() -> int:
    return sum(isinstance(o, BoundedHttpToolsProtocol) for o in gc.get_objects())


@contextlib.contextmanager
def _no_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_closed_connection_leaves_nothing_for_the_collector(port: int) -> None:
    """The transport given to each request's cycle held its protocol, which holds the cycle: each
    closed connection, with the body it had read, waited for a collection of cycles (one after
    500,000 allocations here: a worker held 1 GB after 11,000 connections, helper-111)."""
    with _no_collector():
        before = _protocols()
        for n in range(60):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                if n % 2:
                    s.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n" + b" " * 100_000)
                else:
                    s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert statuses(read_all(s)) == [413 if n % 2 else 200]
        deadline = time.monotonic() + LINGER_S + 5
        while _protocols() - before > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _protocols() - before <= 2, f"{_protocols() - before} closed connections still held"


def test_a_client_reading_a_long_answer_slowly_gets_all_of_it(port: int) -> None:
    """The linger's time ran from the answer's queueing: a byte the client sent after `LINGER_S`,
    while it was still reading, reset the connection and cut the answer off (helper-111)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /long HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received, sent_late = b"", False
        started = time.monotonic()
        while part := s.recv(16384):
            received += part
            if not sent_late and time.monotonic() - started > LINGER_S + 0.5:
                s.sendall(b" " * 1000)  # a late byte, thrown away
                sent_late = True
            time.sleep(0.01)  # ~1.6 MB/s at most: the answer takes longer than the linger
        assert sent_late
        assert received.endswith(LONG_ANSWER), len(received)


def test_a_client_that_leaves_its_answers_unread_is_disconnected(port: int, caplog) -> None:
    """uvicorn has no write timeout: pipelined answers never read held their connection (and a
    graceful shutdown) indefinitely (helper-111). Left unread for the read timeout, the connection
    is reset: the worker and the kernel let go of what they held for it."""
    with (
        caplog.at_level(logging.WARNING, logger="api.http_protocol"),
        socket.create_connection(("127.0.0.1", port), timeout=30) as s,
    ):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        time.sleep(READ_TIMEOUT_S + 1.5)
        started = time.monotonic()
        received = read_all(s)  # what the client's kernel took, then the reset
        assert time.monotonic() - started < 5 and len(received) < len(LONG_ANSWER), len(received)
    assert any("left its answers unread" in r.getMessage() for r in caplog.records)
