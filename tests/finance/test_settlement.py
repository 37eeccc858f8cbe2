"""Settlement runs (SPEC §7): periods by posting time in Asia/Tokyo, idempotent runs, closed
periods that never change, and per-merchant lines computed here from what was posted."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.settlement import statement
from engine.store import queries
from engine.store.models import PostingRow, SettlementLineRow, SettlementRunRow
from tests.finance.support import Sale, Ward, expected_line, lines_by_merchant, pick, record


def _postings(ward: Ward) -> int:
    with Session(ward.engine) as s:
        return s.execute(select(func.count()).select_from(PostingRow)).scalar_one()


def _stored(ward: Ward, run_id: str) -> tuple:
    with Session(ward.engine) as s:
        run = s.get(SettlementRunRow, run_id)
        lines = [
            (
                x.merchant_id,
                x.coin_sales,
                x.coin_refunds,
                x.points_redeemed,
                x.points_returned,
                x.merchant_funded_points,
                x.fee,
                x.carried_in,
                x.net_payout,
            )
            for x in s.execute(
                select(SettlementLineRow)
                .where(SettlementLineRow.run_id == run_id)
                .order_by(SettlementLineRow.merchant_id)
            ).scalars()
        ]
        return run.statement_json, run.csv_text, bytes(run.zengin_file), lines


def _december(ward: Ward) -> dict[str, Sale]:
    """Three merchants' December by acceptance time, with the edges of the month around it."""
    ward.merchant("M001", fee_bp=250, bank=1)
    ward.merchant("M002", bank=2)
    ward.merchant("M003", fee_bp=333, bank=3)
    ward.campaign("PB", 1000)  # ward-funded 10% point-back everywhere
    # Merchant M003 pays for its own 5% bonus at its shop.
    ward.campaign(
        "MF3", 500, funding_source="merchant:M003", tiers=[{"match": {"merchant_ids": ["M003"]}, "rate_bp": 500}]
    )
    book: dict[str, Sale] = {}
    # Accepted on 30 November (Tokyo): not December's.
    ward.purchase("M002", "W9", "2026-11-30T23:59:00", 7777, accepted="2026-11-30T23:59:58")
    # Happened in November, reached the engine on 1 December: December's, by posting time.
    record(book, "M002", ward.purchase("M002", "W9", "2026-11-30T23:59:30", 1000, accepted="2026-12-01T00:00:05"))
    record(book, "M001", ward.purchase("M001", "W1", "2026-12-01T10:00", 5000))  # PB 500, credited at once
    record(book, "M002", ward.purchase("M002", "W1", "2026-12-03T12:00", 2000, points_used=300))
    p3 = record(book, "M003", ward.purchase("M003", "W2", "2026-12-05T15:00", 3333))  # PB 333, MF3 166
    p4 = record(book, "M001", ward.purchase("M001", "W2", "2026-12-10T09:00", 1234, points_used=100))
    r4 = record(book, "M001", ward.refund(p4, "2026-12-12T09:00", 617))
    assert r4["points_returned"] == 100 * 617 // 1234 == 50
    r3 = record(book, "M003", ward.refund(p3, "2026-12-20T11:00", 1111))
    mf3 = {a["campaign_id"]: a["points"] for a in p3["awards"]}["MF3"]
    assert mf3 == 3333 * 500 // 10_000 == 166
    clawed = {c["campaign_id"]: c["points"] for c in r3["clawbacks"]}["MF3"]
    assert clawed == 166 * 1111 // 3333 == 55
    book["M003"].funded = mf3 - clawed
    # Happened on 31 December, accepted at 00:00:30 on 1 January (Tokyo): January's.
    ward.purchase("M001", "W3", "2026-12-31T23:59:00", 4321, accepted="2027-01-01T00:00:30")
    return book


