"""Wallet timelines across New Year 2026/27 (SPEC §4, issue 5), on SQLite and PostgreSQL.

A dekad campaign with a delay of 5 business days: the crediting dates are
computed here from a small explicit calendar (weekends, the Japanese national
holidays of the months involved, the bank holidays of 31 December to
3 January), not by asking `engine.crediting`. Expiry is the end (Asia/Tokyo)
of the 6th month after the crediting month, as the exclusive instant
00:00 JST of the next day.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.model import Purchase, Refund
from engine.store.ledger import Submission
from engine.store.models import EventRow, LifecycleRunRow
from engine.timeutil import format_instant, now_us, to_us
from tests.lifecycle.support import Books, account_sums, campaign, cli, due_points, iso, wallet_sums
from tests.server import ServerProcess
from tests.tokyo import JST, jst

# Japanese national holidays from November 2026 to March 2027 (Cabinet Office list).
JP_HOLIDAYS = {
    dt.date(2026, 11, 3),  # 文化の日
    dt.date(2026, 11, 23),  # 勤労感謝の日
    dt.date(2027, 1, 1),  # 元日
    dt.date(2027, 1, 11),  # 成人の日 (second Monday of January)
    dt.date(2027, 2, 11),  # 建国記念の日
    dt.date(2027, 2, 23),  # 天皇誕生日
}
DELAY = 5
VALIDITY = 6
TERMINAL = "T_SANCHA"
CAMPAIGN = "C_DEKAD"


def is_business_day(day: dt.date) -> bool:
    bank_holiday = (day.month == 12 and day.day == 31) or (day.month == 1 and day.day <= 3)
    return day.weekday() < 5 and day not in JP_HOLIDAYS and not bank_holiday


def dekad_last_day(day: dt.date) -> dt.date:
    if day.day <= 10:
        return day.replace(day=10)
    if day.day <= 20:
        return day.replace(day=20)
    first_of_next = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return first_of_next - dt.timedelta(days=1)


def expected_credit_instant(occurred: dt.date, delay: int = DELAY) -> dt.datetime:
    day, left = dekad_last_day(occurred), delay
    while left:
        day += dt.timedelta(days=1)
        left -= is_business_day(day)
    return dt.datetime.combine(day, dt.time(), JST)


def expected_expiry(credited: dt.datetime, months: int = VALIDITY) -> dt.datetime:
    index = credited.year * 12 + credited.month - 1 + months + 1  # the month after the N-th month
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=JST)


def stamp(instant: dt.datetime) -> str:
    return instant.isoformat()


def test_the_explicit_calendar_says_what_the_dates_are():
    """The hand calendar of this module agrees with what a person reads off a 2026/27 calendar."""
    assert expected_credit_instant(dt.date(2026, 12, 5)) == jst("2026-12-17T00:00")  # window closes Thu 10th
    assert expected_credit_instant(dt.date(2026, 12, 15)) == jst("2026-12-25T00:00")  # closes Sun 20th
    assert expected_credit_instant(dt.date(2026, 12, 25)) == jst("2027-01-08T00:00")  # 31st, 1-3 Jan skipped
    assert expected_credit_instant(dt.date(2027, 1, 5)) == jst("2027-01-18T00:00")  # 成人の日 skipped
    assert expected_credit_instant(dt.date(2027, 2, 12)) == jst("2027-03-01T00:00")  # 天皇誕生日 skipped
    assert expected_expiry(jst("2027-01-08T00:00")) == jst("2027-08-01T00:00")  # end of July 2027
    assert expected_expiry(jst("2026-12-17T00:00")) == jst("2027-07-01T00:00")  # end of June 2027


@pytest.fixture
def books(database_url):
    made = Books(database_url, start=jst("2026-12-01T00:00"))
    made.setup(
        {"M_SANCHA": [TERMINAL]},
        [
            campaign(
                CAMPAIGN,
                starts_at="2026-12-01T00:00:00+09:00",
                ends_at="2027-03-01T00:00:00+09:00",
                credit={"schedule": "dekad", "delay_business_days": DELAY},
                validity_months=VALIDITY,
            )
        ],
    )
    try:
        yield made
    finally:
        made.close()


def buy(books: Books, wallet: str, amount: int, at: str, points_used: int = 0):
    """A purchase at `at` (JST) accepted a minute later; must be accepted."""
    occurred = jst(at)
    books.at(occurred + dt.timedelta(minutes=1))
    result = books.purchase(TERMINAL, wallet, amount, occurred, points_used)
    assert result.status == 201, result.body
    return result.body


def give_back(books: Books, original_id: str, amount: int, at: str):
    occurred = jst(at)
    books.at(occurred + dt.timedelta(minutes=1))
    result = books.refund(TERMINAL, original_id, amount, occurred)
    assert result.status == 201, result.body
    return result.body


def consistent(books: Books, wallet: str) -> dict:
    """The ledger checks, and the wallet's figures equal the sums of its postings."""
    books.check()
    detail = books.wallet(wallet)
    pending, net_available = wallet_sums(books.postings(), wallet)
    net_available -= due_points(books.lots(), wallet, books.ledger.clock.now_us())  # past their expiry
    assert (detail["pending"], detail["available"] - detail["debt"]) == (pending, net_available), detail
    assert sum(p["points"] for p in detail["pending_by_credit_date"]) == detail["pending"]
    assert sum(e["points"] for e in detail["expiring"]) == detail["available"]
    return detail


