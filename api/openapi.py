"""What /openapi.json says beyond the routes' own types (SPEC §6, §9): a truthful contract.

- **Security**: `BEARER` is the `bearerAuth` HTTP bearer scheme. `principal` (api/deps.py)
  takes it as a `Security` parameter that never answers by itself (`auto_error=False`): the
  dependency still reads the header and answers 401/429 problem+json on its own, so the scheme
  only documents, on every route reached through `role(...)`, i.e. all but /healthz, /readyz and /metrics.
- **Headers**: `terminal_headers()` documents the RFC 9421 request signature headers
  (`Signature`, `Signature-Input`, `Content-Digest`) of the routes a terminal key calls, optional
  (a terminal without a registered public key is bearer-only), and `idempotency_key()` the
  `Idempotency-Key` header, required where SPEC §6 requires it. Both go in `openapi_extra`, so
  FastAPI does not check them itself: a missing key stays our 400 `idempotency_key_missing`
  (not FastAPI's 422).
- **Errors**: `problems(*codes)` builds a route's `responses=` from the error codes it can answer
  (engine/errors.py `CATALOG` gives each its status), grouped by status, each
  `application/problem+json` with the `Problem` schema, whose `code` enum is the whole catalog.
  `COMMON` (what the middleware answers on any route), `AUTHENTICATED` and `TERMINAL` are the
  codes every route of that kind shares; a route adds its own once. A route with a path id
  documents `not_found` even when its handler never raises it: an id holding an encoded `/`
  (`%2F`) matches no route, which Starlette answers 404 `not_found`.
- `install(app)` puts `Problem` into the document's components.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from engine import limits
from engine.errors import CATALOG, problem

PROBLEM_JSON = "application/problem+json"
PROBLEM_REF = "#/components/schemas/Problem"

BEARER = HTTPBearer(
    scheme_name="bearerAuth",
    bearerFormat="API key",
    description="`Authorization: Bearer <api key>`. Keys carry a role (terminal, merchant, app, finance, "
    "admin) and never reach data outside their scope (403). A missing, unknown, revoked or "
    "expired key is 401 `unauthenticated` (SPEC §6, §9.3).",
    auto_error=False,
)

ErrorCodeName = Literal[tuple(CATALOG)]  # type: ignore[valid-type]


class Problem(BaseModel):
    """An RFC 9457 problem document with the engine's stable `code` (engine/errors.py `CATALOG`)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(description="https://setapay.city.setagaya.example/problems/<code>, or about:blank")
    title: str = Field(description="The catalog's title of the code")
    status: int = Field(description="The HTTP status, the catalog's for the code")
    code: ErrorCodeName = Field(description="The stable error code")  # type: ignore[valid-type]
    detail: str | None = Field(None, description="What went wrong with this request")
    errors: list[dict[str, Any]] | None = Field(
        None, description="`invalid_request`: the fields that failed, each with loc, msg and type"
    )


# What the middleware (api/middleware.py BodyLimit, api/strict.py) answers on any route: a body
# with a content coding is `unsupported_media_type` there, as is one not sent as JSON to a route
# that reads JSON (`api.strict.ParsedBodyRoute`).
COMMON = ("header_duplicated", "malformed_json", "body_too_large", "unsupported_media_type")
# ... and what authentication and authorization answer on every route behind a key (every `/v1/`
# route), with the refusal of a query parameter it does not declare or that is given twice
# (`api.strict.ParsedBodyRoute.check_query`).
AUTHENTICATED = (*COMMON, "unauthenticated", "forbidden", "rate_limited", "service_unavailable", "invalid_request")
# ... and a terminal key's request signature (SPEC §9.2).
TERMINAL = (*AUTHENTICATED, "signature_required", "signature_invalid", "signature_expired", "signature_replayed")
IDEMPOTENCY = ("idempotency_key_missing", "idempotency_key_invalid", "idempotency_key_reused", "request_in_progress")

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Unprocessable",
    429: "Too many requests",
    503: "Service unavailable",
}