def test_monthly_lines_by_posting_time_computed_independently(ward: Ward):
    book = _december(ward)
    ward.at("2027-01-01T00:05")
    # November's sale (accepted on the 30th) is November's: its month is settled first.
    november = lines_by_merchant(ward.settle("2026-11"))
    assert pick(november["M002"])["coin_sales"] == 7777 and november["M002"]["net_payout"] == 7777
    run = ward.settle("2026-12")
    assert run["period"] == {
        "kind": "monthly",
        "start": "2026-12-01T00:00:00+09:00",
        "end": "2027-01-01T00:00:00+09:00",
    }
    lines = lines_by_merchant(run)
    fees = {"M001": 250, "M002": 0, "M003": 333}
    assert sorted(lines) == ["M001", "M002", "M003"]
    carried = {"M001": 0, "M002": 0, "M003": 0}  # November's payout was handed to the bank
    for m, sale in book.items():
        assert pick(lines[m]) == expected_line(sale, fees[m], carried[m]), m
    # The figures, spelled out once: coin 5000 + 1134 - 567, points 100 - 50; fee 5617 * 2.5% = 140.425 -> 140.
    assert pick(lines["M001"]) == {
        "coin_sales": 6134,
        "coin_refunds": 567,
        "points_redeemed": 100,
        "points_returned": 50,
        "merchant_funded_points": 0,
        "fee_bp": 250,
        "fee": 140,
        "carried_in": 0,
        "net_payout": 5477,
    }
    # M003: 3333 - 1111 = 2222; fee 2222 * 3.33% = 73.99 -> 73 (floor); it pays its own 166 - 55 = 111 points.
    assert pick(lines["M003"])["fee"] == 73 and pick(lines["M003"])["net_payout"] == 2222 - 73 - 111
    # November's late arrival is in, the 31 December purchase accepted in January is not.
    assert lines["M002"]["coin_sales"] == 1000 + 1700 and lines["M002"]["points_redeemed"] == 300
    totals = run["statement"]["document"]["totals"]
    for k in (
        "coin_sales",
        "coin_refunds",
        "points_redeemed",
        "points_returned",
        "merchant_funded_points",
        "fee",
        "net_payout",
    ):
        assert totals[k] == sum(line[k] for line in lines.values())
    assert {p["merchant_id"]: (p["net_payout"], p["payout_status"]) for p in run["payouts"]} == {
        m: (lines[m]["net_payout"], "pending") for m in lines
    }
    # The settlement is posted to the ledger (fees, merchant funding, payouts) and the ledger still checks.
    check = queries.ledger_check(ward.engine)
    assert check["ok"], {k: v for k, v in check.items() if k != "campaigns"}
    with Session(ward.engine) as s:
        posted = dict(
            s.execute(
                select(PostingRow.reason, func.sum(PostingRow.amount))
                .where(PostingRow.payment_id == run["id"])
                .group_by(PostingRow.reason)
            ).all()
        )
    assert posted == {
        "settlement_fee": 140 + 73,
        "merchant_funding": 111,
        "payout": sum(line["net_payout"] for line in lines.values()),
    }
    assert ward.reconcile()["ok"]


def test_run_before_the_period_ends_is_422_period_open(ward: Ward):
    ward.merchant("M001", bank=1)
    ward.purchase("M001", "W1", "2026-12-31T23:00", 1000)
    ward.at("2026-12-31T23:59:59")  # one second before midnight in Tokyo (14:59:59 UTC)
    problem = ward.settle("2026-12", expect=422)
    assert problem["code"] == "period_open"
    with Session(ward.engine) as s:
        assert s.execute(select(func.count()).select_from(SettlementRunRow)).scalar_one() == 0
    ward.at("2027-01-01T00:00:01")
    assert ward.settle("2026-12")["payouts"] == [
        {"merchant_id": "M001", "net_payout": 1000, "payout_status": "pending"}
    ]


