"""Instructions the history import's process executes, counted by callgrind (issue 14).

A deterministic figure for comparing builds of the import's Python side on a host whose
speed drifts (docs/BENCHMARKS.md, *History import*: the same 300,000-row run took 53 to 77 s
within an hour here, while two counts of one build differ by ~0.1%). It leaves out
PostgreSQL's own work (another process): `bench/import.py` times the whole.

    .venv/bin/python bench/import_instructions.py [--rows 20000] [--tree DIR ...]

Seeds a template database with the synthetic ward of `bench/import.py` and writes its file
once; then for each tree (a checkout or a copy of one; by default this one) makes a database
from the template and runs `engine.store.importer.import_history` on the file under
`valgrind --tool=callgrind`, counting from the import's first line to its last (instrumentation
is switched on and off around it by `callgrind_control`, so start-up is not counted). The
threads run one at a time under valgrind, so the pipeline may overlap groups differently
than at full speed; the summary (imported, declined, groups decided again) is printed with
each count to show the runs did the same work. Needs Debian's `valgrind`; ~3 minutes for
20,000 rows.

Last line per tree: `instructions tree=<dir> rows=<n> instructions=<n> per_row=<n>`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TEMPLATE = "setapay_bench_instructions_template"
RUN = "setapay_bench_instructions"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def child(tree: str, file: str) -> int:
    """Under valgrind: import `file` into the run database with `tree`'s code."""
    sys.path.insert(0, tree)
    from engine import collector
    from engine.clock import SystemClock
    from engine.store import db
    from engine.store.importer import import_history
    from engine.store.ledger import Ledger

    assert Path(sys.modules["engine"].__file__ or "").resolve().is_relative_to(Path(tree).resolve())
    engine = db.make_engine(_url(RUN))
    ledger = Ledger(engine, SystemClock())
    collector.tune()  # as the `setapay` command does
    pid = str(os.getpid())
    with open(file, encoding="utf-8", newline="") as lines:
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        report = import_history(ledger, lines, io.StringIO())
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
    engine.dispose()
    summary = report.summary()
    summary.pop("seconds")
    print("summary " + json.dumps(summary), file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tree", action="append", help="a checkout to count (repeatable; default: this one)")
    parser.add_argument("--child", nargs=2, metavar=("TREE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    import psycopg

    sys.path.insert(0, str(HERE))
    from bench.ingest import fresh_database

    # bench/import.py's ward and file (its name is a keyword: loaded from its path)
    spec = importlib.util.spec_from_file_location("bench_import", HERE / "bench" / "import.py")
    assert spec is not None and spec.loader is not None
    bench_import = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_import)

    merchants = bench_import.seed(fresh_database(TEMPLATE))
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "history.csv"
        bench_import.write_history(file, merchants, args.rows)
        for tree in args.tree or [str(HERE)]:
            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{RUN}"')
                conn.execute(f'CREATE DATABASE "{RUN}" TEMPLATE "{TEMPLATE}"')
            started = time.perf_counter()
            out = Path(tmp) / "callgrind.out"
            run = subprocess.run(
                [
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out}",
                    sys.executable,
                    __file__,
                    "--child",
                    tree,
                    str(file),
                ],
                capture_output=True,
                text=True,
            )
            collected = re.search(r"Collected : (\d+)", run.stderr)
            summary = next((line for line in run.stderr.splitlines() if line.startswith("summary ")), None)
            if run.returncode or collected is None or summary is None:
                print(run.stderr[-3000:], file=sys.stderr)
                return 1
            count = int(collected.group(1))
            print(f"{summary} ({time.perf_counter() - started:.0f} s under valgrind)", file=sys.stderr)
            print(f"instructions tree={tree} rows={args.rows} instructions={count} per_row={count // args.rows}")
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for name in (RUN, TEMPLATE):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
