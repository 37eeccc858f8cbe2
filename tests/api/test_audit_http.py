"""The audit log and the bank account confirmation through `setapay serve` over a socket, with
keys made by `setapay keys create`, and `setapay audit` under the server's environment
(SPEC §9.5, §9.6): the full account number is nowhere in answers, the log or the server's output."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from engine.sealing import generate_key_b64
from engine.settlement import signing
from engine.store.models import AuditLogRow, CampaignVersionRow, MerchantVersionRow

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


def _written(server) -> tuple:
    """What a configuration change writes: versions, audit entries and the catalog's version."""
    with server.db.connect() as connection:
        catalog = connection.execute(text("SELECT catalog_version FROM ledger_head")).scalar_one()
    return tuple(server.count(row) for row in (MerchantVersionRow, CampaignVersionRow, AuditLogRow)) + (catalog,)


def test_a_patch_names_only_fields_it_may_change_and_one_changing_nothing_writes_nothing(server):
    """An `id`, a campaign's `version` (any value) or an unknown field in a PATCH is 422
    `invalid_request` naming it, as PATCH /v1/terminals refuses `id`, and writes nothing (a
    `version` was ignored and an `id` equal to the path's taken, each making a new version and an
    audit entry); a patch that changes nothing (`{}`, a field sent as it is) answers 200 with the
    record as it is and writes no version, no audit entry and no catalog change."""
    campaign = {
        "id": "C_SAME",
        "name": "同じ",
        "funding_source": "ward_general",
        "starts_at": "2026-01-01T00:00:00+09:00",
        "ends_at": "2036-01-01T00:00:00+09:00",
        "tiers": [{"match": {}, "rate_bp": 100}],
    }
    merchant = {"id": "M_SAME", "name": "同じ店", "merchant_class": "small", "bank_account": ACCOUNT_1}
    with server.client(server.admin_key) as c:
        assert c.post("/v1/merchants", json=merchant).status_code == 201
        assert c.post("/v1/campaigns", json=campaign).status_code == 201
        assert c.post("/v1/terminals", json={"id": "T_SAME", "merchant_id": "M_SAME"}).status_code == 201
        stored = {path: c.get(path).json() for path in ("/v1/merchants/M_SAME", "/v1/campaigns/C_SAME")}
        stored["/v1/terminals/T_SAME"] = c.get("/v1/terminals/T_SAME").json()
        written = _written(server)

        refused = [
            ("/v1/campaigns/C_SAME", {"version": "garbage"}, "version"),
            ("/v1/campaigns/C_SAME", {"version": {"a": 1}}, "version"),
            ("/v1/campaigns/C_SAME", {"version": 1}, "version"),
            ("/v1/campaigns/C_SAME", {"id": "C_SAME"}, "id"),
            ("/v1/campaigns/C_SAME", {"name": "新", "id": "C_SAME"}, "id"),
            ("/v1/campaigns/C_SAME", {"colour": "red"}, "colour"),
            ("/v1/merchants/M_SAME", {"id": "M_SAME"}, "id"),
            ("/v1/merchants/M_SAME", {"name": "新", "id": "M_SAME"}, "id"),
            ("/v1/terminals/T_SAME", {"id": "T_SAME"}, "id"),
        ]
        for path, body, field in refused:
            r = c.patch(path, json=body)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), (path, body, r.text)
            assert ["body", field] in [e["loc"] for e in r.json()["errors"]], (path, body, r.text)
        assert _written(server) == written

        unchanged = [
            ("/v1/campaigns/C_SAME", {}),
            ("/v1/campaigns/C_SAME", {"name": "同じ", "tiers": campaign["tiers"], "budget": None}),
            ("/v1/campaigns/C_SAME", {"ends_at": campaign["ends_at"]}),
            ("/v1/merchants/M_SAME", {}),
            ("/v1/merchants/M_SAME", {"name": "同じ店", "shotengai_id": None}),
            ("/v1/merchants/M_SAME", {"bank_account": ACCOUNT_1}),  # the account on file
            ("/v1/merchants/M_SAME", {"bank_account": None}),  # leaves it as it is
            ("/v1/terminals/T_SAME", {}),
            ("/v1/terminals/T_SAME", {"merchant_id": "M_SAME", "public_key": None}),
        ]
        for path, body in unchanged:
            r = c.patch(path, json=body)
            assert r.status_code == 200 and r.json() == stored[path], (path, body, r.text)
            assert c.get(path).json() == stored[path]
        assert _written(server) == written

        # A patch that does change something still makes its version and its audit entry.
        r = c.patch("/v1/campaigns/C_SAME", json={"name": "違う"})
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        r = c.patch("/v1/merchants/M_SAME", json={"name": "違う店"})
        assert r.status_code == 200 and r.json()["name"] == "違う店", r.text
        versions, campaigns, entries, catalog = _written(server)
        assert (versions, campaigns, entries) == (written[0] + 1, written[1] + 1, written[2] + 2)
        assert catalog > written[3]
