"""Every rating vector replayed end to end through a real server, on SQLite and PostgreSQL.

Each vector file gets a database and a server of its own: merchants, campaigns
and terminals are created through the admin API, keys with `setapay keys
create`, and the events are posted in order over HTTP. What the server
answers must equal the file's `expected` exactly (awards, `capped_by`,
clawbacks, returned points, declines), every answer must replay identically,
a decline must write nothing, and the ledger must check out afterwards.

The files are replayed concurrently (one server each) to keep the suite fast;
the per-file tests then look at what their file's replay recorded.
"""

from __future__ import annotations

import dataclasses
import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine import vectors
from engine.store import queries
from tests.api.conftest import VECTOR_FILES, VECTORS_DIR, WIDE_OCCURRED_AT_ENV, Server

PARALLEL_REPLAYS = 4


@dataclasses.dataclass
class Replay:
    results: dict = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    ledger: dict | None = None
    error: str | None = None


def _terminals(raw: dict) -> dict[str, str]:
    return {e["terminal_id"]: e["merchant_id"] for e in raw["events"] if e["type"] == "purchase"}


def _as_expected(event: dict, status: int, body: dict) -> dict:
    """The server's answer in the vector's `expected` shape; built from the answer only."""
    if status != 201:
        return {"declined": body.get("code")}
    if event["type"] == "purchase":
        return {
            "awards": [{k: a[k] for k in ("campaign_id", "points", "capped_by")} for a in body["awards"]],
            "points_awarded": body["points_awarded"],
        }
    return {k: body[k] for k in ("clawbacks", "points_clawed_back", "points_returned")}


def replay(server: Server, raw: dict) -> Replay:
    out = Replay()
    keys = server.configure(raw["merchants"], raw["campaigns"], _terminals(raw))
    transaction_ids: dict[str, tuple[str, str]] = {}  # event id -> (transaction id, terminal)
    clients = {t: server.terminal_client(k) for t, k in keys.items()}
    try:
        for event in raw["events"]:
            body = {k: v for k, v in event.items() if k != "id"}
            if event["type"] == "purchase":
                terminal = event["terminal_id"]
            else:
                body["original_id"], terminal = transaction_ids[event["original_id"]]
            headers = {"Idempotency-Key": f"vector-{event['id']}"}
            postings_before = server.postings()
            r = clients[terminal].post("/v1/transactions", json=body, headers=headers)
            if r.status_code >= 500:
                out.problems.append(f"{event['id']}: {r.status_code} {r.text}")
                continue
            answer = r.json()
            if r.status_code == 201:
                if event["type"] == "purchase":
                    transaction_ids[event["id"]] = (answer["id"], terminal)
                if answer["type"] != event["type"]:
                    out.problems.append(f"{event['id']}: answered as a {answer['type']}")
            else:
                if r.headers["content-type"] != "application/problem+json":
                    out.problems.append(f"{event['id']}: decline as {r.headers['content-type']}")
                if server.postings() != postings_before:
                    out.problems.append(f"{event['id']}: the decline {answer.get('code')} wrote postings")
            if "idempotent-replayed" in r.headers:
                out.problems.append(f"{event['id']}: a first request was answered as a replay")
            out.results[event["id"]] = _as_expected(event, r.status_code, answer)

            # The retry a terminal makes when it lost the answer: same status, same body, nothing written.
            postings_after = server.postings()
            again = clients[terminal].post("/v1/transactions", json=body, headers=headers)
            if (again.status_code, again.json()) != (r.status_code, answer):
                out.problems.append(f"{event['id']}: replay answered {again.status_code} {again.text}")
            if again.headers.get("idempotent-replayed") != "true":
                out.problems.append(f"{event['id']}: replay without Idempotent-Replayed: true")
            if server.postings() != postings_after:
                out.problems.append(f"{event['id']}: the replay wrote postings")
    finally:
        for c in clients.values():
            c.close()
    out.ledger = queries.ledger_check(server.db)
    return out


@pytest.fixture(scope="module")
def replays(backend, start_server) -> dict[str, Replay]:
    """Every vector file replayed on this backend, each on a fresh server and database."""

    def one(path: Path) -> Replay:
        try:
            server = start_server(backend, env=WIDE_OCCURRED_AT_ENV, cli_in_process=True)
            try:
                return replay(server, json.loads(path.read_text(encoding="utf-8")))
            finally:
                server.stop()
        except Exception:  # recorded, and raised by this file's test
            return Replay(error=traceback.format_exc())

    with ThreadPoolExecutor(max_workers=PARALLEL_REPLAYS) as pool:
        return dict(zip((p.name for p in VECTOR_FILES), pool.map(one, VECTOR_FILES)))


def test_vectors_are_present() -> None:
    assert VECTOR_FILES, f"no rating vectors under {VECTORS_DIR}; set SETAPAY_VECTORS_DIR"


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vector_over_http(path: Path, replays: dict[str, Replay]) -> None:
    done = replays[path.name]
    assert done.error is None, done.error
    expected = json.loads(path.read_text(encoding="utf-8"))["expected"]
    assert vectors.differences(expected, done.results) == []
    assert done.problems == []
    assert done.ledger["ok"], {k: v for k, v in done.ledger.items() if k != "campaigns"}
