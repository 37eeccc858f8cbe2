"""The fast full re-rate (issue 6, deliverable 7): clean history passes, each tamper is named.

The history crosses catalog eras (a campaign version and a merchant version
change between purchases, a grant counts against a budget) and holds items,
a wallet cap, a refund and a budget that runs out; it is posted through the
HTTP API, so through `Ledger.submit`. Each tamper edits one row behind the
engine's back and the re-rate must name exactly the payments it touches.
"""

from __future__ import annotations

import json

from sqlalchemy import text

from engine.store import rerate
from tests.finance.support import Ward
from tests.finance.test_reconciliation import _tamper
from tests.finance_sim import history


def _named(report: dict) -> dict[str, set]:
    out: dict[str, set] = {}
    for row in report["mismatches"]:
        out.setdefault(row["problem"], set()).add(row["payment_id"])
    return out


def _built(ward: Ward) -> dict:
    def grant():
        # Granted before the purchase that meets PB's budget, which is then smaller by the grant.
        r = ward.client.post(
            "/v1/grants",
            headers={**ward.finance, "Idempotency-Key": "g1"},
            json={"wallet_id": "W9", "campaign_id": "PB", "points": 100, "reason": "energy saving"},
        )
        assert r.status_code == 201, r.text

    built = history.build(ward, grant)
    built["sent"].append(ward.purchase("M001", "W6", "2026-12-03T12:00", 3_000))
    return built


def test_a_clean_history_across_eras_passes(ward: Ward, engine_name: str):
    built = _built(ward)
    report = rerate.rerate_check(ward.engine, kernel=engine_name)
    assert report["ok"], report["mismatches"]
    assert report["checked"] == len(built["sent"]) == 8
    assert report["eras"] >= 3
    assert ward.reconcile()["ok"]
    # The history does exercise what the re-rate must replay.
    awards = {a["campaign_id"]: a["capped_by"] for s in built["sent"] for a in s.get("awards", [])}
    assert set(awards) == {"PB", "TAGGED"}
    assert {a["capped_by"] for s in built["sent"] for a in s.get("awards", [])} >= {"wallet_cap", "budget"}


def test_an_altered_request_is_named(ward: Ward):
    built = _built(ward)
    target = built["sent"][5]["id"]  # W4's purchase, which met the budget
    with ward.engine.connect() as c:
        request = json.loads(
            c.execute(text("SELECT request_json FROM payment WHERE id = :i"), {"i": target}).scalar_one()
        )
    request["amount"] = 9_500
    _tamper(ward, "UPDATE payment SET request_json = :r WHERE id = :i", r=json.dumps(request), i=target)
    report = rerate.rerate_check(ward.engine)
    named = _named(report)
    assert named["stored request differs from the payment"] == {target}
    row = next(r for r in report["mismatches"] if r["problem"] == "stored request differs from the payment")
    assert row["fields"] == ["amount"] and row["request"] == {"amount": 9_500} and row["payment"] == {"amount": 9_000}


def test_altered_items_change_the_award_and_are_named(ward: Ward):
    built = _built(ward)
    target = built["sent"][1]["id"]  # M002's itemised purchase
    with ward.engine.connect() as c:
        request = json.loads(
            c.execute(text("SELECT request_json FROM payment WHERE id = :i"), {"i": target}).scalar_one()
        )
    request["items"][1]["tags"] = [history.TAG]
    _tamper(ward, "UPDATE payment SET request_json = :r WHERE id = :i", r=json.dumps(request), i=target)
    assert _named(rerate.rerate_check(ward.engine)) == {"awards differ": {target}}


def test_a_campaign_version_changed_after_the_fact_is_named(ward: Ward):
    built = _built(ward)
    with ward.engine.connect() as c:
        record = json.loads(
            c.execute(
                text("SELECT record_json FROM campaign_version WHERE campaign_id = 'TAGGED' AND version = 1")
            ).scalar_one()
        )
    record["tiers"][0]["rate_bp"] = 2500
    _tamper(
        ward,
        "UPDATE campaign_version SET record_json = :r WHERE campaign_id = 'TAGGED' AND version = 1",
        r=json.dumps(record),
    )
    # The two itemised purchases, the only ones TAGGED awarded.
    assert _named(rerate.rerate_check(ward.engine)) == {
        "awards differ": {built["sent"][1]["id"], built["sent"][3]["id"]}
    }


def test_a_changed_award_is_named(ward: Ward):
    built = _built(ward)
    target = built["sent"][0]["id"]
    _tamper(ward, "UPDATE award SET points = points + 1 WHERE payment_id = :i AND campaign_id = 'PB'", i=target)
    report = rerate.rerate_check(ward.engine)
    assert _named(report) == {"awards differ": {target}}
    row = report["mismatches"][0]
    assert row["ledger"]["PB"][0] == row["rerated"]["PB"][0] + 1


def test_a_merchant_version_changed_after_the_fact_is_named(ward: Ward):
    built = _built(ward)
    # M002 was semi_large until its second version: say it was small all along.
    with ward.engine.connect() as c:
        record = json.loads(
            c.execute(
                text("SELECT record_json FROM merchant_version WHERE merchant_id = 'M002' AND version = 1")
            ).scalar_one()
        )
    assert record["merchant_class"] == "semi_large"
    record["merchant_class"] = "small"
    _tamper(
        ward,
        "UPDATE merchant_version SET record_json = :r WHERE merchant_id = 'M002' AND version = 1",
        r=json.dumps(record),
    )
    # Its first purchase earns more under the forged class, so PB's budget runs out one purchase earlier.
    assert _named(rerate.rerate_check(ward.engine)) == {
        "awards differ": {built["sent"][1]["id"], built["sent"][5]["id"]}
    }


def test_merchant_versions_are_kept_and_migrations_revert(database_url):
    from engine.model import Merchant
    from engine.store.config import Config
    from engine.store.db import downgrade, make_engine, upgrade

    upgrade(database_url)
    engine = make_engine(database_url)
    config = Config(engine)
    config.create_merchant(Merchant.model_validate({"id": "M1", "name": "a", "merchant_class": "small"}))
    config.update_merchant("M1", {"merchant_class": "large"})
    with engine.connect() as c:
        rows = c.execute(text("SELECT version, record_json FROM merchant_version ORDER BY version")).all()
    assert [(v, json.loads(r)["merchant_class"]) for v, r in rows] == [(1, "small"), (2, "large")]
    engine.dispose()
    downgrade(database_url, "20261129_finance")
    upgrade(database_url)  # the backfill gives the existing merchant a version 1 with its current record
    engine = make_engine(database_url)
    with engine.connect() as c:
        rows = c.execute(text("SELECT version, record_json FROM merchant_version")).all()
    assert [(v, json.loads(r)["merchant_class"]) for v, r in rows] == [(1, "large")]
    engine.dispose()
