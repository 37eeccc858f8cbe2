"""Bad input over HTTP: every refusal is a 4xx problem+json with its stable code, and writes nothing.

Each named limit of SPEC §2 is sent at its maximum (accepted) and one past it
(refused); malformed JSON, wrong types, unknown references, foreign keys and
missing credentials are refused with their code. After every refusal the
number of postings in the database is what it was before. No input yields a 500.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import httpx
import pytest

from engine import limits
from tests.ward import Ward, now_tokyo, purchase, refund

PROBLEM_JSON = "application/problem+json"
SEVEN_DAYS_S = limits.OCCURRED_AT_MAX_PAST_DAYS * 86_400


def assert_refused(ward: Ward, send: Callable[[], httpx.Response], status: int, code: str) -> httpx.Response:
    postings, payments = ward.server.postings(), ward.server.payments()
    r = send()
    assert (r.status_code, r.json().get("code")) == (status, code), r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert r.json()["status"] == status and r.json()["type"] and r.json()["title"]
    assert (ward.server.postings(), ward.server.payments()) == (postings, payments), "a refusal wrote to the ledger"
    return r


def assert_accepted(r: httpx.Response) -> dict:
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def funded_wallet(ward: Ward) -> str:
    """A wallet holding a few thousand available points, for redemptions at their limit."""
    assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_FUNDED", 50_000)))
    with ward.server.client(ward.finance_key) as finance:
        assert finance.get("/v1/wallets/W_FUNDED/points").json()["available"] >= 1000
    return "W_FUNDED"


def _with(**changes) -> dict:
    return {**purchase("T_SHOTEN_1", "W_LIMITS", 1000), **changes}


def _items(count: int, tags_each: int = 1, tag: str = "ethical") -> list[dict]:
    amounts = [1000 // count] * count
    amounts[0] += 1000 - sum(amounts)
    return [{"amount": a, "tags": [f"{tag}{i}" if i else tag for i in range(tags_each)]} for a in amounts]


# -- malformed bodies and wrong types -------------------------------------------------

MALFORMED_JSON = {
    "truncated": b'{"type": "purchase", "amount": ',
    "not_json": b"amount=1000",
    "trailing_garbage": b'{"type": "purchase"} x',
    "invalid_utf8": b'{"type": "purchase", "wallet_id": "\xff\xfe"}',
    "nested_too_deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("raw", MALFORMED_JSON.values(), ids=MALFORMED_JSON.keys())
def test_malformed_json_is_400(ward: Ward, raw: bytes) -> None:
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", raw), 400, "malformed_json")


WRONG_TYPES = {
    "empty_body": b"",
    "array": b"[]",
    "null": b"null",
    "string_amount": _with(amount="1000"),
    "float_amount": _with(amount=1000.0),
    "bool_amount": _with(amount=True),
    "huge_amount": _with(amount=10**40),
    "nan_amount": b'{"type": "purchase", "amount": NaN}',
    "null_points_used": _with(points_used=None),
    "negative_points_used": _with(points_used=-1),
    "items_not_a_list": _with(items={"amount": 1000}),
    "items_not_summing_to_amount": _with(items=[{"amount": 999, "tags": []}]),
    "tags_not_a_list": _with(items=[{"amount": 1000, "tags": "ethical"}]),
    "occurred_at_without_offset": _with(occurred_at="2026-11-29T10:00:00"),
    "occurred_at_not_a_date": _with(occurred_at="yesterday"),
    "unknown_type": _with(type="gift"),
    "missing_type": {k: v for k, v in _with().items() if k != "type"},
    "unknown_field": _with(note="hello"),
    "missing_wallet": {k: v for k, v in _with().items() if k != "wallet_id"},
    "nul_in_id": _with(wallet_id="W\u0000"),
    "refund_without_original": {"type": "refund", "amount": 1, "occurred_at": "2026-11-29T10:00:00+09:00"},
    "refund_amount_zero": {
        "type": "refund",
        "original_id": "tx_x",
        "amount": 0,
        "occurred_at": "2026-11-29T10:00:00+09:00",
    },
}


@pytest.mark.parametrize("body", WRONG_TYPES.values(), ids=WRONG_TYPES.keys())
def test_wrong_shapes_and_types_are_422(ward: Ward, body) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = assert_refused(ward, lambda: ward.post("T_SHOTEN_1", raw), 422, "invalid_request")
    assert r.json()["errors"], r.text


def test_a_body_of_many_unknown_fields_gets_a_short_answer(ward: Ward) -> None:
    """90,000 unknown fields were answered with 90,000 errors, 8 MB and half a second of CPU a
    request (helper-89). The answer lists the first fifty and says how many more there were."""
    body = {**purchase("T_SHOTEN_1", "W_MANY_FIELDS", 1000), **{f"x{i}": 0 for i in range(5_000)}}
    r = assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 422, "invalid_request")
    errors = r.json()["errors"]
    assert len(errors) == 51 and len(r.content) < 20_000, len(r.content)
    assert errors[-1] == {"loc": [], "msg": "4950 more errors", "type": "too_many_errors"}
    assert all(e["type"] == "extra_forbidden" for e in errors[:50])


def test_an_empty_item_list_is_refused_and_writes_nothing(ward: Ward) -> None:
    """SPEC §4: items, when given, sum to the amount; `"items": []` lists none, and is 422
    `invalid_request` naming `items` for a single post, a batch item (the other items proceed)
    and a quote alike, writing nothing. One item is accepted."""
    body = purchase("T_SHOTEN_1", "W_NO_ITEMS", 1000, items=[])
    r = assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 422, "invalid_request")
    assert [(e["loc"][-1], e["type"]) for e in r.json()["errors"]] == [("items", "too_short")], r.text

    one = purchase("T_SHOTEN_1", "W_NO_ITEMS", 1000, items=[{"amount": 1000, "tags": []}])
    payments, postings = ward.server.payments(), ward.server.postings()
    batch = [{**b, "idempotency_key": uuid.uuid4().hex} for b in (body, one)]
    r = ward.terminal("T_SHOTEN_1").post("/v1/transactions/batch", json={"transactions": batch})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["status"], x["body"].get("code")) for x in results] == [(422, "invalid_request"), (201, None)]
    assert [e["loc"][-1] for e in results[0]["body"]["errors"]] == ["items"], results[0]
    assert ward.server.payments() == payments + 1 and ward.server.postings() > postings

    for client in (ward.app_client, ward.terminal("T_SHOTEN_1")):
        assert_refused(ward, lambda client=client: client.post("/v1/quotes", json=body), 422, "invalid_request")
        assert client.post("/v1/quotes", json=one).status_code == 200


# -- each limit at its maximum and one past it ----------------------------------------


def test_a_batch_at_its_limit_is_answered_and_one_past_it_is_batch_too_large(ward: Ward) -> None:
    """1,000 items are answered item by item (here each refused for itself: none has a key, so
    nothing is posted); 1,001 are 422 `batch_too_large`, the catalog's code for it (it was the
    generic `invalid_request`), and none of them is looked at."""
    terminal = ward.terminal("T_SHOTEN_1")
    item = purchase("T_SHOTEN_1", "W_BATCH_MAX", 1000)
    at_max = [item] * limits.BATCH_TRANSACTIONS_MAX
    r = terminal.post("/v1/transactions/batch", json={"transactions": at_max})
    assert r.status_code == 200, r.text
    assert {x["body"]["code"] for x in r.json()["results"]} == {"idempotency_key_missing"}
    assert len(r.json()["results"]) == limits.BATCH_TRANSACTIONS_MAX
    past = [{**item, "idempotency_key": uuid.uuid4().hex} for _ in range(limits.BATCH_TRANSACTIONS_MAX + 1)]
    send = lambda: terminal.post("/v1/transactions/batch", json={"transactions": past})  # noqa: E731
    r = assert_refused(ward, send, 422, "batch_too_large")
    assert [e["loc"] for e in r.json()["errors"]] == [["body", "transactions"]]


AT_MAX = {
    "amount_min": _with(amount=limits.AMOUNT_YEN_MIN),
    "amount_max": _with(amount=limits.AMOUNT_YEN_MAX),
    "items_max": _with(items=_items(limits.ITEMS_PER_TRANSACTION_MAX)),
    "tags_per_item_max": _with(items=_items(1, tags_each=limits.TAGS_PER_ITEM_MAX)),
    "tag_length_max": _with(items=_items(1, tag="t" * 32)),
    "wallet_id_length_max": _with(wallet_id="W" * 64),
    "wallet_id_charset": _with(wallet_id="W_abc-XYZ_09"),
}
PAST_MAX = {
    "amount_below_min": _with(amount=limits.AMOUNT_YEN_MIN - 1),
    "amount_above_max": _with(amount=limits.AMOUNT_YEN_MAX + 1),
    "points_used_above_amount": _with(points_used=1001),
    "items_above_max": _with(items=_items(limits.ITEMS_PER_TRANSACTION_MAX + 1)),
    "tags_per_item_above_max": _with(items=_items(1, tags_each=limits.TAGS_PER_ITEM_MAX + 1)),
    "tag_length_above_max": _with(items=_items(1, tag="t" * 33)),
    "tag_charset": _with(items=_items(1, tag="Ethical")),
    "wallet_id_length_above_max": _with(wallet_id="W" * 65),
    "wallet_id_charset": _with(wallet_id="W.1"),
    "original_id_length_above_max": {
        "type": "refund",
        "original_id": "t" * 65,
        "amount": 1,
        "occurred_at": "2026-11-29T10:00:00+09:00",
    },
}


@pytest.mark.parametrize("body", AT_MAX.values(), ids=AT_MAX.keys())
def test_limits_at_max_are_accepted(ward: Ward, body: dict) -> None:
    body = {**body, "occurred_at": now_tokyo(-60)}
    assert_accepted(ward.post("T_SHOTEN_1", body))


@pytest.mark.parametrize("body", PAST_MAX.values(), ids=PAST_MAX.keys())
def test_limits_past_max_are_refused(ward: Ward, body: dict) -> None:
    body = {**body, "occurred_at": now_tokyo(-60)}
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 422, "invalid_request")


def test_points_used_at_amount_is_accepted(ward: Ward, funded_wallet: str) -> None:
    answer = assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", funded_wallet, 1000, points_used=1000)))
    assert answer["points_used"] == 1000 and answer["points_awarded"] == 0


def test_redeeming_more_than_available_is_declined(ward: Ward) -> None:
    assert_refused(
        ward,
        lambda: ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_EMPTY", 1000, points_used=1)),
        422,
        "insufficient_points",
    )


@pytest.mark.parametrize(
    "offset_s, accepted",
    [
        (limits.OCCURRED_AT_MAX_FUTURE_S - 60, True),
        (limits.OCCURRED_AT_MAX_FUTURE_S + 60, False),
        (-(SEVEN_DAYS_S - 3600), True),
        (-(SEVEN_DAYS_S + 3600), False),
        (-(100 * 365 * 86_400), False),
    ],
    ids=["future_within", "future_beyond", "past_within", "past_beyond", "past_a_century"],
)
def test_occurred_at_window(ward: Ward, offset_s: int, accepted: bool) -> None:
    body = purchase("T_SHOTEN_1", "W_CLOCK", 500, occurred_at=now_tokyo(offset_s))
    if accepted:
        assert_accepted(ward.post("T_SHOTEN_1", body))
    else:
        assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 422, "occurred_at_out_of_range")


@pytest.mark.parametrize(
    "key, accepted",
    [
        ("k" * limits.IDEMPOTENCY_KEY_LENGTH_MAX, True),
        ("k" * (limits.IDEMPOTENCY_KEY_LENGTH_MAX + 1), False),
        ("", False),
        ("caf\xe9".encode("latin-1"), False),
        ("~ !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}", True),
    ],
    ids=["length_max", "length_above_max", "empty", "not_ascii", "printable_punctuation"],
)
def test_idempotency_key_limits(ward: Ward, key, accepted: bool) -> None:
    body = purchase("T_SHOTEN_1", "W_KEYS", 500)

    def send() -> httpx.Response:
        return ward.terminal("T_SHOTEN_1").post("/v1/transactions", json=body, headers={"Idempotency-Key": key})

    if accepted:
        assert_accepted(send())
    else:
        assert_refused(ward, send, 400, "idempotency_key_invalid")


def _padded(ward: Ward, size: int) -> bytes:
    """A valid purchase with its receipt, padded with insignificant whitespace to exactly `size` bytes."""
    body = json.dumps(ward.server.payment_app.sign_purchase(purchase("T_SHOTEN_1", "W_BIG", 500))).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_body_at_max_is_accepted(ward: Ward) -> None:
    assert_accepted(ward.post("T_SHOTEN_1", _padded(ward, limits.BODY_BYTES_MAX)))


def test_body_above_max_is_refused(ward: Ward) -> None:
    assert_refused(
        ward, lambda: ward.post("T_SHOTEN_1", _padded(ward, limits.BODY_BYTES_MAX + 1)), 413, "body_too_large"
    )


def test_body_above_max_without_content_length_is_refused(ward: Ward) -> None:
    """Chunked transfer carries no Content-Length; the limit must hold all the same."""
    raw = _padded(ward, limits.BODY_BYTES_MAX + 1)

    def send() -> httpx.Response:
        chunks = (raw[i : i + 65536] for i in range(0, len(raw), 65536))
        return ward.terminal("T_SHOTEN_1").post(
            "/v1/transactions",
            content=chunks,
            headers={"Idempotency-Key": "chunked-too-large", "Content-Type": "application/json"},
        )

    assert_refused(ward, send, 413, "body_too_large")


# -- unknown references, refunds ------------------------------------------------------


def test_unknown_original_is_404(ward: Ward) -> None:
    body = refund("tx_" + "0" * 24, 100)
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", body), 404, "original_not_found")


def test_a_refund_is_not_an_original(ward: Ward) -> None:
    bought = assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_REFREF", 1000)))
    refunded = assert_accepted(ward.post("T_SHOTEN_1", refund(bought["id"], 100)))
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", refund(refunded["id"], 1)), 404, "original_not_found")


def test_unknown_merchant_or_terminal_in_a_purchase_is_forbidden(ward: Ward) -> None:
    # A terminal key posts only for its own terminal and merchant; an unknown one is not its own.
    for changes in (
        {"merchant_id": "M_NOPE"},
        {"terminal_id": "T_NOPE"},
        {"merchant_id": "M_CONV"},
        {"terminal_id": "T_SHOTEN_2"},
    ):
        body = {**purchase("T_SHOTEN_1", "W_FOREIGN", 500), **changes}
        assert_refused(ward, lambda body=body: ward.post("T_SHOTEN_1", body), 403, "forbidden")


def test_terminal_of_an_unknown_merchant_is_refused(ward: Ward) -> None:
    with ward.server.client(ward.server.admin_key) as admin:
        r = admin.post("/v1/terminals", json={"id": "T_ORPHAN", "merchant_id": "M_NOPE"})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_merchant"), r.text


@pytest.mark.parametrize(
    "args, code",
    [
        (("--role", "terminal", "--terminal", "T_NOPE"), "unknown_terminal"),
        (("--role", "merchant", "--merchant", "M_NOPE"), "unknown_merchant"),
        (("--role", "terminal"), "invalid_request"),
        (("--role", "admin", "--merchant", "M_SHOTEN"), "invalid_request"),
        (("--role", "merchant", "--merchant", "M_SHOTEN", "--terminal", "T_SHOTEN_1"), "invalid_request"),
        (("--role", "terminal", "--terminal", "T_SHOTEN_1", "--merchant", "M_CONV"), "invalid_request"),
    ],
    ids=[
        "unknown_terminal",
        "unknown_merchant",
        "terminal_without_id",
        "admin_with_merchant",
        "merchant_with_terminal",
        "terminal_at_another_merchant",
    ],
)
def test_cli_refuses_keys_for_unknown_scopes(ward: Ward, args: tuple[str, ...], code: str) -> None:
    done = ward.server.cli("keys", "create", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert code in done.stderr


def test_a_key_is_never_made_with_a_scope_its_role_drops(ward: Ward) -> None:
    """A scope the role does not take is refused, never silently dropped: an admin key asked for a
    merchant would be an unscoped admin key handed out as that merchant's. Nothing is made."""
    with ward.server.client(ward.server.admin_key) as admin:
        before = admin.get("/v1/keys").json()
        for body in (
            {"role": "admin", "merchant_id": "M_SHOTEN"},
            {"role": "finance", "terminal_id": "T_SHOTEN_1"},
            {"role": "app", "merchant_id": "M_SHOTEN"},
            {"role": "merchant", "merchant_id": "M_SHOTEN", "terminal_id": "T_SHOTEN_1"},
            {"role": "terminal", "terminal_id": "T_SHOTEN_1", "merchant_id": "M_CONV"},
        ):
            r = admin.post("/v1/keys", json=body)
            assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), (body, r.text)
        assert admin.get("/v1/keys").json() == before
        made = admin.post("/v1/keys", json={"role": "terminal", "terminal_id": "T_SHOTEN_1", "merchant_id": "M_SHOTEN"})
        assert made.status_code == 201 and made.json()["merchant_id"] == "M_SHOTEN", made.text


