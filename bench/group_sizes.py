"""What a group costs at several sizes: the fixed part of a group against the part per purchase.

Single posts reach the ledger in groups of whatever arrived while the last group was decided
(`engine.store.committer_process`): with 64 clients a group holds about ten. Each group pays a
fixed price (a snapshot and its reads, the writer's transaction, a dozen statements and their
round trips, the commit) that a batch of 1,000 spreads thin. This measures both parts.

A fresh database with the ward of `bench/ingest.py`; a `GroupCommitter` deciding ahead, its
decided groups written by a writer child (as the committer child runs it), in this process;
groups of each `--sizes` posted one after the other, `--purchases` purchases at each size. CPU
seconds from /proc: this process (deciding: the committer child's work), the writer child, and
PostgreSQL's processes serving the database. A least-squares line through (size, CPU per group)
gives the fixed cost per group and the cost per purchase.

    .venv/bin/python bench/group_sizes.py [--sizes 1,6,30,200,1000] [--purchases 3000]

Last line: `group_sizes fixed_ms=<n> per_purchase_us=<n>` (CPU of all three together).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu_split import cpu_s  # noqa: E402
from bench.ingest import PG_ADMIN, fresh_database, seed_ward, submissions  # noqa: E402

DATABASE = "setapay_bench_group_sizes"


def backends() -> list[int]:
    with psycopg.connect(PG_ADMIN) as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (DATABASE,))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,6,30,200,1000", help="group sizes, comma-separated")
    parser.add_argument("--purchases", type=int, default=3000, help="purchases posted at each size")
    args = parser.parse_args()

    from engine import collector
    from engine.store import db, ledger
    from engine.store.group_commit import Group, GroupCommitter

    url = fresh_database(DATABASE)
    terminals, _ = seed_ward(url, 8)
    book = ledger.Ledger(db.make_engine(url.replace("postgresql+psycopg://", "postgresql://")))
    committer = GroupCommitter(book, writer_process=True)
    assert committer.writer_process is not None
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    rounds = iter(range(1_000_000))

    def post(groups: list[list[ledger.Submission]]) -> int:
        futures: list[Future[ledger.Result]] = []
        for submissions_ in groups:
            group: Group = [(([s], False), Future()) for s in submissions_]
            committer.post(group)
            futures += [future for _, future in group]
        return sum(future.result(60).status == 201 for future in futures)

    post([submissions(terminals, next(rounds), 50, occurred_at) for _ in range(2)])  # warm
    collector.tune()
    points: list[tuple[int, float]] = []
    print(
        f"{'size':>6} {'groups':>7} {'ms/group':>9} {'deciding':>9} {'writer':>8} {'postgres':>9} {'us/purchase':>12}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        groups = [
            submissions(terminals, next(rounds), size, occurred_at) for _ in range(max(1, args.purchases // size))
        ]
        writer = committer.writer_process.pid
        assert writer is not None, "the writer child runs"
        pids = backends()
        before = (time.process_time(), cpu_s(writer), sum(cpu_s(p) for p in pids))
        started = time.perf_counter()
        accepted = post(groups)
        elapsed = time.perf_counter() - started
        pids = sorted(set(pids) | set(backends()))
        deciding = time.process_time() - before[0]
        writing = cpu_s(writer) - before[1]
        database = sum(cpu_s(p) for p in pids) - before[2]
        n = len(groups)
        per_group = (deciding + writing + database) / n
        points.append((size, per_group))
        print(
            f"{size:>6} {n:>7} {elapsed / n * 1e3:>9.2f} {deciding / n * 1e3:>9.2f} {writing / n * 1e3:>8.2f} "
            f"{database / n * 1e3:>9.2f} {per_group / max(accepted / n, 1) * 1e6:>12.0f}"
        )
    committer.close()
    book.engine.dispose()
    # Least squares: CPU per group = fixed + size * per purchase.
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sum((x - mean_x) ** 2 for x, _ in points)
    fixed = mean_y - slope * mean_x
    print(f"group_sizes fixed_ms={fixed * 1e3:.2f} per_purchase_us={slope * 1e6:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
