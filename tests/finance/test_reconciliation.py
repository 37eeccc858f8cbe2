"""`GET /v1/reconciliation` (SPEC §7): every check passes on a clean ledger; each kind of
tampering directly in the database fails its check and names the offending row."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from engine import sealing
from engine.model import Purchase
from engine.receipts import Receipt
from engine.settlement import zengin
from engine.store import db, finance, rerate, settlement
from engine.store.ledger import Submission
from engine.store.models import PaymentRow, PostingRow, SettlementLineRow
from engine.timeutil import format_instant
from tests.finance.support import HOUR_US, Ward, bank_account, run_row, tamper
from tests.tokyo import jst

CHECKS = {
    "trial_balance_zero",
    "cached_balances_match",
    "hash_chain_intact",
    "posting_sequence_gapless",
    "payment_chain_intact",
    "lots_match_balances",
    "liability_identity_per_campaign",
    "liability_identity_per_wallet",
    "liability_identity_total",
    "budget_meters_match",
    "burn_meters_match",
    "postings_of_their_kind",
    "postings_match_payments",
    "postings_match_awards_and_grants",
    "cap_usage_matches_awards",
    "budget_never_exceeded",
    "signed_chain_heads_valid",
    "statements_match_ledger",
    "closeouts_match_ledger",
    "versions_match_audit",
    "no_points_spent_past_expiry",
    "lot_dates_match_campaigns",
    "payments_accepted_in_order",
    "rerate_matches_ledger",
    "audit_chain_intact",
    "audit_sequence_gapless",
}


def _history(ward: Ward) -> dict:
    """Two days of purchases, refunds and redemptions, a closeout, December settled, heads signed."""
    ward.merchant("M001", fee_bp=100, bank=1)
    ward.merchant("M002", bank=2)
    ward.campaign("PB", 1000, budget=50_000)
    ward.campaign(
        "MF2", 300, funding_source="merchant:M002", tiers=[{"match": {"merchant_ids": ["M002"]}, "rate_bp": 300}]
    )
    ward.campaign("DK", 200, credit={"schedule": "dekad", "delay_business_days": 2})
    tx = {
        "a": ward.purchase("M001", "W1", "2026-12-01T10:00", 5_000),
        "b": ward.purchase("M002", "W2", "2026-12-01T11:00", 3_000),
        "c": ward.purchase("M002", "W1", "2026-12-02T09:00", 1_000, points_used=200),
        "d": ward.purchase("M001", "W3", "2026-12-02T12:00", 7_777),
    }
    tx["e"] = ward.refund(tx["b"], "2026-12-02T15:00", 1_000)
    tx["f"] = ward.refund(tx["c"], "2026-12-02T16:00", 1_000)
    r = ward.client.post(
        "/v1/terminals/TM001/closeouts",
        headers=ward.terminal_keys["TM001"],
        json={"business_date": "2026-12-02", "count": 1, "total": 7_777},
    )
    assert r.status_code == 201 and r.json()["matches"], r.text
    ward.at("2027-01-01T00:30")
    tx["run"] = ward.settle("2026-12")
    r = ward.client.post("/v1/chain-heads", headers=ward.finance)
    assert r.status_code == 201, r.text
    tx["signed"] = r.json()["signed"]
    return tx


def _failing(report: dict) -> dict[str, list]:
    return {name: check.get("rows") for name, check in report["checks"].items() if not check["pass"]}


def _tamper(ward: Ward, sql: str, **params) -> None:
    tamper(ward.engine, "posting", sql, **params)


def _posting(ward: Ward, payment_id: str, reason: str) -> PostingRow:
    with Session(ward.engine) as s:
        row = (
            s.execute(select(PostingRow).where(PostingRow.payment_id == payment_id, PostingRow.reason == reason))
            .scalars()
            .first()
        )
        s.expunge(row)
        return row


def test_a_clean_ledger_passes_every_check(ward: Ward):
    tx = _history(ward)
    assert tx["signed"] == [f"2026-12-{d:02d}" for d in range(1, 32)]
    # Signing is idempotent: the finished days are signed already.
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).json() == {"signed": []}
    report = ward.reconcile()
    assert set(report["checks"]) == CHECKS
    assert report["ok"] is True, _failing(report)
    assert all(c["pass"] and not c.get("rows") for c in report["checks"].values())
    with Session(ward.engine) as s:
        payments = len(s.execute(select(PaymentRow.id)).all())
        assert report["postings"] == len(s.execute(select(PostingRow.sequence)).all())
    assert report["checks"]["rerate_matches_ledger"]["checked"] == payments == 6
    # Finance only.
    for headers in (ward.admin, ward.terminal_keys["TM001"]):
        assert ward.client.get("/v1/reconciliation", headers=headers).status_code == 403
        assert ward.client.post("/v1/chain-heads", headers=headers).status_code == 403


def test_a_changed_posting_amount_is_named(ward: Ward):
    tx = _history(ward)
    sale = _posting(ward, tx["a"]["id"], "coin_sale")
    _tamper(ward, "UPDATE posting SET amount = amount + 1 WHERE sequence = :s", s=sale.sequence)
    report = ward.reconcile()
    assert report["ok"] is False
    failing = _failing(report)
    assert sale.sequence in failing["hash_chain_intact"]
    assert {sale.debit_account_id, sale.credit_account_id} <= set(failing["cached_balances_match"])
    assert {(r["run_id"], r["merchant_id"]) for r in failing["statements_match_ledger"]} == {(tx["run"]["id"], "M001")}


def test_a_changed_burn_meter_is_named(ward: Ward):
    """The budgets' hour meters (`campaign_burn`) are held to the postings of their hour."""
    tx = _history(ward)
    award = _posting(ward, tx["d"]["id"], "award")
    hour = award.posted_at_us - award.posted_at_us % HOUR_US
    with ward.engine.begin() as c:
        changed = c.execute(
            text("UPDATE campaign_burn SET issued = issued + 1 WHERE campaign_id = :c AND hour_us = :h"),
            {"c": award.campaign_id, "h": hour},
        ).rowcount
    assert changed == 1
    report = ward.reconcile()
    assert report["ok"] is False
    assert _failing(report) == {"burn_meters_match": [f"{award.campaign_id}@{format_instant(hour)}"]}


