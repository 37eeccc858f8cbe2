"""The ledger head's stamp floor (SPEC §7: a closed period never changes): a process whose clock is
behind the one that settled a period or signed a day stamps after it all the same, and the history
import cannot post into a period settled, or a day signed, while it runs (helper-81's probe: a
settle five seconds ahead of the API left 765 sales inside the settled month; an import racing a
settlement wrote 28,100 sales into it, which the next run paid without their fee)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from engine.audit import OPERATOR
from engine.clock import ManualClock
from engine.store import audit, finance
from engine.store.importer import import_history
from engine.store.ledger import Ledger, StampBehindFloor, StampBehindLedger, Submission
from engine.store.models import AuditLogRow, ChainHeadRow, LedgerHead, PaymentRow, PostingRow
from tests.finance.support import Ward, submission
from tests.tokyo import jst, us


def _submission(key: str, occurred: str, amount: int = 1_000) -> Submission:
    return submission(
        key,
        {
            "type": "purchase",
            "wallet_id": "W9",
            "merchant_id": "M001",
            "terminal_id": "TM001",
            "occurred_at": jst(occurred).isoformat(),
            "amount": amount,
            "points_used": 0,
        },
    )


def _floor(ward: Ward) -> int:
    with ward.engine.connect() as c:
        return int(c.execute(select(LedgerHead.stamp_floor_us)).scalar_one())


@pytest.fixture
def settled(ward: Ward) -> Ward:
    """December settled by a process whose clock reads 00:00:05 on January 1st."""
    ward.merchant("M001", fee_bp=100, bank=1)
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-31T23:00", 5_000)
    ward.at("2027-01-01T00:00:05")
    ward.settle("2026-12")
    assert _floor(ward) >= us("2027-01-01T00:00")
    return ward


def test_a_process_whose_clock_is_behind_the_settler_s_stamps_after_the_period(settled: Ward) -> None:
    lagging = Ledger(settled.engine, ManualClock(us("2026-12-31T23:59:58")))  # 7 s behind
    answer = lagging.submit([_submission("late-1", "2026-12-31T23:59:50")])[0]
    assert answer.status == 201, answer.body
    assert us(answer.body["accepted_at"]) >= us("2027-01-01T00:00"), answer.body["accepted_at"]
    report = settled.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


def test_a_group_decided_ahead_on_a_clock_behind_is_stamped_after_the_period(settled: Ward) -> None:
    if settled.engine.dialect.name != "postgresql":
        pytest.skip("groups are decided ahead of the lock on PostgreSQL only")
    lagging = Ledger(settled.engine, ManualClock(us("2026-12-31T23:59:58")))
    try:
        decided = lagging.decide_ahead([_submission("late-2", "2026-12-31T23:59:50")], accepted_at_us=None)
        assert decided is not None and lagging.write_decided(decided)
    finally:
        lagging.close()
    assert us(decided.results[0].body["accepted_at"]) >= us("2027-01-01T00:00")
    assert settled.reconcile()["ok"]


def test_a_day_signed_by_a_clock_ahead_stays_the_day_signed(ward: Ward) -> None:
    ward.merchant("M001")
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 1_000)
    ward.at("2026-12-02T00:00:03")
    assert finance.sign_chain_heads(ward.ledger, ward.settings) == ["2026-12-01"]
    lagging = Ledger(ward.engine, ManualClock(us("2026-12-01T23:59:59")))
    answer = lagging.submit([_submission("late-3", "2026-12-01T23:59:40")])[0]
    assert answer.status == 201 and us(answer.body["accepted_at"]) >= us("2026-12-02T00:00"), answer.body
    assert ward.reconcile()["checks"]["signed_chain_heads_valid"]["pass"]


def _history(n: int, day: str) -> Iterator[str]:
    yield "payment_id,type,wallet_id,merchant_id,terminal_id,occurred_at,amount,points_used,items,original_payment_id"
    for i in range(n):
        yield f"H{i},purchase,WH{i % 5},M001,TM001,{day}T10:{i // 60:02d}:{i % 60:02d}+09:00,1000,,,"


def test_an_import_racing_a_settlement_stops_before_the_settled_period(ward: Ward) -> None:
    """The import's floor was read once, at its start: lines read after finance settled their
    month went in (stamped inside it). Now the group whose stamp the run passed is refused under the
    lock, nothing of it written, and the import stops; the month stays as settled."""
    ward.merchant("M001", fee_bp=100, bank=1)
    ward.campaign("PB", 1000)
    ward.at("2027-01-01T00:01")
    settled: list[int] = []

    def lines() -> Iterator[str]:
        for n, line in enumerate(_history(200, "2026-12-15")):
            if n == 101 and not settled:  # half the file read: finance settles December
                ward.settle("2026-12")
                with ward.engine.connect() as c:
                    settled.append(int(c.execute(select(func.max(PostingRow.sequence))).scalar_one()))
            yield line + "\n"

    errors = io.StringIO()
    with pytest.raises(StampBehindFloor):
        import_history(ward.ledger, lines(), errors, source="OLDAPP", group=20)
    with ward.engine.connect() as c:
        late = c.execute(
            select(func.count())
            .select_from(PostingRow)
            .where(PostingRow.sequence > settled[0], PostingRow.posted_at_us < us("2027-01-01T00:00"))
        ).scalar_one()
    assert late == 0, f"{late} postings went into the settled December"
    report = ward.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


@pytest.mark.parametrize("pipelined", [True, False])
def test_an_import_stops_at_a_payment_the_api_accepted_while_it_ran(ward: Ward, pipelined: bool) -> None:
    """IMPORT.md says to stop the API during an import, and nothing enforced it: history posted
    after a live payment interleaved with it. The import now stops at the first group to be
    stamped before the ledger's last payment, nothing of that group written."""
    ward.merchant("M001", fee_bp=100, bank=1)
    ward.campaign("PB", 1000)
    ward.at("2027-01-10T12:00")
    live: list[int] = []

    def lines() -> Iterator[str]:
        for n, line in enumerate(_history(200, "2026-12-15")):
            if n == 101 and not live:  # half the file read: the API takes a payment
                answer = ward.ledger.submit([_submission("live-1", "2027-01-10T11:59:50")])[0]
                assert answer.status == 201, answer.body
                with ward.engine.connect() as c:
                    live.append(int(c.execute(select(func.max(PaymentRow.sequence))).scalar_one()))
            yield line + "\n"

    with pytest.raises(StampBehindLedger) as stopped:
        import_history(ward.ledger, lines(), io.StringIO(), source="OLDAPP", group=20, pipelined=pipelined)
    assert stopped.value.floor_us >= us("2027-01-10T12:00")
    with ward.engine.connect() as c:
        after = c.execute(
            select(func.count()).select_from(PaymentRow).where(PaymentRow.sequence > live[0])
        ).scalar_one()
        imported = c.execute(
            select(func.count()).select_from(PaymentRow).where(PaymentRow.receipt_app_id == "OLDAPP")
        ).scalar_one()
    assert after == 0, f"{after} history payments went in after the live one"
    assert 0 < imported < 200
    report = ward.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