def test_semi_monthly_halves_and_overlaps(ward: Ward):
    ward.merchant("M001", fee_bp=150, bank=1)
    ward.campaign("PB", 1000)
    h1, h2 = Sale(), Sale()
    record({"M": h1}, "M", ward.purchase("M001", "W1", "2026-12-02T10:00", 3000))
    p = record({"M": h1}, "M", ward.purchase("M001", "W1", "2026-12-15T23:59", 999, accepted="2026-12-15T23:59:58"))
    ward.at("2026-12-15T23:59:59")
    assert ward.settle("2026-12-H1", expect=422)["code"] == "period_open"
    # Happened in the first half, accepted in the second: the second half's.
    record({"M": h2}, "M", ward.purchase("M001", "W1", "2026-12-15T23:59:59", 1001, accepted="2026-12-16T00:00:02"))
    ward.at("2026-12-16T00:10")
    first = ward.settle("2026-12-H1")
    record({"M": h2}, "M", ward.refund(p, "2026-12-17T10:00", 499))
    assert first["period"] == {
        "kind": "semi_monthly",
        "start": "2026-12-01T00:00:00+09:00",
        "end": "2026-12-16T00:00:00+09:00",
    }
    assert pick(lines_by_merchant(first)["M001"]) == expected_line(h1, 150)
    assert pick(lines_by_merchant(first)["M001"])["fee"] == 3999 * 150 // 10_000 == 59  # 59.985 -> 59
    ward.at("2026-12-31T23:00")
    assert ward.settle("2026-12-H2", expect=422)["code"] == "period_open"
    ward.at("2027-01-01T00:10")
    # The month overlaps both halves.
    assert ward.settle("2026-12", expect=409)["code"] == "period_overlaps"
    second = ward.settle("2026-12-H2")
    assert second["period"]["start"] == "2026-12-16T00:00:00+09:00"
    # H1 was paid out in full, so nothing is carried into H2.
    assert pick(lines_by_merchant(second)["M001"]) == expected_line(h2, 150)
    assert ward.settle("2026-12", expect=409)["code"] == "period_overlaps"
    assert ward.settle("2026-12-H1", expect=200)["id"] == first["id"]
    assert queries.ledger_check(ward.engine)["ok"]


def test_monthly_run_blocks_its_halves(ward: Ward):
    ward.merchant("M001", bank=1)
    ward.purchase("M001", "W1", "2026-12-02T10:00", 3000)
    ward.at("2027-01-02T09:00")
    ward.settle("2026-12")
    for half in ("2026-12-H1", "2026-12-H2"):
        assert ward.settle(half, expect=409)["code"] == "period_overlaps"


def test_a_run_is_idempotent_per_period(ward: Ward):
    ward.merchant("M001", fee_bp=100, bank=1)
    ward.merchant("M002", bank=2)
    ward.purchase("M001", "W1", "2026-12-02T10:00", 3000)
    ward.purchase("M002", "W1", "2026-12-03T10:00", 5000)
    ward.at("2027-01-02T09:00")
    first = ward.settle("2026-12")
    before = (_postings(ward), _stored(ward, first["id"]))
    zengin = ward.get(f"/v1/settlement-runs/{first['id']}/zengin").content
    ward.at("2027-01-03T09:00")
    again = ward.settle("2026-12", expect=200)
    assert again == first
    assert (_postings(ward), _stored(ward, first["id"])) == before
    assert ward.get(f"/v1/settlement-runs/{first['id']}/zengin").content == zengin
    assert ward.get(f"/v1/settlement-runs/{first['id']}").json() == first
    with Session(ward.engine) as s:
        assert s.execute(select(func.count()).select_from(SettlementRunRow)).scalar_one() == 1


