"""Strict input (SPEC §2) over HTTP, on SQLite and PostgreSQL: the findings of issue 10.

An outside tester found that duplicate JSON keys were accepted (the last one won:
`{"amount":1,"amount":9999999}` was recorded as ¥9,999,999), that an instant could be
a bare Unix number, that ids with a trailing newline passed, that a header sent twice
was taken, and that a NUL byte in a path id (PostgreSQL), a cursor or version beyond
64 bits, a closeout dated 9999-12-31, `?to=9999-12-31T23:59:59-23:59` and a batch item
whose idempotency_key is a number answered 500. Each is a regression test here; the
last test throws a list of hostile inputs at every route with every role's key.

Every refusal is a 4xx problem+json with a stable code and writes nothing.
"""

from __future__ import annotations

import base64
import json
import string
import uuid
from urllib.parse import quote

import httpx
import pytest

from engine import limits
from engine.store.models import (
    ApiKeyRow,
    CampaignVersionRow,
    GrantRow,
    MerchantRow,
    MerchantVersionRow,
    SettlementRunRow,
)
from tests.api.test_bad_input_http import PROBLEM_JSON, assert_refused
from tests.ward import Ward, now_tokyo, purchase, refund

# -- helpers ----------------------------------------------------------------------------


def _duplicated(body: dict, key: str, first) -> bytes:
    """`body` as JSON with `key` written twice: first `first`, then the body's own value (which
    a last-wins parser would keep)."""
    rest = json.dumps(body)
    assert rest.startswith("{") and key in body
    return ("{" + json.dumps(key) + ": " + json.dumps(first) + ", " + rest[1:]).encode()


def _raw_post(
    ward: Ward, terminal_id: str, path: str, raw: bytes, key: str | None = None, content_type: str = "application/json"
) -> httpx.Response:
    """POST exactly these bytes with the terminal's key (no receipt added, nothing re-serialized)."""
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    with ward.server.client(ward.terminal_key(terminal_id)) as c:
        return c.post(path, content=raw, headers=headers)


def _signed(ward: Ward, body: dict) -> dict:
    return ward.server.payment_app.sign_purchase(body)


def _code(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, (r.json().get("code") if r.content else None)


def _assert_code(r: httpx.Response, status: int, code: str) -> None:
    assert _code(r) == (status, code), r.text
    assert r.headers["content-type"] == PROBLEM_JSON, r.headers


BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def _cursor(prefix: str, number: str) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{number}".encode()).decode().rstrip("=")


# -- 1. duplicate JSON keys: 400 malformed_json, anywhere, nothing written -----------------


def test_a_duplicate_amount_is_not_recorded_as_the_last_one(ward: Ward) -> None:
    """The finding: {"amount": 1, ..., "amount": 9999999} with a receipt for ¥9,999,999 was accepted."""
    body = _signed(ward, purchase("T_SHOTEN_1", "W_DUP", 9_999_999))
    key = "dup-amount-" + uuid.uuid4().hex
    raw = _duplicated(body, "amount", 1)
    assert_refused(ward, lambda: _raw_post(ward, "T_SHOTEN_1", "/v1/transactions", raw, key), 400, "malformed_json")
    # Not remembered: the same key with a clean body is processed afresh.
    clean = json.dumps(_signed(ward, purchase("T_SHOTEN_1", "W_DUP", 1000))).encode()
    r = _raw_post(ward, "T_SHOTEN_1", "/v1/transactions", clean, key)
    assert r.status_code == 201, r.text
    assert r.json()["points_used"] == 0 and "Idempotent-Replayed" not in r.headers


def _item_with_duplicate(ward: Ward) -> bytes:
    body = _signed(ward, purchase("T_SHOTEN_1", "W_DUP", 1000, items=[{"amount": 1000, "tags": ["ethical"]}]))
    text = json.dumps(body)
    return text.replace('"tags": ["ethical"]', '"tags": [], "tags": ["ethical"]').encode()


DUPLICATES = {
    "top_level": lambda w: _duplicated(_signed(w, purchase("T_SHOTEN_1", "W_DUP", 500)), "wallet_id", "W_OTHER"),
    "nested_in_items": _item_with_duplicate,
    "escaped_spelling": lambda w: _duplicated(
        _signed(w, purchase("T_SHOTEN_1", "W_DUP", 500)), "points_used", 0
    ).replace(b'"points_used": 0, ', b'"points\\u005fused": 0, ', 1),
    "same_value_twice": lambda w: _duplicated(_signed(w, purchase("T_SHOTEN_1", "W_DUP", 500)), "amount", 500),
}


@pytest.mark.parametrize("make", DUPLICATES.values(), ids=DUPLICATES.keys())
def test_duplicate_keys_in_a_transaction_are_malformed_json(ward: Ward, make) -> None:
    raw = make(ward)
    assert_refused(
        ward, lambda: _raw_post(ward, "T_SHOTEN_1", "/v1/transactions", raw, uuid.uuid4().hex), 400, "malformed_json"
    )


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/merge-patch+json", "APPLICATION/JSON"]
)
def test_duplicate_keys_are_found_whatever_the_json_media_type(ward: Ward, content_type: str) -> None:
    raw = _duplicated(_signed(ward, purchase("T_SHOTEN_1", "W_DUP", 500)), "amount", 1)
    assert_refused(
        ward,
        lambda: _raw_post(ward, "T_SHOTEN_1", "/v1/transactions", raw, uuid.uuid4().hex, content_type),
        400,
        "malformed_json",
    )


def test_a_duplicate_key_in_a_batch_item_refuses_the_whole_batch(ward: Ward) -> None:
    good = {**_signed(ward, purchase("T_SHOTEN_1", "W_DUP", 500)), "idempotency_key": uuid.uuid4().hex}
    bad = {**_signed(ward, purchase("T_SHOTEN_1", "W_DUP", 9_999)), "idempotency_key": uuid.uuid4().hex}
    items = json.dumps(good) + ", " + _duplicated(bad, "amount", 1).decode()
    raw = ('{"transactions": [' + items + "]}").encode()
    assert_refused(ward, lambda: _raw_post(ward, "T_SHOTEN_1", "/v1/transactions/batch", raw), 400, "malformed_json")
    twice = ('{"transactions": [], "transactions": [' + json.dumps(good) + "]}").encode()
    assert_refused(ward, lambda: _raw_post(ward, "T_SHOTEN_1", "/v1/transactions/batch", twice), 400, "malformed_json")


