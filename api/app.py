"""The FastAPI application, assembled: `create_app` wires settings to services and routers.

It builds the collaborators once (`api.deps.Services`: the database engine, ledger,
configuration, keys, payment apps, group committer, answer cache, signature checks,
authentication), keeps them in `app.state.services`, includes one router per area
(api/routers/), installs the problem+json exception handlers (api/errors.py) and the
strict-input middleware (api/middleware.py), and runs the lifecycle scheduler and the
webhook delivery worker (engine/store/webhooks.py) while the application is up. Routers
validate, call the engine and render; every failure is an `EngineError` rendered as RFC 9457
problem+json with a stable `code`.
"""

import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from api import errors, middleware, openapi
from api.auth import Auth
from api.deps import Services
from api.idempotency import InFlight
from api.routers import (
    audit,
    configuration,
    directory,
    events,
    finance,
    health,
    keys,
    merchants,
    quotes,
    simulation,
    transactions,
    ui,
    wallets,
)
from api.signatures import TerminalSignatures
from api.strict import ParsedBodyRoute
from engine.clock import Clock, SystemClock
from engine.settings import Settings
from engine.store import lifecycle, lock_watch
from engine.store.answer_cache import AnswerCache
from engine.store.apps import Apps
from engine.store.committer_process import CommitterProcess
from engine.store.config import Config
from engine.store.db import is_sqlite, ledger_id, make_engine, reader, upgrade
from engine.store.group_commit import Committer, GroupCommitter
from engine.store.keys import Keys
from engine.store.ledger import Ledger
from engine.store.nonces import nonce_store
from engine.store.webhooks import Webhooks
from engine.timeutil import tokyo_day_key

# In this order: the document lists the paths in the order the routes are included.
ROUTERS = (
    health,
    transactions,
    wallets,
    quotes,
    directory,
    merchants,
    configuration,
    finance,
    simulation,
    audit,
    keys,
    events,
    ui,
)


