"""The money path's budget thresholds in the outbox (engine/store/events.py), on both databases:
a threshold said already is not said again, whether its key was read with the group's reads
(`queue_said`), asked about under another budget (the catalog changed after the reads: looked up
then), or not read at all."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from engine import events
from engine.store import bulk, db
from engine.store import events as outbox
from tests.lifecycle.support import campaign

AT = 1_780_000_000_000_000
NOW = {"C1": campaign("C1", budget=1000)}
BEFORE = {"C1": campaign("C1", budget=2000)}  # the catalog the reads were queued against


@pytest.mark.parametrize("read_with", ["the group's catalog", "another budget", "nothing"])
def test_a_threshold_said_already_is_not_said_again(database_url: str, read_with: str) -> None:
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    try:
        (said_80,) = events.budget_crossings({"C1": 700}, {"C1": 800}, {"C1": 1000}, AT)
        with Session(engine) as session, session.begin():
            outbox.record(session, [said_80], AT)
        with Session(engine) as session, session.begin():
            reads = bulk.ReadBatch(session)
            said = {
                "the group's catalog": lambda: outbox.queue_said(reads, NOW),
                "another budget": lambda: outbox.queue_said(reads, BEFORE),
                "nothing": lambda: None,
            }[read_with]()
            reads.run()
            batch = bulk.WriteBatch(session)
            # The meter went from 700 to 1,000: 80 % crossed again (said already), 100 % for the first time.
            outbox.queue_group(batch, [], {"C1": 700}, {"C1": 1000}, NOW, AT, said)
            batch.send()
            keys = [r[0] for r in session.execute(text("SELECT dedupe_key FROM event ORDER BY id"))]
        assert keys == ["budget_threshold:C1:1000:80", "budget_threshold:C1:1000:100"]
    finally:
        engine.dispose()


def test_record_leaves_out_events_said_already(database_url: str) -> None:
    """`record` (the lifecycle runs' and settlement's events) writes a run's events by one
    statement and leaves out those whose dedupe key is taken: a run repeated, or raced, says
    each event once; the rest of its events are written."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    try:
        first = events.budget_crossings({"C1": 700}, {"C1": 800}, {"C1": 1000}, AT)
        both = events.budget_crossings({"C1": 700}, {"C1": 1000}, {"C1": 1000}, AT)
        with Session(engine) as session, session.begin():
            outbox.record(session, first, AT)
        with Session(engine) as session, session.begin():
            outbox.record(session, both, AT + 1)
            rows = [tuple(r) for r in session.execute(text("SELECT dedupe_key, created_at_us FROM event ORDER BY id"))]
        assert rows == [("budget_threshold:C1:1000:80", AT), ("budget_threshold:C1:1000:100", AT + 1)]
    finally:
        engine.dispose()
