"""HTTP's own rules over a real server, on SQLite and PostgreSQL: methods and media types.

- HEAD is answered as GET is, without the body, on every route that has GET (a load balancer's
  `curl -I /healthz` was 405); a 405 says in `Allow` which methods the path has.
- A body sent as JSON that is not JSON is 400 `malformed_json` on every route that authenticates
  a key, one that reads no body included (POST /v1/keys/{id}/revoke revoked the key), and 415
  `unsupported_media_type` on the pages (they read forms); it writes nothing.
- A body with a content coding (`Content-Encoding: gzip`: a grant was taken as plain JSON), or one
  not sent as JSON to a route that reads JSON (text/plain, a form, multipart, no Content-Type:
  422 about fields it never had), is 415 `unsupported_media_type` and writes nothing; the pages'
  forms are still read.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import uuid

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text

from api.strict import dependants, roles_of
from engine.store.models import Base
from tests.ward import Ward

PROBLEM_JSON = "application/problem+json"


FILLED = {"merchant_id": "M_SHOTEN", "campaign_id": "C_POINTBACK", "terminal_id": "T_SHOTEN_1"}


def _routes(*methods: str) -> list[tuple[str, str]]:
    """(method, path) of every route of the application with one of `methods`, its path
    parameters filled with an id of the ward (or one it does not have)."""
    from api.app import ROUTERS

    found = set()
    for module in ROUTERS:
        for route in module.router.routes:
            for method in set(methods) & (route.methods if isinstance(route, APIRoute) else set()):
                found.add((method, re.sub(r"{(\w+)}", lambda m: FILLED.get(m.group(1), "X1"), route.path)))
    return sorted(found)


def _get_paths() -> list[str]:
    """Every GET route's path: the answer is whatever GET's is, HEAD must give the same."""
    return [path for _, path in _routes("GET")]


def _written(server) -> dict[str, int]:
    """The rows of every table, and the keys revoked: what a refused request must leave as it was."""
    with server.db.connect() as connection:
        counts = {
            t.name: connection.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables
        }
        counts["revoked"] = connection.execute(
            text("SELECT count(*) FROM api_key WHERE revoked_at_us IS NOT NULL")
        ).scalar_one()
    return counts


def test_head_of_healthz_is_its_get_without_a_body(ward: Ward) -> None:
    with httpx.Client(base_url=ward.server.base_url) as anonymous:
        got, head = anonymous.get("/healthz"), anonymous.head("/healthz")
    assert (got.status_code, head.status_code) == (200, 200), head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


@pytest.mark.parametrize("path", _get_paths())
def test_head_is_answered_as_get_on_every_get_route(ward: Ward, path: str) -> None:
    with ward.server.client(ward.finance_key) as finance:
        got = finance.get(path)
        time.sleep(0.05)  # under the key's rate limit, whatever the order of the tests
        head = finance.head(path)
    assert head.status_code == got.status_code != 405, (path, got.status_code, head.status_code)
    assert head.content == b"", path
    assert head.headers.get("content-type") == got.headers.get("content-type"), path


@pytest.mark.parametrize(
    "method, path, allow",
    [
        ("DELETE", "/v1/merchants", "GET, HEAD, POST"),  # two routes: GET and POST
        ("PUT", "/v1/merchants/M_SHOTEN", "GET, HEAD, PATCH"),
        ("POST", "/healthz", "GET, HEAD"),
        ("GET", "/v1/transactions", "POST"),
        ("HEAD", "/v1/transactions", "POST"),
        ("DELETE", "/v1/webhooks", "GET, HEAD, POST"),
    ],
)
def test_a_405_says_which_methods_the_path_has(ward: Ward, method: str, path: str, allow: str) -> None:
    with ward.server.client(ward.server.admin_key) as admin:
        r = admin.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.headers["content-type"] == PROBLEM_JSON
    if method != "HEAD":
        assert r.json()["code"] == "http_error"


NOT_JSON = {"brackets": b"[[[[", "cut": b'{"a":', "not_utf8": b'{"a": "\xff"}', "text": b"hello"}
WRITES = _routes("POST", "PUT", "PATCH", "DELETE")


def _roles(method: str, path: str) -> frozenset[str] | None:
    """The roles the route of `method` and `path` (filled) admits (`api.deps.role`), None when it
    checks no role."""
    from api.app import ROUTERS

    for module in ROUTERS:
        for route in module.router.routes:
            pattern = re.sub(r"{(\w+)}", lambda m: re.escape(FILLED.get(m.group(1), "X1")), route.path)
            if isinstance(route, APIRoute) and method in route.methods and re.fullmatch(pattern, path):
                return next((r for d in dependants(route.dependant) if (r := roles_of(d.call))), None)
    raise AssertionError(f"no route {method} {path}")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/merge-patch+json"]
)
def test_a_body_sent_as_json_that_is_not_json_is_400_on_every_route(ward: Ward, content_type: str) -> None:
    """Parsed once the key holds and its role is the route's: each route is sent it with a key of
    a role it admits (admin or finance, the roles whose routes these are beside the terminals'),
    and with a key of another role, 403 with the body never parsed."""
    headers = {"Content-Type": content_type}
    keys = {role: ward.key(role) for role in ("admin", "finance")}
    before = _written(ward.server)
    for method, path in WRITES:
        roles = _roles(method, path)
        allowed = next((role for role in keys if roles is None or role in roles), None)
        other = next((role for role in keys if roles is not None and role not in roles), None)
        sent = [(allowed, 400, "malformed_json")] if allowed else []
        if other is not None:
            sent.append((other, 403, "forbidden"))
        if path.startswith("/ui/"):  # the pages read forms and authenticate no key: not parsed there
            sent = [("admin", 415, "unsupported_media_type")]
        assert sent, (method, path)
        for role, status, code in sent:
            with ward.server.client(keys[role]) as client:
                for name, raw in NOT_JSON.items():
                    r = client.request(method, path, content=raw, headers=headers)
                    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM_JSON), (
                        method,
                        path,
                        role,
                        name,
                        r.text,
                    )
                    assert r.json()["code"] == code, (method, path, role, name, r.text)
    assert _written(ward.server) == before


def test_a_route_that_reads_no_body_does_not_act_on_one_that_is_not_json(ward: Ward) -> None:
    """POST /v1/keys/{id}/revoke revoked the key whatever its body; sent `[[[[` as JSON, it is
    refused and the key still works."""
    finance_key = ward.server.create_key("finance")
    key_id = finance_key.split("_")[2]
    with ward.server.client(ward.server.admin_key) as admin:
        r = admin.post(f"/v1/keys/{key_id}/revoke", content=b"[[[[", headers={"Content-Type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (400, "malformed_json"), r.text
    with ward.server.client(finance_key) as finance:
        assert finance.get("/v1/campaigns").status_code == 200
    with ward.server.client(ward.server.admin_key) as admin:
        assert admin.post(f"/v1/keys/{key_id}/revoke").status_code == 200  # without a body, as ever


GRANT = {"wallet_id": "W_MEDIA", "campaign_id": "C_POINTBACK", "points": 5, "reason": "省エネ家電の買い替え"}


def _keys_made(ward: Ward) -> Ward:
    """The ward with the keys these tests use made already (made later, they are rows written)."""
    ward["finance"], ward.server.admin_key  # noqa: B018 - made when first asked for
    return ward


def _grant(ward: Ward, content: bytes, **headers: str) -> httpx.Response:
    return ward["finance"].post("/v1/grants", content=content, headers={"Idempotency-Key": uuid.uuid4().hex, **headers})


def _refused_415(r: httpx.Response) -> None:
    assert (r.status_code, r.headers["content-type"]) == (415, PROBLEM_JSON), r.text
    assert r.json()["code"] == "unsupported_media_type", r.text


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "identity, gzip", "GZIP", "x-custom"])
def test_a_body_with_a_content_coding_is_415(ward: Ward, coding: str) -> None:
    plain = json.dumps(GRANT).encode()
    before = _written(_keys_made(ward).server)
    for content in (plain, gzip.compress(plain)):
        r = _grant(ward, content, **{"Content-Type": "application/json", "Content-Encoding": coding})
        _refused_415(r)
        assert r.headers["accept-encoding"] == "identity"
    with ward.server.client(ward.server.admin_key) as admin:  # any route, one that reads no body too
        _refused_415(admin.post("/v1/keys/X1/revoke", headers={"Content-Encoding": coding}))
    assert _written(ward.server) == before


def test_a_body_sent_as_it_is_is_taken(ward: Ward) -> None:
    plain = json.dumps(GRANT).encode()
    for coding in ("identity", None):
        headers = {"Content-Type": "application/json", **({"Content-Encoding": coding} if coding else {})}
        assert _grant(ward, plain, **headers).status_code == 201


NOT_SENT_AS_JSON = {
    "text": {"Content-Type": "text/plain"},
    "form": {"Content-Type": "application/x-www-form-urlencoded"},
    "multipart": {"Content-Type": "multipart/form-data; boundary=x"},
    "xml": {"Content-Type": "application/xml"},
    "none": {},
}


@pytest.mark.parametrize("headers", NOT_SENT_AS_JSON.values(), ids=NOT_SENT_AS_JSON.keys())
def test_a_body_not_sent_as_json_to_a_json_route_is_415(ward: Ward, headers: dict[str, str]) -> None:
    before = _written(_keys_made(ward).server)
    _refused_415(_grant(ward, json.dumps(GRANT).encode(), **headers))
    with ward.server.client(ward.server.admin_key) as admin:
        merchant = {"id": "M_MEDIA", "name": "店", "merchant_class": "small"}
        _refused_415(admin.post("/v1/merchants", content=json.dumps(merchant).encode(), headers=headers))
        _refused_415(admin.patch("/v1/merchants/M_SHOTEN", content=b'{"fee_bp": 7}', headers=headers))
    assert _written(ward.server) == before


def test_the_pages_forms_are_still_read(ward: Ward) -> None:
    page = ward.pages(ward.finance_key)  # the sign-in form, posted as a browser does
    try:
        r = page.get("/ui/", follow_redirects=True)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], r.text
    finally:
        page.close()
