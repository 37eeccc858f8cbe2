"""An admin's creation remembered under its idempotency key (`engine.store.remembered`): its secret
kept sealed, bound to its row and answer, for a day only; then a retry is a new request, and the
purge of remembered answers drops the row, whatever the retention of the others. Both databases."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import text

from engine import sealing
from engine.store import lifecycle, remembered
from engine.store.keys import Keys
from engine.timeutil import TOKYO
from tests.lifecycle.support import Books, campaign

START = dt.datetime(2026, 1, 5, 9, tzinfo=TOKYO)
DATA_KEY = sealing.load_key(sealing.generate_key_b64())


def once(books: Books, key: str = "k-1", request_hash: str = "h" * 64) -> remembered.Once:
    assert books.clock is not None
    return remembered.Once(remembered.scope_of("a1"), key, request_hash, "key", DATA_KEY, books.clock.now_us())


def make(books: Books, keys: Keys, key: str = "k-1") -> dict:
    """`POST /v1/keys`'s answer for a finance key under idempotency key `key`, as the API builds it."""
    replayed = once(books, key).replay(books.engine)
    if replayed is not None:
        return replayed.body
    secret, record = keys.create("finance", once=once(books, key))
    return remembered.answer_of(record, "key", secret)


@pytest.fixture
def books(database_url):
    made = Books(database_url, start=START)
    made.setup({"M1": ["T1"]}, [campaign("C1")])
    yield made
    made.close()


def stored(books: Books) -> list[tuple[str, str]]:
    with books.engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT terminal_id, response_json FROM idempotency_key"))]


def test_a_creation_is_replayed_for_a_day_then_made_anew(books: Books) -> None:
    keys = Keys(books.engine, books.clock)
    first = make(books, keys)
    assert make(books, keys) == first  # replayed: the same key, its secret opened
    [(scope, kept)] = stored(books)
    assert scope == "admin:a1" and first["key"] not in kept and first["id"] in kept
    with books.engine.connect() as c:
        made_at = c.execute(text("SELECT created_at_us FROM idempotency_key")).scalar_one()
    # (The manual clock moves a microsecond at each reading: the request reads it once.)
    books.at(made_at + remembered.SECRET_KEPT_US - 2)
    assert make(books, keys) == first  # the request a microsecond short of a day after: replayed
    books.at(made_at + remembered.SECRET_KEPT_US - 1)  # a day to the microsecond: a new request
    later = make(books, keys)
    assert later["id"] != first["id"] and later["key"] != first["key"]
    assert len(stored(books)) == 1 and later["id"] in stored(books)[0][1]  # the row replaced
    assert make(books, keys) == later


def test_a_sealed_secret_opens_only_with_its_answer(books: Books) -> None:
    keys = Keys(books.engine, books.clock)
    make(books, keys)
    [(_, kept)] = stored(books)
    altered = json.loads(kept)
    altered["answer"] = altered["answer"].replace('"finance"', '"admin"')
    with books.engine.begin() as c:
        c.execute(text("UPDATE idempotency_key SET response_json = :j"), {"j": json.dumps(altered)})
    with pytest.raises(sealing.SealingError):
        once(books).replay(books.engine)
    # Another request under the key is refused before anything is opened.
    other = once(books, request_hash="x" * 64).replay(books.engine)
    assert other is not None and other.body["code"] == "idempotency_key_reused"


def test_the_purge_drops_creations_a_day_old_whatever_the_retention(books: Books) -> None:
    keys = Keys(books.engine, books.clock)
    make(books, keys, "old")
    assert books.clock is not None
    books.at(books.clock.now_us() + remembered.SECRET_KEPT_US // 2)
    make(books, keys, "young")
    # A grant's answer, kept for the retention (30 days).
    assert lifecycle.grant(books.ledger, "finance:f1", "g-1", "W1", "C1", 10, "r").status == 201
    books.at(books.clock.now_us() + remembered.SECRET_KEPT_US // 2)
    done = lifecycle.purge_remembered_answers(books.ledger, 30)
    assert done["answers_purged"] == 1
    assert sorted(scope for scope, _ in stored(books)) == ["admin:a1", "finance:f1"]  # the young one, the grant
