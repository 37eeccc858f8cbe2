"""When awarded points are credited and when credited points expire (SPEC §4).

`immediate` awards are credited on acceptance. `dekad` awards are credited
`delay_business_days` Japanese business days after the close of their window
(the 1st-10th, 11th-20th, 21st-end of the month of `occurred_at`, Asia/Tokyo).
Business days are weekdays that are neither national holidays (from the
`holidays` library) nor the bank holidays of 31 December to 3 January.
Credited points expire at the end of the `validity_months`-th month after the
month of crediting.
"""

from __future__ import annotations

import datetime as dt
import functools

from holidays import HolidayBase
from holidays.countries.japan import Japan

from engine.timeutil import TOKYO, from_us, to_us, tokyo_date


@functools.lru_cache(maxsize=64)
def _national_holidays(year: int) -> HolidayBase:
    return Japan(years=year)


def is_business_day(day: dt.date) -> bool:
    if day.weekday() >= 5:
        return False
    if (day.month == 12 and day.day == 31) or (day.month == 1 and day.day <= 3):
        return False
    return day not in _national_holidays(day.year)


def add_business_days(day: dt.date, count: int) -> dt.date:
    """The `count`-th business day after `day` (`day` itself when count is 0 and it is one)."""
    if count == 0:
        while not is_business_day(day):
            day += dt.timedelta(days=1)
        return day
    while count:
        day += dt.timedelta(days=1)
        if is_business_day(day):
            count -= 1
    return day


def dekad_close(day: dt.date) -> dt.date:
    """Last day of the dekad (1-10, 11-20, 21-end) containing `day`."""
    if day.day <= 10:
        return day.replace(day=10)
    if day.day <= 20:
        return day.replace(day=20)
    next_month = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return next_month - dt.timedelta(days=1)


def credit_at_us(schedule: str, delay_business_days: int, occurred_at_us: int, accepted_at_us: int) -> int:
    """Instant an award becomes available: acceptance, or 00:00 JST of the crediting day."""
    if schedule == "immediate":
        return accepted_at_us
    # A late (backdated) purchase whose crediting day has passed is credited on acceptance.
    local_day = tokyo_date(occurred_at_us)
    return max(_dekad_credit_us(local_day, delay_business_days), accepted_at_us)


@functools.lru_cache(maxsize=4096)  # one value per local day and delay: a group's purchases share a few
def _dekad_credit_us(local_day: dt.date, delay_business_days: int) -> int:
    """00:00 JST of the crediting day of a dekad award for a purchase of Tokyo day `local_day`."""
    credit_day = add_business_days(dekad_close(local_day), max(delay_business_days, 1))
    return to_us(dt.datetime.combine(credit_day, dt.time(), TOKYO))


@functools.lru_cache(maxsize=4096)  # credit instants repeat: a group's acceptance, a dekad's crediting day
def expires_at_us(credit_at: int, validity_months: int) -> int:
    """End (exclusive instant, 00:00 JST of the next day) of the N-th month after the crediting month."""
    local = from_us(credit_at).astimezone(TOKYO)
    month_index = local.year * 12 + (local.month - 1) + validity_months + 1
    first_of_following = dt.datetime(month_index // 12, month_index % 12 + 1, 1, tzinfo=TOKYO)
    return to_us(first_of_following)
