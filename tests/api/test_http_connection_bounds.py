"""What one connection may make a worker hold or do (api/http_protocol.py), against a real server:
pipelined requests past a bound, a request that never arrives whole, a refusal pipelined after a
request that wrote, trailers taken as headers, a body answered before it arrived, and what
HTTP/1.1 refuses (helper-106). The protocol is the same on both databases: SQLite only."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import uuid

import httpx
import pytest

from api.http_protocol import LINGER_BYTES_MAX, LINGER_S, PIPELINE_MAX
from engine import limits
from tests.api.raw_http import connect, last_problem, read_all, statuses
from tests.ward import Ward

READ_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def backend() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def ward(start_server):
    w = Ward(start_server("sqlite", env={"SETAPAY_REQUEST_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}))
    try:
        yield w
    finally:
        w.close()


def _connect(ward: Ward):
    return connect(ward.server.port)


def _healthy(ward: Ward) -> None:
    assert httpx.get(ward.server.base_url + "/healthz", trust_env=False).status_code == 200


def test_pipelined_requests_past_the_bound_are_refused_after_the_answers_before_them(ward: Ward) -> None:
    """2 MB of pipelined GETs on one connection made thousands of requests of one read, and the
    worker kept ~450 MB after the connection ended: at most PIPELINE_MAX wait, the next is 429."""
    sent = 2_000
    with _connect(ward) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * sent)
        answer = read_all(s)
    got = statuses(answer)
    assert got[-1] == 429 and last_problem(answer)["code"] == "too_many_pipelined", got[-3:]
    assert set(got[:-1]) == {200} and PIPELINE_MAX + 1 <= len(got) - 1 < sent, len(got)
    _healthy(ward)


def test_a_refusal_pipelined_after_a_request_that_wrote_comes_after_its_answer(ward: Ward) -> None:
    """A request that wrote, then a malformed one on the same connection: its client got only the
    400 (in the place of its 201) though it was written (helper-106). The answers keep their order."""
    merchant = f"M_PIPE_{uuid.uuid4().hex[:8]}"
    body = json.dumps({"id": merchant, "name": "Pipelined", "merchant_class": "small"}).encode()
    admin = ward.server.admin_key
    create = (
        b"POST /v1/merchants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (admin.encode(), len(body), body)
    )
    for refused, code in ((b"BAD\r\n\r\n", "malformed_request"), (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000, None)):
        with _connect(ward) as s:
            s.sendall(create + refused)
            if code is None:  # the head grows past the bound in later reads (one read is not counted whole)
                time.sleep(0.3)
                s.sendall(b"b" * 300_000)
            answer = read_all(s)
        got = statuses(answer)
        assert got in ([201, 400], [409, 400], [201, 431], [409, 431]), answer[:300]
        assert last_problem(answer)["code"] == (code or "headers_too_large")
        merchant = f"M_PIPE_{uuid.uuid4().hex[:8]}"
        body = json.dumps({"id": merchant, "name": "Pipelined", "merchant_class": "small"}).encode()
        create = (
            b"POST /v1/merchants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (admin.encode(), len(body), body)
        )


def test_a_request_that_does_not_arrive_whole_in_time_is_408_and_closed(ward: Ward) -> None:
    """No read deadline: an idle socket, a partial head and a partial body were all still open after
    75 s (helper-106), each holding up to a megabyte of the worker."""
    for sent in (
        b"",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{",
    ):
        started = time.monotonic()
        with _connect(ward) as s:
            s.sendall(sent)
            answer = read_all(s)
        took = time.monotonic() - started
        assert READ_TIMEOUT_S - 0.5 <= took < READ_TIMEOUT_S + 10, (sent, took)
        if answer:  # a body being read is cut off: its app is told the client left
            assert statuses(answer) == [408] and last_problem(answer)["code"] == "request_timeout", answer
    # A request sent a byte at a time within the time is answered.
    with _connect(ward) as s:
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
            s.sendall(bytes([byte]))
        assert statuses(read_all(s)) == [200]
    _healthy(ward)


def test_trailers_are_not_headers(ward: Ward) -> None:
    """uvicorn appended a chunked body's trailers to the request's headers: an Authorization sent
    only as a trailer was taken (200), and an X-Forwarded-For trailer dodged the per-address limit."""
    admin = ward.server.admin_key.encode()
    with _connect(ward) as s:
        s.sendall(
            b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            b"0\r\nAuthorization: Bearer %s\r\n\r\n" % admin
        )
        answer = read_all(s)
    assert statuses(answer) == [401], answer[:300]
    with _connect(ward) as s:
        s.sendall(
            b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n0\r\nAuthorization: Bearer wrong\r\n\r\n" % admin
        )
        assert statuses(read_all(s)) == [200]  # one Authorization: the header's


def test_a_request_answered_before_its_body_arrived_closes_the_connection(ward: Ward) -> None:
    """After a 413 for a 1 TB Content-Length, uvicorn read and threw away 6.9 GB in 5 s on one
    connection; after a 415 answered on `Expect: 100-continue`, the next request was read as the body."""
    with _connect(ward) as s:
        s.sendall(
            b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999999\r\n\r\n" + b"x" * 1000
        )
        started = time.monotonic()
        answer = read_all(s)  # ends: the server closed
    assert statuses(answer) == [413] and time.monotonic() - started < READ_TIMEOUT_S, answer[:300]
    with _connect(ward) as s:
        s.sendall(
            b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Expect: 100-continue\r\nContent-Length: 500\r\n\r\n"
        )
        time.sleep(0.3)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(s)
    assert statuses(answer) == [415], answer[:400]


def _sent_until_refused(s, data: bytes) -> None:
    """Send `data`, as much of it as the server takes before it closes."""
    with contextlib.suppress(OSError):
        s.sendall(data)


@pytest.mark.parametrize(
    "raw",
    [
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % (limits.BODY_BYTES_MAX + 1)
        + b" " * (limits.BODY_BYTES_MAX + 1),
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 150_000 + b"\r\n\r\n",
    ],
    ids=["chunked-over-the-limit", "content-length-over-the-limit", "head-over-the-bound"],
)
def test_an_answer_sent_while_the_client_is_still_sending_reaches_it(ward: Ward, raw: bytes) -> None:
    """Closed at once with the client's bytes unread, the connection was reset, and the client lost
    the answer already sent it (CI: a chunked body one byte over the limit, "Server disconnected
    without sending a response"). It is closed in stages: the client reads its answer, then the
    end of the stream, and what it sends meanwhile is thrown away."""
    with _connect(ward) as s:
        _sent_until_refused(s, raw)
        time.sleep(0.3)  # answered, and the server's end closed, while the client still sends
        _sent_until_refused(s, b"\r\n10\r\n" + b" " * 16)
        time.sleep(0.3)
        answer = read_all(s)
        assert statuses(answer) in ([413], [431]), answer[:300]
        assert last_problem(answer)["code"] in ("body_too_large", "headers_too_large")
        s.sendall(b" " * 1000)  # within the linger: taken and thrown away
        time.sleep(LINGER_S + 0.5)
        with pytest.raises(OSError):  # then the server's end is gone: reset
            for _ in range(3):
                s.sendall(b" ")
                time.sleep(0.2)
    _healthy(ward)


def test_a_closing_connection_throws_away_a_bounded_amount(ward: Ward) -> None:
    """After a 413 for a 1 TB Content-Length, the body still arriving is read and thrown away up to
    `LINGER_BYTES_MAX`, then the connection is reset."""
    with _connect(ward) as s:
        s.sendall(
            b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999999\r\n\r\n"
        )
        sent, started = 0, time.monotonic()
        with pytest.raises(OSError):
            while sent < 16 * LINGER_BYTES_MAX:
                s.sendall(b" " * 0x10000)
                sent += 0x10000
        assert time.monotonic() - started < LINGER_S + 1
    _healthy(ward)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/grants HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["no-host", "two-hosts", "http2", "gzip-chunked", "upgrade-with-body"],
)
def test_what_http_1_1_refuses_is_a_problem_400(ward: Ward, raw: bytes) -> None:
    with _connect(ward) as s:
        s.sendall(raw)
        answer = read_all(s)
    assert statuses(answer) == [400] and last_problem(answer)["code"] == "malformed_request", answer[:300]


def test_http_1_0_without_host_and_an_upgrade_without_a_body_are_served(ward: Ward) -> None:
    for raw in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        b"GET /nothing-read HTTP/1.1\r\n",
    ):
        with _connect(ward) as s:
            s.sendall(raw)
            answer = read_all(s)  # and closed: nothing after an upgrade request is read
        assert statuses(answer) == [200], answer[:300]


def test_a_head_past_the_bound_in_one_read_is_refused(ward: Ward) -> None:
    """Counted across reads only, a head that came in one read was never counted: 150 KB got 200."""
    for head in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 150_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(12_000)) + b"\r\n",
    ):
        with _connect(ward) as s:
            s.sendall(head)
            answer = read_all(s)
        assert statuses(answer) == [431] and last_problem(answer)["code"] == "headers_too_large", answer[:300]


def test_json_is_utf_8_without_a_byte_order_mark(ward: Ward) -> None:
    """A body with a UTF-8 BOM, or in UTF-16, was read as JSON (RFC 8259 §8.1: UTF-8, no BOM)."""
    finance = {"Authorization": f"Bearer {ward.finance_key}", "Content-Type": "application/json"}
    for body in (b'\xef\xbb\xbf{"period": "2026-11"}', '{"period": "2026-11"}'.encode("utf-16")):
        r = httpx.post(ward.server.base_url + "/v1/settlement-runs", content=body, headers=finance, trust_env=False)
        assert (r.status_code, r.json()["code"]) == (400, "malformed_json"), r.text


def test_refusals_before_the_app_log_json_lines_only(ward: Ward) -> None:
    """uvicorn wrote `WARNING:  Invalid HTTP request received.` and `Unsupported upgrade request.`
    as plain lines among the JSON ones (helper-106)."""
    for raw in (
        b"BAD\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ):
        with _connect(ward) as s:
            s.sendall(raw)
            read_all(s)
    time.sleep(0.5)  # the log is written in bursts
    lines = [line for line in ward.server.log_path.read_text(errors="replace").splitlines() if line.strip()]
    plain = [line for line in lines if not line.startswith("{")]
    assert not plain, plain[:5]
    refused = [json.loads(line) for line in lines if "refused a request before the app" in line]
    assert refused and all(r["level"] == "warning" for r in refused), refused


def test_a_request_refused_while_its_route_runs_is_not_acted_on(ward: Ward) -> None:
    """A key revoke with a chunked body refused mid-body (400, or 408 when the rest never came)
    revoked the key all the same: the route reads no body and ran on the client's leaving
    (helper-109). A route runs only on a whole request."""
    made = httpx.post(
        ward.server.base_url + "/v1/keys",
        json={"role": "finance"},
        headers={"Authorization": f"Bearer {ward.server.admin_key}"},
        trust_env=False,
    ).json()
    head = (
        b"POST /v1/keys/%s/revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}"
        % (made["id"].encode(), ward.server.admin_key.encode())
    )
    for rest, status in ((b"\r\nZZ\r\n", 400), (b"", 408)):
        with _connect(ward) as s:
            s.sendall(head)
            time.sleep(0.3)  # the route starts, waiting for the rest of the body
            s.sendall(rest)
            answer = read_all(s)
        assert statuses(answer) == [status], answer[:300]
    listed = httpx.get(
        ward.server.base_url + "/v1/keys", headers={"Authorization": f"Bearer {ward.server.admin_key}"}, trust_env=False
    ).json()
    (key,) = [k for k in listed if k["id"] == made["id"]]
    assert key["revoked_at"] is None, key
    assert (
        httpx.get(
            ward.server.base_url + "/v1/campaigns", headers={"Authorization": f"Bearer {made['key']}"}
        ).status_code
        == 200
    )


def test_a_stray_crlf_between_requests_is_ignored(ward: Ward) -> None:
    """A CRLF after a request armed the read deadline: the idle connection got an unasked-for 408,
    which a client reusing the connection would read as its next answer (helper-109)."""
    with _connect(ward) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.5)  # answered
        s.sendall(b"\r\n")
        answer = read_all(s)  # closed by the keep-alive wait (5 s), with nothing more said
    assert statuses(answer) == [200], answer[-300:]


def test_many_header_fields_and_a_head_past_the_bound_within_one_read_are_refused_at_once(ward: Ward) -> None:
    """Ten thousand empty header fields fit in 64 KiB (~1 MB of the worker's objects each head),
    and a head that began in a read was counted only from the next read: 100 KB of an unfinished
    header line in one write waited for the read deadline (helper-109)."""
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"h%d: \r\n" % i for i in range(200)) + b"\r\n"
    unfinished = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
    for raw in (many, unfinished):
        started = time.monotonic()
        with _connect(ward) as s:
            s.sendall(raw)
            answer = read_all(s)
        assert statuses(answer) == [431] and last_problem(answer)["code"] == "headers_too_large", answer[:300]
        assert time.monotonic() - started < READ_TIMEOUT_S, "refused at the deadline, not at the bound"


def test_a_client_gone_with_pipelined_answers_unread_logs_no_exception(ward: Ward) -> None:
    """uvicorn tells only the last request read that the client left: the one being answered,
    pipelined before it, went on writing to the closed connection and was logged as an
    `Exception in ASGI application` (helper-111)."""
    log = ward.server.log_path
    start = len(log.read_bytes())
    sockets = []
    for _ in range(3):
        s = _connect(ward)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * PIPELINE_MAX + b"BAD\r\n\r\n")
        sockets.append(s)
    time.sleep(1)  # the answers are blocked on clients that never read
    for s in sockets:
        s.close()
    time.sleep(1)
    written = log.read_bytes()[start:].decode(errors="replace")
    assert "Exception in ASGI application" not in written and "Traceback" not in written, written[:2000]
    _healthy(ward)