def test_a_deleted_posting_is_named(ward: Ward):
    tx = _history(ward)
    award = _posting(ward, tx["d"]["id"], "award")
    _tamper(ward, "DELETE FROM posting WHERE sequence = :s", s=award.sequence)
    report = ward.reconcile()
    assert report["ok"] is False
    failing = _failing(report)
    assert failing["posting_sequence_gapless"] == [award.sequence]
    assert "hash_chain_intact" in failing
    assert {award.debit_account_id, award.credit_account_id} <= set(failing["cached_balances_match"])


def test_an_altered_stored_request_is_named(ward: Ward):
    tx = _history(ward)
    with Session(ward.engine) as s:
        request = json.loads(s.get(PaymentRow, tx["d"]["id"]).request_json)
    assert request["amount"] == 7_777
    request["amount"] = 8_777
    _tamper(ward, "UPDATE payment SET request_json = :r WHERE id = :id", r=json.dumps(request), id=tx["d"]["id"])
    report = ward.reconcile()
    failing = _failing(report)
    assert report["ok"] is False
    assert set(failing) == {"payment_chain_intact", "rerate_matches_ledger"}, failing
    assert failing["payment_chain_intact"] == [tx["d"]["id"]]
    assert {r["payment_id"] for r in failing["rerate_matches_ledger"]} == {tx["d"]["id"]}
    row = next(r for r in failing["rerate_matches_ledger"] if r["problem"] == "awards differ")
    assert row["rerated"]["PB"][0] == 877 and row["ledger"]["PB"][0] == 777


def test_a_purchase_stored_with_an_empty_item_list_is_reconciled_as_before(ward: Ward):
    """Builds before the empty item list was refused (SPEC §4) accepted `"items": []`. Such a
    purchase, stored as they stored it (its request in the payment's hash), is read back as it was:
    rated as a purchase without items, refunded, re-rated and reconciled without a mismatch, on
    the Python check of stored requests too (what runs wherever PostgreSQL cannot compare them)."""
    ward.merchant("M001")
    ward.campaign("PB", 1000)
    ward.campaign("TAGGED", 2000, item_tags=["local_produce"])
    plain = ward.purchase("M001", "W1", "2026-12-01T10:00", 5_000)
    request = ward.payment_app.sign_purchase(
        {
            "type": "purchase",
            "wallet_id": "W2",
            "merchant_id": "M001",
            "terminal_id": "TM001",
            "occurred_at": jst("2026-12-01T10:05").isoformat(),
            "amount": 5_000,
            "points_used": 0,
        },
        jti="pay_legacy",
    )
    # What an older build's validation let through, handed to the ledger as its API did.
    body = Purchase.model_validate(request).model_copy(update={"items": ()})
    receipt = Receipt(ward.payment_app.app_id, "pay_legacy")
    submission = Submission("TM001", "legacy", "legacy", body, body.model_dump_json(), receipt=receipt)
    ward.at("2026-12-01T10:05:02")
    (legacy,) = ward.ledger.submit([submission])
    assert legacy.status == 201, legacy.body
    ward.payment_app.accepted(request, legacy.body)
    with Session(ward.engine) as s:
        stored = s.get(PaymentRow, legacy.body["id"])
        assert json.loads(stored.request_json)["items"] == [] and stored.has_items is True
    earned = [[(a["campaign_id"], a["points"]) for a in answer["awards"]] for answer in (legacy.body, plain)]
    assert earned == [[("PB", 500)]] * 2  # as without items: no tagged base for TAGGED
    ward.refund(legacy.body, "2026-12-01T11:00", 2_000)

    report = ward.reconcile()
    assert report["ok"] is True, _failing(report)
    assert report["checks"]["rerate_matches_ledger"]["checked"] == 3
    with ward.engine.connect() as c:
        assert rerate.check_requests(c, rerate.load_history(c), None) == ([], {})


def test_a_campaign_version_changed_after_the_fact_is_named(ward: Ward):
    tx = _history(ward)
    with ward.engine.connect() as c:
        record = json.loads(
            c.execute(
                text("SELECT record_json FROM campaign_version WHERE campaign_id = 'PB' AND version = 1")
            ).scalar_one()
        )
    record["tiers"][0]["rate_bp"] = 1500
    _tamper(
        ward,
        "UPDATE campaign_version SET record_json = :r WHERE campaign_id = 'PB' AND version = 1",
        r=json.dumps(record),
    )
    report = ward.reconcile()
    failing = _failing(report)
    assert report["ok"] is False
    assert set(failing) == {"rerate_matches_ledger", "versions_match_audit"}, failing
    assert failing["versions_match_audit"] == [
        {
            "target": "campaign:PB",
            "version": 1,
            "audit_sequence": failing["versions_match_audit"][0]["audit_sequence"],
            "problem": "the version is not the record its audit entry holds",
        }
    ]
    named = {r["payment_id"] for r in failing["rerate_matches_ledger"]}
    # Every purchase PB awarded, and the refunds that clawed PB back.
    assert named == {tx[k]["id"] for k in "abcdef"}
    differ = [r for r in failing["rerate_matches_ledger"] if "rerated" in r]
    assert {r["payment_id"] for r in differ} == named
    for row in differ:
        assert row["rerated"]["PB"] != row["ledger"]["PB"]


