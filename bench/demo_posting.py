"""The embedded demo's posting through the API on SQLite (issue 11, item 6): transactions a second.

Runs the ledger half of `setapay demo` (`run_ledger_demo`) on a fresh SQLite file in a temporary
directory, `--runs` times, and times the posting from the first transaction sent to the last one
answered (the demo's progress callback marks both): seeding the ward before and the crediting
run, settlement, chain heads and reconciliation after are not in the figure. Each run must end
with the ledger check and the reconciliation passing. Also prints the process's CPU time per
transaction over the same span (one interpreter: the client, the HTTP stack and the group
committer share it). The process is set up as the `setapay` console command (`make demo`) sets
up its own: `engine.collector.tune()` first, as `engine.cli.main` does, then the demo imported
and run (which settles the collector once its application is built), so the figure is that of
the demo as it runs.

    .venv/bin/python bench/demo_posting.py [--transactions 2000] [--runs 1]

Last line: `demo_posting tx_per_s=<median> cpu_ms_per_tx=<median>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import collector  # noqa: E402


def one_run(transactions: int) -> tuple[float, float, dict[str, int]]:
    from setapay_demo.ledger import run_ledger_demo  # imported after `tune`, as `setapay demo` does

    marks: dict[str, float] = {}

    def progress(total: int) -> Callable[[int], None]:
        marks["start"], marks["cpu_start"] = time.perf_counter(), time.process_time()

        def advance(done: int) -> None:
            marks["end"], marks["cpu_end"] = time.perf_counter(), time.process_time()

        return advance

    with tempfile.TemporaryDirectory(prefix="setapay-demo-bench-") as tmp:
        summary = run_ledger_demo(
            transactions, database_url=f"sqlite+pysqlite:///{tmp}/demo.db", progress=progress, out_dir=f"{tmp}/out"
        )
    assert summary["check"]["ok"] and summary["reconciliation"]["ok"], "the demo's ledger must check"
    counts = summary["counts"]
    posted = sum(v for k, v in counts.items() if k.endswith(" accepted") or k.startswith("declined"))
    elapsed = marks["end"] - marks["start"]
    return posted / elapsed, 1000 * (marks["cpu_end"] - marks["cpu_start"]) / posted, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    collector.tune()  # as `engine.cli.main` does for the console command (`setapay demo`)
    rates, cpus = [], []
    for _ in range(args.runs):
        rate, cpu, counts = one_run(args.transactions)
        rates.append(rate)
        cpus.append(cpu)
        print(f"{rate:.0f} tx/s, {cpu:.2f} ms CPU per tx; {dict(sorted(counts.items()))}", flush=True)
    print(f"demo_posting tx_per_s={statistics.median(rates):.0f} cpu_ms_per_tx={statistics.median(cpus):.2f}")


if __name__ == "__main__":
    main()
