"""Merchant bank details (SPEC §3): sealed at rest with AES-GCM under the data key from
settings, never in the clear in the database or in what the API shows."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from engine.model import BankAccount
from engine.sealing import SealingError, generate_key_b64
from engine.settings import Settings
from engine.store.config import Config
from engine.store.models import MerchantRow
from tests.finance.support import Ward, bank_account


def _raw_rows(ward: Ward) -> list[bytes]:
    """Every column of every merchant row, as the database hands them out."""
    out = []
    with ward.engine.connect() as c:
        for row in c.execute(text("SELECT * FROM merchant")):
            for value in row:
                if isinstance(value, memoryview):
                    value = value.tobytes()
                out.append(value if isinstance(value, bytes) else str(value).encode("utf-8"))
        if c.dialect.name == "postgresql":  # the whole row as PostgreSQL renders it, bytea included
            out.extend(r[0].encode() for r in c.execute(text("SELECT merchant::text FROM merchant")))
    return out


def _secrets(account: dict, ward: Ward) -> list[bytes]:
    return [
        account["account_number"].encode(),
        account["holder_kana"].encode("utf-8"),
        account["holder_kana"].encode("cp932"),
        ward.data_key_b64.encode(),
        base64.b64decode(ward.data_key_b64),
    ]


def test_bank_details_are_sealed_at_rest(ward: Ward, database_url):
    ward.merchant("M001", bank=7)
    ward.merchant("M002")
    account = bank_account(7)
    for blob in _raw_rows(ward):
        for secret in _secrets(account, ward):
            assert secret not in blob
    with Session(ward.engine) as s:
        row = s.get(MerchantRow, "M001")
        assert json.loads(row.record_json).get("bank_account") is None
        assert "bank_account_number" not in row.record_json and account["account_number"] not in row.record_json
        assert row.bank_account_sealed is not None and len(row.bank_account_sealed) > 28
        assert s.get(MerchantRow, "M002").bank_account_sealed is None
    if database_url.startswith("sqlite"):
        ward.engine.dispose()  # checkpoint the WAL into the file
        path = Path(database_url.split("///", 1)[1])
        for f in path.parent.glob(path.name + "*"):
            data = f.read_bytes()
            for secret in _secrets(account, ward):
                assert secret not in data, f.name
    # With the ward's key the account opens as it was given.
    assert ward.config.bank_account("M001") == BankAccount(**account)
    assert ward.config.bank_account("M002") is None


def test_another_data_key_cannot_open_them(ward: Ward):
    ward.merchant("M001", bank=7)
    ward.merchant("M002", bank=8)
    other = Config(
        ward.engine,
        Settings(
            database_url=ward.settings.database_url,
            data_key_b64=generate_key_b64(),
            signing_key_b64=ward.signing_key_b64,
        ),
    )
    with pytest.raises(SealingError):
        other.bank_account("M001")
    # A sealed account copied onto another merchant's row does not open as that merchant's.
    with Session(ward.engine) as s, s.begin():
        s.get(MerchantRow, "M002").bank_account_sealed = s.get(MerchantRow, "M001").bank_account_sealed
    with pytest.raises(SealingError):
        ward.config.bank_account("M002")
    assert ward.config.bank_account("M001").account_number == bank_account(7)["account_number"]


def test_the_api_shows_only_that_an_account_is_on_file(ward: Ward):
    ward.merchant("M001", bank=7)
    ward.merchant("M002")
    account = bank_account(7)
    r = ward.client.get("/v1/merchants/M001", headers=ward.admin)
    assert r.status_code == 200, r.text
    shown = r.json()
    assert shown["bank_account_on_file"] is True and "bank_account" not in shown
    assert account["account_number"] not in r.text and account["holder_kana"] not in r.text
    assert ward.client.get("/v1/merchants/M002", headers=ward.admin).json()["bank_account_on_file"] is False
    listed = ward.client.get("/v1/merchants", headers=ward.admin)
    assert account["account_number"] not in listed.text
    assert {m["id"]: m["bank_account_on_file"] for m in listed.json()} == {"M001": True, "M002": False}
    # A changed account is sealed again and still not shown.
    new = bank_account(9)
    r = ward.client.patch("/v1/merchants/M001", json={"bank_account": new}, headers=ward.admin)
    assert r.status_code == 200, r.text
    assert r.json()["bank_account_on_file"] is True and new["account_number"] not in r.text
    assert ward.config.bank_account("M001") == BankAccount(**new)
    for blob in _raw_rows(ward):
        assert new["account_number"].encode() not in blob
    # Adding one to a merchant that had none.
    r = ward.client.patch("/v1/merchants/M002", json={"bank_account": account}, headers=ward.admin)
    assert r.status_code == 200 and r.json()["bank_account_on_file"] is True