def test_a_closed_period_never_changes_and_late_postings_fall_into_the_next(ward: Ward):
    ward.merchant("M001", fee_bp=250, bank=1)
    ward.merchant("M002", bank=2)
    ward.campaign("PB", 1000)
    dec: dict[str, Sale] = {}
    p1 = record(dec, "M001", ward.purchase("M001", "W1", "2026-12-10T10:00", 8000))
    record(dec, "M002", ward.purchase("M002", "W1", "2026-12-11T10:00", 2000, points_used=500))
    ward.at("2027-01-01T09:00")
    run = ward.settle("2026-12")
    stored = _stored(ward, run["id"])
    csv_text = ward.get(f"/v1/settlement-runs/{run['id']}/statement.csv").text
    # January: a December purchase that reached the engine late, a refund of a December
    # purchase and a redemption, all accepted after December was closed.
    jan: dict[str, Sale] = {}
    ward.at("2027-01-02T00:00")
    record(jan, "M002", ward.purchase("M002", "W2", "2026-12-31T22:00", 1500, accepted="2027-01-02T00:00"))
    record(jan, "M001", ward.refund(p1, "2027-01-03T10:00", 2000))
    record(jan, "M001", ward.purchase("M001", "W1", "2027-01-04T10:00", 600, points_used=200))
    # December is as it was, in every stored form and in its view.
    assert _stored(ward, run["id"]) == stored
    assert ward.get(f"/v1/settlement-runs/{run['id']}/statement.csv").text == csv_text
    assert ward.get(f"/v1/settlement-runs/{run['id']}").json() == run
    assert ward.settle("2026-12", expect=200) == run
    assert ward.reconcile()["checks"]["statements_match_ledger"] == {"pass": True, "rows": []}
    ward.at("2027-02-01T09:00")
    january = ward.settle("2027-01")
    lines = lines_by_merchant(january)
    assert sorted(lines) == ["M001", "M002"]
    # December was paid in full: January carries nothing in and pays exactly January's activity.
    assert pick(lines["M001"]) == expected_line(jan["M001"], 250)
    assert pick(lines["M002"]) == expected_line(jan["M002"], 0)
    assert lines["M002"]["coin_sales"] == 1500
    assert lines["M001"]["coin_refunds"] == 2000 and lines["M001"]["points_redeemed"] == 200
    assert ward.reconcile()["ok"]


def test_catching_up_two_months_pays_each_sale_once(ward: Ward):
    """December and January settled together after an outage, on 2 February: each yen is paid once.

    December's own settlement postings (fee, payout) are stamped 2 February, after
    January ended; January's statement must still not pay December's sales again.
    """
    ward.merchant("M001", fee_bp=100, bank=1)
    dec, jan = Sale(), Sale()
    record({"M": dec}, "M", ward.purchase("M001", "W1", "2026-12-10T10:00", 10_000))
    record({"M": jan}, "M", ward.purchase("M001", "W1", "2027-01-10T10:00", 3_000))
    ward.at("2027-02-02T09:00")
    december = ward.settle("2026-12")
    january = ward.settle("2027-01")
    assert pick(lines_by_merchant(december)["M001"]) == expected_line(dec, 100)
    paid = lines_by_merchant(december)["M001"]["net_payout"] + lines_by_merchant(january)["M001"]["net_payout"]
    assert paid == 10_000 - 100 + 3_000 - 30, json.dumps(lines_by_merchant(january)["M001"])
    assert pick(lines_by_merchant(january)["M001"]) == expected_line(jan, 100)


def _count(ward: Ward, model) -> int:
    with Session(ward.engine) as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def test_no_period_is_left_out_between_two_runs(ward: Ward):
    """After a run, the next is of the period that starts where it ended: skipping one (settling
    February with January left out) is 409 `period_out_of_order` and writes nothing, so January's
    sales are charged their fee in January's own statement instead of arriving in February's
    `carried_in`, fee-free (as they did)."""
    ward.merchant("M001", fee_bp=150, bank=1)
    dec, jan = Sale(), Sale()
    record({"M": dec}, "M", ward.purchase("M001", "W1", "2026-12-10T10:00", 10_000))
    record({"M": jan}, "M", ward.purchase("M001", "W1", "2027-01-10T10:00", 888))
    ward.at("2027-01-01T00:05")
    ward.settle("2026-12")
    ward.at("2027-03-01T00:05")
    runs, postings = _count(ward, SettlementRunRow), _count(ward, PostingRow)
    for skipping in ("2027-02", "2027-02-H1"):
        problem = ward.settle(skipping, expect=409)
        assert problem["code"] == "period_out_of_order" and "2027-01-01T00:00:00+09:00" in problem["detail"]
    r = ward.client.post("/v1/settlement-runs", json={}, headers=ward.finance)  # the last closed: February
    assert r.status_code == 409 and r.json()["code"] == "period_out_of_order", r.text
    assert (_count(ward, SettlementRunRow), _count(ward, PostingRow)) == (runs, postings)
    january = ward.settle("2027-01")
    assert pick(lines_by_merchant(january)["M001"]) == expected_line(jan, 150)
    assert lines_by_merchant(january)["M001"]["fee"] == 888 * 150 // 10_000 == 13
    assert ward.settle("2027-02")["period"]["start"] == "2027-02-01T00:00:00+09:00"
    assert ward.reconcile()["ok"]


