"""Reconciliation benchmark: the full report, re-rate included, over 1,000,000 stored transactions on PostgreSQL.

The history database is built once by `bench/history.py` (through
`Ledger.submit`, so reconciliation passes on it) and reused. Each run times
`engine.store.finance.reconcile` (every check of SPEC §7 including the full
re-rate) and `engine.store.rerate.rerate_check` alone, and prints the split
of the re-rate (load, rate, compare). The last line is
`reconcile_s=<float> rerate_s=<float> transactions=<int>` (medians).

Run: .venv/bin/python bench/reconcile.py [--runs 3] [--transactions 1000000] [--rebuild]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from bench import history
from engine.clock import SystemClock
from engine.sealing import generate_key_b64
from engine.settings import Settings
from engine.settlement import signing
from engine.store import finance, rerate
from engine.store.db import make_engine
from engine.store.ledger import Ledger

# Fresh keys per process: the benchmark signs nothing it keeps.
SIGNING_KEY = signing.private_key_b64(signing.generate_private_key())
DATA_KEY = generate_key_b64()


def settings(url: str = history.URL) -> Settings:
    return Settings(database_url=url, signing_key_b64=SIGNING_KEY, data_key_b64=DATA_KEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=history.TRANSACTIONS)
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    url = history.url(args.transactions)
    if args.rebuild or not history.exists(args.transactions):
        started = time.perf_counter()
        history.build(lambda: settings(url), args.transactions)
        print(f"built the history database in {time.perf_counter() - started:.0f} s")
    engine = make_engine(url)
    ledger = Ledger(engine, SystemClock())
    with engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM payment").scalar_one()
        postings = conn.exec_driver_sql("SELECT count(*) FROM posting").scalar_one()
    print(f"{count:,} payments, {postings:,} postings")

    rerate_s, reconcile_s = [], []
    for run in range(args.runs):
        started = time.perf_counter()
        result = rerate.rerate_check(engine)
        rerate_s.append(time.perf_counter() - started)
        assert result["ok"], result["mismatches"][:5]
        print(
            f"re-rate run {run + 1}: {rerate_s[-1]:.2f} s {result['timings_s']} eras={result['eras']} "
            f"checked={result['checked']:,}"
        )
    for run in range(args.runs):
        started = time.perf_counter()
        report = finance.reconcile(ledger, settings(url))
        reconcile_s.append(time.perf_counter() - started)
        failing = [name for name, check in report["checks"].items() if not check["pass"]]
        assert report["ok"], failing
        print(f"reconcile run {run + 1}: {reconcile_s[-1]:.2f} s, every check passes")
    print(
        f"re-rate median {statistics.median(rerate_s):.2f} s (min {min(rerate_s):.2f}); "
        f"reconcile median {statistics.median(reconcile_s):.2f} s (min {min(reconcile_s):.2f})"
    )
    print(
        f"reconcile_s={statistics.median(reconcile_s):.2f} rerate_s={statistics.median(rerate_s):.2f} "
        f"transactions={count}"
    )


if __name__ == "__main__":
    main()
