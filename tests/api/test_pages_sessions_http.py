"""Signing out of the pages ends the key's sessions everywhere: a copy of the session cookie (or
another browser signed in with the same key) is refused from then on, in every process, since
each page load looks the key up and compares the session's instant with the key's last sign-out.
Signing in again works at once. And the pages' answers are neither cached nor framed."""

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


def test_pages_and_downloads_are_neither_cached_nor_framed(ward: Ward) -> None:
    """Every answer of the pages (a page, a refusal's redirect, a form's 422) carries the headers
    that keep it out of caches and other sites' frames."""
    from api.routers.ui import PAGE_HEADERS

    browser = ward.pages(ward.finance_key)
    try:
        answers = [
            httpx.get(ward.server.base_url + "/ui/login"),  # the sign-in form, answered outside `_guarded`
            browser.get("/ui/campaigns"),
            httpx.get(ward.server.base_url + "/ui/campaigns", follow_redirects=False),  # to sign-in
            browser.post("/ui/campaigns/C_POINTBACK/simulate", data={"csrf": _csrf(browser.get("/ui/campaigns").text)}),
        ]
    finally:
        browser.close()
    assert [a.status_code for a in answers] == [200, 200, 303, 422]
    for answer in answers:
        for name, value in PAGE_HEADERS.items():
            assert answer.headers.get(name) == value, (answer.request.url, name, answer.headers)


def test_a_csrf_pair_made_for_another_session_is_refused(ward: Ward) -> None:
    """A CSRF cookie and its token are bound to the session they were made for: a pair taken from
    a signed-out visit (or another sign-in) and planted in a signed-in browser is refused, so
    writing a cookie into the victim's browser is not enough to forge its forms."""
    with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as stranger:
        login = stranger.get("/ui/login")
        planted = {"cookie": stranger.cookies["setapay_ui_csrf"], "token": _csrf(login.text)}
    browser = ward.pages(ward.finance_key)
    other = ward.pages(ward.finance_key)  # another sign-in of the same key: its own pair
    try:
        token = _csrf(other.get("/ui/campaigns").text)  # the page makes the sign-in's own pair
        theirs = {"cookie": other.cookies["setapay_ui_csrf"], "token": token}
        for pair in (planted, theirs):
            forged = httpx.Client(
                base_url=ward.server.base_url,
                follow_redirects=False,
                cookies={
                    "setapay_ui_session": browser.cookies["setapay_ui_session"],
                    "setapay_ui_csrf": pair["cookie"],
                },
            )
            with forged:
                answer = forged.post("/ui/logout", data={"csrf": pair["token"]})
            assert answer.status_code == 403, answer.text
        assert browser.get("/ui/campaigns").status_code == 200  # still signed in: nothing was posted
        own = browser.post("/ui/logout", data={"csrf": _csrf(browser.get("/ui/campaigns").text)})
        assert own.status_code == 303
    finally:
        browser.close()
        other.close()


def test_an_ended_session_signs_nobody_out(ward: Ward) -> None:
    """A session already ended (a copy kept by someone, a stale tab) cannot end the sessions made
    after it: its sign-out is answered and ends nothing."""
    key = ward.finance_key
    browser = ward.pages(key)
    copy = httpx.Client(base_url=ward.server.base_url, follow_redirects=False, cookies=dict(browser.cookies))
    try:
        assert browser.post("/ui/logout", data={"csrf": _csrf(browser.get("/ui/campaigns").text)}).status_code == 303
        again = ward.pages(key)
        try:
            assert copy.get("/ui/campaigns").status_code == 303  # the copy is out
            stale_token = _csrf(copy.get("/ui/login").text)  # the form the old session is still shown
            assert copy.post("/ui/logout", data={"csrf": stale_token}).status_code == 303
            assert again.get("/ui/campaigns").status_code == 200, "an ended session signed a new one out"
        finally:
            again.close()
    finally:
        browser.close()
        copy.close()


def test_signing_in_from_a_form_shown_without_the_session_works(ward: Ward) -> None:
    """A sign-in form reached from another site is shown without the session cookie (SameSite=
    Strict), while the sign-in post, same-site, carries it: the form's own token is accepted."""
    browser = ward.pages(ward.finance_key)
    try:
        with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as elsewhere:
            form = elsewhere.get("/ui/login")
            token, cookie = _csrf(form.text), elsewhere.cookies["setapay_ui_csrf"]
        browser.cookies.set("setapay_ui_csrf", cookie, path="/ui")
        signed_in = browser.post("/ui/login", data={"key": ward.finance_key, "csrf": token})
        assert signed_in.status_code == 303, signed_in.text
        assert browser.get("/ui/campaigns").status_code == 200
    finally:
        browser.close()


def test_a_csrf_token_of_any_text_is_a_403_never_a_500(ward: Ward) -> None:
    """Tokens are compared in constant time as bytes: non-ASCII text, signed in or not, is refused."""
    browser = ward.pages(ward.finance_key)
    try:
        with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as stranger:
            stranger.get("/ui/login")
            for token in ("é", "証", "\u0000", "a" * 5000):
                assert stranger.post("/ui/login", data={"key": "x", "csrf": token}).status_code == 403
                assert browser.post("/ui/logout", data={"csrf": token}).status_code == 403
                assert browser.post("/ui/login", data={"key": "x", "csrf": token}).status_code == 403
        assert browser.get("/ui/campaigns").status_code == 200
    finally:
        browser.close()


def test_the_sign_in_form_tells_no_one_whether_a_key_is_real(ward: Ward) -> None:
    """A terminal's or the app's real key cannot sign in to the pages and is answered exactly as a
    made-up key (401, the same page), so the form is no oracle for a stolen key."""
    with httpx.Client(base_url=ward.server.base_url, follow_redirects=False) as browser:
        token = _csrf(browser.get("/ui/login").text)
        answers = [
            browser.post("/ui/login", data={"key": key, "csrf": token})
            for key in (ward.terminal_key("T_SHOTEN_1"), ward.key("app"), "sk_made_up_" + "x" * 30)
        ]
        assert [a.status_code for a in answers] == [401, 401, 401]
        assert len({a.text for a in answers}) == 1
        assert browser.post("/ui/login", data={"key": ward.finance_key, "csrf": token}).status_code == 303


def test_every_worker_of_a_server_takes_the_cookies_another_signed(start_server) -> None:
    """With no SETAPAY_UI_SESSION_SECRET (as docker-compose.yml runs two workers), each worker signed
    the pages' cookies with a secret of its own: a sign-in whose form another worker served was
    403, and a session bounced to the sign-in form whenever a page reached the other worker. The
    secret is now derived from the data key, which every worker holds alike. Each request here
    opens a connection of its own, so the workers share them out."""
    ward = Ward(start_server("sqlite", workers=2))
    no_keep_alive = httpx.Limits(max_keepalive_connections=0)
    for _ in range(8):
        with httpx.Client(base_url=ward.server.base_url, follow_redirects=False, limits=no_keep_alive) as browser:
            form = browser.get("/ui/login")
            assert form.status_code == 200
            signed_in = browser.post("/ui/login", data={"key": ward.finance_key, "csrf": _csrf(form.text)})
            assert signed_in.status_code == 303 and signed_in.headers["location"] != "/ui/login", signed_in.text
            assert [browser.get("/ui/campaigns").status_code for _ in range(4)] == [200] * 4
