"""Each named limit of SPEC §2 (engine/limits.py) holds at its value and refuses one past it.

The limits are tested through the records that enforce them, because those
records are what the API validates request bodies with.
"""

from __future__ import annotations

import re

import pytest

from engine import limits
from engine.model import Campaign, Item, Merchant, Purchase, Refund, ValidationError


def purchase(**changes) -> dict:
    body = {
        "wallet_id": "W1",
        "merchant_id": "M1",
        "terminal_id": "T1",
        "occurred_at": "2026-12-15T12:00:00+09:00",
        "amount": 1000,
        "points_used": 0,
    }
    body.update(changes)
    return body


def refused(model, data: dict) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return str(caught.value)


def test_the_limits_are_those_of_the_spec():
    assert (limits.AMOUNT_YEN_MIN, limits.AMOUNT_YEN_MAX) == (1, 10_000_000)
    assert limits.ITEMS_PER_TRANSACTION_MAX == 100
    assert limits.TAGS_PER_ITEM_MAX == 8
    assert limits.TAG_PATTERN == r"^[a-z0-9_]{1,32}$"
    assert limits.ID_PATTERN == r"^[A-Za-z0-9_-]{1,64}$"
    assert limits.IDEMPOTENCY_KEY_LENGTH_MAX == 255
    assert limits.BATCH_TRANSACTIONS_MAX == 1_000
    assert limits.BODY_BYTES_MAX == 1024 * 1024
    assert limits.OCCURRED_AT_MAX_FUTURE_S == 5 * 60
    assert limits.OCCURRED_AT_MAX_PAST_DAYS == 7
    assert limits.RATE_BP_MAX == 10_000


def test_amount_at_min_and_max():
    assert Purchase.model_validate(purchase(amount=limits.AMOUNT_YEN_MIN)).amount == 1
    assert Purchase.model_validate(purchase(amount=limits.AMOUNT_YEN_MAX)).amount == 10_000_000


@pytest.mark.parametrize("amount", [limits.AMOUNT_YEN_MIN - 1, limits.AMOUNT_YEN_MAX + 1, -1])
def test_amount_past_its_limits(amount):
    assert "amount" in refused(Purchase, purchase(amount=amount))


def test_refund_amount_limits():
    refund = {"original_id": "P1", "occurred_at": "2026-12-15T12:00:00+09:00"}
    assert Refund.model_validate({**refund, "amount": limits.AMOUNT_YEN_MAX}).amount == limits.AMOUNT_YEN_MAX
    assert "amount" in refused(Refund, {**refund, "amount": limits.AMOUNT_YEN_MAX + 1})
    assert "amount" in refused(Refund, {**refund, "amount": 0})


def test_points_used_up_to_the_amount():
    assert Purchase.model_validate(purchase(amount=1000, points_used=1000)).coin == 0
    assert Purchase.model_validate(purchase(amount=1000, points_used=0)).coin == 1000
    assert "points_used" in refused(Purchase, purchase(amount=1000, points_used=1001))
    assert "points_used" in refused(Purchase, purchase(points_used=-1))
    big = limits.AMOUNT_YEN_MAX
    assert Purchase.model_validate(purchase(amount=big, points_used=big)).coin == 0
    assert "points_used" in refused(Purchase, purchase(amount=big, points_used=big + 1))


def items(count: int, tags_each: int = 0) -> list[dict]:
    return [{"amount": 10, "tags": [f"t{j}" for j in range(tags_each)]} for _ in range(count)]


def test_items_at_max_and_max_plus_one():
    n = limits.ITEMS_PER_TRANSACTION_MAX
    assert len(Purchase.model_validate(purchase(amount=10 * n, items=items(n))).items) == n
    assert "items" in refused(Purchase, purchase(amount=10 * (n + 1), items=items(n + 1)))


