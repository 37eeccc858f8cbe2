"""Where a group of `Ledger.submit` spends its time (issue 11): phases and statements, on PostgreSQL.

A fresh database with the ward of `bench/ingest.py` (8 terminals, the current month's
campaigns); `--groups` groups of `--group` purchases are built first (the front end's work,
not timed), then posted one after the other through `Ledger.submit` in this process with the
collector tuned as a serving process tunes it. Each phase of the group path is timed by
wrapping its function (the wrappers cost a few microseconds a call) and each statement
`WriteBatch.send` sends is timed on its own; both are printed in milliseconds per group.

With `--ended-campaigns N`, the ward has also run N monthly campaigns before (from 2022, each
with a monthly wallet cap, ended long ago), as a ward does after a few years.

    .venv/bin/python bench/group_phases.py [--group 1000] [--groups 10] [--ended-campaigns 0]

Last line: `group_phases tx_per_s=<n> ms_per_group=<n>`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import fresh_database, seed_ward, submissions  # noqa: E402

if TYPE_CHECKING:
    from engine.store.bulk import WriteBatch

TIMES: collections.defaultdict[str, float] = collections.defaultdict(float)


def timed(owner: Any, name: str, label: str) -> None:
    """Replace `owner.name` by a wrapper adding its wall time to TIMES[label]."""
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - started

    setattr(owner, name, wrapper)


def timed_send(self: WriteBatch) -> None:
    """`WriteBatch.send`, one statement at a time, each timed (COPY by table, others by their start)."""
    from engine.store import bulk

    raw = bulk.raw_connection(self.session)
    with raw.cursor() as cursor:
        for sql, params in self.statements:
            started = time.perf_counter()
            if sql.startswith("COPY"):
                types, rows = params
                with cursor.copy(sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)
            else:
                cursor.execute(sql, params)
            TIMES["send: " + " ".join(sql.split()[:3])] += time.perf_counter() - started
    self.statements.clear()


def add_ended_campaigns(url: str, n: int) -> None:
    """`n` monthly point-back campaigns of past months (from January 2022), long ended."""
    import datetime as dt

    from engine.model import Campaign, Tier
    from engine.store import db
    from engine.store.config import Config
    from engine.timeutil import TOKYO

    config = Config(db.make_engine(url))
    for k in range(n):
        starts = dt.datetime(2022 + k // 12, k % 12 + 1, 1, tzinfo=TOKYO)
        ends = dt.datetime(2022 + (k + 1) // 12, (k + 1) % 12 + 1, 1, tzinfo=TOKYO)
        config.create_campaign(
            Campaign(
                id=f"PB_OLD_{k}",
                name=f"past point-back {k}",
                starts_at=starts,
                ends_at=ends,
                tiers=(Tier(rate_bp=1000),),
                per_wallet_cap=5_000,
                per_wallet_cap_period="month",
            )
        )
    config.engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--ended-campaigns", type=int, default=0)
    args = parser.parse_args()

    from engine import collector, rating
    from engine.store import bulk, db, ledger
    from engine.store import events as outbox

    url = fresh_database("setapay_bench_group_phases")
    terminals, _ = seed_ward(url, 8)
    if args.ended_campaigns:
        add_ended_campaigns(url, args.ended_campaigns)
    book = ledger.Ledger(db.make_engine(url.replace("postgresql+psycopg://", "postgresql://")))
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())

    def group(round_: int) -> list[ledger.Submission]:
        return submissions(terminals, round_, args.group, occurred_at)

    book.submit(group(-1))  # warm: catalog snapshot, connections
    prepared = [group(r) for r in range(args.groups)]
    collector.tune()
    timed(ledger.Ledger, "_submit_one", "whole group (transaction, lock, commit)")
    timed(ledger.Ledger, "_load_state", "loading rating state")
    timed(ledger, "rate", "rating (encode, kernel, decode)")
    timed(ledger.PostingWriter, "plain_purchases", "posting plain purchases as columns, payment rows")
    timed(ledger.PostingWriter, "flush", "flush (queueing rows)")
    timed(bulk, "select_where_tuples", "keyed look-ups (remembered keys, receipts, usage)")
    timed(outbox, "queue_group", "events outbox")
    bulk.WriteBatch.send = timed_send  # type: ignore[method-assign]
    del rating  # imported so the kernel is loaded before timing

    started = time.perf_counter()
    accepted = sum(r.status == 201 for g in prepared for r in book.submit(g))
    elapsed = time.perf_counter() - started
    book.engine.dispose()
    for label, seconds in sorted(TIMES.items(), key=lambda kv: -kv[1]):
        print(f"{seconds / args.groups * 1000:8.1f} ms/group  {label}")
    print(f"group_phases tx_per_s={accepted / elapsed:.0f} ms_per_group={elapsed / args.groups * 1000:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
