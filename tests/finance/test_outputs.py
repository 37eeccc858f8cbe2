"""Settlement outputs (SPEC §7): the CSV export, the Ed25519-signed JSON statement with
`setapay verify-statement`, `setapay settle`, and the Zengin 総合振込 payout file parsed back."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine import cli
from engine.settlement import signing, statement, zengin
from engine.store.models import ChainHeadRow
from tests.finance.support import Ward, bank_account, lines_by_merchant

REPO = Path(__file__).resolve().parents[2]
NUMBERS = (
    "coin_sales",
    "coin_refunds",
    "points_redeemed",
    "points_returned",
    "merchant_funded_points",
    "fee_bp",
    "fee",
    "carried_in",
    "net_payout",
)


def _month(ward: Ward) -> dict:
    """Five merchants: two paid, one without a bank account, one owing more than it sold, one idle."""
    ward.merchant("M001", fee_bp=250, bank=1)
    ward.merchant("M002", bank=2)
    ward.merchant("M003", fee_bp=100)  # no bank account on file
    ward.merchant("M004", bank=4)  # funds a bonus worth more than its sales
    ward.merchant("M005", bank=5)  # sells nothing
    ward.campaign("PB", 1000)
    ward.campaign(
        "MF4",
        0,
        funding_source="merchant:M004",
        fixed_points=500,
        tiers=[{"match": {"merchant_ids": ["M004"]}, "rate_bp": 0}],
    )
    p = ward.purchase("M001", "W1", "2026-12-01T10:00", 12_345)
    ward.purchase("M001", "W2", "2026-12-02T10:00", 999)
    ward.refund(p, "2026-12-03T10:00", 2_345)
    ward.purchase("M002", "W1", "2026-12-04T10:00", 4_000, points_used=1_000)
    ward.purchase("M003", "W2", "2026-12-05T10:00", 2_500)
    ward.purchase("M004", "W3", "2026-12-06T10:00", 120)
    ward.at("2027-01-04T09:00")  # a Monday
    return ward.settle("2026-12")


def test_csv_parses_and_equals_the_lines(ward: Ward):
    run = _month(ward)
    response = ward.get(f"/v1/settlement-runs/{run['id']}/statement.csv")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(csv.DictReader(io.StringIO(response.text)).fieldnames) == statement.CSV_COLUMNS
    lines = run["statement"]["document"]["lines"]
    assert (
        [r["merchant_id"] for r in rows] == [line["merchant_id"] for line in lines] == ["M001", "M002", "M003", "M004"]
    )
    for row, line in zip(rows, lines):
        assert {k: int(row[k]) for k in NUMBERS} == {k: line[k] for k in NUMBERS}
        assert row["payout_status"] == line["payout_status"]
    assert {r["merchant_id"]: r["payout_status"] for r in rows} == {
        "M001": "pending",
        "M002": "pending",
        "M003": "failed",
        "M004": "nothing_due",
    }


def test_signed_statement_verifies_and_any_changed_number_fails(ward: Ward):
    run = _month(ward)
    signed = run["statement"]
    key = ward.public_key
    assert signing.verify_document(key, signed)
    assert signed["signature"]["key_id"] == signing.key_id(key)
    # Stored and returned again unchanged.
    assert signing.verify_document(key, ward.get(f"/v1/settlement-runs/{run['id']}").json()["statement"])
    for i, line in enumerate(signed["document"]["lines"]):
        for field in NUMBERS:
            tampered = copy.deepcopy(signed)
            tampered["document"]["lines"][i][field] = line[field] + 1
            assert not signing.verify_document(key, tampered), (line["merchant_id"], field)
    for field in signed["document"]["totals"]:
        tampered = copy.deepcopy(signed)
        tampered["document"]["totals"][field] -= 1
        assert not signing.verify_document(key, tampered), field
    tampered = copy.deepcopy(signed)
    tampered["document"]["lines"][0]["merchant_id"] = "M002"
    assert not signing.verify_document(key, tampered)
    other = signing.generate_private_key().public_key()
    assert not signing.verify_document(other, signed)


def _verify_cli(path: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETAPAY_")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "verify-statement", str(path), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_verify_statement_cli_exit_codes(ward: Ward, tmp_path):
    run = _month(ward)
    public = signing.public_key_b64(ward.public_key)
    good = tmp_path / "statement.json"
    good.write_text(json.dumps(run["statement"], ensure_ascii=False, indent=1))
    tampered_doc = copy.deepcopy(run["statement"])
    tampered_doc["document"]["lines"][0]["net_payout"] += 1
    bad = tmp_path / "tampered.json"
    bad.write_text(json.dumps(tampered_doc, ensure_ascii=False))
    ok = _verify_cli(good, "--public-key", public)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip() == "valid"
    failed = _verify_cli(bad, "--public-key", public)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "INVALID" in failed.stdout
    # PEM works too, and another key's signature is not valid.
    assert _verify_cli(good, "--public-key", signing.public_key_pem(ward.public_key)).returncode == 0
    other = signing.public_key_b64(signing.generate_private_key())
    assert _verify_cli(good, "--public-key", other).returncode == 1
    # A second value for a signed field, put before it: a reader may take the first; INVALID.
    text = good.read_text()
    line = run["statement"]["document"]["lines"][0]
    doubled = tmp_path / "doubled.json"
    doubled.write_text(text.replace('"net_payout"', '"net_payout": 99999, "net_payout"', 1))
    assert json.loads(doubled.read_text())["document"]["lines"][0]["net_payout"] == line["net_payout"]
    # Bytes that are not a statement at all (not JSON, not UTF-8): INVALID, never a traceback.
    broken = tmp_path / "broken.json"
    for content in (b"X" + good.read_bytes()[1:], b"\xff" + good.read_bytes()):
        for path in (doubled, broken):
            if path is broken:
                path.write_bytes(content)
            refused = _verify_cli(path, "--public-key", public)
            assert refused.returncode == 1 and refused.stdout.startswith("INVALID"), refused.stdout + refused.stderr
            assert "Traceback" not in refused.stderr
    # Another document the ward's key signed (a daily chain head) is no statement: INVALID (helper-81).
    ward.at("2027-01-05T09:00")
    assert ward.client.post("/v1/chain-heads", headers=ward.finance).status_code == 201
    with Session(ward.engine) as s:
        head = s.execute(select(ChainHeadRow.signed_json).limit(1)).scalar_one()
    chain_head = tmp_path / "chain-head.json"
    chain_head.write_text(head)
    refused = _verify_cli(chain_head, "--public-key", public)
    assert refused.returncode == 1 and "not a settlement statement" in refused.stdout, refused.stdout
    # A key that is none, a file that is not there: a clean refusal (2), never a traceback.
    for args in ((good, "--public-key", "notakey"), (tmp_path / "missing.json", "--public-key", public)):
        refused = _verify_cli(*args)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr and refused.stderr, refused.stderr
    # No key given and none here: refused (2), and no key is made to check with.
    lost = _verify_cli(good, cwd=tmp_path)
    assert lost.returncode == 2 and "--public-key" in lost.stderr, lost.stdout + lost.stderr
    assert not (tmp_path / "setapay-keys").exists()


def test_settle_cli_writes_statement_csv_and_zengin(database_url, tmp_path, monkeypatch, capsys):
    """`setapay settle` on the system clock: a past month (October 2026) posted on a ward clock."""
    ward = Ward(database_url, start="2026-10-01T08:00")
    try:
        ward.merchant("M001", fee_bp=250, bank=1)
        ward.purchase("M001", "W1", "2026-10-05T10:00", 8_001)
    finally:
        ward.close()
    for name, value in (
        ("DATABASE_URL", database_url),
        ("DATA_KEY_B64", ward.data_key_b64),
        ("SIGNING_KEY_B64", ward.signing_key_b64),
    ):
        monkeypatch.setenv(f"SETAPAY_{name}", value)
    monkeypatch.chdir(tmp_path)  # ./setapay-keys/ must not be needed
    out = tmp_path / "out"
    assert cli.main(["settle", "--period", "2026-10", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["created"] is True and printed["totals"]["net_payout"] == 8_001 - 200
    signed = json.loads((out / "statement-2026-10.json").read_text())
    assert signing.verify_document(ward.public_key, signed)
    assert lines_by_merchant({"statement": signed})["M001"]["fee"] == 8_001 * 250 // 10_000 == 200
    rows = list(csv.DictReader(io.StringIO((out / "statement-2026-10.csv").read_text())))
    assert [(r["merchant_id"], r["net_payout"]) for r in rows] == [("M001", "7801")]
    parsed = zengin.parse((out / "payout-2026-10.zengin.txt").read_bytes())
    assert [(t.account_number, t.amount_yen) for t in parsed.transfers] == [(bank_account(1)["account_number"], 7801)]
    # An output directory that cannot be made is one line, not a traceback (helper-93); the run
    # itself is stored, and asked again it is the same run, written where it can be.
    capsys.readouterr()
    assert cli.main(["settle", "--period", "2026-10", "--out", "/proc/nope/out"]) == 2
    assert "/proc/nope" in capsys.readouterr().err
    # Idempotent from the CLI too.
    assert cli.main(["settle", "--period", "2026-10", "--out", str(out)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["created"] is False and again["run_id"] == printed["run_id"]
    assert cli.main(["verify-statement", str(out / "statement-2026-10.json")]) == 0
    capsys.readouterr()
    # A period that has not ended on the system clock is refused.
    assert cli.main(["settle", "--period", "2099-01", "--out", str(out)]) == 2


def test_zengin_file_parses_back_to_the_positive_payouts(ward: Ward):
    run = _month(ward)
    data = ward.get(f"/v1/settlement-runs/{run['id']}/zengin").content
    lines = lines_by_merchant(run)
    paid = {m: line for m, line in lines.items() if line["net_payout"] > 0 and m != "M003"}
    assert sorted(paid) == ["M001", "M002"]
    assert lines["M003"]["net_payout"] > 0 and lines["M003"]["payout_status"] == "failed"
    assert lines["M004"]["net_payout"] < 0 and lines["M004"]["payout_status"] == "nothing_due"
    # Fixed-length records of 120 bytes, each followed by CRLF, in cp932.
    assert data.endswith(b"\r\n")
    records = data[:-2].split(b"\r\n")
    assert len(data) == len(records) * 122
    assert all(len(r) == 120 for r in records)
    texts = [r.decode("cp932") for r in records]
    assert all(len(t) == 120 for t in texts)  # half-width only: one byte per character
    assert "".join(t[0] for t in texts) == "1" + "2" * len(paid) + "89"
    # The holder's small kana (ｮ) goes out as the large one banks carry (ﾖ).
    assert "ｾﾀｶﾞﾔｼﾖｳﾃﾝ01" in texts[1]
    parsed = zengin.parse(data)
    header = parsed.header
    s = ward.settings
    assert (
        header.requester_code,
        header.requester_name,
        header.bank_code,
        header.branch_code,
        header.account_number,
    ) == (
        s.payout_requester_code,
        s.payout_requester_name,
        s.payout_bank_code,
        s.payout_branch_code,
        s.payout_account_number,
    )
    assert header.transfer_mmdd == "0105"  # the business day after the run (Monday 4 January 2027)
    got = [
        (
            t.bank_code,
            t.branch_code,
            t.account_type,
            t.account_number,
            t.recipient_name,
            t.amount_yen,
            t.customer_code_1,
        )
        for t in parsed.transfers
    ]
    want = []
    for n, m in ((1, "M001"), (2, "M002")):
        account = bank_account(n)
        want.append(
            (
                account["bank_code"],
                account["branch_code"],
                account["account_type"],
                account["account_number"],
                zengin.to_zengin_text(account["holder_kana"], "holder", 30),
                paid[m]["net_payout"],
                f"{n:010d}",
            )
        )
    assert got == want
    assert parsed.trailer.record_count == len(paid)
    assert parsed.trailer.total_amount_yen == sum(line["net_payout"] for line in paid.values())
    assert int(texts[-2][7:19]) == parsed.trailer.total_amount_yen
    assert texts[-1] == "9" + " " * 119
    assert run["zengin_bytes"] == len(data)


def test_a_run_that_pays_nobody_has_no_zengin_file(ward: Ward):
    ward.merchant("M001")  # no bank account: its payout cannot be sent
    ward.purchase("M001", "W1", "2026-12-01T10:00", 1_000)
    ward.at("2027-01-02T09:00")
    run = ward.settle("2026-12")
    assert run["zengin_bytes"] == 0 and run["payouts"][0]["payout_status"] == "failed"
    assert ward.get(f"/v1/settlement-runs/{run['id']}/zengin", expect=404).json()["code"] == "not_found"


def test_settlement_outputs_are_for_finance_only(ward: Ward):
    ward.merchant("M001", bank=1)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 1_000)
    ward.at("2027-01-02T09:00")
    run = ward.settle("2026-12")
    for path in ("", "/statement.csv", "/zengin"):
        for headers in (ward.admin, ward.terminal_keys["TM001"], {}):
            r = ward.client.get(f"/v1/settlement-runs/{run['id']}{path}", headers=headers)
            assert r.status_code in (401, 403), (path, r.status_code)


def test_each_merchant_has_its_own_customer_code_in_the_payout_file(ward: Ward):
    """顧客コード1 was the merchant id's digits: `M4` and `MB004` were both 0000000004 in one file,
    and a bank's notice of a failed transfer could not tell them apart (helper-81). Each merchant
    now has its own number, given at creation in order."""
    ward.merchant("M4", bank=1)
    ward.merchant("MB004", bank=2)
    ward.campaign("PB", 100)
    ward.purchase("M4", "W1", "2026-12-05T12:00", 1_000)
    ward.purchase("MB004", "W2", "2026-12-06T12:00", 2_000)
    ward.at("2027-01-01T00:05")
    run = ward.settle("2026-12")
    transfers = zengin.parse(ward.get(f"/v1/settlement-runs/{run['id']}/zengin").content).transfers
    assert [(t.customer_code_1, t.amount_yen) for t in transfers] == [("0000000001", 1_000), ("0000000002", 2_000)]
    assert ward.reconcile()["checks"]["statements_match_ledger"]["pass"]
