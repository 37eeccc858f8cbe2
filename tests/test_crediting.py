"""engine/crediting.py: business days, dekads, crediting instants and expiry (SPEC §4).

Expected dates come from the calendar written out here (weekdays checked against a printed
calendar, holidays from the Cabinet Office list), not from the `holidays` library the module uses.
"""

from __future__ import annotations

import datetime as dt

import pytest

from engine import crediting
from engine.timeutil import TOKYO, to_us

UTC = dt.UTC


def jst(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=TOKYO)


@pytest.mark.parametrize(
    ("day", "business"),
    [
        (dt.date(2026, 12, 4), True),  # a Friday
        (dt.date(2026, 12, 5), False),  # Saturday
        (dt.date(2026, 12, 6), False),  # Sunday
        (dt.date(2026, 11, 3), False),  # 文化の日 (a Tuesday)
        (dt.date(2026, 11, 23), False),  # 勤労感謝の日 (a Monday)
        (dt.date(2026, 12, 30), True),  # the last banking day of the year
        (dt.date(2026, 12, 31), False),  # bank holiday, a Thursday
        (dt.date(2027, 1, 1), False),  # 元日
        (dt.date(2027, 1, 2), False),
        (dt.date(2027, 1, 3), False),
        (dt.date(2027, 1, 4), True),  # the first banking day, a Monday
        (dt.date(2027, 1, 11), False),  # 成人の日, second Monday of January
        (dt.date(2027, 2, 11), False),  # 建国記念の日
        (dt.date(2027, 2, 23), False),  # 天皇誕生日
        (dt.date(2027, 2, 24), True),
    ],
)
def test_business_days(day: dt.date, business: bool) -> None:
    assert crediting.is_business_day(day) is business


def test_add_business_days_skips_weekends_holidays_and_the_new_year() -> None:
    friday = dt.date(2026, 12, 4)
    assert crediting.add_business_days(friday, 0) == friday  # a business day itself
    assert crediting.add_business_days(dt.date(2026, 12, 5), 0) == dt.date(2026, 12, 7)  # Saturday -> Monday
    assert crediting.add_business_days(friday, 1) == dt.date(2026, 12, 7)
    assert crediting.add_business_days(friday, 5) == dt.date(2026, 12, 11)
    assert crediting.add_business_days(dt.date(2026, 12, 30), 1) == dt.date(2027, 1, 4)
    # 1/4 .. 1/8, then the weekend and 成人の日 (1/11): the 6th is 1/12.
    assert crediting.add_business_days(dt.date(2026, 12, 31), 6) == dt.date(2027, 1, 12)
    assert crediting.add_business_days(dt.date(2026, 11, 2), 1) == dt.date(2026, 11, 4)  # over 文化の日


@pytest.mark.parametrize(
    ("day", "close"),
    [
        (dt.date(2026, 12, 1), dt.date(2026, 12, 10)),
        (dt.date(2026, 12, 10), dt.date(2026, 12, 10)),
        (dt.date(2026, 12, 11), dt.date(2026, 12, 20)),
        (dt.date(2026, 12, 20), dt.date(2026, 12, 20)),
        (dt.date(2026, 12, 21), dt.date(2026, 12, 31)),
        (dt.date(2026, 11, 30), dt.date(2026, 11, 30)),
        (dt.date(2027, 2, 21), dt.date(2027, 2, 28)),
        (dt.date(2028, 2, 21), dt.date(2028, 2, 29)),  # leap year
    ],
)
def test_dekad_close(day: dt.date, close: dt.date) -> None:
    assert crediting.dekad_close(day) == close


def test_immediate_awards_are_credited_on_acceptance() -> None:
    accepted = to_us(jst(2026, 12, 5, 10, 0, 2))
    assert crediting.credit_at_us("immediate", 5, to_us(jst(2026, 12, 5, 10)), accepted) == accepted


@pytest.mark.parametrize(
    ("occurred", "delay", "credited"),
    [
        # First dekad closes Thu 12/10; five business days: 12/11, 14, 15, 16, 17.
        (jst(2026, 12, 5, 10), 5, jst(2026, 12, 17)),
        # Delay 0 still waits for the window to close: the first business day after it.
        (jst(2026, 12, 5, 10), 0, jst(2026, 12, 11)),
        # Last dekad closes 12/31; the bank holidays and 1/11 push it to 1/8 (5) and 1/13 (7).
        (jst(2026, 12, 25, 10), 5, jst(2027, 1, 8)),
        (jst(2026, 12, 25, 10), 7, jst(2027, 1, 13)),
        # The window is Asia/Tokyo's: 23:30 JST on the 10th is the first dekad ...
        (dt.datetime(2026, 12, 10, 14, 30, tzinfo=UTC), 1, jst(2026, 12, 11)),
        # ... and 15:30 UTC the same day is already the 11th in Tokyo: the second dekad.
        (dt.datetime(2026, 12, 10, 15, 30, tzinfo=UTC), 1, jst(2026, 12, 21)),
    ],
)
def test_dekad_crediting_instant(occurred: dt.datetime, delay: int, credited: dt.datetime) -> None:
    accepted = to_us(occurred) + 2_000_000
    assert crediting.credit_at_us("dekad", delay, to_us(occurred), accepted) == to_us(credited)


def test_a_late_purchase_past_its_crediting_day_is_credited_on_acceptance() -> None:
    occurred = to_us(jst(2026, 12, 5, 10))
    accepted = to_us(jst(2026, 12, 20, 9))  # after 12/17, the crediting day of its window
    assert crediting.credit_at_us("dekad", 5, occurred, accepted) == accepted


@pytest.mark.parametrize(
    ("credited", "months", "expires"),
    [
        (jst(2026, 12, 17), 6, jst(2027, 7, 1)),  # end of June 2027
        (jst(2026, 12, 17), 0, jst(2027, 1, 1)),  # end of the crediting month itself
        (jst(2026, 12, 31, 23, 59), 1, jst(2027, 2, 1)),
        (jst(2027, 1, 1, 0, 30), 1, jst(2027, 3, 1)),  # January in Tokyo, though still 2026 in UTC
        (jst(2026, 8, 31), 6, jst(2027, 3, 1)),  # the end of February, whatever its length
        (jst(2026, 12, 17), 12, jst(2028, 1, 1)),
        (jst(2026, 12, 17), 120, jst(2037, 1, 1)),
    ],
)
def test_credited_points_expire_at_the_end_of_the_nth_month_after_crediting(
    credited: dt.datetime, months: int, expires: dt.datetime
) -> None:
    assert crediting.expires_at_us(to_us(credited), months) == to_us(expires)
