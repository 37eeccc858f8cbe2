"""Asia/Tokyo instants written the short way the finance and lifecycle tests write them."""

from __future__ import annotations

import datetime as dt

from engine.timeutil import to_us

JST = dt.timezone(dt.timedelta(hours=9))


def jst(text: str) -> dt.datetime:
    """`2026-12-05T12:00` (or with seconds) as an Asia/Tokyo instant."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=JST)


def us(text: str) -> int:
    return to_us(jst(text))