def create_app(settings: Settings | None = None, migrate: bool = True, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()
    if migrate:
        upgrade(settings.database_url)
    services = _build_services(settings, clock or SystemClock(settings.clock_offset_s))
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.lifecycle_interval_s > 0:
            _start_lifecycle_scheduler(
                services.ledger, settings.lifecycle_interval_s, stop, settings.idempotency_retention_days
            )
        lock_watch.start(services.engine, stop)  # PostgreSQL: a sequencer lock whose holder stopped is let go
        if settings.webhook_delivery_interval_s > 0:
            threading.Thread(
                target=services.webhooks.run,
                args=(stop, settings.webhook_delivery_interval_s),
                name="webhook-delivery",
                daemon=True,
            ).start()
        yield
        stop.set()
        services.auth.close()
        services.apps.close()
        services.committer.close()

    app = FastAPI(
        title="setapay-engine",
        version="0.1.0",
        lifespan=lifespan,
        description="Points and settlement engine of Setagaya PAY (せたがやPay)",
        # FastAPI's own OpenTelemetry hooks: we export Prometheus metrics and JSON access lines
        # (api/access_log.py) instead, and left on they read the environment on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # A path with a slash too many (or one too few) is 404 `not_found`, not a 307 to the same
        # path spelled the other way: Starlette builds that Location from the Host header the client
        # sent (any host, always http), and a client following it sends its POST body again.
        redirect_slashes=False,
    )
    openapi.install(app)
    app.state.services = services
    # The members most used by scripts and tests, by their names of old.
    app.state.settings = settings
    app.state.ledger = services.ledger
    app.state.config = services.config
    app.state.apps = services.apps
    app.state.engine = services.engine
    app.state.keys = services.keys
    app.state.auth = services.auth
    errors.install(app)
    middleware.install(app)
    for module in ROUTERS:
        _include(app, module.router)
    return app


def _include(app: FastAPI, router: APIRouter) -> None:
    """Add `router`'s routes to `app` itself, each built anew by `app.router.add_api_route`, the way
    `include_router` did before FastAPI 0.137 (which keeps an included router as one node of a
    tree instead): so `app.routes` lists every `APIRoute`, as the authorization matrix and the
    OpenAPI tests read it, and each route is the app's own, as if declared on it. Each is a
    `strict.ParsedBodyRoute` (its JSON body parsed once, after its key and role), or keeps
    a subclass of its own (`SinglePostRoute`)."""
    for route in router.routes:
        assert isinstance(route, APIRoute), f"{route!r}: a router here holds API routes only"
        # A route class of its own must build on ParsedBodyRoute, or it would be lost here.
        assert isinstance(route, ParsedBodyRoute) or type(route) is APIRoute, f"{route!r}: not a ParsedBodyRoute"
        route_class = type(route) if isinstance(route, ParsedBodyRoute) else ParsedBodyRoute
        app.router.add_api_route(
            route.path,
            route.endpoint,
            response_model=route.response_model,
            status_code=route.status_code,
            tags=route.tags,
            dependencies=route.dependencies,
            summary=route.summary,
            description=route.description,
            response_description=route.response_description,
            responses=route.responses,
            deprecated=route.deprecated,
            methods=route.methods,
            operation_id=route.operation_id,
            response_model_include=route.response_model_include,
            response_model_exclude=route.response_model_exclude,
            response_model_by_alias=route.response_model_by_alias,
            response_model_exclude_unset=route.response_model_exclude_unset,
            response_model_exclude_defaults=route.response_model_exclude_defaults,
            response_model_exclude_none=route.response_model_exclude_none,
            include_in_schema=route.include_in_schema,
            response_class=route.response_class,
            name=route.name,
            callbacks=route.callbacks,
            openapi_extra=route.openapi_extra,
            generate_unique_id_function=route.generate_unique_id_function,
            route_class_override=route_class,
        )


def _build_services(settings: Settings, clock: Clock) -> Services:
    engine = make_engine(settings.database_url)
    ledger = Ledger(engine, clock)
    config = Config(engine, settings, clock)
    keys = Keys(engine, clock)
    signatures = TerminalSignatures(config, nonce_store(engine, settings.redis_url), clock)  # SPEC §9.2
    return Services(
        settings=settings,
        clock=clock,
        engine=engine,
        ledger=ledger,
        config=config,
        apps=Apps(engine, settings, clock),
        keys=keys,
        committer=_committer(ledger, settings, clock),
        answers=AnswerCache(settings.redis_url, functools.partial(ledger_id, reader(engine)))
        if settings.redis_url
        else None,
        signatures=signatures,
        auth=Auth(keys, settings, clock, signatures),
        in_flight=InFlight(),
        webhooks=Webhooks(engine, settings, clock),
    )


def _committer(ledger: Ledger, settings: Settings, clock: Clock) -> Committer:
    """The group committer: in this process, or (PostgreSQL, deciding ahead) in a child of its own."""
    if settings.group_commit_process and settings.group_commit_ahead and not is_sqlite(ledger.engine):
        # The child keeps a copy of the clock: a SystemClock only (CommitterProcess refuses another).
        return CommitterProcess(
            settings.database_url, clock, settings.group_commit_size_max, settings.group_commit_writer_process
        )
    return GroupCommitter(
        ledger,
        settings.group_commit_wait_ms,
        settings.group_commit_size_max,
        settings.group_commit_ahead,
        settings.group_commit_writer_process,
    )


def _start_lifecycle_scheduler(ledger: Ledger, interval_s: float, stop: threading.Event, retention_days: int) -> None:
    """Credit due awards and expire due lots every `interval_s` until the app stops, and once a
    day (Asia/Tokyo) purge remembered answers past the retention; runs are idempotent, so several
    processes doing this at once post nothing twice."""

    def loop() -> None:
        purged_day = None
        while not stop.wait(interval_s):
            try:
                lifecycle.credit_due(ledger, ledger.clock.now_us())
                lifecycle.expire_due(ledger, ledger.clock.now_us())
                today = tokyo_day_key(ledger.clock.now_us())
                if today != purged_day:
                    lifecycle.purge_remembered_answers(ledger, retention_days)
                    purged_day = today
            except Exception:  # keep the scheduler alive; the next tick retries
                logging.getLogger(__name__).exception("lifecycle run failed")

    threading.Thread(target=loop, name="lifecycle", daemon=True).start()