def test_tags_per_item_at_max_and_max_plus_one():
    n = limits.TAGS_PER_ITEM_MAX
    assert len(Purchase.model_validate(purchase(amount=10, items=items(1, n))).items[0].tags) == n
    assert "items.0.tags" in refused(Purchase, purchase(amount=10, items=items(1, n + 1)))
    assert "tags" in refused(Item, {"amount": 1, "tags": [f"t{j}" for j in range(n + 1)]})


@pytest.mark.parametrize(
    ("tag", "valid"),
    [
        ("a", True),
        ("a" * 32, True),
        ("setagaya_sodachi", True),
        ("fair_trade_2026", True),
        ("a" * 33, False),
        ("", False),
        ("Local", False),
        ("local-produce", False),
        ("local produce", False),
        ("ローカル", False),
        ("local\n", False),
    ],
)
def test_tag_pattern(tag, valid):
    body = {"amount": 1, "tags": [tag]}
    assert bool(re.fullmatch(limits.TAG_PATTERN.strip("^$"), tag)) == valid
    if valid:
        assert Item.model_validate(body).tags == (tag,)
    else:
        assert "tags.0" in refused(Item, body)


@pytest.mark.parametrize(
    ("identifier", "valid"),
    [
        ("M", True),
        ("M" * 64, True),
        ("a-Z_09", True),
        ("M" * 65, False),
        ("", False),
        ("M.1", False),
        ("M 1", False),
        ("M1\n", False),
        ("Ｍ1", False),
    ],
)
def test_id_pattern(identifier, valid):
    for field in ("wallet_id", "merchant_id", "terminal_id"):
        body = purchase(**{field: identifier})
        if valid:
            Purchase.model_validate(body)
        else:
            assert field in refused(Purchase, body)


def test_rate_bp_at_max_and_max_plus_one():
    campaign = {
        "id": "C",
        "name": "C",
        "starts_at": "2026-12-01T00:00:00+09:00",
        "ends_at": "2027-01-01T00:00:00+09:00",
        "tiers": [{"rate_bp": limits.RATE_BP_MAX}],
    }
    assert Campaign.model_validate(campaign).tiers[0].rate_bp == limits.RATE_BP_MAX
    campaign["tiers"] = [{"rate_bp": limits.RATE_BP_MAX + 1}]
    assert "rate_bp" in refused(Campaign, campaign)


def test_tiers_and_certifications_at_max_and_max_plus_one():
    campaign = {
        "id": "C",
        "name": "C",
        "starts_at": "2026-12-01T00:00:00+09:00",
        "ends_at": "2027-01-01T00:00:00+09:00",
        "tiers": [{"rate_bp": 1}] * limits.TIERS_PER_CAMPAIGN_MAX,
    }
    Campaign.model_validate(campaign)
    campaign["tiers"] = [{"rate_bp": 1}] * (limits.TIERS_PER_CAMPAIGN_MAX + 1)
    assert "tiers" in refused(Campaign, campaign)

    cert = {"scheme": "s", "valid_from": "2026-01-01T00:00:00+09:00", "valid_until": "2027-01-01T00:00:00+09:00"}
    merchant = {
        "id": "M",
        "name": "M",
        "merchant_class": "small",
        "ethical_certifications": [cert] * limits.CERTIFICATIONS_PER_MERCHANT_MAX,
    }
    Merchant.model_validate(merchant)
    merchant["ethical_certifications"] = [cert] * (limits.CERTIFICATIONS_PER_MERCHANT_MAX + 1)
    assert "ethical_certifications" in refused(Merchant, merchant)


def test_points_limit_on_caps_and_budgets():
    campaign = {
        "id": "C",
        "name": "C",
        "starts_at": "2026-12-01T00:00:00+09:00",
        "ends_at": "2027-01-01T00:00:00+09:00",
        "tiers": [{"rate_bp": 1}],
        "budget": limits.POINTS_MAX,
    }
    Campaign.model_validate(campaign)
    campaign["budget"] = limits.POINTS_MAX + 1
    assert "budget" in refused(Campaign, campaign)
