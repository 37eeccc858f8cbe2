"""The pure rules of events and webhooks (engine/events.py, engine/webhooks.py)."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from engine import events, webhooks


def test_backoff_doubles_stays_in_its_upper_half_and_is_capped() -> None:
    for attempt in range(1, 12):
        delay = min(3600.0, 5.0 * 2 ** (attempt - 1))
        low, high = events.backoff_s(attempt, 5.0, 3600.0, 0.0), events.backoff_s(attempt, 5.0, 3600.0, 0.999)
        assert low == delay / 2 and delay / 2 < high < delay
    assert events.backoff_s(200, 5.0, 3600.0, 0.5) <= 3600.0


def test_budget_crossings_once_per_threshold_and_only_upwards() -> None:
    budgets = {"C": 1000, "NOBUDGET": None}
    crossed = events.budget_crossings({"C": 700, "NOBUDGET": 0}, {"C": 1000, "NOBUDGET": 10**9}, budgets, 0)
    assert [e.data["threshold_percent"] for e in crossed] == [80, 100]
    assert [e.dedupe_key for e in crossed] == ["budget_threshold:C:1000:80", "budget_threshold:C:1000:100"]
    assert events.budget_crossings({"C": 800}, {"C": 999}, budgets, 0) == []  # reached before
    assert events.budget_crossings({"C": 900}, {"C": 700}, budgets, 0) == []  # going down
    assert [e.data["threshold_percent"] for e in events.budget_crossings({"C": 799}, {"C": 800}, budgets, 0)] == [80]


def test_expiring_windows_do_not_overlap() -> None:
    day = 86_400_000_000
    assert events.expiring_window_us(0, 7) == (0, 7 * day)
    assert events.expiring_window_us(0, 30) == (7 * day, 30 * day)


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.org/",
        "https://localhost/",
        "https://api.localhost/",
        "https://127.0.0.1/",
        "https://10.0.0.1/",
        "https://192.168.1.1:8443/",
        "https://169.254.169.254/",
        "https://100.64.0.1/",
        "https://[::1]/",
        "https://[::ffff:127.0.0.1]/",
        "https://[fd00::1]/",
        "https://0.0.0.0/",
        "https://192.0.0.8/",  # RFC 7600's dummy address: Python 3.11 calls it global
        "https://192.0.0.9/",
        "https://[::ffff:192.0.0.8]/",
        "https://u:p@hooks.example.org/",
        "https:///nohost",
        "https://hooks.example.org:99999/",
        "https://hooks.example.org/#frag",
        "javascript:alert(1)",
        "https://" + "a" * 2048 + ".example/",
        # IPv6 forms that carry a local IPv4 address: IPv4-compatible, IPv4-translated, NAT64's
        # well-known prefix, 6to4; and the local-use NAT64 prefix whatever it carries
        "https://[::127.0.0.1]/",
        "https://[::ffff:0:7f00:1]/",
        "https://[64:ff9b::a00:1]/",
        "https://[2002:a00:1::]/",
        "https://[64:ff9b:1:7f00:0:100:808:808]/",
        "https://[64:ff9b:1::808:808]/",
        # IPv4 in the forms resolvers read differently, and Unicode that folds to a local name
        "https://2130706433/",
        "https://0x7f.1/",
        "https://0177.0.0.1/hook",
        "https://ⓛocalhost/",
    ],
)
def test_urls_refused_in_production(url: str) -> None:
    assert webhooks.url_problem(url, allow_http=False) is not None


def test_urls_accepted() -> None:
    assert webhooks.url_problem("https://hooks.example.org/setapay?x=1", allow_http=False) is None
    assert webhooks.url_problem("https://8.8.8.8/", allow_http=False) is None
    assert webhooks.url_problem("https://[64:ff9b::808:808]/", allow_http=False) is None  # 8.8.8.8 by NAT64
    assert webhooks.url_problem("https://[2606:4700::1111]/", allow_http=False) is None
    assert webhooks.url_problem("https://xn--n3h.example/hook", allow_http=False) is None
    assert webhooks.url_problem("https://hooks.example.org./in", allow_http=False) is None
    assert webhooks.url_problem("http://127.0.0.1:8080/hook", allow_http=True) is None
    assert webhooks.url_problem("ftp://127.0.0.1/", allow_http=True) is not None


def test_signed_headers_verify_with_the_standard_webhooks_verifier_and_only_with_its_secret() -> None:
    secret = webhooks.new_secret()
    assert secret.startswith("whsec_")
    body = '{"id":7,"type":"clawback"}'
    headers = webhooks.signed_headers(secret, "evt_7", int(time.time() * 1_000_000), body)
    assert Webhook(secret).verify(body, headers) == {"id": 7, "type": "clawback"}
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("7", "8"), headers)
