"""The pages' forms refuse what the JSON routes refuse, with the page's own 422 and never a 500
(SPEC §2: no input yields a 500)."""

from __future__ import annotations

import re

import pytest

from tests.ward import Ward


def _form(page: str) -> dict[str, str]:
    """The named inputs of a page's form, with their values (the CSRF token among them)."""
    return dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))


@pytest.mark.parametrize(
    "window",
    [
        ("0001-01-01", "0001-01-02"),
        ("2026-12-01", "9999-12-31"),
        ("0001-01-01", "9999-12-31"),
        ("2026-13-01", "2026-12-31"),
        ("20261201", "2026-12-31"),
        ("", ""),
    ],
)
def test_the_what_if_page_refuses_a_window_outside_the_calendar(ward: Ward, window: tuple[str, str]) -> None:
    client = ward.pages(ward.finance_key)
    try:
        page = client.get("/ui/campaigns/C_POINTBACK/simulate")
        assert page.status_code == 200, page.text
        fields = _form(page.text)
        assert "csrf" in fields and "tier_0" in fields, fields
        answer = client.post("/ui/campaigns/C_POINTBACK/simulate", data={**fields, "from": window[0], "to": window[1]})
        assert answer.status_code == 422, answer.text
        assert "text/html" in answer.headers["content-type"]
        fine = client.post("/ui/campaigns/C_POINTBACK/simulate", data={**fields})
        assert fine.status_code == 200, fine.text
    finally:
        client.close()


def test_a_page_refuses_with_the_status_the_api_gives(ward: Ward) -> None:
    """A settlement of the open period is refused by the page with the API's own status and code."""
    import datetime as dt

    from engine.timeutil import TOKYO

    month = dt.datetime.now(TOKYO).strftime("%Y-%m")
    api = ward.server.client(ward.finance_key)
    client = ward.pages(ward.finance_key)
    try:
        by_api = api.post("/v1/settlement-runs", json={"period": month})
        csrf = _form(client.get("/ui/settlement-runs").text)["csrf"]
        by_page = client.post("/ui/settlement-runs", data={"period": month, "csrf": csrf})
    finally:
        client.close()
        api.close()
    assert (by_api.status_code, by_api.json()["code"]) == (422, "period_open"), by_api.text
    assert by_page.status_code == 422 and 'role="alert"' in by_page.text, by_page.text


def test_the_grant_form_takes_points_in_digits_only(ward: Ward) -> None:
    """Full-width digits (as a Japanese input method types them) are the same digits; what Python's
    `int` would also read ('1_0' as 10, '+5', other scripts' digits, '2.0') is refused, and grants
    nothing."""
    client = ward.pages(ward.finance_key)
    try:
        for typed in ("1_0", "+5", "\u0661\u0662", "2.0", "1e1", "", "10\u00b2", "\u2460\u24ea", "\u00b9\u2070"):
            fields = _form(client.get("/ui/grants").text)
            before = ward.server.postings()
            answer = client.post(
                "/ui/grants",
                data={
                    **fields,
                    "wallet_id": "W_FORM_DIGITS",
                    "campaign_id": "C_POINTBACK",
                    "points": typed,
                    "reason": "x",
                },
            )
            assert answer.status_code == 422 and 'role="alert"' in answer.text, (typed, answer.text)
            assert ward.server.postings() == before, typed
        fields = _form(client.get("/ui/grants").text)
        answer = client.post(
            "/ui/grants",
            data={
                **fields,
                "wallet_id": "W_FORM_DIGITS",
                "campaign_id": "C_POINTBACK",
                "points": "\u3000\uff12\uff15 ",
                "reason": "x",
            },
        )
        assert answer.status_code == 201, answer.text
        assert 'data-field="granted">25<' in answer.text.replace(" ", ""), answer.text
    finally:
        client.close()


