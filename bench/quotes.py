"""Quotes (SPEC §10 `POST /v1/quotes`) at 16 concurrent clients through a real server on PostgreSQL.

Seeds the demo ward's merchants and campaigns of the current month (bench/ingest.py's
`seed_ward`, one terminal per client) and a day of state the quotes read: 20,000 purchases of
2,000 wallets posted through `Ledger.submit`, so wallet-window usage, budgets and balances are
real rows. Starts `uvicorn api.main:app` (2 workers, as `setapay serve` would on this machine) and
has 16 clients post quotes flat out with an app key, each for its terminal's merchant and a
wallet of the seeded ones, some with tagged items. Prints throughput and p50/p99 and, as the
last line, `quote_p99_ms=`; before it, for reference on a shared machine, the same clients
reading `GET /v1/directory/campaigns` (an app key's lightest read).

Flat out (each client sends again as soon as it is answered) the server is saturated and a
quote's latency is mostly its wait behind the other clients' (Little's law: 16 clients over
the throughput). So the same 16 clients also quote at offered rates (`--rates`, quotes per
second for all of them together, each client on a fixed schedule, latency counted from the
scheduled instant): what a resident sees while the server has headroom. Launch day's
estimate (docs/SCALING.md) is about 150 payments a second in the realistic burst.

    python -m bench.quotes [--clients 16] [--seconds 10] [--workers 2] [--rates 150,300,600]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from collections.abc import Sequence

from bench.ingest import Request, Terminal, drive, free_port, fresh_database, seed_ward, start_server
from engine.model import Purchase
from engine.store import db
from engine.store.config import Config
from engine.store.ledger import Ledger, Submission
from engine.timeutil import TOKYO

DATABASE = "setapay_bench_quotes"
WALLETS = 2_000
PURCHASES = 20_000
GROUP = 1_000


def seed_state(url: str, terminals: Sequence[Terminal]) -> str:
    """Purchases that give the quotes real usage, budget and balance rows; an app key."""
    engine = db.make_engine(url)
    ledger = Ledger(engine)
    occurred = (dt.datetime.now(TOKYO) - dt.timedelta(minutes=10)).isoformat()
    group: list[Submission] = []
    for n in range(PURCHASES):
        terminal_id, merchant_id, _ = terminals[n % len(terminals)]
        body = Purchase.model_validate(
            {
                "wallet_id": f"W{n % WALLETS}",
                "merchant_id": merchant_id,
                "terminal_id": terminal_id,
                "occurred_at": occurred,
                "amount": 500 + (n * 37) % 5000,
            }
        )
        key = f"seed-{n}"
        group.append(Submission(terminal_id, key, key, body, body.model_dump_json()))
        if len(group) == GROUP:
            ledger.submit(group)
            group = []
    key = Config(engine).create_key("app")
    engine.dispose()
    return key


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rates", default="150,300,600", help="offered quotes/s, comma-separated ('' for none)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r]
    url = fresh_database(DATABASE)
    terminals, _ = seed_ward(url, args.clients)
    key = seed_state(url, terminals)
    port = free_port()
    env = {"SETAPAY_DATABASE_URL": url, "SETAPAY_RATE_LIMIT_PER_KEY": "off", "SETAPAY_LOG_LEVEL": "warning"}
    server = start_server("api.main:app", port, args.workers, env)
    headers = {"Authorization": f"Bearer {key}"}
    occurred = (dt.datetime.now(TOKYO) - dt.timedelta(minutes=1)).isoformat(timespec="seconds")

    def quote(n: int, i: int) -> Request:
        terminal_id, merchant_id, _ = terminals[n]
        amount = 300 + (i * 131 + n * 17) % 8000
        body = {
            "type": "purchase",
            "wallet_id": f"W{(i * 16 + n) % WALLETS}",
            "merchant_id": merchant_id,
            "terminal_id": terminal_id,
            "occurred_at": occurred,
            "amount": amount,
        }
        if i % 4 == 0:
            body["items"] = [{"amount": amount // 2, "tags": ["setagaya_sodachi"]}, {"amount": amount - amount // 2}]
        return "POST", "/v1/quotes", json.dumps(body).encode(), headers, 1

    try:
        asyncio.run(drive(port, args.clients, 2.0, quote))  # warm-up: catalogs and connections
        r = asyncio.run(drive(port, args.clients, args.seconds, quote))
        # The machine's floor for an authenticated read at the same concurrency, for reference.
        wallet = ("GET", "/v1/directory/campaigns", b"", headers, 1)
        floor = asyncio.run(drive(port, args.clients, args.seconds / 2, lambda n, i: wallet))
        paced = {rate: asyncio.run(drive(port, args.clients, args.seconds, quote, rate)) for rate in rates}
        paced_floor = {
            rate: asyncio.run(drive(port, args.clients, args.seconds / 2, lambda n, i: wallet, rate)) for rate in rates
        }
    finally:
        server.terminate()
        server.wait()
    print(
        f"clients={args.clients} workers={args.workers} quotes/s={r['tx_per_s']:.0f} "
        f"p50_ms={r['p50_ms']:.2f} p99_ms={r['p99_ms']:.2f} errors={r['errors']}"
    )
    print(
        f"reference GET /v1/directory/campaigns clients={args.clients} "
        f"p50_ms={floor['p50_ms']:.2f} p99_ms={floor['p99_ms']:.2f}"
    )
    for rate in rates:
        q, f = paced[rate], paced_floor[rate]
        print(
            f"offered {rate:.0f}/s clients={args.clients}: quotes/s={q['tx_per_s']:.0f} p50_ms={q['p50_ms']:.2f} "
            f"p99_ms={q['p99_ms']:.2f} errors={q['errors']}; "
            f"reference p50_ms={f['p50_ms']:.2f} p99_ms={f['p99_ms']:.2f}"
        )
    print(
        f"quote_p99_ms={r['p99_ms']:.2f}"
        + "".join(f" quote_p99_ms_at_{rate:.0f}={paced[rate]['p99_ms']:.2f}" for rate in rates)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
