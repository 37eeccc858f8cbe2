"""Strict input (SPEC §2): what the HTTP layer refuses before a route or the database sees it.

- A header that must appear once (`Authorization`, `Idempotency-Key`, `Content-Type`) sent
  more than once: 400 `header_duplicated`, before anything else (`duplicated_header`). Two
  Content-Types would let the duplicate-key check below read one and FastAPI the other.
- A JSON body holding an object with a duplicate key, at any depth (`{"amount": 1,
  "amount": 9999999}`): 400 `malformed_json` (`parse_unique`). Python's `json`
  keeps the last value silently; so would FastAPI. A body sent as JSON that is not JSON at all
  is 400 `malformed_json` too, on every route that authenticates its caller, one that reads no
  body included. Both are checked by `ParsedBodyRoute` (every route of the application is one,
  including those added later), once the caller is authenticated and its role is the route's
  (`strict_body`): a body is parsed for a key allowed there, never for anyone (a merchant key's
  1 MiB body on an admin route cost 28–68 ms a 403, helper-113). Unauthenticated, a 1 MiB body
  of nested arrays cost the worker 75–220 ms a parse, also from an address over its failure
  limit (helper-106). The
  parse is kept in the request's scope (`PARSED_BODY`), and FastAPI's handler takes it instead
  of parsing the body again (`parsed_body`; a batch of 1,000 is ~700 KB, ~5 ms a parse); the
  single post's short way does the same in the same order. A route that does not declare the
  key's authentication (`api.deps.principal`: probes, the directory, whose dependency may
  authenticate inside, the pages, which read forms) parses no JSON: a body sent as JSON is 415
  `unsupported_media_type`, unparsed, so a route added without it cannot parse for anyone.
- A request Content-Encoding other than identity (`content_coding`, in the middleware, every
  route), or a body not sent as JSON to a route that reads a JSON body (`ParsedBodyRoute`): 415
  `unsupported_media_type`, before authentication (it was taken as plain JSON, or answered 422
  about fields it never had).
- A query parameter a `/v1/` route does not declare, or one given more than once: 422
  `invalid_request` (`ParsedBodyRoute.check_query`), before anything is done: FastAPI would
  ignore the first, Starlette keep the last value of the second.
- Path ids are `PathId` (the id pattern of SPEC §2, matched whole); cursors are at most
  `limits.CURSOR_CHARS_MAX` characters (the longest the API makes) and decode to a sequence of
  at most `limits.SEQUENCE_MAX` or to an id; integer query parameters are `PageLimit`, `QueryVersion` and
  `QuerySequence` (decimal digits only: `decimal_digits`; bounded by `limits.PAGE_LIMIT_MAX`,
  `limits.VERSION_MAX` and `limits.SEQUENCE_MAX`), booleans `QueryBool` (`true` or `false`);
  the other query parameters are typed where the route declares them (`engine.model.Instant`).
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import functools
import json
import re
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from annotated_types import Ge, Le
from fastapi import Path, Query, Request, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BeforeValidator
from starlette.types import Message, Receive, Scope, Send

from engine import limits, strict_json
from engine.errors import EngineError
from engine.timeutil import to_us

if TYPE_CHECKING:
    from engine.settings import Settings

SINGLE_HEADERS = (b"authorization", b"idempotency-key", b"content-type")

# A path id: the id pattern, whole (no trailing newline, no NUL byte), so nothing else
# reaches a query. FastAPI answers a mismatch 422 `invalid_request` after authentication.
PathId = Annotated[str, Path(pattern=limits.ID_PATTERN)]
Cursor = Annotated[str | None, Query(max_length=limits.CURSOR_CHARS_MAX)]

_SEQUENCE = re.compile(r"[0-9]{1,19}")
_ID = re.compile(limits.ID_PATTERN)
_DIGITS = re.compile(r"[0-9]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_T = TypeVar("_T")


def decimal_digits(value: _T) -> _T:
    """A number a query string or a form carries, taken only as decimal digits (ASCII, no sign,
    no spaces): pydantic's lax integer reads ' 1', '+1', '1.0' and '1_0' (as 10), and Python's
    `int` reads other scripts' digits ('١'), none of which a client means as written. Refused:
    `ValueError` (a query parameter's is 422 `invalid_request`, as any bad parameter)."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("must be written in decimal digits only")
    return value


# Integer query parameters: decimal digits, within bounds. The bounds come before the digits
# check, so they constrain the integer itself and the document states them as JSON Schema's
# `minimum` and `maximum`; given after it (`Query(ge=, le=)`), pydantic wrote them as `ge` and
# `le`, words JSON Schema does not know, and a client generated from the document had no bounds.
PageLimit = Annotated[int, Ge(1), Le(limits.PAGE_LIMIT_MAX), BeforeValidator(decimal_digits)]
QueryVersion = Annotated[int, Ge(1), Le(limits.VERSION_MAX), BeforeValidator(decimal_digits)]
QuerySequence = Annotated[int, Ge(0), Le(limits.SEQUENCE_MAX), BeforeValidator(decimal_digits)]


def true_or_false(value: _T) -> _T:
    """A boolean a query string carries, spelled `true` or `false` as JSON spells it: pydantic's
    lax boolean also reads 'yes', 'on', '1', 't', 'y' and their opposites, in any case."""
    if isinstance(value, str) and value not in ("true", "false"):
        raise ValueError("must be true or false")
    return value


QueryBool = Annotated[bool, BeforeValidator(true_or_false)]


def window(from_: dt.datetime | None, to: dt.datetime | None) -> tuple[int | None, int | None]:
    """A query's `from` (included) and `to` (not) as microseconds, either open (None). A `to` not
    after `from` is 422 `invalid_request`, as a simulation's window is: swapped bounds would
    answer an empty page, which a client summing it reads as nothing there."""
    start, end = (None if at is None else to_us(at) for at in (from_, to))
    if start is not None and end is not None and end <= start:
        error = {"loc": ["query", "to"], "msg": "must be after from", "type": "value_error"}
        raise EngineError("invalid_request", "to must be after from", errors=[error])
    return start, end


def calendar_date(text: str) -> dt.date:
    """A date as a page's form or link carries it: `YYYY-MM-DD` only (`date.fromisoformat` also
    reads `20261208` and the week date `2026-W50-1`). `ValueError` otherwise."""
    if not _DATE.fullmatch(text):
        raise ValueError("a date is YYYY-MM-DD")
    return dt.date.fromisoformat(text)


def duplicated_header(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The name of a once-only header that appears more than once, else None."""
    seen: set[bytes] = set()
    for name, _ in headers:
        name = name.lower()
        if name in SINGLE_HEADERS:
            if name in seen:
                return name.decode("ascii")
            seen.add(name)
    return None


def content_coding(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The content codings a request's Content-Encoding names other than identity (RFC 9110
    §8.4), as sent, else None: the engine decodes none (415 `unsupported_media_type`)."""
    for name, value in headers:
        if name.lower() == b"content-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if any(c not in (b"", b"identity") for c in codings):
                return value.decode("latin-1")[:QUERY_NAME_SHOWN]
    return None


@functools.lru_cache(maxsize=256)  # a handful of distinct values in practice; parsing one costs ~20 µs
def reads_as_json(content_type: str | None) -> bool:
    """Whether FastAPI's handler reads a body of this Content-Type as JSON: its own test (the
    media type as `email.message` parses it, whitespace stripped as Python strips it, `application/json`
    or `application/*+json`), so the middleware and the transaction route's short way agree with it."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


NOT_JSON = object()  # `parse_unique`'s answer for a body that is not JSON
DUPLICATE_KEY = object()  # `parse_unique`'s answer for JSON with an object holding a key twice
# Scope key: whether the request came with a body (the middleware read it whole).
BODY_SENT = "setapay.body_sent"
# Scope key: (the body, its JSON), kept by `strict_body` and taken out as the route's handler starts:
# by FastAPI's reading of a JSON body (`parsed_body`), else dropped (`ParsedBodyRoute`), so a
# request holds no parse (up to ~24 MiB of objects for a 1 MiB body) while its route works.
PARSED_BODY = "setapay.parsed_body"


def parse_unique(body: bytes) -> Any:
    """`body` read as JSON by `json.loads` (the same value), else `DUPLICATE_KEY` when an object
    has a key twice (compared after unescaping), else `NOT_JSON` (not this check's business)."""
    try:
        return strict_json.loads(body)
    except strict_json.DuplicateKey:  # first: it is a ValueError too
        return DUPLICATE_KEY
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError is a ValueError)
        return NOT_JSON


def strict_body(scope: MutableMapping[str, Any], body: bytes, content_type: str | None) -> Any:
    """The JSON of `body`, a request's body sent as JSON (`content_type`, None when it named none),
    parsed by `parse_unique` once and kept in the scope (`PARSED_BODY`) for the route's handler;
    `NOT_JSON` for a body that is not JSON and named no Content-Type (no route reads it as
    JSON). 400 `malformed_json` for an object with a key twice, or a body sent as JSON that is
    not JSON. Called once the caller is authenticated (`ParsedBodyRoute`, the single post's short
    way)."""
    kept = scope.get(PARSED_BODY)
    parsed = kept[1] if kept is not None and kept[0] == body else parse_unique(body)
    if parsed is DUPLICATE_KEY:
        raise EngineError("malformed_json", "an object in the body has a key twice")
    if parsed is NOT_JSON:
        if content_type is not None:
            raise EngineError("malformed_json")
        return NOT_JSON
    scope[PARSED_BODY] = (body, parsed)
    return parsed


def replayed_body(body: bytes, then: Receive) -> Receive:
    """A `receive` that hands out `body`, whole, then defers to `then` (a disconnect, say): the
    body a middleware or a route read, for the application behind it to read again."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return pending.pop() if pending else await then()

    return receive


def parsed_body(scope: MutableMapping[str, Any], body: bytes) -> Any:
    """`json.loads(body)`, from what `strict_body` parsed when it was this very body (an object's
    keys all distinct, so the same value), which it takes out of the scope; else parsed here by
    `strict_body` (400 `malformed_json` for a key twice), and `ValueError` for a body that is not
    JSON, as `json.loads` raises it."""
    kept = scope.pop(PARSED_BODY, None)  # taken once: the request holds no second copy after
    if kept is not None and kept[0] == body and kept[1] is not NOT_JSON and kept[1] is not DUPLICATE_KEY:
        return kept[1]
    if strict_body(scope, body, None) is NOT_JSON:
        return json.loads(body.decode("utf-8"))  # raises as FastAPI expects of a body that is not JSON
    return scope.pop(PARSED_BODY)[1]


def dependants(root: Dependant) -> Iterator[Dependant]:
    """`root` and every dependency under it, at any depth (FastAPI's tree of a route)."""
    pending = [root]
    while pending:
        dependant = pending.pop()
        yield dependant
        pending.extend(dependant.dependencies)


def roles_of(check: Any) -> frozenset[str] | None:
    """The roles a dependency admits when it is a role check (`api.deps.role` marks them), else None."""
    return getattr(check, "roles", None)


class _ParsedBodyRequest(Request):
    """A request whose JSON is `strict_body`'s parse of its body (`parsed_body`)."""

    async def json(self) -> Any:
        if not hasattr(self, "_parsed"):
            self._parsed = parsed_body(self.scope, await self.body())
        return self._parsed


QUERY_NAME_SHOWN = 64  # the longest unknown query parameter name an answer quotes whole


class ParsedBodyRoute(APIRoute):
    """A route whose body sent as JSON is parsed once its caller is authenticated, strictly
    (`strict_body`), and read by FastAPI's handler as parsed, not a second time: FastAPI's
    documented way, a `Request` subclass handed to the handler. `api.app._include` builds every
    route of the application as one (or a subclass)."""

    @functools.cached_property
    def authenticates(self) -> bool:
        """Whether the route authenticates its caller by key (`api.deps.principal` among its
        dependencies): its body sent as JSON is parsed once the key holds."""
        from api.deps import principal  # api.deps builds on the modules that build on this one

        return any(d.call is principal for d in dependants(self.dependant))

    @functools.cached_property
    def role_checks(self) -> tuple[Any, ...]:
        """The route's role checks (`api.deps.role`, one a route today): run before its body is
        parsed, so a key of another role (a shop's merchant key on an admin route) has no body
        parsed."""
        return tuple(d.call for d in dependants(self.dependant) if roles_of(d.call) is not None)

    @functools.cached_property
    def query_names(self) -> frozenset[str] | None:
        """The query parameters the route declares (its dependencies' included, by their aliases),
        None for a route outside `/v1/` (the pages read theirs from the request, probes and
        `/metrics` take what their clients add)."""
        if not self.path.startswith("/v1/"):
            return None
        return frozenset(field.alias for d in dependants(self.dependant) for field in d.query_params)

    def check_query(self, scope: Scope) -> None:
        """Refuse (422 `invalid_request`), before anything is done, authentication included, a
        query parameter the route does not declare: FastAPI ignores it, so a misspelt filter
        (`until` for `to`) would answer everything, and a POST would act on what it never read;
        and one given more than once: Starlette keeps the last value, where a proxy or a log that
        reads the first sees another request (no route takes a list: `types` is one
        comma-separated value). Names as Starlette decodes them."""
        names = self.query_names
        query_string = scope.get("query_string", b"")
        if names is None or not query_string:
            return
        seen: set[str] = set()
        for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name not in names:
                # Named back at most `QUERY_NAME_SHOWN` characters long: this answer comes before
                # authentication, and should not echo a client's 60,000-character name twice.
                shown = name if len(name) <= QUERY_NAME_SHOWN else name[:QUERY_NAME_SHOWN] + "…"
                error = {"loc": ["query", shown], "msg": "not a parameter of this route", "type": "unknown"}
                raise EngineError("invalid_request", f"{shown} is not a query parameter of this route", errors=[error])
            if name in seen:
                error = {"loc": ["query", name], "msg": "given more than once", "type": "duplicated"}
                raise EngineError("invalid_request", f"query parameter {name} was given more than once", errors=[error])
            seen.add(name)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in (self.methods or ()):  # else the router's partial match: FastAPI's 405
            self.check_query(scope)
        await super().handle(scope, receive, send)

    def get_route_handler(self) -> Any:
        handler = super().get_route_handler()
        # FastAPI reads a body as JSON when the route declares one that is not a form, and the
        # request's Content-Type says JSON (`reads_as_json`, its own test); any other request
        # lets its parse go before the route's work (a page waiting for a thread, a download
        # streaming), not after its answer.
        body = self.body_field
        reads_json = body is not None and not isinstance(body.field_info, params.Form)

        async def parsed_once(request: Request) -> Any:
            content_type = request.headers.get("content-type")
            sent, receive = request.scope.get(BODY_SENT), request.receive
            if sent is None:  # no `api.middleware.BodyLimit` in front (an app mounted elsewhere)
                raw = await request.body()  # still parsed only after the key and its role
                sent, receive = bool(raw), replayed_body(raw, request.receive)
            if reads_json and sent and not reads_as_json(content_type):
                # A body the route would not read as JSON (text/plain, a form, none named): not
                # a 422 about its fields, which it never had, but the media type it takes.
                raise EngineError("unsupported_media_type", "this route takes a body sent as application/json")
            if sent and (content_type is None or reads_as_json(content_type)):
                if self.authenticates:
                    from api.deps import principal

                    caller = await principal(request)  # 401 or 429 before the body is parsed (kept for the route)
                    for role_check in self.role_checks:
                        await role_check(caller)  # 403 before the body is parsed
                else:  # no one's key (or one this route checks itself): no parse for anyone
                    if content_type is not None:
                        raise EngineError("unsupported_media_type", "this route reads no JSON body")
                    return await handler(_ParsedBodyRequest(request.scope, receive))
                raw = await request.body()
                strict_body(request.scope, raw, content_type)  # 400 `malformed_json`, on every such route
                receive = replayed_body(raw, request.receive)
                if not (reads_json and reads_as_json(content_type)):
                    request.scope.pop(PARSED_BODY, None)  # not read: not held while the route works
            return await handler(_ParsedBodyRequest(request.scope, receive))

        return parsed_once


def encode_cursor(prefix: str, position: int | str) -> str:
    """A page cursor: unpadded base64url of `prefix:position`, the position a sequence or an id.
    The longest one can be is `limits.CURSOR_CHARS_MAX` characters, what `Cursor` accepts."""
    assert len(prefix) + 1 <= limits.CURSOR_PREFIX_CHARS_MAX, prefix
    return base64.urlsafe_b64encode(f"{prefix}:{position}".encode()).decode().rstrip("=")


def _position(prefix: str, cursor: str) -> str:
    """The text after `prefix:` in `cursor`; `ValueError` unless the cursor is base64 of that."""
    text_value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    found, colon, position = text_value.partition(":")
    if found != prefix or not colon:
        raise ValueError(cursor)
    return position


def decode_cursor(prefix: str, cursor: str | None) -> int:
    """The sequence a cursor carries (0 without one); 422 unless it is ours (spelled as
    `encode_cursor` spells it: no leading zero, no padding, no other base64 for the same text)
    and at most SEQUENCE_MAX."""
    if cursor is None:
        return 0
    try:
        number = _position(prefix, cursor)
        if not _SEQUENCE.fullmatch(number) or int(number) > limits.SEQUENCE_MAX:
            raise ValueError(cursor)
        if encode_cursor(prefix, int(number)) != cursor:
            raise ValueError(cursor)
        return int(number)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise EngineError("invalid_request", "cursor is not valid") from None


def decode_id_cursor(prefix: str, cursor: str | None) -> str:
    """The id a cursor carries ("" without one, before every id); 422 unless it is ours (an id of
    the id pattern, spelled as `encode_cursor` spells it: no padding, nothing the decoder drops)."""
    if cursor is None:
        return ""
    try:
        found = _position(prefix, cursor)
        if not _ID.fullmatch(found) or encode_cursor(prefix, found) != cursor:
            raise ValueError(cursor)
        return found
    except ValueError:
        raise EngineError("invalid_request", "cursor is not valid") from None


def check_occurred_at(settings: Settings, occurred_at: dt.datetime, now: int) -> None:
    """A purchase's or refund's `occurred_at` lies within the settings' window around the engine's
    clock `now` (posted, and quoted: a quote declines as posting would), else 422."""
    at = to_us(occurred_at)
    if (
        at > now + settings.occurred_at_max_future_s * 1_000_000
        or at < now - settings.occurred_at_max_past_days * 86_400_000_000
    ):
        raise EngineError(
            "occurred_at_out_of_range",
            f"occurred_at must be within {settings.occurred_at_max_future_s} s ahead and "
            f"{settings.occurred_at_max_past_days} days behind the engine's clock",
        )
