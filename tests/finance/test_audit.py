"""The audit log (SPEC §9.5) and changes that redirect money (SPEC §9.6), on a real database,
through the real routes: who changed what, masked; append-only; the chain checked by
reconciliation; a new payout account held until another key confirms it; merchant
funding charged by the campaign version that issued the points."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from engine.store import audit
from engine.store.config import Config
from engine.store.db import make_engine
from engine.store.models import AuditLogRow, MerchantVersionRow
from tests.finance.support import Ward, bank_account, lines_by_merchant, tamper
from tests.tokyo import jst, us


def key_id(headers: dict) -> str:
    """An API key's id, from the key itself (`sp_<role>_<id>_<secret>`)."""
    return headers["Authorization"].split(" ", 1)[1].split("_")[2]


def pending_set_at(ward: Ward, merchant_id: str = "M1") -> str:
    """The `set_at` naming the merchant's latest payout account change, as a finance key reads it:
    from the audit log's `merchant.bank_account.change` entry (or the record's, before any change)."""
    changes = [
        e for e in entries(ward, target=f"merchant:{merchant_id}") if e["action"] == "merchant.bank_account.change"
    ]
    if changes:
        return changes[-1]["after"]["bank_account"]["set_at"]
    r = ward.client.get(f"/v1/merchants/{merchant_id}", headers=ward.admin)
    assert r.status_code == 200, r.text
    return r.json()["bank_account_masked"]["set_at"]


def confirm(ward: Ward, headers: dict, merchant_id: str = "M1", set_at: str | None = None, account: dict | None = None):
    """POST the confirmation of the change the merchant's record shows now (or of `set_at`), of
    `account` (by default the one on file: the merchant's word is the test's own here)."""
    named = set_at or (pending_set_at(ward, merchant_id) if merchant_id == "M1" else "2027-01-01T00:00:00+09:00")
    if account is None:
        on_file = ward.config.bank_account(merchant_id)
        account = on_file.model_dump() if on_file is not None else bank_account(1)
    return ward.client.post(
        f"/v1/merchants/{merchant_id}/bank-account/confirm",
        json={"set_at": named, "bank_account": account},
        headers=headers,
    )