def test_a_tampered_signed_chain_head_is_named(ward: Ward):
    _history(ward)
    with ward.engine.connect() as c:
        heads = {r.business_date: r for r in c.execute(text("SELECT * FROM chain_head"))}
    fake = "0" * 64
    # The row no longer says what was signed...
    _tamper(ward, "UPDATE chain_head SET hash = :h WHERE business_date = '2026-12-01'", h=fake)
    # ...and a document edited together with its row no longer verifies.
    signed = json.loads(heads["2026-12-02"].signed_json)
    signed["document"]["hash"] = fake
    _tamper(
        ward,
        "UPDATE chain_head SET hash = :h, signed_json = :j WHERE business_date = '2026-12-02'",
        h=fake,
        j=json.dumps(signed),
    )
    report = ward.reconcile()
    failing = _failing(report)
    assert set(failing) == {"signed_chain_heads_valid"}, failing
    rows = {r["business_date"]: r["problem"] for r in failing["signed_chain_heads_valid"]}
    assert rows == {"2026-12-01": "row differs from the signed document", "2026-12-02": "signature does not verify"}


def test_a_tampered_statement_line_is_named(ward: Ward):
    tx = _history(ward)
    _tamper(ward, "UPDATE settlement_line SET net_payout = net_payout + 1000 WHERE merchant_id = 'M002'")
    failing = _failing(ward.reconcile())
    assert set(failing) == {"statements_match_ledger"}, failing
    assert [(r["run_id"], r["merchant_id"]) for r in failing["statements_match_ledger"]] == [(tx["run"]["id"], "M002")]


def test_a_fee_change_after_settlement_leaves_the_closed_statement_reconciled(ward: Ward):
    """A new fee rate agreed in January applies from then on; December's statement stays what it was."""
    tx = _history(ward)
    r = ward.client.patch("/v1/merchants/M001", json={"fee_bp": 300}, headers=ward.admin)
    assert r.status_code == 200, r.text
    assert ward.get(f"/v1/settlement-runs/{tx['run']['id']}").json() == tx["run"]
    report = ward.reconcile()
    assert report["ok"] is True, _failing(report)


def _resealed(ward: Ward, run_id: str, change) -> Callable[[bytes], bytes]:
    """A change to the run's Zengin file made by one who holds the data key: opened, changed, sealed again."""

    def apply(stored: bytes) -> bytes:
        plain = sealing.open_sealed(ward.config._data_key(), stored, sealing.payout_file_associated(run_id))
        return sealing.seal(ward.config._data_key(), change(plain), sealing.payout_file_associated(run_id))

    return apply


ACCOUNT = bank_account(1)["account_number"].encode()


@pytest.mark.parametrize(
    "column, change, problem",
    [
        ("zengin_file", lambda w, r: _resealed(w, r, lambda f: f.replace(ACCOUNT, b"7777777")), "not the one"),
        ("zengin_file", lambda w, r: lambda f: f[:-1] + bytes([f[-1] ^ 1]), "does not open"),
        ("zengin_file", lambda w, r: lambda f: f, ""),  # placeholder replaced below: the file as plain text
        ("csv_text", lambda w, r: lambda c: c.replace("M001", "M009", 1), "stored CSV"),
    ],
    ids=["zengin_account_resealed", "zengin_altered", "zengin_plain_altered", "csv"],
)
def test_a_run_s_altered_outputs_are_named(ward: Ward, column: str, change, problem: str):
    """A run's Zengin file (sealed with the data key, and its every byte signed by its SHA-256) and
    CSV (made from the signed lines) are held to the signed statement: another account for a payout
    (sealed again by one holding the key, or in a file stored as plain text), altered sealed bytes,
    another merchant in the CSV, each named; undone, the ledger passes again."""
    tx = _history(ward)
    run_id = tx["run"]["id"]
    row = run_row(ward, run_id)
    original = getattr(row, column)
    plain = settlement.payout_file(ward.settings, row)
    assert ACCOUNT in plain and ACCOUNT not in row.zengin_file  # sealed at rest (SPEC §3)
    assert tx["run"]["statement"]["document"]["payout_file"]["sha256"] == hashlib.sha256(plain).hexdigest()
    sql = f"UPDATE settlement_run SET {column} = :v WHERE id = :r"
    if problem == "":  # a run stored before files were sealed: plain text, read as it is
        _tamper(ward, sql, v=plain, r=run_id)
        assert ward.reconcile()["ok"]
        assert ward.get(f"/v1/settlement-runs/{run_id}/zengin").content == plain
        changed, problem = plain.replace(ACCOUNT, b"7777777"), "not the one"
    else:
        changed = change(ward, run_id)(original)
    assert changed != original
    _tamper(ward, sql, v=changed, r=run_id)
    failing = _failing(ward.reconcile())
    assert set(failing) == {"statements_match_ledger"}, failing
    assert [(r["run_id"], problem in r["problem"]) for r in failing["statements_match_ledger"]] == [(run_id, True)]
    _tamper(ward, sql, v=original, r=run_id)
    assert ward.reconcile()["ok"]


def test_a_payout_status_the_ledger_does_not_hold_is_named(ward: Ward):
    """A line marked paid with no paid posting in the ledger (the bank's answer never came) is named."""
    tx = _history(ward)
    run_id = tx["run"]["id"]
    _tamper(
        ward, "UPDATE settlement_line SET payout_status = 'paid' WHERE run_id = :r AND merchant_id = 'M001'", r=run_id
    )
    failing = _failing(ward.reconcile())
    assert set(failing) == {"statements_match_ledger"}, failing
    assert [(r["run_id"], r.get("merchant_id"), r["problem"]) for r in failing["statements_match_ledger"]] == [
        (run_id, "M001", "payout status paid is not what the ledger holds (pending)")
    ]