def test_refund_at_another_merchant_is_refused(ward: Ward) -> None:
    bought = assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_ELSEWHERE", 1000)))
    assert_refused(ward, lambda: ward.post("T_CONV", refund(bought["id"], 100)), 422, "refund_merchant_mismatch")
    # Another terminal of the same merchant may refund it.
    assert_accepted(ward.post("T_SHOTEN_2", refund(bought["id"], 100)))


def test_refund_above_the_original_is_refused(ward: Ward) -> None:
    bought = assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_OVER", 1000)))
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", refund(bought["id"], 1001)), 422, "refund_exceeds_original")
    assert_accepted(ward.post("T_SHOTEN_1", refund(bought["id"], 600)))
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", refund(bought["id"], 401)), 422, "refund_exceeds_original")
    assert_accepted(ward.post("T_SHOTEN_1", refund(bought["id"], 400)))
    assert_refused(ward, lambda: ward.post("T_SHOTEN_1", refund(bought["id"], 1)), 422, "refund_exceeds_original")


# -- credentials and scopes -----------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer sp_terminal_nope", "Basic dXNlcjpwYXNz", "bearer x"],
    ids=["none", "empty", "bearer_alone", "unknown_key", "basic", "lowercase_scheme"],
)
def test_missing_or_invalid_bearer_is_401(ward: Ward, authorization: str | None) -> None:
    headers = {"Idempotency-Key": "auth"} | ({"Authorization": authorization} if authorization is not None else {})

    def send() -> httpx.Response:
        with httpx.Client(base_url=ward.server.base_url) as c:
            return c.post("/v1/transactions", json=purchase("T_SHOTEN_1", "W_AUTH", 500), headers=headers)

    assert_refused(ward, send, 401, "unauthenticated")


