"""FastAPI application: authentication, scopes, idempotency headers, problem+json.

Routers validate, call the engine and render; every failure is an
`EngineError` rendered by one handler as RFC 9457 problem+json with a stable
`code`. Validation failures are 422 `invalid_request` (400 `malformed_json`
when the body is not JSON or has a duplicate key); nothing a client sends can produce a 500.
Strict input (SPEC §2) is api/strict.py: once-only headers and duplicate JSON keys are
refused by the `BodyLimit` middleware (api/middleware.py), path ids are `PathId`, query
parameters bounded. The exception handlers are api/errors.py; idempotency keys, this
process's in-flight claims and the rendering of ledger results are api/idempotency.py.
"""

import asyncio
import contextlib
import datetime as dt
import hashlib
import threading
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, Query
from fastapi.responses import JSONResponse
from pydantic import Field, TypeAdapter, ValidationError, field_validator
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError

from api import errors, middleware, openapi, responses
from api.auth import Auth
from api.errors import guarded, json_safe, validated
from api.idempotency import InFlight, check_idempotency_key, render
from api.openapi import AUTHENTICATED, COMMON, IDEMPOTENCY, TERMINAL, idempotent, problems, remembered, terminal_headers
from api.signatures import TerminalSignatures
from api.strict import (
    Cursor,
    PageLimit,
    PathId,
    decode_cursor,
    encode_cursor,
)
from engine import limits, receipts
from engine.clock import SystemClock
from engine.errors import EngineError, decline
from engine.http_signing import parse_public_key
from engine.model import Campaign, Instant, Merchant, Transaction
from engine.settings import Settings
from engine.store import lifecycle, queries
from engine.store.answer_cache import AnswerCache
from engine.store.apps import Apps
from engine.store.config import Config, Principal
from engine.store.db import make_engine, upgrade
from engine.store.group_commit import GroupCommitter
from engine.store.keys import Keys
from engine.store.ledger import Ledger, Result, Submission
from engine.store.nonces import nonce_store
from engine.timeutil import to_us

_CURSOR_PREFIX = "seq"  # a merchant's transactions, by payment sequence
_transaction = TypeAdapter(Transaction)


