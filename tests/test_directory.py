"""engine/directory.py: the budget share's rounding, certifications valid now, who earns where."""

import datetime as dt

from engine.directory import merchant_entry, remaining_budget_percent, running
from engine.model import Campaign, Merchant
from engine.timeutil import TOKYO

NOW = dt.datetime(2026, 12, 10, 12, tzinfo=TOKYO)


def test_the_budget_share_is_whole_percent_rounded_down() -> None:
    assert remaining_budget_percent(None, 123) is None
    assert remaining_budget_percent(8000, 0) == 100
    assert remaining_budget_percent(8000, 1) == 99  # 99.9875 %: not yet 100
    assert remaining_budget_percent(8000, 7921) == 0  # 0.9875 % left shows 0
    assert remaining_budget_percent(8000, 7920) == 1
    assert remaining_budget_percent(8000, 8000) == 0
    assert remaining_budget_percent(3, 1) == 66
    assert remaining_budget_percent(0, 0) == 0


def _campaign(cid: str, **extra) -> Campaign:
    return Campaign.model_validate(
        {
            "id": cid,
            "name": cid,
            "starts_at": "2026-12-01T00:00:00+09:00",
            "ends_at": "2027-01-01T00:00:00+09:00",
            "tiers": [{"match": {"merchant_classes": ["small"]}, "rate_bp": 2000}, {"match": {}, "rate_bp": 0}],
            **extra,
        }
    )


def test_a_merchant_shows_certifications_valid_now_and_where_it_earns() -> None:
    merchant = Merchant.model_validate(
        {
            "id": "M1",
            "name": "八百屋",
            "merchant_class": "small",
            "ethical_certifications": [
                {
                    "scheme": "ended",
                    "valid_from": "2026-01-01T00:00:00+09:00",
                    "valid_until": "2026-12-10T12:00:00+09:00",
                },
                {
                    "scheme": "now",
                    "valid_from": "2026-12-10T12:00:00+09:00",
                    "valid_until": "2027-01-01T00:00:00+09:00",
                },
                {
                    "scheme": "later",
                    "valid_from": "2026-12-11T00:00:00+09:00",
                    "valid_until": "2027-01-01T00:00:00+09:00",
                },
            ],
        }
    )
    campaigns = running(
        [
            _campaign("C_LOCAL", item_tags=["local_produce"]),
            _campaign("C_ENDED", ends_at="2026-12-05T00:00:00+09:00"),
            _campaign("C_PLAIN", priority=5),
        ],
        NOW,
    )
    assert [c.id for c in campaigns] == ["C_PLAIN", "C_LOCAL"]
    entry = merchant_entry(merchant, campaigns, NOW)
    assert [c["scheme"] for c in entry["certifications"]] == ["now"]
    assert [c["campaign_id"] for c in entry["campaigns"]] == ["C_PLAIN", "C_LOCAL"]
    assert entry["local_produce"] is True
    large = merchant.model_copy(update={"id": "M2", "merchant_class": "large", "ethical_certifications": ()})
    other = merchant_entry(large, campaigns, NOW)
    assert other["campaigns"] == [] and other["local_produce"] is False, "a 0 bp tier earns nothing"