@pytest.mark.parametrize("role", ["admin", "finance", "merchant"])
def test_only_terminal_keys_post_transactions(ward: Ward, role: str) -> None:
    key = ward.key(role, "M_SHOTEN" if role == "merchant" else None)

    def send() -> httpx.Response:
        with ward.server.client(key) as c:
            return c.post(
                "/v1/transactions",
                json=purchase("T_SHOTEN_1", "W_ROLE", 500),
                headers={"Idempotency-Key": f"role-{role}"},
            )

    assert_refused(ward, send, 403, "forbidden")


@pytest.mark.parametrize("path", ["/v1/merchants", "/v1/campaigns", "/v1/terminals"])
def test_a_terminal_key_cannot_configure(ward: Ward, path: str) -> None:
    r = ward.terminal("T_SHOTEN_1").post(path, json={"id": "X_1", "merchant_id": "M_SHOTEN"})
    assert (r.status_code, r.json()["code"]) == (403, "forbidden"), r.text


def test_keys_read_only_their_own_scope(ward: Ward) -> None:
    bought = assert_accepted(ward.post("T_SHOTEN_1", purchase("T_SHOTEN_1", "W_SCOPED", 1000)))
    path = f"/v1/transactions/{bought['id']}"
    expect = {
        ward.terminal_key("T_SHOTEN_1"): 200,
        ward.terminal_key("T_SHOTEN_2"): 403,  # same merchant, another terminal
        ward.terminal_key("T_CONV"): 403,
        ward.key("merchant", "M_SHOTEN"): 200,
        ward.key("merchant", "M_CONV"): 403,  # another merchant's key
        ward.finance_key: 200,
        ward.server.admin_key: 403,
    }
    for key, status in expect.items():
        with ward.server.client(key) as c:
            r = c.get(path)
        assert r.status_code == status, (key.split("_")[1], r.text)
        if status == 200:
            assert r.json()["id"] == bought["id"]
        else:
            assert r.json()["code"] == "forbidden"
    with ward.server.client(ward.finance_key) as finance:
        r = finance.get("/v1/transactions/tx_unknown")
        assert (r.status_code, r.json()["code"]) == (404, "not_found")
        r = finance.get("/v1/wallets/W.bad/points")
        assert (r.status_code, r.json()["code"]) == (422, "invalid_request")
    # Wallets are the payment app's and finance's to read: not a merchant's, an admin's or a terminal's
    # (a terminal key alone must not learn what a resident holds).
    for key in (ward.key("merchant", "M_SHOTEN"), ward.server.admin_key, ward.terminal_key("T_SHOTEN_1")):
        with ward.server.client(key) as c:
            r = c.get("/v1/wallets/W_SCOPED/points")
        assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    assert ward.app_client.get("/v1/wallets/W_SCOPED/points").status_code == 200


