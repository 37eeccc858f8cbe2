"""The records of SPEC §3 and the transactions of SPEC §4, validated.

Records are immutable pydantic models with unknown fields forbidden and
strict types (a string "100" or a float is not an amount), so a bad record is
refused with an error that names its field. The same models are the HTTP
request bodies, so the API and the core can never disagree on what is valid.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.config import JsonDict

from engine import limits
from engine.timeutil import to_us

__all__ = [
    "CalendarDate",
    "Campaign",
    "Certification",
    "Instant",
    "WindowBound",
    "window_bound_us",
    "Label",
    "Credit",
    "Merchant",
    "Purchase",
    "Refund",
    "Item",
    "StoredPurchase",
    "StoredTransaction",
    "Match",
    "Tier",
    "ValidationError",
    "Transaction",
]

Id = Annotated[str, StringConstraints(strict=True, pattern=limits.ID_PATTERN)]
Tag = Annotated[str, StringConstraints(strict=True, pattern=limits.TAG_PATTERN)]
Points = Annotated[StrictInt, Field(ge=0, le=limits.POINTS_MAX)]
AmountYen = Annotated[StrictInt, Field(ge=limits.AMOUNT_YEN_MIN, le=limits.AMOUNT_YEN_MAX)]
Receipt = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=limits.RECEIPT_CHARS_MAX)]
MerchantClass = Literal["small", "semi_large", "large"]
Label = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=limits.LABEL_CHARS_MAX, pattern=limits.LABEL_PATTERN)
]
SchemeLabel = Annotated[
    str, StringConstraints(strict=True, min_length=1, max_length=limits.SCHEME_CHARS_MAX, pattern=limits.LABEL_PATTERN)
]

# -- instants and dates (SPEC §2 "Strict input") ------------------------------------------

# RFC 3339 date-time: the offset is required; never a number (pydantic's own datetime would
# take 1764600000 as a Unix time), never a bare date or a time without an offset.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UTC = dt.UTC


def _rfc3339_string(value: object) -> object:
    if isinstance(value, dt.datetime):  # built in Python by the engine itself: offset and range checked below
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("an instant is an RFC 3339 string with an offset, e.g. 2026-12-01T10:15:00+09:00")
    return value.upper()  # RFC 3339 allows "t" and "z"


# The first instant whose year is INSTANT_YEAR_MIN in UTC (and so in Asia/Tokyo, which is ahead),
# and the first whose year is past INSTANT_YEAR_MAX in Asia/Tokyo (and so past it in neither zone
# before). Aware comparisons do not overflow, whatever the offset (9999-12-31T23:59:59-23:59).
_INSTANT_FIRST = dt.datetime(limits.INSTANT_YEAR_MIN, 1, 1, tzinfo=_UTC)
_INSTANT_END = dt.datetime(limits.INSTANT_YEAR_MAX, 12, 31, 15, tzinfo=_UTC)  # Tokyo's next New Year
# The same bounds in the engine's microseconds: compared as integers, and the instant's
# microseconds, needed anyway by whoever uses the record, are then cached (`to_us`).
_INSTANT_FIRST_US, _INSTANT_END_US = to_us(_INSTANT_FIRST), to_us(_INSTANT_END)


def _instant_in_range(value: dt.datetime) -> dt.datetime:
    if not _INSTANT_FIRST_US <= to_us(value) < _INSTANT_END_US:
        raise ValueError(_OUT_OF_RANGE)
    return value


_OUT_OF_RANGE = (
    f"an instant must lie in the years {limits.INSTANT_YEAR_MIN} to {limits.INSTANT_YEAR_MAX}, in UTC and in Asia/Tokyo"
)


# The instant type of every record. The engine keeps instants to the microsecond: digits past
# the sixth are dropped (ROUNDING: a record's instant floors to its microsecond, as pydantic
# reads it), so a terminal writing nanoseconds (Go's RFC3339Nano) is read, not refused.
Instant = Annotated[AwareDatetime, BeforeValidator(_rfc3339_string), AfterValidator(_instant_in_range)]

_INSTANT_READ: TypeAdapter[dt.datetime] = TypeAdapter(AwareDatetime)


def _window_bound(value: object) -> object:
    """A window's bound read up to the microsecond: ROUNDING, a bound (`from`, included, or `to`,
    not) finer than a microsecond rounds up to the next one. Every instant the ledger holds is a
    whole microsecond `t`, and `t >= b` (or `t < b`) for a bound `b` between two microseconds holds
    exactly when it does for `b` rounded up; floored, a `from` a nanosecond past `t` took `t` in."""
    text = _rfc3339_string(value)
    if not isinstance(text, str):
        return text
    fraction = _RFC3339.fullmatch(text).group(1)  # type: ignore[union-attr]  # matched above
    if fraction is None or not fraction[7:].strip("0"):
        return text
    floored = _INSTANT_READ.validate_python(text)  # pydantic drops the digits past the sixth
    try:
        return floored + dt.timedelta(microseconds=1)
    except OverflowError:  # the last microsecond of year 9999: outside the instants' range anyway
        raise ValueError(_OUT_OF_RANGE) from None


# A window's bound: `from` and `to` of queries and of a simulation's window.
WindowBound = Annotated[AwareDatetime, BeforeValidator(_window_bound), AfterValidator(_instant_in_range)]
_WINDOW_BOUND: TypeAdapter[dt.datetime] = TypeAdapter(WindowBound)


def window_bound_us(text: str) -> int:
    """`text` read as a window's bound (`WindowBound`: the CLI's `--from` and `--to`), in
    microseconds; ValueError saying why when it is not one."""
    try:
        return to_us(_WINDOW_BOUND.validate_python(text))
    except ValidationError as error:
        raise ValueError(error.errors()[0]["msg"].removeprefix("Value error, ")) from None


def _iso_date_string(value: object) -> object:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
        raise ValueError("a date is a YYYY-MM-DD string")
    return value


def _date_in_range(value: dt.date) -> dt.date:
    if not limits.CALENDAR_YEAR_MIN <= value.year <= limits.CALENDAR_YEAR_MAX:
        raise ValueError(f"a date must lie in the years {limits.CALENDAR_YEAR_MIN} to {limits.CALENDAR_YEAR_MAX}")
    return value


# An Asia/Tokyo calendar day (a closeout's business_date).
CalendarDate = Annotated[dt.date, BeforeValidator(_iso_date_string), AfterValidator(_date_in_range)]

_FUNDING_PATTERN = r"^(ward_general|national_grant|climate_fund|merchant:[A-Za-z0-9_-]{1,64})$"


_set_slot = object.__setattr__


def _record_of(
    cls: type[Record], values: dict[str, object], fields_set: set[str], extra: object, private: object
) -> Record:
    """A record as `Record.__reduce__` pickled it: its slots set again, as pydantic's own
    `__setstate__` sets them, with no validation (what was pickled was valid)."""
    record = cls.__new__(cls)
    _set_slot(record, "__dict__", values)
    _set_slot(record, "__pydantic_fields_set__", fields_set)
    _set_slot(record, "__pydantic_extra__", extra)
    _set_slot(record, "__pydantic_private__", private)
    return record


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as its four slots, what pydantic's `__getstate__` and `__setstate__` carry,
        without their Python-level calls: the API process pickles every purchase it hands the
        committer child (issue 11, docs/BENCHMARKS.md). `tests/test_model_pickle.py` holds the
        two ways equal."""
        return (
            _record_of,
            (
                type(self),
                self.__dict__,
                self.__pydantic_fields_set__,
                self.__pydantic_extra__,
                self.__pydantic_private__,
            ),
        )


