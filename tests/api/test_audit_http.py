"""The audit log and the bank account confirmation through `setapay serve` over a socket, with
keys made by `setapay keys create`, and `setapay audit` under the server's environment
(SPEC §9.5, §9.6): the full account number is nowhere in answers, the log or the server's output."""

from __future__ import annotations

import json

import pytest

from engine.sealing import generate_key_b64
from engine.settlement import signing

ACCOUNT_1 = {
    "bank_code": "0159",
    "branch_code": "101",
    "account_type": "ordinary",
    "account_number": "7654321",
    "holder_kana": "ｾﾀｶﾞﾔﾔｵﾔ",
}
ACCOUNT_2 = {
    "bank_code": "0005",
    "branch_code": "202",
    "account_type": "ordinary",
    "account_number": "8765432",
    "holder_kana": "ｾﾀｶﾞﾔﾔｵﾔ",
}
SECRETS = ("7654321", "8765432", "ｾﾀｶﾞﾔﾔｵﾔ")


def _key_id(key: str) -> str:
    return key.split("_")[2]


@pytest.fixture(scope="module")
def server(backend, start_server):
    return start_server(
        backend,
        env={
            "SETAPAY_DATA_KEY_B64": generate_key_b64(),
            "SETAPAY_SIGNING_KEY_B64": signing.private_key_b64(signing.generate_private_key()),
        },
    )


def test_bank_change_confirmation_and_the_audit_log_over_http(server):
    first, second = server.admin_key, server.create_key("admin")
    answers = []
    with server.client(first) as c:
        r = c.post(
            "/v1/merchants", json={"id": "M1", "name": "八百屋", "merchant_class": "small", "bank_account": ACCOUNT_1}
        )
        assert r.status_code == 201, r.text
        answers.append(r.text)
        r = c.patch("/v1/merchants/M1", json={"bank_account": ACCOUNT_2})
        assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is True, r.text
        answers.append(r.text)
        change = {"set_at": r.json()["bank_account_masked"]["set_at"], "bank_account": ACCOUNT_2}
        r = c.post("/v1/merchants/M1/bank-account/confirm", json=change)
        assert r.status_code == 403 and r.json()["code"] == "bank_change_same_key", r.text
    with server.client(second) as c:
        r = c.post("/v1/merchants/M1/bank-account/confirm", json=change)
        assert r.status_code == 200 and r.json()["bank_account_pending_confirmation"] is False, r.text
        answers.append(r.text)
        r = c.get("/v1/audit", params={"target": "merchant:M1"})
        assert r.status_code == 200, r.text
        answers.append(r.text)
        log = r.json()["entries"]
        for params in (
            {"target": "merchant:M1\x00"},
            {"cursor": "YXVkOjk5OTk5OTk5OTk5OTk5OTk5OTk5OQ"},
            {"limit": "99999999999999999999999"},
            {"from": "1700000000"},
        ):
            r = c.get("/v1/audit", params=params)
            assert 400 <= r.status_code < 500, (params, r.text)
    assert [(e["action"], e["actor"]["key_id"]) for e in log] == [
        ("merchant.create", _key_id(first)),
        ("merchant.update", _key_id(first)),
        ("merchant.bank_account.change", _key_id(first)),
        ("merchant.bank_account.confirm_refused", _key_id(first)),  # the changer's own attempt
        ("merchant.bank_account.confirm", _key_id(second)),
    ]

    done = server.cli("audit", "--target", "merchant:M1")
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert printed == log
    done_all = server.cli("audit", "--from", "2000-01-01T00:00:00+09:00")
    assert done_all.returncode == 0 and len(done_all.stdout.splitlines()) >= len(log)
    assert server.cli("audit", "--from", "yesterday").returncode == 2
    # A window whose end is not after its start, as the API's `to` (422): refused, not an empty list.
    swapped = server.cli("audit", "--from", "2026-12-02T00:00:00+09:00", "--to", "2026-12-01T00:00:00+09:00")
    assert swapped.returncode == 2 and "--to must be after --from" in swapped.stderr and not swapped.stdout

    server_output = server.log_path.read_text(errors="replace")
    for secret in SECRETS:
        assert secret not in server_output
        assert secret not in done.stdout + done.stderr + done_all.stdout
        for answer in answers:
            assert secret not in answer