def test_an_admin_sees_campaigns_to_simulate_not_their_budgets(ward: Ward) -> None:
    """The pages give each role what the API does (SPEC §6): a campaign's budget and burn are
    finance's (`GET /v1/campaigns/{id}/budget`), a merchant's transactions and statements its
    own and finance's. An admin's campaign list links each campaign to its what-if page, with
    no figure; the budget page and the merchant pages are 403 to it (they were 200)."""
    admin, finance = ward.pages(ward.server.admin_key), ward.pages(ward.finance_key)
    try:
        listed = admin.get("/ui/campaigns")
        assert listed.status_code == 200, listed.text
        assert 'href="/ui/campaigns/C_POINTBACK/simulate"' in listed.text
        assert 'data-field="' not in listed.text and 'href="/ui/campaigns/C_POINTBACK"' not in listed.text
        assert admin.get("/ui/campaigns/C_POINTBACK/simulate").status_code == 200
        for path in ("/ui/campaigns/C_POINTBACK", "/ui/merchants/M_SHOTEN", "/ui/merchants/M_SHOTEN/transactions"):
            assert admin.get(path).status_code == 403, path
            assert finance.get(path).status_code == 200, path
        figures = finance.get("/ui/campaigns").text
        assert 'data-field="issued"' in figures and 'href="/ui/campaigns/C_POINTBACK"' in figures
    finally:
        admin.close()
        finance.close()


def test_the_what_if_form_takes_rates_and_caps_in_digits_only(ward: Ward) -> None:
    """The what-if form reads its rates, caps and budget as the grant form reads points: Python's
    `int` took '1_0' as 10, and Arabic-Indic and other scripts' digits; they are the page's 422
    naming the field. Full-width digits are the same digits, as on the grant form."""
    client = ward.pages(ward.finance_key)
    try:
        fields = _form(client.get("/ui/campaigns/C_POINTBACK/simulate").text)
        for name in ("tier_0", "per_wallet_cap", "budget"):
            for typed in ("1_0", "+5", "\u0661\u0662", "2.0", "10\u00b2", "\u2460\u24ea", "-1"):
                answer = client.post("/ui/campaigns/C_POINTBACK/simulate", data={**fields, name: typed})
                assert answer.status_code == 422 and 'role="alert"' in answer.text, (name, typed, answer.text)
                assert name in answer.text, (name, typed)
        typed = {"tier_0": "\uff11\uff10\uff10", "per_wallet_cap": "\u3000\uff15\uff10\uff10 ", "budget": ""}
        answer = client.post("/ui/campaigns/C_POINTBACK/simulate", data={**fields, **typed})
        assert answer.status_code == 200, answer.text
    finally:
        client.close()


def test_a_form_that_cannot_be_read_is_a_page_saying_so(ward: Ward) -> None:
    """More than 1,000 fields, or multipart without its boundary: Starlette cannot read the form,
    and a page client gets an HTML 400 page saying so (it got the JSON API's problem document,
    `malformed_json`, "The body is not valid JSON"); nothing is granted."""
    client = ward.pages(ward.finance_key)
    try:
        fields = _form(client.get("/ui/grants").text)
        many = {**fields, **{f"extra_{i}": "1" for i in range(1_001)}}
        unreadable = [
            (
                "/ui/grants",
                {"content": "&".join(f"{k}={v}" for k, v in many.items()).encode()},
                "application/x-www-form-urlencoded",
            ),
            ("/ui/grants", {"content": b"points=5"}, "multipart/form-data"),
            ("/ui/login", {"content": b"key=x"}, "multipart/form-data"),
        ]
        for path, body, content_type in unreadable:
            before = ward.server.postings()
            answer = client.post(path, headers={"Content-Type": content_type}, **body)
            assert answer.status_code == 400, (path, content_type, answer.text)
            assert answer.headers["content-type"].startswith("text/html"), answer.headers
            assert 'role="alert"' in answer.text and "フォームを読み取れませんでした" in answer.text, answer.text
            assert ward.server.postings() == before
        english = client.post("/ui/grants?lang=en", headers={"Content-Type": "multipart/form-data"}, content=b"x")
        assert english.status_code == 400 and "The form could not be read" in english.text, english.text
    finally:
        client.close()
