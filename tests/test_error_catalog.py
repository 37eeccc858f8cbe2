"""One catalog of error codes (engine/errors.py `CATALOG`): every code the code can answer is in it,
with the status it is answered with.

The scan reads the source of `engine/` and `api/` for the grep-able literals that make a
problem document: `EngineError(["status",] "code"` (and `super().__init__("code"` in its
subclasses), `problem(status, "code"`, `decline("code"` / `_decline("code"`, `"code": "code"`;
plus the kernel's decline codes (`engine.rating.columns.STATUS_CODES`). A literal status next
to a code must be the catalog's. Then a small app answers a few of them over HTTP.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from engine.errors import CATALOG, EngineError, decline, problem, status_of
from engine.rating.columns import STATUS_CODES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("engine").rglob("*.py"), *ROOT.joinpath("api").rglob("*.py")])

_PATTERNS = [
    re.compile(r'EngineError\(\s*(?:(?P<status>\d{3}),\s*)?"(?P<code>[a-z_]+)"'),
    re.compile(r'super\(\)\.__init__\(\s*(?:(?P<status>\d{3}),\s*)?"(?P<code>[a-z_]+)"'),
    re.compile(r'\bproblem\(\s*(?P<status>\d{3}),\s*"(?P<code>[a-z_]+)"'),
    re.compile(r'\b_?decline\(\s*"(?P<code>[a-z_]+)"'),
    re.compile(r'"code":\s*"(?P<code>[a-z_]+)"'),
]


def raised_codes() -> list[tuple[str, int | None, str]]:
    """(where, literal status or None, code) for every grep-able code in engine/ and api/."""
    found = []
    for path in SOURCES:
        if path.name == "errors.py" and path.parent.name == "engine":
            continue  # the catalog itself
        text = path.read_text()
        for pattern in _PATTERNS:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                status = m.groupdict().get("status")
                found.append((f"{path.relative_to(ROOT)}:{line}", int(status) if status else None, m["code"]))
    return found


def test_the_scan_finds_the_raise_sites() -> None:
    codes = {code for _, _, code in raised_codes()}
    # a sanity floor: if the patterns stop matching, this test says so instead of passing vacuously
    assert {
        "not_found",
        "forbidden",
        "unauthenticated",
        "malformed_json",
        "header_duplicated",
        "idempotency_key_missing",
        "receipt_already_used",
        "rate_limited",
        "body_too_large",
    } <= codes


def test_every_raised_code_is_in_the_catalog_with_its_status() -> None:
    missing = [(where, code) for where, _, code in raised_codes() if code not in CATALOG]
    assert not missing, f"codes not in engine/errors.py CATALOG: {missing}"
    wrong = [
        (where, status, code, CATALOG[code].status)
        for where, status, code in raised_codes()
        if status is not None and status != CATALOG[code].status
    ]
    assert not wrong, f"a literal status differs from the catalog's: {wrong}"


def test_the_kernels_decline_codes_are_in_the_catalog() -> None:
    for code in STATUS_CODES.values():
        if code is not None:
            assert code in CATALOG, code
            assert 400 <= CATALOG[code].status < 500


def test_the_catalog_is_well_formed() -> None:
    for code, (status, title) in CATALOG.items():
        assert re.fullmatch(r"[a-z][a-z_]*", code)
        assert 400 <= status <= 599 and title, code


@pytest.mark.parametrize("code", sorted(CATALOG))
def test_engine_error_and_declines_take_the_catalogs_status(code: str) -> None:
    assert EngineError(code).status == status_of(code)
    assert EngineError(code).problem()["status"] == status_of(code)
    assert EngineError(code).problem()["title"] == CATALOG[code].title
    status, body = decline(code, "why")
    assert status == body["status"] == status_of(code) and body["code"] == code and body["detail"] == "why"
    assert problem(status_of(code), code)["title"] == CATALOG[code].title


def test_the_older_form_still_works() -> None:
    e = EngineError(404, "not_found", "transaction T is not known", errors=[])
    assert (e.status, e.code, e.detail, e.extra) == (404, "not_found", "transaction T is not known", {"errors": []})


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from api.app import create_app
    from engine.settings import Settings

    url = f"sqlite:///{tmp_path_factory.mktemp('catalog')}/catalog.db"
    app = create_app(Settings(database_url=url))
    with TestClient(app) as c:
        c.admin = {"Authorization": f"Bearer {app.state.config.create_key('admin')}"}  # type: ignore[attr-defined]
        c.finance = {"Authorization": f"Bearer {app.state.config.create_key('finance')}"}  # type: ignore[attr-defined]
        yield c


def _requests(c):
    """(expected code, a request that must be answered with it)."""
    as_json = {**c.admin, "Content-Type": "application/json"}
    return [
        ("unauthenticated", lambda: c.get("/v1/merchants")),
        ("forbidden", lambda: c.get("/v1/merchants", headers=c.finance)),
        ("not_found", lambda: c.get("/v1/merchants/M_NONE", headers=c.admin)),
        ("not_found", lambda: c.get("/v1/nowhere")),
        ("not_found", lambda: c.get("/v1/wallets/W%2F1/points", headers=c.finance)),
        ("http_error", lambda: c.delete("/healthz")),
        ("invalid_request", lambda: c.get("/v1/merchants/bad%0A", headers=c.admin)),
        ("malformed_json", lambda: c.post("/v1/merchants", content=b"{", headers=as_json)),
        ("malformed_json", lambda: c.post("/v1/merchants", content=b'{"a":1,"a":2}', headers=as_json)),
        ("header_duplicated", lambda: c.get("/v1/merchants", headers=[("authorization", "Bearer x")] * 2)),
        ("body_too_large", lambda: c.post("/v1/merchants", content=b" " * 10_000_000, headers=c.admin)),
        (
            "unsupported_media_type",
            lambda: c.post("/v1/merchants", content=b"{}", headers={**as_json, "Content-Encoding": "gzip"}),
        ),
        (
            "unsupported_media_type",
            lambda: c.post("/v1/merchants", content=b"{}", headers={**c.admin, "Content-Type": "text/plain"}),
        ),
        (
            "idempotency_key_missing",
            lambda: c.post(
                "/v1/grants",
                json={"wallet_id": "W1", "campaign_id": "C1", "points": 1, "reason": "r"},
                headers=c.finance,
            ),
        ),
        (
            "idempotency_key_invalid",
            lambda: c.post(
                "/v1/grants",
                json={"wallet_id": "W1", "campaign_id": "C1", "points": 1, "reason": "r"},
                headers={**c.finance, "Idempotency-Key": "k" * 1000},
            ),
        ),
        (
            "not_found",
            lambda: c.post(
                "/v1/grants",
                json={"wallet_id": "W1", "campaign_id": "C1", "points": 1, "reason": "r"},
                headers={**c.finance, "Idempotency-Key": "k1"},
            ),
        ),
    ]


def test_the_api_answers_each_code_with_the_catalogs_status(client) -> None:
    for code, send in _requests(client):
        answer = send()
        assert answer.headers["content-type"] == "application/problem+json", (code, answer.text)
        body = answer.json()
        assert body["code"] == code, (code, body)
        assert answer.status_code == body["status"] == status_of(code), (code, body)
        if code != "http_error":
            assert body["title"] == CATALOG[code].title