def problems(*codes: str | tuple[str, ...]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that can answer these error codes (tuples are flattened)."""
    flat: list[str] = []
    for c in codes:
        flat.extend(c if isinstance(c, tuple) else (c,))
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in flat:
        if code not in CATALOG:
            raise KeyError(f"{code} is not in engine/errors.py CATALOG")
        if code not in by_status[CATALOG[code].status]:
            by_status[CATALOG[code].status].append(code)
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        listed = by_status[status]
        responses[status] = {
            "description": f"{_DESCRIPTIONS.get(status, 'Error')}: " + ", ".join(f"`{c}`" for c in listed),
            "content": {
                PROBLEM_JSON: {
                    "schema": {"$ref": PROBLEM_REF},
                    "examples": {c: {"summary": CATALOG[c].title, "value": problem(status, c)} for c in listed},
                }
            },
        }
        if status == 429:
            responses[status]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
    return responses


REPLAYED_HEADER = {
    "Idempotent-Replayed": {
        "description": "`true` when this is the remembered answer of an earlier request with the same key and body",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def remembered(responses: dict[int | str, dict[str, Any]], *codes: str) -> dict[int | str, dict[str, Any]]:
    """`responses` with the `Idempotent-Replayed` header documented on the statuses of these
    remembered declines (SPEC §6: a retry gets the original answer, marked replayed)."""
    for code in codes:
        responses[CATALOG[code].status].setdefault("headers", {}).update(REPLAYED_HEADER)
    return responses


def idempotency_key(required: bool = True) -> dict[str, Any]:
    missing = (
        "Missing: 400 `idempotency_key_missing`."
        if required
        else "Optional: without it, every request makes another (its secret shown once, to that answer)."
    )
    return {
        "name": "Idempotency-Key",
        "in": "header",
        "required": required,
        "description": "The request's idempotency key, scoped to the caller; a retry with the same key and "
        f"body gets the original answer with `Idempotent-Replayed: true` (SPEC §6). {missing}",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": limits.IDEMPOTENCY_KEY_LENGTH_MAX,
            "pattern": "^[\\x20-\\x7e]+$",
        },
    }


SIGNATURE_HEADERS = [
    {
        "name": "Signature-Input",
        "in": "header",
        "required": False,
        "description": 'RFC 9421 signature input, label `sig1`: covers "@method", "@path", "@query" when '
        'there is a query, "content-digest" when there is a body and "idempotency-key" when '
        "sent; parameters created, keyid (the terminal id), nonce (16-64 characters), "
        'alg="ed25519". Required once the terminal has a registered public key (SPEC §9.2).',
        "schema": {"type": "string"},
    },
    {
        "name": "Signature",
        "in": "header",
        "required": False,
        "description": "RFC 9421 signature `sig1` (Ed25519) over the components Signature-Input names.",
        "schema": {"type": "string"},
    },
    {
        "name": "Content-Digest",
        "in": "header",
        "required": False,
        "description": "RFC 9530 digest of the body (`sha-256`), covered by a signed request that has a body.",
        "schema": {"type": "string"},
    },
]


def terminal_headers(idempotency: bool = False) -> dict[str, Any]:
    """`openapi_extra` of a route a terminal key calls (and its Idempotency-Key, when required)."""
    return {"parameters": ([idempotency_key()] if idempotency else []) + [dict(p) for p in SIGNATURE_HEADERS]}


def idempotent(required: bool = True) -> dict[str, Any]:
    """`openapi_extra` of a non-terminal route that takes an Idempotency-Key (required, or not)."""
    return {"parameters": [idempotency_key(required)]}


def install(app: FastAPI) -> None:
    """Add `Problem` to the document's components (the routes refer to it by `$ref`)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(problem_schema.pop("$defs", {}))
            schemas["Problem"] = problem_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
