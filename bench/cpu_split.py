"""Where ingest's CPU goes, process by process: our API on PostgreSQL under the load of
`bench/ingest.py` (single posts from 64 clients, or batches of 1,000 from 4), as production
runs it (the committer child and its writer child).

The server is a real uvicorn process on 127.0.0.1 with the ward of `bench/ingest.py`; the requests
are made before the clock starts (the payment app signs on other machines). After a warm-up,
each process's CPU time (user + system, from /proc) is read before and after `--seconds` of load
and divided by the transactions answered in between:

- `api`: the uvicorn process (HTTP, authentication, receipts, validation, answers);
- `committer`: its children (the committer child: deciding groups, rating, posting rules);
- `writer`: their children (the writer child: sending the decided rows);
- `pg_backends`: PostgreSQL's processes serving this database's connections;
- `pg_other`: PostgreSQL's other processes (WAL writer, checkpointer, autovacuum, ...);
- `loadgen`: this process, the load generator.

With two cores, `cores_busy` near 2 means the rate is bound by the CPU all of them share; the
figures say which part to make cheaper. Linux only (/proc).

    .venv/bin/python bench/cpu_split.py [--mode batch|single] [--seconds 8] [--clients N]

Last line: `cpu_split mode=<m> tx_per_s=<n> api_us=<n> committer_us=<n> writer_us=<n>
pg_backends_us=<n> pg_other_us=<n> loadgen_us=<n> total_us=<n> cores_busy=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import (  # noqa: E402
    PREBUILT_BATCH_TX_PER_S,
    PREBUILT_SINGLE_PER_S,
    batch_requests,
    drive,
    free_port,
    fresh_database,
    seed_ward,
    single_requests,
    start_server,
)

DATABASE = "setapay_bench_cpu_split"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds of `pid` (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found]


def server_tree(pid: int) -> dict[str, list[int]]:
    """The uvicorn process, its children and their children."""
    committer = children(pid)
    return {"api": [pid], "committer": committer, "writer": [g for c in committer for g in children(c)]}


def postgres(database: str = DATABASE) -> dict[str, list[int]]:
    """PostgreSQL's processes: those serving `database`'s connections, and the others."""
    out: dict[str, list[int]] = {"pg_backends": [], "pg_other": []}
    for pid in (int(p) for p in subprocess.run(["pgrep", "postgres"], capture_output=True, text=True).stdout.split()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_text()
        except FileNotFoundError:
            continue
        out["pg_backends" if f" {database} " in command else "pg_other"].append(pid)
    return out


def snapshot(groups: dict[str, list[int]]) -> dict[int, float]:
    return {pid: cpu_s(pid) for pids in groups.values() for pid in pids}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("batch", "single"), default="batch")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--clients", type=int, help="clients posting at once (4 for batches, 64 for single posts)")
    args = parser.parse_args()
    clients = args.clients or (4 if args.mode == "batch" else 64)

    url = fresh_database(DATABASE)
    terminals, payment_app = seed_ward(url, clients)
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    env = {
        "SETAPAY_DATABASE_URL": url,
        "SETAPAY_RATE_LIMIT_PER_KEY": "1000000/second",
        "SETAPAY_GROUP_COMMIT_WRITER_PROCESS": "true",
        "SETAPAY_GROUP_COMMIT_PROCESS": "true",
    }
    if args.mode == "batch":
        make = batch_requests(terminals, payment_app, occurred_at)
        prebuilt = int(PREBUILT_BATCH_TX_PER_S * (args.seconds + args.warmup) / 1000 / clients) + 1
    else:
        make = single_requests(terminals, payment_app, occurred_at)
        prebuilt = int(PREBUILT_SINGLE_PER_S * (args.seconds + args.warmup) / clients) + 1
    made = [[make(n, i) for i in range(prebuilt)] for n in range(clients)]
    server = start_server("api.main:app", port := free_port(), 1, env)
    try:
        # The warm-up's requests are other keys than the measured ones (past the prebuilt ones).
        asyncio.run(drive(port, clients, args.warmup, lambda n, i: make(n, prebuilt + i)))
        groups = {**server_tree(server.pid), **postgres()}
        before, started, own = snapshot(groups), time.monotonic(), time.process_time()
        result = asyncio.run(
            drive(port, clients, args.seconds, lambda n, i: made[n][i] if i < prebuilt else make(n, i))
        )
        after, elapsed, own = snapshot(groups), time.monotonic() - started, time.process_time() - own
    finally:
        server.terminate()
        server.wait()
    answered = result["tx_per_s"] * args.seconds
    figures = {name: sum(after[p] - before[p] for p in pids) / answered * 1e6 for name, pids in groups.items()}
    figures["loadgen"] = own / answered * 1e6
    total = sum(figures.values())
    print(f"errors={result['errors']:.0f} p50_ms={result['p50_ms']:.1f} p99_ms={result['p99_ms']:.1f}")
    print(
        f"cpu_split mode={args.mode} tx_per_s={result['tx_per_s']:.0f} "
        + " ".join(f"{name}_us={value:.1f}" for name, value in figures.items())
        + f" total_us={total:.1f} cores_busy={total * answered / 1e6 / elapsed:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
