"""History import benchmark on PostgreSQL (issue 14, item 4): `setapay import` of N rows.

A fresh database gets the synthetic ward of `engine.demo` (merchants, one
terminal each, the month's campaigns) configured as of a past month, as an
operator enters the program's configuration as of its start; then a file of N
rows of that month is written in the documented layout (docs/IMPORT.md): the
demo's purchases (about a third with tagged items) and its ~1.5% refunds, with
small point redemptions by wallets that earned before. Writing the file is not
timed; the import is, through the same entry point `setapay import` runs
(`engine.store.importer.import_history`, in this process). With `--profile` the
run is under cProfile and the share of the import's own work (reading and
checking lines) against `Ledger.submit` is printed.

    .venv/bin/python bench/import.py [--rows 1000000] [--group 1000] [--profile]

Last line: `import rows=<n> seconds=<s> rows_per_s=<r>`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest import fresh_database  # noqa: E402

if TYPE_CHECKING:
    from engine.model import Merchant

DATE = dt.date(2026, 6, 15)  # the day of the history (its month's campaigns are in force)


def seed(url: str) -> list[Merchant]:
    """The ward configured at the start of DATE's month; its merchants."""
    from engine.clock import ManualClock
    from engine.demo import ward
    from engine.store import db
    from engine.store.config import Config
    from engine.timeutil import TOKYO, to_us

    db.upgrade(url)
    engine = db.make_engine(url)
    config = Config(
        engine, clock=ManualClock(to_us(dt.datetime(DATE.year, DATE.month, 1, tzinfo=TOKYO)) - 3_600_000_000)
    )
    merchants, campaigns = ward(7, DATE)
    for m in merchants:
        config.create_merchant(m)
        config.create_terminal(f"T{m.id[1:]}01", m.id)
    for c in campaigns:
        config.create_campaign(c)
    engine.dispose()
    return merchants


def write_history(path: Path, merchants: list[Merchant], rows: int) -> None:
    from engine.demo import day
    from engine.importing import COLUMNS
    from engine.model import Purchase

    events = day(merchants, rows, date=DATE)[:rows]
    seen: dict[str, int] = {}
    merchant_of: dict[str, str] = {}
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for key, event in events:
            at = event.occurred_at.isoformat()
            if isinstance(event, Purchase):
                # Redemptions small enough for what a returning wallet has earned.
                visits = seen.get(event.wallet_id, 0)
                seen[event.wallet_id] = visits + 1
                used = min(event.points_used, 20) if visits >= 2 else 0
                items = (
                    json.dumps([{"amount": i.amount, "tags": list(i.tags)} for i in event.items], separators=(",", ":"))
                    if event.items is not None
                    else ""
                )
                writer.writerow(
                    (
                        key,
                        "purchase",
                        event.wallet_id,
                        event.merchant_id,
                        event.terminal_id,
                        at,
                        event.amount,
                        used,
                        items,
                        "",
                    )
                )
            else:
                terminal = f"T{merchant_of[event.original_id][1:]}01"  # the original's merchant's terminal
                writer.writerow((key, "refund", "", "", terminal, at, event.amount, "", "", event.original_id))
            if isinstance(event, Purchase):
                merchant_of[key] = event.merchant_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--group", type=int, default=1_000)
    parser.add_argument("--profile", action="store_true", help="run under cProfile and print where the time goes")
    parser.add_argument("--database", default="setapay_bench_import")
    parser.add_argument("--no-pipeline", action="store_true", help="decide and write each group in turn")
    args = parser.parse_args()

    from engine import collector
    from engine.clock import SystemClock
    from engine.store import db
    from engine.store.importer import import_history
    from engine.store.ledger import Ledger

    url = fresh_database(args.database)
    merchants = seed(url)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.csv"
        t = time.perf_counter()
        write_history(path, merchants, args.rows)
        print(f"wrote {args.rows} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        engine = db.make_engine(url)
        with engine.connect() as connection:  # figures depend on them: printed with the run
            settings = connection.exec_driver_sql(
                "SELECT name, current_setting(name) FROM pg_settings "
                "WHERE name IN ('shared_buffers', 'max_wal_size', 'autovacuum', 'synchronous_commit') ORDER BY name"
            ).all()
        print("postgres: " + " ".join(f"{name}={value}" for name, value in settings), file=sys.stderr)
        ledger = Ledger(engine, SystemClock())
        errors = io.StringIO()
        collector.tune()  # as the `setapay` command does before it runs one
        with path.open(encoding="utf-8", newline="") as lines:
            if args.profile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                started = time.perf_counter()
                report = profiler.runcall(
                    import_history, ledger, lines, errors, group=args.group, pipelined=not args.no_pipeline
                )
                seconds = time.perf_counter() - started
                stats = pstats.Stats(profiler)
                total = stats.total_tt  # type: ignore[attr-defined]
                shares = {}
                for (file, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
                    if name == "read" and file.endswith("engine/importing.py"):
                        shares["reading and checking lines (engine/importing.py)"] = cumulative
                    if name == "submit" and file.endswith("engine/store/ledger.py"):
                        shares["Ledger.submit"] = cumulative
                    if name == "_stored" and file.endswith("engine/store/importer.py"):
                        shares["already-imported look-ups"] = cumulative
                for name, value in shares.items():
                    print(f"profile {name}: {value:.2f} s ({value / total:.0%} of {total:.2f} s)")
                # PROFILE_SORT=tottime PROFILE_TOP=60 for the functions' own time
                order, top = os.environ.get("PROFILE_SORT", "cumulative"), int(os.environ.get("PROFILE_TOP", "25"))
                stats.sort_stats(order).print_stats(top)
            else:
                started, thread_started = time.perf_counter(), time.thread_time()
                report = import_history(ledger, lines, errors, group=args.group, pipelined=not args.no_pipeline)
                seconds = time.perf_counter() - started
                print(f"importing thread's CPU: {time.thread_time() - thread_started:.2f} s", file=sys.stderr)
        engine.dispose()
    summary = report.summary()
    print(json.dumps(summary), file=sys.stderr)
    if report.errors:
        print(errors.getvalue().splitlines()[1:6], file=sys.stderr)
    print(f"import rows={args.rows} seconds={seconds:.2f} rows_per_s={args.rows / seconds:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
