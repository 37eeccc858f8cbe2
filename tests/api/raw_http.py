"""Raw HTTP/1.1 on a socket, for tests of what the server does with bytes no client library sends."""

from __future__ import annotations

import json
import re
import socket


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