def test_a_campaign_changed_on_a_clock_behind_is_dated_after_the_payments_before_it(settled: Ward) -> None:
    """On a host whose clock is behind the floor a payment is stamped at the floor; a campaign
    change made there a moment later was dated by that clock, before the payment, and the re-rate
    then rated the payment under the new version (helper-83). Catalog changes are dated no earlier
    than the floor too."""
    from engine.store.config import Config

    clock = ManualClock(us("2026-12-31T23:59:50"))
    lagging, config = Ledger(settled.engine, clock), Config(settled.engine, settled.settings, clock)
    answer = lagging.submit([_submission("late-4", "2026-12-31T23:59:40")])[0]
    assert answer.status == 201, answer.body
    clock.set(us("2026-12-31T23:59:51"))
    config.update_campaign("PB", {"tiers": [{"match": {}, "rate_bp": 500}]})
    report = settled.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


def test_a_long_history_is_signed_a_few_days_per_unit_of_work(ward: Ward) -> None:
    """Each day's head is a query under the sequencer lock: twelve days are signed five at a time
    (three units), so postings wait for a few days' queries, not a year's (helper-83)."""
    ward.merchant("M001")
    ward.campaign("PB", 1000)
    for day in range(1, 13):
        ward.purchase("M001", "W1", f"2026-12-{day:02d}T10:00", 1_000)
    ward.at("2026-12-13T09:00")
    with ward.engine.connect() as c:
        units = c.execute(select(LedgerHead.lock_version)).scalar_one()
    assert finance.sign_chain_heads(ward.ledger, ward.settings) == [f"2026-12-{d:02d}" for d in range(1, 13)]
    with ward.engine.connect() as c:
        assert c.execute(select(LedgerHead.lock_version)).scalar_one() - units == 3
    assert _floor(ward) == us("2026-12-13T00:00")
    assert ward.reconcile()["checks"]["signed_chain_heads_valid"]["pass"]


