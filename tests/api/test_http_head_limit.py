"""The request head's bound (api/http_protocol.py): a head past `HEAD_BYTES_MAX` is refused 431
before it fills the worker's memory (helper-102: a 20 MB header line was read whole and answered
200); a request the HTTP parser refuses gets problem+json like every other refusal."""

from __future__ import annotations

import json

import httpx

from api.http_protocol import HEAD_BYTES_MAX
from tests.api.raw_http import connect, read_all
from tests.ward import Ward


def _exchange(ward: Ward, chunks: list[bytes]) -> bytes:
    """Send `chunks` on one connection (stopping where the server closes it) and read the answer."""
    with connect(ward.server.port) as s:
        try:
            for chunk in chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the rest was sent
        return read_all(s)


def _problem(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower(), head
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_a_head_past_the_bound_is_refused_431_and_the_server_serves_on(ward: Ward) -> None:
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: "
    answer = _exchange(ward, [start] + [b"a" * 65536] * 320 + [b"\r\n\r\n"])  # a 20 MiB header
    status, body = _problem(answer)
    assert (status, body["code"]) == (431, "headers_too_large"), body
    # Many headers rather than one long one: the same.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(HEAD_BYTES_MAX // 1000 + 400))
    status, body = _problem(_exchange(ward, [start[:-7], many[: len(many) // 2], many[len(many) // 2 :], b"\r\n"]))
    assert (status, body["code"]) == (431, "headers_too_large"), body
    # A head under the bound, sent in many reads: answered.
    under = b"X-Fine: " + b"c" * (HEAD_BYTES_MAX // 2) + b"\r\n\r\n"
    answer = _exchange(ward, [start[:-7]] + [under[i : i + 1000] for i in range(0, len(under), 1000)])
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert httpx.get(ward.server.base_url + "/healthz", trust_env=False).status_code == 200


def test_a_request_the_parser_refuses_is_a_problem_400(ward: Ward) -> None:
    for raw in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n",
    ):
        status, body = _problem(_exchange(ward, [raw]))
        assert (status, body["code"]) == (400, "malformed_request"), (raw, body)


def test_a_chunked_body_s_trailers_past_the_bound_are_refused(ward: Ward) -> None:
    """Trailers (header fields after a chunked body's last chunk) are parsed and kept like headers:
    they are bounded the same way (helper-105), and chunks' own framing is not counted against it."""
    head = (
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    answer = _exchange(ward, [head, b"2\r\n{}\r\n0\r\nX-Trailer: "] + [b"a" * 65536] * 320 + [b"\r\n\r\n"])
    assert b'"code":"headers_too_large"' in answer.replace(b" ", b""), answer[-400:]
    # A body in many one-byte chunks (five times more framing than body) reaches the app: 401, no key.
    tiny = b"".join(b"1\r\n%s\r\n" % bytes([c]) for c in b'{"reason": "' + b"x" * 20_000 + b'"}')
    answer = _exchange(ward, [head, tiny[: len(tiny) // 2], tiny[len(tiny) // 2 :], b"0\r\n\r\n"])
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
