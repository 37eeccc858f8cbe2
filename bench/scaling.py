"""Scale-out simulation (issue 14, item 5): aggregate ledger throughput with 1..N independent sequencers.

Each sequencer is one PostgreSQL database of its own with the ward of
`bench/ingest.py` (merchants, the current month's campaigns, terminals) and one
writer process that posts purchases through `Ledger.submit` in groups of
`--group` (the unit of work of ingestion: rating, postings, hash chains,
budgets, idempotency, one commit per group). That is what a sharded
deployment runs per shard: one sequencer per campaign budget slice or per
municipality, nothing shared between shards on the money path. For each count
of sequencers the writers start together, post for `--seconds`, and the
aggregate of durable transactions per second is printed with the per-writer
figures. All databases live on the one local PostgreSQL server, so on a
machine with few cores the aggregate stops growing when the cores are busy:
the run shows where, and `docs/SCALING.md` reads the figures.

    .venv/bin/python bench/scaling.py [--sequencers 1 2 4] [--seconds 10] [--group 1000]

Last line: `scaling tx_per_s_1=<n> tx_per_s_2=<n> ... speedup_<max>=<n>`.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import Terminal, fresh_database, seed_ward, submissions  # noqa: E402

if TYPE_CHECKING:
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from engine.store.ledger import Submission

PREPARED_GROUPS_MAX = 40  # per writer: more than it posts in the run on this machine


def writer(
    url: str,
    terminals: list[Terminal],
    seconds: float,
    group: int,
    ready: Queue[int],
    start: Event,
    out: Queue[tuple[str, float]],
) -> None:
    """Post groups of purchases until `seconds` have passed; report (accepted, elapsed)."""
    from engine import collector
    from engine.store import db
    from engine.store.ledger import Ledger

    ledger = Ledger(db.make_engine(url.replace("postgresql+psycopg://", "postgresql://")))
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    n = 0

    def group_of(round_: int) -> list[Submission]:
        return submissions(terminals, round_, group, occurred_at)

    ledger.submit(group_of(-1))  # warm: catalog snapshot, connections
    collector.tune()  # as a serving or importing process does after start-up
    # Building requests is the front end's work, not the sequencer's: done before the clock starts.
    prepared = [group_of(r) for r in range(PREPARED_GROUPS_MAX)]
    ready.put(1)
    start.wait()
    began = time.perf_counter()
    for batch in prepared:
        if time.perf_counter() - began >= seconds:
            break
        t = time.perf_counter()
        results = ledger.submit(batch)
        n += sum(1 for r in results if r.status == 201)
        out.put(("group", time.perf_counter() - t))
    out.put(("done", n))


def run(count: int, seconds: float, group: int) -> dict[str, float]:
    urls = []
    wards = []
    for i in range(count):
        url = fresh_database(f"setapay_bench_shard_{i}")
        terminals, _ = seed_ward(url, 8)
        urls.append(url)
        wards.append(terminals)
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    ready = ctx.Queue()
    procs = [ctx.Process(target=writer, args=(u, t, seconds, group, ready, start, out)) for u, t in zip(urls, wards)]
    for p in procs:
        p.start()
    for _ in procs:  # every writer warmed up, its requests built, waiting
        ready.get(timeout=600)
    began = time.perf_counter()
    start.set()
    accepted, groups, done = 0, [], 0
    while done < count:
        kind, value = out.get(timeout=seconds * 10 + 60)
        if kind == "done":
            accepted += value
            done += 1
        else:
            groups.append(value)
    elapsed = time.perf_counter() - began
    for p in procs:
        p.join()
    groups.sort()
    return {
        "sequencers": count,
        "tx_per_s": accepted / elapsed,
        "group_p50_ms": groups[len(groups) // 2] * 1000 if groups else 0.0,
        "accepted": accepted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequencers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--group", type=int, default=1000)
    args = parser.parse_args()
    figures = []
    for count in args.sequencers:
        r = run(count, args.seconds, args.group)
        figures.append(r)
        print(
            f"sequencers={count} tx_per_s={r['tx_per_s']:.0f} per_sequencer={r['tx_per_s'] / count:.0f} "
            f"group_p50_ms={r['group_p50_ms']:.1f} accepted={r['accepted']}",
            flush=True,
        )
    base = figures[0]["tx_per_s"]
    print(
        "scaling "
        + " ".join(f"tx_per_s_{r['sequencers']}={r['tx_per_s']:.0f}" for r in figures)
        + f" speedup_{figures[-1]['sequencers']}={figures[-1]['tx_per_s'] / base:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