def test_the_duplicate_check_reads_the_content_type_as_fastapi_does(ward: Ward) -> None:
    """A Content-Type the check read differently from FastAPI let a duplicate key through: two
    Content-Types (the check read the last, FastAPI the first) or one ending in a no-break space
    (FastAPI strips it, as Python strips text). The first is refused as a duplicated header, the
    second as the duplicate key it carries."""
    raw = _duplicated(_signed(ward, purchase("T_SHOTEN_1", "W_DUP", 700)), "wallet_id", "W_OTHER")
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as c:
        for headers, code in (
            ([(b"Content-Type", b"application/json"), (b"Content-Type", b"text/plain")], "header_duplicated"),
            ([(b"Content-Type", b"application/json\xa0")], "malformed_json"),
        ):

            def send(headers=headers) -> httpx.Response:
                return c.post("/v1/transactions", content=raw, headers=[*headers, (b"Idempotency-Key", b"ct-1")])

            assert_refused(ward, send, 400, code)


def test_duplicate_keys_in_admin_and_finance_bodies(ward: Ward) -> None:
    keys_before = ward.server.count(ApiKeyRow)
    with ward.server.client(ward.server.admin_key) as admin:
        r = admin.post(
            "/v1/keys", content=b'{"role": "app", "role": "finance"}', headers={"Content-Type": "application/json"}
        )
        _assert_code(r, 400, "malformed_json")
        r = admin.patch(
            "/v1/merchants/M_SHOTEN",
            content=b'{"name": "a", "name": "b"}',
            headers={"Content-Type": "application/json"},
        )
        _assert_code(r, 400, "malformed_json")
        assert admin.get("/v1/merchants/M_SHOTEN").json()["name"] == "三茶八百屋"
    assert ward.server.count(ApiKeyRow) == keys_before
    grants, postings = ward.server.count(GrantRow), ward.server.postings()
    with ward.server.client(ward.finance_key) as finance:
        r = finance.post(
            "/v1/grants",
            headers={"Content-Type": "application/json", "Idempotency-Key": "dup-grant"},
            content=b'{"wallet_id": "W_DUP", "campaign_id": "C_POINTBACK", "points": 1, '
            b'"points": 100000, "reason": "duplicate"}',
        )
        _assert_code(r, 400, "malformed_json")
    assert (ward.server.count(GrantRow), ward.server.postings()) == (grants, postings)


# -- 2. instants are RFC 3339 strings with an offset, within the named years ---------------


@pytest.mark.parametrize(
    "occurred_at",
    [
        1764600000,
        1764600000.5,
        "1764600000",
        True,
        None,
        "2026-12-01",
        "2026-12-01T10:15:00",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59Z",
        "2026-12-01T10:15:00+09:00\n",
        "10000-01-01T00:00:00Z",
        "2026-12-01T10:15:00+0900",
        "2026-12-01 10:15:00+09:00",
    ],
    ids=[
        "int",
        "float",
        "numeric_string",
        "bool",
        "null",
        "date_only",
        "no_offset",
        "overflows_in_utc",
        "underflows_in_utc",
        "overflows_in_tokyo",
        "trailing_newline",
        "five_digit_year",
        "offset_without_colon",
        "space_separator",
    ],
)
def test_occurred_at_must_be_an_rfc3339_string(ward: Ward, occurred_at) -> None:
    body = {**purchase("T_SHOTEN_1", "W_INSTANT", 500), "occurred_at": occurred_at}
    r = assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 422, "invalid_request")
    assert any(e["loc"][-1] == "occurred_at" for e in r.json()["errors"]), r.text
    r = assert_refused(
        ward, lambda: ward.post("T_SHOTEN_1", {**refund("tx_x", 1), "occurred_at": occurred_at}), 422, "invalid_request"
    )


def test_an_rfc3339_instant_in_any_offset_is_accepted(ward: Ward) -> None:
    import datetime as dt

    at = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)).replace(microsecond=123456)
    for text in (at.isoformat().replace("+00:00", "Z"), at.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()):
        r = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_INSTANT_OK", 500, occurred_at=text))
        assert r.status_code == 201, (text, r.text)


QUERY_INSTANTS = {
    "epoch_seconds": "1764600000",
    "epoch_float": "1764600000.5",
    "no_offset": "2026-12-01T00:00:00",
    "date_only": "2026-12-01",
    "overflows_after_offset": "9999-12-31T23:59:59-23:59",
    "overflows_in_tokyo": "9999-12-31T23:59:59Z",
    "underflows_after_offset": "0001-01-01T00:00:00+14:00",
    "trailing_newline": "2026-12-01T00:00:00+09:00\n",
    "nul": "2026-12-01T00:00:00+09:00\x00",
}


@pytest.mark.parametrize("value", QUERY_INSTANTS.values(), ids=QUERY_INSTANTS.keys())
@pytest.mark.parametrize("name", ["from", "to"])
def test_query_instants_are_rfc3339_strings_within_the_limits(ward: Ward, name: str, value: str) -> None:
    with ward.server.client(ward.finance_key) as finance:
        for path in ("/v1/merchants/M_SHOTEN/rewards", "/v1/merchants/M_SHOTEN/transactions", "/v1/audit"):
            _assert_code(finance.get(path, params={name: value}), 422, "invalid_request")
        ok = finance.get("/v1/merchants/M_SHOTEN/rewards", params={name: "2026-12-01T00:00:00+09:00"})
        assert ok.status_code == 200, ok.text
        assert finance.get("/v1/audit", params={name: "9999-12-31T23:59:59+09:00"}).status_code == 200


