"""A sequencer lock whose holder stopped is let go (`engine/store/lock_watch.py`, PostgreSQL).

helper-93 stopped one committer child under load while its transaction held the lock: no payment
was posted in any API process for ~90 s. The watch ends a session that holds the lock idle past
its limit while another waits; the other goes on, and what the stopped one wrote is rolled back.
A reader's idle snapshot, and a holder nobody waits for, are left alone."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import func, select

from engine import ledger_rules as rules
from engine.clock import ManualClock
from engine.store import db, lock_watch
from engine.store.ledger import Ledger
from engine.store.models import PostingRow

AT_US = 1_796_000_000_000_000

# Another process: takes the lock, posts a fee, and stops before its commit: after its rows were
# sent (a pipeline, synced), inside a pipeline before its Sync, or inside a COPY.
_STOPPED = """
import sys, time
from engine import ledger_rules as rules
from engine.clock import ManualClock
from engine.store import bulk, db
from engine.store.ledger import Ledger
ledger = Ledger(db.make_engine(sys.argv[1]), ManualClock(int(sys.argv[2])))
how = sys.argv[4]
try:
    with ledger.unit_of_work() as unit:
        writer = unit.writer(ledger.clock.now_us())
        writer.post(rules.Posting(rules.SETTLEMENT_FEE, rules.payable_account("M1"), rules.WARD_FEES, 7, "st_x"))
        writer.flush()
        raw = bulk.raw_connection(unit.session)
        if how == "in_pipeline":
            raw.pgconn.send_query_params(b"SELECT 1", None)  # no Sync after it
            raw.pgconn.flush()
        elif how == "in_copy":
            raw.execute("CREATE TEMP TABLE stopped_copy (n int)")
            copying = raw.cursor().copy("COPY stopped_copy (n) FROM STDIN")  # kept: collected, it ends the COPY
            copying.__enter__().write_row((1,))  # the COPY begun, its rows not all sent
        print("holding", flush=True)
        time.sleep(float(sys.argv[3]))
    print("committed", flush=True)
except Exception as exc:
    print(type(exc).__name__, flush=True)
"""


def _stopped(url: str, seconds: float, how: str = "after_send") -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _STOPPED, url, str(AT_US), str(seconds), how], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "holding"
    return process


def _fees(ledger: Ledger) -> list[int]:
    with ledger.read_view() as view:
        return list(view.session.execute(select(PostingRow.amount).order_by(PostingRow.sequence)).scalars())


def _post(ledger: Ledger, amount: int, done: list[float], started: float) -> None:
    with ledger.unit_of_work() as unit:
        writer = unit.writer(ledger.clock.now_us())
        writer.post(rules.Posting(rules.SETTLEMENT_FEE, rules.payable_account("M1"), rules.WARD_FEES, amount, "st_y"))
        writer.flush()
    done.append(time.monotonic() - started)


@pytest.mark.parametrize("how", ["after_send", "in_pipeline", "in_copy"])
def test_a_stopped_holder_is_ended_and_the_waiting_writer_goes_on(postgres_url: str, how: str) -> None:
    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url)
    ledger = Ledger(engine, ManualClock(AT_US))
    stopped = _stopped(postgres_url, 60, how)
    try:
        done: list[float] = []
        waiter = threading.Thread(target=_post, args=(ledger, 11, done, time.monotonic()))
        waiter.start()
        time.sleep(1.5)
        assert not done  # held back by the stopped holder
        # Not yet idle long enough: left alone.
        assert lock_watch.release_stuck(engine, idle_s=30) == []
        ended = lock_watch.release_stuck(engine, idle_s=1)
        assert len(ended) == 1, ended
        waiter.join(10)
        assert done and done[0] < 10, done
    finally:
        stopped.kill()
        stopped.wait(10)
    assert _fees(ledger) == [11]


def test_a_readers_snapshot_and_a_holder_nobody_waits_for_are_left_alone(postgres_url: str) -> None:
    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url)
    ledger = Ledger(engine, ManualClock(AT_US))
    with ledger.read_view() as view:  # an idle read-only snapshot of the head (reconciliation's kind)
        view.session.execute(select(func.count()).select_from(PostingRow)).scalar_one()
        stopped = _stopped(postgres_url, 3)
        try:
            time.sleep(1.5)
            assert lock_watch.release_stuck(engine, idle_s=1) == []  # nobody waits for the holder
            assert stopped.communicate(timeout=30)[0].strip() == "committed"
        finally:
            stopped.kill()
    assert _fees(ledger) == [7]


def test_the_app_starts_the_watch_on_postgresql_only(postgres_url: str, sqlite_url: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from api.app import create_app
    from engine.settings import Settings

    for url, expected in ((postgres_url, True), (sqlite_url, False)):
        with TestClient(create_app(Settings(database_url=url))):
            names = {t.name for t in threading.enumerate()}
            assert ("lock-watch" in names) is expected, (url, names)
