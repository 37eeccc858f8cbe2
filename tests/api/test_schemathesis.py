"""Schemathesis against a real `setapay serve`: every operation of /openapi.json with every role's key.

Issue 10, deliverable 3. For each backend (the embedded SQLite default, with no Redis and no keys
configured; PostgreSQL with Redis and the data and signing keys, as the ward runs it) a server is
started on a database of its own and seeded with a small ward (tests/ward.py) plus what the
other routes need to answer 2xx: a terminal with a registered Ed25519 key, a purchase and a refund,
a grant, a settlement run, a pending bank account change, a campaign that has not started yet, keys
to revoke. The schema is loaded from the server (`schemathesis.openapi.from_url`), and every
operation runs under each role's key (admin, finance, app, merchant M_SHOTEN, terminal T_SHOTEN_1),
in schemathesis's examples, coverage and fuzzing phases, positive and negative. Every answer must pass

- `not_a_server_error`: no 5xx, whatever was sent;
- `status_code_conformance`: the status is one the operation documents;
- `content_type_conformance`: the media type is the one documented for that status;
- `response_schema_conformance`: the body validates against the documented schema.

Valid calls must be able to succeed, so generated values are mixed with the ward's real ids
(schemathesis "dictionaries": path ids, and the ids, wallet, instant and date fields of bodies)
and the terminal behaves like a real one: the test payment app's receipt goes on every transaction
of a positive case (SPEC §9.1), and `TerminalSigner` signs every request (SPEC §9.2, RFC 9421)
except a negative case about the signature headers, which is sent as generated so that the
verifier meets garbage too.

Deterministic and bounded: a fixed seed, `derandomize`, no Hypothesis database. A role the
authorization matrix (tests/api/test_authorization_matrix.py) lets call an operation gets up to
`ALLOWED_EXAMPLES` fuzzing examples there, plus schemathesis's coverage cases under the first such
role (they do not depend on the key; the negative ones only on SQLite, as they stop at validation
before any query); the other roles get `DENIED_EXAMPLES` (refused before the route). Then
`test_the_fuzz_reached_every_route` checks the run was not vacuous: every allowed key got past
401/403 on its operations, and every operation but `NO_2XX_IN_THIS_WARD` answered 2xx at least once.

It runs in the suite's first pass only: `make test` runs pytest again with SETAPAY_PURE_PYTHON=1,
and the fuzz is about the HTTP contract, not the rating kernel (the rest of the suite checks both
kernels agree), so the second pass skips it to keep CI within its time.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import uuid

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from engine import http_signing
from engine.sealing import generate_key_b64
from engine.settlement import signing
from tests.api.test_authorization_matrix import EXPECTED as MATRIX
from tests.receipts import TRANSACTION_PATHS, sign_payload
from tests.ward import TOKYO, Ward, now_tokyo, purchase

pytestmark = [
    pytest.mark.fuzz,
    pytest.mark.skipif(
        os.environ.get("SETAPAY_PURE_PYTHON") == "1",
        reason="the HTTP fuzz runs in the compiled-kernel pass of `make test` only (see the module docstring)",
    ),
]

# The matrix's routes that the OpenAPI document describes: the pages, /ui and under /ui/ (HTML, left
# out of the document on purpose; tests/ui drives them in a browser), are not fuzzed.
EXPECTED = {route: cells for route, cells in MATRIX.items() if not route.split(" ", 1)[1].startswith("/ui")}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SEED = 20261201
# Fuzzing examples per operation (positive and negative) for a role that may call it; SETAPAY_FUZZ_EXAMPLES=80
# makes a deeper run (about ten minutes here) with the same checks.
ALLOWED_EXAMPLES = int(os.environ.get("SETAPAY_FUZZ_EXAMPLES", "15"))
DENIED_EXAMPLES = 2
# The seeded settlement run pays nobody (every posting is in the open period), so it has no payout
# file and no payout to report on: these two answer 404/409/422 only.
NO_2XX_IN_THIS_WARD = {
    "GET /v1/settlement-runs/{run_id}/zengin",
    "POST /v1/settlement-runs/{run_id}/payout-results",
}

# The role of each key, and its column in the authorization matrix.
ROLES = {
    "terminal": "terminal_own",
    "app": "app",
    "merchant": "merchant_own",
    "finance": "finance",
    "admin": "admin",
}
TERMINAL = "T_SHOTEN_1"  # the fuzzing terminal: signs its requests (SPEC §9.2)
OTHER_TERMINAL = "T_CONV"  # bearer-only, at another merchant
MERCHANT = "M_SHOTEN"  # the merchant key's, and the terminal's
WALLET = "W_FUZZ"
WEBHOOK_URL = "https://hooks.example.org/setapay"
FUTURE_CAMPAIGN = "C_FUTURE"
BANK_ACCOUNT = {
    "bank_code": "0159",
    "branch_code": "101",
    "account_type": "ordinary",
    "account_number": "7654321",
    "holder_kana": "ｾﾀｶﾞﾔﾔｵﾔ",
}


class TerminalSigner(requests.auth.AuthBase):
    """What a terminal does to a request before it leaves: the payment app's receipts on the
    transactions it posts (done on the case, see `FuzzWard.call`), then the RFC 9421 signature over
    the exact bytes sent, unless the request already carries signature headers (generated ones)."""

    def __init__(self, terminal_id: str, private_key: Ed25519PrivateKey) -> None:
        self.terminal_id = terminal_id
        self.private_key = private_key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if "Signature" in r.headers or "Signature-Input" in r.headers:
            return r
        body = r.body.encode() if isinstance(r.body, str) else r.body
        idempotency = {k: v for k, v in r.headers.items() if k.lower() == "idempotency-key"}
        try:
            signed = http_signing.sign_request(
                self.private_key, self.terminal_id, r.method, r.path_url, idempotency, body
            )
        except UnicodeEncodeError:  # a generated non-ASCII Idempotency-Key has no RFC 9421 signature base
            return r
        r.headers.update(signed)
        return r


class FuzzWard:
    """The seeded ward on one running server, its keys, and how each role's key calls it."""

    def __init__(self, ward: Ward, backend: str) -> None:
        self.ward = ward
        self.backend = backend
        self.server = ward.server
        self.app = self.server.payment_app
        self.private_key = Ed25519PrivateKey.generate()
        self.signer = TerminalSigner(TERMINAL, self.private_key)
        self.session = requests.Session()
        # (operation, role) -> how often each status was answered
        self.statuses: dict[tuple[str, str], collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self._seed()

    # -- seeding ---------------------------------------------------------------------

    def _request(self, role: str, method: str, path: str, body=None, headers=None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **(headers or {})}
        return self.session.request(
            method,
            self.server.base_url + path,
            json=body,
            headers=headers,
            auth=self.signer if role == "terminal" else None,
            timeout=60,
        )

    def _ok(self, role: str, method: str, path: str, body=None, headers=None) -> dict:
        r = self._request(role, method, path, body, headers)
        assert r.status_code in (200, 201), (method, path, r.status_code, r.text)
        return r.json()

    def _post_transaction(self, role: str, body: dict) -> dict:
        signed = self.app.sign_body(body)
        answer = self._ok(role, "POST", "/v1/transactions", signed, {"Idempotency-Key": uuid.uuid4().hex})
        self.app.accepted(signed, answer)
        return answer

    def _seed(self) -> None:
        # The ward's admin and finance keys came from `setapay keys create` (the finance key
        # confirms the admin's bank account change: a key the admin made could not, SPEC §9.6);
        # the others from POST /v1/keys.
        self.keys = {"admin": self.server.admin_key, "finance": self.server.create_key("finance")}
        made = {
            name: self._ok("admin", "POST", "/v1/keys", request)
            for name, request in {
                "app": {"role": "app"},
                "merchant": {"role": "merchant", "merchant_id": MERCHANT},
                "terminal": {"role": "terminal", "terminal_id": TERMINAL},
                "other_terminal": {"role": "terminal", "terminal_id": OTHER_TERMINAL},
                "victim_admin": {"role": "admin"},
                "victim_app": {"role": "app"},
            }.items()
        }
        self.keys.update({name: answer["key"] for name, answer in made.items()})
        victim_ids = [made["victim_admin"]["id"], made["victim_app"]["id"]]

        self._ok(
            "admin",
            "POST",
            "/v1/campaigns",
            {
                "id": FUTURE_CAMPAIGN,
                "name": "来年のキャンペーン",
                "starts_at": "2030-01-01T00:00:00+09:00",
                "ends_at": "2031-01-01T00:00:00+09:00",
                "tiers": [{"match": {}, "rate_bp": 500}],
            },
        )
        self._ok(
            "admin", "PATCH", f"/v1/terminals/{TERMINAL}", {"public_key": http_signing.public_key_b64(self.private_key)}
        )
        # A payout account change waiting for a second key's confirmation (SPEC §9.6), at the first
        # merchant of the dictionary: the coverage phase's positive confirmation names it, with the
        # change's `set_at` and account, and is answered 2xx whatever the fuzz draws (at M_LARGE,
        # only a lucky draw of the fuzz named it: after changes to the document and to PATCH
        # answers, the derandomized draws moved and the route had no 2xx).
        changed = self._ok("admin", "PATCH", f"/v1/merchants/{MERCHANT}", {"bank_account": BANK_ACCOUNT})

        bought = self._post_transaction("terminal", purchase(TERMINAL, WALLET, 9_000_000))
        refunded = self._post_transaction(
            "terminal", {"type": "refund", "original_id": bought["id"], "amount": 1000, "occurred_at": now_tokyo(-30)}
        )
        other = self._post_transaction("other_terminal", purchase(OTHER_TERMINAL, "W_OTHER", 5000))
        self._ok(
            "finance",
            "POST",
            "/v1/grants",
            {"wallet_id": WALLET, "campaign_id": "C_POINTBACK", "points": 1000, "reason": "お詫び"},
            {"Idempotency-Key": uuid.uuid4().hex},
        )
        run = self._ok("finance", "POST", "/v1/settlement-runs", {})
        # https:// to a public name: accepted without SETAPAY_WEBHOOKS_ALLOW_HTTP; never reached.
        webhook = self._ok("admin", "POST", "/v1/webhooks", {"url": WEBHOOK_URL, "event_types": ["clawback"]})

        today = dt.datetime.now(TOKYO).date()
        last_month = (today.replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
        self.dictionaries = {
            "merchants": [MERCHANT, "M_CONV", "M_LARGE"],
            "terminals": [TERMINAL, OTHER_TERMINAL],
            "campaigns": ["C_POINTBACK", "C_ETHICAL", FUTURE_CAMPAIGN],
            "transactions": [bought["id"], refunded["id"], other["id"]],
            "purchases": [bought["id"]],
            "wallets": [WALLET],
            "runs": [run["id"]],
            "keys": victim_ids,
            "webhooks": [webhook["id"]],
            "urls": [WEBHOOK_URL],
            "instants": [now_tokyo(-60)],
            "bank_changes": [changed["bank_account_masked"]["set_at"]],  # the change the confirmation names
            **{f"account_{field}": [value] for field, value in BANK_ACCOUNT.items()},
            "past": [now_tokyo(-86_400)],
            "starts": ["2027-01-01T00:00:00+09:00"],
            "ends": ["2028-01-01T00:00:00+09:00"],
            "dates": [today.isoformat()],
            "periods": [last_month],
            "zero": [0],
            "roles": list(ROLES),
        }

    # -- the schema ------------------------------------------------------------------

    def config(self, role: str) -> schemathesis.Config:
        """Schemathesis's configuration for one role's run over every operation."""
        allowed = [route for route, cells in EXPECTED.items() if cells[ROLES[role]] not in ("401", "403")]
        # The coverage phase's cases do not depend on the key, so an operation several roles may
        # call gets them under the first of those roles only (in `ROLES` order).
        covered = [
            r for r in allowed if role == next(k for k, c in ROLES.items() if EXPECTED[r][c] not in ("401", "403"))
        ]
        often, sometimes = {"probability": 0.75}, {"probability": 0.5}
        parameters = {
            **{f"path.{name}": {"dictionary": d, **sometimes} for name, d in PATH_DICTIONARIES.items()},
            **{f"query.{name}": {"dictionary": d, **sometimes} for name, d in QUERY_DICTIONARIES.items()},
            **{f"body.{name}": {"dictionary": d, **often} for name, d in BODY_DICTIONARIES.items()},
        }
        no_coverage = {"coverage": {"enabled": False}}
        return schemathesis.Config.from_dict(
            {
                "seed": SEED,
                # Generation speed is not under test, and this machine's is not ours to promise:
                # `too_slow` under CI's load must not fail a run whose answers all conform.
                "suppress-health-check": ["too_slow"],
                "generation": {"deterministic": True, "database": "none", "max-examples": DENIED_EXAMPLES},
                "dictionaries": {name: {"values": values} for name, values in self.dictionaries.items()},
                "parameters": parameters,
                "phases": {
                    "stateful": {"enabled": False},
                    # Negative coverage cases stop at validation, before any query: once (on SQLite) is enough.
                    **({"coverage": {"generation": {"mode": "positive"}}} if self.backend == "postgresql" else {}),
                },
                "operations": [
                    block
                    for block in (
                        {"include-name": covered, "generation": {"max-examples": ALLOWED_EXAMPLES}},
                        {
                            "include-name": [r for r in allowed if r not in covered],
                            "generation": {"max-examples": ALLOWED_EXAMPLES},
                            "phases": no_coverage,
                        },
                        {"exclude-name": allowed, "phases": no_coverage},
                    )
                    if block.get("include-name", True)
                ],
            }
        )

    # -- one example -----------------------------------------------------------------

    def call(self, case: schemathesis.Case, role: str) -> None:
        signer = None
        if role == "terminal":
            signer = self.signer
            if not _negates_signature(case):
                # A terminal signs its own requests: generated signature headers go, unless the case is
                # about them (negative there), which the verifier then meets instead of a signature.
                for name in SIGNATURE_HEADERS:
                    (case.headers or {}).pop(name, None)
            if _positive(case) and case.method == "POST" and case.path in TRANSACTION_PATHS:
                self._receipts(case)
        response = case.call_and_validate(
            session=self.session,
            headers={"Authorization": f"Bearer {self.keys[role]}"},
            checks=CHECKS,
            auth=signer,
        )
        self.statuses[case.operation.label, role][response.status_code] += 1
        if (case.method, case.path, response.status_code) == ("POST", "/v1/transactions", 201):
            self.app.accepted(case.body, response.json())
        if (case.method, case.path, response.status_code) == ("PATCH", "/v1/merchants/{merchant_id}", 200):
            # A generated account change supersedes the one set up: the confirmations of the roles
            # that run later name it too (each role's run reads the dictionaries when it starts).
            masked = response.json().get("bank_account_masked")
            if masked and masked["set_at"] not in self.dictionaries["bank_changes"]:
                self.dictionaries["bank_changes"].append(masked["set_at"])

    def _receipts(self, case: schemathesis.Case) -> None:
        """The payment app's receipt on each transaction of a positive case, instead of the
        generated one (never a valid JWS)."""
        batch = case.path.endswith("/batch")
        body = case.body
        if batch and isinstance(body, dict) and isinstance(body.get("transactions"), list):
            body = {
                **body,
                "transactions": [
                    {k: v for k, v in item.items() if k != "receipt"} if isinstance(item, dict) else item
                    for item in body["transactions"]
                ],
            }
        elif isinstance(body, dict):
            body = {k: v for k, v in body.items() if k != "receipt"}
        idempotency_key = str((case.headers or {}).get("Idempotency-Key", ""))
        case.body = sign_payload(self.app, body, batch, TERMINAL + "\x1f", idempotency_key)


def _positive(case: schemathesis.Case) -> bool:
    return case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE


def _negates_signature(case: schemathesis.Case) -> bool:
    """Whether `case` is a negative one about a signature header."""
    if _positive(case):
        return False
    data = case.meta.phase.data
    named = {data.parameter, *(m.parameter for m in getattr(data, "mutations", ()))}
    return data.parameter_location == ParameterLocation.HEADER and bool(named & set(SIGNATURE_HEADERS))


SIGNATURE_HEADERS = ("Signature", "Signature-Input", "Content-Digest")
PATH_DICTIONARIES = {
    "merchant_id": "merchants",
    "terminal_id": "terminals",
    "campaign_id": "campaigns",
    "transaction_id": "transactions",
    "wallet_id": "wallets",
    "run_id": "runs",
    "key_id": "keys",
    "webhook_id": "webhooks",
}
QUERY_DICTIONARIES = {"from": "past", "to": "instants"}
BODY_DICTIONARIES = {
    "wallet_id": "wallets",
    "merchant_id": "merchants",
    "terminal_id": "terminals",
    "campaign_id": "campaigns",
    "original_id": "purchases",
    "occurred_at": "instants",
    "set_at": "bank_changes",
    # The confirmation names the whole account awaiting it (dictionaries hold scalars only).
    **{f"bank_account.{field}": f"account_{field}" for field in BANK_ACCOUNT},
    "points_used": "zero",
    "business_date": "dates",
    "period": "periods",
    "role": "roles",
    "url": "urls",
    "results[*].merchant_id": "merchants",
    # a campaign that can be created, and a window to simulate one over
    "starts_at": "starts",
    "ends_at": "ends",
    "campaign.id": "campaigns",
    "campaign.starts_at": "past",
    "campaign.ends_at": "ends",
    "from": "past",
    "to": "instants",
}


@pytest.fixture(scope="module")
def fuzz_ward(backend, start_server, request):
    env = {}
    if backend == "postgresql":  # as the ward runs it: Redis, sealed bank details, signed statements
        env = {
            "SETAPAY_REDIS_URL": request.getfixturevalue("module_redis_url"),
            "SETAPAY_DATA_KEY_B64": generate_key_b64(),
            "SETAPAY_SIGNING_KEY_B64": signing.private_key_b64(signing.generate_private_key()),
        }
    ward = Ward(start_server(backend, env=env, cli_in_process=True))
    fuzz = FuzzWard(ward, backend)
    try:
        yield fuzz
    finally:
        fuzz.session.close()
        ward.close()


@pytest.fixture(params=list(ROLES))
def role(request) -> str:
    return request.param


@pytest.fixture
def fuzz_schema(fuzz_ward, role, request):
    # schemathesis 4.32's lazy loader reads and rewrites `Function._nodeid` to name each operation's
    # subtest; pytest 9.2 no longer has that attribute, so it gets one (pytest itself ignores it).
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return schemathesis.openapi.from_url(fuzz_ward.server.base_url + "/openapi.json", config=fuzz_ward.config(role))


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
def test_every_operation_with_every_role(case, fuzz_ward, role):
    fuzz_ward.call(case, role)


def test_the_fuzz_reached_every_route(fuzz_ward):
    """The runs above proved something: each key the matrix lets call an operation got past
    authentication and authorization at least once (an answer other than 401/403: the terminal's
    signature and receipts worked), and every operation answered 2xx at least once."""
    ran = {role for _, role in fuzz_ward.statuses}
    if ran != set(ROLES):
        pytest.skip(f"only {sorted(ran)} ran")
    table = "\n".join(
        f"{label:55} {role:9} {sum(counts.values()):4} {dict(sorted(counts.items()))}"
        for (label, role), counts in sorted(fuzz_ward.statuses.items())
    )
    print(f"{fuzz_ward.backend}: {sum(sum(c.values()) for c in fuzz_ward.statuses.values())} examples\n{table}")
    unreached = [
        (route, role)
        for route, cells in EXPECTED.items()
        for role, column in ROLES.items()
        if cells[column] not in ("401", "403") and not any(s not in (401, 403) for s in fuzz_ward.statuses[route, role])
    ]
    assert not unreached, f"never past 401/403: {unreached}\n{table}"
    answered_2xx = {label for (label, _), counts in fuzz_ward.statuses.items() if any(200 <= s < 300 for s in counts)}
    never = set(EXPECTED) - answered_2xx - NO_2XX_IN_THIS_WARD
    assert not never, f"never 2xx: {sorted(never)}\n{table}"
