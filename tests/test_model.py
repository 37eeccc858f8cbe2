"""Merchant and campaign records refuse bad input with an error that names the field.

The records are the HTTP request bodies too, so every case here is also what
an administrator posting a campaign would see. Records are built from plain
JSON-like dicts, the way the vector files and the API hand them over.
"""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from engine.model import Campaign, Merchant, Purchase, Refund, StoredPurchase, ValidationError, window_bound_us
from engine.timeutil import to_us

MERCHANT = {
    "id": "M_SANCHA_01",
    "name": "三茶八百屋",
    "merchant_class": "small",
    "shotengai_id": "S_SANCHA",
    "ward_local": True,
    "ethical_certifications": [
        {
            "scheme": "setagaya_ethical",
            "valid_from": "2026-11-01T00:00:00+09:00",
            "valid_until": "2027-04-01T00:00:00+09:00",
        }
    ],
}

CAMPAIGN = {
    "id": "PB_2026_12",
    "name": "ポイントバック 12月",
    "funding_source": "ward_general",
    "starts_at": "2026-12-01T00:00:00+09:00",
    "ends_at": "2027-01-01T00:00:00+09:00",
    "tiers": [
        {"match": {"merchant_classes": ["small"], "shotengai_member": True}, "rate_bp": 2000},
        {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 1000},
    ],
    "item_tags": None,
    "fixed_points": 0,
    "min_base": 0,
    "per_tx_cap": 3000,
    "per_wallet_cap": 10000,
    "per_wallet_cap_period": "month",
    "budget": 1_000_000,
    "stacking": "stack",
    "priority": 10,
    "credit": {"schedule": "immediate", "delay_business_days": 0},
    "validity_months": 6,
}


def with_change(record: dict, path: tuple, value) -> dict:
    """A deep copy of `record` with the value at `path` replaced (or removed when value is ...)."""
    changed = copy.deepcopy(record)
    target = changed
    for step in path[:-1]:
        target = target[step]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return changed


