"""Ingest benchmark on PostgreSQL: our API against a minimal baseline, in one run.

(a) baseline: a minimal FastAPI app doing one INSERT ... ON CONFLICT DO NOTHING
    per request, and a raw batched insert of 1,000 rows per commit;
(b) our POST /v1/transactions at 64 concurrent clients (group commit), every
    purchase with the payment app's receipt (SPEC §9.1), and again with every
    request signed by its terminal (RFC 9421, SPEC §9.2);
(c) our POST /v1/transactions/batch with 1,000 transactions per request;
(d) a retry storm (requests already answered) without and with Redis;
(e) the peer ledger pgledger on the same PostgreSQL, right after our single and
    batch phases (our server stopped, then started again for the signed and
    retry phases), through ../shared/peers/peer_pgledger.py (one transfer per
    call at the same client count, and 1,000 transfers per call), unless --no-peer.

Every server runs as a real uvicorn process on 127.0.0.1; the load generator
is a small asyncio HTTP/1.1 client with keep-alive (cheaper than a general
client, so the servers, not the generator, are what is measured), and each
client's requests to our API, receipts signed, are made before the phase's clock
starts (`drive`'s `prebuilt`: enough for 3,000 single posts or 12,000 batched purchases a
second, the rest made as they are sent); each HTTP phase
runs `--warmup` seconds (1 by default) before its `--seconds` are measured. It prints the
signed/bearer ratio and what receipt checks cost: one check's CPU time
(`receipt_verify_us`) times the accepted rate, as a share of a core
(`receipt_share_*`). The last line is

    single_ratio=<ours/baseline> batch_tps=<n> batch_ratio=<ours/raw batched insert>
    single_p99_ms=<n> pgledger_single_ratio=<ours/pgledger single> pgledger_batch_ratio=<ours/pgledger batch>

(one line; the pgledger ratios are omitted with --no-peer). With `--rounds N` everything runs N
times in turn (baseline, ours, peer, again), each round's figures are printed, and the last line
holds the median of each figure over the rounds: on a host whose speed drifts from minute to
minute a ratio is taken within a round, and one slow minute does not decide it.

    .venv/bin/python bench/ingest.py [--seconds 10] [--warmup 1] [--clients 64] [--workers 1] [--rounds 1]
        [--no-writer-process] [--no-committer-process]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from engine.http_signing import sign_request
from engine.timeutil import TOKYO

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from engine.receipts import PaymentApp
    from engine.store.ledger import Submission

ROOT = Path(__file__).resolve().parent.parent
PEER = Path(os.environ.get("SETAPAY_PEERS_DIR") or ROOT.parent / "shared" / "peers") / "peer_pgledger.py"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

Terminal = tuple[str, str, str]  # (terminal id, merchant id, bearer key), as `seed_ward` makes them
Request = tuple[str, str, bytes, dict[str, str], int]  # (method, path, body, headers, transactions it carries)
RequestMaker = Callable[[int, int], Request]  # (client, request number) -> the request


def fresh_database(name: str) -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(app: str, port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{app} did not start")


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None  # opened with the writer
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload


async def drive(
    port: int,
    clients: int,
    seconds: float,
    make_request: RequestMaker,
    rate: float | None = None,
    warmup_s: float = 0.0,
    prebuilt: int = 0,
) -> dict[str, float]:
    """`clients` loops sending requests for `warmup_s` then `seconds`; returns throughput and
    latencies of the requests sent in the `seconds` after the warm-up (the warm-up's are answered
    but not counted: the servers' first requests of each client open connections, look keys up
    and load state, which is the start, not the rate, of a server).

    Without `rate` each client sends its next request as soon as it has its answer (flat out:
    the server saturated, latency mostly queueing). With `rate` (requests per second, all
    clients together) each client sends on a fixed schedule, `clients / rate` seconds apart,
    staggered; a request's latency counts from its scheduled instant, so an answer that
    comes late also delays (and charges) the requests queued behind it on that client.

    With `prebuilt`, each client's first `prebuilt` requests are made before the clock starts
    (`prebuilt_requests`)."""
    if prebuilt:
        make_request = prebuilt_requests(make_request, clients, prebuilt)
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    measured_from = time.monotonic() + warmup_s
    stop = measured_from + seconds
    interval = clients / rate if rate else 0.0

    async def client(n: int) -> None:
        connection = Connection(port)
        i = 0
        due = time.perf_counter() + interval * n / clients
        while time.monotonic() < stop:
            method, path, body, headers, weight = make_request(n, i)
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                t0 = due
                due += interval
            else:
                t0 = time.perf_counter()
            counted = time.monotonic() >= measured_from
            status, payload = await connection.request(method, path, body, headers)
            if status >= 300:
                counts["errors"] += 1
                if counts["errors"] < 3:
                    print(f"  error {status}: {payload[:200]!r}", file=sys.stderr)
            if counted:
                latencies.append(time.perf_counter() - t0)
                counts["requests"] += weight
            i += 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.monotonic() - measured_from
    latencies.sort()
    return {
        "tx_per_s": counts["requests"] / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "errors": counts["errors"],
    }


# Requests made before a phase's clock starts, per client, enough for these rates (a client that
# sends more makes the rest as it goes): the generator shares the server's two cores, and signing
# receipts (about 35 us a purchase, 18 ms a batch of 1,000) is the payment app's work, done on
# other machines, not the server's. The baseline's requests cost next to nothing to make.
PREBUILT_SINGLE_PER_S = 3_000
PREBUILT_BATCH_TX_PER_S = 12_000


def prebuilt_requests(make_request: RequestMaker, clients: int, count: int) -> RequestMaker:
    """`make_request` with each client's first `count` requests made now."""
    made = [[make_request(n, i) for i in range(count)] for n in range(clients)]

    def request(n: int, i: int) -> Request:
        return made[n][i] if i < count else make_request(n, i)

    return request


