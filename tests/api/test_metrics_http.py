"""Prometheus metrics (issue 14) scraped from a real `setapay serve --workers 2`: whichever worker
answers the scrape, the counts are every worker's added up; the budget meters are the database's."""

from __future__ import annotations

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.ward import Ward, purchase

POSTS = 60


def _samples(text: str, name: str) -> dict[str, float]:
    """`name{labels} value` lines of an exposition: labels text → value."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


@pytest.fixture(scope="module")
def ward(start_server, tmp_path_factory):
    metrics_dir = tmp_path_factory.mktemp("metrics")
    made = Ward(start_server("sqlite", env={"SETAPAY_METRICS_DIR": str(metrics_dir)}, workers=2))
    made.metrics_dir = metrics_dir
    yield made
    made.close()


def test_two_workers_add_up(ward):
    key = ward.terminal_key("T_SHOTEN_1")

    def post(i: int) -> int:
        # A connection of its own each time, so both workers take some.
        with ward.server.terminal_client(key) as client:
            body = purchase("T_SHOTEN_1", f"WM{i}", 1000 + i)
            answer = client.post(
                "/v1/transactions", json=body, headers={"Idempotency-Key": uuid.uuid4().hex, "Connection": "close"}
            )
            return answer.status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(post, range(POSTS))) == [201] * POSTS
    # Both workers wrote samples: one counter file per process id.
    pids = {p.stem.rsplit("_", 1)[-1] for p in ward.metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 2, pids

    # A retry (replayed) and a purchase with a forged receipt (refused).
    retry = {"Idempotency-Key": "metrics-retry"}
    terminal = ward.terminal("T_SHOTEN_1")
    body = purchase("T_SHOTEN_1", "WM-retry", 1500)
    assert terminal.post("/v1/transactions", json=body, headers=retry).status_code == 201
    assert terminal.post("/v1/transactions", json=body, headers=retry).headers["idempotent-replayed"] == "true"
    forged = {**purchase("T_SHOTEN_1", "WM-forged", 1500), "receipt": "eyJhbGciOiJIUzI1NiJ9.e30.forged"}
    assert terminal.post("/v1/transactions", json=forged, headers={"Idempotency-Key": "f1"}).status_code == 422

    campaigns = ("C_POINTBACK", "C_ETHICAL", "C_DAILY", "C_LARGE_ONLY")
    budgets = {c: ward["finance"].get(f"/v1/campaigns/{c}/budget").json() for c in campaigns}
    assert any(b["remaining"] is not None for b in budgets.values())
    assert budgets["C_POINTBACK"]["net_issued"] > 0
    for _ in range(6):  # several scrapes: each may be answered by either worker, all agree
        with httpx.Client(base_url=ward.server.base_url, headers={"Connection": "close"}) as anyone:
            scrape = anyone.get("/metrics")
        assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
        text = scrape.text
        requests = _samples(text, "setapay_http_requests_total")
        # The new purchases and the retry's replayed answer.
        assert requests['{method="POST",route="/v1/transactions",status="201"}'] == POSTS + 2
        assert requests['{method="POST",route="/v1/transactions",status="422"}'] == 1
        assert _samples(text, "setapay_idempotent_replays_total")[""] == 1
        assert _samples(text, "setapay_refused_total")['{code="receipt_invalid"}'] == 1
        # Every new purchase was in exactly one group (the retry too, unless a remembered answer
        # was found before the group: it is a replay either way).
        assert _samples(text, "setapay_group_size_sum")[""] in (POSTS + 1, POSTS + 2)
        # The kernel runs once per group with something new to rate (not for a group of replays).
        groups = _samples(text, "setapay_group_size_count")[""]
        assert 0 < _samples(text, "setapay_kernel_seconds_count")[""] <= groups
        latency = _samples(text, "setapay_http_request_seconds_count")
        assert latency['{method="POST",route="/v1/transactions"}'] == POSTS + 3
        issued = _samples(text, "setapay_campaign_points_issued")
        remaining = _samples(text, "setapay_campaign_budget_remaining_points")
        for campaign, budget in budgets.items():
            label = f'{{campaign="{campaign}"}}'
            assert issued[label] == budget["net_issued"]
            assert remaining.get(label) == budget["remaining"]  # none for a campaign without a budget
    # Ids never become labels: the path of a transaction is counted under its route's template.
    assert "tx_" not in text and "WM1" not in text


def test_a_second_server_on_the_same_metrics_directory_is_refused_and_removes_nothing(ward):
    """A second `setapay serve` given the running server's SETAPAY_METRICS_DIR emptied it, and
    the running server's counters were gone until it restarted, even when the second could not
    start at all (helper-93: its port was taken). It is refused now, and nothing is removed."""
    from tests.server import reserved_port, run_cli

    before = sorted(p.name for p in ward.metrics_dir.glob("*.db"))
    assert before
    scrape = httpx.get(f"{ward.server.base_url}/metrics")
    counted = _samples(scrape.text, "setapay_http_requests_total")
    assert counted
    reservation, port = reserved_port()
    reservation.close()
    second = run_cli(ward.server.env, "serve", "--port", str(port))
    assert second.returncode == 3 and "in use by another running server" in second.stderr, second.stderr
    assert sorted(p.name for p in ward.metrics_dir.glob("*.db")) == before
    after = _samples(httpx.get(f"{ward.server.base_url}/metrics").text, "setapay_http_requests_total")
    assert all(after.get(labels, 0) >= n for labels, n in counted.items()), (counted, after)


def test_a_port_outside_the_tcp_range_is_refused_at_once(ward):
    from tests.server import run_cli

    refused = run_cli(ward.server.env, "serve", "--port", "99999")
    assert refused.returncode == 2 and "1 to 65535" in refused.stderr, refused.stderr