class Certification(Record):
    scheme: SchemeLabel
    valid_from: Instant
    valid_until: Instant

    @model_validator(mode="after")
    def _ordered(self) -> Certification:
        if self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self

    def covers(self, instant: dt.datetime) -> bool:
        return self.valid_from <= instant < self.valid_until


class BankAccount(Record):
    bank_code: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")]
    branch_code: Annotated[str, StringConstraints(pattern=r"^[0-9]{3}$")]
    account_type: Literal["ordinary", "checking", "savings"]
    account_number: Annotated[str, StringConstraints(pattern=r"^[0-9]{7}$")]
    # Zengin files carry the holder in half-width katakana, digits, upper-case
    # letters and a few symbols; anything else could not be transmitted. At least one
    # of them is not a space: a blank name cannot be written (a settlement would fail).
    holder_kana: Annotated[
        str, StringConstraints(max_length=30, pattern=r"^[ｦ-ﾟ0-9A-Z ().,\-/]*[ｦ-ﾟ0-9A-Z().,\-/][ｦ-ﾟ0-9A-Z ().,\-/]*$")
    ]


class Merchant(Record):
    id: Id
    name: Label
    merchant_class: MerchantClass
    shotengai_id: Id | None = None
    ward_local: StrictBool = False
    ethical_certifications: Annotated[
        tuple[Certification, ...], Field(max_length=limits.CERTIFICATIONS_PER_MERCHANT_MAX)
    ] = ()
    fee_bp: Annotated[StrictInt, Field(ge=0, le=limits.RATE_BP_MAX)] = 0
    bank_account: BankAccount | None = None

    def certified_at(self, instant: dt.datetime) -> bool:
        return any(c.covers(instant) for c in self.ethical_certifications)

    @classmethod
    def from_stored(cls, record_json: str) -> Merchant:
        """A stored merchant record (`merchant.record_json`, `merchant_version.record_json`),
        without the fields only the store keeps (the masked payout account, SPEC §9.6)."""
        import json

        record = json.loads(record_json)
        for key in STORED_ONLY_MERCHANT_FIELDS:
            record.pop(key, None)
        return cls.model_validate(record)