def error_text(model, data: dict) -> str:
    """Every error's location and message, for asserting that the field is named."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return "\n".join(".".join(map(str, e["loc"])) + ": " + e["msg"] for e in caught.value.errors())


def test_the_examples_are_valid():
    merchant = Merchant.model_validate(MERCHANT)
    campaign = Campaign.model_validate(CAMPAIGN)
    assert merchant.shotengai_id == "S_SANCHA" and campaign.tiers[0].rate_bp == 2000


CAMPAIGN_CASES = [
    ("empty tiers", ("tiers",), [], "tiers"),
    ("rate_bp below 0", ("tiers", 0, "rate_bp"), -1, "tiers.0.rate_bp"),
    ("rate_bp above 10000", ("tiers", 1, "rate_bp"), 10_001, "tiers.1.rate_bp"),
    ("rate_bp as a float", ("tiers", 0, "rate_bp"), 2000.0, "tiers.0.rate_bp"),
    ("rate_bp as a string", ("tiers", 0, "rate_bp"), "2000", "tiers.0.rate_bp"),
    ("negative per_tx_cap", ("per_tx_cap",), -1, "per_tx_cap"),
    ("negative per_wallet_cap", ("per_wallet_cap",), -5, "per_wallet_cap"),
    ("negative budget", ("budget",), -1, "budget"),
    ("negative fixed_points", ("fixed_points",), -1, "fixed_points"),
    ("negative min_base", ("min_base",), -1, "min_base"),
    ("ends_at equal to starts_at", ("ends_at",), "2026-12-01T00:00:00+09:00", "ends_at"),
    ("ends_at equal to starts_at in another offset", ("ends_at",), "2026-11-30T15:00:00Z", "ends_at"),
    ("ends_at before starts_at", ("ends_at",), "2026-11-01T00:00:00+09:00", "ends_at"),
    ("starts_at without an offset", ("starts_at",), "2026-12-01T00:00:00", "starts_at"),
    ("unknown match key", ("tiers", 0, "match", "merchant_class"), ["small"], "merchant_class"),
    ("unknown tier key", ("tiers", 0, "rate"), 100, "tiers.0.rate"),
    ("unknown field", ("budget_yen",), 100, "budget_yen"),
    ("unknown credit field", ("credit", "delay_days"), 1, "credit.delay_days"),
    ("unknown merchant class in a match", ("tiers", 0, "match", "merchant_classes"), ["medium"], "merchant_classes"),
    ("match bool given as a string", ("tiers", 0, "match", "shotengai_member"), "true", "shotengai_member"),
    ("upper-case tag", ("item_tags",), ["Local_Produce"], "item_tags.0"),
    ("tag with a hyphen", ("item_tags",), ["local_produce", "fair-trade"], "item_tags.1"),
    ("empty tag", ("item_tags",), [""], "item_tags.0"),
    ("tag with a trailing newline", ("item_tags",), ["local\n"], "item_tags.0"),
    ("tag of 33 characters", ("item_tags",), ["a" * 33], "item_tags.0"),
    ("id with a space", ("id",), "PB 2026", "id"),
    ("id of 65 characters", ("id",), "C" * 65, "id"),
    ("empty id", ("id",), "", "id"),
    ("unknown funding source", ("funding_source",), "ward_secret_fund", "funding_source"),
    ("unknown stacking", ("stacking",), "stacked", "stacking"),
    ("unknown wallet cap period", ("per_wallet_cap_period",), "week", "per_wallet_cap_period"),
    ("unknown credit schedule", ("credit", "schedule"), "weekly", "credit.schedule"),
    ("validity of 0 months", ("validity_months",), 0, "validity_months"),
    ("missing tiers", ("tiers",), ..., "tiers"),
]


@pytest.mark.parametrize(
    ("path", "value", "named"), [c[1:] for c in CAMPAIGN_CASES], ids=[c[0] for c in CAMPAIGN_CASES]
)
def test_campaign_errors_name_the_field(path, value, named):
    assert named in error_text(Campaign, with_change(CAMPAIGN, path, value))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("tiers", 0, "rate_bp"), 0),
        (("tiers", 0, "rate_bp"), 10_000),
        (("per_tx_cap",), 0),
        (("budget",), 0),
        (("budget",), None),
        (("item_tags",), ["a" * 32, "local_produce", "z9_"]),
        (("id",), "C" * 64),
        (("tiers",), [{"match": {}, "rate_bp": 500}]),
        (("tiers",), [{"rate_bp": 500}]),
        (("funding_source",), "merchant:M_SANCHA_01"),
    ],
)
def test_campaign_edges_that_are_valid(path, value):
    Campaign.model_validate(with_change(CAMPAIGN, path, value))


MERCHANT_CASES = [
    ("unknown class", ("merchant_class",), "medium", "merchant_class"),
    ("unknown field", ("category",), "food", "category"),
    ("ward_local as a number", ("ward_local",), 1, "ward_local"),
    ("shotengai id with a slash", ("shotengai_id",), "S/SANCHA", "shotengai_id"),
    ("id with Japanese characters", ("id",), "三茶01", "id"),
    ("empty name", ("name",), "", "name"),
    (
        "certification ending when it starts",
        ("ethical_certifications", 0, "valid_until"),
        "2026-11-01T00:00:00+09:00",
        "valid_until",
    ),
    (
        "certification without an offset",
        ("ethical_certifications", 0, "valid_from"),
        "2026-11-01T00:00:00",
        "ethical_certifications.0.valid_from",
    ),
    ("unknown certification field", ("ethical_certifications", 0, "issuer"), "ward", "ethical_certifications.0.issuer"),
    ("negative fee", ("fee_bp",), -1, "fee_bp"),
]


@pytest.mark.parametrize(
    ("path", "value", "named"), [c[1:] for c in MERCHANT_CASES], ids=[c[0] for c in MERCHANT_CASES]
)
def test_merchant_errors_name_the_field(path, value, named):
    assert named in error_text(Merchant, with_change(MERCHANT, path, value))


def test_certification_is_half_open():
    merchant = Merchant.model_validate(MERCHANT)
    cert = merchant.ethical_certifications[0]
    assert merchant.certified_at(cert.valid_from)
    assert not merchant.certified_at(cert.valid_until)


def test_records_are_immutable():
    campaign = Campaign.model_validate(CAMPAIGN)
    with pytest.raises(ValidationError):
        campaign.budget = 5  # type: ignore[misc]


PURCHASE = {
    "type": "purchase",
    "wallet_id": "W123",
    "merchant_id": "M001",
    "terminal_id": "T001",
    "occurred_at": "2026-12-01T10:15:00+09:00",
    "amount": 3300,
    "points_used": 0,
    "items": [{"amount": 1100, "tags": ["ethical"]}, {"amount": 2200, "tags": ["local_produce"]}],
}


def test_the_spec_purchase_example_is_valid():
    purchase = Purchase.model_validate(PURCHASE)
    assert purchase.coin == 3300


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("items", 0, "amount"), 1000, "amount"),  # items no longer sum to the amount
        (("items", 0, "amount"), -1, "items.0.amount"),
        (("items", 1, "tags"), ["Local"], "items.1.tags.0"),
        (("amount",), "3300", "amount"),
        (("amount",), True, "amount"),
        (("wallet_id",), "W 123", "wallet_id"),
        (("occurred_at",), "2026-12-01T10:15:00", "occurred_at"),
        (("id",), "P1", "id"),
    ],
)
def test_purchase_errors_name_the_field(path, value, named):
    assert named in error_text(Purchase, with_change(PURCHASE, path, value))


def test_an_empty_item_list_is_refused_and_read_back_when_stored():
    """SPEC §4: items, when given, sum to the amount, so an empty list is refused, naming `items`;
    a stored request an older build accepted with one is read as it was (`StoredPurchase`), and
    its other rules still hold."""
    empty = with_change(PURCHASE, ("items",), [])
    assert "items: Tuple should have at least 1 item" in error_text(Purchase, empty)
    stored = StoredPurchase.model_validate(empty)
    assert stored.items == () and json.loads(stored.model_dump_json())["items"] == []
    assert "must sum to amount" in error_text(StoredPurchase, with_change(PURCHASE, ("items", 0, "amount"), 1000))
    assert "must not exceed amount" in error_text(StoredPurchase, with_change(empty, ("points_used",), 3301))


def test_refund_needs_its_original():
    refund = {"type": "refund", "original_id": "P1", "amount": 1100, "occurred_at": "2026-12-01T11:00:00+09:00"}
    assert Refund.model_validate(refund).amount == 1100
    assert "original_id" in error_text(Refund, with_change(refund, ("original_id",), ...))
    assert "amount" in error_text(Refund, with_change(refund, ("amount",), 0))


# -- strict input (SPEC §2): instants are RFC 3339 strings, patterns match whole values -----


@pytest.mark.parametrize(
    "value",
    [
        1764600000,
        1764600000.5,
        "1764600000",
        True,
        "2026-12-01",
        "2026-12-01T10:15:00",
        "2026-12-01T10:15:00+0900",
        "2026-12-01T10:15:00+09:00\n",
        " 2026-12-01T10:15:00+09:00",
        "9999-12-31T23:59:59-23:59",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00+09:00",
        "10000-01-01T00:00:00Z",
    ],
    ids=[
        "int",
        "float",
        "numeric_string",
        "bool",
        "date_only",
        "no_offset",
        "offset_without_colon",
        "trailing_newline",
        "leading_space",
        "overflows_in_utc",
        "overflows_in_tokyo",
        "underflows_in_utc",
        "five_digit_year",
    ],
)
def test_instants_are_rfc3339_strings_within_the_named_years(value):
    assert "occurred_at" in error_text(Purchase, with_change(PURCHASE, ("occurred_at",), value))
    assert "starts_at" in error_text(Campaign, with_change(CAMPAIGN, ("starts_at",), value))
    with pytest.raises(ValidationError):
        Purchase.model_validate_json(json.dumps(with_change(PURCHASE, ("occurred_at",), value)))


@pytest.mark.parametrize(
    "value",
    [
        "2026-12-01T10:15:00Z",
        "2026-12-01t10:15:00z",
        "2026-12-01T10:15:00.123456789+09:00",
        "2026-12-01T10:15:00-05:30",
        "9999-12-31T23:59:59+09:00",
        "0001-01-01T00:00:00Z",
    ],
)
def test_rfc3339_instants_in_any_offset_are_accepted(value):
    assert Purchase.model_validate(with_change(PURCHASE, ("occurred_at",), value)).occurred_at.tzinfo is not None
    assert Purchase.model_validate_json(json.dumps(with_change(PURCHASE, ("occurred_at",), value))).occurred_at


def test_instants_built_in_python_are_accepted_when_aware():
    at = dt.datetime(2026, 12, 1, 10, 15, tzinfo=dt.timezone(dt.timedelta(hours=9)))
    assert Purchase.model_validate({**PURCHASE, "occurred_at": at}).occurred_at == at
    assert "occurred_at" in error_text(Purchase, {**PURCHASE, "occurred_at": at.replace(tzinfo=None)})


@pytest.mark.parametrize("field", ["wallet_id", "merchant_id", "terminal_id"])
def test_ids_with_a_trailing_newline_are_refused(field):
    assert field in error_text(Purchase, with_change(PURCHASE, (field,), PURCHASE[field] + "\n"))
    assert field in error_text(Purchase, with_change(PURCHASE, (field,), PURCHASE[field] + "\x00"))


@pytest.mark.parametrize(
    ("text", "floored", "rounded_up"),
    [
        ("2026-12-01T10:15:00+09:00", 0, 0),
        ("2026-12-01T10:15:00.5+09:00", 500_000, 500_000),
        ("2026-12-01T10:15:00.123456000+09:00", 123_456, 123_456),  # zeros past the microsecond: as it is
        ("2026-12-01T10:15:00.123456001+09:00", 123_456, 123_457),  # a nanosecond past it
        ("2026-12-01T10:15:00.0000009+09:00", 0, 1),
        ("2026-12-01T10:15:00.999999999+09:00", 999_999, 1_000_000),  # into the next second
    ],
)
def test_a_window_bound_rounds_up_to_the_microsecond_a_record_floors(text, floored, rounded_up):
    """ROUNDING: a window's bound finer than a microsecond rounds up (`WindowBound`); a record's
    instant floors (pydantic drops the digits past the sixth)."""
    second_us = window_bound_us("2026-12-01T10:15:00+09:00")
    assert window_bound_us(text) - second_us == rounded_up
    assert to_us(Purchase.model_validate({**PURCHASE, "occurred_at": text}).occurred_at) - second_us == floored


def test_a_window_bound_is_an_instant_within_the_named_years():
    for text in ("yesterday", "2026-12-01", "2026-12-01T10:15+09:00", "9999-12-31T23:59:59.9999991Z", "1764600000"):
        with pytest.raises(ValueError):
            window_bound_us(text)
