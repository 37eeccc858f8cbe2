"""Wallet history page reads (SPEC §6 `GET /v1/wallets/{id}/history`) through a real server on PostgreSQL.

(`bench/history.py` is the month of stored history of the re-rate benchmarks; this one is the
wallet history route's.) Builds a database `setapay_bench_wallet_history` in which one wallet
has 10,000 events among other wallets' postings, posted through `Ledger.submit` in groups like
ingestion: purchases earning a dekad point-back (pending) and, on tagged items, a second
campaign, 100 grants (lots, so the wallet has available accounts too), and twice as many
purchases of other wallets interleaved. Then starts `uvicorn api.main:app` (one worker) and
reads pages of 50 with an app key: the first page and pages at cursors spread over the whole
history, one client after the other, then 4 clients at once; and, for reference on a shared
machine, `GET /v1/directory/campaigns` (an app key's lightest read) with one client. Prints p50/p99 per run and, as the
last line, `history_p99_ms=` of the single-client run.

    python -m bench.wallet_history [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import time

from bench.ingest import Request, drive, free_port, fresh_database, start_server
from engine.model import Campaign, Merchant, Purchase
from engine.store import db, lifecycle
from engine.store.config import Config
from engine.store.ledger import Ledger, Submission
from engine.timeutil import TOKYO

DATABASE = "setapay_bench_wallet_history"
WALLET = "W_HISTORY"
EVENTS = 10_000
GROUP = 500
PAGE = 50
WINDOW = {"starts_at": "2026-01-01T00:00:00+09:00", "ends_at": "2036-01-01T00:00:00+09:00"}


def build(url: str) -> str:
    """The ward, the wallet's 10,000 events and the others' postings; an app key."""
    db.upgrade(url)
    engine = db.make_engine(url)
    config = Config(engine)
    config.create_merchant(Merchant(id="M1", name="八百屋", merchant_class="small", shotengai_id="S1"))
    config.create_terminal("T1", "M1")
    for campaign in (
        {
            "id": "C_POINTBACK",
            "name": "ポイント還元",
            "tiers": [{"match": {}, "rate_bp": 1000}],
            "credit": {"schedule": "dekad", "delay_business_days": 5},
        },
        {
            "id": "C_SODACHI",
            "name": "せたがやそだち",
            "tiers": [{"match": {}, "rate_bp": 1000}],
            "item_tags": ["local_produce"],
            "credit": {"schedule": "dekad", "delay_business_days": 5},
        },
        {"id": "C_GRANT", "name": "省エネ", "tiers": [{"match": {"merchant_ids": ["M_NONE"]}, "rate_bp": 0}]},
    ):
        config.create_campaign(Campaign.model_validate({**campaign, **WINDOW}))
    ledger = Ledger(engine)
    occurred = (dt.datetime.now(TOKYO) - dt.timedelta(minutes=5)).isoformat()
    events = n = 0
    group: list[Submission] = []
    while events < EVENTS - 100:
        n += 1
        tagged = n % 3 == 0 and events < EVENTS - 102
        for wallet in (WALLET, f"W_OTHER_{n % 997}", f"W_OTHER_{(n * 7) % 991}"):
            body = Purchase.model_validate(
                {
                    "wallet_id": wallet,
                    "merchant_id": "M1",
                    "terminal_id": "T1",
                    "occurred_at": occurred,
                    "amount": 1000 + n % 500,
                    "items": [{"amount": 500, "tags": ["local_produce"] if tagged else []}, {"amount": 500 + n % 500}],
                }
            )
            key = f"{wallet}-{n}"
            group.append(Submission("T1", key, key, body, body.model_dump_json()))
        events += 2 if tagged else 1
        if len(group) >= GROUP:
            assert all(r.status == 201 for r in ledger.submit(group))
            group = []
    if group:
        assert all(r.status == 201 for r in ledger.submit(group))
    for g in range(EVENTS - events):
        assert lifecycle.grant(ledger, "bench", f"g{g}", WALLET, "C_GRANT", 10, "省エネ家電").status == 201
    key = config.create_key("app")
    engine.dispose()
    return key


def cursors(port: int, key: str) -> list[str]:
    """The cursor of every page of the wallet's history (None: the first), walking it once."""
    import httpx

    found: list[str] = []
    total = 0
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}) as client:
        cursor = None
        while True:
            page = client.get(
                f"/v1/wallets/{WALLET}/history", params={"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            )
            assert page.status_code == 200, page.text
            answer = page.json()
            total += len(answer["events"])
            cursor = answer["next_cursor"]
            if cursor is None:
                break
            found.append(cursor)
    assert total == EVENTS, f"{total} events, expected {EVENTS}"
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    url = fresh_database(DATABASE)
    started = time.monotonic()
    key = build(url)
    print(f"built {EVENTS} events of {WALLET} in {time.monotonic() - started:.1f} s")
    port = free_port()
    env = {"SETAPAY_DATABASE_URL": url, "SETAPAY_RATE_LIMIT_PER_KEY": "off", "SETAPAY_LOG_LEVEL": "warning"}
    server = start_server("api.main:app", port, 1, env)
    try:
        pages = [None, *cursors(port, key)]
        headers = {"Authorization": f"Bearer {key}"}

        def read(n: int, i: int) -> Request:
            cursor = pages[(i * 7 + n * 13) % len(pages)]
            query = f"?limit={PAGE}" + (f"&cursor={cursor}" if cursor else "")
            return "GET", f"/v1/wallets/{WALLET}/history{query}", b"", headers, 1

        results = {}
        for clients in (1, 4):
            asyncio.run(drive(port, clients, 2.0, read))  # warm-up
            results[clients] = asyncio.run(drive(port, clients, args.seconds, read))
            r = results[clients]
            print(
                f"clients={clients} pages/s={r['tx_per_s']:.0f} p50_ms={r['p50_ms']:.2f} "
                f"p99_ms={r['p99_ms']:.2f} errors={r['errors']}"
            )
        # The machine's floor for an authenticated read: the directory's campaigns (catalog, one query).
        floor = ("GET", "/v1/directory/campaigns", b"", headers, 1)
        reference = asyncio.run(drive(port, 1, args.seconds / 2, lambda n, i: floor))
        print(
            "reference GET /v1/directory/campaigns clients=1 "
            f"p50_ms={reference['p50_ms']:.2f} p99_ms={reference['p99_ms']:.2f}"
        )
        print(json.dumps({"pages": len(pages), "page_size": PAGE, "events": EVENTS}))
    finally:
        server.terminate()
        server.wait()
    print(f"history_p99_ms={results[1]['p99_ms']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
