"""The OpenAPI document tells the truth (issue 10, deliverable 2), read from a real server process.

- the `bearerAuth` HTTP bearer scheme exists and every operation but /healthz, /readyz and /metrics uses it;
- every such operation documents 401 and 403; every documented 4xx/5xx problem is
  `application/problem+json` with the `Problem` schema, whose `code` enum is the error catalog;
- `Idempotency-Key` is a required header of POST /v1/transactions and POST /v1/grants (while the
  server still answers a missing one with 400 `idempotency_key_missing`, not 422);
- the routes a terminal key calls document the RFC 9421 signature headers, optional;
- every route of the application is in the document;
- the PATCH bodies of merchants and campaigns are partial models (the fields a client may change,
  optional, typed as in the full model, no others), and the server takes what they allow and
  answers 422 to what they do not.
"""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from engine import limits
from engine.errors import CATALOG

PUBLIC = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
TERMINAL_ROUTES = {
    ("post", "/v1/transactions"),
    ("post", "/v1/transactions/batch"),
    ("get", "/v1/transactions/{transaction_id}"),
    ("post", "/v1/terminals/{terminal_id}/closeouts"),
    ("post", "/v1/quotes"),
}
IDEMPOTENT = {("post", "/v1/transactions"), ("post", "/v1/grants")}
# Routes that take an Idempotency-Key without requiring it: an admin's creations shown a secret once.
IDEMPOTENT_IF_SENT = {("post", "/v1/keys"), ("post", "/v1/webhooks")}
SIGNATURE_HEADERS = {"Signature", "Signature-Input", "Content-Digest"}


@pytest.fixture(scope="module")
def server(start_server):
    return start_server("sqlite")


