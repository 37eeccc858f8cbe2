"""One JSON line per request, and the request id (issue 14, structured logs).

`AccessLog` is the outermost middleware. It takes the request id from `X-Request-Id` when the
caller sent a usable one (1–128 of `A-Z a-z 0-9 . _ : -`) or makes one, returns it in
`X-Request-Id`, and when the answer is sent writes one line to the `setapay.access` logger:

    {"event": "request", "request_id": ..., "method": "POST", "route": "/v1/transactions",
     "path": "/v1/transactions", "status": 201, "latency_ms": 3.2, "key_id": "k_...",
     "role": "terminal", "replayed": false}

`route` is the route's template (ids not filled in), so lines group by operation. Only these
fields are written: never a header, a query string or a body, so keys, receipt tokens,
signatures and bank numbers cannot reach the log. The caller's key id and role come from
`api.deps.principal`, which notes the authenticated principal in the request state.

Lines are gathered (`_Lines`) and handed to the logger together: at most `FLUSH_S` after the
first of them, at once when `FLUSH_LINES` are waiting, and when the process exits. One record, one
write a flush, instead of one a request: under a launch rush a write per request cost the event
loop ~15% of its single posts (the logging call and, after the write let go of the interpreter
lock, the wait to take it back behind the committer's threads; `docs/BENCHMARKS.md`). A process
killed outright (SIGKILL) loses at most the last `FLUSH_S` of lines; the ledger is not the log.
A handler of its own that an operator adds to `setapay.access` receives such a record: several
lines, one a request.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import functools
import json
import logging
import os
import random
import re
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import metrics

ACCESS = logging.getLogger("setapay.access")
REQUEST_ID_HEADER = "x-request-id"
_USABLE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_IDS = random.Random()  # made request ids (`request_id_from`)
os.register_at_fork(after_in_child=_IDS.seed)
PRINCIPAL_STATE = "setapay_principal"  # the request-state key api.deps.principal fills
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # `json.dumps`' very format, its encoder made once
FLUSH_S = 0.1  # a gathered line waits at most this long for the logger
FLUSH_LINES = 256  # so many waiting lines go at once


class _Lines:
    """Access lines waiting for the logger, handed to it as one record (lines joined by newlines,
    which `JsonLines` writes as they are). Added on an event loop; `flush` may run anywhere."""

    def __init__(self) -> None:
        self.waiting: list[str] = []
        self._due_on: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on

    def add(self, line: str) -> None:
        self.waiting.append(line)
        if len(self.waiting) >= FLUSH_LINES:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running (a direct call): written at once
            self.flush()
            return
        # One flush scheduled a loop; a loop that ended before its flush came leaves none behind
        # for the next (its lines go with that one's).
        if self._due_on is not loop:
            self._due_on = loop
            loop.call_later(FLUSH_S, self._due)

    def _due(self) -> None:
        self._due_on = None
        self.flush()

    def flush(self) -> None:
        waiting, self.waiting = self.waiting, []
        if waiting:
            ACCESS.info("\n".join(waiting))

    def forget(self) -> None:
        """In a forked child: the parent's lines are the parent's to write."""
        self.waiting, self._due_on = [], None


_LINES = _Lines()
atexit.register(_LINES.flush)
os.register_at_fork(after_in_child=_LINES.forget)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's request id when usable, else a new one (32 hex digits).

    A new id is 128 bits of a generator of its own (`_IDS`, seeded from the operating system, again
    in a forked child; no caller's `random.seed` repeats it), not `uuid.uuid4`: that reads the
    operating system's random source, letting go of the interpreter lock, and on the event loop
    taking it back can wait for another thread's switch interval. A request id correlates lines; it
    is no secret and guards nothing (a caller may send any id of its own)."""
    for name, value in headers:
        if name == REQUEST_ID_HEADER.encode():
            text = value.decode("latin-1")
            if _USABLE_ID.fullmatch(text):
                return text
            break
    return f"{_IDS.getrandbits(128):032x}"


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        scope.setdefault("state", {})["request_id"] = request_id
        answer: dict[str, Any] = {"status": 500, "replayed": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                answer["status"] = message["status"]
                answer["replayed"] = headers.get("idempotent-replayed") == "true"
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            line = _line(scope, request_id, answer, started)
            _count(line)
            if ACCESS.isEnabledFor(logging.INFO):
                _LINES.add(_ENCODE(line))


def _line(scope: Scope, request_id: str, answer: dict[str, Any], started: float) -> dict[str, Any]:
    route = scope.get("route")
    principal = scope.get("state", {}).get(PRINCIPAL_STATE)
    return {
        "event": "request",
        "time": _now(),
        "request_id": request_id,
        "method": scope.get("method"),
        "route": getattr(route, "path", None),
        "path": scope.get("path"),
        "status": answer["status"],
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "key_id": getattr(principal, "key_id", None),
        "role": getattr(principal, "role", None),
        "replayed": answer["replayed"],
    }


def _count(line: dict[str, Any]) -> None:
    """The request in the Prometheus metrics (engine/metrics.py); routes by template, so ids never
    become labels (an unmatched path counts as `unmatched`)."""
    route = line["route"] or "unmatched"
    method = line["method"] if line["method"] in _METHODS else "other"
    requests, seconds = _series(method, route, line["status"])
    requests.inc()
    seconds.observe(line["latency_ms"] / 1000)
    if line["replayed"]:
        metrics.REPLAYS.inc()
    if line["status"] == 429:
        metrics.RATE_LIMITED.labels(route=route).inc()


@functools.lru_cache(maxsize=4096)  # templates x methods x statuses: a few hundred
def _series(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The request counter's and latency histogram's series of these labels, looked up once
    (`labels()` validates and locks on every call: ~10 µs a request)."""
    return (
        metrics.REQUESTS.labels(method=method, route=route, status=str(status)),
        metrics.REQUEST_SECONDS.labels(method=method, route=route),
    )


def _utc_text(seconds: float) -> str:
    """An instant as RFC 3339 UTC to the millisecond: each line says when it was written, so an
    operator places it in time from the log alone (helper-93: "child killed" could not be)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> str:
    return _utc_text(time.time())


class JsonLines(logging.Formatter):
    """A record whose message is already a JSON object is written as is; any other record becomes
    `{"event": "log", "time", "level", "logger", "message"}`, with `error` and `traceback`
    (escaped, so still one line) when it carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if message.startswith("{"):
            return message
        line = {
            "event": "log",
            "time": _utc_text(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = type(record.exc_info[1]).__name__
            line["traceback"] = self.formatException(record.exc_info)  # escaped: still one line
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "info") -> None:
    """JSON lines on stderr for the engine's loggers (`setapay serve` calls this in each worker)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines())
    for name in ("setapay", "api", "engine"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    # Libraries' warnings and errors too (psycopg's "error ignored terminating <Pipeline>" were
    # plain text among the JSON lines: helper-93).
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # uvicorn's own loggers keep uvicorn's plain-text handlers unless given ours (its warnings,
    # "Invalid HTTP request received." among them, were plain lines: helper-106).
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = [handler]
        logging.getLogger(name).propagate = False
