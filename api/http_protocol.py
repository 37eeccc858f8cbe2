"""The HTTP/1.1 protocol `setapay serve` runs: uvicorn's httptools protocol, with bounds on what
one connection may make the worker hold, and problem+json for requests refused before the app.

uvicorn bounds nothing of a request's head with httptools (only its h11 protocol has a limit), and
nothing of how long a request may take to arrive or how many pipelined requests may wait (helper-102,
helper-106). Here, before the app sees a request:

- **Head.** A request line and headers (or a chunked body's trailers) past `HEAD_BYTES_MAX`, or
  more than `HEADER_FIELDS_MAX` fields, are 431 `headers_too_large`, counted as the parser gives
  them and across the slices (`FEED_BYTES_MAX`) it is fed, so one read holding a whole oversized
  head is refused too. Trailers are never added to the request's headers (RFC 9110
  §6.5.1): uvicorn appended them, so a trailer could carry an `Authorization`, an
  `X-Forwarded-For` past the per-address limit, or a `Content-Encoding` past the 415.
- **Pipelining.** At most `PIPELINE_MAX` requests wait behind the one being answered on a
  connection; the next is 429 `too_many_pipelined`. Two megabytes of pipelined `GET`s in one
  connection made ~7,500 requests of one read, and the worker kept ~450 MB after it ended.
- **Time.** A request must arrive whole within `SETAPAY_REQUEST_READ_TIMEOUT_S` (30 s: a batch of
  1,000, 1 MiB over a 64 KiB/s mobile link, takes 16) of its first byte (or of the connection's
  opening; a pipelined request's, of its turn): else 408 `request_timeout`, and a connection
  idle, or sending a head or a body a byte at a time, is closed. uvicorn times out only the wait
  between requests; a stray CRLF between requests (RFC 9112 §2.2) starts nothing.
- **Order.** A refusal is sent after the answers to the requests before it on the connection
  (RFC 9112 §9.3), never in their place: a purchase pipelined before a malformed request was
  posted and its client was answered 400. Nothing after a refused request is read, and a request
  refused while its body was arriving reaches no route (`api.middleware.BodyLimit`).
- **Unread bodies.** A request answered before its body arrived (413, 415, 401 with
  `Expect: 100-continue`) closes the connection: uvicorn read the rest of a 1 TB
  `Content-Length` to throw it away, and took the next request for part of the body.
- **Closing.** A connection the server closes while the client may still be sending (an answer
  before the body was whole, a refusal, `Connection: close`) is closed in stages (RFC 9112 §9.6):
  the answer, then the server's end of the stream, then what still arrives is read and thrown
  away, up to `LINGER_BYTES_MAX`, until the client closes or `LINGER_S` pass once the answer has
  left (a client taking its answer slowly is not cut off, one that takes none of it for
  `LINGER_S` is). Closed at once, unread bytes made the kernel reset the connection, and the
  client lost the answer it had been sent (a chunked body one byte over the limit: "Server
  disconnected without sending a response").
- **Answers not taken.** A client that takes none of what is written to it for
  `SETAPAY_REQUEST_READ_TIMEOUT_S` while the transport's buffer is full (pipelined answers never
  read, a long answer read a byte a second) is reset: uvicorn has no write timeout, and such a
  connection held its answers, and a graceful shutdown, indefinitely (helper-111). When a client
  goes, the request being answered is told, not only the last one read (uvicorn's rule).
- **Connections.** A worker holds at most `SETAPAY_CONNECTIONS_MAX` connections at once (each
  may hold a 1 MiB body for its read time). A connection past them makes room by closing the one
  idle longest: silent since it opened, kept alive between requests, or with a request head still
  incomplete `LINGER_S` after its first byte (a head is a few hundred bytes). Refusing the new one
  instead let anyone lock a worker out with a thousand silent sockets for the read time, for no
  bytes sent (helper-113). Only when every connection has a request going is the new one's
  request 503 `too_many_connections` with `Retry-After`, and it is closed if it sends no head
  within `LINGER_S`. uvicorn's own bound (`limit_concurrency`) answers plain text and holds a
  silent connection for the whole read time. Refusals and connections shed are counted in
  `/metrics` (`setapay_protocol_refusals`, `setapay_connections_shed`).
- **What HTTP/1.1 refuses** (RFC 9112): a version other than 1.0 and 1.1, an HTTP/1.1 request
  without exactly one `Host`, a transfer coding other than `chunked`, and an upgrade request with
  a body (uvicorn dropped the body and every request after it) are 400 `malformed_request`, as
  is a request the parser refuses. Every refusal is problem+json and one JSON log line, not
  uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import socket
import struct
import termios
import weakref

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

from engine import metrics
from engine.errors import problem

log = logging.getLogger(__name__)  # a JSON line like the app's (not uvicorn's plain-text logger)

# The request line and headers together: nginx's default allows 4 headers of 8 KiB (32 KiB);
# a request's own headers here (a key, a signature, an idempotency key) are a few KiB.
HEAD_BYTES_MAX = 64 * 1024
# A chunk's size line and the line end after its data: a few hex digits and two CRLFs.
CHUNK_FRAMING_BYTES_MAX = 32
# Header fields of one head (Apache's default): ten thousand empty ones fit in 64 KiB and cost
# the worker ~1 MB of objects each head (helper-109).
HEADER_FIELDS_MAX = 100
# Requests waiting on one connection behind the one being answered. A terminal or the payment
# app sends one request at a time on a connection; browsers do not pipeline.
PIPELINE_MAX = 16
# The parser is fed at most this much at a time, so a head is counted within a slice of where it
# passes its bound, not a whole read (256 KiB) later (helper-109).
FEED_BYTES_MAX = 16 * 1024
HTTP_VERSIONS = frozenset({"1.0", "1.1"})
# A closing connection reads and throws away at most this much, for at most this long (nginx:
# `lingering_time` 30 s, `lingering_timeout` 5 s): enough for a body in flight when its answer
# left (four times `BODY_BYTES_MAX`), and not a 1 TB `Content-Length`'s worth.
LINGER_BYTES_MAX = 4 * 1024 * 1024
LINGER_S = 2.0


@functools.cache
def read_timeout_s() -> float:
    """`SETAPAY_REQUEST_READ_TIMEOUT_S`, read once a process."""
    from engine.settings import Settings

    return Settings().request_read_timeout_s


@functools.cache
def connections_max() -> int:
    """`SETAPAY_CONNECTIONS_MAX`, read once a process."""
    from engine.settings import Settings

    return Settings().connections_max


RETRY_AFTER_S = 1  # what a request refused for the connections at once is told to wait


class _Refused(Exception):
    """Raised in a parser callback: the request is refused (`status`, `code`, `detail`) and the
    parser stops there."""

    def __init__(self, status: int, code: str, detail: str, headers: bytes = b"") -> None:
        super().__init__(code)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def _malformed(detail: str) -> _Refused:
    return _Refused(400, "malformed_request", detail)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of this module's docstring."""

    _in_head = True  # between a message's start and the end of its headers
    _in_message = False  # between the end of a message's headers and the end of the message
    _began = False  # a message started in the read being parsed
    _head_bytes = 0  # bytes read of the current head, after the read it started in
    _head_parsed = 0  # bytes of the current head (or trailers) the parser gave so far
    _fed_body = 0  # body bytes the parser gave in the read being parsed
    _framing = 0  # bytes of the message after its head that are not its body
    _chunks = 0  # chunks of the message so far
    _fields = 0  # header fields of the current head
    _refusal: bytes | None = None  # the answer owed once the answers before it are sent (b"": none)
    _deadline: asyncio.TimerHandle | None = None
    _lingering: int | None = None  # bytes thrown away since the server's end closed (None: open)
    _linger_end: asyncio.TimerHandle | None = None
    _stalled: asyncio.TimerHandle | None = None  # armed while the transport's buffer is full
    _answering: RequestResponseCycle | None = None  # the request whose app runs (pipelined: not `cycle`)
    _over_limit = False  # opened while the worker held `connections_max()` others: its request is 503
    _message_open = False  # a request's first byte came and its last has not
    _room: _Room  # the server's connections that may be shed (`connection_made`)

    # -- the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._room = _room_of(self.server_state)
        if len(self.connections) - self._room.over > connections_max():  # this one included
            # Full: the connection idle longest is closed to make room; 503 only when every
            # connection has a request going. One over the limit is never shed, nor counted.
            shed = self._room.shed(self.loop.time())
            if shed is None:
                self._over_limit = True
                self._room.over += 1
            else:
                metrics.CONNECTIONS_SHED.inc()
                shed.transport.close()
        if not self._over_limit:
            self._room.idle[self] = None
        self._arm()

    def sheddable(self) -> bool:
        """Holding a slot with no request going (none answered, waiting or refused), not closing."""
        cycle = self.cycle
        return (
            not self._over_limit
            and not self.pipeline
            and (cycle is None or cycle.response_complete)
            and self._lingering is None
            and self._refusal is None
            and not self.transport.is_closing()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._room.forget(self)
        self._disarm()
        for timer in (self._linger_end, self._stalled):
            if timer is not None:
                timer.cancel()
        # uvicorn tells only the last request read that the client left; the one being answered,
        # pipelined before it, went on writing to the closed connection.
        for cycle in (self._answering, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(read_timeout_s(), self._write_stalled)

    def resume_writing(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().resume_writing()

    def _write_stalled(self) -> None:
        self._stalled = None
        log.warning("disconnected a client that left its answers unread for %g s", read_timeout_s())
        sock = self.transport.get_extra_info("socket")
        if sock is not None:  # reset: the kernel drops what it still holds for the client too
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._lingering is not None:  # closing: read only to be thrown away
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES_MAX:
                self.transport.close()
            return
        if self._refusal is not None or self.parser is None:
            # Nothing after a refused request is read (uvicorn's `receive` resumes reading).
            self.flow.pause_reading()
            return
        for start in range(0, len(data), FEED_BYTES_MAX):
            self._feed(data[start : start + FEED_BYTES_MAX])
            if self._refusal is not None or self.transport.is_closing() or self.parser is None:
                return

    def _feed(self, data: bytes) -> None:
        """Parse one slice of a read, counting the head and the trailers across slices."""
        self._began, self._fed_body = False, 0
        continuing = self._in_message  # the slice starts inside a message's body
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # An upgrade without a body (`on_headers_complete` refused one with a body), answered
            # as a plain request: the parser stops at its head without ending the message, so it
            # is ended here. What follows it on the connection is not read.
            self._in_message = False
            self._disarm()
            if self.cycle is not None:
                self.cycle.keep_alive, self.cycle.more_body = False, False
                self.cycle.message_event.set()
            self._refusal = b""  # nothing more is parsed; nothing is owed
            self.flow.pause_reading()
            return
        except httptools.HttpParserError as error:
            refused = error.__context__ if isinstance(error.__context__, _Refused) else None
            refused = refused or _malformed("the request is not valid HTTP/1.1")
            self._refuse(refused.status, refused.code, refused.detail, refused.headers)
            return
        if self.transport.is_closing() or self._refusal is not None:
            return
        if self._in_head:
            # A head that started in this slice was counted by its callbacks (the slice may hold a
            # pipelined request's body before it); from the next slice on, every byte counts.
            self._head_bytes = 0 if self._began else self._head_bytes + len(data)
            if self._head_bytes > HEAD_BYTES_MAX:
                self._refuse(431, "headers_too_large", f"the request line and headers are over {HEAD_BYTES_MAX} bytes")
        elif self._in_message and continuing and not self._began:
            self._framing += len(data) - self._fed_body
            if self._framing > HEAD_BYTES_MAX + CHUNK_FRAMING_BYTES_MAX * self._chunks:
                self._refuse(431, "headers_too_large", f"the body's trailers are over {HEAD_BYTES_MAX} bytes")

    def _should_upgrade(self) -> bool:
        return False  # no protocol upgrade is served (no WebSocket): an upgrade request is a plain one

    # -- parser callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The keep-alive wait and the read deadline go with a request's first byte, not with any
        # byte: a stray CRLF between requests (RFC 9112 §2.2) is ignored, and the idle
        # connection closes at the keep-alive's end without an unasked-for 408 (helper-109).
        self._unset_keepalive_if_required()
        self._message_open = True
        self._room.head_begun(self, self.loop.time())
        super().on_message_begin()
        self._in_head, self._began, self._head_bytes, self._head_parsed, self._fields = True, True, 0, 0, 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url), "the request line and headers")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer: counted, never one of the request's headers
            self._count_head(len(name) + len(value) + 4, "the body's trailers")
            return
        self._count_head(len(name) + len(value) + 4, "the request line and headers")
        self._fields += 1
        if self._fields > HEADER_FIELDS_MAX:
            raise _Refused(431, "headers_too_large", f"a request has at most {HEADER_FIELDS_MAX} header fields")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_message, self._framing, self._chunks, self._head_parsed = False, True, 0, 0, 0
        self._room.heads.pop(self, None)  # a request going: not shed
        if self._over_limit:
            raise _Refused(
                503,
                "too_many_connections",
                "every connection this server holds at once has a request going; retry shortly",
                b"retry-after: %d\r\n" % RETRY_AFTER_S,
            )
        version = self.parser.get_http_version()
        if version not in HTTP_VERSIONS:
            raise _malformed("only HTTP/1.1 and HTTP/1.0 are served")
        names = [name for name, _ in self.headers]
        if version == "1.1" and names.count(b"host") != 1:
            raise _malformed("an HTTP/1.1 request has exactly one Host header")
        codings = [value.strip().lower() for name, value in self.headers if name == b"transfer-encoding"]
        if codings and codings != [b"chunked"]:
            raise _malformed("the only transfer coding served is chunked")
        if self.parser.should_upgrade() and (codings or any(n == b"content-length" for n in names)):
            raise _malformed(
                "no protocol upgrade is served, and a request offering one may carry no body: send it without"
                " Upgrade (curl: --http1.1)"
            )
        if len(self.pipeline) >= PIPELINE_MAX:
            raise _Refused(
                429,
                "too_many_pipelined",
                f"at most {PIPELINE_MAX} requests may wait on one connection; send fewer at once",
            )
        super().on_headers_complete()
        self.cycle.transport = _ClosingInStages(self.transport, self)  # type: ignore[assignment]
        if self.pipeline and self.pipeline[0][0] is self.cycle:
            # Queued behind an answer, with reading paused: its time starts when its turn does.
            self._disarm()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        if cycle is self.cycle and cycle.more_body and self._deadline is None:
            self._arm()  # a queued request's turn: the rest of its body has its time from now
        self._answering = cycle
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._fed_body += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_message_complete(self) -> None:
        self._in_message = self._message_open = False
        self._disarm()
        super().on_message_complete()

    def _count_head(self, size: int, what: str) -> None:
        self._head_parsed += size
        if self._head_parsed > HEAD_BYTES_MAX:
            raise _Refused(431, "headers_too_large", f"{what} are over {HEAD_BYTES_MAX} bytes")

    # -- answers -----------------------------------------------------------------------

    def on_response_complete(self) -> None:
        if self._lingering is not None:  # the answer said `Connection: close`
            self.server_state.total_requests += 1
            return
        if self._refusal is not None:
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            if self.pipeline:  # the answers before the refusal, in order
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._send_refusal()
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body and not self.pipeline:
            # Answered before its body arrived: the rest is not read, and the connection closes.
            self.server_state.total_requests += 1
            self.close_in_stages()
            return
        super().on_response_complete()
        if not self._message_open and not self.pipeline and not self._over_limit:
            self._room.idle[self] = None  # kept alive, waiting for its next request

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "malformed_request", "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: str, detail: str, headers: bytes = b"") -> None:
        """Refuse the request being read: nothing more is read, and the refusal is sent once
        the requests before it on the connection are answered, then the connection closes.
        `headers`: more header lines of the answer, each ending in CRLF."""
        if self._refusal is not None or self.transport.is_closing() or self._lingering is not None:
            return
        self._disarm()
        body = json.dumps(problem(status, code, detail)).encode()
        log.warning("refused a request before the app: %s", code)
        metrics.PROTOCOL_REFUSALS.labels(code).inc()
        head = STATUS_LINE[status] + b"".join(
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        )
        self._refusal = (
            head
            + b"content-type: application/problem+json\r\ncontent-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n"
            + headers
            + b"\r\n"
            + body
        )
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The refused request is the one whose body is being read: answered in its place.
            queued = [c for c, _ in self.pipeline]
            if cycle in queued:
                del self.pipeline[queued.index(cycle)]
            else:  # its app is running: it is told the client left, and the refusal goes now
                cycle.disconnected = True
                cycle.message_event.set()
                self._send_refusal()
                return
        if self.pipeline or (cycle is not None and not cycle.response_complete):
            return  # sent by `on_response_complete` after the answers before it
        self._send_refusal()

    def _send_refusal(self) -> None:
        assert self._refusal is not None
        if self._refusal:
            self.transport.write(self._refusal)
        self.close_in_stages()

    def close_in_stages(self) -> None:
        """Close the connection after what was written to it, so the client reads it all (RFC 9112
        §9.6): the server's end of the stream is closed once it is sent, and what the client still
        sends is thrown away until it closes its end, `LINGER_BYTES_MAX` arrive or `LINGER_S` pass."""
        if self.transport.is_closing() or self._lingering is not None:
            return
        self._disarm()
        self._unset_keepalive_if_required()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self._lingering = 0
        self.transport.write_eof()  # after what is buffered; the client's read then ends
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            cycle.body = bytearray()  # a body answered before it arrived: what came of it is not kept
        self._linger_end = self.loop.call_later(LINGER_S, self._linger_passed, self._unsent())
        self.flow.resume_reading()

    def _unsent(self) -> int:
        """Bytes written to the connection the client has not taken yet: the transport's buffer and,
        on Linux, the socket's send queue (`SIOCOUTQ`, `TIOCOUTQ`'s number: bytes not yet
        acknowledged). The kernel holds megabytes of an answer after the transport let go of it."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                unsent += struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        return unsent

    def _linger_passed(self, unsent_before: int) -> None:
        """`LINGER_S` passed closing: closed once the answer has left and the client had
        `LINGER_S` to close its end, or when the client took none of the answer since the last look."""
        unsent = self._unsent()
        if unsent and unsent < unsent_before:  # the client is still reading its answer
            self._linger_end = self.loop.call_later(LINGER_S, self._linger_passed, unsent)
        elif unsent_before and not unsent:  # it has all left now: the client has its time to close
            self._linger_end = self.loop.call_later(LINGER_S, self._linger_passed, 0)
        else:
            self.transport.close()

    # -- the read deadline -------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        seconds = LINGER_S if self._over_limit else read_timeout_s()  # over the limit: its head, soon
        self._deadline = self.loop.call_later(seconds, self._deadline_passed)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._over_limit and self._in_head:  # no head within its time: closed, nothing is owed
            self.transport.close()
            return
        self._refuse(408, "request_timeout", f"the request did not arrive whole within {read_timeout_s():g} s")


class _Room:
    """The connections of one server that may be shed for a new one past `connections_max()`, each in
    the order it became so: `idle` (silent since it opened, or kept alive between requests) and
    `heads` (a request head begun, by when). A pick looks at the first few, not at every
    connection: a flood of connects to a full worker costs no scan of a thousand (helper-114)."""

    def __init__(self) -> None:
        self.idle: dict[BoundedHttpToolsProtocol, None] = {}
        self.heads: dict[BoundedHttpToolsProtocol, float] = {}
        self.over = 0  # connections over the limit, not counted against it

    def head_begun(self, protocol: BoundedHttpToolsProtocol, now: float) -> None:
        self.idle.pop(protocol, None)
        if not protocol._over_limit:
            self.heads[protocol] = now

    def forget(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.idle.pop(protocol, None)
        self.heads.pop(protocol, None)
        if protocol._over_limit:
            protocol._over_limit = False
            self.over -= 1

    def shed(self, now: float) -> BoundedHttpToolsProtocol | None:
        """The connection to close for a new one: the one idle longest, else the one whose request
        head began first if still incomplete `LINGER_S` after (a head is a few hundred bytes: one
        that trickles is a slowloris, not a mobile link); taken out of the room. None when every
        connection has a request going."""
        while self.idle:
            protocol = next(iter(self.idle))
            del self.idle[protocol]
            if protocol.sheddable():
                return protocol
        while self.heads:
            protocol, began = next(iter(self.heads.items()))
            if now - began <= LINGER_S:
                break
            del self.heads[protocol]
            if protocol.sheddable():
                return protocol
        return None


_ROOMS: weakref.WeakKeyDictionary[object, _Room] = weakref.WeakKeyDictionary()


def _room_of(server_state: object) -> _Room:
    """The room of the server whose state `server_state` is (uvicorn's, one a server)."""
    room = _ROOMS.get(server_state)
    if room is None:
        room = _ROOMS[server_state] = _Room()
    return room


class _ClosingInStages:
    """The transport a request's cycle writes its answer to: uvicorn closes it after an answer
    that says `Connection: close`; here it is closed in stages (`close_in_stages`)."""

    def __init__(self, transport: asyncio.Transport, protocol: BoundedHttpToolsProtocol) -> None:
        # The protocol holds the cycle that holds this: held weakly, a closed connection's protocol,
        # cycle and body go when it does, not at the next collection of cycles (`engine.collector`
        # runs one after 500,000 allocations: a worker held 1 GB of closed connections, helper-111).
        self._transport, self._protocol = transport, weakref.proxy(protocol)

    def close(self) -> None:
        try:
            self._protocol.close_in_stages()
        except ReferenceError:  # the connection is gone
            self._transport.close()

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def is_closing(self) -> bool:
        try:
            return self._transport.is_closing() or self._protocol._lingering is not None
        except ReferenceError:
            return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._transport.get_extra_info(name, default)