def test_transfers_are_held_to_the_payout_postings_without_a_signed_hash(ward: Ward):
    """A statement signed before it carried the file's hash: each transfer of the stored file is
    held to the run's payout postings, in order (merchant and amount)."""
    tx = _history(ward)
    run = run_row(ward, tx["run"]["id"])
    signed = json.loads(run.statement_json)
    del signed["document"]["payout_file"]
    with Session(ward.engine) as s:
        lines = {
            line.merchant_id: line
            for line in s.execute(select(SettlementLineRow).where(SettlementLineRow.run_id == run.id)).scalars()
        }
        assert finance._run_outputs_problems(s, ward.settings, run, signed, lines) == []
        parsed = zengin.parse(settlement.payout_file(ward.settings, run))
        more = [
            dataclasses.replace(t, amount_yen=t.amount_yen + 1) if i == 0 else t for i, t in enumerate(parsed.transfers)
        ]
        run.zengin_file = zengin.write(parsed.header, more)  # stored as plain text, as before sealing
        assert finance._run_outputs_problems(s, ward.settings, run, signed, lines) == [
            {"problem": "the stored Zengin file's transfers differ from the run's payout postings"}
        ]


def test_every_check_passes_while_groups_commit_between_its_reads(ward: Ward):
    """The checks read many statements over several connections (postings streamed, then counted;
    payments, then the head; the re-rate's own). Each one reading the database as it stood then
    reported a broken hash chain, balances and identities whenever groups committed in between
    (helper-77's probe: 30 of 36 reports under load). They now read one snapshot."""
    import threading

    _history(ward)
    occurred_at = format_instant(ward.now_us() - 60_000_000)
    engine_fast_enough = []
    stop = threading.Event()

    def post() -> None:
        n = 0
        while not stop.is_set():
            group = []
            for _ in range(20):
                n += 1
                body = Purchase.model_validate(
                    {
                        "type": "purchase",
                        "wallet_id": f"W_LOAD_{n % 7}",
                        "merchant_id": "M002",
                        "terminal_id": "TM002",  # no closeout: its count is not checked
                        "occurred_at": occurred_at,
                        "amount": 1_000 + n,
                        "points_used": 0,
                    }
                )
                canonical = body.model_dump_json()
                group.append(
                    Submission("TM002", f"load-{n}", hashlib.sha256(canonical.encode()).hexdigest(), body, canonical)
                )
            assert all(r.status == 201 for r in ward.ledger.submit(group))
            engine_fast_enough.append(len(group))

    poster = threading.Thread(target=post)
    poster.start()
    try:
        reports = []
        while len(reports) < 3 or sum(engine_fast_enough) < 200:
            reports.append(finance.reconcile(ward.ledger, ward.settings))
    finally:
        stop.set()
        poster.join()
    failed = [sorted(n for n, c in r["checks"].items() if not c["pass"]) for r in reports if not r["ok"]]
    assert not failed, failed
    assert finance.reconcile(ward.ledger, ward.settings)["ok"]


def test_chain_heads_signed_at_once_are_each_signed_once(ward: Ward):
    """A cron job and a finance officer signing at once: each found the days unsigned and the
    second insert failed on the primary key (helper-77's probe: nine 500s out of ten). The
    signers now take turns; each day is signed by one of them."""
    from concurrent.futures import ThreadPoolExecutor

    ward.merchant("M001")
    ward.campaign("PB", 1000)
    for day in ("01", "02", "03"):
        ward.purchase("M001", "W1", f"2026-12-{day}T10:00", 1_000)
    ward.at("2026-12-05T09:00")
    with ThreadPoolExecutor(8) as pool:
        signed = list(pool.map(lambda _: finance.sign_chain_heads(ward.ledger, ward.settings), range(8)))
    assert sorted(day for days in signed for day in days) == [f"2026-12-0{d}" for d in range(1, 5)], signed
    assert ward.reconcile()["checks"]["signed_chain_heads_valid"]["pass"]


def test_points_spent_from_a_lot_past_its_end_are_named(ward: Ward):
    """A redemption leg from a lot that had ended when its purchase was accepted (what a purchase
    between a month's end and the expiry run could do before 9b58300) fails its check, naming the
    payment and the lot: a ledger written before that change shows what it spent."""
    tx = _history(ward)
    assert ward.reconcile()["checks"]["no_points_spent_past_expiry"] == {"pass": True, "rows": []}
    with Session(ward.engine) as s:
        (lot_id,) = s.execute(
            text("SELECT lot_id FROM redemption_leg WHERE payment_id = :p"), {"p": tx["c"]["id"]}
        ).one()
        accepted = s.execute(select(PaymentRow.accepted_at_us).where(PaymentRow.id == tx["c"]["id"])).scalar_one()
    source, campaign_id = lot_id.rsplit(":", 1)
    with ward.engine.begin() as c:  # the lot's end moved to the instant the purchase was accepted
        moved = (
            c.execute(
                text("UPDATE award SET lot_expires_at_us = :t WHERE payment_id = :p AND campaign_id = :c"),
                {"t": accepted, "p": source, "c": campaign_id},
            ).rowcount
            + c.execute(
                text("UPDATE point_lot SET expires_at_us = :t WHERE id = :i"), {"t": accepted, "i": lot_id}
            ).rowcount
        )
    assert moved == 1
    check = ward.reconcile()["checks"]["no_points_spent_past_expiry"]
    assert not check["pass"] and [(r["payment_id"], r["lot_id"], r["points"]) for r in check["rows"]] == [
        (tx["c"]["id"], lot_id, 200)
    ], check


