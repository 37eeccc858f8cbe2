"""A campaign's budget read (`GET /v1/campaigns/{id}/budget`, the campaigns' page) and its burn
by day (the campaign's page), on the month of history of `bench/history.py` (1,000,000
transactions, built on first use).

Command: `.venv/bin/python bench/budget_read.py` (migrates the database to this code's schema
first and prints how long that took: the first run after `20261217_campaign_burn` fills the hour
meters from the postings). Prints, for each campaign, the median wall time of `finance.budget`
and of `finance.burn_by_day` over `--runs` reads, and a digest of what they answered (equal
before and after a change that only changes how they read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

from bench import history
from bench.reconcile import settings
from engine.clock import SystemClock
from engine.store import db, finance
from engine.store.ledger import Ledger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--transactions", type=int, default=history.TRANSACTIONS)
    args = parser.parse_args()
    url = history.url(args.transactions)
    if not history.exists(args.transactions):
        started = time.perf_counter()
        history.build(lambda: settings(url), args.transactions)
        print(f"built the history database in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    db.upgrade(url)
    print(f"migrated in {time.perf_counter() - started:.2f} s")
    engine = db.make_engine(url)
    ledger = Ledger(engine, SystemClock())
    with engine.connect() as conn:
        postings = conn.exec_driver_sql("SELECT count(*) FROM posting").scalar_one()
        last = conn.exec_driver_sql("SELECT max(posted_at_us) FROM posting").scalar_one()
        campaigns = conn.exec_driver_sql("SELECT id FROM campaign ORDER BY id").scalars().all()
    print(f"{postings:,} postings, campaigns {', '.join(campaigns)}")
    now = last + 1_800_000_000  # half an hour after the last posting: both windows hold postings
    answers = []
    for campaign_id in campaigns:
        budget_ms, days_ms = [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            budget = finance.budget(ledger, campaign_id, now=now)
            budget_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            days = finance.burn_by_day(ledger, campaign_id)
            days_ms.append((time.perf_counter() - started) * 1000)
        answers.append((budget, days))
        print(
            f"{campaign_id}: budget {statistics.median(budget_ms):.1f} ms, burn by day "
            f"{statistics.median(days_ms):.1f} ms (issued {budget['issued']}, clawed back {budget['clawed_back']},"
            f" last hour {budget['burn_last_hour']}, last day {budget['burn_last_day']}, {len(days)} days)"
        )
    text = json.dumps(answers, sort_keys=True)
    print(f"answers digest {hashlib.sha256(text.encode()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