def test_record_instants_are_rfc3339_strings(ward: Ward) -> None:
    campaign = {
        "id": "C_STRICT",
        "name": "strict",
        "starts_at": 1764600000,
        "ends_at": "2036-01-01T00:00:00+09:00",
        "tiers": [{"match": {"merchant_ids": ["M_NOBODY"]}, "rate_bp": 100}],
    }
    merchant = {
        "id": "M_STRICT",
        "name": "strict",
        "merchant_class": "small",
        "ethical_certifications": [
            {"scheme": "setagaya_ethical", "valid_from": 1764600000, "valid_until": "2036-01-01T00:00:00+09:00"}
        ],
    }
    with ward.server.client(ward.server.admin_key) as admin:
        _assert_code(admin.post("/v1/campaigns", json=campaign), 422, "invalid_request")
        _assert_code(
            admin.post(
                "/v1/campaigns",
                json={**campaign, "starts_at": "2026-01-01T00:00:00+09:00", "ends_at": "9999-12-31T23:59:59-23:59"},
            ),
            422,
            "invalid_request",
        )
        _assert_code(admin.post("/v1/merchants", json=merchant), 422, "invalid_request")
        _assert_code(admin.patch("/v1/campaigns/C_POINTBACK", json={"ends_at": 2000000000}), 422, "invalid_request")
        _assert_code(admin.get("/v1/campaigns/C_STRICT"), 404, "not_found")
        _assert_code(admin.get("/v1/merchants/M_STRICT"), 404, "not_found")
        simulate = {
            "campaign": {**campaign, "starts_at": "2026-01-01T00:00:00+09:00"},
            "from": 1764600000,
            "to": now_tokyo(),
        }
        _assert_code(admin.post("/v1/campaigns/C_STRICT/simulate", json=simulate), 422, "invalid_request")


# -- 3. patterns match the whole value: no trailing newline, anywhere ----------------------


def test_ids_with_a_trailing_newline_fail_everywhere(ward: Ward) -> None:
    bought = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_NEWLINE", 500))
    assert bought.status_code == 201, bought.text
    tx = bought.json()["id"]
    finance_paths = [
        f"/v1/transactions/{tx}%0A",
        "/v1/wallets/W_NEWLINE%0A/points",
        "/v1/merchants/M_SHOTEN%0A/rewards",
        "/v1/merchants/M_SHOTEN%0A/transactions",
        "/v1/campaigns/C_POINTBACK%0A/budget",
        "/v1/campaigns/C_POINTBACK%0A",
    ]
    admin_paths = ["/v1/merchants/M_SHOTEN%0A", "/v1/terminals/T_SHOTEN_1%0A"]
    with ward.server.client(ward.finance_key) as finance:
        for path in finance_paths:
            _assert_code(finance.get(path), 422, "invalid_request")
        assert finance.get(f"/v1/transactions/{tx}").status_code == 200
        _assert_code(finance.get("/v1/audit", params={"target": "merchant:M_SHOTEN\n"}), 422, "invalid_request")
    with ward.server.client(ward.server.admin_key) as admin:
        for path in admin_paths:
            _assert_code(admin.get(path), 422, "invalid_request")
        _assert_code(admin.post("/v1/keys/0123456789abcdef%0A/revoke"), 422, "invalid_request")
        _assert_code(
            admin.post("/v1/keys", json={"role": "merchant", "merchant_id": "M_SHOTEN\n"}), 422, "invalid_request"
        )
    for field in ("wallet_id", "merchant_id", "terminal_id"):
        body = purchase("T_SHOTEN_1", "W_NEWLINE", 500)
        body[field] += "\n"
        assert_refused(ward, lambda body=body: ward.post("T_SHOTEN_1", body), 422, "invalid_request")
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", refund(tx + "\n", 1)), 422, "invalid_request")


# -- 4. a header that must appear once, sent twice: 400 before anything else --------------


def test_authorization_or_idempotency_key_sent_twice_is_400(ward: Ward) -> None:
    terminal = f"Bearer {ward.terminal_key('T_SHOTEN_1')}"
    body = json.dumps(_signed(ward, purchase("T_SHOTEN_1", "W_HEADERS", 500))).encode()
    key = "headers-" + uuid.uuid4().hex
    cases = [
        ("authorization", [("Authorization", terminal), ("Authorization", terminal), ("Idempotency-Key", key)]),
        (
            "authorization",
            [("Authorization", terminal), ("authorization", "Bearer sp_admin_nope"), ("Idempotency-Key", key)],
        ),
        ("idempotency-key", [("Authorization", terminal), ("Idempotency-Key", key), ("Idempotency-Key", key)]),
        ("idempotency-key", [("Authorization", terminal), ("Idempotency-Key", key), ("IDEMPOTENCY-KEY", "other")]),
        ("authorization", [("Idempotency-Key", key), ("Authorization", "Bearer x"), ("Authorization", terminal)]),
    ]
    with httpx.Client(base_url=ward.server.base_url) as c:
        for name, headers in cases:

            def send(headers=headers) -> httpx.Response:
                return c.post(
                    "/v1/transactions", content=body, headers=[("Content-Type", "application/json"), *headers]
                )

            r = assert_refused(ward, send, 400, "header_duplicated")
            assert name in r.json()["detail"].lower(), r.text
        admin = f"Bearer {ward.server.admin_key}"
        _assert_code(
            c.get("/v1/keys", headers=[("Authorization", admin), ("Authorization", admin)]), 400, "header_duplicated"
        )
        # Not remembered: the same request with each header once is processed afresh.
        r = c.post(
            "/v1/transactions",
            content=body,
            headers={"Authorization": terminal, "Idempotency-Key": key, "Content-Type": "application/json"},
        )
        assert r.status_code == 201 and "Idempotent-Replayed" not in r.headers, r.text


# -- 5. every path and query parameter bounded before the database -------------------------

NUL_PATHS = [
    ("finance", "GET", "/v1/transactions/tx%00x"),
    ("app", "GET", "/v1/wallets/W%00/points"),
    ("merchant", "GET", "/v1/merchants/M_SHOTEN%00/rewards"),
    ("merchant", "GET", "/v1/merchants/M_SHOTEN%00/transactions"),
    ("admin", "GET", "/v1/merchants/M%00"),
    ("admin", "PATCH", "/v1/merchants/M%00"),
    ("finance", "POST", "/v1/merchants/M%00/bank-account/confirm"),
    ("finance", "GET", "/v1/campaigns/C%00"),
    ("admin", "PATCH", "/v1/campaigns/C%00"),
    ("finance", "GET", "/v1/campaigns/C%00/budget"),
    ("admin", "POST", "/v1/campaigns/C%00/simulate"),
    ("admin", "GET", "/v1/terminals/T%00"),
    ("admin", "PATCH", "/v1/terminals/T%00"),
    ("finance", "GET", "/v1/settlement-runs/st%00"),
    ("finance", "GET", "/v1/settlement-runs/st%00/statement.csv"),
    ("finance", "GET", "/v1/settlement-runs/st%00/zengin"),
    ("finance", "POST", "/v1/settlement-runs/st%00/payout-results"),
    ("admin", "POST", "/v1/keys/k%00/revoke"),
]