def test_a_stretch_in_which_nothing_was_posted_may_be_left_out(ward: Ward):
    """A first run mistyped years too early (1999-01) settled nothing and, as every later run had
    to follow the last one, took 331 empty runs to reach the month the ward meant (helper-78's
    probe). A stretch with no posting at all has nothing to carry, so the next run may skip it;
    one with any posting (a sale, a payout result) may not."""
    ward.merchant("M001", fee_bp=150, bank=1)
    nov, dec = Sale(), Sale()
    record({"M": nov}, "M", ward.purchase("M001", "W1", "2026-11-30T10:00", 5_000))
    record({"M": dec}, "M", ward.purchase("M001", "W1", "2026-12-10T10:00", 10_000))
    ward.at("2027-02-01T00:05")
    first = ward.settle("1999-01")  # the mistyped first run: nothing in it
    assert lines_by_merchant(first) == {} or lines_by_merchant(first)["M001"]["gross"] == 0
    runs = _count(ward, SettlementRunRow)
    problem = ward.settle("2026-12", expect=409)  # November's sale lies between: not skipped
    assert problem["code"] == "period_out_of_order" and "1999-02-01T00:00:00+09:00" in problem["detail"], problem
    assert _count(ward, SettlementRunRow) == runs
    november = ward.settle("2026-11")  # 1999-02 .. 2026-10 held nothing: skipped
    assert pick(lines_by_merchant(november)["M001"]) == expected_line(nov, 150)
    assert pick(lines_by_merchant(ward.settle("2026-12"))["M001"]) == expected_line(dec, 150)
    assert ward.reconcile()["ok"]


def test_a_first_run_after_a_month_with_payments_is_refused(ward: Ward):
    """A first run could start anywhere: one of December carried November's sales in, fee-free and
    without their merchant-funded points, and November could never be settled after it (helper-88's
    probe). A first run starts no later than the month of the ledger's first payment (a grant
    before it, no merchant's money, holds no month back: `test_audit`'s ward grants on 30 November
    and settles December first)."""
    ward.merchant("M001", fee_bp=300, bank=1)
    ward.merchant("M002", bank=2)
    ward.campaign("CM", 500, funding_source="merchant:M002")  # 5% everywhere, M002 pays
    nov1, nov2 = Sale(), Sale()
    record({"M": nov1}, "M", ward.purchase("M001", "W1", "2026-11-30T10:00", 10_000))
    record({"M": nov2}, "M", ward.purchase("M002", "W2", "2026-11-30T11:00", 20_000))
    ward.purchase("M001", "W1", "2026-12-10T10:00", 5_000)
    ward.at("2027-01-01T00:05")
    runs, postings = _count(ward, SettlementRunRow), _count(ward, PostingRow)
    problem = ward.settle("2026-12", expect=409)
    assert problem["code"] == "period_out_of_order" and "2026-11-30T10:00" in problem["detail"], problem
    assert (_count(ward, SettlementRunRow), _count(ward, PostingRow)) == (runs, postings)
    november = lines_by_merchant(ward.settle("2026-11"))
    # M002 pays for the points of both sales: 500 + 1,000.
    assert november["M001"]["fee"] == 300 and november["M002"]["merchant_funded_points"] == 1500, november
    assert ward.settle("2026-12")["period"]["start"] == "2026-12-01T00:00:00+09:00"
    assert ward.reconcile()["ok"]


