"""Simulation benchmark: a draft campaign over 1,000,000 historical transactions on PostgreSQL.

Uses the history database of `bench/history.py` (built on first use, shared
with `bench/reconcile.py`). Each run calls `engine.store.simulate.simulate`
for the whole month under a draft that replaces the live point-back (a
different rate table and a budget that runs out mid-month), timing from
the first database query to the result, and prints the split: load (the
queries and the transfer of columns), encode (catalogs, slots, columns),
rate (the kernel calls) and aggregate. The last line is
`simulate_s=<float> transactions=<int>` (median).

Run: .venv/bin/python bench/simulate.py [--runs 5] [--transactions 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from bench import history
from bench.reconcile import settings
from engine.model import Campaign
from engine.store import simulate
from engine.store.db import make_engine
from engine.timeutil import to_us

DRAFT = Campaign.model_validate(
    {
        "id": "pointback",
        "name": "draft: flat 12% with a smaller budget",
        "starts_at": history.MONTH_START,
        "ends_at": history.MONTH_END,
        "tiers": [{"match": {"merchant_classes": ["small", "semi_large"]}, "rate_bp": 1_200}],
        "per_wallet_cap": 8_000,
        "per_wallet_cap_period": "month",
        "budget": 80_000_000,
        "priority": 10,
        "credit": {"schedule": "dekad", "delay_business_days": 5},
    }
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=history.TRANSACTIONS)
    args = parser.parse_args()
    url = history.url(args.transactions)
    if not history.exists(args.transactions):
        history.build(lambda: settings(url), args.transactions)
    engine = make_engine(url)
    window = (to_us(history.MONTH_START), to_us(history.MONTH_END))
    # Cold: a process that has not decoded the history yet (the first simulation after a start).
    cold = []
    for run in range(args.cold_runs):
        simulate._caches.clear()
        started = time.perf_counter()
        result = simulate.simulate(engine, DRAFT, *window)
        cold.append(time.perf_counter() - started)
        print(f"cold run {run + 1}: {cold[-1]:.3f} s {result['timings_s']}")
    # Warm: the decoded history is kept and only topped up with payments accepted since.
    wall, splits = [], []
    for run in range(args.runs):
        started = time.perf_counter()
        result = simulate.simulate(engine, DRAFT, *window)
        wall.append(time.perf_counter() - started)
        splits.append(result["timings_s"])
        print(f"run {run + 1}: {wall[-1]:.3f} s {result['timings_s']}")
    count = sum(result["transactions"].values()) - result["transactions"]["declined"]
    print(
        f"transactions {result['transactions']}; draft: {result['by_campaign']['pointback']}; "
        f"budget exhausted at {result['budget_exhausted_at']}"
    )
    split = {name: statistics.median(s[name] for s in splits) for name in splits[0]}
    print(
        f"median {statistics.median(wall):.3f} s (min {min(wall):.3f}); split medians "
        + ", ".join(f"{k} {v:.3f} s" for k, v in split.items())
    )
    print(f"cold median {statistics.median(cold):.3f} s (min {min(cold):.3f})")
    print(f"simulate_s={statistics.median(wall):.3f} cold_s={statistics.median(cold):.3f} transactions={count}")


if __name__ == "__main__":
    main()