# -- crediting ---------------------------------------------------------------------


def test_dekad_awards_credit_on_the_calendar_dates_across_new_year(books, database_url):
    purchases = {
        day: buy(books, "W_TIME", amount, f"{day}T12:00")
        for day, amount in (
            ("2026-12-05", 10_000),
            ("2026-12-15", 20_000),
            ("2026-12-25", 30_000),
            ("2027-01-05", 40_000),
        )
    }
    expected = {day: expected_credit_instant(dt.date.fromisoformat(day)) for day in purchases}
    for day, body in purchases.items():
        (award,) = body["awards"]
        assert award["status"] == "pending"
        assert award["credit_at"] == stamp(expected[day]), day
        assert award["expires_at"] == stamp(expected_expiry(expected[day])), day
    detail = consistent(books, "W_TIME")
    assert detail["pending"] == 10_000 and detail["available"] == 0
    assert [(p["credit_at"], p["points"]) for p in detail["pending_by_credit_date"]] == [
        (stamp(expected[d]), p)
        for d, p in (("2026-12-05", 1000), ("2026-12-15", 2000), ("2026-12-25", 3000), ("2027-01-05", 4000))
    ]

    one_us = dt.timedelta(microseconds=1)
    available = 0
    for day, points in (("2026-12-05", 1000), ("2026-12-15", 2000), ("2026-12-25", 3000), ("2027-01-05", 4000)):
        due = expected[day]
        assert books.credit(due - one_us)["points"] == 0, f"credited before {due}"
        assert consistent(books, "W_TIME")["available"] == available
        if day == "2026-12-25":
            # This one through the command, as the operator's cron job runs it; twice.
            first = cli(database_url, "credit", "--as-of", stamp(due), at=stamp(due))
            assert first.returncode == 0, first.stderr
            assert json.loads(first.stdout.strip().splitlines()[-1])["awards_credited"] == 1
            assert json.loads(first.stdout.strip().splitlines()[-1])["points"] == points
            again = cli(database_url, "credit", "--as-of", stamp(due), at=stamp(due))
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout.strip().splitlines()[-1]) == {
                "kind": "credit",
                "as_of": stamp(due),
                "awards_credited": 0,
                "points": 0,
            }
        else:
            assert books.credit(due) == {"kind": "credit", "as_of": stamp(due), "awards_credited": 1, "points": points}
            assert books.credit(due)["awards_credited"] == 0, "re-running the same --as-of credited again"
        available += points
        detail = consistent(books, "W_TIME")
        assert detail["available"] == available and detail["pending"] == 10_000 - available
    # Exactly one credit posting per award, of its full points.
    credits = [p for p in books.postings() if p.reason == "credit"]
    assert sorted(p.amount for p in credits) == [1000, 2000, 3000, 4000]
    assert len({p.payment_id for p in credits}) == 4