# Holds the database's reconciliation slot from another process until it is killed.
_HOLD_SLOT = """
import sys, time
from engine.store import db, finance
engine = db.make_engine(sys.argv[1])
with db.alone(engine, finance.RECONCILIATION_LOCK, wait=False):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_reconciliation_runs_at_a_time_across_processes(ward: Ward):
    """Each run holds a snapshot and connections for its whole re-rate: while one runs in any
    process, `GET /v1/reconciliation` answers 409 `reconciliation_in_progress` (nothing else
    changes) and `setapay reconcile` (`wait=True`) queues; the slot is let go when its holder
    ends, however it ends (here SIGKILL)."""
    import subprocess
    import sys
    import threading

    from engine.errors import EngineError

    ward.merchant("M001")
    ward.campaign("PB", 1000)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 5_000)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SLOT, str(ward.engine.url.render_as_string(hide_password=False))],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        refused = ward.client.get("/v1/reconciliation", headers=ward.finance)
        assert refused.status_code == 409 and refused.json()["code"] == "reconciliation_in_progress", refused.text
        assert refused.headers["cache-control"] == "no-store"
        with pytest.raises(EngineError) as raised:
            finance.reconcile(ward.ledger, ward.settings)
        assert raised.value.code == "reconciliation_in_progress"
        queued: list[dict] = []
        waiter = threading.Thread(
            target=lambda: queued.append(finance.reconcile(ward.ledger, ward.settings, wait=True))
        )
        waiter.start()
        waiter.join(1.0)
        assert waiter.is_alive() and not queued, "a second reconciliation ran beside the first"
    finally:
        holder.kill()
        holder.wait()
    waiter.join(60)
    assert not waiter.is_alive() and queued[0]["ok"], queued
    answered = ward.client.get("/v1/reconciliation", headers=ward.finance)
    assert answered.status_code == 200 and answered.json()["ok"], answered.text


def _forge(ward: Ward, sql: str, **params) -> None:
    """`sql`, then what a forger who knows the chain's rule writes after it: every posting's hash
    again from the genesis, the head's, and each account's balance as its postings sum."""
    from engine import ledger_rules as rules

    _tamper(ward, sql, **params)
    with ward.engine.begin() as c:
        rows = c.execute(
            text(
                "SELECT sequence, payment_id, campaign_id, campaign_version, reason, debit_account_id, "
                "credit_account_id, amount, posted_at_us FROM posting ORDER BY sequence"
            )
        ).all()
    previous, hashes, balances = rules.GENESIS_HASH, {}, {}
    for r in rows:
        previous = hashes[r[0]] = rules.chain_hash_of(previous, *r)
        balances[r.debit_account_id] = balances.get(r.debit_account_id, 0) - r.amount
        balances[r.credit_account_id] = balances.get(r.credit_account_id, 0) + r.amount
    for sequence, digest in hashes.items():
        _tamper(ward, "UPDATE posting SET hash = :h WHERE sequence = :s", h=digest, s=sequence)
    with ward.engine.begin() as c:
        c.execute(text("UPDATE ledger_head SET last_hash = :h"), {"h": previous})
        c.execute(text("UPDATE account SET balance = 0"))
        for account, balance in balances.items():
            c.execute(text("UPDATE account SET balance = :b WHERE id = :a"), {"b": balance, "a": account})


def _open_day(ward: Ward) -> dict:
    """Purchases, a refund and a grant of a day nobody signed or settled."""
    ward.merchant("M001", bank=1)
    ward.merchant("M002", bank=2)
    ward.campaign("PB", 1000, per_wallet_cap=3_000, per_wallet_cap_period="month")
    tx = {
        "a": ward.purchase("M001", "W1", "2026-12-01T10:00", 5_000),
        "b": ward.purchase("M002", "W2", "2026-12-01T11:00", 3_000),
    }
    tx["c"] = ward.refund(tx["b"], "2026-12-01T12:00", 1_000)
    r = ward.client.post(
        "/v1/grants",
        headers={**ward.finance, "Idempotency-Key": "g-1"},
        json={"wallet_id": "W3", "campaign_id": "PB", "points": 700, "reason": "省エネ還元"},
    )
    assert r.status_code == 201, r.text
    tx["grant"] = r.json()
    ward.at("2026-12-01T13:00")
    assert ward.reconcile()["ok"]
    return tx


def test_a_sale_moved_to_another_merchant_with_its_chain_hashed_again_is_named(ward: Ward):
    """The chains are not keyed: a forger who hashes them again passes them, and in a day not
    signed yet nothing else tied a posting to its payment (helper-101: a sale moved to another
    merchant's payable, or a coin sale enlarged, passed every check and went into the payout)."""
    tx = _open_day(ward)
    _forge(
        ward,
        "UPDATE posting SET credit_account_id = 'merchant:M002:payable' WHERE payment_id = :p AND reason = 'coin_sale'",
        p=tx["a"]["id"],
    )
    failing = _failing(ward.reconcile())
    assert set(failing) == {"postings_match_payments"}, failing
    assert failing["postings_match_payments"] == [{"source": "coin_sale", "id": tx["a"]["id"]}]


def _forge_payments(ward: Ward, sql: str, **params) -> None:
    """`sql` on the payment table behind the engine's back, then the payment chain hashed again from
    the genesis, and the head's: what someone who can write the database and knows the rules does."""
    from engine import ledger_rules as rules

    tamper(ward.engine, "payment", sql, **params)
    with ward.engine.begin() as c:
        rows = c.execute(text(f"SELECT {', '.join(rules.PAYMENT_HASHED_FIELDS)} FROM payment ORDER BY sequence")).all()
        previous = rules.GENESIS_HASH
        for values in rows:
            previous = rules.payment_hash_of(previous, values)
            c.execute(text("UPDATE payment SET hash = :h WHERE sequence = :s"), {"h": previous, "s": values[0]})
        c.execute(text("UPDATE ledger_head SET last_payment_hash = :h"), {"h": previous})


def _accepted_at(ward: Ward, payment_id: str) -> int:
    with Session(ward.engine) as s:
        return s.execute(select(PaymentRow.accepted_at_us).where(PaymentRow.id == payment_id)).scalar_one()


def test_a_payment_s_acceptance_moved_before_the_one_before_it_is_named(ward: Ward):
    """The re-rate takes the versions in force at a payment's acceptance instant, and the payment
    chain, hashed again, passes whatever instant is written. Live stamps never go back along the
    chain (the order floor): a payment's instant moved before its predecessor's is named, with it."""
    tx = _open_day(ward)
    assert ward.reconcile()["checks"]["payments_accepted_in_order"] == {"pass": True, "rows": [], "from_sequence": 0}
    earlier = _accepted_at(ward, tx["a"]["id"]) - HOUR_US
    _forge_payments(ward, "UPDATE payment SET accepted_at_us = :t WHERE id = :p", t=earlier, p=tx["b"]["id"])
    report = ward.reconcile()
    assert report["checks"]["payment_chain_intact"]["pass"], "the forger hashed the chain again"
    assert _failing(report)["payments_accepted_in_order"] == [
        {
            "payment_id": tx["b"]["id"],
            "accepted_at": format_instant(earlier),
            "payment_before_id": tx["a"]["id"],
            "payment_before_accepted_at": format_instant(_accepted_at(ward, tx["a"]["id"])),
        }
    ]


def test_inversions_written_before_the_order_floor_are_not_named(ward: Ward):
    """A ledger written before the order floor may hold inversions (hosts a second apart, by design
    then): migration `20261219_ordered_from` starts the check at the chain's end it finds, and
    payments after it are checked."""
    tx = _open_day(ward)
    earlier = _accepted_at(ward, tx["a"]["id"]) - HOUR_US
    _forge_payments(ward, "UPDATE payment SET accepted_at_us = :t WHERE id = :p", t=earlier, p=tx["b"]["id"])
    assert not ward.reconcile()["checks"]["payments_accepted_in_order"]["pass"]
    ward.engine.dispose()
    db.downgrade(ward.settings.database_url, "20261218_order_floor")
    db.upgrade(ward.settings.database_url)
    check = ward.reconcile()["checks"]["payments_accepted_in_order"]
    with Session(ward.engine) as s:
        last = s.execute(select(PaymentRow.sequence).where(PaymentRow.id == tx["c"]["id"])).scalar_one()
    assert check == {"pass": True, "rows": [], "from_sequence": last}, "shown: a start moved is seen"
    ward.at("2026-12-01T14:00")
    after = ward.purchase("M001", "W1", "2026-12-01T14:00", 2_000)
    _forge_payments(ward, "UPDATE payment SET accepted_at_us = :t WHERE id = :p", t=earlier, p=after["id"])
    rows = _failing(ward.reconcile())["payments_accepted_in_order"]
    assert [(r["payment_id"], r["payment_before_id"]) for r in rows] == [(after["id"], tx["c"]["id"])]


def test_an_enlarged_award_posting_and_a_grant_without_its_row_are_named(ward: Ward):
    tx = _open_day(ward)
    _tamper(ward, "UPDATE posting SET amount = amount + 10 WHERE payment_id = :p AND reason = 'award'", p=tx["a"]["id"])
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM point_grant WHERE id = :g"), {"g": tx["grant"]["id"]})
    rows = _failing(ward.reconcile())["postings_match_awards_and_grants"]
    assert {"source": "award", "id": f"{tx['a']['id']}/PB"} in rows
    assert {"source": "grant", "id": tx["grant"]["id"]} in rows


def test_rows_a_check_cannot_read_fail_that_check_and_nothing_raises(ward: Ward):
    """A tampered row a check could not parse ended reconciliation with a traceback (the API: a
    500) instead of a report (helper-101). Each now fails its own check, saying why."""
    _history(ward)
    _tamper(ward, "UPDATE posting SET reason = 'debt_settlement' WHERE sequence = 1")
    with ward.engine.begin() as c:
        c.execute(text("UPDATE chain_head SET signed_json = 'not json' WHERE business_date = '2026-12-01'"))
    report = ward.get("/v1/reconciliation").json()  # 200
    assert report["ok"] is False
    assert report["checks"]["postings_of_their_kind"] == {"pass": False, "rows": [1]}
    heads = report["checks"]["signed_chain_heads_valid"]
    assert heads["pass"] is False and "JSONDecodeError" in heads["problem"], heads


def test_a_lot_s_end_moved_or_an_award_s_credit_moved_is_named(ward: Ward):
    """A lot's end moved a year later kept its points from the next expiry run, and every check
    passed (helper-101): the end, and an award's credit instant, are what its version gives."""
    tx = _open_day(ward)
    with ward.engine.begin() as c:
        c.execute(
            text("UPDATE award SET lot_expires_at_us = lot_expires_at_us + :y WHERE payment_id = :p"),
            {"y": 365 * 24 * HOUR_US, "p": tx["a"]["id"]},
        )
        c.execute(text("UPDATE point_lot SET expires_at_us = expires_at_us + :y"), {"y": 365 * 24 * HOUR_US})
    failing = _failing(ward.reconcile())
    assert set(failing) == {"lot_dates_match_campaigns"}, failing
    named = {(r.get("payment_id"), r.get("lot_id")) for r in failing["lot_dates_match_campaigns"]}
    assert (tx["a"]["id"], None) in named and any(lot for _, lot in named), failing


def test_a_deleted_signed_head_is_named_and_not_signed_again(ward: Ward):
    """Only the heads there were checked: deleting one (or all) left nothing to check the chain
    against, and the next signing signed again whatever the chain said by then (helper-101)."""
    _history(ward)
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM chain_head WHERE business_date IN ('2026-12-02', '2026-12-10')"))
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).json() == {"signed": []}
    failing = _failing(ward.reconcile())
    assert set(failing) == {"signed_chain_heads_valid"}, failing
    assert [r["business_date"] for r in failing["signed_chain_heads_valid"]] == ["2026-12-02", "2026-12-10"]
    ward.at("2027-01-02T00:30")
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).json() == {"signed": ["2027-01-01"]}
    with ward.engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM chain_head WHERE business_date = '2026-12-10'")).scalar_one() == 0


