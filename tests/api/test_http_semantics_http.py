"""HTTP's own rules over a real server, on SQLite and PostgreSQL: methods and media types.

- HEAD is answered as GET is, without the body, on every route that has GET (a load balancer's
  `curl -I /healthz` was 405); a 405 says in `Allow` which methods the path has.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.ward import Ward

PROBLEM_JSON = "application/problem+json"


def _get_paths() -> list[str]:
    """Every GET route of the application, its path parameters filled with an id of the ward
    (or one it does not have: the answer is whatever GET's is, HEAD must give the same)."""
    from api.app import ROUTERS

    filled = {"merchant_id": "M_SHOTEN", "campaign_id": "C_POINTBACK", "download": "statement.csv"}
    paths = []
    for module in ROUTERS:
        for route in module.router.routes:
            if isinstance(route, APIRoute) and "GET" in route.methods:
                paths.append(re.sub(r"{(\w+)}", lambda m: filled.get(m.group(1), "X1"), route.path))
    return sorted(set(paths))


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