def _key_for(ward: Ward, role: str) -> str:
    return {
        "finance": ward.finance_key,
        "admin": ward.server.admin_key,
        "app": ward.key("app"),
        "merchant": ward.key("merchant", "M_SHOTEN"),
        "terminal": ward.terminal_key("T_SHOTEN_1"),
    }[role]


@pytest.mark.parametrize("role, method, path", NUL_PATHS, ids=[f"{m} {p}" for _, m, p in NUL_PATHS])
def test_a_nul_byte_in_a_path_id_is_422(ward: Ward, role: str, method: str, path: str) -> None:
    with ward.server.client(_key_for(ward, role)) as c:
        _assert_code(c.request(method, path, json={} if method != "GET" else None), 422, "invalid_request")


def test_a_nul_byte_in_a_terminal_path_is_refused(ward: Ward) -> None:
    r = _raw_post(
        ward, "T_SHOTEN_1", "/v1/terminals/T%00/closeouts", b'{"business_date": "2026-12-01", "count": 0, "total": 0}'
    )
    assert r.status_code in (403, 422), r.text


@pytest.mark.parametrize("prefix, path", [("seq", "/v1/merchants/M_SHOTEN/transactions"), ("aud", "/v1/audit")])
def test_cursors_are_bounded_by_sequence_max(ward: Ward, prefix: str, path: str) -> None:
    with ward.server.client(ward.finance_key) as finance:
        for number in (str(limits.SEQUENCE_MAX + 1), "9" * 30, "-1", "１２", "1\n", ""):
            _assert_code(finance.get(path, params={"cursor": _cursor(prefix, number)}), 422, "invalid_request")
        for cursor in ("%00", "\x00", "a" * (limits.CURSOR_CHARS_MAX + 1), _cursor("other", "1")):
            _assert_code(finance.get(path, params={"cursor": cursor}), 422, "invalid_request")
        r = finance.get(path, params={"cursor": _cursor(prefix, str(limits.SEQUENCE_MAX))})
        assert r.status_code == 200, r.text


