"""The Grafana dashboard (docs/ops/grafana-dashboard.json) only plots metrics the engine exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from engine import metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "ops" / "grafana-dashboard.json"


def exported() -> set[str]:
    names = set()
    for collector in (
        REGISTRY,
        metrics.CampaignBudgets(lambda: {"C": (10, 1)}),
        metrics.WebhookDeliveries(lambda: {"pending": 1, "failed": 0}),
    ):
        for family in collector.collect():
            names.add(family.name)  # a labelled family exports no sample until first used
    return names


def test_every_panel_plots_an_exported_metric() -> None:
    names = exported()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 10
    for panel in panels:
        used = set(re.findall(r"setapay_[a-z_]+", " ".join(t["expr"] for t in panel["targets"])))
        assert used, panel["title"]
        # A counter's series ends in _total, a histogram's in _bucket, _sum and _count.
        assert used <= names | {n + s for n in names for s in ("_bucket", "_sum", "_count", "_total")}, used - names
