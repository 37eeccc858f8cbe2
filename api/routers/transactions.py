"""Terminals post purchases and refunds, one at a time or in batches, and read them back (SPEC §6).

`POST /v1/transactions` checks the request (the terminal is the caller's, `occurred_at`
within the clock window, the payment app's receipt: SPEC §9.1), replays an answer
remembered in Redis when there is one, claims the idempotency scope in this process
and hands the submission to the group committer. A retry of an answered request that
no longer passes the checks gets the remembered answer (SPEC §6). The batch route
answers each item for itself, in order.
"""

import hashlib
from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError
from starlette.types import Receive, Scope, Send

from api import responses, strict
from api.deps import (
    ConfigDep,
    DatabaseDep,
    Services,
    ServicesDep,
    Terminal,
    merchant_scope,
    principal,
    request_services,
    role,
    terminal_only,
)
from api.errors import guarded, json_safe
from api.futures import awaited
from api.idempotency import check_idempotency_key, render
from api.openapi import IDEMPOTENCY, TERMINAL, problems, remembered, terminal_headers
from api.strict import ParsedBodyRoute, PathId, reads_as_json
from engine import limits, receipts
from engine.errors import EngineError, decline
from engine.model import Purchase, Record, Refund, Transaction
from engine.receipts import Receipt
from engine.store import db, queries
from engine.store.apps import OpenedSecrets
from engine.store.config import Principal
from engine.store.ledger import Result, Submission

router = APIRouter()

_transaction = TypeAdapter(Transaction)
_transactions = TypeAdapter(list[Transaction])


class BatchRequest(Record):
    # Items are checked one by one in post_batch: a bad item answers for itself (SPEC §2). Their
    # number too, there: past the limit is 422 `batch_too_large`, not a generic `invalid_request`.
    transactions: Annotated[
        list[Any], Field(min_length=1, json_schema_extra={"maxItems": limits.BATCH_TRANSACTIONS_MAX})
    ]


def _terminal_of(p: Principal) -> str:
    """The terminal of a terminal key (every one names its terminal)."""
    assert p.terminal_id is not None, "a terminal key names its terminal"
    return p.terminal_id


def _canonical(body: Purchase | Refund) -> tuple[str, str]:
    """The body's canonical JSON and its SHA-256, the request hash an Idempotency-Key is held to."""
    canonical = body.model_dump_json()
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()


def _checked(
    services: Services,
    p: Principal,
    body: Purchase | Refund,
    opened_secrets: OpenedSecrets | None = None,
    now_us: int | None = None,
) -> Receipt:
    """The checks made before the ledger (else an `EngineError`); the verified receipt.
    `opened_secrets`: the apps' secrets when the caller holds them (`Apps.current`, `Apps.load`);
    `now_us`: the engine's clock when the request came (a batch's items are checked at one instant)."""
    now = services.clock.now_us() if now_us is None else now_us
    # The terminal's merchant is checked by the ledger under its lock, against the catalog.
    if body.type == "purchase" and body.terminal_id != p.terminal_id:
        raise EngineError("forbidden", "a terminal key posts only for its own terminal")
    strict.check_occurred_at(services.settings, body.occurred_at, now)
    # The payment app's receipt vouches for wallet, merchant, amount and points (SPEC §9.1).
    return receipts.verify(
        body.receipt,
        body,
        lambda app_id: services.apps.live_secrets(app_id, opened_secrets, now),
        now,
    )


def _replay(services: Services, p: Principal, key: str, request_hash: str, refused: EngineError) -> Result:
    """The remembered answer when a retry of an answered request no longer passes the checks (its
    app revoked or rotated out, its occurred_at now too old): a retry with the same key and body
    gets the original answer (SPEC §6); else the refusal stands. A database read: the single-post
    route runs it in a worker thread."""
    replay = guarded(lambda: services.ledger.remembered_answer(_terminal_of(p), key, request_hash))
    if replay is None:
        raise refused
    return replay


def _sent(
    p: Principal, key: str, request_hash: str, body: Purchase | Refund, canonical: str, receipt: Receipt | None
) -> Submission:
    """What the ledger posts of a checked request: with the key that sent it and the key's expiry,
    checked again when it is posted (a key revoked or expired meanwhile posts nothing)."""
    return Submission(
        _terminal_of(p),
        key,
        request_hash,
        body,
        canonical,
        receipt=receipt,
        key_id=p.key_id,
        key_expires_at_us=p.expires_at_us,
    )