def _pages(client: httpx.Client, path: str, listed: str, key: str, **params) -> list:
    """Every entry of a keyset-paged list, one a page: each page's `next_cursor` must be taken."""
    seen, cursor = [], None
    while True:
        r = client.get(path, params={"limit": 1, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, (cursor, r.text)
        seen += [entry[key] for entry in r.json()[listed]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return seen


def test_every_cursor_the_api_makes_is_taken_back_with_the_longest_ids(ward: Ward) -> None:
    """Ids of 64 characters (the id pattern's most) in every list that pages: each cursor the
    server hands out is one its `cursor` parameter takes (the directory's, 91 characters after a
    64-character merchant id, was refused by a limit of 64, and its paging stopped there)."""
    tail = uuid.uuid4().hex[:8]
    merchants = [("z" * 55 + tail + letter) for letter in "ab"]
    terminal_id, wallet_id = "T" * 56 + tail, "W" * 56 + tail
    for merchant_id in merchants:
        assert len(merchant_id) == 64
        ward.server.admin_post("/v1/merchants", {**ward.plan.merchants[0], "id": merchant_id})
    ward.server.admin_post("/v1/terminals", {"id": terminal_id, "merchant_id": merchants[0]})
    ward.merchant_of[terminal_id] = merchants[0]
    bought = [ward.buy(terminal_id, wallet_id, amount)["id"] for amount in (500, 600)]

    listed = _pages(ward.app_client, "/v1/directory/merchants", "merchants", "merchant_id")
    assert listed[-2:] == merchants, listed[-3:]
    history = _pages(ward.app_client, f"/v1/wallets/{wallet_id}/history", "events", "transaction_id")
    assert set(history) == set(bought)
    with ward.server.client(ward.finance_key) as finance:
        path = f"/v1/merchants/{merchants[0]}/transactions"
        assert _pages(finance, path, "transactions", "id") == bought
        assert len(_pages(finance, "/v1/audit", "entries", "sequence", target=f"merchant:{merchants[0]}")) == 1


def test_the_cursor_limit_holds_the_longest_cursor_of_every_kind() -> None:
    from api.routers import audit, directory, merchants, ui, wallets
    from api.strict import decode_cursor, decode_id_cursor, encode_cursor

    for prefix in (audit._CURSOR_PREFIX, merchants._CURSOR_PREFIX, wallets._HISTORY_CURSOR, ui._AUDIT_CURSOR_PREFIX):
        longest = encode_cursor(prefix, limits.SEQUENCE_MAX)
        assert len(longest) <= limits.CURSOR_CHARS_MAX and decode_cursor(prefix, longest) == limits.SEQUENCE_MAX
    longest = encode_cursor(directory._CURSOR_PREFIX, "z" * limits.ID_CHARS_MAX)
    assert len(longest) <= limits.CURSOR_CHARS_MAX and decode_id_cursor(directory._CURSOR_PREFIX, longest) == "z" * 64


@pytest.mark.parametrize(
    "prefix, path, role",
    [
        ("seq", "/v1/merchants/M_SHOTEN/transactions", "finance"),
        ("aud", "/v1/audit", "finance"),
        ("hist", "/v1/wallets/W_CURSOR/history", "app"),
    ],
)
def test_a_cursor_is_taken_only_as_the_server_spells_it(ward: Ward, prefix: str, path: str, role: str) -> None:
    """Another spelling of a cursor's sequence (a leading zero, base64 padding, other unused bits
    in the last base64 character) is a cursor the server never made: 422, as any other."""
    number = "5" if (len(prefix) + 2) % 3 else "15"  # a text whose base64 has unused bits at its end
    spelled = _cursor(prefix, number)
    other_bits = spelled[:-1] + BASE64URL[BASE64URL.index(spelled[-1]) ^ 1]
    padded = "=" * (-len(spelled) % 4)
    assert base64.urlsafe_b64decode(other_bits + padded) == base64.urlsafe_b64decode(spelled + padded)
    with ward.server.client(_key_for(ward, role)) as c:
        assert c.get(path, params={"cursor": spelled}).status_code == 200
        for cursor in (_cursor(prefix, "0" + number), _cursor(prefix, "00"), spelled + "=", other_bits):
            assert cursor != spelled
            _assert_code(c.get(path, params={"cursor": cursor}), 422, "invalid_request")


def test_campaign_versions_are_bounded(ward: Ward) -> None:
    with ward.server.client(ward.finance_key) as finance:
        for version in (str(2**63), str(2**64), str(limits.VERSION_MAX + 1), "0", "-1", "1.5", "1e3", "x"):
            _assert_code(finance.get("/v1/campaigns/C_POINTBACK", params={"version": version}), 422, "invalid_request")
        _assert_code(
            finance.get("/v1/campaigns/C_POINTBACK", params={"version": str(limits.VERSION_MAX)}), 404, "not_found"
        )
        assert finance.get("/v1/campaigns/C_POINTBACK", params={"version": "1"}).status_code == 200


@pytest.mark.parametrize("path", ["/v1/merchants/M_SHOTEN/transactions", "/v1/audit"])
def test_page_limits_are_bounded(ward: Ward, path: str) -> None:
    with ward.server.client(ward.finance_key) as finance:
        for limit in ("0", "-1", str(limits.PAGE_LIMIT_MAX + 1), str(2**64), "1e400", "NaN"):
            _assert_code(finance.get(path, params={"limit": limit}), 422, "invalid_request")
        assert finance.get(path, params={"limit": str(limits.PAGE_LIMIT_MAX)}).status_code == 200


# Numbers a query string carries are decimal digits as written: pydantic's lax integer read each
# of these as a number (`1_0` as 10), Python's `int` the other scripts' digits.
NOT_DIGITS = [" 1", "1 ", "+1", "1.0", "1_0", "\u0661", "1\n", "0x1"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/events", "after"),
        ("/v1/events", "limit"),
        ("/v1/webhook-deliveries", "after"),
        ("/v1/webhook-deliveries", "limit"),
        ("/v1/audit", "limit"),
        ("/v1/merchants/M_SHOTEN/transactions", "limit"),
        ("/v1/campaigns/C_POINTBACK", "version"),
    ],
)
def test_query_integers_are_decimal_digits(ward: Ward, path: str, name: str) -> None:
    with ward.server.client(ward.finance_key) as finance:
        for value in NOT_DIGITS:
            r = finance.get(path, params={name: value})
            _assert_code(r, 422, "invalid_request")
            assert r.json()["errors"][0]["loc"] == ["query", name], r.text
        assert finance.get(path, params={name: "1"}).status_code == 200
        assert finance.get(path, params={name: "01"}).status_code == 200  # digits, whatever their count


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/audit", "limit=1&limit=2"),
        ("/v1/merchants/M_SHOTEN/transactions", "from=2026-01-01T00:00:00Z&from=2020-01-01T00:00:00Z"),
        ("/v1/events", "types=clawback&types=points_credited"),
        ("/v1/webhook-deliveries", "status=failed&status=failed"),
    ],
)
def test_a_query_parameter_given_twice_is_refused(ward: Ward, path: str, query: str) -> None:
    """Starlette would keep the last value, where a proxy or a log reading the first sees another
    request."""
    with ward.server.client(ward.finance_key) as finance:
        r = finance.get(f"{path}?{query}")
        _assert_code(r, 422, "invalid_request")
        name = query.split("=", 1)[0]
        assert r.json()["errors"] == [{"loc": ["query", name], "msg": "given more than once", "type": "duplicated"}]
        assert finance.get(f"{path}?{query.split('&', 1)[0]}").status_code == 200
        # Only the `/v1/` routes' queries: the method, a route's absence, /metrics' own parameters
        # (a Prometheus scrape's `name[]`) and the pages come first or are their own.
        assert finance.delete(f"{path}?{query}").status_code == 405
        _assert_code(finance.get(f"/v1/nowhere?{query}"), 404, "not_found")
        assert finance.get("/metrics?name[]=a&name[]=b").status_code == 200


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/merchants/M_SHOTEN/transactions", "until=2020-01-01T00:00:00Z"),  # the page's name for `to`
        ("/v1/merchants/M_SHOTEN/transactions", "To=2020-01-01T00:00:00Z"),
        ("/v1/audit", "Limit=1"),
        ("/v1/campaigns", "class=small"),
        ("/v1/events", "after=0&before=9"),
    ],
)
def test_a_query_parameter_the_route_does_not_take_is_refused(ward: Ward, path: str, query: str) -> None:
    """FastAPI ignores it: a misspelt filter answered everything, unfiltered."""
    unknown = query.split("&")[-1].split("=", 1)[0]
    with ward.server.client(ward.finance_key) as finance:
        r = finance.get(f"{path}?{query}")
        _assert_code(r, 422, "invalid_request")
        assert r.json()["errors"] == [
            {"loc": ["query", unknown], "msg": "not a parameter of this route", "type": "unknown"}
        ]


def test_an_unknown_query_parameter_is_named_back_shortened(ward: Ward) -> None:
    """The refusal comes before authentication: a long name is not echoed whole (twice)."""
    with httpx.Client(base_url=ward.server.base_url) as anyone:
        r = anyone.get("/v1/events", params={"a" * 60_000: "1"})
    _assert_code(r, 422, "invalid_request")
    assert r.json()["errors"][0]["loc"] == ["query", "a" * 64 + "…"] and len(r.content) < 1_000


def test_a_post_with_a_query_parameter_it_does_not_take_does_nothing(ward: Ward) -> None:
    sale = purchase("T_SHOTEN_1", "W_QUERY", 1000)
    before = (ward.server.postings(), ward.server.payments())
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as terminal:
        single = terminal.post("/v1/transactions?dry_run=true", json=sale, headers={"Idempotency-Key": "query-1"})
        _assert_code(single, 422, "invalid_request")
        batch = terminal.post(
            "/v1/transactions/batch?dry_run=1", json={"transactions": [{**sale, "idempotency_key": "q2"}]}
        )
        _assert_code(batch, 422, "invalid_request")
        assert terminal.delete("/v1/transactions?dry_run=true").status_code == 405  # the method first
    with ward.server.client(ward.finance_key) as finance:
        _assert_code(finance.post("/v1/chain-heads?dry_run=true"), 422, "invalid_request")
    assert (ward.server.postings(), ward.server.payments()) == before
    assert ward.post("T_SHOTEN_1", sale).status_code == 201  # the same sale, without the parameter


