"""SPEC §9.2 over HTTP: registering a terminal's Ed25519 key, then every request of that terminal's
key signed (RFC 9421), on SQLite and PostgreSQL, with the nonce store in the database and in Redis,
and a replayed nonce refused by a second server process on the same database."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine import http_signing
from engine.store.models import PaymentRow, SignatureNonceRow
from tests.api.conftest import Server
from tests.ward import Ward, purchase

SIGNED = "T_SHOTEN_1"  # gets a key in these tests
BEARER = "T_CONV"  # never gets one
PROBLEM_JSON = "application/problem+json"


def _admin(ward: Ward):
    return ward.server.client(ward.server.admin_key)


def register(ward: Ward, terminal_id: str, key: Ed25519PrivateKey | None):
    with _admin(ward) as admin:
        value = None if key is None else http_signing.public_key_b64(key)
        r = admin.patch(f"/v1/terminals/{terminal_id}", json={"public_key": value})
    assert r.status_code == 200, r.text
    assert r.json()["public_key"] == value
    return r.json()


@pytest.fixture
def key(ward: Ward):
    """A fresh key registered for SIGNED, removed afterwards."""
    private = Ed25519PrivateKey.generate()
    register(ward, SIGNED, private)
    try:
        yield private
    finally:
        register(ward, SIGNED, None)


def assert_problem(r, code: str, status: int = 401) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert r.json()["code"] == code, r.text


def _body(ward: Ward, wallet: str = "W_SIG", amount: int = 1100) -> bytes:
    """A purchase's exact bytes, with the payment app's receipt in it (the signature covers them)."""
    return json.dumps(ward.server.payment_app.sign_purchase(purchase(SIGNED, wallet, amount))).encode()


# -- registering a key -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value,why",
    [
        ("not base64 at all!", "base64"),
        (base64.b64encode(bytes(31)).decode(), "32 bytes"),
        (base64.b64encode(bytes(33)).decode(), "32 bytes"),
        (base64.b64encode(b"\xff" * 32).decode(), "not an Ed25519"),
        (base64.b64encode(bytes(32)).decode(), "small-order"),
        (12345, None),
    ],
)
def test_a_bad_public_key_is_422_naming_the_field(ward, value, why):
    with _admin(ward) as admin:
        r = admin.patch(f"/v1/terminals/{SIGNED}", json={"public_key": value})
        assert_problem(r, "invalid_request", 422)
        errors = r.json()["errors"]
        assert any(e["loc"][-1] == "public_key" for e in errors), errors
        if why:
            assert why in json.dumps(errors)
        assert admin.get(f"/v1/terminals/{SIGNED}").json()["public_key"] is None


def test_a_registered_key_is_shown_and_removed(ward):
    private = Ed25519PrivateKey.generate()
    public = http_signing.public_key_b64(private)
    assert register(ward, SIGNED, private) == {"id": SIGNED, "merchant_id": "M_SHOTEN", "public_key": public}
    with _admin(ward) as admin:
        listed = {t["id"]: t for t in admin.get("/v1/terminals").json()}
        assert listed[SIGNED]["public_key"] == public
        assert listed[BEARER]["public_key"] is None
        assert admin.get(f"/v1/terminals/{SIGNED}").json()["public_key"] == public
        # Moving the terminal keeps its key; null removes it.
        assert admin.patch(f"/v1/terminals/{SIGNED}", json={"merchant_id": "M_SHOTEN"}).json()["public_key"] == public
    register(ward, SIGNED, None)
    with _admin(ward) as admin:
        assert admin.get(f"/v1/terminals/{SIGNED}").json()["public_key"] is None


# -- signed requests pass --------------------------------------------------------------


def test_signed_single_post(ward, key):
    before = ward.server.payments()
    r = ward.post_signed(SIGNED, key, purchase(SIGNED, "W_SIG1", 1100))
    assert r.status_code == 201, r.text
    assert ward.server.payments() == before + 1


def test_signed_batch_post(ward, key):
    items = [{**purchase(SIGNED, "W_SIG2", 300 + i), "idempotency_key": uuid.uuid4().hex} for i in range(3)]
    r = ward.send_signed(SIGNED, key, "POST", "/v1/transactions/batch", json.dumps({"transactions": items}).encode())
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == [201, 201, 201]


def test_signed_get_with_a_query(ward, key):
    """No terminal route takes a query: one is refused (422) before the signature is looked at, its
    nonce left unused; without it the same read passes, "@query" not covered."""
    posted = ward.post_signed(SIGNED, key, purchase(SIGNED, "W_SIG3", 2200)).json()
    nonce = http_signing.new_nonce()
    r = ward.send_signed(SIGNED, key, "GET", f"/v1/transactions/{posted['id']}?view=full&n=1", nonce=nonce)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_request"), r.text
    assert r.json()["errors"][0]["loc"] == ["query", "view"]
    again = ward.send_signed(SIGNED, key, "GET", f"/v1/transactions/{posted['id']}", nonce=nonce)
    assert again.status_code == 200 and again.json()["id"] == posted["id"], again.text


def test_a_signature_covers_the_query_as_sent() -> None:
    """The verifier (`TerminalSignatures.check`) over a request with a query, as a route taking one
    would meet it: "@query" covered, exactly as sent; left out or changed, the signature fails."""
    from starlette.requests import Request

    from api.signatures import TerminalSignatures
    from engine.errors import EngineError

    private = Ed25519PrivateKey.generate()

    def checked(signed_target: str, sent_query: bytes) -> tuple[int, str]:
        headers = http_signing.sign_request(private, "T1", "GET", signed_target)
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/v1/things",
            "raw_path": b"/v1/things",
            "query_string": sent_query,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
        return TerminalSignatures.check(Request(scope), b"", "T1", private.public_key())

    created, nonce = checked("/v1/things?a=1&b=2", b"a=1&b=2")
    assert abs(created - time.time()) < 60 and nonce
    for signed, sent in (("/v1/things", b"a=1"), ("/v1/things?a=1&b=2", b"b=2&a=1"), ("/v1/things?a=1", b"")):
        with pytest.raises(EngineError) as refused:
            checked(signed, sent)
        assert refused.value.code == "signature_invalid", (signed, sent)


def test_signed_closeout(ward, key):
    body = json.dumps({"business_date": "2026-12-01", "count": 0, "total": 0}).encode()
    r = ward.send_signed(SIGNED, key, "POST", f"/v1/terminals/{SIGNED}/closeouts", body)
    assert r.status_code == 201, r.text


# -- and each failure has its code -----------------------------------------------------


def test_unsigned_requests_of_a_terminal_with_a_key_are_signature_required(ward, key):
    client = ward.terminal(SIGNED)
    assert_problem(ward.post(SIGNED, purchase(SIGNED, "W_SIG4", 1100)), "signature_required")
    assert_problem(
        client.post(
            "/v1/transactions/batch",
            json={"transactions": [{**purchase(SIGNED, "W_SIG4", 500), "idempotency_key": "b1"}]},
        ),
        "signature_required",
    )
    assert_problem(client.get("/v1/transactions/P_ANY"), "signature_required")
    assert_problem(
        client.post(f"/v1/terminals/{SIGNED}/closeouts", json={"business_date": "2026-12-01", "count": 0, "total": 0}),
        "signature_required",
    )
    # Half the headers is still no signature.
    signed = http_signing.sign_request(key, SIGNED, "GET", "/v1/transactions/P_ANY")
    assert_problem(
        client.get("/v1/transactions/P_ANY", headers={"Signature": signed["Signature"]}), "signature_required"
    )


def _custom(key, values, params, label="sig1") -> dict[str, str]:
    """A signature over any components and parameters, for the refusals."""
    rendered = http_signing.signature_params([n for n, _ in values], params)
    return http_signing.sign_base(key, label, http_signing.signature_base(values, rendered), rendered)


def _params(**override):
    params = {"created": int(time.time()), "keyid": SIGNED, "nonce": uuid.uuid4().hex, "alg": "ed25519", **override}
    return [(k, v) for k, v in params.items() if v is not None]


def _invalid_cases(key: Ed25519PrivateKey, body: bytes) -> dict[str, tuple[dict, bytes]]:
    """name → (headers, body sent); each is `signature_invalid`."""
    idem = uuid.uuid4().hex
    digest = http_signing.content_digest(body)
    full = [("@method", "POST"), ("@path", "/v1/transactions"), ("content-digest", digest), ("idempotency-key", idem)]
    base = {"Idempotency-Key": idem, "Content-Digest": digest}
    good = http_signing.sign_request(key, SIGNED, "POST", "/v1/transactions", {"Idempotency-Key": idem}, body)
    flipped = bytearray(base64.b64decode(good["Signature"][len("sig1=:") : -1]))
    flipped[0] ^= 1
    other_key = Ed25519PrivateKey.generate()
    sha512 = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    return {
        "bad signature": ({**base, **good, "Signature": f"sig1=:{base64.b64encode(bytes(flipped)).decode()}:"}, body),
        "another key": ({**base, **_custom(other_key, full, _params())}, body),
        "wrong keyid": ({**base, **_custom(key, full, _params(keyid=BEARER))}, body),
        "idempotency-key not covered": ({**base, **_custom(key, full[:3], _params())}, body),
        "content-digest not covered": ({**base, **_custom(key, full[:2] + full[3:], _params())}, body),
        "an extra component": (
            {
                **base,
                "Content-Type": "application/json",
                **_custom(key, [*full, ("content-type", "application/json")], _params()),
            },
            body,
        ),
        "@query without a query": ({**base, **_custom(key, [*full, ("@query", "?")], _params())}, body),
        "no nonce": ({**base, **_custom(key, full, _params(nonce=None))}, body),
        "no created": ({**base, **_custom(key, full, _params(created=None))}, body),
        "no alg": ({**base, **_custom(key, full, _params(alg=None))}, body),
        "no keyid": ({**base, **_custom(key, full, _params(keyid=None))}, body),
        "an extra parameter": ({**base, **_custom(key, full, [*_params(), ("tag", "x")])}, body),
        "another alg": ({**base, **_custom(key, full, _params(alg="hmac-sha256"))}, body),
        "nonce too short": ({**base, **_custom(key, full, _params(nonce="a" * 15))}, body),
        "nonce too long": ({**base, **_custom(key, full, _params(nonce="a" * 65))}, body),
        "another label": ({**base, **_custom(key, full, _params(), label="sig2")}, body),
        "body altered after signing": ({**base, **good}, body.replace(b"1100", b"9900")),
        "digest of another body": (
            {
                **base,
                "Content-Digest": http_signing.content_digest(b"{}"),
                **_custom(key, [*full[:2], ("content-digest", http_signing.content_digest(b"{}")), full[3]], _params()),
            },
            body,
        ),
        "sha-512 digest only": (
            {
                **base,
                "Content-Digest": sha512,
                **_custom(key, [*full[:2], ("content-digest", sha512), full[3]], _params()),
            },
            body,
        ),
        "malformed Signature-Input": ({**base, **good, "Signature-Input": "sig1=(((("}, body),
        "malformed Signature": ({**base, **good, "Signature": "sig1=not-bytes"}, body),
        "two signatures": (
            {
                **base,
                "Signature-Input": good["Signature-Input"]
                + ", "
                + good["Signature-Input"].replace("sig1=", "sig2=", 1),
                "Signature": good["Signature"] + ", " + good["Signature"].replace("sig1=", "sig2=", 1),
            },
            body,
        ),
    }


def test_each_broken_signature_is_signature_invalid(ward, key):
    body = _body(ward, "W_SIG5")
    before = ward.server.payments()
    for name, (headers, sent) in _invalid_cases(key, body).items():
        r = ward.terminal(SIGNED).post(
            "/v1/transactions", content=sent, headers={"Content-Type": "application/json", **headers}
        )
        assert r.status_code == 401 and r.json()["code"] == "signature_invalid", (name, r.status_code, r.text)
    assert ward.server.payments() == before


def test_a_signature_too_old_or_too_new_is_signature_expired(ward, key):
    now = int(time.time())
    assert_problem(ward.post_signed(SIGNED, key, _body(ward, "W_SIG6"), created=now - 360), "signature_expired")
    assert_problem(ward.post_signed(SIGNED, key, _body(ward, "W_SIG6"), created=now + 360), "signature_expired")
    assert ward.post_signed(SIGNED, key, _body(ward, "W_SIG6"), created=now - 250).status_code == 201


def test_a_replayed_nonce_is_signature_replayed(ward, key):
    body = _body(ward, "W_SIG7")
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    headers.update(http_signing.sign_request(key, SIGNED, "POST", "/v1/transactions", headers, body))
    client = ward.terminal(SIGNED)
    assert client.post("/v1/transactions", content=body, headers=headers).status_code == 201
    before = ward.server.payments()
    assert_problem(client.post("/v1/transactions", content=body, headers=headers), "signature_replayed")
    # The same nonce on another request is as used up.
    nonce = headers["Signature-Input"].split('nonce="')[1].split('"')[0]
    assert_problem(ward.send_signed(SIGNED, key, "GET", "/v1/wallets/W_SIG7/points", nonce=nonce), "signature_replayed")
    assert ward.server.payments() == before


def test_a_terminal_without_a_key_stays_bearer_only(ward, key):
    assert ward.post(BEARER, purchase(BEARER, "W_SIG8", 1100)).status_code == 201


def test_removing_the_key_returns_to_bearer_only(ward):
    private = Ed25519PrivateKey.generate()
    register(ward, SIGNED, private)
    assert_problem(ward.post(SIGNED, purchase(SIGNED, "W_SIG9", 1100)), "signature_required")
    register(ward, SIGNED, None)
    assert ward.post(SIGNED, purchase(SIGNED, "W_SIG9", 1100)).status_code == 201
    # A key registered again (a new one) is required again at once.
    register(ward, SIGNED, Ed25519PrivateKey.generate())
    assert_problem(ward.post_signed(SIGNED, private, purchase(SIGNED, "W_SIG9", 1100)), "signature_invalid")
    register(ward, SIGNED, None)


# -- across processes ------------------------------------------------------------------


def _replay_across_processes(start_server, tmp_path, env: dict[str, str]) -> Ward:
    """Server A registers the key and takes a signed purchase; the very same request sent to
    server B (another process, same PostgreSQL database) is `signature_replayed`."""
    ward = Ward(start_server("postgresql", env=env))
    private = Ed25519PrivateKey.generate()
    register(ward, SIGNED, private)
    body = _body(ward, "W_SIGX")
    headers = {"Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"}
    headers.update(
        http_signing.sign_request(
            private,
            SIGNED,
            "POST",
            "/v1/transactions",
            headers,
            body,
            created=int(time.time()) + int(env.get("SETAPAY_CLOCK_OFFSET_S", 0)),
        )
    )
    assert ward.terminal(SIGNED).post("/v1/transactions", content=body, headers=headers).status_code == 201
    with Server(ward.server.database_url, tmp_path, env) as other, other.client(ward.terminal_key(SIGNED)) as b:
        r = b.post("/v1/transactions", content=body, headers=headers)
        assert_problem(r, "signature_replayed")
        # A fresh signature of the same key is accepted there (and answered as an idempotent replay).
        fresh = {k: v for k, v in headers.items() if k in ("Idempotency-Key", "Content-Type")}
        fresh.update(
            http_signing.sign_request(
                private,
                SIGNED,
                "POST",
                "/v1/transactions",
                fresh,
                body,
                created=int(time.time()) + int(env.get("SETAPAY_CLOCK_OFFSET_S", 0)),
            )
        )
        r = b.post("/v1/transactions", content=body, headers=fresh)
        assert r.status_code == 201 and r.headers.get("Idempotent-Replayed") == "true", r.text
        # The key removed through A reaches B within 5 s: unsigned requests pass there again.
        register(ward, SIGNED, None)
        deadline = time.monotonic() + 5
        while b.get("/v1/wallets/W_SIGX/points").status_code == 401:
            assert time.monotonic() < deadline, "B still wants a signature 5 s after the key was removed"
            time.sleep(0.1)
    assert ward.server.count(PaymentRow) == 1
    return ward


@pytest.mark.postgres
def test_replay_to_a_second_process_database_nonces(start_server, tmp_path):
    # The engine's clock an hour ahead (SETAPAY_CLOCK_OFFSET_S): `created` is checked against it.
    env = {"SETAPAY_CLOCK_OFFSET_S": "3600"}
    ward = _replay_across_processes(start_server, tmp_path, env)
    assert ward.server.count(SignatureNonceRow) == 2
    key = Ed25519PrivateKey.generate()
    register(ward, SIGNED, key)
    assert_problem(ward.post_signed(SIGNED, key, _body(ward, "W_SIGY")), "signature_expired")  # the wall clock's now
    ward.close()


@pytest.mark.postgres
@pytest.mark.redis
def test_replay_to_a_second_process_redis_nonces(start_server, tmp_path, redis_url):
    import redis

    ward = _replay_across_processes(start_server, tmp_path, {"SETAPAY_REDIS_URL": redis_url})
    ward.close()
    assert ward.server.count(SignatureNonceRow) == 0
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(f"setapay:nonce:{SIGNED}:*")
        assert len(keys) == 2
        # Kept for the 600 s window and no longer; the lower bound leaves room for a loaded machine
        # (the TTL counts down while the two processes start and answer).
        assert 300 < client.ttl(keys[0]) <= 600
    finally:
        client.close()


# -- a stolen bearer key alone ---------------------------------------------------------


def test_unsigned_requests_do_not_spend_a_signing_terminals_rate(start_server):
    """A signing terminal's key without the terminal's private key gets 401 `signature_required`
    however often it is sent, and the terminal's signed requests keep their whole rate: the key's
    rate is counted once the signature holds, not before."""
    limit = 60
    ward = Ward(start_server("sqlite", env={"SETAPAY_RATE_LIMIT_PER_KEY": f"{limit}/minute"}))
    try:
        private = Ed25519PrivateKey.generate()
        register(ward, SIGNED, private)
        thief = ward.terminal(SIGNED)
        for _ in range(limit + 5):
            assert_problem(thief.get("/v1/transactions/tx_unknown"), "signature_required")
        for i in range(3):
            r = ward.post_signed(SIGNED, private, purchase(SIGNED, "W_OWNER", 1100 + i))
            assert r.status_code == 201, r.text
        # The limit is real: a bearer-only terminal's key is over it past `limit` requests.
        bearer = ward.terminal(BEARER)
        answers = [bearer.get("/v1/transactions/tx_unknown").status_code for _ in range(limit + 1)]
        assert answers[:limit] == [404] * limit and answers[limit] == 429
    finally:
        ward.close()


def test_a_request_refused_for_the_rate_keeps_its_nonce_and_bad_signatures_count_per_address(start_server):
    """A signed request over the key's rate is refused (429) before its nonce is claimed, so the
    terminal may send it again as it is once the window turns; requests whose signature is
    refused count as failed authentications of their address (SPEC §9.4), so a stolen key alone
    is limited although it spends no key's rate."""
    ward = Ward(
        start_server(
            "sqlite",
            env={"SETAPAY_RATE_LIMIT_PER_KEY": "20/3 seconds", "SETAPAY_AUTH_FAILURES_PER_IP": "5/minute"},
        )
    )
    try:
        private = Ed25519PrivateKey.generate()
        register(ward, SIGNED, private)
        target = "/v1/transactions/tx_unknown"
        for _ in range(100):
            headers = http_signing.sign_request(private, SIGNED, "GET", target)
            r = ward.terminal(SIGNED).get(target, headers=headers)
            if r.status_code == 429:
                break
            assert_problem(r, "not_found", 404)
        assert_problem(r, "rate_limited", 429)
        time.sleep(3.2)  # the next window
        assert_problem(ward.terminal(SIGNED).get(target, headers=headers), "not_found", 404)
        # Five refused signatures from this address, then its failures are over their limit.
        thief = ward.terminal(SIGNED)
        for _ in range(5):
            assert_problem(thief.get(target), "signature_required")
        assert_problem(thief.get(target), "rate_limited", 429)
    finally:
        ward.close()


def test_the_bearer_schemes_case_is_free(ward):
    """RFC 9110 §11.1: an authentication scheme is case-insensitive."""
    key = ward.terminal_key(BEARER)
    for scheme in ("Bearer", "bearer", "BEARER"):
        with ward.server.client(None) as c:
            r = c.get("/v1/transactions/tx_unknown", headers={"Authorization": f"{scheme} {key}"})
        assert_problem(r, "not_found", 404)  # authenticated: the transaction is looked up
    with ward.server.client(None) as c:
        assert_problem(
            c.get("/v1/transactions/tx_unknown", headers={"Authorization": f"Basic {key}"}), "unauthenticated"
        )