# Kept in a stored merchant record beside the model's fields: the payout account as it may
# be shown (number cut to its last 4 digits) and when it was set, so that a change of
# account makes a new, different merchant version.
STORED_ONLY_MERCHANT_FIELDS = ("bank_account_masked",)


class Match(Record):
    """Conditions of a tier; every key given must hold, an empty match always holds."""

    merchant_classes: tuple[MerchantClass, ...] | None = None
    shotengai_member: StrictBool | None = None
    ethical_certified: StrictBool | None = None
    ward_local: StrictBool | None = None
    merchant_ids: tuple[Id, ...] | None = None

    def holds(self, merchant: Merchant, instant: dt.datetime | None) -> bool:
        """Whether `merchant` matches at `instant` (None: a match that ignores certification)."""
        if self.merchant_classes is not None and merchant.merchant_class not in self.merchant_classes:
            return False
        if self.shotengai_member is not None and (merchant.shotengai_id is not None) != self.shotengai_member:
            return False
        if self.ethical_certified is not None:
            assert instant is not None, "certification is held at an instant"
            if merchant.certified_at(instant) != self.ethical_certified:
                return False
        if self.ward_local is not None and merchant.ward_local != self.ward_local:
            return False
        return self.merchant_ids is None or merchant.id in self.merchant_ids


class Tier(Record):
    match: Match = Match()
    rate_bp: Annotated[StrictInt, Field(ge=0, le=limits.RATE_BP_MAX)]


class Credit(Record):
    schedule: Literal["immediate", "dekad"] = "immediate"
    delay_business_days: Annotated[StrictInt, Field(ge=0, le=limits.DELAY_BUSINESS_DAYS_MAX)] = 0


