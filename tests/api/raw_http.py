"""Raw HTTP/1.1 on a socket, for tests of what the server does with bytes no client library sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def read_all(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    try:
        while part := s.recv(65536):
            answer += part
    except ConnectionResetError:
        pass
    return answer


def statuses(answer: bytes) -> list[int]:
    """The status of each answer in `answer`, in order."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def last_problem(answer: bytes) -> dict:
    """The body of the last answer, a problem+json."""
    return json.loads(answer[answer.rindex(b"\r\n\r\n") + 4 :])


@contextlib.contextmanager
def protocol_server(app: Any, settings: dict[str, str]) -> Iterator[int]:
    """An in-process uvicorn server of `app` on 127.0.0.1 running the protocol `setapay serve` runs
    (`api.http_protocol.BoundedHttpToolsProtocol`), with `settings` (SETAPAY_* variables) in the
    environment while it runs, read afresh by the protocol's settings; yields its port."""
    from api import http_protocol

    cached = (http_protocol.read_timeout_s, http_protocol.connections_max)
    os.environ.update(settings)
    for setting in cached:
        setting.cache_clear()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=http_protocol.BoundedHttpToolsProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        for name in settings:
            del os.environ[name]
        for setting in cached:
            setting.cache_clear()