def test_a_cut_posting_tail_with_the_head_left_and_a_deleted_audit_head_are_named(ward: Ward):
    _open_day(ward)
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM audit_head"))
    _tamper(ward, "UPDATE ledger_head SET last_posting_sequence = last_posting_sequence + 1")
    failing = _failing(ward.reconcile())
    assert "ledger_head" in failing["hash_chain_intact"], failing
    assert any(r["problem"] == "the audit head is missing" for r in failing["audit_chain_intact"]), failing


def test_a_wallet_s_cap_usage_zeroed_is_named(ward: Ward):
    tx = _open_day(ward)
    with ward.engine.begin() as c:
        usage = c.execute(text("SELECT wallet_id, campaign_id, window_key FROM wallet_window_usage")).all()
        c.execute(text("UPDATE wallet_window_usage SET points = 0 WHERE wallet_id = 'W1'"))
    assert usage, "the campaign has a cap: its awards keep usage"
    failing = _failing(ward.reconcile())
    assert set(failing) == {"cap_usage_matches_awards"}, failing
    assert [r.split("/")[0] for r in failing["cap_usage_matches_awards"]] == ["W1"]
    assert tx


def test_a_deleted_usage_row_and_a_clawback_from_another_wallet_are_named(ward: Ward):
    """A usage row deleted reads as zero like one zeroed; a clawback's accounts were not checked,
    only its sum, so one taken from another wallet passed (helper-105)."""
    tx = _open_day(ward)
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM wallet_window_usage WHERE wallet_id = 'W1'"))
    _tamper(
        ward,
        "UPDATE posting SET debit_account_id = 'wallet:W1:PB:available' WHERE payment_id = :r AND reason = 'clawback'",
        r=tx["c"]["id"],
    )
    failing = _failing(ward.reconcile())
    assert [r.split("/")[0] for r in failing["cap_usage_matches_awards"]] == ["W1"], failing
    assert {"source": "award", "id": f"{tx['b']['id']}/PB"} in failing["postings_match_awards_and_grants"], failing