# -- nothing a client sends yields a 500 ----------------------------------------------

GARBAGE = [
    b"\x00" * 64,
    b"\xff" * 64,
    b'{"type": "purchase"}',
    b'{"type": "refund", "original_id": null}',
    b'{"type": ["purchase"]}',
    json.dumps(_with(items=[{"amount": -5, "tags": []}, {"amount": 1005, "tags": []}])).encode(),
    json.dumps(_with(items=[{"amount": 1000, "tags": [None]}])).encode(),
    json.dumps(_with(occurred_at="9999-12-31T23:59:59+14:00")).encode(),
    json.dumps(_with(occurred_at="0001-01-01T00:00:00-14:00")).encode(),
    json.dumps(_with(occurred_at="2026-11-29T10:00:00+25:00")).encode(),
    json.dumps(_with(points_used=10**30)).encode(),
    json.dumps(_with(wallet_id="ウォレット")).encode(),
    json.dumps({"type": "refund", "original_id": "x", "amount": 1, "occurred_at": 0}).encode(),
    b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    b'"' + b"a" * 500_000 + b'"',
]


def test_no_input_yields_a_500(ward: Ward) -> None:
    postings = ward.server.postings()
    statuses = []
    for i, raw in enumerate(GARBAGE):
        r = ward.post("T_SHOTEN_1", raw, key=f"garbage-{i}")
        statuses.append(r.status_code)
        assert 400 <= r.status_code < 500, (raw[:80], r.status_code, r.text[:300])
        assert r.headers["content-type"] == PROBLEM_JSON
    for method, path in [
        ("PUT", "/v1/transactions"),
        ("GET", "/v1/nothing"),
        ("DELETE", "/v1/merchants/M_SHOTEN"),
        ("GET", "/v1/transactions/" + "x" * 5000),
    ]:
        r = ward.terminal("T_SHOTEN_1").request(method, path)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
        assert r.headers["content-type"] == PROBLEM_JSON
    assert ward.server.postings() == postings
