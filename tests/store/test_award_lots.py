"""An award's lot kept on the award row (migration `20261213_award_lots`), on SQLite and PostgreSQL.

A purchase that earns points at once writes no `point_lot` row: its award carries the lot
(`lot_expires_at_us`, `lot_remaining`, `lot_expired`), which redemptions spend, refunds return
into, clawbacks take from and expiry empties, exactly as a `point_lot` row; an award credited
later gets its lot on its row when credited; a grant's lot stays a `point_lot` row. Lots written
before the revision stay `point_lot` rows and are spent and expired as before, and a downgrade
moves the awards' lots back into `point_lot`.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engine.store import db
from engine.timeutil import TOKYO, to_us
from tests.lifecycle.support import Books, campaign

START = dt.datetime(2026, 12, 10, 12, tzinfo=TOKYO)
BEFORE = "20261212_closeout_merchant"


def _ward(url: str, migrate: bool = True) -> Books:
    books = Books(url, migrate=migrate, start=START)
    books.setup(
        {"M1": ["T1"]},
        [
            campaign("C_NOW", validity_months=6),
            campaign("C_LATER", credit={"schedule": "dekad", "delay_business_days": 0}),
        ],
    )
    return books


def _rows(books: Books, sql: str, **params) -> list[tuple]:
    with books.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql), params)]


def _award_lot(books: Books, payment_id: str, campaign_id: str) -> tuple:
    (row,) = _rows(
        books,
        "SELECT lot_expires_at_us, lot_remaining, lot_expired FROM award WHERE payment_id = :p AND campaign_id = :c",
        p=payment_id,
        c=campaign_id,
    )
    return row


def _lots(books: Books, wallet_id: str) -> list[tuple]:
    return _rows(
        books,
        "SELECT id, source_id, campaign_id, points, remaining, expired FROM wallet_lot"
        " WHERE wallet_id = :w ORDER BY id",
        w=wallet_id,
    )


def _answer_award(answer: dict, campaign_id: str) -> dict:
    return next(a for a in answer["awards"] if a["campaign_id"] == campaign_id)


def test_an_awards_lot_lives_on_its_row_through_spending_refunds_crediting_and_expiry(database_url) -> None:
    books = _ward(database_url)
    try:
        at = START
        books.at(at + dt.timedelta(minutes=1))
        earned = books.purchase("T1", "W1", 10_000, at)
        assert earned.status == 201, earned.body
        pid = earned.body["id"]
        now = _answer_award(earned.body, "C_NOW")
        assert now["points"] == 1_000 and now["status"] == "credited"
        # No point_lot row: the lot is the award's, with the expiry the answer promised.
        assert _rows(books, "SELECT id FROM point_lot") == []
        expires_at_us, remaining, expired = _award_lot(books, pid, "C_NOW")
        assert (remaining, expired) == (1_000, 0)
        assert expires_at_us == to_us(dt.datetime.fromisoformat(now["expires_at"]))
        # An award credited later has no lot yet.
        assert _award_lot(books, pid, "C_LATER") == (None, None, None)
        assert _lots(books, "W1") == [(f"{pid}:C_NOW", pid, "C_NOW", 1_000, 1_000, 0)]
        books.check()

        # Spent: the award's lot gives the points, and the leg names it.
        books.at(at + dt.timedelta(minutes=3))
        spent = books.purchase("T1", "W1", 800, at + dt.timedelta(minutes=2), points_used=300)
        assert spent.status == 201, spent.body
        assert _award_lot(books, pid, "C_NOW")[1:] == (700, 0)
        assert _rows(books, "SELECT lot_id, points FROM redemption_leg WHERE payment_id = :p", p=spent.body["id"]) == [
            (f"{pid}:C_NOW", 300)
        ]
        books.check()

        # Refunded: the points return into the lot they came from.
        books.at(at + dt.timedelta(minutes=5))
        refund = books.refund("T1", spent.body["id"], 800, at + dt.timedelta(minutes=4))
        assert refund.status == 201, refund.body
        assert _award_lot(books, pid, "C_NOW")[1:] == (1_000, 0)
        books.check()

        # Clawed back: refunding half the first purchase takes half its award from its own lot.
        books.at(at + dt.timedelta(minutes=7))
        clawed = books.refund("T1", pid, 5_000, at + dt.timedelta(minutes=6))
        assert clawed.status == 201, clawed.body
        assert _award_lot(books, pid, "C_NOW")[1:] == (500, 0)
        books.check()

        # Credited later: the award's lot is set on its row by the crediting run.
        (pending,) = _rows(
            books, "SELECT pending, credit_at_us FROM award WHERE payment_id = :p AND campaign_id = 'C_LATER'", p=pid
        )
        assert pending[0] > 0
        books.at(pending[1] + 1)
        assert books.credit(pending[1])["points"] == pending[0]
        later_expires, later_remaining, later_expired = _award_lot(books, pid, "C_LATER")
        assert (later_remaining, later_expired) == (pending[0], 0) and later_expires > pending[1]
        assert _rows(books, "SELECT id FROM point_lot") == []
        books.check()

        # A grant's lot is a point_lot row.
        granted = books.grant("W1", "C_NOW", 50)
        assert granted.status == 201, granted.body
        assert [r[1:] for r in _rows(books, "SELECT id, wallet_id, remaining FROM point_lot")] == [("W1", 50)]

        # Expired: the award's lot empties on its row, and leaves the partial indexes.
        due = _rows(
            books,
            "SELECT count(*), sum(remaining) FROM wallet_lot WHERE remaining > 0 AND expires_at_us <= :at",
            at=expires_at_us,
        )
        books.at(expires_at_us + 1)
        expired_run = books.expire(expires_at_us)
        assert [(expired_run["lots_expired"], expired_run["points"])] == due and due[0][0] >= 1
        assert _award_lot(books, pid, "C_NOW")[1:] == (0, 500)
        assert all(to_us_iso(instant) > expires_at_us for instant in books.expiring("W1"))
        books.check()
    finally:
        books.close()


def to_us_iso(instant: str) -> int:
    return to_us(dt.datetime.fromisoformat(instant))


def test_lots_kept_in_point_lot_before_the_revision_are_spent_as_before(database_url) -> None:
    books = _ward(database_url)
    try:
        at = START
        books.at(at + dt.timedelta(minutes=1))
        first = books.purchase("T1", "W1", 10_000, at).body["id"]
        books.at(at + dt.timedelta(minutes=3))
        second = books.purchase("T1", "W2", 4_000, at + dt.timedelta(minutes=2)).body["id"]
        lots_before = sorted(_lots(books, "W1") + _lots(books, "W2"))
        on_awards = _rows(
            books,
            "SELECT payment_id || ':' || campaign_id, lot_expires_at_us, lot_remaining FROM award"
            " WHERE lot_expires_at_us IS NOT NULL ORDER BY 1",
        )
        assert [r[0] for r in on_awards] == sorted([f"{first}:C_NOW", f"{second}:C_NOW"])
        books.close()

        # Down: the awards' lots become point_lot rows, as the revision before keeps them.
        db.downgrade(database_url, BEFORE)
        books = Books(database_url, migrate=False, start=START)
        assert _rows(books, "SELECT id, expires_at_us, remaining FROM point_lot ORDER BY id") == on_awards
        books.close()

        # Up again: they stay point_lot rows (nothing is moved), and are spent, clawed back and
        # expired there; new awards keep their lots on their rows.
        db.upgrade(database_url)
        books = Books(database_url, migrate=False, start=START)
        books.terminals["T1"] = "M1"
        books.at(at + dt.timedelta(minutes=5))
        assert sorted(_lots(books, "W1") + _lots(books, "W2")) == lots_before
        assert _rows(books, "SELECT count(*) FROM award WHERE lot_expires_at_us IS NOT NULL") == [(0,)]
        spent = books.purchase("T1", "W1", 500, at + dt.timedelta(minutes=4), points_used=400)
        assert spent.status == 201, spent.body
        assert _rows(books, "SELECT remaining FROM point_lot WHERE id = :i", i=f"{first}:C_NOW") == [(600,)]
        books.at(at + dt.timedelta(minutes=7))
        clawed = books.refund("T1", second, 4_000, at + dt.timedelta(minutes=6))
        assert clawed.status == 201, clawed.body
        assert _rows(books, "SELECT remaining FROM point_lot WHERE id = :i", i=f"{second}:C_NOW") == [(0,)]
        (spent_award,) = [a for a in spent.body["awards"] if a["campaign_id"] == "C_NOW"]
        assert _award_lot(books, spent.body["id"], "C_NOW")[1:] == (spent_award["points"], 0)
        books.check()
        (expiry,) = _rows(books, "SELECT expires_at_us FROM point_lot WHERE id = :i", i=f"{first}:C_NOW")
        books.at(expiry[0] + 1)
        books.expire(expiry[0])
        assert _rows(books, "SELECT remaining, expired FROM point_lot WHERE id = :i", i=f"{first}:C_NOW") == [(0, 600)]
        books.check()
    finally:
        books.close()


def test_the_database_refuses_a_lot_half_kept_or_below_zero(database_url) -> None:
    books = _ward(database_url)
    try:
        books.at(START + dt.timedelta(minutes=1))
        pid = books.purchase("T1", "W1", 10_000, START).body["id"]
        for setting in (
            "lot_remaining = NULL",
            "lot_expired = NULL",
            "lot_expires_at_us = NULL",
            "lot_remaining = -1",
            "lot_expired = -1",
        ):
            with pytest.raises(IntegrityError), books.engine.begin() as c:
                c.execute(
                    text(f"UPDATE award SET {setting} WHERE payment_id = :p AND campaign_id = 'C_NOW'"), {"p": pid}
                )
        # A pending award holds no lot at all, and may be given a whole one.
        with books.engine.begin() as c:
            c.execute(
                text(
                    "UPDATE award SET lot_expires_at_us = 1, lot_remaining = 0, lot_expired = 0"
                    " WHERE payment_id = :p AND campaign_id = 'C_LATER'"
                ),
                {"p": pid},
            )
        assert _award_lot(books, pid, "C_NOW")[1:] == (1_000, 0)
    finally:
        books.close()


@pytest.mark.parametrize(("spent", "lot_left"), [(1_500, 500), (2_000, None)])
def test_points_credited_into_a_wallet_in_debt_repay_it_before_the_award_keeps_a_lot(
    database_url, spent, lot_left
) -> None:
    """Two purchases earn 1,000 at once (C_NOW) and 1,000 later (C_LATER) each; `spent` points are
    spent, then the first purchase is refunded: its C_NOW award is clawed back from what lots are
    left, the rest becomes debt (500, or all 1,000). Crediting the second purchase's C_LATER repays
    the debt first: the award keeps a lot of what is left, or none when nothing is."""
    books = _ward(database_url)
    try:
        at = START
        ids = []
        for minute in (0, 2):
            books.at(at + dt.timedelta(minutes=minute + 1))
            ids.append(books.purchase("T1", "W1", 10_000, at + dt.timedelta(minutes=minute)).body["id"])
        books.at(at + dt.timedelta(minutes=5))
        assert books.purchase("T1", "W1", spent, at + dt.timedelta(minutes=4), points_used=spent).status == 201
        books.at(at + dt.timedelta(minutes=7))
        assert books.refund("T1", ids[0], 10_000, at + dt.timedelta(minutes=6)).status == 201
        debt = _rows(books, "SELECT campaign_id, points FROM wallet_debt WHERE wallet_id = 'W1' AND points > 0")
        assert debt == [("C_NOW", spent - 1_000)]
        books.check()
        (credit_at,) = _rows(
            books, "SELECT credit_at_us FROM award WHERE payment_id = :p AND campaign_id = 'C_LATER'", p=ids[1]
        )
        books.at(credit_at[0] + 1)
        assert books.credit(credit_at[0])["points"] == 1_000
        assert _rows(books, "SELECT points FROM wallet_debt WHERE wallet_id = 'W1' AND points > 0") == []
        lot = _award_lot(books, ids[1], "C_LATER")
        assert lot[1:] == ((lot_left, 0) if lot_left else (None, None))
        # C_NOW's lots were emptied by the spending and the clawback: the wallet holds the new lot only.
        assert sum(r[4] for r in _lots(books, "W1")) == (lot_left or 0)
        books.check()
    finally:
        books.close()


_COUNT_AWARD_WRITES = {
    "sqlite": [
        "CREATE TABLE award_write (payment_id TEXT, campaign_id TEXT)",
        "CREATE TRIGGER award_write_counted AFTER UPDATE ON award BEGIN"
        " INSERT INTO award_write VALUES (NEW.payment_id, NEW.campaign_id); END",
    ],
    "postgresql": [
        "CREATE TABLE award_write (payment_id TEXT, campaign_id TEXT)",
        "CREATE FUNCTION award_write_counted() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO award_write VALUES (NEW.payment_id, NEW.campaign_id); RETURN NEW; END $$",
        "CREATE TRIGGER award_write_counted AFTER UPDATE ON award FOR EACH ROW EXECUTE FUNCTION award_write_counted()",
    ],
}


def test_a_unit_of_work_writes_each_award_row_once(database_url) -> None:
    """A crediting run sets an award's lot and its pending points in one update of its row, and
    a refund's clawback its lot and its clawed-back points in one (each was two: two dead row
    versions where one will do). Counted by a trigger the test adds: one row per update."""
    books = _ward(database_url)
    try:
        with books.engine.begin() as c:
            for sql in _COUNT_AWARD_WRITES[books.engine.dialect.name]:
                c.execute(text(sql))

        def writes() -> list[tuple]:
            found = _rows(books, "SELECT payment_id, campaign_id FROM award_write ORDER BY 1, 2")
            with books.engine.begin() as c:
                c.execute(text("DELETE FROM award_write"))
            return found

        books.at(START + dt.timedelta(minutes=1))
        pids = []
        for wallet in ("W1", "W2"):
            earned = books.purchase("T1", wallet, 10_000, START)
            assert earned.status == 201, earned.body
            pids.append(earned.body["id"])
        assert writes() == []

        ((pending, credit_at),) = _rows(
            books,
            "SELECT pending, credit_at_us FROM award WHERE payment_id = :p AND campaign_id = 'C_LATER'",
            p=pids[0],
        )
        books.at(credit_at + 1)
        assert books.credit(credit_at)["awards_credited"] == 2
        assert writes() == sorted((pid, "C_LATER") for pid in pids)
        assert (
            _rows(books, "SELECT pending, lot_remaining FROM award WHERE campaign_id = 'C_LATER'") == [(0, pending)] * 2
        )

        # Half of W1's purchase refunded: both awards clawed back from their lots, once each.
        books.at(credit_at + 3_000_000)
        refund = books.refund("T1", pids[0], 5_000, dt.datetime.fromtimestamp(credit_at // 1_000_000 + 1, TOKYO))
        assert refund.status == 201, refund.body
        assert writes() == [(pids[0], "C_LATER"), (pids[0], "C_NOW")]
        assert _rows(
            books,
            "SELECT campaign_id, pending, clawed_back, lot_remaining FROM award WHERE payment_id = :p ORDER BY 1",
            p=pids[0],
        ) == [("C_LATER", 0, pending // 2, pending - pending // 2), ("C_NOW", 0, 500, 500)]
        books.check()
    finally:
        books.close()
