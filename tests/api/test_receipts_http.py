"""Payment receipts (SPEC §9.1) over HTTP, on SQLite and PostgreSQL.

A terminal key alone can no longer spend a resident's points, invent purchases
that become payouts, or post one sale twice under two idempotency keys: each of
those needs the payment app's receipt, which only the app can sign.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid

import httpx
import pytest
from joserfc import jws
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engine import receipts, sealing
from engine.receipts import PaymentApp
from engine.store.apps import CACHE_TTL_S
from engine.store.db import make_engine
from tests.loop import answered_while_waiting
from tests.receipts import TEST_IAT, payment_app
from tests.server import ServerProcess, register_payment_app
from tests.ward import Ward, purchase, refund


def _post(ward: Ward, terminal_id: str, body: dict, key: str | None = None) -> httpx.Response:
    """POST exactly `body` (no receipt added) with the terminal's key."""
    with ward.server.client(ward.terminal_key(terminal_id)) as c:
        return c.post("/v1/transactions", json=body, headers={"Idempotency-Key": key or uuid.uuid4().hex})


def _code(r: httpx.Response) -> tuple[int, str | None]:
    return r.status_code, r.json().get("code")


@pytest.fixture(scope="module")
def app(ward: Ward) -> PaymentApp:
    return ward.server.payment_app


def _earn(ward: Ward, app: PaymentApp, wallet: str, amount: int = 5000) -> dict:
    """A purchase at the 商店街 shop (20% + 5% back, immediate): the wallet has points to spend."""
    r = _post(ward, "T_SHOTEN_1", app.sign_purchase(purchase("T_SHOTEN_1", wallet, amount)))
    assert r.status_code == 201, r.text
    return r.json()


def _unchanged(ward: Ward):
    before = (ward.server.payments(), ward.server.postings())
    return lambda: (ward.server.payments(), ward.server.postings()) == before


# -- the findings: what a terminal key alone could do ---------------------------------


def test_a_terminal_cannot_spend_points_without_the_apps_receipt(ward: Ward, app: PaymentApp) -> None:
    earned = _earn(ward, app, "W_VICTIM")
    assert earned["points_awarded"] >= 400
    unchanged = _unchanged(ward)
    # Another merchant's terminal tries to spend 400 of them: with no receipt, a receipt for another
    # payment, a receipt it signed itself, a receipt whose points differ.
    spend = purchase("T_CONV", "W_VICTIM", 400, points_used=400)
    assert _code(_post(ward, "T_CONV", spend)) == (422, "receipt_required")
    genuine_elsewhere = app.sign_purchase(purchase("T_CONV", "W_OTHER", 400))
    assert _code(_post(ward, "T_CONV", {**spend, "receipt": genuine_elsewhere["receipt"]})) == (422, "receipt_mismatch")
    forged = PaymentApp(app.app_id, receipts.new_secret()).sign_purchase(spend)
    assert _code(_post(ward, "T_CONV", forged)) == (422, "receipt_invalid")
    no_points = app.sign_purchase(purchase("T_CONV", "W_VICTIM", 400, points_used=0))
    assert _code(_post(ward, "T_CONV", {**spend, "receipt": no_points["receipt"]})) == (422, "receipt_mismatch")
    assert unchanged()
    points = ward.app_client.get("/v1/wallets/W_VICTIM/points").json()
    assert points["available"] == earned["points_awarded"]


def test_invented_purchases_never_reach_the_ledger(ward: Ward, app: PaymentApp) -> None:
    """Purchases for wallets the app never charged cannot be posted, so they cannot settle into payouts."""
    unchanged = _unchanged(ward)
    invented = [purchase("T_LARGE", f"W_INVENTED_{i}", 90_000) for i in range(5)]
    with ward.server.client(ward.terminal_key("T_LARGE")) as c:
        r = c.post(
            "/v1/transactions/batch",
            json={"transactions": [{**b, "idempotency_key": f"inv-{i}"} for i, b in enumerate(invented)]},
        )
    assert r.status_code == 200
    assert [(x["status"], x["body"]["code"]) for x in r.json()["results"]] == [(422, "receipt_required")] * 5
    assert unchanged()