def create_app(settings: Settings | None = None, migrate: bool = True, clock=None) -> FastAPI:
    settings = settings or Settings()
    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    clock = clock or SystemClock(settings.clock_offset_s)
    ledger = Ledger(engine, clock)
    config = Config(engine, settings, clock)
    apps = Apps(engine, settings, clock)
    keys = Keys(engine, clock)
    committer = GroupCommitter(ledger, settings.group_commit_wait_ms, settings.group_commit_size_max)
    answers = AnswerCache(settings.redis_url) if settings.redis_url else None
    signatures = TerminalSignatures(config, nonce_store(engine, settings.redis_url), clock)  # SPEC §9.2
    auth = Auth(keys, settings, clock, signatures)
    in_flight = InFlight()

    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if settings.lifecycle_interval_s > 0:
            _start_lifecycle_scheduler(ledger, settings.lifecycle_interval_s, stop)
        yield
        stop.set()
        auth.close()

    app = FastAPI(
        title="setapay-engine",
        version="0.1.0",
        lifespan=lifespan,
        description="Points and settlement engine of Setagaya PAY (せたがやPay)",
    )
    openapi.install(app)
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.config = config
    app.state.apps = apps
    app.state.engine = engine
    app.state.keys = keys
    app.state.auth = auth

    errors.install(app)
    middleware.install(app)

    # -- authentication (api/auth.py) ---------------------------------------

    role = auth.role

    Admin = Annotated[Principal, Depends(role("admin"))]

    # -- health ------------------------------------------------------------

    @app.get("/healthz", responses={200: {"model": responses.Health}, **problems(COMMON)})
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={
            200: {"model": responses.Readiness},
            503: {"model": responses.Readiness, "description": "The database or Redis is not reachable"},
            **problems(COMMON),
        },
    )
    def readyz():
        checks = {}
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = f"error: {type(exc).__name__}"
        if settings.redis_url:
            try:
                import redis

                redis.Redis.from_url(settings.redis_url, socket_timeout=1).ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"error: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
        )

    # -- transactions ------------------------------------------------------

    def _check_instant(occurred_at: dt.datetime) -> None:
        at, now = to_us(occurred_at), clock.now_us()
        if (
            at > now + settings.occurred_at_max_future_s * 1_000_000
            or at < now - settings.occurred_at_max_past_days * 86_400_000_000
        ):
            raise EngineError(
                "occurred_at_out_of_range",
                f"occurred_at must be within {settings.occurred_at_max_future_s} s ahead and "
                f"{settings.occurred_at_max_past_days} days behind the engine's clock",
            )

    def _submission(p: Principal, key: str, body) -> Submission | Result:
        """The checked submission, or the remembered answer when a retry of an answered request
        no longer passes the checks (its app revoked or rotated out, its occurred_at now too old):
        a retry with the same key and body gets the original answer (SPEC §6)."""
        canonical = body.model_dump_json()
        request_hash = hashlib.sha256(canonical.encode()).hexdigest()
        try:
            # The terminal's merchant is checked by the ledger under its lock, against the catalog.
            if body.type == "purchase" and body.terminal_id != p.terminal_id:
                raise EngineError("forbidden", "a terminal key posts only for its own terminal")
            _check_instant(body.occurred_at)
            # The payment app's receipt vouches for wallet, merchant, amount and points (SPEC §9.1).
            receipt = receipts.verify(body.receipt, body, apps.secrets_for, clock.now_us())
        except EngineError:
            replay = guarded(lambda: ledger.remembered_answer(p.terminal_id, key, request_hash))
            if replay is None:
                raise
            return replay
        return Submission(p.terminal_id, key, request_hash, body, canonical, receipt=receipt)

    @app.post(
        "/v1/transactions",
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
                    "receipt_already_used",
                    "unknown_merchant",
                    "original_not_found",
                    "refund_merchant_mismatch",
                    "refund_exceeds_original",
                    "insufficient_points",
                ),
                "receipt_already_used",
                "unknown_merchant",
                "original_not_found",
                "refund_merchant_mismatch",
                "refund_exceeds_original",
                "insufficient_points",
            ),
        },
    )
    async def post_transaction(
        body: Annotated[Transaction, Body()],
        p: Annotated[Principal, Depends(role("terminal"))],
        # Documented as required in openapi_extra; checked by `check_idempotency_key` (400, not FastAPI's 422).
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
    ):
        key = check_idempotency_key(idempotency_key)
        submission = _submission(p, key, body)
        if isinstance(submission, Result):
            return render(submission)
        if answers is not None:
            cached = await answers.get(p.terminal_id, key)
            if cached is not None:
                request_hash, status, answer = cached
                if request_hash != submission.request_hash:
                    return render(Result(*decline("idempotency_key_reused")))
                return render(Result(status, answer, replayed=True))
        with in_flight.claimed([(p.terminal_id, key)]) as fresh:
            if not fresh:
                raise EngineError("request_in_progress")
            try:
                result = await asyncio.wait_for(asyncio.wrap_future(committer.enqueue(submission)), 60)
            except (TimeoutError, OperationalError, InterfaceError) as exc:
                raise EngineError("service_unavailable", type(exc).__name__) from None
        # Cache the key's own answer (accepted or declined), never a refusal of a reused key.
        if answers is not None and result.remember and result.body.get("code") != "idempotency_key_reused":
            await answers.put(p.terminal_id, key, submission.request_hash, result.status, result.body)
        return render(result)

    @app.post(
        "/v1/transactions/batch",
        status_code=200,
        openapi_extra=terminal_headers(),
        responses={200: {"model": responses.BatchAnswer}, **problems(TERMINAL, "invalid_request")},
    )
    def post_batch(
        body: Annotated[BatchRequest, Body()],
        p: Annotated[Principal, Depends(role("terminal"))],
    ):
        """Up to 1,000 transactions, each with its own `idempotency_key`, answered in order."""
        answers: list[Result | None] = [None] * len(body.transactions)
        indexed: list[tuple[int, Submission]] = []
        for i, item in enumerate(body.transactions):
            try:
                if not isinstance(item, dict):  # answers for itself; the other items proceed
                    raise EngineError(
                        "invalid_request",
                        "a batch item is a JSON object",
                        errors=[
                            {"loc": ["body", "transactions", str(i)], "msg": "must be an object", "type": "dict_type"}
                        ],
                    )
                fields = dict(item)
                key = check_idempotency_key(fields.pop("idempotency_key", None))
                submission = _submission(p, key, _transaction.validate_python(fields))
                if isinstance(submission, Result):
                    answers[i] = submission
                else:
                    indexed.append((i, submission))
            except EngineError as exc:
                answers[i] = Result(exc.status, exc.problem())
            except ValidationError as exc:
                answers[i] = Result(*decline("invalid_request", errors=json_safe(exc.errors())))
        with in_flight.claimed([(p.terminal_id, s.idempotency_key) for _, s in indexed]) as fresh:
            posted = [(i, s) for i, s in indexed if (p.terminal_id, s.idempotency_key) in fresh]
            for i, s in indexed:
                if (p.terminal_id, s.idempotency_key) not in fresh:
                    answers[i] = Result(*decline("request_in_progress"))
            if posted:
                for (i, _), result in zip(posted, guarded(lambda: ledger.submit([s for _, s in posted]))):
                    answers[i] = result
        return {"results": [{"status": r.status, "replayed": r.replayed, "body": r.body} for r in answers]}

    @app.get(
        "/v1/transactions/{transaction_id}",
        openapi_extra=terminal_headers(),
        responses={200: {"model": responses.TransactionAnswer}, **problems(TERMINAL, "invalid_request", "not_found")},
    )
    def get_transaction(
        transaction_id: PathId, p: Annotated[Principal, Depends(role("terminal", "merchant", "finance"))]
    ):
        scope = queries.payment_scope(engine, transaction_id)
        if scope is None:
            raise EngineError("not_found", f"transaction {transaction_id} is not known")
        merchant_id, terminal_id = scope
        if p.role == "merchant" and p.merchant_id != merchant_id:
            raise EngineError("forbidden", "a merchant key reads only its own merchant")
        # A terminal reads its own transactions while it is still with their merchant: a terminal
        # moved to another merchant leaves its old merchant's transactions behind.
        if p.role == "terminal" and (
            p.terminal_id != terminal_id or config.terminal_merchant(p.terminal_id) != merchant_id
        ):
            raise EngineError("forbidden", "a terminal key reads only its own transactions at its merchant")
        return queries.get_payment(engine, transaction_id)

    @app.get(
        "/v1/wallets/{wallet_id}/points",
        responses={200: {"model": responses.WalletPoints}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    )
    def wallet_points(wallet_id: PathId, p: Annotated[Principal, Depends(role("app", "finance"))]):
        return queries.wallet_detail(engine, wallet_id)

    # -- merchants' reward status ------------------------------------------

    def _merchant_scope(p: Principal, merchant_id: str) -> None:
        if p.role == "merchant" and p.merchant_id != merchant_id:
            raise EngineError("forbidden", "a merchant key reads only its own merchant")

    @app.get(
        "/v1/merchants/{merchant_id}/rewards",
        responses={
            200: {"model": responses.MerchantRewards},
            **problems(AUTHENTICATED, "invalid_request", "not_found"),
        },
    )
    def merchant_rewards(
        merchant_id: PathId,
        p: Annotated[Principal, Depends(role("merchant", "finance"))],
        from_: Annotated[Instant | None, Query(alias="from")] = None,
        to: Annotated[Instant | None, Query()] = None,
    ):
        _merchant_scope(p, merchant_id)
        return queries.merchant_rewards(engine, merchant_id, _opt_us(from_), _opt_us(to))

    @app.get(
        "/v1/merchants/{merchant_id}/transactions",
        responses={
            200: {"model": responses.MerchantTransactions},
            **problems(AUTHENTICATED, "invalid_request", "not_found"),
        },
    )
    def merchant_transactions(
        merchant_id: PathId,
        p: Annotated[Principal, Depends(role("merchant", "finance"))],
        from_: Annotated[Instant | None, Query(alias="from")] = None,
        to: Annotated[Instant | None, Query()] = None,
        cursor: Cursor = None,
        limit: PageLimit = 100,
    ):
        _merchant_scope(p, merchant_id)
        page, last = queries.merchant_transactions(
            engine, merchant_id, _opt_us(from_), _opt_us(to), decode_cursor(_CURSOR_PREFIX, cursor), limit
        )
        return {"transactions": page, "next_cursor": encode_cursor(_CURSOR_PREFIX, last) if last is not None else None}

    # -- finance: grants ---------------------------------------------------

    @app.post(
        "/v1/grants",
        status_code=201,
        openapi_extra=idempotent(),
        responses={
            201: {"model": responses.GrantAnswer, "headers": responses.REPLAYED_HEADER},
            **remembered(
                problems(
                    AUTHENTICATED,
                    "idempotency_key_missing",
                    "idempotency_key_invalid",
                    "idempotency_key_reused",
                    "invalid_request",
                    "not_found",
                    "budget_exceeded",
                ),
                "budget_exceeded",
            ),
        },
    )
    def post_grant(
        body: GrantRequest,
        p: Annotated[Principal, Depends(role("finance"))],
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)] = None,
    ):
        key = check_idempotency_key(idempotency_key)
        result = guarded(
            lambda: lifecycle.grant(
                ledger, f"finance:{p.key_id}", key, body.wallet_id, body.campaign_id, body.points, body.reason, actor=p
            )
        )
        return render(result)

    # -- configuration -----------------------------------------------------

    @app.post(
        "/v1/merchants",
        status_code=201,
        responses={
            201: {"model": responses.MerchantView},
            **problems(AUTHENTICATED, "invalid_request", "already_exists"),
        },
    )
    def create_merchant(body: Merchant, p: Admin) -> Any:
        return config.create_merchant(body, actor=p)

    @app.get("/v1/merchants", responses={200: {"model": responses.MerchantViews}, **problems(AUTHENTICATED)})
    def list_merchants(_: Admin) -> Any:
        return config.list_merchants()

    @app.get(
        "/v1/merchants/{merchant_id}",
        responses={200: {"model": responses.MerchantView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    )
    def get_merchant(merchant_id: PathId, _: Admin) -> Any:
        return config.get_merchant(merchant_id)

    @app.patch(
        "/v1/merchants/{merchant_id}",
        responses={200: {"model": responses.MerchantView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    )
    def patch_merchant(merchant_id: PathId, patch: Annotated[dict[str, Any], Body()], p: Admin) -> Any:
        return validated(lambda: config.update_merchant(merchant_id, patch, actor=p))

    @app.post(
        "/v1/campaigns",
        status_code=201,
        responses={201: {"model": Campaign}, **problems(AUTHENTICATED, "invalid_request", "already_exists")},
    )
    def create_campaign(body: Campaign, p: Admin) -> Any:
        return config.create_campaign(body, actor=p).model_dump(mode="json")

    @app.get("/v1/campaigns", responses={200: {"model": responses.Campaigns}, **problems(AUTHENTICATED)})
    def list_campaigns(_: Annotated[Principal, Depends(role("admin", "finance"))]) -> Any:
        return [c.model_dump(mode="json") for c in config.list_campaigns()]

    @app.get(
        "/v1/campaigns/{campaign_id}",
        responses={200: {"model": Campaign}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    )
    def get_campaign(
        campaign_id: PathId,
        _: Annotated[Principal, Depends(role("admin", "finance"))],
        version: Annotated[int | None, Query(ge=1, le=limits.VERSION_MAX)] = None,
    ) -> Any:
        return config.get_campaign(campaign_id, version).model_dump(mode="json")

    @app.patch(
        "/v1/campaigns/{campaign_id}",
        responses={
            200: {"model": Campaign},
            **problems(AUTHENTICATED, "invalid_request", "not_found", "campaign_started"),
        },
    )
    def patch_campaign(campaign_id: PathId, patch: Annotated[dict[str, Any], Body()], p: Admin) -> Any:
        return validated(lambda: config.update_campaign(campaign_id, patch, actor=p)).model_dump(mode="json")

    @app.post(
        "/v1/terminals",
        status_code=201,
        responses={
            201: {"model": responses.TerminalView},
            **problems(AUTHENTICATED, "invalid_request", "unknown_merchant", "already_exists"),
        },
    )
    def create_terminal(body: TerminalRecord, p: Admin) -> Any:
        return config.create_terminal(body.id, body.merchant_id, actor=p)

    @app.get("/v1/terminals", responses={200: {"model": responses.TerminalViews}, **problems(AUTHENTICATED)})
    def list_terminals(_: Admin) -> Any:
        return config.list_terminals()

    @app.get(
        "/v1/terminals/{terminal_id}",
        responses={200: {"model": responses.TerminalView}, **problems(AUTHENTICATED, "invalid_request", "not_found")},
    )
    def get_terminal(terminal_id: PathId, _: Admin) -> Any:
        return config.get_terminal(terminal_id)

    @app.patch(
        "/v1/terminals/{terminal_id}",
        responses={
            200: {"model": responses.TerminalView},
            **problems(AUTHENTICATED, "invalid_request", "not_found", "unknown_merchant"),
        },
    )
    def patch_terminal(terminal_id: PathId, body: TerminalPatch, p: Admin) -> Any:
        patch = body.model_dump(exclude_unset=True)  # "public_key": null removes the key
        if patch.get("merchant_id", "") is None:
            del patch["merchant_id"]
        try:
            return config.update_terminal(terminal_id, patch, actor=p)
        finally:
            signatures.forget(terminal_id)

    from api import audit, finance, simulate
    from api import keys as keys_api

    finance.install(app, role, ledger, config, settings)
    simulate.install(app, role, ledger, config, settings)
    audit.install(app, role, ledger, config, settings)
    keys_api.install(app, role, keys, auth)
    return app


def _start_lifecycle_scheduler(ledger: Ledger, interval_s: float, stop: threading.Event) -> None:
    """Credit due awards and expire due lots every `interval_s` until the app stops; runs are
    idempotent, so several processes doing this at once post nothing twice."""
    import logging

    def loop() -> None:
        while not stop.wait(interval_s):
            try:
                lifecycle.credit_due(ledger, ledger.clock.now_us())
                lifecycle.expire_due(ledger, ledger.clock.now_us())
            except Exception:  # keep the scheduler alive; the next tick retries
                logging.getLogger(__name__).exception("lifecycle run failed")

    threading.Thread(target=loop, name="lifecycle", daemon=True).start()


def _opt_us(instant: dt.datetime | None) -> int | None:
    return None if instant is None else to_us(instant)


from engine.model import Id, Label, Record  # noqa: E402


class TerminalRecord(Record):
    id: Id
    merchant_id: Id


class BatchRequest(Record):
    # Items are checked one by one in post_batch: a bad item answers for itself (SPEC §2).
    transactions: Annotated[list[Any], Field(min_length=1, max_length=limits.BATCH_TRANSACTIONS_MAX)]


class GrantRequest(Record):
    wallet_id: Id
    campaign_id: Id
    points: Annotated[int, Field(strict=True, ge=1, le=limits.POINTS_MAX)]
    reason: Label


class TerminalPatch(Record):
    merchant_id: Id | None = None
    # SPEC §9.2: base64 of the raw 32-byte Ed25519 public key; null removes it (bearer-only again).
    public_key: Annotated[str, Field(strict=True, max_length=64)] | None = None

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str | None) -> str | None:
        return None if value is None else parse_public_key(value)
