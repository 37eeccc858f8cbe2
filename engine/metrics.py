"""Prometheus metrics of the engine (issue 14): one place that names them all.

With several uvicorn workers each process writes its samples to files under
`PROMETHEUS_MULTIPROC_DIR` (prometheus-client's multiprocess mode; `setapay serve` makes and empties
that directory before the workers start), and `/metrics` adds them up, so a scrape answered by any
worker counts every worker's requests. Without the variable (tests in-process, scripts) they live in
this process's default registry.

Per campaign, the budget left and the points issued are read from the database when scraped
(`CampaignBudgets`): the meter in `campaign.issued_net` is the truth, whatever process moved it.
So are the webhook deliveries pending and failed (`WebhookDeliveries`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS_S = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 5000)

REQUESTS = Counter("setapay_http_requests", "HTTP requests answered", ["method", "route", "status"])
REQUEST_SECONDS = Histogram(
    "setapay_http_request_seconds", "HTTP request latency", ["method", "route"], buckets=LATENCY_BUCKETS_S
)
REPLAYS = Counter("setapay_idempotent_replays", "Answers replayed for a repeated idempotency key")
RATE_LIMITED = Counter("setapay_rate_limited", "Requests refused by a rate limit (429)", ["route"])
REFUSED = Counter(
    "setapay_refused", "Receipts and request signatures refused, by problem code (SPEC §9.1, §9.2)", ["code"]
)
DECLINES = Counter("setapay_declines", "Transactions declined by the ledger, by decline code", ["code"])
GROUP_SIZE = Histogram("setapay_group_size", "Submissions per group commit", buckets=GROUP_BUCKETS)
GROUP_COMMIT_SECONDS = Histogram(
    "setapay_group_commit_seconds", "Time to post and commit one group", buckets=LATENCY_BUCKETS_S
)
KERNEL_SECONDS = Histogram("setapay_kernel_seconds", "Rating kernel time per group", buckets=LATENCY_BUCKETS_S)
JOB_SECONDS = Histogram(
    "setapay_job_seconds",
    "Lifecycle, settlement and reconciliation runs: duration by job and outcome",
    ["job", "outcome"],
    buckets=JOB_BUCKETS_S,
)


# Refused before the application by `setapay serve`'s HTTP protocol (api/http_protocol.py): 431, 408,
# 429 `too_many_pipelined`, 503 `too_many_connections`, 400 `malformed_request`; the access log and
# `setapay_http_requests` never see them.
PROTOCOL_REFUSALS = Counter(
    "setapay_protocol_refusals", "Requests refused by the HTTP protocol before the application, by code", ["code"]
)
CONNECTIONS_SHED = Counter(
    "setapay_connections_shed", "Idle connections closed to make room for a new one (SETAPAY_CONNECTIONS_MAX)"
)


WEBHOOK_ATTEMPTS = Counter(
    "setapay_webhook_delivery_attempts",
    "Webhook delivery attempts by outcome: delivered, retry (to be tried again), failed (retry window over)",
    ["outcome"],
)


def refused(code: str) -> None:
    """Count a problem answered with `code` when it is a refused receipt or signature."""
    if code.startswith(("receipt_", "signature_")):
        REFUSED.labels(code=code).inc()


@contextmanager
def job(name: str) -> Iterator[None]:
    """Time a run of `name` (credit, expire, purge, settle, payout_results, reconcile); its outcome
    is `ok`, or `error` when it raised."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "ok"
    finally:
        JOB_SECONDS.labels(job=name, outcome=outcome).observe(time.perf_counter() - started)


class CampaignBudgets(Collector):
    """`setapay_campaign_budget_remaining_points` and `setapay_campaign_points_issued` per campaign,
    read by `read()` (campaign id → (budget or None when it has none, issued net)) when scraped."""

    def __init__(self, read: Callable[[], dict[str, tuple[int | None, int]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        remaining = GaugeMetricFamily(
            "setapay_campaign_budget_remaining_points", "Budget left per campaign (points)", labels=["campaign"]
        )
        issued = GaugeMetricFamily(
            "setapay_campaign_points_issued", "Points issued net of claw-backs per campaign", labels=["campaign"]
        )
        for campaign_id, (budget, issued_net) in sorted(self.read().items()):
            if budget is not None:
                remaining.add_metric([campaign_id], budget - issued_net)
            issued.add_metric([campaign_id], issued_net)
        yield remaining
        yield issued


class WebhookDeliveries(Collector):
    """`setapay_webhook_deliveries_pending` and `setapay_webhook_deliveries_failed`, read by `read()`
    (status → count) from the database when scraped, whatever process delivers."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        counts = self.read()
        yield GaugeMetricFamily(
            "setapay_webhook_deliveries_pending", "Webhook deliveries not yet delivered", value=counts["pending"]
        )
        yield GaugeMetricFamily(
            "setapay_webhook_deliveries_failed",
            "Webhook deliveries given up after the retry window (or whose endpoint was deleted)",
            value=counts["failed"],
        )
