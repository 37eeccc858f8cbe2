"""Liveness, readiness and metrics, without a key: `/healthz` answers while the process runs,
`/readyz` only while the database (and Redis, when configured) answer, `/metrics` is the
Prometheus exposition of every worker (engine/metrics.py), the campaigns' budget meters and
the webhook deliveries pending and failed."""

import os
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from api import responses
from api.deps import ServicesDep
from api.openapi import COMMON, problems
from engine.metrics import CampaignBudgets, WebhookDeliveries
from engine.store.models import CampaignRow

router = APIRouter()


@router.get("/healthz", responses={200: {"model": responses.Health}, **problems(COMMON)})
async def healthz() -> dict[str, Any]:
    # Answered on the event loop, not in a worker thread: a liveness probe answers while every
    # worker thread waits (on the database, say), and costs ~150 us of CPU, not ~350
    # (docs/BENCHMARKS.md).
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {"model": responses.Readiness},
        503: {"model": responses.Readiness, "description": "The database or Redis is not reachable"},
        **problems(COMMON),
    },
)
def readyz(services: ServicesDep) -> JSONResponse:
    checks = {}
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports, it does not raise
        checks["database"] = f"error: {type(exc).__name__}"
    if services.settings.redis_url:
        try:
            import redis

            redis.Redis.from_url(services.settings.redis_url, socket_timeout=1).ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, status_code=200 if ready else 503
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus text"},
        **problems(COMMON),
    },
)
def metrics(services: ServicesDep) -> Response:
    """Every worker's samples added up (prometheus-client's multiprocess mode, when
    PROMETHEUS_MULTIPROC_DIR is set, as `setapay serve` does), then the budget meters."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        workers = CollectorRegistry()
        # prometheus-client leaves this constructor unannotated.
        multiprocess.MultiProcessCollector(workers)  # type: ignore[no-untyped-call]
        body = generate_latest(workers)
    else:
        body = generate_latest(REGISTRY)
    budgets = CollectorRegistry()
    budgets.register(CampaignBudgets(lambda: _budgets(services.engine)))
    budgets.register(WebhookDeliveries(services.webhooks.counts))
    return Response(body + generate_latest(budgets), media_type=CONTENT_TYPE_LATEST)


def _budgets(engine: Engine) -> dict[str, tuple[int | None, int]]:
    with engine.connect() as connection:
        rows = connection.execute(select(CampaignRow.id, CampaignRow.budget, CampaignRow.issued_net))
        return {campaign_id: (budget, issued) for campaign_id, budget, issued in rows}
