"""The ledger's unit of work: one transaction under the sequencer lock, all or nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from sqlalchemy import func, select, text

from engine import ledger_rules as rules
from engine.clock import ManualClock
from engine.model import Merchant
from engine.store import db, queries
from engine.store.config import Config
from engine.store.ledger import CatalogSnapshot, Ledger
from engine.store.models import PostingRow
from engine.timeutil import TOKYO, to_us

START = dt.datetime(2026, 12, 10, 12, tzinfo=TOKYO)


@pytest.fixture
def ledger(database_url: str) -> Ledger:
    db.upgrade(database_url)
    clock = ManualClock(to_us(START))
    engine = db.make_engine(database_url)
    config = Config(engine, clock=clock)
    config.create_merchant(Merchant(id="M1", name="八百屋", merchant_class="small", shotengai_id="S1"))
    config.create_terminal("T1", "M1")
    return Ledger(engine, clock)


def _fee(amount: int) -> rules.Posting:
    return rules.Posting(rules.SETTLEMENT_FEE, rules.payable_account("M1"), rules.WARD_FEES, amount, "st_test")


def _postings(ledger: Ledger) -> int:
    with ledger.read_view() as view:
        return view.session.execute(select(func.count()).select_from(PostingRow)).scalar_one()


def test_a_unit_of_work_posts_on_the_chain_and_commits(ledger: Ledger) -> None:
    with ledger.unit_of_work() as unit:
        before = unit.last_posting_sequence
        writer = unit.writer(ledger.clock.now_us())
        writer.post(_fee(30))
        writer.post(_fee(12))
        assert unit.last_posting_sequence == before + 2
        writer.flush()
        head_hash = unit.last_hash
    with ledger.read_view() as view:
        last = view.session.execute(select(PostingRow).order_by(PostingRow.sequence.desc()).limit(1)).scalar_one()
    assert (last.sequence, last.hash) == (before + 2, head_hash)
    report = queries.ledger_check(ledger.engine)
    assert report["checks"]["hash_chain_intact"] and report["checks"]["posting_sequence_gapless"]
    assert report["checks"]["cached_balances_match"]


def test_an_exception_leaves_nothing(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.unit_of_work() as unit:
        writer = unit.writer(ledger.clock.now_us())
        writer.post(_fee(30))
        writer.flush()
        raise RuntimeError("after the writes, before the commit")
    assert _postings(ledger) == 0
    with ledger.unit_of_work() as unit:
        assert (unit.last_posting_sequence, unit.last_hash) == (0, rules.GENESIS_HASH)


def test_a_writer_that_posted_must_flush(ledger: Ledger) -> None:
    # Its postings advanced the head: committing without them would leave a gap in the chain.
    with pytest.raises(AssertionError, match="never flushed"), ledger.unit_of_work() as unit:
        unit.writer(ledger.clock.now_us()).post(_fee(30))
    assert _postings(ledger) == 0
    with ledger.unit_of_work() as unit:
        assert unit.last_posting_sequence == 0
        writer = unit.writer(ledger.clock.now_us())
        writer.flush()
        with pytest.raises(AssertionError, match="flushes once"):
            writer.flush()


def test_the_catalog_snapshot_is_named_and_frozen(ledger: Ledger) -> None:
    with ledger.unit_of_work() as unit:
        catalog = unit.catalog
    with ledger.read_view() as view:
        assert view.catalog is catalog  # one snapshot per catalog version, shared
        assert view.catalog == catalog and hash(view.catalog) == hash(catalog)
    assert isinstance(catalog, CatalogSnapshot)
    assert set(catalog.merchants) == {"M1"} and catalog.merchant_by_terminal == {"T1": "M1"}
    assert catalog.campaigns == {} and catalog.rating_for([]).campaign_ids == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        catalog.version = catalog.version + 1  # type: ignore[misc]


def test_readers_take_no_sequencer_lock(postgres_url: str) -> None:
    # On PostgreSQL a reader looks while a writer holds the lock. (On SQLite every
    # transaction begins IMMEDIATE, so there a reader waits like anyone else.)
    db.upgrade(postgres_url)
    ledger = Ledger(db.make_engine(postgres_url))
    with ledger.unit_of_work() as unit, ledger.read_view() as view:
        assert view.catalog.version == unit.catalog.version


def _head(ledger: Ledger) -> tuple[int, str, int, str, int, int]:
    with ledger.engine.connect() as c:
        row = c.execute(
            text(
                "SELECT last_posting_sequence, last_hash, last_payment_sequence, last_payment_hash, catalog_version,"
                " lock_version FROM ledger_head"
            )
        ).one()
    return tuple(row)  # type: ignore[return-value]


def test_every_writer_moves_the_head_row_as_it_leaves_it(ledger: Ledger) -> None:
    """The head row (`ledger_head`, read and written by plain statements): each unit of work under
    the lock counts one (`lock_version`) and leaves the chains' heads where its postings left them;
    a unit that posts nothing leaves them as they were; a rolled-back unit changes nothing; a
    change of the catalog (a merchant, a terminal) moves its version by one and counts one."""
    config = Config(ledger.engine, clock=ledger.clock)
    seq, hash_, pay_seq, pay_hash, catalog, units = _head(ledger)
    with ledger.unit_of_work() as unit:
        writer = unit.writer(ledger.clock.now_us())
        writer.post(_fee(30))
        writer.flush()
        posted_hash = unit.last_hash
    assert _head(ledger) == (seq + 1, posted_hash, pay_seq, pay_hash, catalog, units + 1)
    with ledger.unit_of_work():
        pass
    assert _head(ledger) == (seq + 1, posted_hash, pay_seq, pay_hash, catalog, units + 2)
    with pytest.raises(RuntimeError), ledger.unit_of_work() as unit:
        writer = unit.writer(ledger.clock.now_us())
        writer.post(_fee(5))
        writer.flush()
        raise RuntimeError("rolled back")
    assert _head(ledger) == (seq + 1, posted_hash, pay_seq, pay_hash, catalog, units + 2)
    config.update_merchant("M1", {"name": "八百屋 本店"})
    assert _head(ledger) == (seq + 1, posted_hash, pay_seq, pay_hash, catalog + 1, units + 3)
    config.create_terminal("T2", "M1")
    assert _head(ledger) == (seq + 1, posted_hash, pay_seq, pay_hash, catalog + 2, units + 4)
    with ledger.unit_of_work() as unit:
        assert unit.catalog.version == catalog + 2  # the unit's catalog is the head's
        assert unit.catalog.merchant_by_terminal["T2"] == "M1"
    report = queries.ledger_check(ledger.engine)
    assert report["checks"]["hash_chain_intact"] and report["checks"]["posting_sequence_gapless"]
