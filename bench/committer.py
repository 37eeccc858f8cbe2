"""The group committer deciding ahead against deciding under the lock (issue 11), on PostgreSQL.

A fresh database with the ward of `bench/ingest.py` (8 terminals, the current month's campaigns);
groups of `--group` purchases are built first (the front end's work, not timed), then posted through
`engine.store.group_commit.GroupCommitter`, each group one parcel (`enqueue_many`), all queued at
once, `--rounds` times alternately by a committer that decides ahead (`ahead=True`: each group
decided outside the lock while the one before it is written) and by one that decides every group
under the lock (`ahead=False`, one `Ledger.submit` per group), and by one that decides ahead and
writes through a writer child process (`writer_process=True`, `engine/store/write_process.py`). No
HTTP: what one API process's committer does with the groups it is handed. The collector is tuned
as a serving process tunes it. The CPU printed is this process's (not the child's).

    .venv/bin/python bench/committer.py [--group 1000] [--groups 10] [--rounds 3]

Last line: `committer ahead_tx_per_s=<median> locked_tx_per_s=<median> ratio=<median of the rounds'
ahead/locked> child_tx_per_s=<median> child_ratio=<median of the rounds' child/ahead>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import fresh_database, seed_ward, submissions  # noqa: E402

if TYPE_CHECKING:
    from engine.store.ledger import Submission


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from engine import collector
    from engine.store import db
    from engine.store.group_commit import GroupCommitter
    from engine.store.ledger import Ledger

    url = fresh_database("setapay_bench_committer")
    terminals, _ = seed_ward(url, 8)
    ledger = Ledger(db.make_engine(url))
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    serial = iter(range(10**9))

    def group() -> list[Submission]:
        return submissions(terminals, next(serial), args.group, occurred_at)

    committers = {
        "ahead": GroupCommitter(ledger, wait_ms=0, size_max=args.group, ahead=True),
        "locked": GroupCommitter(ledger, wait_ms=0, size_max=args.group, ahead=False),
        "child": GroupCommitter(ledger, wait_ms=0, size_max=args.group, ahead=True, writer_process=True),
    }
    for committer in committers.values():  # warm: catalog, connections, both paths
        committer.enqueue_many(group()).result()
    collector.tune()
    rates: dict[str, list[float]] = {name: [] for name in committers}
    for round_ in range(args.rounds):
        for name, committer in committers.items():
            groups = [group() for _ in range(args.groups)]
            started, cpu_started = time.perf_counter(), time.process_time()
            futures = [committer.enqueue_many(g) for g in groups]
            accepted = sum(r.status == 201 for f in futures for r in f.result())
            elapsed = time.perf_counter() - started
            cpu_ms = (time.process_time() - cpu_started) / args.groups * 1000
            assert accepted == args.group * args.groups, "every purchase is accepted"
            rates[name].append(accepted / elapsed)
            per_group_ms = elapsed / args.groups * 1000
            print(
                f"round {round_ + 1} {name}: {accepted / elapsed:,.0f} tx/s, {per_group_ms:.0f} ms a group,"
                f" {cpu_ms:.0f} ms of this process's CPU a group"
            )
    ahead = committers["ahead"]
    print(
        f"ahead: {ahead.written_ahead} groups written as decided, {ahead.overlaid} decided over the one"
        f" being written, {ahead.redecided} decided again"
    )
    committers["child"].close()
    ledger.engine.dispose()
    ratios = [a / b for a, b in zip(rates["ahead"], rates["locked"])]
    child_ratios = [c / a for c, a in zip(rates["child"], rates["ahead"])]
    print(
        f"committer ahead_tx_per_s={statistics.median(rates['ahead']):.0f} "
        f"locked_tx_per_s={statistics.median(rates['locked']):.0f} ratio={statistics.median(ratios):.3f} "
        f"child_tx_per_s={statistics.median(rates['child']):.0f} child_ratio={statistics.median(child_ratios):.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