@pytest.fixture
def kept(database_url, tmp_path):
    """A ward whose signed heads are copied into a directory outside its database (`heads_dir`)."""
    w = Ward(database_url, heads_dir=str(tmp_path / "heads"))
    try:
        yield w, tmp_path / "heads"
    finally:
        w.close()


def _copies(directory) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def test_heads_copied_outside_the_database_name_the_latest_heads_deleted_and_the_audit_log_deleted_whole(kept):
    """Two open edges: the latest signed heads, deleted before the next signing, were signed again
    over whatever the chain then said; and the audit log deleted whole with its head passed once no
    signed head was left to name its position. With `heads_dir`, each head is copied as it is
    signed, and reconciliation compares the database's heads with the copies."""
    ward, heads = kept
    tx = _history(ward)
    with ward.engine.connect() as c:
        stored = dict(c.execute(text("SELECT business_date, signed_json FROM chain_head")).all())
    assert sorted(stored) == tx["signed"] and len(stored) == 31
    assert _copies(heads) == {f"chain-head-{d}.json": signed for d, signed in stored.items()}
    report = ward.reconcile()
    assert report["ok"], _failing(report)
    assert report["checks"]["signed_chain_heads_valid"]["copies_compared"] == 31

    # The last two days' heads deleted: named by their copies. Signed again over the same chain,
    # they are the same documents (Ed25519 signs deterministically), and no copy is replaced.
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM chain_head WHERE business_date >= '2026-12-30'"))
    failing = _failing(ward.reconcile())
    assert set(failing) == {"signed_chain_heads_valid"}, failing
    assert failing["signed_chain_heads_valid"] == [
        {"business_date": d, "copy": True, "problem": "signed head deleted from the database"}
        for d in ("2026-12-30", "2026-12-31")
    ]
    before = {p.name: p.stat().st_mtime_ns for p in heads.iterdir()}
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).json() == {"signed": ["2026-12-30", "2026-12-31"]}
    assert {p.name: p.stat().st_mtime_ns for p in heads.iterdir()} == before
    assert ward.reconcile()["ok"]

    # Every head deleted, then the audit log with its head: the database alone has nothing left
    # to check the audit log against; each copy names where it ended.
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM chain_head"))
        c.execute(text("DELETE FROM audit_head"))
    tamper(ward.engine, "audit_log", "DELETE FROM audit_log")
    failing = _failing(ward.reconcile())
    assert set(failing) == {"signed_chain_heads_valid"}, failing
    rows = failing["signed_chain_heads_valid"]
    assert [r["business_date"] for r in rows] == tx["signed"]
    assert {(r["copy"], r["problem"]) for r in rows} == {(True, "audit chain no longer ends there")}