def _submission(
    services: Services, p: Principal, key: str, body: Purchase | Refund, opened: OpenedSecrets | None, now_us: int
) -> Submission | Result:
    """The checked submission, or the remembered answer of a retry that no longer passes the checks."""
    canonical, request_hash = _canonical(body)
    try:
        receipt = _checked(services, p, body, opened, now_us)
    except EngineError as refused:
        return _replay(services, p, key, request_hash, refused)
    return _sent(p, key, request_hash, body, canonical, receipt)


class SinglePostRoute(ParsedBodyRoute):
    """The route of `POST /v1/transactions`, with a short way through FastAPI for the request
    terminals send thousands of times a second (issue 11: FastAPI's dependency resolution was
    16% of the server's interpreter, and its per-request wrappers (`request_response`: two
    `AsyncExitStack`s and a second exception layer) much of the rest, docs/BENCHMARKS.md).

    Once the router has matched the route (its path and its method: the router hands a route
    requests of other methods too, FastAPI's 405) and its query is checked as every `/v1/` route's
    (`ParsedBodyRoute.check_query`: none is declared), `handle` takes a request whose body FastAPI
    would read as JSON (by its Content-Type, the same test): it is authenticated
    (`api.deps.principal`; a body is parsed for a key only, `strict.ParsedBodyRoute`), and once it
    parses (`strict.strict_body`) and validates as a `Transaction`, refused unless it is a
    terminal's (`api.deps.terminal_only`) and handed to `post_transaction`: what FastAPI's own
    handler does with it, in the same order, without resolving the dependencies per request. A
    refusal raised on the way is answered by the application's exception handlers, as FastAPI's
    route would have it answered. Any other request goes to FastAPI's handler with its body as it
    came: one with no JSON Content-Type or an empty body before anything was counted or looked up,
    one whose body does not validate with its caller authenticated and its body parsed (both kept
    for the handler), so its answers (FastAPI's validation details, a 401 before a 422) are
    FastAPI's own. So do all requests while the application's `dependency_overrides` hold anything,
    and the route may declare no dependencies of its own (asserted), which the short way would not
    run; nor may it be included with dependencies (`api.app._include` adds each route to the
    application itself, as declared). `tests/api/test_single_post_route.py` holds the two ways equal
    (`SHORT_WAY = False` sends everything through FastAPI's handler)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The short way resolves no dependency: the route may declare none of its own.
        assert not self.dependencies, "SinglePostRoute takes no route dependencies"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in (self.methods or ()):
            self.check_query(scope)  # as `ParsedBodyRoute.handle`: before anything is done
        if (
            not SHORT_WAY
            or scope["method"] not in (self.methods or ())  # the router's partial match: FastAPI's 405
            or scope["app"].dependency_overrides  # tests' overrides: only FastAPI's handler applies them
        ):
            return await super().handle(scope, receive, send)
        request = Request(scope, receive, send)
        content_type = request.headers.get("content-type")
        if not reads_as_json(content_type):
            return await super().handle(scope, receive, send)
        try:
            raw = await request.body()
        except Exception:  # noqa: BLE001 - the client gone: FastAPI's handler meets the same failure and answers it
            return await super().handle(scope, receive, send)
        if raw:
            p = await terminal_only(await principal(request))  # 401, 429, 403 before the body is parsed
            body = _well_formed(scope, raw, content_type)  # 400 `malformed_json` when it is not JSON
            if body is not None:
                key = request.headers.get("idempotency-key")
                response = await post_transaction(body, p, request_services(request), key)
                return await response(scope, receive, send)
        # FastAPI's handler, with the caller known (`api.deps.principal` keeps it) and the body parsed
        return await super().handle(scope, strict.replayed_body(raw, receive), send)


SHORT_WAY = True  # see SinglePostRoute
COMMIT_WAIT_S = 60  # a request's wait for its group's commit; then 503, and the terminal's retry is a replay


def _well_formed(scope: Scope, raw: bytes, content_type: str | None) -> Transaction | None:
    """The body `raw`, which FastAPI reads as JSON (its own test, `reads_as_json`), as FastAPI would
    validate it for `post_transaction` (parsed once, strictly: `strict.strict_body`), when it
    validates; else None, its parse kept for FastAPI's handler, which answers it with its own
    details. 400 `malformed_json` for a body that is not JSON or has a key twice."""
    parsed = strict.strict_body(scope, raw, content_type)
    try:
        body = _transaction.validate_python(parsed, from_attributes=True)
    except Exception:  # noqa: BLE001 - not well-formed: FastAPI's handler answers it, with its own details
        return None
    scope.pop(strict.PARSED_BODY, None)  # read: not held while the route works
    return body


async def post_transaction(
    body: Annotated[Transaction, Body()],
    p: Terminal,
    services: ServicesDep,
    # Documented as required in openapi_extra; checked by `check_idempotency_key` (400, not FastAPI's 422).
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
) -> Response:
    key = check_idempotency_key(idempotency_key)
    terminal_id = _terminal_of(p)
    opened = services.apps.current()
    if opened is None and body.receipt is not None:
        # Read in a worker thread, not on the event loop (the cache's thread keeps them fresh
        # while receipts come in: only the first and those after a failed refresh read here).
        opened = await anyio.to_thread.run_sync(services.apps.load)
    canonical, request_hash = _canonical(body)
    try:
        receipt = _checked(services, p, body, opened)
    except EngineError as refused:
        # Refused requests may come fast (a bad receipt resent): their look-up of a remembered
        # answer must not hold the event loop, and every other terminal's request with it.
        return render(await anyio.to_thread.run_sync(_replay, services, p, key, request_hash, refused))
    submission = _sent(p, key, request_hash, body, canonical, receipt)
    answers = services.answers
    if answers is not None:
        cached = await answers.get(terminal_id, key)
        if cached is not None:
            cached_hash, status, answer = cached
            if cached_hash != request_hash:
                return render(Result(*decline("idempotency_key_reused")))
            return render(Result(status, answer, replayed=True))
    posted_under = answers.ledger_id if answers is not None else None  # before the commit: `AnswerCache.put`
    with services.in_flight.claimed([(terminal_id, key)]) as fresh:
        if not fresh:
            raise EngineError("request_in_progress")
        try:
            result = await awaited(services.committer.enqueue(submission), COMMIT_WAIT_S)
        except db.UNREACHABLE + (TimeoutError,) as exc:
            raise EngineError("service_unavailable", type(exc).__name__) from None
    # Cache the key's own answer (accepted or declined), never a refusal of a reused key.
    if (
        answers is not None
        and result.remember
        and (result.status < 400 or result.body.get("code") != "idempotency_key_reused")
    ):
        await answers.put(terminal_id, key, submission.request_hash, result.status, result.body_json, posted_under)
    return render(result)


# The ledger's declines: remembered under the idempotency key, answered again to a retry.
_DECLINES = (
    "receipt_already_used",
    "unknown_merchant",
    "original_not_found",
    "refund_merchant_mismatch",
    "refund_exceeds_original",
    "insufficient_points",
)

router.add_api_route(
    "/v1/transactions",
    post_transaction,
    methods=["POST"],
    route_class_override=SinglePostRoute,
    status_code=201,
    openapi_extra=terminal_headers(idempotency=True),
    responses={
        201: {
            "model": responses.TransactionAnswer,
            "headers": responses.REPLAYED_HEADER,
            "description": "Accepted; or, with `Idempotent-Replayed: true`, the earlier answer",
        },
        **remembered(
            problems(
                TERMINAL,
                IDEMPOTENCY,
                "invalid_request",
                "occurred_at_out_of_range",
                "receipt_required",
                "receipt_invalid",
                "receipt_mismatch",
                "receipt_in_use",
                "wallet_in_use",
                *_DECLINES,
            ),
            *_DECLINES,
        ),
    },
)


@router.post(
    "/v1/transactions/batch",
    status_code=200,
    openapi_extra=terminal_headers(),
    responses={200: {"model": responses.BatchAnswer}, **problems(TERMINAL, "invalid_request", "batch_too_large")},
    response_model=None,
)
def post_batch(body: Annotated[BatchRequest, Body()], p: Terminal, services: ServicesDep) -> Response:
    """Up to 1,000 transactions, each with its own `idempotency_key`, answered in order; more is
    422 `batch_too_large`, and none of them is posted."""
    if len(body.transactions) > limits.BATCH_TRANSACTIONS_MAX:
        error = {"loc": ["body", "transactions"], "msg": "too many transactions", "type": "too_long"}
        raise EngineError(
            "batch_too_large",
            f"a batch holds at most {limits.BATCH_TRANSACTIONS_MAX} transactions, not {len(body.transactions)}",
            errors=[error],
        )
    terminal_id = _terminal_of(p)
    answers: list[Result | None] = [None] * len(body.transactions)
    checked: list[tuple[int, str, dict[str, Any]]] = []  # objects with a well-formed key
    for i, item in enumerate(body.transactions):
        try:
            if not isinstance(item, dict):  # answers for itself; the other items proceed
                raise EngineError(
                    "invalid_request",
                    "a batch item is a JSON object",
                    errors=[{"loc": ["body", "transactions", str(i)], "msg": "must be an object", "type": "dict_type"}],
                )
            fields = dict(item)
            checked.append((i, check_idempotency_key(fields.pop("idempotency_key", None)), fields))
        except EngineError as exc:
            answers[i] = Result(exc.status, exc.problem())
    # One validation call for the whole body; should an item be bad, each is validated alone
    # so that each answers for itself, as a single post would.
    try:
        records: list[Transaction | None] = list(_transactions.validate_python([f for _, _, f in checked]))
    except ValidationError:
        records = [None] * len(checked)
    indexed: list[tuple[int, Submission]] = []
    # Every item is checked at the instant the batch came, against the apps' secrets as the cache
    # holds them then (when it holds none fresh, each item's check reads them, as a single post's).
    now = services.clock.now_us()
    opened = services.apps.current()
    for (i, key, fields), record in zip(checked, records):
        try:
            submission = _submission(services, p, key, record or _transaction.validate_python(fields), opened, now)
            if isinstance(submission, Result):
                answers[i] = submission
            else:
                indexed.append((i, submission))
        except EngineError as exc:
            answers[i] = Result(exc.status, exc.problem())
        except ValidationError as exc:
            answers[i] = Result(*decline("invalid_request", errors=json_safe(exc.errors())))
    with services.in_flight.claimed([(terminal_id, s.idempotency_key) for _, s in indexed]) as fresh:
        posted = [(i, s) for i, s in indexed if (terminal_id, s.idempotency_key) in fresh]
        for i, s in indexed:
            if (terminal_id, s.idempotency_key) not in fresh:
                answers[i] = Result(*decline("request_in_progress"))
        if posted:
            queued = services.committer.enqueue_many([s for _, s in posted])
            try:
                committed = guarded(lambda: queued.result(timeout=COMMIT_WAIT_S))
            except TimeoutError:
                queued.cancel()  # not posted unless the committer took it already
                raise EngineError("service_unavailable", "TimeoutError") from None
            for (i, _), result in zip(posted, committed):
                answers[i] = result
    results = []
    for r in answers:
        assert r is not None, "every item is answered: checked out, in progress, or posted"
        results.append({"status": r.status, "replayed": r.replayed, "body": r.json_value()})
    # Serialised here, once: a dict returned to FastAPI goes through `jsonable_encoder` first,
    # 43 ms for 1,000 answers against 0.3 ms for orjson (docs/BENCHMARKS.md, issue 11).
    return Response(orjson.dumps({"results": results}), media_type="application/json")


@router.get(
    "/v1/transactions/{transaction_id}",
    openapi_extra=terminal_headers(),
    responses={200: {"model": responses.TransactionAnswer}, **problems(TERMINAL, "invalid_request", "not_found")},
    response_model=None,
)
def get_transaction(
    transaction_id: PathId,
    p: Annotated[Principal, Depends(role("terminal", "merchant", "finance"))],
    database: DatabaseDep,
    config: ConfigDep,
) -> dict[str, Any]:
    scope = queries.payment_scope(database, transaction_id)
    if scope is None:
        raise EngineError("not_found", f"transaction {transaction_id} is not known")
    merchant_id, terminal_id = scope
    merchant_scope(p, merchant_id)
    # A terminal reads its own transactions while it is still with their merchant: a terminal
    # moved to another merchant leaves its old merchant's transactions behind.
    if p.role == "terminal" and (
        p.terminal_id != terminal_id or config.terminal_merchant(p.terminal_id) != merchant_id
    ):
        raise EngineError("forbidden", "a terminal key reads only its own transactions at its merchant")
    return queries.get_payment(database, transaction_id)