def _lifecycle_runs(books: Books) -> int:
    with Session(books.engine) as session:
        return session.execute(select(func.count()).select_from(LifecycleRunRow)).scalar_one()


def test_january_credits_expire_at_the_end_of_july(books, database_url):
    for day, amount in (("2026-12-05", 10_000), ("2026-12-15", 20_000), ("2026-12-25", 30_000), ("2027-01-05", 40_000)):
        buy(books, "W_EXP", amount, f"{day}T12:00")
    assert books.credit(jst("2027-01-18T00:00"))["points"] == 10_000
    end_of_june, end_of_july = "2027-07-01T00:00:00+09:00", "2027-08-01T00:00:00+09:00"
    assert books.expiring("W_EXP") == {end_of_june: 3000, end_of_july: 7000}

    assert books.expire(jst("2027-06-30T23:59:59"))["points"] == 0
    assert books.expire(jst("2027-07-01T00:00")) == {
        "kind": "expiry",
        "as_of": end_of_june,
        "lots_expired": 2,
        "points": 3000,
    }
    assert books.expire(jst("2027-07-01T00:00"))["points"] == 0, "re-running the same --as-of expired again"
    assert consistent(books, "W_EXP")["available"] == 7000

    # The points credited in January are still there at the last second of July ...
    assert books.expire(jst("2027-07-31T23:59:59"))["lots_expired"] == 0
    assert books.expiring("W_EXP") == {end_of_july: 7000}
    # The command refuses an instant the engine's clock has not reached: points are never expired
    # (nor credited) ahead of time, which could not be taken back; nothing is written.
    tomorrow = format_instant(now_us() + 86_400 * 1_000_000)
    runs = _lifecycle_runs(books)
    for command in ("expire", "credit"):
        early = cli(database_url, command, "--as-of", tomorrow)
        assert early.returncode == 2 and "ahead of time" in early.stderr, early.stderr
    assert _lifecycle_runs(books) == runs and books.expiring("W_EXP") == {end_of_july: 7000}
    # ... and leave at 00:00 JST on 1 August (through the command, twice).
    first = cli(database_url, "expire", "--as-of", "2027-08-01T00:00:00+09:00", at="2027-08-01T00:00:00+09:00")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1]) == {
        "kind": "expiry",
        "as_of": end_of_july,
        "lots_expired": 2,
        "points": 7000,
    }
    again = cli(database_url, "expire", "--as-of", "2027-08-01T00:00:00+09:00", at="2027-08-01T00:00:00+09:00")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.strip().splitlines()[-1])["points"] == 0
    detail = consistent(books, "W_EXP")
    assert (detail["available"], detail["debt"], detail["expiring"]) == (0, 0, [])
    report = books.check()
    assert report["campaigns"][CAMPAIGN]["expired"] == 10_000
    expiries = [p for p in books.postings() if p.reason == "expiry"]
    assert len(expiries) == len({(p.payment_id, p.campaign_id) for p in expiries}) == 4
    assert account_sums(books.postings())[f"campaign:{CAMPAIGN}:expired"] == 10_000


def test_credited_points_keep_the_expiry_their_purchase_was_promised_after_the_validity_changes(books):
    """A purchase answered under one campaign version is credited after a new version changed
    the validity: its lot expires when the answer said (the awarding version's validity), and a
    purchase made under the new version gets the new validity."""
    promised = buy(books, "W_VER", 10_000, "2026-12-05T12:00")["awards"][0]
    assert promised["campaign_version"] == 1
    assert promised["expires_at"] == "2027-07-01T00:00:00+09:00"  # credited in January, 6 months
    books.at(jst("2026-12-06T09:00"))
    changed = books.config.update_campaign(CAMPAIGN, {"validity_months": 2})
    assert changed.validity_months == 2
    later = buy(books, "W_VER", 20_000, "2026-12-06T12:00")["awards"][0]
    assert later["campaign_version"] == 2
    assert later["expires_at"] == "2027-03-01T00:00:00+09:00"  # the same crediting day, 2 months
    assert books.credit(jst("2027-01-18T00:00"))["points"] == 3_000
    assert books.expiring("W_VER") == {promised["expires_at"]: 1_000, later["expires_at"]: 2_000}
    assert consistent(books, "W_VER")["available"] == 3_000
    assert books.expire(jst("2027-03-01T00:00"))["points"] == 2_000
    assert books.expiring("W_VER") == {promised["expires_at"]: 1_000}