def test_a_path_spelled_with_another_slash_is_not_found_not_redirected(ward: Ward) -> None:
    """Starlette's slash redirect built its Location from the Host header the client sent; a client
    following it would send its POST body again."""
    sale = purchase("T_SHOTEN_1", "W_SLASH", 1000)
    before = (ward.server.postings(), ward.server.payments())
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as terminal:
        for path in ("/v1/transactions/", "/v1/transactions/batch/"):
            r = terminal.post(path, json=sale, headers={"Idempotency-Key": "slash", "Host": "evil.example"})
            _assert_code(r, 404, "not_found")
            assert "location" not in r.headers
    assert (ward.server.postings(), ward.server.payments()) == before
    with ward.server.client(ward.finance_key) as finance:
        _assert_code(finance.get("/v1/campaigns/"), 404, "not_found")
        # The pages' root, typed without its slash, is the one redirect: relative, whatever the Host.
        r = finance.get("/ui", headers={"Host": "evil.example"})
        assert (r.status_code, r.headers["location"]) == (308, "/ui/")
        assert finance.get("/ui?lang=en").headers["location"] == "/ui/?lang=en"  # its query kept


@pytest.mark.parametrize("path", ["/v1/audit", "/v1/merchants/M_SHOTEN/transactions", "/v1/merchants/M_SHOTEN/rewards"])
def test_a_window_whose_end_is_not_after_its_start_is_refused(ward: Ward, path: str) -> None:
    """Swapped bounds answered an empty page, which a client summing it reads as nothing there; a
    simulation's window was refused already."""
    with ward.server.client(ward.finance_key) as finance:
        for start, end in (("2026-12-02T00:00:00Z", "2026-12-01T00:00:00Z"), ("2026-12-01T09:00:00+09:00",) * 2):
            r = finance.get(path, params={"from": start, "to": end})
            _assert_code(r, 422, "invalid_request")
            assert r.json()["errors"] == [{"loc": ["query", "to"], "msg": "must be after from", "type": "value_error"}]
        # The same instant in another offset, a microsecond later: a window.
        fine = {"from": "2026-12-01T00:00:00Z", "to": "2026-12-01T09:00:00.000001+09:00"}
        assert finance.get(path, params=fine).status_code == 200


def test_the_transactions_page_takes_dates_as_yyyy_mm_dd(ward: Ward) -> None:
    client = ward.pages(ward.finance_key)
    try:
        path = "/ui/merchants/M_SHOTEN/transactions"
        assert client.get(path, params={"from": "2026-12-07"}).status_code == 200
        for date in ("20261207", "2026-W50-1", "2026-341", " 2026-12-07"):
            r = client.get(path, params={"from": date})
            assert r.status_code == 422 and "text/html" in r.headers["content-type"], (date, r.text)
        for until in ("2026-12-07", "2026-12-06"):  # not after `from`: refused, as the JSON route's
            r = client.get(path, params={"from": "2026-12-07", "until": until})
            assert r.status_code == 422 and "text/html" in r.headers["content-type"], (until, r.text)
        assert client.get(path, params={"from": "2026-12-07", "until": "2026-12-08"}).status_code == 200
    finally:
        client.close()


@pytest.mark.parametrize(
    "business_date",
    [
        "9999-12-31",
        "0001-01-01",
        "1969-12-31",
        20261231,
        "2026-12-01T00:00:00",
        "2026-12-01\n",
        "2026-02-30",
        None,
        "+2026-12-01",
    ],
)
def test_closeout_dates_are_bounded(ward: Ward, business_date) -> None:
    raw = json.dumps({"business_date": business_date, "count": 0, "total": 0}).encode()
    r = _raw_post(ward, "T_SHOTEN_1", "/v1/terminals/T_SHOTEN_1/closeouts", raw)
    _assert_code(r, 422, "invalid_request")


def test_a_closeout_at_the_last_calendar_day_is_answered(ward: Ward) -> None:
    """The calendar's last day is a day that has not begun: refused as any future day (422, never a
    500 at the calendar's edge)."""
    raw = json.dumps({"business_date": f"{limits.CALENDAR_YEAR_MAX}-12-31", "count": 0, "total": 0}).encode()
    r = _raw_post(ward, "T_SHOTEN_1", "/v1/terminals/T_SHOTEN_1/closeouts", raw)
    _assert_code(r, 422, "invalid_request")
    assert "has not begun" in r.json()["detail"]


@pytest.mark.parametrize("period", ["9999-12", "0001-01", "9999-12-H2", "1969-12", 202612, "2026-13", "2026-12\n"])
def test_settlement_periods_are_bounded(ward: Ward, period) -> None:
    runs, postings = ward.server.count(SettlementRunRow), ward.server.postings()
    with ward.server.client(ward.finance_key) as finance:
        _assert_code(finance.post("/v1/settlement-runs", json={"period": period}), 422, "invalid_request")
    assert (ward.server.count(SettlementRunRow), ward.server.postings()) == (runs, postings)


REFUSED_LABELS = {
    "nul": "M\x00",
    "newline": "二子玉川\n商店",
    "tab": "a\tb",
    "delete": "a\x7f",
    "c1_next_line": "a\x85b",
    "line_separator": "a\u2028b",
    "paragraph_separator": "a\u2029b",
    "right_to_left_override": "ラーメン\u202etxt.exe",
    "left_to_right_isolate": "a\u2066b\u2069",
    "right_to_left_mark": "a\u200fb",
    "arabic_letter_mark": "a\u061cb",
    "zero_width_space": "a\u200bb",
    "byte_order_mark": "\ufeffa",
    "only_a_joiner": "\u200d",
    "only_a_soft_hyphen": "\xad",
    "only_hangul_fillers": "\u3164\uffa0",
    "blank": " ",
    "ideographic_space": "\u3000\u3000",
    "empty": "",
    "too_long": "名" * (limits.LABEL_CHARS_MAX + 1),
}