def baseline_batched_insert(url: str, seconds: float) -> dict[str, float]:
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS raw_tx (key text PRIMARY KEY, body text NOT NULL)")
        conn.commit()
        rows, commits = 0, []
        stop = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < stop:
            batch = [(f"k{rows + i}", '{"amount": 1000}') for i in range(1000)]
            t0 = time.perf_counter()
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO raw_tx (key, body) VALUES (%s, %s) ON CONFLICT DO NOTHING", batch)
            conn.commit()
            commits.append(time.perf_counter() - t0)
            rows += len(batch)
        elapsed = time.monotonic() - started
    commits.sort()
    return {
        "tx_per_s": rows / elapsed,
        "p50_ms": 1000 * commits[len(commits) // 2],
        "p99_ms": 1000 * commits[int(len(commits) * 0.99)],
        "errors": 0,
    }


BENCH_APP_ID = "BENCH_APP"


def seed_ward(url: str, terminals: int) -> tuple[list[Terminal], PaymentApp]:
    """Merchants, campaigns, terminals and the payment app of a small ward;
    returns (terminal, merchant, key) per terminal and the app that signs receipts."""
    from engine.demo import ward
    from engine.receipts import PaymentApp
    from engine.settings import Settings
    from engine.store import db
    from engine.store.apps import Apps
    from engine.store.config import Config

    db.upgrade(url)
    config = Config(db.make_engine(url))
    # Campaigns of the current month, so every posted purchase is rated for real.
    merchants, campaigns = ward(7, dt.datetime.now(TOKYO).date())
    for m in merchants:
        config.create_merchant(m)
    for c in campaigns:
        config.create_campaign(c)
    out: list[Terminal] = []
    for i in range(terminals):
        merchant = merchants[i % len(merchants)]
        terminal_id = f"T_BENCH_{i}"
        config.create_terminal(terminal_id, merchant.id)
        out.append((terminal_id, merchant.id, config.create_key("terminal", terminal_id=terminal_id)))
    # Receipts issued at one instant, so the retry storm below re-sends byte-identical requests.
    issued = int(time.time())
    app = PaymentApp(
        BENCH_APP_ID, Apps(config.engine, Settings(database_url=url)).add(BENCH_APP_ID), now_s=lambda: issued
    )
    config.engine.dispose()
    return out, app


SIGNATURE_KEY_CACHE_S = 3.0  # longer than the API's per-process terminal-key cache (2 s)


def register_terminal_keys(url: str, terminals: Sequence[Terminal]) -> list[Ed25519PrivateKey]:
    """An Ed25519 key pair per terminal, the public half registered as an admin would."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from engine.http_signing import public_key_b64
    from engine.store import db
    from engine.store.config import Config

    config = Config(db.make_engine(url))
    keys = []
    for terminal_id, _, _ in terminals:
        key = Ed25519PrivateKey.generate()
        config.update_terminal(terminal_id, {"public_key": public_key_b64(key)})
        keys.append(key)
    config.engine.dispose()
    return keys


def unregister_terminal_keys(url: str, terminals: Sequence[Terminal]) -> None:
    from engine.store import db
    from engine.store.config import Config

    config = Config(db.make_engine(url))
    for terminal_id, _, _ in terminals:
        config.update_terminal(terminal_id, {"public_key": None})
    config.engine.dispose()


def receipt_verify_us(app: PaymentApp, samples: int = 20_000) -> float:
    """Server-side cost of one receipt check (signature, claims against the body), in microseconds."""
    from engine import receipts
    from engine.model import Purchase

    body = purchase("T_BENCH_0", "M0001", 0, 0, time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()))
    signed = app.sign_purchase(body, jti="pay_bench")
    parsed = Purchase.model_validate(signed)
    raw = [(receipts.decode_secret(app.secret), None)]
    now = int(time.time() * 1_000_000)
    started = time.perf_counter()
    for _ in range(samples):
        receipts.verify(signed["receipt"], parsed, lambda _app_id: raw, now)
    return (time.perf_counter() - started) / samples * 1e6


def purchase(terminal_id: str, merchant_id: str, n: int, i: int, occurred_at: str) -> dict[str, object]:
    return {
        "type": "purchase",
        "wallet_id": f"W{(n * 7919 + i * 104729) % 50_000}",
        "merchant_id": merchant_id,
        "terminal_id": terminal_id,
        "occurred_at": occurred_at,
        "amount": 500 + (i * 37) % 9500,
        "points_used": 0,
    }


def single_requests(terminals: Sequence[Terminal], payment_app: PaymentApp, occurred_at: str) -> RequestMaker:
    """Client n's i-th single post: a purchase of terminal n with its receipt, under key s-n-i."""

    def single(n: int, i: int) -> Request:
        terminal_id, merchant_id, key = terminals[n]
        body = json.dumps(
            payment_app.sign_purchase(purchase(terminal_id, merchant_id, n, i, occurred_at), jti=f"pay_s_{n}_{i}")
        ).encode()
        return (
            "POST",
            "/v1/transactions",
            body,
            {"Authorization": f"Bearer {key}", "Idempotency-Key": f"s-{n}-{i}"},
            1,
        )

    return single


def batch_requests(terminals: Sequence[Terminal], payment_app: PaymentApp, occurred_at: str) -> RequestMaker:
    """Client n's i-th batch: 1,000 purchases of terminal n with their receipts, keys b-n-i-j."""

    def batch(n: int, i: int) -> Request:
        terminal_id, merchant_id, key = terminals[n]
        items = [
            dict(
                payment_app.sign_purchase(
                    purchase(terminal_id, merchant_id, n, i * 1000 + j, occurred_at), jti=f"pay_b_{n}_{i}_{j}"
                ),
                idempotency_key=f"b-{n}-{i}-{j}",
            )
            for j in range(1000)
        ]
        return (
            "POST",
            "/v1/transactions/batch",
            json.dumps({"transactions": items}).encode(),
            {"Authorization": f"Bearer {key}"},
            1000,
        )

    return batch


def submissions(terminals: Sequence[Terminal], round_: int, size: int, occurred_at: str) -> list[Submission]:
    """`size` purchases of `round_` as the front end hands them to the ledger (validated, canonical
    JSON and its hash, key `r<round>-<i>`), spread over `terminals` (`seed_ward`'s)."""
    from engine.model import Purchase
    from engine.store.ledger import Submission

    out = []
    for j in range(size):
        terminal_id, merchant_id, _ = terminals[j % len(terminals)]
        body = Purchase.model_validate(purchase(terminal_id, merchant_id, round_, j, occurred_at))
        canonical = body.model_dump_json()
        request_hash = hashlib.sha256(canonical.encode()).hexdigest()
        out.append(Submission(terminal_id, f"r{round_}-{j}", request_hash, body, canonical))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds each HTTP phase runs before it is measured")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--no-peer", action="store_true", help="do not run pgledger after ours")
    parser.add_argument(
        "--no-writer-process", action="store_true", help="ours writes its groups from a thread, not a child process"
    )
    parser.add_argument(
        "--no-committer-process",
        action="store_true",
        help="ours decides its groups in the API process, not in a committer child",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run everything this many times; the last line holds the medians"
    )
    args = parser.parse_args()
    rounds = [one_round(args) for _ in range(args.rounds)]
    if args.rounds > 1:
        for i, figures in enumerate(rounds, 1):
            print(f"round {i}: " + " ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    print(" ".join(f"{k}={_format(k, statistics.median(r[k] for r in rounds))}" for k in rounds[0]))
    return 0


def _format(name: str, value: float) -> str:
    return f"{value:.0f}" if name == "batch_tps" else f"{value:.2f}" if name.endswith("_ms") else f"{value:.3f}"


def one_round(args: argparse.Namespace) -> dict[str, float]:
    """Every phase once (the baseline, ours, the peer), its figures printed; the last line's figures."""
    occurred_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    results: dict[str, dict[str, float]] = {}

    # (a) baseline: minimal app, one idempotent insert per request.
    url = fresh_database("setapay_bench_baseline")
    port = free_port()
    server = start_server("bench.baseline_app:app", port, args.workers, {"BASELINE_DATABASE_URL": url})
    try:
        body = json.dumps({"amount": 1000}).encode()
        results["baseline_single"] = asyncio.run(
            drive(
                port,
                args.clients,
                args.seconds,
                lambda n, i: ("POST", "/tx", body, {"Idempotency-Key": f"{n}-{i}"}, 1),
                warmup_s=args.warmup,
            )
        )
    finally:
        server.terminate()
        server.wait()
    results["baseline_batched_insert"] = baseline_batched_insert(url, args.seconds)

    # (b) and (c): our API.
    url = fresh_database("setapay_bench_ours")
    terminals, payment_app = seed_ward(url, args.clients)
    port = free_port()
    # Each client is one terminal posting flat out, far above a terminal's 50/second; the per-key
    # limit stays on (its cost is measured) but set out of reach.
    env = {
        "SETAPAY_DATABASE_URL": url,
        "SETAPAY_RATE_LIMIT_PER_KEY": "1000000/second",
        # As production runs it (docker-compose.yml): decided groups written by a child process.
        "SETAPAY_GROUP_COMMIT_WRITER_PROCESS": "false" if args.no_writer_process else "true",
        # As production runs it too: groups decided and written by a committer child.
        "SETAPAY_GROUP_COMMIT_PROCESS": "false" if args.no_committer_process else "true",
    }
    server = start_server("api.main:app", port, args.workers, env)
    try:
        single = single_requests(terminals, payment_app, occurred_at)

        measured_s = args.seconds + args.warmup
        per_client = int(PREBUILT_SINGLE_PER_S * measured_s / args.clients) + 1
        results["ours_single"] = asyncio.run(
            drive(port, args.clients, args.seconds, single, warmup_s=args.warmup, prebuilt=per_client)
        )

        batch = batch_requests(terminals, payment_app, occurred_at)

        per_batch_client = int(PREBUILT_BATCH_TX_PER_S * measured_s / 1000 / args.batch_clients) + 1
        results["ours_batch"] = asyncio.run(
            drive(port, args.batch_clients, args.seconds, batch, warmup_s=args.warmup, prebuilt=per_batch_client)
        )
    finally:
        server.terminate()
        server.wait()

    # (e) the peer right after the two phases it is compared with: on a host whose speed drifts,
    # the minutes between them would weigh in each ratio (one benchmark at a time: ours stopped).
    peer = run_peer(args.clients, args.seconds) if not args.no_peer else None

    server = start_server("api.main:app", port, args.workers, env)
    try:
        # (b') the same with every terminal signing its requests (SPEC §9.2): RFC 9421 Ed25519 plus
        # a content digest, verified by the server, nonces in the database (no Redis here). The
        # load generator signs on the same two cores (about 50 us a request).
        private = register_terminal_keys(url, terminals)

        def signed_single(n: int, i: int, keys: list[Ed25519PrivateKey] = private) -> Request:
            method, path, body, headers, weight = single(n, 10_000_000 + i)
            headers = {k: v for k, v in headers.items() if k != "Authorization"}
            headers.update(sign_request(keys[n], terminals[n][0], method, path, headers, body))
            headers["Authorization"] = f"Bearer {terminals[n][2]}"
            return method, path, body, headers, weight

        time.sleep(SIGNATURE_KEY_CACHE_S)  # every worker's terminal-key cache has seen the new keys
        results["ours_single_signed"] = asyncio.run(
            drive(
                port,
                args.clients,
                args.seconds,
                lambda n, i: signed_single(n, i),
                warmup_s=args.warmup,
                prebuilt=per_client,
            )
        )
        unregister_terminal_keys(url, terminals)
        time.sleep(SIGNATURE_KEY_CACHE_S)

        # (d) a retry storm: terminals re-sending requests already answered, database path.
        def replay(n: int, i: int) -> Request:
            method, path, body, headers, weight = single(n, i % 50)
            return method, path, body, headers, weight

        results["replay_database"] = asyncio.run(
            drive(port, args.clients, args.seconds / 2, replay, warmup_s=args.warmup)
        )
    finally:
        server.terminate()
        server.wait()

    # (d) the same storm with Redis configured: replays never touch the database.
    if not args.no_redis:
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
        port = free_port()
        server = start_server("api.main:app", port, args.workers, {**env, "SETAPAY_REDIS_URL": args.redis_url})
        try:
            asyncio.run(drive(port, args.clients, 1.0, replay))  # first pass fills the cache
            results["replay_redis"] = asyncio.run(
                drive(port, args.clients, args.seconds / 2, replay, warmup_s=args.warmup)
            )
            # Signed requests with their nonces in Redis (SET NX EX) instead of a database row each.
            private = register_terminal_keys(url, terminals)
            time.sleep(SIGNATURE_KEY_CACHE_S)

            def signed_single_redis(n: int, i: int) -> Request:
                return signed_single(n, 20_000_000 + i, private)

            results["ours_single_signed_redis"] = asyncio.run(
                drive(port, args.clients, args.seconds, signed_single_redis, warmup_s=args.warmup, prebuilt=per_client)
            )
            unregister_terminal_keys(url, terminals)
        finally:
            server.terminate()
            server.wait()

    for name, r in results.items():
        print(
            f"{name:26s} tx_per_s={r['tx_per_s']:10.0f} p50_ms={r['p50_ms']:8.2f} "
            f"p99_ms={r['p99_ms']:8.2f} errors={r['errors']}"
        )
    single_ratio = results["ours_single"]["tx_per_s"] / results["baseline_single"]["tx_per_s"]
    batch_ratio = results["ours_batch"]["tx_per_s"] / results["baseline_batched_insert"]["tx_per_s"]
    if "replay_redis" in results:
        replay_ratio = results["replay_redis"]["tx_per_s"] / results["replay_database"]["tx_per_s"]
        print(f"replay_redis_over_database={replay_ratio:.2f}")
    # What receipts cost the server: one check's CPU time times the accepted rate, as a share of
    # the time the server has (SPEC §9.1 wants under 10%).
    bearer = results["ours_single"]["tx_per_s"]
    print(
        f"signed_over_bearer_single={results['ours_single_signed']['tx_per_s'] / bearer:.3f}"
        + (
            f" signed_redis_over_bearer_single={results['ours_single_signed_redis']['tx_per_s'] / bearer:.3f}"
            if "ours_single_signed_redis" in results
            else ""
        )
    )
    verify_us = receipt_verify_us(payment_app)
    print(
        f"receipt_verify_us={verify_us:.1f} "
        f"receipt_share_single={verify_us * results['ours_single']['tx_per_s'] / 1e6:.4f} "
        f"receipt_share_batch={verify_us * results['ours_batch']['tx_per_s'] / 1e6:.4f}"
    )
    figures = {
        "single_ratio": single_ratio,
        "batch_tps": results["ours_batch"]["tx_per_s"],
        "batch_ratio": batch_ratio,
        "single_p99_ms": results["ours_single"]["p99_ms"],
    }
    if peer is not None:
        print(
            f"pgledger_single_tps={peer['pgledger_single_tps']:.0f} pgledger_batch_tps={peer['pgledger_batch_tps']:.0f}"
        )
        figures["pgledger_single_ratio"] = results["ours_single"]["tx_per_s"] / peer["pgledger_single_tps"]
        figures["pgledger_batch_ratio"] = results["ours_batch"]["tx_per_s"] / peer["pgledger_batch_tps"]
    return figures


def run_peer(clients: int, seconds: float) -> dict[str, float]:
    """pgledger on the same PostgreSQL, after ours (one benchmark at a time): its last line,
    `pgledger_single_tps=<f> pgledger_batch_tps=<f> p99_ms=<f>`, as numbers."""
    if not PEER.exists():
        raise SystemExit(f"no peer benchmark at {PEER}; set SETAPAY_PEERS_DIR or pass --no-peer")
    command = [sys.executable, str(PEER), "--clients", str(clients), "--seconds", str(seconds), "--batch-size", "1000"]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    fields = dict(pair.split("=", 1) for pair in done.stdout.strip().splitlines()[-1].split())
    return {name: float(value) for name, value in fields.items()}


if __name__ == "__main__":
    sys.exit(main())