def entries(ward: Ward, headers: dict | None = None, **params) -> list[dict]:
    """Every entry the API lists for the filter, following the cursor."""
    out, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = ward.client.get("/v1/audit", params=query, headers=headers or ward.finance)
        assert r.status_code == 200, r.text
        body = r.json()
        out.extend(body["entries"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out


def _base(ward: Ward) -> int:
    """The audit log's last sequence now: the ward's set-up (its keys, its payment app) is logged too."""
    with ward.engine.connect() as c:
        return c.execute(text("SELECT COALESCE(MAX(sequence), 0) FROM audit_log")).scalar_one()


def _tamper(ward: Ward, sql: str, **params) -> None:
    tamper(ward.engine, "audit_log", sql, **params)


def _raw_audit(ward: Ward) -> str:
    with ward.engine.connect() as c:
        return "\n".join(str(tuple(r)) for r in c.execute(text("SELECT * FROM audit_log")))


def _secrets_of(n: int) -> list[str]:
    account = bank_account(n)
    return [account["account_number"], account["holder_kana"]]


# -- what is recorded -----------------------------------------------------------------------------


def test_every_covered_change_is_recorded_with_actor_before_and_after(ward: Ward):
    admin, finance = key_id(ward.admin), key_id(ward.finance)
    ward.merchant("M1", bank=1)  # and its terminal TM1
    ward.merchant("M2", terminal=False)
    ward.campaign("C1", 1000, funding_source="ward_general")
    cert = {
        "scheme": "ethical",
        "valid_from": jst("2026-11-01T00:00").isoformat(),
        "valid_until": jst("2027-11-01T00:00").isoformat(),
    }
    r = ward.client.patch(
        "/v1/merchants/M1", json={"ethical_certifications": [cert], "fee_bp": 100}, headers=ward.admin
    )
    assert r.status_code == 200, r.text
    # Granted while C1 is the ward's: no grant is made against a merchant-funded campaign.
    r = ward.client.post(
        "/v1/grants",
        json={"wallet_id": "W1", "campaign_id": "C1", "points": 300, "reason": "energy saving"},
        headers={**ward.finance, "Idempotency-Key": "g1"},
    )
    assert r.status_code == 201, r.text
    r = ward.client.patch("/v1/campaigns/C1", json={"funding_source": "merchant:M1"}, headers=ward.admin)
    assert r.status_code == 200, r.text
    r = ward.client.patch("/v1/terminals/TM1", json={"merchant_id": "M2"}, headers=ward.admin)
    assert r.status_code == 200, r.text
    r = ward.client.patch("/v1/terminals/TM1", json={"merchant_id": "M1"}, headers=ward.admin)
    assert r.status_code == 200, r.text
    ward.purchase("M1", "W1", "2026-12-05T10:00", 5_000)
    r = ward.client.post(
        "/v1/terminals/TM1/closeouts",
        json={"business_date": "2026-12-05", "count": 1, "total": 5_000},
        headers=ward.terminal_keys["TM1"],
    )
    assert r.status_code == 201, r.text
    ward.at("2027-01-01T00:30")
    run = ward.settle("2026-12")
    r = ward.client.post(
        f"/v1/settlement-runs/{run['id']}/payout-results",
        json={"results": [{"merchant_id": "M1", "status": "paid"}]},
        headers=ward.finance,
    )
    assert r.status_code == 200, r.text

    log = entries(ward)
    assert [e["sequence"] for e in log] == list(range(1, len(log) + 1))
    by_action: dict[str, list[dict]] = {}
    for e in log:
        by_action.setdefault(e["action"], []).append(e)

    created = {e["target"]: e for e in by_action["merchant.create"]}
    assert created["merchant:M1"]["actor"] == {"key_id": admin, "role": "admin"}
    assert created["merchant:M1"]["before"] is None
    assert created["merchant:M1"]["after"]["name"] == "Shop M1"
    assert created["merchant:M1"]["after"]["bank_account_masked"]["account_number_last4"] == "4501"
    update = by_action["merchant.update"][0]
    assert update["target"] == "merchant:M1" and update["actor"]["key_id"] == admin
    assert update["before"]["ethical_certifications"] == [] and update["before"]["fee_bp"] == 0
    assert update["after"]["ethical_certifications"][0]["scheme"] == "ethical" and update["after"]["fee_bp"] == 100

    campaign_update = by_action["campaign.update"][0]
    assert campaign_update["target"] == "campaign:C1"
    assert campaign_update["before"]["funding_source"] == "ward_general"
    assert campaign_update["after"]["funding_source"] == "merchant:M1"
    assert campaign_update["after"]["version"] == 2
    assert by_action["campaign.create"][0]["after"]["id"] == "C1"

    assert {e["target"] for e in by_action["terminal.create"]} == {"terminal:TM1"}
    moves = by_action["terminal.move"]
    assert [(m["before"]["merchant_id"], m["after"]["merchant_id"]) for m in moves] == [("M1", "M2"), ("M2", "M1")]

    grant = by_action["grant.create"][0]
    assert grant["actor"] == {"key_id": finance, "role": "finance"} and grant["target"] == "wallet:W1"
    assert grant["after"]["points"] == 300 and grant["after"]["campaign_id"] == "C1"

    closeout = by_action["closeout.submit"][0]
    assert closeout["actor"]["role"] == "terminal" and closeout["target"] == "terminal:TM1"
    assert closeout["after"] == {"business_date": "2026-12-05", "count": 1, "total": 5_000, "matches": True}

    settled = by_action["settlement.run"][0]
    assert settled["actor"] == {"key_id": finance, "role": "finance"}
    assert settled["target"] == f"settlement_run:{run['id']}"
    assert settled["after"]["payouts"][0]["payout_status"] == "pending"
    results = by_action["settlement.payout_results"][0]
    assert results["before"]["payouts"]["M1"] == "pending" and results["after"]["payouts"]["M1"] == "paid"

    # Entries are chained, and reconciliation finds the chain whole.
    report = ward.reconcile()
    assert report["checks"]["audit_chain_intact"] == {"pass": True, "rows": []}
    assert report["checks"]["audit_sequence_gapless"] == {"pass": True, "rows": []}


def test_the_command_line_is_its_own_actor(database_url):
    engine = make_engine(database_url)
    from engine.store.db import upgrade

    upgrade(database_url)
    from engine.model import Merchant

    Config(engine).create_merchant(Merchant(id="M9", name="x", merchant_class="small"))
    with Session(engine) as s:
        row = s.execute(select(AuditLogRow)).scalar_one()
        assert (row.actor_key_id, row.actor_role, row.action, row.target) == (
            "cli",
            "operator",
            "merchant.create",
            "merchant:M9",
        )
    engine.dispose()


# -- masking --------------------------------------------------------------------------------------


def test_bank_accounts_are_masked_in_the_log_and_in_answers(ward: Ward):
    ward.merchant("M1", bank=1)
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200, r.text
    answers = [r.text]
    assert r.json()["bank_account_masked"]["account_number_last4"] == "4502"
    assert r.json()["bank_account_pending_confirmation"] is True
    answers.append(ward.client.get("/v1/merchants/M1", headers=ward.admin).text)
    answers.append(ward.client.get("/v1/merchants", headers=ward.admin).text)
    r = confirm(ward, ward.finance)
    assert r.status_code == 200, r.text
    answers.append(r.text)
    answers.append(ward.client.get("/v1/audit", headers=ward.finance).text)
    raw = _raw_audit(ward)
    for secret in _secrets_of(1) + _secrets_of(2):
        assert secret not in raw
        for answer in answers:
            assert secret not in answer
    change = [e for e in entries(ward) if e["action"] == "merchant.bank_account.change"]
    assert change[0]["before"]["bank_account"]["account_number_last4"] == "4501"
    assert change[0]["after"]["bank_account"]["account_number_last4"] == "4502"
    # Keys never reach the log either.
    for headers in (ward.admin, ward.finance):
        assert headers["Authorization"].split(" ", 1)[1] not in raw


def test_masking_redacts_secrets_at_any_depth():
    from engine import audit as core

    masked = core.mask(
        {
            "id": "APP1",
            "secret": "s3cr3t",
            "nested": [{"receipt_secret": "x", "key_hash": "ab", "bank_account": bank_account(5)}],
            "shown": "sp_admin_0123_abcdef",
            "account_number": "1234567",
        }
    )
    text_form = json.dumps(masked, ensure_ascii=False)
    for secret in (
        "s3cr3t",
        '"x"',
        '"ab"',
        "1234505",
        "sp_admin_0123_abcdef",
        "1234567",
        bank_account(5)["holder_kana"],
    ):
        assert secret not in text_form
    assert masked["nested"][0]["bank_account"]["account_number_last4"] == "4505"
    assert masked["account_number"] == "***4567"


# -- append-only, chain, reconciliation -----------------------------------------------------------


def test_the_database_refuses_to_update_or_delete_audit_entries(ward: Ward):
    ward.merchant("M1")
    for sql in ("UPDATE audit_log SET action = 'nothing' WHERE sequence = 1", "DELETE FROM audit_log"):
        with pytest.raises((IntegrityError, DBAPIError)), ward.engine.begin() as c:
            c.execute(text(sql))
    if ward.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError), ward.engine.begin() as c:
            c.execute(text("TRUNCATE audit_log"))
    with ward.engine.connect() as c:
        actions = c.execute(text("SELECT action FROM audit_log ORDER BY sequence")).scalars().all()
    assert [a for a in actions if not a.startswith(("key.", "app."))] == ["merchant.create", "terminal.create"]


def test_reconciliation_names_an_altered_entry(ward: Ward):
    ward.merchant("M1", bank=1)
    ward.campaign("C1", 1000)
    assert ward.reconcile()["ok"] is True
    with ward.engine.connect() as c:
        seq = c.execute(text("SELECT sequence FROM audit_log WHERE action = 'campaign.create'")).scalar_one()
    _tamper(ward, f"UPDATE audit_log SET after_json = REPLACE(after_json, 'C1', 'C2') WHERE sequence = {seq}")
    report = ward.reconcile()
    assert report["ok"] is False
    assert report["checks"]["audit_chain_intact"]["pass"] is False
    assert [row["sequence"] for row in report["checks"]["audit_chain_intact"]["rows"]] == [seq]
    assert report["checks"]["audit_sequence_gapless"]["pass"] is True


def test_reconciliation_finds_a_removed_entry(ward: Ward):
    b = _base(ward)
    ward.merchant("M1")
    ward.campaign("C1", 1000)
    _tamper(ward, f"DELETE FROM audit_log WHERE sequence = {b + 2}")
    report = ward.reconcile()
    assert report["checks"]["audit_sequence_gapless"]["rows"] == [{"expected_sequence": b + 2, "found_sequence": b + 3}]
    assert report["checks"]["audit_chain_intact"]["pass"] is False
    assert report["checks"]["audit_chain_intact"]["rows"][0]["sequence"] == b + 3


def test_appends_from_several_processes_stay_gapless_and_linear(database_url):
    """Four writers with engines of their own (as four API processes would) change config at once."""
    from engine.model import Merchant
    from engine.store.db import upgrade

    upgrade(database_url)
    engines = [make_engine(database_url) for _ in range(4)]
    errors = []

    def work(i: int) -> None:
        try:
            config = Config(engines[i])
            for n in range(8):
                config.create_merchant(Merchant(id=f"M{i}_{n}", name="x", merchant_class="small"))
                config.update_merchant(f"M{i}_{n}", {"fee_bp": n + 1})  # a change: {"fee_bp": 0} is none
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    with Session(engines[0]) as s:
        report = audit.check(s)
        sequences = s.execute(select(AuditLogRow.sequence).order_by(AuditLogRow.sequence)).scalars().all()
    assert report == {"breaks": [], "gaps": []}
    assert sequences == list(range(1, 65))
    for e in engines:
        e.dispose()


# -- reading --------------------------------------------------------------------------------------


def test_get_audit_filters_and_paginates(ward: Ward):
    b = _base(ward)
    ward.at("2026-12-01T10:00")
    ward.merchant("M1", terminal=False)
    ward.at("2026-12-02T10:00")
    ward.merchant("M2", terminal=False)
    for fee in (10, 20, 30):
        ward.at(f"2026-12-03T10:{fee}")
        assert ward.client.patch("/v1/merchants/M1", json={"fee_bp": fee}, headers=ward.admin).status_code == 200
    everything = [e for e in entries(ward) if e["sequence"] > b]
    assert [e["sequence"] for e in everything] == [b + n for n in (1, 2, 3, 4, 5)]
    # Keyset pages of two, in order, none twice.
    r = ward.client.get("/v1/audit", params={"limit": 2}, headers=ward.admin)
    assert r.status_code == 200 and [e["sequence"] for e in r.json()["entries"]] == [1, 2]
    assert [e["sequence"] for e in entries(ward, limit=2)] == list(range(1, b + 6))
    assert [e["sequence"] for e in entries(ward, limit=500)] == list(range(1, b + 6))
    # By target, and by instant [from, to).
    assert [e["sequence"] for e in entries(ward, target="merchant:M1")] == [b + n for n in (1, 3, 4, 5)]
    assert [e["sequence"] for e in entries(ward, target="merchant:M9")] == []
    window = {"from": jst("2026-12-02T00:00").isoformat(), "to": jst("2026-12-03T10:20").isoformat()}
    assert [e["sequence"] for e in entries(ward, **window)] == [b + 2, b + 3]
    assert [e["sequence"] for e in entries(ward, target="merchant:M1", limit=1, **window)] == [b + 3]
    assert everything[0]["at"].startswith("2026-12-01T10:00")


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "x"},
        {"limit": 2**70},
        {"cursor": "!!!"},
        {"cursor": "a" * 65},
        {"cursor": "c2VxOjE"},
        {"cursor": base64.urlsafe_b64encode(b"aud:99999999999999999999").decode().rstrip("=")},
        {"cursor": base64.urlsafe_b64encode(b"aud:-1").decode().rstrip("=")},
        {"cursor": base64.urlsafe_b64encode(b"\xff\xfe").decode()},
        {"target": "merchant:M1\x00"},
        {"target": "x" * 201},
        {"target": ""},
        {"target": "a b"},
        {"from": "1700000000"},
        {"from": "2026-12-01T00:00:00"},
        {"from": "10000-01-01T00:00:00+09:00"},
        {"to": "not a date"},
    ],
)
def test_get_audit_refuses_bad_parameters_with_a_4xx(ward: Ward, params):
    r = ward.client.get("/v1/audit", params=params, headers=ward.finance)
    assert 400 <= r.status_code < 500, (params, r.status_code, r.text)
    assert r.json()["code"] == "invalid_request"


