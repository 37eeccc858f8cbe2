"""The server's work per single post, in process: the ASGI application on SQLite, no network.

Seeds the small ward of `bench/ingest.py` (64 terminals, the payment app), then posts
`--transactions` pre-signed purchases through the application's ASGI interface (the demo's
in-process transport, `setapay_demo.ledger._InProcess`), 64 in flight, `--rounds` times, and
prints each round's rate and the process's CPU per post. The client's side (signing receipts,
encoding bodies) is done before each round is timed, so the figure is the server's: the HTTP
stack, the route, the group committer and SQLite.

    .venv/bin/python bench/single_post.py [--transactions 3000] [--rounds 3]

Last line: `single_post tx_per_s=<median> cpu_us_per_tx=<median>`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IN_FLIGHT = 64


async def rounds(transactions: int, count: int) -> list[tuple[float, float]]:
    from api.app import create_app
    from bench.ingest import purchase, seed_ward
    from engine.settings import Settings
    from engine.timeutil import TOKYO
    from setapay_demo.ledger import _InProcess

    with tempfile.TemporaryDirectory(prefix="setapay-single-post-") as tmp:
        url = f"sqlite+pysqlite:///{tmp}/bench.db"
        terminals, payment_app = seed_ward(url, IN_FLIGHT)
        app = create_app(Settings(database_url=url, rate_limit_per_key="off", key_cache_ttl_s=5))
        transport = _InProcess(app)
        occurred_at = dt.datetime.now(TOKYO).isoformat()

        def request(round_: int, i: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
            terminal_id, merchant_id, key = terminals[i % IN_FLIGHT]
            body = purchase(terminal_id, merchant_id, round_, i, occurred_at)
            content = json.dumps(payment_app.sign_purchase(body, jti=f"pay_{round_}_{i}")).encode()
            headers = [
                (b"authorization", f"Bearer {key}".encode()),
                (b"idempotency-key", f"k{round_}-{i}".encode()),
                (b"x-request-id", f"r{round_}-{i}".encode()),
                (b"host", b"testserver"),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(content)),
            ]
            return headers, content

        slots = asyncio.Semaphore(IN_FLIGHT)

        async def post(headers: list[tuple[bytes, bytes]], content: bytes) -> None:
            async with slots:
                answer = await transport._call("POST", "/v1/transactions", b"", headers, content)
            assert answer.status_code == 201, answer.content

        figures = []
        async with app.router.lifespan_context(app):
            for round_ in range(count):
                requests = [request(round_, i) for i in range(transactions)]

                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(post(h, c) for h, c in requests))
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                figures.append((transactions / wall, 1e6 * cpu / transactions))
                print(f"round {round_ + 1}: {figures[-1][0]:.0f} tx/s, {figures[-1][1]:.0f} us CPU a post", flush=True)
        app.state.engine.dispose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=3_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = asyncio.run(rounds(args.transactions, args.rounds))
    rate = statistics.median(f[0] for f in figures)
    cpu = statistics.median(f[1] for f in figures)
    print(f"single_post tx_per_s={rate:.0f} cpu_us_per_tx={cpu:.0f}")


if __name__ == "__main__":
    main()
