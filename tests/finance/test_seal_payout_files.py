"""`setapay seal-payout-files` (SPEC §3: bank details are encrypted at rest): a run stored before
payout files were sealed holds its Zengin file in plain text, as the older build wrote it; the
command seals it with the data key, bound to its run, so it opens to exactly the bytes stored, the
download and reconciliation give what they gave before, and a second run seals nothing. It refuses
without the engine's data key, and never prints a file, an account number or the key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import text

from engine import cli, sealing
from engine.store import audit, settlement
from tests.finance.support import Ward, bank_account, run_row

ACCOUNTS = [bank_account(n)["account_number"] for n in (1, 2)]


def _stored(ward: Ward) -> dict[str, bytes]:
    with ward.engine.connect() as c:
        return {r.id: bytes(r.zengin_file) for r in c.execute(text("SELECT id, zengin_file FROM settlement_run"))}


def _three_runs(ward: Ward) -> tuple[str, str, str]:
    """November (nothing to pay: no file), December (paid; stored in plain text as an older build
    stored it) and January (paid; sealed as this build stores it)."""
    ward.merchant("M001", fee_bp=250, bank=1)
    ward.merchant("M002", bank=2)
    ward.purchase("M001", "W1", "2026-12-01T10:00", 12_345)
    ward.purchase("M002", "W2", "2026-12-02T10:00", 4_000)
    ward.at("2027-01-04T09:00")
    november = ward.settle("2026-11")["id"]
    december = ward.settle("2026-12")["id"]
    ward.purchase("M001", "W1", "2027-01-05T10:00", 3_000)
    ward.at("2027-02-01T09:00")
    january = ward.settle("2027-01")["id"]
    plain = settlement.payout_file(ward.settings, run_row(ward, december))
    with ward.engine.begin() as c:  # what a build from before sealing wrote
        c.execute(text("UPDATE settlement_run SET zengin_file = :f WHERE id = :r"), {"f": plain, "r": december})
    return november, december, january


def _cli(monkeypatch, capsys, tmp_path: Path, env: dict[str, str | None]) -> tuple[int, str, str]:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(f"SETAPAY_{name}", raising=False)
        else:
            monkeypatch.setenv(f"SETAPAY_{name}", value)
    monkeypatch.chdir(tmp_path)  # ./setapay-keys/ is not there: the key comes from the setting
    code = cli.main(["seal-payout-files"])
    out, err = capsys.readouterr()
    return code, out, err


def _no_secret_printed(ward: Ward, *texts: str) -> None:
    for printed in texts:
        assert ward.data_key_b64 not in printed
        assert not any(number in printed for number in ACCOUNTS), printed


def test_a_legacy_plain_payout_file_is_sealed_once_and_opens_to_the_same_bytes(
    ward: Ward, tmp_path, monkeypatch, capsys
):
    november, december, january = _three_runs(ward)
    before = _stored(ward)
    plain = before[december]
    assert before[november] == b"" and plain[:1] == b"1"  # a Zengin header record, in plain text
    assert all(number.encode() in plain for number in ACCOUNTS)
    assert not any(number.encode() in before[january] for number in ACCOUNTS)  # this build sealed it
    signed = ward.get(f"/v1/settlement-runs/{december}").json()["statement"]["document"]["payout_file"]
    assert signed["sha256"] == hashlib.sha256(plain).hexdigest()
    assert ward.get(f"/v1/settlement-runs/{december}/zengin").content == plain  # read as it is
    january_file = ward.get(f"/v1/settlement-runs/{january}/zengin").content
    assert ward.reconcile()["ok"]
    env = {"DATABASE_URL": ward.settings.database_url, "DATA_KEY_B64": ward.data_key_b64}

    code, out, err = _cli(monkeypatch, capsys, tmp_path, env)
    assert code == 0, err
    report = json.loads(out)
    assert report == {
        "sealed": 1,
        "already_sealed": 1,
        "without_payout_file": 1,
        "sealed_runs": [december],
        "data_key_from": "SETAPAY_DATA_KEY_B64",
        "data_key_checked_against": [f"settlement_run:{january}", "merchant:M001"],
    }
    assert "sealed 1 payout file(s)" in err and "SETAPAY_DATA_KEY_B64" in err
    _no_secret_printed(ward, out, err)
    assert not (tmp_path / "setapay-keys").exists()

    after = _stored(ward)
    assert after[november] == b"" and after[january] == before[january]  # left byte for byte
    assert after[december] != plain and after[december][:1] == bytes([sealing.VERSION])
    assert len(after[december]) == len(plain) + sealing.SEALED_OVERHEAD
    assert not any(number.encode() in after[december] for number in ACCOUNTS)  # sealed at rest
    assert settlement.payout_file(ward.settings, run_row(ward, december)) == plain
    # Bound to its run: the same bytes on another run's row do not open.
    with pytest.raises(sealing.SealingError):
        sealing.open_sealed(ward.config._data_key(), after[december], sealing.payout_file_associated(january))
    assert ward.get(f"/v1/settlement-runs/{december}/zengin").content == plain
    assert ward.get(f"/v1/settlement-runs/{january}/zengin").content == january_file
    assert ward.get(f"/v1/settlement-runs/{december}").json()["zengin_bytes"] == len(plain)
    report = ward.reconcile()
    assert report["ok"], {k: v for k, v in report["checks"].items() if not v["pass"]}
    monkeypatch.setenv("SETAPAY_SIGNING_KEY_B64", ward.signing_key_b64)
    assert cli.main(["reconcile", "--json"]) == 0  # `setapay reconcile` too: the file's hash, its transfers
    assert json.loads(capsys.readouterr().out)["checks"]["statements_match_ledger"]["pass"]

    # Who changed what: one entry for the run, by the operator, naming no account and no key.
    (entry,) = [
        e
        for e in audit.entries(ward.engine, target=f"settlement_run:{december}")[0]
        if e["action"] == "settlement.payout_file.seal"
    ]
    assert entry["actor"] == {"key_id": "cli", "role": "operator"}
    digest = {"sha256": signed["sha256"], "bytes": len(plain)}
    assert entry["before"] == {"payout_file": {"stored": "plain", **digest}}
    assert entry["after"] == {"payout_file": {"stored": "sealed", "sealed_with": "SETAPAY_DATA_KEY_B64", **digest}}
    _no_secret_printed(ward, json.dumps(entry))
    logged = len(audit.entries(ward.engine, limit=1_000)[0])

    # Again: nothing to seal, and nothing changes.
    code, out, err = _cli(monkeypatch, capsys, tmp_path, env)
    assert code == 0, err
    again = json.loads(out)
    assert (again["sealed"], again["already_sealed"], again["sealed_runs"]) == (0, 2, [])
    assert "nothing to seal" in err
    assert _stored(ward) == after
    assert len(audit.entries(ward.engine, limit=1_000)[0]) == logged


def test_it_refuses_without_the_engine_s_data_key(ward: Ward, tmp_path, monkeypatch, capsys):
    """No key set and none in ./setapay-keys/: refused, and no key is made (a file sealed with a key
    made for the purpose would open nowhere else). A key that does not open what is sealed already
    (another ward's, a fresh one): refused. A malformed one: refused, not echoed. Nothing is sealed."""
    _, december, _ = _three_runs(ward)
    before = _stored(ward)
    url = ward.settings.database_url
    other = sealing.generate_key_b64()
    for key, says in ((None, "no data key"), (other, "does not open run"), ("not base64!", "not valid base64")):
        code, out, err = _cli(monkeypatch, capsys, tmp_path, {"DATABASE_URL": url, "DATA_KEY_B64": key})
        assert code == 2 and out == "" and says in err and "nothing was sealed" in err, err
        assert other not in err
        assert not (tmp_path / "setapay-keys").exists()
        assert _stored(ward) == before
    assert ward.reconcile()["ok"]
    # The local file of the embedded default is the engine's key when no setting is: used, and named.
    keys = tmp_path / "setapay-keys"
    keys.mkdir()
    (keys / "data.key").write_text(ward.data_key_b64 + "\n")
    code, out, err = _cli(monkeypatch, capsys, tmp_path, {"DATABASE_URL": url, "DATA_KEY_B64": None})
    assert code == 0, err
    assert json.loads(out)["sealed_runs"] == [december]
    assert json.loads(out)["data_key_from"] == str((keys / "data.key").resolve())
    _no_secret_printed(ward, out, err)
    assert _stored(ward)[december] != before[december]
    assert settlement.payout_file(ward.settings, run_row(ward, december)) == before[december]
