"""A database that cannot be reached is a 503 `service_unavailable` wherever a route meets it,
not only where the route guards its ledger call: here a route whose reload of a cache breaks
on a real connection PostgreSQL terminated (as the crash-safety test's dropped pool does)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from api import errors
from engine.store import db


def test_a_connection_lost_outside_a_guarded_call_is_a_503(postgres_url: str) -> None:
    engine = db.make_engine(postgres_url)
    app = FastAPI()
    errors.install(app)

    @app.get("/reload")
    def reload() -> dict:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with db.make_engine(postgres_url).connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            connection.execute(text("SELECT 1"))  # on the terminated connection
        return {}

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/reload")
    engine.dispose()
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "service_unavailable"
    assert answer.headers["Retry-After"] == "1"  # none was sent (helper-108)