def test_a_period_is_charged_the_fee_in_force_when_it_ended(ward: Ward):
    """A fee changed after a period ended, before it was settled, reached back over the whole
    period (helper-94: 5,000 bp set at 00:30 on 1 December charged November's sales at it). A
    period is charged the rate of the merchant's record as it stood at the period's end: a change
    within the period is that period's rate, a change after it the next one's."""
    ward.merchant("M001", fee_bp=300, bank=1)
    ward.merchant("M002", fee_bp=300, bank=2)
    ward.purchase("M001", "W1", "2026-11-30T10:00", 10_000)
    ward.purchase("M002", "W2", "2026-11-30T11:00", 10_000)
    ward.at("2026-11-30T12:00")
    r = ward.client.patch("/v1/merchants/M002", json={"fee_bp": 100}, headers=ward.admin)  # within November
    assert r.status_code == 200, r.text
    ward.at("2026-12-01T00:30")
    r = ward.client.patch("/v1/merchants/M001", json={"fee_bp": 5000}, headers=ward.admin)  # after November
    assert r.status_code == 200, r.text
    ward.purchase("M001", "W1", "2026-12-10T10:00", 10_000)
    november = lines_by_merchant(ward.settle("2026-11"))
    assert (november["M001"]["fee_bp"], november["M001"]["fee"]) == (300, 300), november["M001"]
    assert (november["M002"]["fee_bp"], november["M002"]["fee"]) == (100, 100), november["M002"]
    ward.at("2027-01-01T00:05")
    december = lines_by_merchant(ward.settle("2026-12"))
    assert (december["M001"]["fee_bp"], december["M001"]["fee"]) == (5000, 5000), december["M001"]
    assert ward.reconcile()["ok"]


def test_an_unknown_or_malformed_period_is_refused(ward: Ward):
    ward.at("2027-01-02T09:00")
    for period in ("2026-13", "2026-12-H3", "26-12", "2026-12-01"):
        r = ward.client.post("/v1/settlement-runs", json={"period": period}, headers=ward.finance)
        assert r.status_code == 422, (period, r.text)
    r = ward.client.post("/v1/settlement-runs", json={"period": "2026-12"}, headers=ward.admin)
    assert r.status_code == 403
    assert ward.get("/v1/settlement-runs/st_nope", expect=404).json()["code"] == "not_found"


@pytest.mark.parametrize(
    "name", ["２０２６-１２", "2026-１２", "2027-+2", "2027- 2", " 2026-12", "2026-12\n", "2026-12-h1"]
)
def test_period_names_are_written_in_ascii_digits(name: str):
    """The one reading of a period's name, for the API, the pages and `setapay settle`: the
    API's pattern (ASCII digits) refused what `int` reads (full-width digits, a sign, spaces),
    which the command and the pages took, and a statement then carried as its period's name."""
    with pytest.raises(ValueError):
        statement.parse_period(name)
    assert statement.parse_period("2026-12").name == "2026-12"


def test_an_import_never_stamps_a_payment_inside_a_settled_period(ward: Ward):
    """A settled period is closed even when its run wrote no posting (here: no bank account, so
    the line failed, and no fee): a history line that falls inside it is refused as out of
    order, the signed statement still matches the ledger, and nothing is written."""
    import io

    from engine.store.importer import import_history

    ward.merchant("M1")  # no payout account: the run writes no payout posting, and no fee
    ward.campaign("A", 1000)
    ward.at("2026-11-30T12:00")
    ward.purchase("M1", "W1", "2026-11-30T11:00", 1_000)
    ward.at("2026-12-01T09:00")
    november = ward.settle("2026-11")
    assert lines_by_merchant(november)["M1"]["payout_status"] == "failed"
    with ward.engine.connect() as c:
        postings = c.execute(select(func.count()).select_from(PostingRow)).scalar_one()
    history = (
        "payment_id,type,wallet_id,merchant_id,terminal_id,occurred_at,amount,points_used,items,original_payment_id\n"
        "H1,purchase,W2,M1,TM1,2026-11-30T20:00:00+09:00,5000,0,,\n"
    )
    errors = io.StringIO()
    report = import_history(ward.ledger, io.StringIO(history), errors, pipelined=False)
    assert (report.imported, report.errors) == (0, 1), report.summary()
    assert "out_of_order" in errors.getvalue() and "settled period" in errors.getvalue()
    with ward.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(PostingRow)).scalar_one() == postings
    assert ward.reconcile()["ok"] is True
