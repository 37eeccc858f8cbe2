"""Settlement statements (SPEC §7) as pure arithmetic over ledger aggregates.

For each merchant and period, from postings by posting time:

    activity   = coin_sales - coin_refunds + points_redeemed - points_returned
    fee        = max(activity, 0) * fee_bp // 10000          (rounding: fee_floor)
    balance    = the payable account's balance at the period's end
    carried_in = balance - activity   (unpaid or failed payouts of earlier periods)
    net_payout = balance - fee - merchant_funded_points

A positive net payout is paid (when a bank account is on file); anything
else stays in the payable account and is carried into the next period.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Mapping
from typing import Any

from engine import limits
from engine.timeutil import TOKYO, to_us


@dataclasses.dataclass(frozen=True)
class MerchantActivity:
    merchant_id: str
    coin_sales: int = 0
    coin_refunds: int = 0
    points_redeemed: int = 0
    points_returned: int = 0
    merchant_funded_points: int = 0
    payable_balance_at_end: int = 0
    fee_bp: int = 0


@dataclasses.dataclass(frozen=True)
class StatementLine:
    merchant_id: str
    coin_sales: int
    coin_refunds: int
    points_redeemed: int
    points_returned: int
    merchant_funded_points: int
    fee_bp: int
    fee: int
    carried_in: int
    net_payout: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def line_for(a: MerchantActivity) -> StatementLine:
    activity = a.coin_sales - a.coin_refunds + a.points_redeemed - a.points_returned
    fee = max(activity, 0) * a.fee_bp // 10_000
    return StatementLine(
        merchant_id=a.merchant_id,
        coin_sales=a.coin_sales,
        coin_refunds=a.coin_refunds,
        points_redeemed=a.points_redeemed,
        points_returned=a.points_returned,
        merchant_funded_points=a.merchant_funded_points,
        fee_bp=a.fee_bp,
        fee=fee,
        carried_in=a.payable_balance_at_end - activity,
        net_payout=a.payable_balance_at_end - fee - a.merchant_funded_points,
    )


@dataclasses.dataclass(frozen=True)
class Period:
    name: str  # "2026-12" (monthly) or "2026-12-H1" / "2026-12-H2" (semi-monthly)
    kind: str
    start: dt.datetime
    end: dt.datetime

    @property
    def start_us(self) -> int:
        return to_us(self.start)

    @property
    def end_us(self) -> int:
        return to_us(self.end)


_PERIOD_NAME = re.compile(r"[0-9]{4}-[0-9]{2}(-[^-]*)?")


def parse_period(name: str) -> Period:
    """A period by its name; bounds are Asia/Tokyo midnights, end exclusive."""
    parts = name.split("-")
    try:
        # ASCII digits only: `int` also reads full-width digits, a sign and spaces ("２０２６-１０",
        # "2027-+2", "2027- 2"), names a statement would then carry.
        if not _PERIOD_NAME.fullmatch(name):
            raise ValueError(name)
        year, month = int(parts[0]), int(parts[1])
        if not 1 <= month <= 12:
            raise ValueError(name)
        if not limits.CALENDAR_YEAR_MIN <= year <= limits.CALENDAR_YEAR_MAX:  # its end must be an instant
            raise ValueError(name)
    except (ValueError, IndexError):
        raise ValueError(
            f"period must look like 2026-12 or 2026-12-H1, in the years {limits.CALENDAR_YEAR_MIN} "
            f"to {limits.CALENDAR_YEAR_MAX}, got {name!r}"
        ) from None
    first = dt.datetime(year, month, 1, tzinfo=TOKYO)
    last_day = calendar.monthrange(year, month)[1]
    following = first + dt.timedelta(days=last_day)
    if len(parts) == 2:
        return Period(name, "monthly", first, following)
    middle = dt.datetime(year, month, 16, tzinfo=TOKYO)
    if parts[2] == "H1":
        return Period(name, "semi_monthly", first, middle)
    if parts[2] == "H2":
        return Period(name, "semi_monthly", middle, following)
    raise ValueError(f"half must be H1 or H2, got {parts[2]!r}")


def last_closed(now: dt.datetime, kind: str) -> Period:
    """The most recent period of `kind` that has ended by `now`."""
    local = now.astimezone(TOKYO)
    previous = local.replace(day=1) - dt.timedelta(days=1)
    if kind == "semi_monthly":
        if local.day >= 16:
            return parse_period(f"{local.year:04d}-{local.month:02d}-H1")
        return parse_period(f"{previous.year:04d}-{previous.month:02d}-H2")
    return parse_period(f"{previous.year:04d}-{previous.month:02d}")


CSV_COLUMNS = (
    "merchant_id",
    "coin_sales",
    "coin_refunds",
    "points_redeemed",
    "points_returned",
    "merchant_funded_points",
    "fee_bp",
    "fee",
    "carried_in",
    "net_payout",
    "payout_status",
)


def to_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def kind_of(document: Any) -> str | None:
    """Which statement a signed `document` is: `"run_statement"` (a settlement run's: its period,
    lines and totals), `"merchant_statement"` (one merchant's line of a run), or None for anything
    else the ward's key signs (a daily chain head): the signature alone does not say what it
    signed."""
    if not isinstance(document, dict):
        return None
    if document.get("kind") == "merchant_statement":
        return "merchant_statement"
    if "kind" not in document and {"period", "lines", "totals", "ledger"} <= document.keys():
        return "run_statement"
    return None
