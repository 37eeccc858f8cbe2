"""`GET /v1/campaigns/{id}/budget` (SPEC §6): budget, issued, clawed back, net, remaining,
burn over the last hour and day, and the exhaustion instant forecast from that burn."""

from __future__ import annotations

import datetime as dt

from engine.timeutil import to_us
from tests.finance.support import HOUR_US, Ward

DAY_US = 24 * HOUR_US


def _budget(ward: Ward, campaign_id: str, expect: int = 200) -> dict:
    return ward.get(f"/v1/campaigns/{campaign_id}/budget", expect=expect).json()


def _instant(text: str | None) -> int | None:
    return None if text is None else to_us(dt.datetime.fromisoformat(text))


def test_budget_burn_and_forecast(ward: Ward):
    ward.merchant("M001")
    ward.campaign("B", 1000, budget=10_000)
    ward.campaign("OPEN", 100)  # no budget
    ward.purchase("M001", "W1", "2026-12-10T08:00", 10_000)  # B 1000, OPEN 100
    p = ward.purchase("M001", "W2", "2026-12-10T20:45", 5_000)  # B 500, OPEN 50
    ward.purchase("M001", "W3", "2026-12-10T21:10", 3_000)  # B 300, OPEN 30
    r = ward.refund(p, "2026-12-10T21:20", 2_500)
    assert {c["campaign_id"]: c["points"] for c in r["clawbacks"]} == {"B": 250, "OPEN": 25}

    ward.at("2026-12-10T21:30")
    b = _budget(ward, "B")
    issued, clawed = 1_000 + 500 + 300, 250
    assert (b["campaign_id"], b["budget"], b["issued"], b["clawed_back"], b["net_issued"]) == (
        "B",
        10_000,
        issued,
        clawed,
        issued - clawed,
    )
    assert b["remaining"] == 10_000 - (issued - clawed) == 8_450 and b["exhausted"] is False
    # The last hour holds 20:45, 21:10 and the refund at 21:20; the day holds 08:00 too.
    assert b["burn_last_hour"] == 500 + 300 - 250 == 550
    assert b["burn_last_day"] == issued - clawed == 1_550
    as_of = _instant(b["as_of"])
    assert abs(as_of - to_us(dt.datetime.fromisoformat("2026-12-10T21:30:00+09:00"))) < 1_000_000
    # At 550 pt an hour, 8,450 pt last 15.36 hours.
    forecast = _instant(b["forecast_exhaustion_at"])
    assert abs(forecast - (as_of + 8_450 * HOUR_US // 550)) <= 1_000
    assert b["forecast_exhaustion_at"].endswith("+09:00")

    # A quiet hour: the forecast falls back to the last day's burn.
    ward.at("2026-12-11T07:00")
    b = _budget(ward, "B")
    assert (b["burn_last_hour"], b["burn_last_day"], b["remaining"]) == (0, 1_550, 8_450)
    as_of = _instant(b["as_of"])
    assert abs(_instant(b["forecast_exhaustion_at"]) - (as_of + 8_450 * DAY_US // 1_550)) <= 1_000

    # Nothing burnt for a day: no forecast.
    ward.at("2026-12-12T09:00")
    b = _budget(ward, "B")
    assert (b["burn_last_hour"], b["burn_last_day"], b["forecast_exhaustion_at"]) == (0, 0, None)
    assert b["remaining"] == 8_450

    # A campaign without a budget has nothing to exhaust.
    o = _budget(ward, "OPEN")
    assert (o["budget"], o["issued"], o["clawed_back"], o["net_issued"]) == (None, 180, 25, 155)
    assert o["remaining"] is None and o["exhausted"] is False and o["forecast_exhaustion_at"] is None


def test_an_exhausted_campaign_has_nothing_remaining(ward: Ward):
    ward.merchant("M001")
    ward.campaign("X", 1000, budget=700)
    ward.purchase("M001", "W1", "2026-12-10T10:00", 5_000)  # 500
    second = ward.purchase("M001", "W2", "2026-12-10T10:30", 5_000)  # 500, cut to the 200 left
    assert [(a["points"], a["capped_by"]) for a in second["awards"]] == [(200, "budget")]
    assert ward.purchase("M001", "W3", "2026-12-10T10:40", 5_000)["awards"] == []
    ward.at("2026-12-10T11:00")
    b = _budget(ward, "X")
    assert (b["budget"], b["issued"], b["clawed_back"], b["net_issued"]) == (700, 700, 0, 700)
    assert b["remaining"] == 0 and b["exhausted"] is True and b["forecast_exhaustion_at"] is None
    assert b["burn_last_hour"] == 700
    # A clawback gives points back to the budget.
    ward.refund(second, "2026-12-10T11:30", 2_500)
    ward.at("2026-12-10T11:40")
    b = _budget(ward, "X")
    assert (b["issued"], b["clawed_back"], b["net_issued"], b["remaining"], b["exhausted"]) == (
        700,
        100,
        600,
        100,
        False,
    )
    # The last hour (since 10:40) holds only the clawback: a negative burn, so the day's rate forecasts.
    assert (b["burn_last_hour"], b["burn_last_day"]) == (-100, 600)
    assert abs(_instant(b["forecast_exhaustion_at"]) - (_instant(b["as_of"]) + 100 * DAY_US // 600)) <= 1_000


def test_budget_is_for_finance(ward: Ward):
    ward.merchant("M001")
    ward.campaign("B", 1000, budget=10_000)
    assert _budget(ward, "NOPE", expect=404)["code"] == "not_found"
    for headers in (ward.admin, ward.terminal_keys["TM001"], {}):
        assert ward.client.get("/v1/campaigns/B/budget", headers=headers).status_code in (401, 403)
    b = _budget(ward, "B")
    assert (b["issued"], b["remaining"], b["burn_last_hour"], b["forecast_exhaustion_at"]) == (0, 10_000, 0, None)