class Campaign(Record):
    id: Id
    name: Label
    funding_source: Annotated[str, StringConstraints(pattern=_FUNDING_PATTERN)] = "ward_general"
    starts_at: Instant
    ends_at: Instant
    tiers: Annotated[tuple[Tier, ...], Field(min_length=1, max_length=limits.TIERS_PER_CAMPAIGN_MAX)]
    item_tags: Annotated[tuple[Tag, ...], Field(max_length=limits.CAMPAIGN_TAGS_DISTINCT_MAX)] | None = None
    fixed_points: Points = 0
    min_base: Points = 0
    per_tx_cap: Points | None = None
    per_wallet_cap: Points | None = None
    per_wallet_cap_period: Literal["campaign", "month", "day"] = "campaign"
    budget: Points | None = None
    stacking: Literal["stack", "exclusive"] = "stack"
    priority: Annotated[StrictInt, Field(ge=-1_000_000, le=1_000_000)] = 0
    credit: Credit = Credit()
    validity_months: Annotated[StrictInt, Field(ge=1, le=limits.VALIDITY_MONTHS_MAX)] = 6
    # The server numbers versions; a record read from a vector file is version 1.
    version: Annotated[StrictInt, Field(ge=1, le=limits.VERSION_MAX)] = 1

    @model_validator(mode="after")
    def _window(self) -> Campaign:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    @property
    def exclusive(self) -> bool:
        return self.stacking == "exclusive"

    @property
    def funding_merchant(self) -> str | None:
        """The merchant whose payout funds the campaign's points (`merchant:<id>`); None: a ward fund."""
        kind, _, merchant_id = self.funding_source.partition(":")
        return merchant_id if kind == "merchant" else None

    def active_at(self, instant: dt.datetime) -> bool:
        return self.starts_at <= instant < self.ends_at


def campaign_order(campaign: Campaign) -> tuple[int, str]:
    """SPEC §4: campaigns are evaluated by (priority desc, id asc)."""
    return (-campaign.priority, campaign.id)


class Item(Record):
    amount: Annotated[StrictInt, Field(ge=0, le=limits.AMOUNT_YEN_MAX)]
    tags: Annotated[tuple[Tag, ...], Field(max_length=limits.TAGS_PER_ITEM_MAX)] = ()


def _tagged(schema: JsonDict) -> None:
    """JSON Schema of a `Transaction`: `type` is the discriminator, so a body must carry it (an
    untagged body is 422). Its default only serves Python code that builds the record itself."""
    properties, required = schema["properties"], schema.get("required", [])
    assert isinstance(properties, dict) and isinstance(properties["type"], dict) and isinstance(required, list)
    properties["type"].pop("default", None)
    schema["required"] = ["type", *required]


class Purchase(Record):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_tagged)

    type: Literal["purchase"] = "purchase"
    wallet_id: Id
    merchant_id: Id
    terminal_id: Id
    occurred_at: Instant
    amount: AmountYen
    points_used: Annotated[StrictInt, Field(ge=0, le=limits.AMOUNT_YEN_MAX)] = 0
    # Items, when given, are at least one and sum to the amount (SPEC §4): an empty list is
    # refused (`StoredPurchase` reads the ones an older build accepted).
    items: Annotated[tuple[Item, ...], Field(min_length=1, max_length=limits.ITEMS_PER_TRANSACTION_MAX)] | None = None
    receipt: Receipt | None = None  # the payment app's JWS (SPEC §9.1), checked by the API before rating

    @model_validator(mode="after")
    def _consistent(self) -> Purchase:
        if self.points_used > self.amount:
            raise ValueError("points_used must not exceed amount")
        # Empty only in a `StoredPurchase`: no items to sum, rated as a purchase without items.
        if self.items and sum(i.amount for i in self.items) != self.amount:
            raise ValueError("item amounts must sum to amount")
        return self

    @property
    def coin(self) -> int:
        return self.amount - self.points_used


class Refund(Record):
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_tagged)

    type: Literal["refund"] = "refund"
    original_id: Id
    amount: AmountYen
    occurred_at: Instant
    receipt: Receipt | None = None


Transaction = Annotated[Purchase | Refund, Field(discriminator="type")]


class StoredPurchase(Purchase):
    """A purchase as the ledger stored it (`payment.request_json`), read back by reconciliation.

    Builds before the empty item list was refused accepted `"items": []`, and a database may hold
    such a purchase, its request covered by the payment's hash: it stays readable as it is, and
    it is rated as a purchase without items (its tagged base is 0 either way, SPEC §4). Never the
    model of new input: requests and import lines are `Purchase`s."""

    items: Annotated[tuple[Item, ...], Field(max_length=limits.ITEMS_PER_TRANSACTION_MAX)] | None = None


# A stored request: what `Transaction` accepts, and what older builds accepted (`StoredPurchase`).
StoredTransaction = Annotated[StoredPurchase | Refund, Field(discriminator="type")]
