"""Page loads under /ui/ count against the key's request rate, as its API calls do: over the limit a
signed-in key gets a 429 page (in Japanese, with `Retry-After`) and the page's store calls are not
made; another key's pages are untouched. A real server on each backend with a limit of 30 a minute."""

from __future__ import annotations

import pytest

from tests.ward import Ward

LIMIT = 30


@pytest.fixture(scope="module")
def limited(backend, start_server):
    w = Ward(start_server(backend, env={"SETAPAY_RATE_LIMIT_PER_KEY": f"{LIMIT}/minute"}))
    try:
        yield w
    finally:
        w.close()


def test_page_loads_over_the_keys_rate_answer_429(limited: Ward) -> None:
    shoten = limited.pages(limited.key("merchant", "M_SHOTEN"))  # the sign-in counts once
    try:
        answers = [shoten.get("/ui/merchants/M_SHOTEN") for _ in range(LIMIT + 2)]
        other = limited.pages(limited.key("merchant", "M_CONV"))
        try:
            other_page = other.get("/ui/merchants/M_CONV")
        finally:
            other.close()
    finally:
        shoten.close()
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * (LIMIT - 1) + [429] * 3, statuses
    refused = answers[-1]
    assert int(refused.headers["Retry-After"]) >= 1
    assert "このキーでのリクエストが多すぎます" in refused.text
    assert "このページは表示できません (429)" in refused.text, "the error page, not the merchant's"
    assert answers[0].text.count("<table") > refused.text.count("<table") == 0
    assert other_page.status_code == 200, "another key's pages are not limited by this one's"
