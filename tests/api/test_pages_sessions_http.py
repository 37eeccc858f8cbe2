"""Signing out of the pages ends the key's sessions everywhere: a copy of the session cookie (or
another browser signed in with the same key) is refused from then on, in every process, since
each page load looks the key up and compares the session's instant with the key's last sign-out.
Signing in again works at once."""

from __future__ import annotations

import re

import httpx

from tests.ward import Ward


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def test_signing_out_ends_every_copy_of_the_session(ward: Ward) -> None:
    key = ward.finance_key
    browser, other_browser = ward.pages(key), ward.pages(key)
    copy = httpx.Client(base_url=ward.server.base_url, follow_redirects=False, cookies=dict(browser.cookies))
    try:
        for client in (browser, other_browser, copy):
            assert client.get("/ui/campaigns").status_code == 200
        page = browser.get("/ui/campaigns")
        out = browser.post("/ui/logout", data={"csrf": _csrf(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login", out.text
        for client in (browser, other_browser, copy):
            answer = client.get("/ui/campaigns")
            assert answer.status_code == 303 and answer.headers["location"].endswith("/ui/login"), answer.text
        again = ward.pages(key)
        try:
            assert again.get("/ui/campaigns").status_code == 200  # a new sign-in is not ended by the old sign-out
        finally:
            again.close()
        assert copy.get("/ui/campaigns").status_code == 303  # the old copy stays out
    finally:
        for client in (browser, other_browser, copy):
            client.close()