def _audit_entries(ward: Ward) -> list[tuple[int, int]]:
    with ward.engine.connect() as c:
        return [tuple(r) for r in c.execute(select(AuditLogRow.sequence, AuditLogRow.at_us).order_by("sequence"))]


def test_an_audit_entry_made_on_a_clock_behind_a_signed_day_is_dated_after_it(ward: Ward, monkeypatch) -> None:
    """An entry recorded on a host whose clock is behind a day already signed was dated inside
    that day, after its head was signed (helper-84). It is dated at the floor now."""
    ward.merchant("M001")
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 1_000)
    ward.at("2026-12-02T00:00:03")
    assert finance.sign_chain_heads(ward.ledger, ward.settings) == ["2026-12-01"]
    monkeypatch.setattr(ward.clock, "now_us", lambda: us("2026-12-01T23:59"))  # another host, a minute behind
    r = ward.client.post("/v1/keys", json={"role": "finance"}, headers=ward.admin)
    assert r.status_code == 201, r.text
    sequence, at_us = _audit_entries(ward)[-1]
    assert at_us >= us("2026-12-02T00:00"), (sequence, at_us)
    assert ward.reconcile()["checks"]["signed_chain_heads_valid"]["pass"]


def test_a_day_is_signed_after_the_entries_being_recorded_in_it(ward: Ward) -> None:
    """Signing read a day's last audit entry without the audit head's lock: an entry dated inside
    the day, recorded in a transaction not yet committed, was left out of the signed head and then
    committed inside the signed day. The signer now waits for it and signs it in."""
    if ward.engine.dialect.name != "postgresql":
        pytest.skip("on SQLite every writer is alone (BEGIN IMMEDIATE)")
    ward.merchant("M001")
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 1_000)
    ward.at("2026-12-02T00:00:03")
    signed: list[list[str]] = []
    with Session(ward.engine) as session, session.begin():
        recording = audit.record(session, OPERATOR, "key.revoke", "key:probe", None, None, at_us=us("2026-12-01T23:59"))
        signer = threading.Thread(target=lambda: signed.append(finance.sign_chain_heads(ward.ledger, ward.settings)))
        signer.start()
        signer.join(0.5)
        assert signer.is_alive(), "the signer read the day while an entry dated in it was being recorded"
    signer.join(30)
    assert signed == [["2026-12-01"]]
    with ward.engine.connect() as c:
        document = json.loads(c.execute(select(ChainHeadRow.signed_json)).scalar_one())["document"]
    assert document["audit_last_sequence"] == recording
    assert ward.reconcile()["checks"]["signed_chain_heads_valid"]["pass"]