def test_one_sale_cannot_be_posted_twice_under_two_keys(ward: Ward, app: PaymentApp) -> None:
    body = app.sign_purchase(purchase("T_SHOTEN_1", "W_TWICE", 1200), jti="pay_twice_1")
    first = _post(ward, "T_SHOTEN_1", body, key="twice-a")
    assert first.status_code == 201, first.text
    unchanged = _unchanged(ward)
    # The same receipt under another key, from the same or another terminal of the shop.
    second = _post(ward, "T_SHOTEN_1", body, key="twice-b")
    assert _code(second) == (409, "receipt_already_used")
    # The receipt does not name the terminal: from the shop's other terminal it is the same sale.
    assert _code(_post(ward, "T_SHOTEN_2", {**body, "terminal_id": "T_SHOTEN_2"}, key="twice-c")) == (
        409,
        "receipt_already_used",
    )
    # A decline is remembered and replayed like other declines.
    again = _post(ward, "T_SHOTEN_1", body, key="twice-b")
    assert _code(again) == (409, "receipt_already_used") and again.headers["Idempotent-Replayed"] == "true"
    assert unchanged()


# -- the checks of §9.1, one by one ---------------------------------------------------


def _token(secret: str, header: dict | list, claims) -> str:
    """A compact JWS made by hand (HMAC-SHA256 over header.payload), so headers a JOSE library
    would refuse to write can be sent too."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    signing_input = b64(json.dumps(header).encode()) + "." + b64(payload)
    mac = hmac.new(receipts.decode_secret(secret), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


@pytest.mark.parametrize(
    "case",
    [
        "garbage",
        "alg_none",
        "unknown_app",
        "wrong_kid_header",
        "header_a_list",
        "extra_header",
        "claims_not_json",
        "claims_missing",
        "claims_extra",
        "jti_pattern",
        "jti_newline",
        "iat_future",
        "iat_string",
        "amount_string",
    ],
)
def test_malformed_receipts_are_invalid_and_not_remembered(ward: Ward, app: PaymentApp, case: str) -> None:
    body = purchase("T_SHOTEN_1", "W_MALFORMED_RECEIPT", 700)
    claims = receipts.purchase_claims(body, "pay_" + uuid.uuid4().hex, TEST_IAT)
    header = {"alg": "HS256", "kid": app.app_id}
    token = {
        "garbage": lambda: "not.a.jws",
        "alg_none": lambda: (
            "eyJhbGciOiJub25lIiwia2lkIjoiU0VUQVBBWV9URVNUX0FQUCJ9."
            + jws.extract_compact(app.sign_purchase(body)["receipt"].encode()).segments["payload"].decode()
            + "."
        ),
        "unknown_app": lambda: _token(app.secret, {**header, "kid": "NO_SUCH_APP"}, claims),
        "wrong_kid_header": lambda: _token(app.secret, {"alg": "HS256", "kid": 7}, claims),
        "extra_header": lambda: _token(app.secret, {**header, "typ": "JWT"}, claims),
        "header_a_list": lambda: _token(app.secret, ["alg", "kid"], claims),  # answered 500 before 2026-12-04
        "claims_not_json": lambda: _token(app.secret, header, b"\xff\xfe"),
        "claims_missing": lambda: _token(app.secret, header, {k: v for k, v in claims.items() if k != "iat"}),
        "claims_extra": lambda: _token(app.secret, header, {**claims, "bonus": 1}),
        "jti_pattern": lambda: _token(app.secret, header, {**claims, "jti": "pay/1"}),
        "jti_newline": lambda: _token(app.secret, header, {**claims, "jti": "pay_1\n"}),
        "iat_future": lambda: _token(app.secret, header, {**claims, "iat": int(time.time()) + 3600}),
        "iat_string": lambda: _token(app.secret, header, {**claims, "iat": str(TEST_IAT)}),
        "amount_string": lambda: _token(app.secret, header, {**claims, "amount": "700"}),
    }[case]()
    unchanged = _unchanged(ward)
    key = f"malformed-{case}-{uuid.uuid4().hex[:6]}"
    r = _post(ward, "T_SHOTEN_1", {**body, "receipt": token}, key=key)
    expected = "receipt_mismatch" if case == "amount_string" else "receipt_invalid"
    assert _code(r) == (422, expected), r.text
    assert unchanged()
    # Not remembered: the same idempotency key with a good receipt is accepted.
    assert _post(ward, "T_SHOTEN_1", app.sign_purchase(body), key=key).status_code == 201


@pytest.mark.parametrize(
    "claim, value",
    [
        ("wallet_id", "W_SOMEONE_ELSE"),
        ("merchant_id", "M_CONV"),
        ("amount", 701),
        ("points_used", 1),
        ("typ", "refund"),
    ],
)
def test_a_claim_that_differs_from_the_body_is_a_mismatch(ward: Ward, app: PaymentApp, claim: str, value) -> None:
    body = purchase("T_SHOTEN_1", "W_MISMATCH", 700)
    claims = receipts.purchase_claims(body, "pay_" + uuid.uuid4().hex, TEST_IAT)
    if claim == "typ":
        claims = receipts.refund_claims({"amount": 700}, claims["jti"], "pay_x", TEST_IAT)
    else:
        claims[claim] = value
    token = receipts.sign(app.app_id, app.secret, claims)
    assert _code(_post(ward, "T_SHOTEN_1", {**body, "receipt": token})) == (422, "receipt_mismatch")


def test_a_declined_transaction_does_not_use_up_its_receipt(ward: Ward, app: PaymentApp) -> None:
    wallet = "W_DECLINED_RECEIPT"
    greedy = app.sign_purchase(purchase("T_SHOTEN_1", wallet, 1000, points_used=500), jti="pay_retry_same")
    assert _code(_post(ward, "T_SHOTEN_1", greedy)) == (422, "insufficient_points")
    # The app charges the resident in coins instead, under the same payment id.
    paid = app.sign_purchase(purchase("T_SHOTEN_1", wallet, 1000), jti="pay_retry_same")
    assert _post(ward, "T_SHOTEN_1", paid).status_code == 201


def test_refund_receipts_name_their_purchase(ward: Ward, app: PaymentApp) -> None:
    bought = _post(
        ward, "T_SHOTEN_1", app.sign_purchase(purchase("T_SHOTEN_1", "W_REFUND_R", 3000), jti="pay_for_refund")
    )
    assert bought.status_code == 201
    pid = bought.json()["id"]
    body = refund(pid, 1000)
    unchanged = _unchanged(ward)
    assert _code(_post(ward, "T_SHOTEN_1", body)) == (422, "receipt_required")
    wrong = app.sign_refund(body, original_jti="pay_some_other")
    assert _code(_post(ward, "T_SHOTEN_1", wrong)) == (422, "receipt_mismatch")
    other_app = register_payment_app(ward.server.env, "OTHER_APP", in_process=ward.server.cli_in_process)
    time.sleep(CACHE_TTL_S + 0.5)  # each process learns of a new app within its cache's lifetime
    assert _code(_post(ward, "T_SHOTEN_1", other_app.sign_refund(body, original_jti="pay_for_refund"))) == (
        422,
        "receipt_mismatch",
    )
    too_much = app.sign_refund({**body, "amount": 999}, original_jti="pay_for_refund")
    assert _code(_post(ward, "T_SHOTEN_1", {**body, "receipt": too_much["receipt"]})) == (422, "receipt_mismatch")
    assert unchanged()
    good = app.sign_refund(body, original_jti="pay_for_refund", jti="ref_once")
    assert _post(ward, "T_SHOTEN_1", good).status_code == 201
    again = app.sign_refund(refund(pid, 500), original_jti="pay_for_refund", jti="ref_once")
    assert _code(_post(ward, "T_SHOTEN_1", again)) == (409, "receipt_already_used")


def test_batch_items_answer_for_their_own_receipts(ward: Ward, app: PaymentApp) -> None:
    shared = app.sign_purchase(purchase("T_SHOTEN_1", "W_BATCH_R", 800), jti="pay_batch_shared")
    items = [
        {**app.sign_purchase(purchase("T_SHOTEN_1", "W_BATCH_R", 500)), "idempotency_key": "br-1"},
        {**purchase("T_SHOTEN_1", "W_BATCH_R", 600), "idempotency_key": "br-2"},  # no receipt
        {**shared, "idempotency_key": "br-3"},
        {**shared, "idempotency_key": "br-4"},  # the same receipt again in the same batch
        {**app.sign_purchase(purchase("T_SHOTEN_1", "W_BATCH_R", 900)), "idempotency_key": "br-5"},
    ]
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as c:
        r = c.post("/v1/transactions/batch", json={"transactions": items})
    assert r.status_code == 200, r.text
    got = [(x["status"], x["body"].get("code")) for x in r.json()["results"]]
    assert got == [(201, None), (422, "receipt_required"), (201, None), (409, "receipt_already_used"), (201, None)]


def test_rotation_keeps_the_old_secret_and_revocation_ends_every_secret(ward: Ward) -> None:
    env, in_process = ward.server.env, ward.server.cli_in_process
    old = register_payment_app(env, "ROTATING_APP", in_process=in_process)
    from tests.server import run_cli

    rotated = run_cli(env, "apps", "rotate", "ROTATING_APP", in_process=in_process)
    assert rotated.returncode == 0
    new = payment_app("ROTATING_APP", rotated.stdout.strip())
    time.sleep(CACHE_TTL_S + 0.5)
    assert new.secret != old.secret
    for signer in (old, new):
        assert _post(ward, "T_SHOTEN_1", signer.sign_purchase(purchase("T_SHOTEN_1", "W_ROT", 300))).status_code == 201
    listing = run_cli(env, "apps", "list", in_process=in_process)
    assert old.secret not in listing.stdout and new.secret not in listing.stdout
    assert {"id": "ROTATING_APP", "live_secrets": 2}.items() <= json.loads(
        next(line for line in listing.stdout.splitlines() if "ROTATING_APP" in line)
    ).items()
    assert run_cli(env, "apps", "revoke", "ROTATING_APP", in_process=in_process).returncode == 0
    deadline = time.monotonic() + 5
    while True:
        r = _post(ward, "T_SHOTEN_1", new.sign_purchase(purchase("T_SHOTEN_1", "W_ROT", 300)))
        if r.status_code == 422:
            break
        assert time.monotonic() < deadline, "a revoked app's receipts were still accepted after 5 s"
        time.sleep(0.2)
    assert _code(r) == (422, "receipt_invalid")
    assert old.secret not in ward.server.log() and new.secret not in ward.server.log()


def test_a_secret_sealed_with_another_data_key_is_refused_and_would_not_stop_the_others(
    ward: Ward, app: PaymentApp
) -> None:
    """`setapay apps rotate` run with another data key than the API's (or none, which makes a
    local one) sealed a secret no API process could open, and every app's receipts were answered
    503 from then on, whatever was rotated after (helper-93). The CLI now refuses a key that opens
    none of the secrets sealed already, changing nothing; and a secret that does not open (one
    sealed so before) is left out, the app's other secrets and the other apps still verifying."""
    from tests.server import run_cli

    env, in_process = ward.server.env, ward.server.cli_in_process
    keyed = register_payment_app(env, "KEYED_APP", in_process=in_process)
    other_key = sealing.generate_key_b64()
    for command in (("apps", "rotate", "KEYED_APP"), ("apps", "add", "STRAY_APP")):
        refused = run_cli({**env, "SETAPAY_DATA_KEY_B64": other_key}, *command, in_process=in_process)
        assert refused.returncode == 2 and "data key" in refused.stderr, refused.stderr
        assert refused.stdout == ""  # no secret printed
    listing = run_cli(env, "apps", "list", in_process=in_process).stdout
    assert "STRAY_APP" not in listing
    assert {"secrets": 1, "live_secrets": 1}.items() <= json.loads(
        next(line for line in listing.splitlines() if "KEYED_APP" in line)
    ).items()

    # A secret sealed with another key before the CLI checked: in the database behind its back.
    engine = make_engine(env["SETAPAY_DATABASE_URL"])
    try:
        with engine.begin() as c:
            c.execute(
                text(
                    "INSERT INTO app_secret (app_id, position, secret_sealed, created_at_us, valid_until_us)"
                    " VALUES ('KEYED_APP', 2, :sealed, 0, NULL)"
                ),
                {
                    "sealed": sealing.seal(
                        sealing.load_key(other_key),
                        receipts.new_secret().encode(),
                        b"setapay:app-receipt-secret:KEYED_APP",
                    )
                },
            )
    finally:
        engine.dispose()
    time.sleep(CACHE_TTL_S + 0.5)
    for signer, wallet in ((keyed, "W_KEYED"), (app, "W_OTHER_APP")):
        r = _post(ward, "T_SHOTEN_1", signer.sign_purchase(purchase("T_SHOTEN_1", wallet, 300)))
        assert r.status_code == 201, r.text
    assert "KEYED_APP" in ward.server.log()  # the secret left out is named, by its app

    # An app none of whose secrets opens here answers 503, to be retried, not a final 422
    # (helper-98): its secrets are there, this process cannot read them.
    lost = payment_app("LOST_APP", receipts.new_secret())
    engine = make_engine(env["SETAPAY_DATABASE_URL"])
    try:
        with engine.begin() as c:
            c.execute(text("INSERT INTO payment_app (id, created_at_us) VALUES ('LOST_APP', 0)"))
            c.execute(
                text(
                    "INSERT INTO app_secret (app_id, position, secret_sealed, created_at_us, valid_until_us)"
                    " VALUES ('LOST_APP', 1, :sealed, 0, NULL)"
                ),
                {
                    "sealed": sealing.seal(
                        sealing.load_key(other_key), lost.secret.encode(), b"setapay:app-receipt-secret:LOST_APP"
                    )
                },
            )
    finally:
        engine.dispose()
    time.sleep(CACHE_TTL_S + 0.5)
    r = _post(ward, "T_SHOTEN_1", lost.sign_purchase(purchase("T_SHOTEN_1", "W_LOST", 300)))
    assert _code(r) == (503, "service_unavailable"), r.text
    for app_id in ("KEYED_APP", "LOST_APP"):
        assert run_cli(env, "apps", "revoke", app_id, in_process=in_process).returncode == 0


