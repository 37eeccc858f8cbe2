"""The pages' cookies (api/routers/ui.py `_set_cookie`) on the in-process application: HttpOnly,
SameSite=Strict, and Secure exactly when the pages come over https."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.finance.support import Ward


def test_the_pages_cookies_are_secure_when_the_pages_come_over_https(ward: Ward):
    """Over https (as the server sees the request: TLS at uvicorn, or a trusted proxy's forwarded
    scheme) the session and CSRF cookies are Secure, so a browser never sends them in clear; over
    plain http (the embedded demo on 127.0.0.1) they could not be, and are not."""
    finance_key = ward.finance["Authorization"].removeprefix("Bearer ")
    for base, secure in (("https://testserver", True), ("http://testserver", False)):
        with TestClient(ward.app, base_url=base, follow_redirects=False) as browser:
            form = browser.get("/ui/login")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token is not None, form.text
            signed_in = browser.post("/ui/login", data={"key": finance_key, "csrf": token.group(1)})
            assert signed_in.status_code == 303, signed_in.text
            cookies = form.headers.get_list("set-cookie") + signed_in.headers.get_list("set-cookie")
            assert {c.split("=")[0] for c in cookies} >= {"setapay_ui_csrf", "setapay_ui_session"}, cookies
            for cookie in cookies:
                assert ("; secure" in cookie.lower()) is secure, cookie
                assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower(), cookie


def test_a_sign_in_on_a_lagging_clock_comes_after_the_last_sign_out(ward: Ward, monkeypatch):
    """A sign-in handled on a clock behind the one that recorded the key's last sign-out (another
    host, a clock stepped back) still makes a session after it, not one refused at once."""
    finance_key = ward.finance["Authorization"].removeprefix("Bearer ")
    with TestClient(ward.app, follow_redirects=False) as browser:
        token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)
        assert token is not None
        assert browser.post("/ui/login", data={"key": finance_key, "csrf": token.group(1)}).status_code == 303
        page = browser.get("/ui/campaigns")
        assert page.status_code == 200
        session_token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert session_token is not None
        assert browser.post("/ui/logout", data={"csrf": session_token.group(1)}).status_code == 303
        lagging = ward.now_us() - 60_000_000  # a minute behind the sign-out
        monkeypatch.setattr(ward.clock, "now_us", lambda: lagging)
        token = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text)
        assert token is not None
        assert browser.post("/ui/login", data={"key": finance_key, "csrf": token.group(1)}).status_code == 303
        assert browser.get("/ui/campaigns").status_code == 200