@pytest.mark.parametrize("reason", [*REFUSED_LABELS.values(), "\x00", 5], ids=[*REFUSED_LABELS, "nul_only", "number"])
def test_grant_reasons_are_labels(ward: Ward, reason) -> None:
    grants, postings = ward.server.count(GrantRow), ward.server.postings()
    key = "grant-" + uuid.uuid4().hex
    body = {"wallet_id": "W_GRANT_STRICT", "campaign_id": "C_POINTBACK", "points": 1, "reason": reason}
    with ward.server.client(ward.finance_key) as finance:
        _assert_code(finance.post("/v1/grants", json=body, headers={"Idempotency-Key": key}), 422, "invalid_request")
        assert (ward.server.count(GrantRow), ward.server.postings()) == (grants, postings)
        # Not remembered under the key.
        r = finance.post(
            "/v1/grants", json={**body, "reason": "r" * limits.LABEL_CHARS_MAX}, headers={"Idempotency-Key": key}
        )
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("name", list(REFUSED_LABELS.values()), ids=list(REFUSED_LABELS))
def test_names_and_schemes_are_labels(ward: Ward, name: str) -> None:
    """A merchant's or a campaign's name and a certification's scheme are `Label`s: a control
    character, a line or paragraph separator, a bidirectional control, nothing visible, or too
    many characters is 422 on create and on update, and nothing is written."""
    tables = (MerchantRow, MerchantVersionRow, CampaignVersionRow)
    before = [ward.server.count(t) for t in tables]
    certification = {"valid_from": "2026-01-01T00:00:00+09:00", "valid_until": "2036-01-01T00:00:00+09:00"}
    merchant = {"id": "M_LABEL", "name": "ラベル商店", "merchant_class": "small"}
    campaign = {
        "id": "C_LABEL",
        "name": "ラベル",
        "starts_at": "2026-01-01T00:00:00+09:00",
        "ends_at": "2036-01-01T00:00:00+09:00",
        "tiers": [{"match": {"merchant_ids": ["M_NOBODY"]}, "rate_bp": 100}],
    }
    scheme = name[: limits.SCHEME_CHARS_MAX] if name != REFUSED_LABELS["too_long"] else "s" * 65
    with ward.server.client(ward.server.admin_key) as admin:
        for method, path, body in [
            ("POST", "/v1/merchants", {**merchant, "name": name}),
            ("POST", "/v1/merchants", {**merchant, "ethical_certifications": [{**certification, "scheme": scheme}]}),
            ("POST", "/v1/campaigns", {**campaign, "name": name}),
            ("PATCH", "/v1/merchants/M_SHOTEN", {"name": name}),
            ("PATCH", "/v1/merchants/M_SHOTEN", {"ethical_certifications": [{**certification, "scheme": scheme}]}),
            ("PATCH", "/v1/campaigns/C_POINTBACK", {"name": name}),
        ]:
            _assert_code(admin.request(method, path, json=body), 422, "invalid_request")
    assert [ward.server.count(t) for t in tables] == before


def test_names_take_any_visible_text(ward: Ward) -> None:
    """What a name may hold: Japanese with spaces of either width between words, emoji joined
    by a zero-width joiner, the longest name; read back as given."""
    names = ["世田谷 ベーカリー\u3000三軒茶屋店", "🧑\u200d🍳 kitchen", "名" * limits.LABEL_CHARS_MAX]
    with ward.server.client(ward.server.admin_key) as admin:
        for n, name in enumerate(names):
            merchant = {"id": f"M_NAMED_{n}", "name": name, "merchant_class": "small"}
            assert admin.post("/v1/merchants", json=merchant).status_code == 201
            assert admin.get(f"/v1/merchants/M_NAMED_{n}").json()["name"] == name


# -- 6. a bad batch item answers for itself; the rest proceed ------------------------------


