"""Terminal closeouts (SPEC §6, §7): the end-of-day count and net total against the ledger's
transactions of that terminal and Asia/Tokyo day."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session

from engine.store import audit, finance
from engine.store.models import CloseoutRow
from tests.finance.support import Ward


def _closeout(ward: Ward, terminal_id: str, day: str, count: int, total: int, headers=None, expect: int = 201):
    r = ward.client.post(
        f"/v1/terminals/{terminal_id}/closeouts",
        json={"business_date": day, "count": count, "total": total},
        headers=headers if headers is not None else ward.terminal_keys[terminal_id],
    )
    assert r.status_code == expect, r.text
    return r.json()


def _day(ward: Ward) -> list[dict]:
    """TM001's 5 December (Tokyo), surrounded by what must not count in it."""
    ward.merchant("M001", bank=1)
    ward.terminal("TM001B", "M001")  # a second terminal of the same shop
    ward.merchant("M002", bank=2)
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-04T23:59:50", 999)  # the day before
    day = [
        ward.purchase("M001", "W1", "2026-12-05T00:00:00", 1_000),
        ward.purchase("M001", "W1", "2026-12-05T12:00", 2_500, points_used=100),
    ]
    ward.purchase("M001", "W3", "2026-12-05T12:30", 7_000, terminal_id="TM001B")  # another terminal
    ward.purchase("M002", "W3", "2026-12-05T13:00", 6_000)  # another shop
    day.append(ward.refund(day[1], "2026-12-05T18:00", 500))
    # Happened at 23:59:59 in Tokyo, reached the engine after midnight: still the 5th's.
    day.append(ward.purchase("M001", "W1", "2026-12-05T23:59:59", 300, accepted="2026-12-06T00:00:20"))
    ward.purchase("M001", "W1", "2026-12-06T00:00:01", 444)  # the day after
    return day


def test_a_matching_closeout(ward: Ward):
    day = _day(ward)
    total = 1_000 + 2_500 - 500 + 300
    report = _closeout(ward, "TM001", "2026-12-05", len(day), total)
    assert report["matches"] is True
    assert report["ledger"] == {"count": 4, "total": total} and report["submitted"] == {"count": 4, "total": total}
    assert "transactions" not in report
    assert ward.reconcile()["checks"]["closeouts_match_ledger"] == {"pass": True, "rows": []}


def test_a_mismatch_lists_the_ledgers_transactions_of_that_terminal_and_day(ward: Ward):
    day = _day(ward)
    total = 1_000 + 2_500 - 500 + 300
    for count, submitted_total in ((3, total - 300), (4, total + 1), (5, total)):
        report = _closeout(ward, "TM001", "2026-12-05", count, submitted_total)
        assert report["matches"] is False
        assert report["ledger"] == {"count": 4, "total": total}
        assert report["submitted"] == {"count": count, "total": submitted_total}
        assert [t["id"] for t in report["transactions"]] == [t["id"] for t in day]
        assert [(t["type"], t["amount"]) for t in report["transactions"]] == [
            ("purchase", 1_000),
            ("purchase", 2_500),
            ("refund", 500),
            ("purchase", 300),
        ]
    # The stored mismatch fails reconciliation, naming the terminal and the day.
    check = ward.reconcile()["checks"]["closeouts_match_ledger"]
    assert check["pass"] is False
    assert [(r["terminal_id"], r["business_date"]) for r in check["rows"]] == [("TM001", "2026-12-05")]
    # A corrected count replaces it.
    assert _closeout(ward, "TM001", "2026-12-05", 4, total)["matches"] is True
    assert ward.reconcile()["checks"]["closeouts_match_ledger"]["pass"] is True
    # A day without transactions closes out at zero (once it has begun).
    ward.at("2026-12-08T21:00")
    assert _closeout(ward, "TM001", "2026-12-07", 0, 0)["matches"] is True
    empty = _closeout(ward, "TM001", "2026-12-08", 1, 100)
    assert empty["matches"] is False and empty["transactions"] == [] and empty["ledger"] == {"count": 0, "total": 0}


