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