def test_get_audit_at_the_edges_of_time_answers(ward: Ward):
    ward.merchant("M1", terminal=False)
    for params in (
        {"from": "0001-01-01T00:00:00+14:00", "to": "9999-12-31T23:59:59-12:00"},
        {"from": "9999-12-31T23:59:59-12:00"},
    ):
        r = ward.client.get("/v1/audit", params=params, headers=ward.finance)
        assert r.status_code in (200, 422), r.text


def test_only_admin_and_finance_read_the_audit_log(ward: Ward):
    ward.merchant("M1")
    merchant_key = {"Authorization": f"Bearer {ward.config.create_key('merchant', merchant_id='M1')}"}
    for headers in (ward.terminal_keys["TM1"], merchant_key):
        assert ward.client.get("/v1/audit", headers=headers).status_code == 403
    assert ward.client.get("/v1/audit").status_code == 401
    assert ward.client.get("/v1/audit", headers=ward.admin).status_code == 200


# -- §9.6: a new payout account is held until another key confirms it -------------------------------


def test_a_bank_account_change_holds_payouts_until_another_key_confirms(ward: Ward):
    ward.merchant("M1", bank=1)  # the first account, set at creation, needs no confirmation
    ward.merchant("M2", bank=3)
    ward.purchase("M1", "W1", "2026-12-05T10:00", 10_000)
    ward.purchase("M2", "W2", "2026-12-05T11:00", 7_000)
    ward.at("2027-01-01T00:30")
    december = ward.settle("2026-12")
    assert {p["merchant_id"]: p["payout_status"] for p in december["payouts"]} == {"M1": "pending", "M2": "pending"}

    ward.at("2027-01-05T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200, r.text
    assert r.json()["bank_account_pending_confirmation"] is True
    with Session(ward.engine) as s:
        versions = (
            s.execute(
                select(MerchantVersionRow.record_json)
                .where(MerchantVersionRow.merchant_id == "M1")
                .order_by(MerchantVersionRow.version)
            )
            .scalars()
            .all()
        )
    assert len(versions) == 2 and versions[0] != versions[1]
    assert json.loads(versions[1])["bank_account_masked"]["account_number_last4"] == "4502"

    ward.purchase("M1", "W1", "2027-01-10T10:00", 4_000)
    ward.purchase("M2", "W2", "2027-01-10T11:00", 3_000)
    ward.at("2027-02-01T00:30")
    january = ward.settle("2027-01")
    lines = lines_by_merchant(january)
    statuses = {p["merchant_id"]: p["payout_status"] for p in january["payouts"]}
    assert statuses == {"M1": "held_bank_change", "M2": "pending"}
    assert lines["M1"]["net_payout"] == 4_000
    zengin = ward.get(f"/v1/settlement-runs/{january['id']}/zengin").content
    assert bank_account(2)["account_number"].encode() not in zengin  # nobody paid to the unconfirmed account
    assert bank_account(1)["account_number"].encode() not in zengin
    assert bank_account(3)["account_number"].encode() in zengin

    # The key that made the change cannot confirm it; another can, once.
    r = confirm(ward, ward.admin)
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    r = confirm(ward, ward.terminal_keys["TM1"])
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    # Nor can a key made after the change (the changer could make a second key and confirm with it).
    ward.at("2027-02-01T09:00")
    made = ward.client.post("/v1/keys", json={"role": "admin"}, headers=ward.admin)
    assert made.status_code == 201, made.text
    r = confirm(ward, {"Authorization": f"Bearer {made.json()['key']}"})
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    ward.at("2027-02-02T09:00")
    r = confirm(ward, ward.finance)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text
    r = confirm(ward, ward.finance)
    assert r.status_code == 409 and r.json()["code"] == "bank_change_not_pending"
    r = confirm(ward, ward.finance, "M9")
    assert r.status_code == 404
    confirmed = [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm"]
    assert confirmed[0]["actor"] == {"key_id": key_id(ward.finance), "role": "finance"}
    assert confirmed[0]["before"]["changed_by"] == key_id(ward.admin)

    # The held amount is carried into the next period and paid to the confirmed account.
    ward.purchase("M1", "W1", "2027-02-10T10:00", 1_000)
    ward.at("2027-03-01T00:30")
    february = ward.settle("2027-02")
    line = lines_by_merchant(february)["M1"]
    assert line["carried_in"] == 4_000 and line["net_payout"] == 5_000
    assert {p["merchant_id"]: p["payout_status"] for p in february["payouts"]}["M1"] == "pending"
    zengin = ward.get(f"/v1/settlement-runs/{february['id']}/zengin").content
    assert bank_account(2)["account_number"].encode() in zengin
    assert ward.reconcile()["ok"] is True


def test_the_same_account_again_is_no_change(ward: Ward):
    ward.merchant("M1", bank=1)
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(1)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False
    r = confirm(ward, ward.finance)
    assert r.status_code == 409 and r.json()["code"] == "bank_change_not_pending"


def test_a_confirmation_names_the_whole_account_the_merchant_gave(ward: Ward):
    """The engine shows an account only masked (bank, branch, last four digits). A change to another
    account of the same branch and last digits looked like the one on file, and a colleague asked to
    confirm it released the merchant's payouts to it (helper-81). The confirmation now carries the
    whole account as the merchant gave it to the confirming person; another is refused (409
    `bank_change_mismatch`, which does not say what differs), and nothing is released."""
    ward.merchant("M1", bank=1)
    merchant_s = bank_account(1)
    disguised = {**merchant_s, "account_number": "999" + merchant_s["account_number"][-4:], "holder_kana": "ｱﾀｯｶｰ"}
    ward.at("2027-01-05T09:00")
    before = ward.client.get("/v1/merchants/M1", headers=ward.admin).json()["bank_account_masked"]
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": disguised}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    after = r.json()["bank_account_masked"]
    assert {k: v for k, v in after.items() if k != "set_at"} == {k: v for k, v in before.items() if k != "set_at"}
    r = confirm(ward, ward.finance, account=merchant_s)
    assert r.status_code == 409 and r.json()["code"] == "bank_change_mismatch", r.text
    assert disguised["account_number"] not in r.text and "ｱﾀｯｶｰ" not in r.text
    assert ward.client.get("/v1/merchants/M1", headers=ward.admin).json()["bank_account_pending_confirmation"]
    assert not [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm"]
    # The refused attempt is on record, with its code and the change it named, not the account.
    refused = [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm_refused"]
    assert [(e["target"], e["actor"]["key_id"], e["after"]) for e in refused] == [
        ("merchant:M1", key_id(ward.finance), {"code": "bank_change_mismatch", "set_at": after["set_at"]})
    ]
    for secret in (*_secrets_of(1), disguised["account_number"], "ｱﾀｯｶｰ"):
        assert secret not in _raw_audit(ward)
    r = confirm(ward, ward.admin, account=disguised)  # the changer itself
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    refused = [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm_refused"]
    assert [(e["actor"]["key_id"], e["after"]["code"]) for e in refused[1:]] == [
        (key_id(ward.admin), "bank_change_same_key")
    ]
    ward.purchase("M1", "W1", "2027-01-10T10:00", 4_000)
    ward.at("2027-02-01T00:30")
    assert {p["merchant_id"]: p["payout_status"] for p in ward.settle("2027-01")["payouts"]}["M1"] == "held_bank_change"


def test_a_confirmation_releases_only_the_change_it_names(ward: Ward):
    """Finance reads a change and confirms it; a change made after that read (by the same admin)
    is not released by that confirmation, stays held at settlement, and is released only when
    named itself."""
    ward.merchant("M1", bank=1)
    ward.at("2027-01-05T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200, r.text
    read = pending_set_at(ward)  # what the confirming officer checked: account ...4502
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(3)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    shown = r.json()["bank_account_masked"]
    assert shown["account_number_last4"] == "4503" and shown["set_at"] != read
    assert ward.client.patch("/v1/merchants/M1", json={"name": "八百屋 改"}, headers=ward.admin).status_code == 200

    r = confirm(ward, ward.finance, set_at=read)
    assert r.status_code == 409 and r.json()["code"] == "bank_change_superseded", r.text
    assert shown["set_at"] not in r.text  # the refusal does not hand out the change to confirm instead
    for named in ("2027-01-05T09:00:00+09:00", "2030-01-01T00:00:00+09:00"):
        r = confirm(ward, ward.finance, set_at=named)
        assert r.status_code == 409 and r.json()["code"] == "bank_change_superseded", r.text
    for body in (
        {},
        {"set_at": "yesterday", "bank_account": bank_account(3)},
        {"set_at": read, "bank_account": bank_account(3), "extra": 1},
        {"set_at": 1, "bank_account": bank_account(3)},
        {"set_at": read},  # the account is part of what is confirmed
        {"set_at": read, "bank_account": {**bank_account(3), "account_number": "12345"}},
    ):
        r = ward.client.post("/v1/merchants/M1/bank-account/confirm", json=body, headers=ward.finance)
        assert r.status_code == 422 and r.json()["code"] == "invalid_request", (body, r.text)
    assert not [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm"]

    ward.purchase("M1", "W1", "2027-01-10T10:00", 4_000)
    ward.at("2027-02-01T00:30")
    statuses = {p["merchant_id"]: p["payout_status"] for p in ward.settle("2027-01")["payouts"]}
    assert statuses["M1"] == "held_bank_change"

    r = confirm(ward, ward.finance, set_at=shown["set_at"])
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text
    confirmed = [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm"]
    assert len(confirmed) == 1
    assert confirmed[0]["before"]["bank_account"]["account_number_last4"] == "4503"
    assert confirmed[0]["before"]["bank_account"]["set_at"] == shown["set_at"]
    r = confirm(ward, ward.finance, set_at=shown["set_at"])
    assert r.status_code == 409 and r.json()["code"] == "bank_change_not_pending", r.text


def test_changes_at_one_clock_instant_differ_and_keys_are_aged_by_the_clock(ward: Ward, monkeypatch):
    """A clock that stands still or lags (a wall clock stepped back, another host's) still gives
    each change its own `set_at`, later than the account it replaces; a key is aged against when
    the change was made by the clock, not against that `set_at`: the changer's new key cannot
    confirm."""
    ward.at("2027-02-01T09:00")
    ward.merchant("M1", bank=1)
    created = pending_set_at(ward)
    lagging = us("2027-01-01T09:00")
    monkeypatch.setattr(ward.clock, "now_us", lambda: lagging)
    shown = []
    for n in (2, 3):
        r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(n)}, headers=ward.admin)
        assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
        shown.append(r.json()["bank_account_masked"]["set_at"])
    instants = [dt.datetime.fromisoformat(t) for t in (created, *shown)]
    assert instants[0] < instants[1] < instants[2], instants  # one clock instant, three changes

    lagging = us("2027-01-20T09:00")  # after the change by the clock, before its set_at
    made = ward.client.post("/v1/keys", json={"role": "admin"}, headers=ward.admin)
    assert made.status_code == 201, made.text
    r = confirm(ward, {"Authorization": f"Bearer {made.json()['key']}"}, set_at=shown[1])
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    r = confirm(ward, ward.finance, set_at=shown[0])
    assert r.status_code == 409 and r.json()["code"] == "bank_change_superseded", r.text
    r = confirm(ward, ward.finance, set_at=shown[1])
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text
    confirmed = [e for e in entries(ward) if e["action"] == "merchant.bank_account.confirm"]
    assert confirmed[0]["before"]["changed_at"] == "2027-01-01T09:00:00+09:00"  # when, by the clock
    assert confirmed[0]["before"]["bank_account"]["set_at"] == shown[1]


def test_a_key_made_after_the_change_on_a_clock_behind_cannot_confirm_it(ward: Ward, monkeypatch):
    """A key is aged against a change by the order of their audit entries too: one made after the
    change on a host whose clock is a day behind carried an earlier `created_at` than the change,
    counted as made before it, and confirmed it (helper-84)."""
    ward.merchant("M1", bank=1)
    ward.at("2027-01-11T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    with monkeypatch.context() as lagging:
        lagging.setattr(ward.clock, "now_us", lambda: us("2027-01-10T09:00"))  # another host, a day behind
        late = {"Authorization": f"Bearer {ward.config.create_key('finance')}"}  # the operator's: no maker shared
    r = confirm(ward, late)
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    ward.at("2027-01-12T09:00")
    r = confirm(ward, ward.finance)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text


def test_a_key_made_before_the_change_on_a_clock_ahead_can_confirm_it(ward: Ward, monkeypatch):
    """The other way round (helper-87): a key made before the change on a host whose clock runs a
    day ahead carries a later `created_at` than the change; its audit entry comes first, and it
    may confirm."""
    ward.merchant("M1", bank=1)
    ward.at("2027-01-10T09:00")
    with monkeypatch.context() as ahead:
        ahead.setattr(ward.clock, "now_us", lambda: us("2027-01-12T09:00"))
        early = {"Authorization": f"Bearer {ward.config.create_key('finance')}"}
    ward.at("2027-01-11T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    r = confirm(ward, early)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text


# -- §9.6: merchant funding follows the campaign version that issued the points ----------------------


def test_merchant_funding_is_charged_by_the_issuing_campaign_version(ward: Ward):
    ward.merchant("M1", bank=1)
    ward.campaign("C1", 1000, funding_source="ward_general")
    december = ward.purchase("M1", "W1", "2026-12-05T10:00", 100_000)
    assert december["points_awarded"] == 10_000
    ward.at("2027-01-02T09:00")
    r = ward.client.patch("/v1/campaigns/C1", json={"funding_source": "merchant:M1"}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    lines = lines_by_merchant(ward.settle("2026-12"))
    assert lines["M1"]["merchant_funded_points"] == 0  # version 1 was the ward's
    assert lines["M1"]["net_payout"] == 100_000

    january = ward.purchase("M1", "W1", "2027-01-10T10:00", 50_000)
    assert january["awards"][0]["campaign_version"] == 2 and january["points_awarded"] == 5_000
    ward.refund(december, "2027-01-11T10:00", 10_000)  # claws back 1,000 points of version 1
    ward.at("2027-02-01T00:30")
    line = lines_by_merchant(ward.settle("2027-01"))["M1"]
    assert line["merchant_funded_points"] == 5_000  # only the points version 2 issued
    assert line["net_payout"] == 50_000 - 10_000 - 5_000
    assert ward.reconcile()["ok"] is True


def test_a_campaign_is_funded_only_by_a_known_merchant(ward: Ward):
    """A merchant-funded campaign naming no known merchant is refused on create and on update,
    writing nothing: settlement would otherwise charge its points to a payable nobody owns."""
    ward.merchant("M1", bank=1)
    ward.campaign("C1", 1000)
    before = _base(ward)
    body = {
        "id": "C_PHANTOM",
        "name": "誰も払わない",
        "funding_source": "merchant:NOPE",
        "starts_at": "2026-12-01T00:00:00+09:00",
        "ends_at": "2027-12-01T00:00:00+09:00",
        "tiers": [{"match": {}, "rate_bp": 100}],
    }
    r = ward.client.post("/v1/campaigns", json=body, headers=ward.admin)
    assert r.status_code == 422 and r.json()["code"] == "unknown_merchant", r.text
    assert ward.client.get("/v1/campaigns/C_PHANTOM", headers=ward.admin).status_code == 404
    r = ward.client.patch("/v1/campaigns/C1", json={"funding_source": "merchant:NOPE"}, headers=ward.admin)
    assert r.status_code == 422 and r.json()["code"] == "unknown_merchant", r.text
    current = ward.client.get("/v1/campaigns/C1", headers=ward.admin).json()
    assert current["version"] == 1 and current["funding_source"] == "ward_general"
    assert _base(ward) == before  # nothing audited: nothing changed

    r = ward.client.post("/v1/campaigns", json={**body, "funding_source": "merchant:M1"}, headers=ward.admin)
    assert r.status_code == 201, r.text
    r = ward.client.patch("/v1/campaigns/C1", json={"funding_source": "merchant:M1"}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["version"] == 2, r.text


def test_a_first_account_added_later_is_held_too(ward: Ward):
    ward.merchant("M1")  # no account at creation
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(4)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    r = confirm(ward, ward.finance)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text


def test_a_truncated_audit_chain_is_caught_by_the_signed_chain_heads(ward: Ward):
    """Deleting the newest audit entries leaves the chain intact and gapless; the day's signed chain
    head holds the audit head of that day, so reconciliation still names the day."""
    ward.merchant("M1", bank=1)
    ward.campaign("C1", 1000)
    ward.purchase("M1", "W1", "2026-11-30T10:00", 1_000)
    ward.merchant("M2")  # the day's last audit entries
    ward.at("2026-12-01T09:00")
    r = ward.client.post("/v1/chain-heads", headers=ward.finance)
    assert r.status_code in (200, 201) and r.json()["signed"] == ["2026-11-30"], r.text
    assert ward.reconcile()["ok"] is True
    with ward.engine.connect() as c:
        first_m2 = c.execute(text("SELECT MIN(sequence) FROM audit_log WHERE target = 'merchant:M2'")).scalar_one()
        last = c.execute(text("SELECT MAX(sequence) FROM audit_log")).scalar_one()
    _tamper(ward, f"DELETE FROM audit_log WHERE sequence >= {first_m2}")
    _tamper(
        ward,
        f"UPDATE audit_head SET last_sequence = {first_m2 - 1}, last_hash = "
        f"(SELECT hash FROM audit_log WHERE sequence = {first_m2 - 1})",
    )
    report = ward.reconcile()
    assert report["checks"]["audit_chain_intact"]["pass"] and report["checks"]["audit_sequence_gapless"]["pass"]
    heads = report["checks"]["signed_chain_heads_valid"]
    assert heads["pass"] is False
    assert heads["rows"] == [
        {"business_date": "2026-11-30", "audit_sequence": last, "problem": "audit chain no longer ends there"}
    ]


def test_a_key_that_shares_a_maker_with_the_changing_key_cannot_confirm_its_change(ward: Ward):
    """SPEC §9.6's different key is another holder. Whoever makes a key is shown its secret, so an
    admin could make a finance key for itself beforehand, change the account, and confirm with it
    (found by an attacker's probe): a key made by the changing key, the key that made the changing
    key, or another key made by the same key (at any depth) cannot confirm; a key the operator
    made (`setapay keys create`) can."""
    ward.merchant("M1", bank=1)

    def made_by(maker: dict, role: str) -> dict:
        r = ward.client.post("/v1/keys", json={"role": role}, headers=maker)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}"}

    ward.at("2027-01-10T09:00")
    own_finance = made_by(ward.admin, "finance")  # the changer's own, made beforehand
    deputy = made_by(ward.admin, "admin")
    deputys_finance = made_by(deputy, "finance")  # two makers down
    changer = made_by(deputy, "admin")  # makes the change below
    sibling = made_by(deputy, "finance")
    changers_own = made_by(changer, "finance")
    ward.at("2027-01-11T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=changer)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    ward.at("2027-01-12T09:00")
    for holder in (changers_own, sibling, deputy, deputys_finance, ward.admin, own_finance):
        r = confirm(ward, holder)
        assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", (key_id(holder), r.text)
    still = ward.client.get("/v1/merchants/M1", headers=ward.admin)
    assert still.status_code == 200 and still.json()["bank_account_pending_confirmation"] is True, still.text
    # A key of its own lineage: ward.finance, made by the operator.
    r = confirm(ward, ward.finance)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text


def test_a_maker_however_far_up_still_shares_it(ward: Ward):
    """The changer's own finance key made 80 keys down (found by review: a chain read to a fixed
    depth took the changer for another holder past it) cannot confirm its change."""
    ward.merchant("M1", bank=1)
    ward.at("2027-01-10T09:00")
    maker = ward.admin
    for depth in range(80):
        r = ward.client.post("/v1/keys", json={"role": "admin" if depth < 79 else "finance"}, headers=maker)
        assert r.status_code == 201, r.text
        maker = {"Authorization": f"Bearer {r.json()['key']}"}
    ward.at("2027-01-11T09:00")
    r = ward.client.patch("/v1/merchants/M1", json={"bank_account": bank_account(2)}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
    ward.at("2027-01-12T09:00")
    r = confirm(ward, maker)
    assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
