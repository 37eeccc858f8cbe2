"""ASGI middleware that runs before any route: body size and strict input (SPEC §2).

`BodyLimit` wraps the whole application, so what it refuses never reaches
authentication, validation or a handler; its answers are problem+json like
every other failure (api/errors.py).
"""

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.access_log import AccessLog
from api.errors import problem_response
from api.strict import BODY_SENT, content_coding, duplicated_header, replayed_body
from engine import limits
from engine.errors import EngineError, decline


class BodyTooLarge(EngineError):
    def __init__(self) -> None:
        super().__init__("body_too_large", f"bodies are limited to {limits.BODY_BYTES_MAX} bytes")


class BodyLimit:
    """Refuse bodies over the limit, whether announced by Content-Length or streamed in chunks.

    A chunked body is counted as it arrives; the moment it passes the limit the
    read fails with `BodyTooLarge`, which the error handler renders as 413, so no
    handler ever sees (let alone posts) an oversized request.

    Strict input (SPEC §2, api/strict.py) is checked here too, for every route, before anything
    is read: a once-only header sent twice (400 `header_duplicated`), and a Content-Encoding
    other than identity (415 `unsupported_media_type`: no route decodes one, and a gzipped JSON
    body was taken as it came, so it read as something else). The body is read whole here and
    parsed by its route once the caller is authenticated (`strict.ParsedBodyRoute`): a 1 MiB
    body parsed here for anyone cost the worker up to 220 ms (helper-106).
    """

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        duplicated = duplicated_header(scope["headers"])  # SPEC §2: before anything else
        if duplicated is not None:
            response = problem_response(*decline("header_duplicated", f"{duplicated} was sent more than once"))
            return await response(scope, receive, send)
        headers = dict(scope["headers"])
        coding = content_coding(scope["headers"])
        if coding is not None:
            response = problem_response(
                *decline("unsupported_media_type", f"the body is sent {coding}: send it as it is (identity)"),
                {"Accept-Encoding": "identity"},
            )
            return await response(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit_bytes):
            response = problem_response(413, BodyTooLarge().problem())
            return await response(scope, receive, send)
        # Read the whole body first (never more than the limit plus one chunk), so a
        # streamed body over the limit is refused before any handler sees it.
        chunks: list[bytes] = []
        received, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client left, or its request was refused, before the body was whole: no
                # route acts on it (one that reads no body ran, a key revoked under a 408:
                # helper-109). Answered all the same, as an ASGI server expects (a gone client's
                # answer is dropped).
                response = problem_response(
                    *decline("malformed_request", "the body did not arrive whole: the client left")
                )
                return await response(scope, receive, send)
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            more = message.get("more_body", False)
            if received > self.limit_bytes:
                response = problem_response(413, BodyTooLarge().problem())
                return await response(scope, receive, send)
        body = b"".join(chunks)
        scope[BODY_SENT] = bool(body)  # parsed by its route once its caller is known (`strict.ParsedBodyRoute`)
        if scope["path"].startswith("/v1/"):
            send = _not_stored(send)
        return await self.app(scope, replayed_body(body, receive), send)


_NO_STORE = (b"cache-control", b"no-store")


def _not_stored(send: Send) -> Send:
    """`send` with `Cache-Control: no-store` on the answer's head, unless the route set its own:
    every `/v1/` answer is for the key that asked (a wallet's history, a Zengin file's account
    numbers, a key listing), and no browser, proxy or app cache keeps it (the pages set theirs)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if not any(name.lower() == b"cache-control" for name, _ in headers):
                message["headers"] = [*headers, _NO_STORE]
        await send(message)

    return sending


class HeadAsGet:
    """HEAD answered as GET is, without the body (RFC 9110 §9.3.2): FastAPI's routes take only
    the methods they declare, so `curl -I /healthz` (a load balancer's probe) was 405. The routes
    see GET; the answer keeps GET's status and headers (Content-Length too) and sends no body. A
    path without GET answers HEAD as it answers GET: 405 with its `Allow`, or 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headless(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headless)


def install(app: FastAPI) -> None:
    """Put `BodyLimit` in front of every route of `app` (and `HeadAsGet` behind it), and
    `AccessLog` in front of everything (added last, so outermost: it sees every answer,
    `BodyLimit`'s refusals included, and a HEAD as the client sent it)."""
    app.add_middleware(HeadAsGet)
    app.add_middleware(BodyLimit, limit_bytes=limits.BODY_BYTES_MAX)
    app.add_middleware(AccessLog)
