"""`POST /v1/campaigns/{id}/simulate` (issue 6, deliverable 2): a draft over a historical window.

The expected figures are computed independently: the test rates what it
posted with `engine.rating.rate` over pydantic events, one acceptance at a
time, under the configuration it knows was in force at each acceptance
(campaign and merchant records as the test set them), with the draft in
place of the live campaign. The simulation must agree and write nothing.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

from sqlalchemy import inspect, text

from engine.model import Campaign, Merchant, Purchase, Refund
from engine.rating import RatingState, build_catalog, rate
from engine.timeutil import TOKYO
from tests.finance.support import Ward, jst
from tests.finance_sim import history

DRAFT = {
    "id": "PB",
    "name": "draft",
    "starts_at": jst("2026-11-01T00:00").isoformat(),
    "ends_at": jst("2027-06-01T00:00").isoformat(),
    "budget": 1_500,
    "tiers": [{"match": {"merchant_classes": ["small"]}, "rate_bp": 800}],
}
NEW = {
    "id": "NEW",
    "name": "new",
    "starts_at": jst("2026-11-01T00:00").isoformat(),
    "ends_at": jst("2027-06-01T00:00").isoformat(),
    "tiers": [{"match": {}, "rate_bp": 300}],
    "per_tx_cap": 100,
}


def _counts(ward: Ward) -> dict[str, int]:
    with ward.engine.connect() as c:
        return {
            t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in inspect(ward.engine).get_table_names()
        }


def _independent(ward: Ward, built: dict, draft: Campaign, start: str, end: str) -> dict:
    """Rate the window's payments one by one with the per-event encoder, eras as the test made them."""
    live_before = [ward.config.get_campaign("PB", 1), ward.config.get_campaign("TAGGED", 1)]
    live_after = [ward.config.get_campaign("PB", 2), ward.config.get_campaign("TAGGED", 1)]
    m1 = Merchant.model_validate({"id": "M001", "name": "Shop M001", "merchant_class": "small", "shotengai_id": "S01"})
    m2_before = Merchant.model_validate({"id": "M002", "name": "Shop M002", "merchant_class": "semi_large"})
    m2_after = m2_before.model_copy(update={"merchant_class": "small"})
    lo, hi = jst(start), jst(end)
    state = RatingState()
    points = defaultdict(int)
    by_class = defaultdict(lambda: defaultdict(int))
    by_day = defaultdict(lambda: defaultdict(int))
    capped = defaultdict(int)
    spend = 0
    exhausted = None
    in_window = set()
    for i, answer in enumerate(built["sent"]):
        occurred = dt.datetime.fromisoformat(answer["occurred_at"])
        if not lo <= occurred < hi:
            continue
        after = i >= 3  # the versions changed after the third purchase
        live = live_after if after else live_before
        campaigns = [c for c in live if c.id != draft.id] + [draft]
        merchants = [m1, m2_after if after else m2_before]
        if answer["type"] == "purchase":
            event = Purchase(
                wallet_id=answer["wallet_id"],
                merchant_id=answer["merchant_id"],
                terminal_id=answer["terminal_id"],
                occurred_at=occurred,
                amount=answer["amount"],
                items=_items(ward, answer["id"]),
            )
            in_window.add(answer["id"])
        elif answer["original_id"] in in_window:
            event = Refund(original_id=answer["original_id"], amount=answer["amount"], occurred_at=occurred)
        else:
            continue
        [outcome] = rate(build_catalog(merchants, campaigns), [(answer["id"], event)], state)
        merchant_class = {m.id: m.merchant_class for m in merchants}[answer["merchant_id"]]
        day = str(occurred.astimezone(TOKYO).date())
        for award in outcome.awards:
            points[award.campaign_id] += award.points
            by_class[merchant_class][award.campaign_id] += award.points
            by_day[day][award.campaign_id] += award.points
            if award.capped_by:
                capped[(award.campaign_id, award.capped_by)] += 1
            if award.campaign_id == draft.id:
                spend += award.points
                if draft.budget is not None and spend >= draft.budget and exhausted is None:
                    exhausted = occurred
        for claw in outcome.clawbacks:
            points[claw.campaign_id] -= claw.points
            by_class[merchant_class][claw.campaign_id] -= claw.points
            by_day[day][claw.campaign_id] -= claw.points
            if claw.campaign_id == draft.id:
                spend -= claw.points
    return {
        "points": dict(points),
        "by_class": {k: {c: v for c, v in d.items() if v} for k, d in by_class.items()},
        "by_day": {k: {c: v for c, v in d.items() if v} for k, d in by_day.items()},
        "capped": dict(capped),
        "exhausted": exhausted,
    }


def _items(ward: Ward, payment_id: str):
    from sqlalchemy.orm import Session

    from engine.store.models import PaymentRow

    with Session(ward.engine) as s:
        import json

        return json.loads(s.get(PaymentRow, payment_id).request_json).get("items")


