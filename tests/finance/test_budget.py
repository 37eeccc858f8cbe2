"""`GET /v1/campaigns/{id}/budget` (SPEC §6): budget, issued, clawed back, net, remaining,
burn over the last hour and day, and the exhaustion instant forecast from that burn."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from engine.store import db, finance
from engine.store.models import CampaignBurnRow, PostingRow
from engine.timeutil import TOKYO, to_us
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


def _from_postings(ward: Ward, campaign_id: str, since: int | None) -> tuple[int, int]:
    """Issued and clawed back at or after `since`, summed from every posting (what the budget
    read before its hour meters)."""
    issued = clawed = 0
    with Session(ward.engine) as session:
        for p in session.execute(select(PostingRow).where(PostingRow.campaign_id == campaign_id)).scalars():
            if since is not None and p.posted_at_us < since:
                continue
            if p.reason in ("award", "grant"):
                issued += p.amount
            elif p.reason == "clawback":
                clawed += p.amount
    return issued, clawed


def _by_day_from_postings(ward: Ward, campaign_id: str) -> list[dict]:
    days: dict[str, list[int]] = {}
    with Session(ward.engine) as session:
        for p in session.execute(select(PostingRow).where(PostingRow.campaign_id == campaign_id)).scalars():
            if p.reason not in ("award", "grant", "clawback"):
                continue
            day = dt.datetime.fromtimestamp(p.posted_at_us / 1e6, TOKYO).date().isoformat()
            days.setdefault(day, [0, 0])[p.reason == "clawback"] += p.amount
    return [{"day": d, "issued": i, "clawed_back": c, "net": i - c} for d, (i, c) in sorted(days.items())]


def _burn_history(ward: Ward) -> list[int]:
    """Purchases, refunds and grants of campaign B over three days, several on the hour and a
    microsecond either side of it; the instants postings were made at."""
    ward.merchant("M001")
    ward.campaign("B", 1000, budget=10_000_000)
    rng = random.Random(11)
    stamps = [f"2026-12-10T{h:02d}:{m:02d}:{s:02d}" for h, m, s in [(9, 0, 0), (9, 59, 59), (10, 0, 0)]]
    stamps += [
        f"2026-12-{d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00" for d in (10, 11, 12) for _ in range(8)
    ]
    sales = []
    for n, stamp in enumerate(sorted(stamps)):
        sale = ward.purchase("M001", f"W{n % 5}", stamp, rng.randrange(1_000, 50_000), accepted=stamp)
        sales.append(sale)
        if n % 4 == 1:
            refunded = sales[rng.randrange(len(sales))]
            ward.clock.set(ward.now_us() + 1)  # a microsecond after: another hour when the sale was on one's edge
            r = ward.client.post(
                "/v1/transactions",
                json=ward.payment_app.sign_body(
                    {
                        "type": "refund",
                        "original_id": refunded["id"],
                        "amount": 500,
                        "occurred_at": refunded["occurred_at"],
                    }
                ),
                headers={**ward.terminal_keys["TM001"], "Idempotency-Key": f"refund-{n}"},
            )
            assert r.status_code in (201, 422), r.text
        if n % 6 == 2:
            r = ward.client.post(
                "/v1/grants",
                json={"wallet_id": f"W{n}", "campaign_id": "B", "points": 10 + n, "reason": "energy saving"},
                headers={**ward.finance, "Idempotency-Key": f"grant-{n}"},
            )
            assert r.status_code == 201, r.text
    # A batch: its postings go in as one COPY on PostgreSQL, a statement the trigger sums at once.
    ward.at("2026-12-12T23:59:59")
    items = [
        ward.payment_app.sign_body(
            {
                "type": "purchase",
                "wallet_id": f"WB{n}",
                "merchant_id": "M001",
                "terminal_id": "TM001",
                "occurred_at": "2026-12-12T23:59:00+09:00",
                "amount": 1_000 + n,
                "points_used": 0,
            }
        )
        for n in range(80)
    ]
    r = ward.client.post(
        "/v1/transactions/batch",
        json={"transactions": [dict(item, idempotency_key=f"batch-{n}") for n, item in enumerate(items)]},
        headers=ward.terminal_keys["TM001"],
    )
    assert r.status_code == 200 and [a["status"] for a in r.json()["results"]] == [201] * 80, r.text
    with Session(ward.engine) as session:
        return sorted(set(session.execute(select(PostingRow.posted_at_us)).scalars()))


def test_the_burn_from_hour_meters_is_the_burn_of_the_postings(ward: Ward):
    """The totals, the last hour's and day's burn and the burn by day, read from the hour meters
    and the part hour's postings, equal the sums of the postings themselves at any instant:
    on each posting's instant, a microsecond either side, an hour and a day after."""
    stamps = _burn_history(ward)
    with Session(ward.engine) as session:
        assert session.execute(select(func.count()).select_from(CampaignBurnRow)).scalar_one() > 10
    nows = sorted({s + d for s in stamps for d in (-1, 0, 1, HOUR_US - 1, HOUR_US, HOUR_US + 1, DAY_US, DAY_US + 1)})
    total = _from_postings(ward, "B", None)
    assert total[0] > 0 and total[1] > 0
    for now in nows:
        b = finance.budget(ward.ledger, "B", now=now)
        hour = _from_postings(ward, "B", now - HOUR_US)
        day = _from_postings(ward, "B", now - DAY_US)
        assert (b["issued"], b["clawed_back"]) == total, now
        assert (b["burn_last_hour"], b["burn_last_day"]) == (hour[0] - hour[1], day[0] - day[1]), now
    assert finance.burn_by_day(ward.ledger, "B") == _by_day_from_postings(ward, "B")
    assert len(finance.burn_by_day(ward.ledger, "B")) == 3
    assert ward.reconcile()["checks"]["burn_meters_match"] == {"pass": True, "rows": []}


def test_the_hour_meters_are_filled_from_the_postings_by_the_migration(ward: Ward):
    """Migration `20261217_campaign_burn` fills the meters from the postings made before it:
    downgraded (the table dropped) and upgraded again, the same meters, every check passing."""
    _burn_history(ward)
    with Session(ward.engine) as session:
        before = sorted(tuple(r) for r in session.execute(select(CampaignBurnRow.__table__)))
    budget = finance.budget(ward.ledger, "B")
    ward.engine.dispose()
    db.downgrade(ward.settings.database_url, "20261216_customer_code")
    with ward.engine.connect() as c:
        assert "campaign_burn" not in inspect(c).get_table_names()
    db.upgrade(ward.settings.database_url)
    with Session(ward.engine) as session:
        assert sorted(tuple(r) for r in session.execute(select(CampaignBurnRow.__table__))) == before
    assert finance.budget(ward.ledger, "B", now=_instant(budget["as_of"])) == budget
    assert ward.reconcile()["ok"] is True
