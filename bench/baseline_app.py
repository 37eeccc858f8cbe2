"""The baseline of bench/ingest.py: a minimal FastAPI app doing one idempotent insert per request."""

import os

from fastapi import FastAPI, Header, Request
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["BASELINE_DATABASE_URL"], pool_size=20, max_overflow=20)
with engine.begin() as connection:
    # Several workers start at once: CREATE TABLE IF NOT EXISTS alone races in PostgreSQL's catalog.
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('baseline_tx'))"))
    connection.execute(text("CREATE TABLE IF NOT EXISTS baseline_tx (key text PRIMARY KEY, body text NOT NULL)"))
app = FastAPI()


# response_model=None: the return annotation is for mypy; FastAPI validates no response model (as without one).
@app.post("/tx", status_code=201, response_model=None)
async def post_tx(request: Request, idempotency_key: str = Header(alias="Idempotency-Key")) -> dict[str, str]:
    body = (await request.body()).decode()
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO baseline_tx (key, body) VALUES (:k, :b) ON CONFLICT DO NOTHING"),
            {"k": idempotency_key, "b": body},
        )
    return {"key": idempotency_key}