def _simulate(ward: Ward, draft: dict, start: str, end: str, headers=None, expect: int = 200) -> dict:
    r = ward.client.post(
        f"/v1/campaigns/{draft['id']}/simulate",
        headers=headers or ward.finance,
        json={"campaign": draft, "from": jst(start).isoformat(), "to": jst(end).isoformat()},
    )
    assert r.status_code == expect, r.text
    return r.json()


def _check(ward: Ward, built: dict, draft: dict, start: str, end: str) -> dict:
    before = _counts(ward)
    got = _simulate(ward, draft, start, end)
    assert _counts(ward) == before  # nothing written
    want = _independent(ward, built, Campaign.model_validate(draft), start, end)
    assert {cid: v["points_net"] for cid, v in got["by_campaign"].items() if v["points_net"]} == {
        cid: v for cid, v in want["points"].items() if v
    }
    assert got["by_merchant_class"] == {k: v for k, v in want["by_class"].items() if v} | {
        k: {} for k in got["by_merchant_class"] if k not in want["by_class"] or not want["by_class"][k]
    }
    assert {d: v for d, v in got["by_day"].items() if v} == {d: v for d, v in want["by_day"].items() if v}
    assert {(cid, cap): n for cid, v in got["by_campaign"].items() for cap, n in v["capped"].items() if n} == want[
        "capped"
    ]
    exhausted = want["exhausted"]
    assert got["budget_exhausted_at"] == (exhausted.astimezone(TOKYO).isoformat() if exhausted else None)
    return got


def test_a_draft_replacing_a_live_campaign_equals_an_independent_rating(ward: Ward):
    built = history.build(ward)
    got = _check(ward, built, DRAFT, "2026-12-01T00:00", "2026-12-04T00:00")
    assert got["budget_exhausted_at"] is not None  # the draft's smaller budget runs out in the window
    assert got["by_campaign"]["PB"]["capped"]["budget"] == 1
    assert got["transactions"] == {"purchases": 6, "refunds": 1, "declined": 0}


def test_a_new_draft_joins_the_live_campaigns_and_a_window_cuts_the_history(ward: Ward):
    built = history.build(ward)
    got = _check(ward, built, NEW, "2026-12-01T11:30", "2026-12-03T00:00")
    # The refund's purchase (10:00 on the 1st) is outside the window, so the refund is too.
    assert got["transactions"] == {"purchases": 3, "refunds": 0, "declined": 0}
    assert got["budget_exhausted_at"] is None
    assert got["by_campaign"]["NEW"]["awards"] == 3


def test_bad_drafts_are_named_and_only_admin_and_finance_may_simulate(ward: Ward):
    history.build(ward)
    bad = {**DRAFT, "tiers": [{"match": {}, "rate_bp": -5}]}
    problem = _simulate(ward, bad, "2026-12-01T00:00", "2026-12-02T00:00", expect=422)
    assert problem["code"] == "invalid_request"
    assert any(e["loc"][:3] == ["body", "campaign", "tiers"] for e in problem["errors"]), problem
    r = ward.client.post(
        "/v1/campaigns/OTHER/simulate",
        headers=ward.admin,
        json={
            "campaign": DRAFT,
            "from": jst("2026-12-01T00:00").isoformat(),
            "to": jst("2026-12-02T00:00").isoformat(),
        },
    )
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "campaign", "id"], r.text
    problem = _simulate(ward, DRAFT, "2026-12-02T00:00", "2026-12-01T00:00", expect=422)
    assert problem["errors"][0]["loc"] == ["body", "to"]
    problem = _simulate(
        ward, {k: v for k, v in DRAFT.items() if k != "tiers"}, "2026-12-01T00:00", "2026-12-02T00:00", expect=422
    )
    assert any("tiers" in e["loc"] for e in problem["errors"]), problem
    assert _simulate(ward, DRAFT, "2026-12-01T00:00", "2026-12-04T00:00", headers=ward.admin)["campaign_id"] == "PB"
    _simulate(ward, DRAFT, "2026-12-01T00:00", "2026-12-04T00:00", headers=ward.terminal_keys["TM001"], expect=403)


def test_the_history_cache_tops_up_and_equals_a_cold_load(ward: Ward):
    """Payments accepted after a simulation (a refund of an early purchase, a new purchase) are
    picked up by the next one; the warm answer equals a cold one from a fresh cache."""
    from engine.store import simulate

    built = history.build(ward)
    window = ("2026-11-30T00:00", "2026-12-31T00:00")
    _simulate(ward, DRAFT, *window)  # fills the cache
    ward.refund(built["first"], "2026-12-03T12:00", 1_000)
    ward.clock.set(ward.clock.now_us() + 60_000_000)
    warm = _simulate(ward, DRAFT, *window)
    simulate._caches.clear()
    cold = _simulate(ward, DRAFT, *window)
    for answer in (warm, cold):
        answer.pop("timings_s")
    assert warm == cold
    assert warm["transactions"]["refunds"] == 2