def test_only_the_terminals_own_key_closes_it_out(ward: Ward):
    _day(ward)
    for headers in (ward.terminal_keys["TM001B"], ward.terminal_keys["TM002"]):
        problem = _closeout(ward, "TM001", "2026-12-05", 4, 3_300, headers=headers, expect=403)
        assert problem["code"] == "forbidden"
    for headers in (ward.finance, ward.admin):
        _closeout(ward, "TM001", "2026-12-05", 4, 3_300, headers=headers, expect=403)
    _closeout(ward, "TM001", "2026-12-05", 4, 3_300, headers={}, expect=401)
    for bad in (
        {"business_date": "2026-13-01", "count": 1, "total": 1},
        {"business_date": "2026-12-05", "count": -1, "total": 1},
        {"business_date": "2026-12-05", "count": "4", "total": 1},
        {"business_date": 20261205, "count": 4, "total": 1},
    ):
        r = ward.client.post("/v1/terminals/TM001/closeouts", json=bad, headers=ward.terminal_keys["TM001"])
        assert r.status_code == 422, (bad, r.text)
    # Nothing was stored by the refused requests.
    assert ward.reconcile()["checks"]["closeouts_match_ledger"] == {"pass": True, "rows": []}


def test_a_day_that_has_not_begun_cannot_be_closed_out(ward: Ward):
    """A closeout is of a day that has begun (today, by the engine's clock in Tokyo, or before):
    one for tomorrow is refused and stores nothing, so no terminal can leave a mismatch waiting in
    reconciliation for a day still to come."""
    _day(ward)  # the clock is past 2026-12-06T00:00 (Tokyo) now
    ward.at("2026-12-06T23:59")
    problem = _closeout(ward, "TM001", "2026-12-07", 0, 0, expect=422)
    assert problem["code"] == "invalid_request" and "has not begun" in problem["detail"]
    assert ward.reconcile()["checks"]["closeouts_match_ledger"] == {"pass": True, "rows": []}
    assert _closeout(ward, "TM001", "2026-12-06", 1, 444)["matches"] is True  # today's, before it ends
    ward.at("2026-12-07T00:01")
    assert _closeout(ward, "TM001", "2026-12-07", 0, 0)["matches"] is True


def test_closeouts_of_one_terminal_at_once_take_turns(ward: Ward):
    """Eight closeouts of one terminal and day submitted at once, each on its own connection: each
    is stored (the first inserted once; before, two first ones at once broke the primary key, a
    500), and the audit log's entries chain: each `before` is the `after` it replaced."""
    _day(ward)
    ward.at("2026-12-06T12:00")
    start = threading.Barrier(8)

    def submit(n: int) -> dict:
        start.wait()
        return finance.closeout(ward.ledger, "TM001", "2026-12-05", n, 100 * n)

    with ThreadPoolExecutor(max_workers=8) as pool:
        reports = list(pool.map(submit, range(1, 9)))
    assert sorted(r["submitted"]["count"] for r in reports) == list(range(1, 9))
    page, _ = audit.entries(ward.engine, target="terminal:TM001")
    entries = [e for e in page if e["action"] == "closeout.submit"]
    assert len(entries) == 8 and entries[0]["before"] is None
    for earlier, later in zip(entries, entries[1:]):
        after = {k: earlier["after"][k] for k in ("business_date", "count", "total")}
        assert later["before"] == after
    last = entries[-1]["after"]
    with Session(ward.engine) as session:
        stored = session.get(CloseoutRow, ("TM001", "2026-12-05"))
        assert stored is not None and (stored.count, stored.total) == (last["count"], last["total"])


def test_reconciliation_compares_a_closeout_with_the_day_it_was_compared_with(ward: Ward):
    """A terminal moved to another shop closes out a day it began at its old shop: the closeout
    is compared with its sales at the new shop (none), and so is it by reconciliation, which
    counted every sale of the terminal that day (the closeout matched, reconciliation failed)."""
    _day(ward)  # TM001 sold at M001 on the 5th
    r = ward.client.patch("/v1/terminals/TM001", json={"merchant_id": "M002"}, headers=ward.admin)
    assert r.status_code == 200, r.text
    assert _closeout(ward, "TM001", "2026-12-05", 0, 0)["matches"] is True
    assert ward.reconcile()["checks"]["closeouts_match_ledger"] == {"pass": True, "rows": []}
    # Its sales at the old shop are still there, and a closeout claiming them is a mismatch.
    report = _closeout(ward, "TM001", "2026-12-05", 4, 3_300)
    assert report["matches"] is False
    check = ward.reconcile()["checks"]["closeouts_match_ledger"]
    assert check["pass"] is False and [r["ledger"] for r in check["rows"]] == [{"count": 0, "total": 0}]
