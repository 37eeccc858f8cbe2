"""Instants and the Asia/Tokyo calendar as integers.

Every instant inside the engine is an integer count of microseconds since the
Unix epoch (UTC), so comparisons are exact whatever offset a client wrote.
Calendar windows (day, month) follow Asia/Tokyo, which has had a fixed +09:00
offset with no daylight saving since 1951, so a day or month key is plain
integer arithmetic and the kernel needs no time-zone database.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from zoneinfo import ZoneInfo

TOKYO = ZoneInfo("Asia/Tokyo")
US_PER_S = 1_000_000
TOKYO_OFFSET_S = 9 * 3600
S_PER_DAY = 86_400
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# A group asks each of its instants' microseconds several times (reading, rating, posting):
# cached, a repeat is a hash of the instant (~0.2 µs) instead of the arithmetic through its
# offset (~1.5 µs with the validated models' tzinfo). Equal instants give equal results,
# whatever their offsets, so the cache may answer for any of them.
@functools.lru_cache(maxsize=1 << 14)
def to_us(instant: dt.datetime) -> int:
    """Microseconds since the epoch of an offset-aware instant (exact, no float)."""
    assert instant.tzinfo is not None, "instants must carry an offset"
    delta = instant - _EPOCH
    return (delta.days * S_PER_DAY + delta.seconds) * US_PER_S + delta.microseconds


def from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def tokyo_date(us: int) -> dt.date:
    """The Asia/Tokyo calendar day containing `us`."""
    return from_us(us).astimezone(TOKYO).date()


def tokyo_day_key(us: int) -> int:
    """Days since 1970-01-01 of the Asia/Tokyo calendar day containing `us`."""
    return (us // US_PER_S + TOKYO_OFFSET_S) // S_PER_DAY


def tokyo_month_key(us: int) -> int:
    """Months since 1970-01 of the Asia/Tokyo calendar month containing `us`."""
    return _month_of_day(tokyo_day_key(us))


@functools.lru_cache(maxsize=1 << 16)  # a day's month is asked once per award and usage key: a few days at a time
def _month_of_day(day: int) -> int:
    # Civil-from-days (H. Hinnant's algorithm): integer arithmetic, no tz lookups.
    z = day + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    mp = (5 * (doe - (365 * yoe + yoe // 4 - yoe // 100)) + 2) // 153
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return (year - 1970) * 12 + month - 1


@functools.lru_cache(maxsize=4096)  # a group's instants repeat: its stamp, credit and expiry dates
def format_instant(us: int) -> str:
    """RFC 3339 in Asia/Tokyo, the way the ward reads instants."""
    return from_us(us).astimezone(TOKYO).isoformat()


def now_us() -> int:
    """Microseconds since the epoch now: the system clock's integer nanoseconds, truncated (not
    through `to_us`, whose cache would fill with instants never seen again)."""
    return time.time_ns() // 1_000
