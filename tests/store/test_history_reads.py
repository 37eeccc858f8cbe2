"""engine/store/history.py against a real database: a page's reads, on SQLite and PostgreSQL.

(The events' contents of every kind are checked through the HTTP API in
tests/api/test_app_side_http.py; here what the store adds on PostgreSQL: a page costs two
round trips besides the pool's ping, and the connection goes back to the pool transactional.)
"""

from __future__ import annotations

import tempfile

import pytest

from engine.model import Campaign
from engine.store import db, history, lifecycle
from engine.store.config import Config
from engine.store.ledger import Ledger

WINDOW = {"starts_at": "2026-01-01T00:00:00+09:00", "ends_at": "2036-01-01T00:00:00+09:00"}
CAMPAIGN = {"id": "C_GRANT", "name": "省エネ", "tiers": [{"match": {"merchant_ids": ["M_NONE"]}, "rate_bp": 0}]}


@pytest.fixture
def granted(database_url: str):
    """A wallet granted 1, 2 and 3 points, in that order; the engine."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    Config(engine).create_campaign(Campaign.model_validate({**CAMPAIGN, **WINDOW}))
    ledger = Ledger(engine)
    for n in (1, 2, 3):
        assert lifecycle.grant(ledger, "test", f"g{n}", "W1", "C_GRANT", n, f"reason {n}").status == 201
    engine.dispose()
    engine = db.make_engine(database_url)  # a pool of one connection for the reads
    yield engine
    engine.dispose()


def test_pages_newest_first_with_a_cursor(granted) -> None:
    first, cursor = history.wallet_history(granted, "W1", None, 2)
    assert [(e["type"], e["points"], e["reason"]) for e in first] == [
        ("granted", 3, "reason 3"),
        ("granted", 2, "reason 2"),
    ]
    assert all(e["expires_at"] and e["grant_id"] and e["campaign_id"] == "C_GRANT" for e in first)
    assert cursor == first[-1]["sequence"]
    rest, end = history.wallet_history(granted, "W1", cursor, 2)
    assert [(e["points"], e["reason"]) for e in rest] == [(1, "reason 1")] and end is None
    assert history.wallet_history(granted, "W_NONE", None, 50) == ([], None)


def test_a_page_on_postgresql_is_two_round_trips_and_leaves_the_connection_transactional(granted) -> None:
    if granted.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's round trips")
    history.wallet_history(granted, "W1", None, 50)  # the pool's one connection, warmed
    with granted.connect() as connection:
        raw = db.psycopg_connection(connection)
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        page, _ = history.wallet_history(granted, "W1", None, 50)
        raw.pgconn.untrace()
        trace.seek(0)
        answers = [line for line in trace if "\tB\t" in line and "ReadyForQuery" in line]
    assert len(page) == 3
    # The pool's ping, the postings, then the grants and lots in one pipeline: no BEGIN, no ROLLBACK.
    assert len(answers) == 3, answers
    with granted.connect() as connection:
        assert db.psycopg_connection(connection) is raw, "the same pooled connection"
        assert raw.autocommit is False, "the history's autocommit does not leak to the next user"