def test_a_copy_missing_edited_or_unreadable_is_named_and_the_rest_still_checked(kept):
    ward, heads = kept
    _history(ward)
    (heads / "chain-head-2026-12-05.json").unlink()
    edited = json.loads((heads / "chain-head-2026-12-06.json").read_text())
    edited["document"]["last_sequence"] += 1
    (heads / "chain-head-2026-12-06.json").write_text(json.dumps(edited))
    (heads / "chain-head-2026-12-07.json").write_text("{not json")
    (heads / "notes.txt").write_text("not a copy: ignored")
    report = ward.reconcile()
    failing = _failing(report)
    assert set(failing) == {"signed_chain_heads_valid"}, failing
    assert sorted((r["business_date"], r["problem"]) for r in failing["signed_chain_heads_valid"]) == [
        ("2026-12-05", "no copy kept outside the database"),
        ("2026-12-06", "database's head differs from the copy kept outside it"),
        ("2026-12-07", "copy unreadable: JSONDecodeError"),
    ]
    assert report["checks"]["signed_chain_heads_valid"]["copies_compared"] == 30
    # The next signing copies the missing head again and leaves the others as they are; a head
    # row whose date names a path (written behind the engine's back) is not copied anywhere.
    with ward.engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO chain_head (business_date, last_sequence, hash, signed_json)"
                " SELECT '../../q7Z', last_sequence, hash, signed_json FROM chain_head"
                " WHERE business_date = '2026-12-08'"
            )
        )
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).json() == {"signed": []}
    assert (heads / "chain-head-2026-12-05.json").exists()
    assert (heads / "chain-head-2026-12-07.json").read_text() == "{not json"
    assert not list(heads.parent.parent.glob("**/*q7Z*")) and len(list(heads.iterdir())) == 32


def test_setapay_sign_heads_out_and_reconcile_heads(ward: Ward, tmp_path, monkeypatch, capsys):
    """`setapay sign-heads --out DIR` copies every signed head there (those signed before too);
    `setapay reconcile --heads DIR` compares; a directory that cannot be made is exit 1, said."""
    from engine import cli

    _history(ward)
    monkeypatch.setenv("SETAPAY_DATABASE_URL", ward.settings.database_url)
    monkeypatch.setenv("SETAPAY_SIGNING_KEY_B64", ward.signing_key_b64)
    monkeypatch.setenv("SETAPAY_DATA_KEY_B64", ward.data_key_b64)
    monkeypatch.delenv("SETAPAY_HEADS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    heads = tmp_path / "kept"
    assert cli.main(["sign-heads", "--out", str(heads)]) == 0
    assert f"every signed head has its copy in {heads}" in capsys.readouterr().out
    assert len(list(heads.iterdir())) == 31
    assert cli.main(["reconcile", "--json", "--heads", str(heads)]) == 0
    assert json.loads(capsys.readouterr().out)["checks"]["signed_chain_heads_valid"]["copies_compared"] == 31
    (heads / "chain-head-2026-12-31.json").unlink()
    assert cli.main(["reconcile", "--heads", str(heads)]) == 1
    out = capsys.readouterr().out
    assert "FAIL signed_chain_heads_valid" in out and "no copy kept outside the database" in out, out

    (tmp_path / "a-file").write_text("")
    assert cli.main(["sign-heads", "--out", str(tmp_path / "a-file" / "heads")]) == 1
    assert "copies not kept in" in capsys.readouterr().err


def test_a_merchant_s_fee_edited_in_its_record_and_its_version_is_named_by_its_audit_entry(ward: Ward):
    """A fee edited in both the merchant's record and its version passed every check: settlement
    charges the version's fee and the re-rate does not read fees (ARCHITECTURE's open edge).
    Each version is now the record its audit entry holds; a version, or an entry, deleted on its
    own is named too. Versions made before the audit log began are not checked."""
    _history(ward)
    ward.merchant("M003", fee_bp=100, bank=3)
    r = ward.client.patch("/v1/merchants/M003", json={"fee_bp": 250}, headers=ward.admin)
    assert r.status_code == 200, r.text
    assert ward.reconcile()["ok"]
    for table, where in (("merchant", "id = 'M003'"), ("merchant_version", "merchant_id = 'M003' AND version = 2")):
        with ward.engine.connect() as c:
            record = json.loads(c.execute(text(f"SELECT record_json FROM {table} WHERE {where}")).scalar_one())
        record["fee_bp"] = 10
        with ward.engine.begin() as c:
            c.execute(text(f"UPDATE {table} SET record_json = :r WHERE {where}"), {"r": json.dumps(record)})
    failing = _failing(ward.reconcile())
    assert set(failing) == {"versions_match_audit"}, failing
    (row,) = failing["versions_match_audit"]
    assert row["target"] == "merchant:M003" and row["version"] == 2, row
    with ward.engine.begin() as c:
        c.execute(text("DELETE FROM merchant_version WHERE merchant_id = 'M003' AND version = 2"))
    rows = _failing(ward.reconcile())["versions_match_audit"]
    assert [(r["target"], r["problem"]) for r in rows] == [
        ("merchant:M003", "a version without its audit entry, or an entry without its version")
    ], rows


def test_names_mended_by_the_label_migration_are_not_a_version_edited():
    """Migration `20261211_label_names` mended stored names and schemes with no audit entry; a
    version it mended is still the record its entry holds, and nothing else may differ."""
    logged = {
        "id": "M_BAD",
        "name": "M\x00x\u202egnp.exe",
        "fee_bp": 100,
        "ethical_certifications": [{"scheme": "setagaya\nethical", "valid_from": "2026-01-01T00:00:00+09:00"}],
    }
    mended = {
        **logged,
        "name": "M\ufffdx\ufffdgnp.exe",
        "ethical_certifications": [{"scheme": "setagaya\ufffdethical", "valid_from": "2026-01-01T00:00:00+09:00"}],
    }
    assert finance._names_mended(mended, logged)
    assert finance._names_mended({**logged, "name": "M_BAD"}, {**logged, "name": " \t\u3000"})
    assert not finance._names_mended({**mended, "fee_bp": 10}, logged)
    assert not finance._names_mended({**logged, "name": "Another shop"}, logged)
    assert not finance._names_mended({**logged, "name": "M\ufffdx"}, logged)  # not one U+FFFD a character
    scheme_changed = [{"scheme": "other", "valid_from": "2026-01-01T00:00:00+09:00"}]
    assert not finance._names_mended({**logged, "ethical_certifications": scheme_changed}, logged)