# -- redemption order and returned points --------------------------------------------


def test_redemption_takes_the_earliest_expiring_points_and_returns_restore_their_expiry(books, database_url, tmp_path):
    first = buy(books, "W_REDEEM", 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    buy(books, "W_REDEEM", 30_000, "2026-12-25T10:00")  # 3000, credited 01-08, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    books.at(jst("2027-02-10T10:00"))  # a grant credited in February: end of August
    grant = books.grant("W_REDEEM", CAMPAIGN, 500)
    assert grant.status == 201, grant.body
    assert grant.body["expires_at"] == "2027-09-01T00:00:00+09:00"
    june, july, august = "2027-07-01T00:00:00+09:00", "2027-08-01T00:00:00+09:00", "2027-09-01T00:00:00+09:00"

    finance = books.config.create_key("finance")
    with ServerProcess(database_url, tmp_path) as server, server.client(finance) as http:

        def expiring() -> dict[str, int]:
            r = http.get("/v1/wallets/W_REDEEM/points")
            assert r.status_code == 200, r.text
            assert r.json() == books.wallet("W_REDEEM")
            return {e["expires_at"]: e["points"] for e in r.json()["expiring"]}

        assert expiring() == {june: 1000, july: 3000, august: 500}
        redeem = buy(books, "W_REDEEM", 3000, "2027-02-12T10:00", points_used=2500)
        assert redeem["awards"][0]["credit_at"] == stamp(expected_credit_instant(dt.date(2027, 2, 12)))
        # June's 1000 first, then 1500 of July's; August's grant untouched.
        assert expiring() == {july: 1500, august: 500}
        assert [p.amount for p in books.postings() if p.reason == "redemption"] == [1000, 1500]

        # Half the purchase back: 1250 points return, to the lots they came from, in order.
        back = give_back(books, redeem["id"], 1500, "2027-02-13T10:00")
        assert back["points_returned"] == 1250
        assert expiring() == {june: 1000, july: 1750, august: 500}
        back = give_back(books, redeem["id"], 1500, "2027-02-14T10:00")
        assert back["points_returned"] == 1250
        assert expiring() == {june: 1000, july: 3000, august: 500}
        detail = consistent(books, "W_REDEEM")
        assert detail["available"] == 4500 and detail["pending"] == 0  # the 50-point award is clawed back whole

        # Returned points keep their original expiry: June's go at the end of June.
        assert books.expire(jst("2027-07-01T00:00"))["points"] == 1000
        assert expiring() == {july: 3000, august: 500}
    assert first["awards"][0]["credit_at"] == "2026-12-17T00:00:00+09:00"
    consistent(books, "W_REDEEM")


# -- refunds, clawbacks and debt --------------------------------------------------------


def test_refund_after_crediting_claws_back_then_debt_which_later_awards_repay(books):
    wallet = "W_DEBT"
    original = buy(books, wallet, 10_000, "2026-12-05T10:00")
    assert books.credit(jst("2026-12-17T00:00"))["points"] == 1000
    assert consistent(books, wallet)["available"] == 1000

    # A refund of half after crediting takes 500 available points back.
    back = give_back(books, original["id"], 5000, "2026-12-18T10:00")
    assert back["clawbacks"] == [{"campaign_id": CAMPAIGN, "points": 500}]
    clawbacks = [p for p in books.postings() if p.reason == "clawback"]
    assert [(p.debit_account_id, p.amount) for p in clawbacks] == [(f"wallet:{wallet}:{CAMPAIGN}:available", 500)]
    detail = consistent(books, wallet)
    assert (detail["available"], detail["debt"]) == (500, 0)

    # Spend the rest; then the other half is refunded: the points are gone, so the wallet owes them.
    buy(books, wallet, 500, "2026-12-19T10:00", points_used=500)
    assert consistent(books, wallet)["available"] == 0
    give_back(books, original["id"], 5000, "2026-12-20T10:00")
    detail = consistent(books, wallet)
    assert (detail["available"], detail["debt"], detail["expiring"]) == (0, 500, [])

    # In debt nothing can be redeemed, and nothing is written for the attempt.
    before = len(books.postings())
    books.at(jst("2026-12-21T09:00"))
    declined = books.purchase(TERMINAL, wallet, 100, jst("2026-12-21T08:59"), points_used=1)
    assert (declined.status, declined.body["code"]) == (422, "insufficient_points")
    assert len(books.postings()) == before

    # A grant repays debt before anything becomes spendable ...
    books.at(jst("2026-12-21T10:00"))
    assert books.grant(wallet, CAMPAIGN, 200).status == 201
    detail = consistent(books, wallet)
    assert (detail["available"], detail["debt"], detail["expiring"]) == (0, 300, [])
    # ... and so does a later award when it is credited.
    buy(books, wallet, 10_000, "2026-12-22T10:00")
    detail = consistent(books, wallet)
    assert (detail["pending"], detail["available"], detail["debt"]) == (1000, 0, 300)
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 1000
    detail = consistent(books, wallet)
    assert (detail["pending"], detail["available"], detail["debt"]) == (0, 700, 0)
    assert detail["expiring"] == [{"expires_at": "2027-08-01T00:00:00+09:00", "points": 700}]
    report = books.check()
    assert report["campaigns"][CAMPAIGN]["clawed_back"] == 1000


def test_refund_before_crediting_cancels_pending_points_first(books):
    wallet = "W_PENDING"
    original = buy(books, wallet, 10_000, "2026-12-05T10:00")
    back = give_back(books, original["id"], 4000, "2026-12-08T10:00")
    assert back["clawbacks"] == [{"campaign_id": CAMPAIGN, "points": 400}]
    assert [p.debit_account_id for p in books.postings() if p.reason == "clawback"] == [
        f"wallet:{wallet}:{CAMPAIGN}:pending"
    ]
    detail = consistent(books, wallet)
    assert (detail["pending"], detail["available"], detail["debt"]) == (600, 0, 0)
    assert books.credit(jst("2026-12-17T00:00")) == {
        "kind": "credit",
        "as_of": "2026-12-17T00:00:00+09:00",
        "awards_credited": 1,
        "points": 600,
    }
    detail = consistent(books, wallet)
    assert (detail["pending"], detail["available"]) == (0, 600)
    # The rest refunded after crediting: the 600 come back out of the available points.
    give_back(books, original["id"], 6000, "2026-12-18T10:00")
    detail = consistent(books, wallet)
    assert (detail["pending"], detail["available"], detail["debt"], detail["expiring"]) == (0, 0, 0, [])


def test_points_returned_after_their_lot_expired_keep_that_expiry_and_leave_with_the_refund(books):
    wallet = "W_LATE"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    buy(books, wallet, 30_000, "2026-12-25T10:00")  # 3000, credited 01-08, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    redeem = buy(books, wallet, 1500, "2027-02-26T10:00", points_used=1500)  # 1000 of June's, 500 of July's
    july = "2027-08-01T00:00:00+09:00"
    assert books.expiring(wallet) == {july: 2500}
    assert books.expire(jst("2027-07-01T00:00"))["points"] == 0  # June's lot is empty by then

    # The purchase is refunded in mid-July (a refund may come late): 1000 of the points
    # go back to June's lot, whose end has passed, and 500 to July's.
    books.at(jst("2027-07-15T10:01"))
    postings_before = len(books.postings())
    back = books.refund(TERMINAL, redeem["id"], 1500, jst("2027-07-15T10:00"))
    assert back.status == 201, back.body
    assert back.body["points_returned"] == 1500
    # June's 1000 are past their end: the refund returns them with that expiry and expires them
    # at once, as a run at its instant would have.
    assert [(p.reason, p.amount) for p in books.postings()[postings_before:]] == [
        ("points_return", 1000),
        ("points_return", 500),
        ("expiry", 1000),
    ]
    assert books.expiring(wallet) == {july: 3000}
    assert due_points(books.lots(), wallet, books.ledger.clock.now_us()) == 0
    assert consistent(books, wallet)["available"] == 3000
    with Session(books.engine) as session:
        said = session.execute(select(EventRow.data_json).where(EventRow.type == "points_expired")).scalars().all()
    assert [json.loads(d)["points"] for d in said] == [1000], said
    # The next run finds nothing of June's; July's stay until 1 August.
    assert books.expire(jst("2027-07-15T11:00"))["points"] == 0
    assert books.expiring(wallet) == {july: 3000}
    assert consistent(books, wallet)["available"] == 3000


def test_a_refund_s_clawback_takes_none_of_the_expired_points_it_returned(books):
    """A refund returned points into their lot, past its end, and its clawback took them: the
    wallet owed nothing for an award it had spent, and the next run expired what was left
    (helper-92: returned 1000, clawed back 200, 800 expired, no debt). The returned points expire
    with the refund, and the clawback becomes debt (SPEC §4: past their expiry, points are not
    available; a balance may go negative)."""
    wallet = "W_RETURN_CLAW"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 1000
    spend = buy(books, wallet, 10_000, "2027-02-26T10:00", points_used=1000)  # June's 1000; earns on 9000 coin
    assert books.credit(jst("2027-03-18T00:00"))["points"] == spend["points_awarded"] > 0
    earned = spend["points_awarded"]
    redeem_all = buy(books, wallet, earned, "2027-03-20T10:00", points_used=earned)  # the award spent too
    assert redeem_all["points_used"] == earned and consistent(books, wallet)["available"] == 0
    books.at(jst("2027-07-15T10:01"))  # June's lot past its end
    back = books.refund(TERMINAL, spend["id"], 10_000, jst("2027-07-15T10:00"))
    assert back.status == 201, back.body
    assert (back.body["points_returned"], back.body["points_clawed_back"]) == (1000, earned), back.body
    detail = consistent(books, wallet)
    assert (detail["available"], detail["debt"]) == (0, earned), detail
    assert sum(p.amount for p in books.postings() if p.reason == "expiry") == 1000
    assert books.expire(jst("2027-07-15T11:00"))["points"] == 0
    assert books.check()["ok"]


def test_expired_points_a_refund_returns_repay_no_debt(books):
    """Points a refund returned into a lot past its end repaid the wallet's earlier debt before
    what was left expired: the same two refunds gave a debt of 1,000 in one order and none in
    the other (helper-96). They now expire whole, and the debt stays what it was."""
    wallet = "W_RETURN_DEBT"
    earned = buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 1000
    spend = buy(books, wallet, 1500, "2027-02-26T10:00", points_used=1000)  # June's 1000
    back = give_back(books, earned["id"], 10_000, "2027-04-01T10:00")  # its 1000 were spent: debt
    assert back["points_clawed_back"] == 1000 and consistent(books, wallet)["debt"] == 1000
    books.at(jst("2027-07-15T10:01"))  # June's lot past its end
    returned = books.refund(TERMINAL, spend["id"], 1500, jst("2027-07-15T10:00"))
    assert returned.status == 201 and returned.body["points_returned"] == 1000, returned.body
    detail = consistent(books, wallet)
    assert (detail["available"], detail["debt"]) == (0, 1000), detail
    assert sum(p.amount for p in books.postings() if p.reason == "expiry") == 1000
    assert books.expire(jst("2027-07-15T11:00"))["points"] == 0


def test_points_past_their_expiry_are_not_spent_before_the_expiry_run(books):
    """The expiry run sweeps every few minutes; a purchase in between spent points already past
    their end (helper-77's probe: 176 points a minute after midnight at the end of the month).
    A unit that reads a wallet's lots to spend or claw back expires the due ones first, posting
    what the run would have posted, so the kernel checks the points still valid then."""
    wallet = "W_MIDNIGHT"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    buy(books, wallet, 30_000, "2026-12-25T10:00")  # 3000, credited 01-08, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    july = "2027-08-01T00:00:00+09:00"
    # A minute past June's end, before any run: 3000 available, June's 1000 neither available nor expiring.
    books.at(jst("2027-07-01T00:01"))
    assert consistent(books, wallet)["available"] == 3000 and books.expiring(wallet) == {july: 3000}
    postings_before = len(books.postings())
    # The whole 4000 is refused; June's lot expires in the same unit, as the run would have it.
    too_much = books.purchase(TERMINAL, wallet, 5000, jst("2027-07-01T00:00:30"), points_used=4000)
    assert (too_much.status, too_much.body["code"]) == (422, "insufficient_points"), too_much.body
    expired = books.postings()[postings_before:]
    assert [(p.reason, p.amount) for p in expired] == [("expiry", 1000)]
    assert expired[0].posted_at_us >= to_us(jst("2027-07-01T00:01"))  # at the unit's instant, past June's end
    assert due_points(books.lots(), wallet, books.ledger.clock.now_us()) == 0
    # The 3000 still valid are spent; the run finds nothing left of June's.
    spent = books.purchase(TERMINAL, wallet, 5000, jst("2027-07-01T00:00:40"), points_used=3000)
    assert spent.status == 201, spent.body
    assert books.expire(jst("2027-07-01T00:05"))["points"] == 0
    assert consistent(books, wallet)["available"] == 0 and books.expiring(wallet) == {}
    with Session(books.engine) as session:
        said = session.execute(select(EventRow.data_json).where(EventRow.type == "points_expired")).scalars().all()
    assert [json.loads(d)["points"] for d in said] == [1000], said


def test_points_a_refund_returns_past_their_end_are_not_spent_later_in_its_group(books):
    """In one group, a refund returned points into a lot already past its end and a later
    purchase of the same wallet could spend them: the kernel's balance is one number a wallet.
    That purchase is now decided in the next round, after those points have expired."""
    wallet = "W_SAME_GROUP"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    buy(books, wallet, 30_000, "2026-12-25T10:00")  # 3000, credited 01-08, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    redeem = buy(books, wallet, 1500, "2027-02-26T10:00", points_used=1500)  # 1000 of June's, 500 of July's
    books.at(jst("2027-07-01T00:01"))  # June's lot is past its end; no run yet
    occurred = iso(jst("2027-07-01T00:00:30"))
    bodies = [
        Refund.model_validate({"type": "refund", "original_id": redeem["id"], "amount": 1500, "occurred_at": occurred}),
        Purchase.model_validate(
            {
                "type": "purchase",
                "wallet_id": wallet,
                "merchant_id": "M_SANCHA",
                "terminal_id": TERMINAL,
                "occurred_at": occurred,
                "amount": 5000,
                "points_used": 3500,  # July's 3000 are valid; June's returned 1000 are not
            }
        ),
    ]
    refunded, spent = books.ledger.submit(_group(bodies, "same"))
    assert refunded.status == 201 and refunded.body["points_returned"] == 1500, refunded.body
    assert (spent.status, spent.body["code"]) == (422, "insufficient_points"), spent.body
    expiries = [p.amount for p in books.postings() if p.reason == "expiry"]
    assert expiries == [1000], expiries  # June's returned points, expired before the purchase was decided
    assert consistent(books, wallet)["available"] == 3000


def _group(bodies: list, prefix: str) -> list[Submission]:
    """`bodies` as one group's submissions from the terminal, keys `<prefix>-<n>`."""
    group = []
    for n, body in enumerate(bodies):
        canonical = body.model_dump_json()
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        group.append(Submission(TERMINAL, f"{prefix}-{n}", digest, body, canonical))
    return group


def test_a_clawback_after_such_a_return_in_its_group_takes_valid_points_not_expired_ones(books):
    """A later refund's clawback takes lots earliest-expiring first: in the same group it took the
    returned points past their end (which were leaving anyway) instead of valid ones. It is
    decided in the next round too."""
    wallet = "W_CLAW_GROUP"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    earned = buy(books, wallet, 30_000, "2026-12-25T10:00")  # 3000, credited 01-08, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    redeem = buy(books, wallet, 1500, "2027-02-26T10:00", points_used=1500)  # 1000 of June's, 500 of July's
    books.at(jst("2027-07-01T00:01"))
    occurred = iso(jst("2027-07-01T00:00:30"))
    returned, clawed = books.ledger.submit(
        _group(
            [
                Refund.model_validate(
                    {"type": "refund", "original_id": redeem["id"], "amount": 1500, "occurred_at": occurred}
                ),
                Refund.model_validate(
                    {"type": "refund", "original_id": earned["id"], "amount": 10_000, "occurred_at": occurred}
                ),
            ],
            "claw",
        )
    )
    assert returned.status == 201 and returned.body["points_returned"] == 1500, returned.body
    assert clawed.status == 201 and clawed.body["points_clawed_back"] == 1000, clawed.body
    assert [p.amount for p in books.postings() if p.reason == "expiry"] == [1000]  # June's returned points
    # July's 3000: 500 spent in February and returned now, 1000 clawed back.
    assert consistent(books, wallet)["available"] == 2000


def test_alternating_returns_and_spends_are_all_decided_not_refused_as_receipts_in_use(books):
    """Each refund returning points past their end holds back the wallet's next spend a round, and
    rounds were counted against the receipts' limit (four): the fourth spend of a group
    alternating four such refunds and spends was answered 409 `receipt_in_use`, though it carried
    no receipt, and the history import refused the line (helper-80's review). Only a round that
    waits for a receipt counts now."""
    wallet = "W_ALTERNATING"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, expires end of June
    buy(books, wallet, 30_000, "2026-12-25T10:00")  # 3000, expires end of July
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 4000
    redeems = [buy(books, wallet, 300, f"2027-02-2{k}T10:00", points_used=200) for k in range(1, 5)]  # June's
    books.at(jst("2027-07-01T00:01"))
    occurred = iso(jst("2027-07-01T00:00:30"))
    bodies: list = []
    for redeem in redeems:
        refund = {"type": "refund", "original_id": redeem["id"], "amount": 300, "occurred_at": occurred}
        bodies.append(Refund.model_validate(refund))
        spend = {
            "type": "purchase",
            "wallet_id": wallet,
            "merchant_id": "M_SANCHA",
            "terminal_id": TERMINAL,
            "occurred_at": occurred,
            "amount": 500,
            "points_used": 10,
        }
        bodies.append(Purchase.model_validate(spend))
    results = books.ledger.submit(_group(bodies, "alt"))
    assert [r.status for r in results] == [201] * 8, [(r.status, r.body.get("code")) for r in results]
    # June's 200 left, and the 4 × 200 returned, all expired; the spends took July's points.
    assert sum(p.amount for p in books.postings() if p.reason == "expiry") == 1000
    assert consistent(books, wallet)["available"] == 3000 - 4 * 10


def test_a_wallet_s_returns_past_their_end_take_a_bounded_number_of_rounds(books):
    """Each refund returning points into a lot past its end holds the wallet's next refund back a
    round: forty refunds of one purchase in one group took forty transactions under the lock, each
    re-reading the rest (helper-89's probe: a thousand took 57 s, every request of the process
    waiting). A group takes `ROUNDS_MAX` rounds at most; the refunds still waiting answer 409
    `wallet_in_use`, remember nothing, and are accepted when retried."""
    from engine.store.ledger import ROUNDS_MAX

    wallet = "W_MANY_RETURNS"
    buy(books, wallet, 10_000, "2026-12-05T10:00")  # 1000, credited 12-17, expires end of June
    assert books.credit(jst("2027-01-08T00:00"))["points"] == 1000
    redeem = buy(books, wallet, 4_000, "2027-02-26T10:00", points_used=400)
    books.at(jst("2027-07-01T00:01"))
    occurred = iso(jst("2027-07-01T00:00:30"))
    refund = Refund.model_validate(
        {"type": "refund", "original_id": redeem["id"], "amount": 100, "occurred_at": occurred}
    )
    group = _group([refund] * 40, "many")
    results = books.ledger.submit(group)
    statuses = [(r.status, r.body.get("code")) for r in results]
    assert statuses == [(201, None)] * ROUNDS_MAX + [(409, "wallet_in_use")] * (40 - ROUNDS_MAX), statuses
    retried = books.ledger.submit(group[ROUNDS_MAX:])
    assert sum(r.status == 201 for r in retried) == ROUNDS_MAX  # the next request's share
    assert all(r.status == 201 and r.replayed for r in books.ledger.submit(group[:ROUNDS_MAX]))