def test_the_database_accepts_a_receipt_once_per_app(ward: Ward, app: PaymentApp) -> None:
    """The unique constraint holds whatever code writes payments."""
    body = app.sign_purchase(purchase("T_SHOTEN_1", "W_UNIQUE", 400), jti="pay_unique")
    answer = _post(ward, "T_SHOTEN_1", body)
    assert answer.status_code == 201
    with ward.server.db.connect() as connection, pytest.raises(IntegrityError):
        connection.execute(
            text(
                "INSERT INTO payment (id, sequence, type, terminal_id, merchant_id, wallet_id, occurred_at_us, "
                "accepted_at_us, amount, points_used, refunded_amount, request_json, response_json, hash, "
                "receipt_app_id, receipt_jti) SELECT 'tx_copy', sequence + 1000000, type, terminal_id, merchant_id, "
                "wallet_id, occurred_at_us, accepted_at_us, amount, points_used, 0, request_json, response_json, hash, "
                "receipt_app_id, receipt_jti FROM payment WHERE id = :id"
            ),
            {"id": answer.json()["id"]},
        )


# -- across processes ---------------------------------------------------------------------


@pytest.mark.postgres
def test_a_receipt_is_accepted_once_across_two_processes(databases, tmp_path) -> None:
    """Two servers on one PostgreSQL database, the same receipt sent to both at once under many keys."""
    url = databases.create("postgresql")
    with ServerProcess(url, tmp_path, name="a") as a, ServerProcess(url, tmp_path, name="b") as b:
        admin = a.create_key("admin")
        with a.client(admin) as c:
            assert (
                c.post("/v1/merchants", json={"id": "M1", "name": "店", "merchant_class": "small"}).status_code == 201
            )
            for t in ("T1", "T2"):
                assert c.post("/v1/terminals", json={"id": t, "merchant_id": "M1"}).status_code == 201
        keys = {"T1": a.create_key("terminal", terminal_id="T1"), "T2": a.create_key("terminal", terminal_id="T2")}
        app = a.payment_app
        body = app.sign_purchase(purchase_at("T1", "W1", 1000), jti="pay_race")
        answers: list[int] = []
        lock = threading.Lock()

        def send(server: ServerProcess, terminal: str, n: int) -> None:
            with server.client(keys[terminal]) as c:
                r = c.post("/v1/transactions", json=body, headers={"Idempotency-Key": f"race-{terminal}-{n}"})
            with lock:
                answers.append(r.status_code if r.status_code != 422 else r.json()["code"])

        threads = [threading.Thread(target=send, args=(s, "T1", n)) for n, s in enumerate([a, b] * 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers, key=str) == sorted([201] + [409] * 15, key=str), answers
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                n = connection.execute(text("SELECT count(*) FROM payment WHERE receipt_jti = 'pay_race'")).scalar_one()
        finally:
            engine.dispose()
        assert n == 1


def purchase_at(terminal_id: str, wallet_id: str, amount: int) -> dict:
    from tests.ward import now_tokyo

    return {
        "type": "purchase",
        "wallet_id": wallet_id,
        "merchant_id": "M1",
        "terminal_id": terminal_id,
        "occurred_at": now_tokyo(-60),
        "amount": amount,
        "points_used": 0,
    }


def test_a_batch_of_one_receipt_many_times_is_answered_whole(ward: Ward, app: PaymentApp) -> None:
    """1,000 items carrying one receipt: the first accepted, every other one `receipt_already_used`,
    in one transaction and one answer (no 500, nothing half-written). Copies of a receipt whose
    first use is declined are each rated in turn, one transaction each, for RECEIPT_ROUNDS_MAX
    rounds; the copies still waiting then answer 409 `receipt_in_use`, not remembered: a retry
    decides them (one request cannot make the ledger take a transaction per copy)."""
    from engine.store.ledger import RECEIPT_ROUNDS_MAX

    rounds = RECEIPT_ROUNDS_MAX
    shared = app.sign_purchase(purchase("T_SHOTEN_1", "W_MANY", 700), jti="pay_many")
    greedy = app.sign_purchase(purchase("T_SHOTEN_1", "W_MANY_EMPTY", 700, points_used=700), jti="pay_greedy")
    items = [{**shared, "idempotency_key": f"many-{i}"} for i in range(1000)]
    items[500:520] = [{**greedy, "idempotency_key": f"greedy-{i}"} for i in range(20)]
    payments_before = ward.server.payments()
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as c:
        r = c.post("/v1/transactions/batch", json={"transactions": items})
        assert r.status_code == 200, r.text[:300]
        got = [(x["status"], x["body"].get("code")) for x in r.json()["results"]]
        again = c.post("/v1/transactions/batch", json={"transactions": items})
    assert got[0] == (201, None)
    assert got[500 : 500 + rounds] == [(422, "insufficient_points")] * rounds
    assert got[500 + rounds : 520] == [(409, "receipt_in_use")] * (20 - rounds)
    assert got[1:500] + got[520:] == [(409, "receipt_already_used")] * 979
    assert ward.server.payments() == payments_before + 1
    # The retry of the whole batch replays every answer given, and decides the next copies.
    retried = [(x["status"], x["body"].get("code"), x["replayed"]) for x in again.json()["results"]]
    assert retried[: 500 + rounds] + retried[520:] == [(s, c, True) for s, c in got[: 500 + rounds] + got[520:]]
    assert retried[500 + rounds : 520] == [(422, "insufficient_points", False)] * rounds + [
        (409, "receipt_in_use", False)
    ] * (20 - 2 * rounds)


def test_a_retry_still_replays_after_its_app_is_revoked(ward: Ward) -> None:
    """A remembered answer is final: the terminal's retry gets it even once the receipt would no
    longer pass (its app revoked), single and in a batch; a new request is refused."""
    from tests.server import run_cli

    env, in_process = ward.server.env, ward.server.cli_in_process
    leaving = register_payment_app(env, "LEAVING_APP", in_process=in_process)
    time.sleep(CACHE_TTL_S + 0.5)
    body = leaving.sign_purchase(purchase("T_SHOTEN_1", "W_LEAVING", 900))
    first = _post(ward, "T_SHOTEN_1", body, key="leaving-1")
    assert first.status_code == 201, first.text
    with ward.server.client(ward.terminal_key("T_SHOTEN_1")) as c:
        batch = {
            "transactions": [
                {**leaving.sign_purchase(purchase("T_SHOTEN_1", "W_LEAVING", 901)), "idempotency_key": "leaving-2"}
            ]
        }
        assert c.post("/v1/transactions/batch", json=batch).json()["results"][0]["status"] == 201
        assert run_cli(env, "apps", "revoke", "LEAVING_APP", in_process=in_process).returncode == 0
        time.sleep(CACHE_TTL_S + 0.5)
        again = _post(ward, "T_SHOTEN_1", body, key="leaving-1")
        assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
        assert again.json() == first.json()
        replayed = c.post("/v1/transactions/batch", json=batch).json()["results"][0]
        assert (replayed["status"], replayed["replayed"]) == (201, True)
    fresh = leaving.sign_purchase(purchase("T_SHOTEN_1", "W_LEAVING", 902))
    assert _code(_post(ward, "T_SHOTEN_1", fresh, key="leaving-3")) == (422, "receipt_invalid")


def test_a_refused_requests_look_up_of_its_answer_does_not_hold_the_event_loop(ward: Ward, app: PaymentApp) -> None:
    """A refused request (a bad receipt) looks up whether its key holds an answer to replay: a
    database read, made in a worker thread. While that read waits (the table locked by another
    session), the server still answers everything else at once; then the refusal arrives."""
    if not ward.server.database_url.startswith("postgresql"):
        pytest.skip("SQLite's readers never wait for a lock (WAL)")
    body = app.sign_purchase(purchase("T_SHOTEN_1", "W_LOOP", 500))
    body["receipt"] = body["receipt"][:-4] + "AAAA"  # the signature no longer matches
    refused = answered_while_waiting(
        ward.server.base_url, ward.server.database_url, "idempotency_key", lambda: _post(ward, "T_SHOTEN_1", body)
    )
    assert _code(refused) == (422, "receipt_invalid")
