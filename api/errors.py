"""Problem responses and the exception handlers: every failure is RFC 9457 problem+json.

Routers raise `EngineError` (engine/errors.py) and one handler renders it with its
status and stable `code`. Validation failures are 422 `invalid_request` (400
`malformed_json` when the body is not JSON); Starlette's own 400 and 404 become
`malformed_json` and `not_found`. Nothing a client sends can produce a 500: an
exception nobody expected is a bug, logged and answered 500 `internal_error` as
problem+json all the same.
`guarded` and `validated` turn a database that cannot be reached (503) and a
merged record that fails validation (422) into `EngineError`s.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from engine import metrics, sealing
from engine.errors import EngineError, decline
from engine.store import db

T = TypeVar("T")

PROBLEM_JSON = "application/problem+json"


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _text(value: object) -> str:
    """`value` as text that encodes to UTF-8: a lone surrogate a client sent (JSON "\\ud800")
    and pydantic echoes in a message or location is shown escaped."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


# Errors an `invalid_request` lists at most; then one entry saying how many more there were (a
# body of 90,000 unknown fields was answered 8 MB of errors, half a second of CPU: helper-89).
ERRORS_LISTED_MAX = 50


def json_safe(errors: Sequence[ErrorDetails]) -> list[dict[str, Any]]:
    """pydantic's errors as `invalid_request`'s `errors`: loc, msg and type, as UTF-8-safe text;
    the first `ERRORS_LISTED_MAX`, then `{"loc": [], "msg": "… more errors", "type": "too_many_errors"}`."""
    out = []
    for e in errors[:ERRORS_LISTED_MAX]:
        out.append({"loc": [_text(x) for x in e.get("loc", ())], "msg": _text(e.get("msg", "")), "type": e.get("type")})
    if len(errors) > ERRORS_LISTED_MAX:
        out.append({"loc": [], "msg": f"{len(errors) - ERRORS_LISTED_MAX} more errors", "type": "too_many_errors"})
    return out


def guarded(action: Callable[[], T]) -> T:
    """Run a ledger call; a database that cannot be reached is a 503 the client may retry."""
    try:
        return action()
    except db.UNREACHABLE as exc:
        raise EngineError("service_unavailable", type(exc).__name__) from None


def validated(action: Callable[[], T]) -> T:
    """Run a PATCH; a merged record that fails validation is a 422 naming the field."""
    try:
        return action()
    except ValidationError as exc:
        raise EngineError("invalid_request", errors=json_safe(exc.errors())) from None


# Starlette types every handler as taking any Exception; each is installed for one class only.
# A 503's `Retry-After` (RFC 9110 §10.2.3): a lost committer child is started again, and a
# database or cache away is tried again, within about a second (helper-108: none was sent).
UNAVAILABLE_RETRY_AFTER_S = 1


async def _engine_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    metrics.refused(exc.code)
    headers = getattr(exc, "headers", None)
    if exc.status == 503 and not headers:
        headers = {"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}
    return problem_response(exc.status, exc.problem(), headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem_response(*decline("malformed_json"))
    return problem_response(*decline("invalid_request", errors=json_safe(errors)))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals as problem+json, with the headers it gave them (a 405's `Allow`)."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 400:  # FastAPI could not read the body (not UTF-8, nested too deep): not JSON
        return problem_response(*decline("malformed_json"), headers)
    if exc.status_code == 404:
        return problem_response(*decline("not_found"), headers)
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem_response(
        exc.status_code,
        {"type": "about:blank", "title": str(exc.detail), "status": exc.status_code, "code": "http_error"},
        headers,
    )


def allowed_methods(request: Request) -> str:
    """A 405's `Allow` (RFC 9110 §15.5.6): the methods of every route of the path, not only those
    of the route Starlette tried first (GET and POST /v1/merchants are two routes), with HEAD
    wherever GET is (api/middleware.py `HeadAsGet`)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def _unreachable(request: Request, exc: Exception) -> JSONResponse:
    """A database that cannot be reached, wherever a route met it (a cache reload, a read): the
    503 a client retries, as `guarded` answers it, not a 500 with a traceback per request."""
    return await _engine_error(request, EngineError("service_unavailable", type(exc).__name__))


async def _sealed_elsewhere(request: Request, exc: Exception) -> JSONResponse:
    """A secret in the database (a payment app's receipt secret, say) that this server's data key
    does not open: the server is configured with another key than the one that sealed it. Not the
    client's doing: a 503 it may retry once the operator has fixed the key, and one log line that
    says so (never the key, the secret or the blob)."""
    logging.getLogger("setapay.api").error(
        "a sealed secret does not open with this server's data key (SETAPAY_DATA_KEY_B64 or "
        "setapay-keys/data.key): is it the key that sealed it, or was the row altered? (%s %s)",
        request.method,
        request.url.path,
    )
    return await _engine_error(request, EngineError("service_unavailable", type(exc).__name__))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug if reached
    logging.getLogger("setapay.api").error("unexpected %s", type(exc).__name__, exc_info=exc)
    return problem_response(*decline("internal_error"))


def install(app: FastAPI) -> None:
    """Render every failure of `app` as problem+json."""
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for unreachable in db.UNREACHABLE:
        app.add_exception_handler(unreachable, _unreachable)
    app.add_exception_handler(sealing.SealingError, _sealed_elsewhere)
    app.add_exception_handler(Exception, _unexpected)