@pytest.fixture(scope="module")
def document(server) -> dict:
    with server.client() as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200, answer.text
    return answer.json()


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_every_route_is_documented(document, tmp_path) -> None:
    from api.app import create_app
    from engine.settings import Settings

    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/routes.db"))
    routes = {(m.lower(), r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    # The pages (HTML, api/routers/ui.py) are left out of the document on purpose, and nothing else is.
    pages = {(m, p) for m, p in routes if p == "/ui" or p.startswith("/ui/")}
    assert pages, "the pages under /ui/ are served"
    assert routes - pages == {(m, p) for m, p, _ in operations(document)}
    assert not any(p.startswith("/ui/") for _, p, _ in operations(document))


def test_the_bearer_scheme_is_used_by_every_operation_but_health(document) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    for method, path, operation in operations(document):
        if (method, path) in PUBLIC:
            assert not operation.get("security"), (method, path)
        else:
            assert operation.get("security") == [{"bearerAuth": []}], (method, path)
            # the key travels in the scheme, not as a parameter of its own
            assert "authorization" not in {p["name"].lower() for p in operation.get("parameters", [])}


def test_every_operation_documents_401_and_403_unless_public(document) -> None:
    for method, path, operation in operations(document):
        if (method, path) not in PUBLIC:
            assert {"401", "403", "429"} <= set(operation["responses"]), (method, path)
        assert {"400", "413"} <= set(operation["responses"]), (method, path)  # the middleware's, anywhere
        if "{" in path:  # an encoded "/" in the id matches no route: 404
            assert "404" in operation["responses"], (method, path)


def test_problem_responses_are_problem_json(document) -> None:
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == set(CATALOG)
    assert {"type", "title", "status", "code"} <= set(problem["required"])
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if (method, path, status) == ("get", "/readyz", "503"):
                continue  # readiness answers its checks as JSON, not as a problem
            if int(status) >= 400:
                assert list(response["content"]) == ["application/problem+json"], (method, path, status)
                content = response["content"]["application/problem+json"]
                assert content["schema"] == {"$ref": "#/components/schemas/Problem"}, (method, path, status)
                for code, example in content["examples"].items():
                    assert CATALOG[code].status == int(status) == example["value"]["status"]
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_idempotency_key_is_required_where_the_spec_requires_it_and_taken_where_it_is_optional(document) -> None:
    for method, path, operation in operations(document):
        found = [p for p in operation.get("parameters", []) if p["name"].lower() == "idempotency-key"]
        if (method, path) in IDEMPOTENT:
            assert len(found) == 1 and found[0]["in"] == "header" and found[0]["required"] is True, (method, path)
            assert "idempotency_key_missing" in operation["responses"]["400"]["description"]
        elif (method, path) in IDEMPOTENT_IF_SENT:
            assert len(found) == 1 and found[0]["in"] == "header" and found[0]["required"] is False, (method, path)
            assert "idempotency_key_reused" in operation["responses"]["422"]["description"]
            assert "Idempotent-Replayed" in operation["responses"]["201"]["headers"]
        else:
            assert not found, (method, path)


def test_terminal_routes_document_the_signature_headers(document) -> None:
    for method, path, operation in operations(document):
        headers = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "header"}
        if (method, path) in TERMINAL_ROUTES:
            assert set(headers) >= SIGNATURE_HEADERS, (method, path)
            assert not any(headers[h]["required"] for h in SIGNATURE_HEADERS)
            assert "signature_invalid" in operation["responses"]["401"]["description"]
        else:
            assert not SIGNATURE_HEADERS & set(headers), (method, path)


def test_a_missing_idempotency_key_is_still_400(server) -> None:
    with server.client(server.create_key("finance")) as client:
        answer = client.post("/v1/grants", json={"wallet_id": "W1", "campaign_id": "C1", "points": 1, "reason": "r"})
    assert answer.status_code == 400 and answer.json()["code"] == "idempotency_key_missing"
    assert answer.headers["content-type"] == "application/problem+json"


TYPED = {
    ("post", "/v1/transactions", "201"): "TransactionAnswer",
    ("post", "/v1/transactions/batch", "200"): "BatchAnswer",
    ("get", "/v1/transactions/{transaction_id}", "200"): "TransactionAnswer",
    ("get", "/v1/wallets/{wallet_id}/points", "200"): "WalletPoints",
    ("get", "/v1/keys", "200"): "KeyListings",
    ("post", "/v1/keys", "201"): "CreatedKey",
    ("post", "/v1/keys/{key_id}/revoke", "200"): "KeyListing",
    ("get", "/v1/audit", "200"): "AuditPage",
    ("get", "/healthz", "200"): "Health",
    ("get", "/readyz", "200"): "Readiness",
    ("get", "/v1/merchants/{merchant_id}/transactions", "200"): "MerchantTransactions",
    ("get", "/v1/merchants/{merchant_id}/rewards", "200"): "MerchantRewards",
    ("post", "/v1/grants", "201"): "GrantAnswer",
    ("get", "/v1/merchants/{merchant_id}", "200"): "MerchantView",
    ("get", "/v1/campaigns/{campaign_id}", "200"): "Campaign",
    ("get", "/v1/terminals/{terminal_id}", "200"): "TerminalView",
    ("get", "/v1/campaigns/{campaign_id}/budget", "200"): "CampaignBudget",
    ("post", "/v1/settlement-runs", "201"): "SettlementRun",
    ("post", "/v1/settlement-runs", "200"): "SettlementRun",
    ("get", "/v1/reconciliation", "200"): "Reconciliation",
    ("post", "/v1/terminals/{terminal_id}/closeouts", "201"): "CloseoutReport",
    ("post", "/v1/campaigns/{campaign_id}/simulate", "200"): "Simulation",
    ("get", "/v1/wallets/{wallet_id}/history", "200"): "WalletHistory",
    ("post", "/v1/quotes", "200"): "Quote",
    ("get", "/v1/directory/merchants", "200"): "DirectoryMerchants",
    ("get", "/v1/directory/campaigns", "200"): "DirectoryCampaigns",
}


def test_typed_2xx_answers(document) -> None:
    for (method, path, status), model in TYPED.items():
        schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"] == f"#/components/schemas/{model}", (method, path)
    for method, path, operation in operations(document):  # every 2xx has a schema (a model or a file type)
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                (content,) = response["content"].values()
                assert content["schema"].get("$ref") or content["schema"].get("type") == "string", (method, path)
    transaction = document["paths"]["/v1/transactions"]["post"]["responses"]["201"]
    assert "Idempotent-Replayed" in transaction["headers"]
    declined = document["paths"]["/v1/transactions"]["post"]["responses"]["422"]  # a remembered decline
    assert "Idempotent-Replayed" in declined["headers"]
    purchase = document["components"]["schemas"]["PurchaseAnswer"]
    assert purchase["examples"][0]["points_awarded"] == 399  # the rating vector refunds.json, t1


def test_request_bodies_say_what_the_server_requires(document) -> None:
    """`type` is the discriminator that picks Purchase or Refund, and the server answers an untagged
    body 422 `invalid_request`: the document requires it too (schemathesis found it optional)."""
    for name in ("Purchase", "Refund"):
        schema = document["components"]["schemas"][name]
        assert "type" in schema["required"] and "default" not in schema["properties"]["type"], name
    # POST /v1/keys takes one of the five roles (422 otherwise): the document lists them.
    role = document["components"]["schemas"]["KeyRequest"]["properties"]["role"]
    assert set(role["enum"]) == {"admin", "finance", "merchant", "terminal", "app"}


def test_a_purchase_lists_at_least_one_item_when_it_lists_any(document) -> None:
    """SPEC §4: items, when given, sum to the amount; the server answers `"items": []` 422
    `invalid_request`, and the document says so for posts and quotes alike."""
    for name in ("Purchase", "QuoteRequest"):
        items = document["components"]["schemas"][name]["properties"]["items"]
        assert {"type": "null"} in items["anyOf"], name  # no items at all: still a purchase
        (array,) = (s for s in items["anyOf"] if s.get("type") == "array")
        assert (array["minItems"], array["maxItems"]) == (1, limits.ITEMS_PER_TRANSACTION_MAX), name


# Keywords pydantic knows and JSON Schema does not: a bound written so is no bound to a client.
NOT_JSON_SCHEMA = {"ge", "le", "gt", "lt"}


def _keys(schema) -> set[str]:
    if isinstance(schema, dict):
        return set(schema) | {k for v in schema.values() for k in _keys(v)}
    if isinstance(schema, list):
        return {k for v in schema for k in _keys(v)}
    return set()


def test_parameters_state_their_bounds_in_json_schema(document) -> None:
    """Integer query parameters are bounded as JSON Schema bounds them (`minimum`, `maximum`), not
    by pydantic's `ge` and `le`, which a client or a fuzzer reading the document ignores."""
    bounded = {}
    for method, path, operation in operations(document):
        for parameter in operation.get("parameters", []):
            schema = parameter.get("schema", {})
            assert not _keys(schema) & NOT_JSON_SCHEMA, (method, path, parameter["name"], schema)
            bounded[(path, parameter["name"])] = schema
    limit = bounded[("/v1/audit", "limit")]
    assert (limit["minimum"], limit["maximum"]) == (1, limits.PAGE_LIMIT_MAX)
    (version,) = (s for s in bounded[("/v1/campaigns/{campaign_id}", "version")]["anyOf"] if "minimum" in s)
    assert (version["minimum"], version["maximum"]) == (1, limits.VERSION_MAX)
    after = bounded[("/v1/events", "after")]
    assert (after["minimum"], after["maximum"]) == (0, limits.SEQUENCE_MAX)


PATCHES = {
    # path: (the full model, the fields a PATCH may not carry)
    "/v1/merchants/{merchant_id}": ("Merchant", {"id"}),
    "/v1/campaigns/{campaign_id}": ("Campaign", {"id", "version"}),
}


def patch_body(document: dict, path: str) -> dict:
    body = document["paths"][path]["patch"]["requestBody"]
    assert body["required"] is True
    return body["content"]["application/json"]["schema"]


def test_patch_bodies_are_partial_models(document) -> None:
    """A PATCH body lists what a client may change, each optional and typed as in the full model,
    and nothing else (schemathesis found them documented as any object)."""
    schemas = document["components"]["schemas"]
    for path, (model, immutable) in PATCHES.items():
        schema = patch_body(document, path)
        full = schemas[model]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, path
        assert not schema.get("required"), path
        assert set(schema["properties"]) == set(full["properties"]) - immutable, path
        for name, field in schema["properties"].items():
            assert "default" not in field, (path, name)  # absent is "unchanged", not a default
            expected = {k: v for k, v in full["properties"][name].items() if k != "default"}
            assert field == expected, (path, name)
        for name in immutable:
            assert f"`{name}`" in schema["description"], (path, name)
    merchant = patch_body(document, "/v1/merchants/{merchant_id}")["properties"]
    assert merchant["fee_bp"]["type"] == "integer" and merchant["fee_bp"]["maximum"] == 10_000
    assert {"$ref": "#/components/schemas/BankAccount"} in merchant["bank_account"]["anyOf"]


def test_patch_bodies_are_what_the_server_takes(server, document) -> None:
    """A field the document allows is taken; one it does not list, a changed id, a string for a
    number, are 422 `invalid_request`. `bank_account: null` leaves the account on file as it is."""
    merchant_fields = patch_body(document, "/v1/merchants/{merchant_id}")["properties"]
    campaign_fields = patch_body(document, "/v1/campaigns/{campaign_id}")["properties"]
    account = {
        "bank_code": "0159",
        "branch_code": "101",
        "account_type": "ordinary",
        "account_number": "7654321",
        "holder_kana": "ﾃｽﾄ",
    }
    with server.client(server.create_key("admin")) as client:
        created = client.post("/v1/merchants", json={"id": "M_PATCH", "name": "パッチ", "merchant_class": "small"})
        assert created.status_code == 201, created.text
        created = client.post(
            "/v1/campaigns",
            json={
                "id": "C_PATCH",
                "name": "パッチ",
                "starts_at": "2030-01-01T00:00:00+09:00",
                "ends_at": "2031-01-01T00:00:00+09:00",
                "tiers": [{"match": {}, "rate_bp": 500}],
            },
        )
        assert created.status_code == 201, created.text

        accepted = {
            "/v1/merchants/M_PATCH": [
                {"fee_bp": 25, "ward_local": True},
                {"name": "パッチ2", "shotengai_id": "S1"},
                {"shotengai_id": None},
                {"bank_account": account},
                {"bank_account": None},
            ],
            "/v1/campaigns/C_PATCH": [
                {"name": "改", "budget": 1000},
                {"budget": None, "stacking": "exclusive", "priority": 3},
                {"ends_at": "2032-01-01T00:00:00+09:00"},
            ],
        }
        for path, bodies in accepted.items():
            fields = merchant_fields if "merchants" in path else campaign_fields
            for body in bodies:
                assert set(body) <= set(fields), body
                answer = client.patch(path, json=body)
                assert answer.status_code == 200, (path, body, answer.text)
        merchant = client.get("/v1/merchants/M_PATCH").json()
        assert merchant["fee_bp"] == 25 and merchant["shotengai_id"] is None
        assert merchant["bank_account_on_file"] is True  # the null left it
        campaign = client.get("/v1/campaigns/C_PATCH").json()
        assert campaign["budget"] is None and campaign["version"] == 4

        rejected = {
            "/v1/merchants/M_PATCH": [{"nickname": "x"}, {"id": "M_OTHER"}, {"fee_bp": "25"}, {"name": None}],
            "/v1/campaigns/C_PATCH": [{"colour": "red"}, {"id": "C_OTHER"}, {"budget": "10"}, {"tiers": []}],
        }
        for path, bodies in rejected.items():
            for body in bodies:
                answer = client.patch(path, json=body)
                assert answer.status_code == 422 and answer.json()["code"] == "invalid_request", (path, body)
