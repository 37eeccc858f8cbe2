"""The HTTP/1.1 protocol `setapay serve` runs: uvicorn's httptools protocol, with a bound on a
request's head and problem+json for requests the parser refuses.

uvicorn bounds nothing of a request's head with httptools (only its h11 protocol has a limit):
one connection sending a 20 MB header line held 40 MB of the worker until it ended, and a few
of them kept the worker's memory up after they closed (helper-102). Bodies are bounded by the
app (`api.middleware`, 413); the head is bounded here, before the app sees it: once the request
line and headers read so far pass `HEAD_BYTES_MAX` without ending, the answer is 431 and the
connection closes. The parser keeps at most that plus one read (the transport's, 256 KiB) of a
head in memory.

A request the parser refuses (a malformed request line or header, `Content-Length` with
`Transfer-Encoding`) is answered 400 `malformed_request` as problem+json like every other
refusal, not uvicorn's plain-text line.
"""

from __future__ import annotations

import json
import logging

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from engine.errors import problem

log = logging.getLogger(__name__)  # a JSON line like the app's (not uvicorn's plain-text logger)

# The request line and headers together: nginx's default allows 4 headers of 8 KiB (32 KiB);
# a request's own headers here (a key, a signature, an idempotency key) are a few KiB.
HEAD_BYTES_MAX = 64 * 1024


# A chunk's size line and the line end after its data: a few hex digits and two CRLFs.
CHUNK_FRAMING_BYTES_MAX = 32


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a head longer than `HEAD_BYTES_MAX` (431), and
    likewise a chunked body's trailers (header fields after the last chunk, parsed and kept the
    same way: helper-105) past that beyond its chunks' framing."""

    _in_head = True  # between a message's start and the end of its headers
    _in_message = False  # between the end of a message's headers and the end of the message
    _began = False  # a message started in the read being parsed
    _head_bytes = 0  # bytes read of the current head, after the read it started in
    _fed_body = 0  # body bytes the parser gave in the read being parsed
    _framing = 0  # bytes of the message after its head that are not its body
    _chunks = 0  # chunks of the message so far

    def data_received(self, data: bytes) -> None:
        self._began, self._fed_body = False, 0
        continuing = self._in_message  # the read starts inside a message's body
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head:
            # A head that started in this read is given it whole (it may hold a pipelined
            # request's body before it); from the next read on, every byte before its end counts.
            self._head_bytes = 0 if self._began else self._head_bytes + len(data)
            if self._head_bytes > HEAD_BYTES_MAX:
                self._refuse(431, "headers_too_large", f"the request line and headers are over {HEAD_BYTES_MAX} bytes")
        elif self._in_message and continuing and not self._began:
            self._framing += len(data) - self._fed_body
            if self._framing > HEAD_BYTES_MAX + CHUNK_FRAMING_BYTES_MAX * self._chunks:
                self._refuse(431, "headers_too_large", f"the body's trailers are over {HEAD_BYTES_MAX} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._began, self._head_bytes = True, True, 0

    def on_headers_complete(self) -> None:
        self._in_head, self._in_message, self._framing, self._chunks = False, True, 0, 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed_request", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: str, detail: str) -> None:
        body = json.dumps(problem(status, code, detail)).encode()
        log.warning("refused a request before the app: %s", code)
        head = STATUS_LINE[status] + b"".join(
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        )
        self.transport.write(
            head
            + b"content-type: application/problem+json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()