def test_bad_batch_items_answer_for_themselves(ward: Ward) -> None:
    def item(amount_yen: int, **changes) -> dict:
        return {**purchase("T_SHOTEN_1", "W_BATCH_STRICT", amount_yen), "idempotency_key": uuid.uuid4().hex, **changes}

    items = [
        item(500),
        42,
        "a purchase",
        None,
        [item(500)],
        item(500, idempotency_key=12345),
        item(500, idempotency_key=None),
        item(500, idempotency_key=["k"]),
        item(500, amount="500"),
        item(500, occurred_at=1764600000),
        item(500, wallet_id="W\x00"),
        item(500, amount=10**30),
        {"idempotency_key": uuid.uuid4().hex},
        item(700),
    ]
    expected = [
        (201, None),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (400, "idempotency_key_invalid"),
        (400, "idempotency_key_missing"),
        (400, "idempotency_key_invalid"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (422, "invalid_request"),
        (201, None),
    ]
    payments = ward.server.payments()
    r = ward.terminal("T_SHOTEN_1").post("/v1/transactions/batch", json={"transactions": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    got = [(x["status"], x["body"].get("code")) for x in results]
    assert got == expected, got
    assert ward.server.payments() == payments + 2


# -- 7. hostile inputs at every route, with every role's key: never a 5xx ------------------

HOSTILE_IDS = [
    "x\x00",
    "\x00",
    "tx_\n",
    "A" * 65,
    "A" * 3000,
    "ウォレット",
    "9223372036854775808",
    "-1",
    "..",
    "%25",
    " ",
    "\u202e",
    "\t",
    "a;b",
    "{id}",
]
HOSTILE_QUERIES = [
    {"from": "1764600000"},
    {"to": "9999-12-31T23:59:59-23:59"},
    {"from": "0001-01-01T00:00:00+14:00"},
    {"to": "x" * 2000},
    {"from": "\x00"},
    {"cursor": _cursor("seq", "9" * 40)},
    {"cursor": _cursor("aud", "9" * 40)},
    {"cursor": "\x00"},
    {"cursor": "%%%"},
    {"limit": "0"},
    {"limit": str(2**64)},
    {"limit": "-1"},
    {"limit": "1e400"},
    {"version": str(2**63)},
    {"version": "0"},
    {"version": "NaN"},
    {"target": "x\x00"},
    {"target": "a" * 2000},
    {"target": "merchant:M_SHOTEN\n"},
    {"period": "9999-12"},
]
HOSTILE_BODIES = [
    b"",
    b"null",
    b"[]",
    b"0",
    b'""',
    b"true",
    b"\x00",
    b"\xff\xfe",
    b'{"a": 1, "a": 2}',
    b"[" * 5000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"x": ' + b"9" * 5000 + b"}",
    b'{"x": 1e999}',
    b'{"x": NaN}',
    b'{"transactions": [1, "a", null, {"idempotency_key": 5}, {"idempotency_key": "k", "type": "refund"}]}',
    b'{"role": 5, "merchant_id": {"$ne": 1}}',
    b'{"period": 202612}',
    b'{"period": "9999-12"}',
    b'{"business_date": 20261231, "count": 1e400, "total": -1}',
    b'{"business_date": "9999-12-31", "count": 0, "total": 0}',
    b'{"name": "\\u0000\\ud800", "id": "\\ud800"}',
    b'{"type": "\\ud800"}',
    b'{"type": "purchase", "wallet_id": "\\ud83d", "occurred_at": "\\udfff"}',
    b'{"id": "' + b"\xe3\x81\x82" * 300 + b'"}',
    b'{"wallet_id": "W", "campaign_id": "C_POINTBACK", "points": 18446744073709551616, "reason": "x"}',
    b'{"results": [{"merchant_id": "M_SHOTEN\\u0000", "status": "paid"}]}',
    b'{"campaign": [], "from": 0, "to": 1e400}',
    b'{"public_key": "\\u0000"}',
    b'{"merchant_id": null}',
    b'{"id": "M_FUZZ", "name": "\\ud800", "merchant_class": "small"}',
    b'{"name": "\\udfff\\ud800"}',
    b'{"wallet_id": "W_FUZZ", "campaign_id": "C_POINTBACK", "points": 1, "reason": "\\ud800"}',
    json.dumps({"transactions": [{"idempotency_key": "k" * 300}] * 3}).encode(),
]
PATH_FILLERS = {
    "transaction_id": "tx_nothing",
    "wallet_id": "W_FUZZ",
    "merchant_id": "M_SHOTEN",
    "campaign_id": "C_POINTBACK",
    "terminal_id": "T_SHOTEN_1",
    "run_id": "st_nothing",
    "key_id": "k_nothing",
    "webhook_id": "wh_nothing",
    "download": "statement.csv",
}
FUZZ_ROLES = ["none", "admin", "finance", "app", "merchant", "terminal"]


def _routes() -> list[tuple[str, str]]:
    import tempfile

    from fastapi.routing import APIRoute

    from api.app import create_app
    from engine.settings import Settings

    with tempfile.TemporaryDirectory() as directory:
        app = create_app(Settings(database_url=f"sqlite+pysqlite:///{directory}/routes.db"), migrate=False)
        return sorted((m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods if m != "HEAD")


def _fill(template: str, **values: str) -> str:
    import re

    names = re.findall(r"\{(\w+)\}", template)
    assert all(n in PATH_FILLERS for n in names), f"a path parameter with no filler: {template}"
    return re.sub(r"\{(\w+)\}", lambda m: quote(values.get(m.group(1), PATH_FILLERS[m.group(1)]), safe=""), template)


def test_hostile_inputs_at_every_route_never_yield_a_5xx(ward: Ward) -> None:
    """Hostile path ids at every path parameter, hostile query parameters at every GET and hostile
    bodies at every POST and PATCH, with no key and with each role's key: never a 5xx, every
    refusal problem+json (the pages under /ui/ may also answer their own refusals with an HTML
    error page, for browsers), and no posting, payment or key written."""
    import re

    postings, payments, keys = ward.server.postings(), ward.server.payments(), ward.server.count(ApiKeyRow)
    routes = _routes()
    failures: list[str] = []
    sent = 0
    for role in FUZZ_ROLES:
        key = None if role == "none" else _key_for(ward, role)
        with ward.server.client(key) as c:
            for method, template in routes:
                requests: list[tuple[str, dict]] = []
                for name in re.findall(r"\{(\w+)\}", template):
                    requests += [(_fill(template, **{name: v}), {}) for v in HOSTILE_IDS]
                path = _fill(template)
                if method == "GET":
                    requests += [(path, {"params": q}) for q in HOSTILE_QUERIES]
                if method in ("POST", "PATCH", "PUT"):
                    requests += [
                        (path, {"content": b, "headers": {"Content-Type": "application/json"}}) for b in HOSTILE_BODIES
                    ]
                for target, kwargs in requests:
                    headers = {"Idempotency-Key": "fuzz-" + uuid.uuid4().hex, **kwargs.pop("headers", {})}
                    r = c.request(method, target, headers=headers, **kwargs)
                    sent += 1
                    wanted = (
                        {PROBLEM_JSON, "text/html; charset=utf-8"} if template.startswith("/ui/") else {PROBLEM_JSON}
                    )
                    problem = r.status_code >= 400 and r.headers.get("content-type") not in wanted
                    if r.status_code >= 500 or problem:
                        failures.append(
                            f"{role} {method} {target[:80]!r} {str(kwargs)[:120]}: {r.status_code} {r.text[:200]}"
                        )
    assert not failures, f"{len(failures)} of {sent} hostile requests:\n" + "\n".join(failures[:40])
    assert (ward.server.postings(), ward.server.payments(), ward.server.count(ApiKeyRow)) == (postings, payments, keys)


def test_a_bound_finer_than_a_microsecond_rounds_up_to_it(ward: Ward) -> None:
    """The ledger holds instants to the microsecond: a record's nanoseconds are dropped (ROUNDING:
    floored, so a terminal writing Go's RFC3339Nano is read), and a window's bound between two
    microseconds is rounded up to the next (`engine.model.WindowBound`), which takes in exactly the
    rows the bound itself does. Floored, a `from` a nanosecond after a row took the row in and a
    `to` a nanosecond after it left the row out."""
    second = now_tokyo(-60)  # YYYY-MM-DDTHH:MM:SS+09:00
    at = lambda fraction: f"{second[:19]}.{fraction}{second[19:]}"  # noqa: E731
    answer = ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_NANO", 1000, occurred_at=at("123456999")))
    assert answer.status_code == 201, answer.text
    payment = answer.json()
    assert payment["occurred_at"].endswith(f".123456{second[19:]}")  # floored to its microsecond

    def listed(**window: str) -> bool:
        with ward.server.client(ward.finance_key) as finance:
            r = finance.get("/v1/merchants/M_SHOTEN/transactions", params=window)
        assert r.status_code == 200, r.text
        return payment["id"] in {t["id"] for t in r.json()["transactions"]}

    assert listed(**{"from": at("123456")}) and listed(**{"from": at("123455001")})
    assert not listed(**{"from": at("123456001")})  # a nanosecond after the row: out (it was in)
    assert listed(to=at("123456001")) and listed(to=at("123457"))  # a nanosecond after it: in (it was out)
    assert not listed(to=at("123456")) and not listed(to=at("123455999"))
    # Zeros past the sixth digit change nothing; the last microsecond of year 9999 has no next one.
    assert listed(**{"from": at("123456000"), "to": at("123457000")})
    with ward.server.client(ward.finance_key) as finance:
        r = finance.get("/v1/audit", params={"from": "9999-12-31T23:59:59.9999991Z"})
    _assert_code(r, 422, "invalid_request")
