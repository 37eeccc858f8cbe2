"""Liveness and readiness, without a key: `/healthz` answers while the process runs,
`/readyz` only while the database (and Redis, when configured) answer."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api import responses
from api.deps import ServicesDep
from api.openapi import COMMON, problems

router = APIRouter()


@router.get("/healthz", responses={200: {"model": responses.Health}, **problems(COMMON)})
def healthz() -> dict[str, Any]:
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
