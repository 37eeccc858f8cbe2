"""The ledger half of `setapay demo`: a synthetic ward day posted through the HTTP API.

Seeds the demo ward (merchants, campaigns, one terminal and key per merchant)
through the admin API of a fresh embedded database, posts the first part of
the day's purchases, refunds and redemptions to `POST /v1/transactions` as
terminals would (each with its Idempotency-Key, a few retried; up to
IN_FLIGHT_MAX at once, each wallet's one at a time in the day's order, so the
server's group commit writes many together), and ends with the ledger check
computed from the postings alone.

The day is a synthetic one in December 2026, so the demo widens the accepted
`occurred_at` window the way a history import does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import heapq
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

import httpx
import orjson

from engine import collector
from engine import demo as ward_demo
from engine.clock import ManualClock
from engine.model import BankAccount, Credit, Purchase, Refund
from engine.rating.columns import Event
from engine.receipts import PaymentApp
from engine.settings import Settings
from engine.store import lifecycle, queries
from engine.timeutil import TOKYO, to_us

if TYPE_CHECKING:
    from rich.console import Console

DEMO_DATABASE = "setapay-demo.db"
DEMO_APP_ID = "SETAGAYA_PAY"
# Transactions in flight at once, as many terminals post them, and how far past the earliest
# unanswered one the demo looks for transactions of other wallets to send (see `_Schedule`).
IN_FLIGHT_MAX = 64
LOOKAHEAD = 256


class LedgerSummary(TypedDict):
    """What `run_ledger_demo` returns: the API's JSON answers (objects) as they came back."""

    database_url: str
    counts: dict[str, int]
    check: dict[str, Any]
    sample_wallet: dict[str, Any]
    sample_wallet_after_credit: dict[str, Any]
    credit_run: dict[str, Any] | None
    merchant_rewards: dict[str, Any]
    settlement: dict[str, Any]
    zengin_path: str
    reconciliation: dict[str, Any]


def _fresh_sqlite(path: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}{suffix}")
    return f"sqlite+pysqlite:///{path}"


def run_ledger_demo(
    transactions: int,
    seed: int = ward_demo.DEMO_SEED,
    database_url: str | None = None,
    progress: Callable[[int], Callable[[int], None]] | None = None,
    out_dir: str | None = None,
) -> LedgerSummary:
    try:
        return asyncio.run(_run_ledger_demo(transactions, seed, database_url, progress, out_dir))
    finally:
        collector.release()  # what `settle` froze of this run's application, collectable again


async def _run_ledger_demo(
    transactions: int,
    seed: int,
    database_url: str | None,
    progress: Callable[[int], Callable[[int], None]] | None,
    out_dir: str | None,
) -> LedgerSummary:
    from api.app import create_app

    url = database_url or _fresh_sqlite(Path.cwd() / DEMO_DATABASE)
    # A synthetic day posted as fast as the machine goes: no per-key rate limit, and the
    # 301 terminal keys (never revoked here) trusted for the longest look-up interval allowed.
    settings = Settings(database_url=url, rate_limit_per_key="off", key_cache_ttl_s=5)
    members, camps = ward_demo.ward(seed)
    # The day runs on its own clock: configuration the evening before, each
    # transaction a few seconds after it happened, runs on their due dates.
    day_start = dt.datetime.combine(ward_demo.DEMO_DATE, dt.time(), TOKYO)
    clock = ManualClock(to_us(day_start - dt.timedelta(days=1)))
    app = create_app(settings, clock=clock)
    config = app.state.config
    members = [m.model_copy(update={"bank_account": _bank_account(i)}) for i, m in enumerate(members)]
    # The ward credits its main point-back three times a month, five business
    # days after each dekad closes; the bonuses stay immediate.
    camps = [
        c.model_copy(update={"credit": Credit(schedule="dekad", delay_business_days=5)})
        if c.id.startswith("PB_")
        else c
        for c in camps
    ]
    events = ward_demo.day(members, transactions, seed)
    counts: collections.Counter[str] = collections.Counter()
    # The terminals talk HTTP to the application in this process (ASGI) on one event loop, many
    # requests at once but no thread per request: the processor goes to the server.
    transport = _InProcess(app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
        for m in members:
            _ok(await client.post("/v1/merchants", json=m.model_dump(mode="json"), headers=admin))
        for c in camps:
            _ok(await client.post("/v1/campaigns", json=c.model_dump(mode="json", exclude={"version"}), headers=admin))
        terminal_keys = {}
        for m in members:
            terminal_id = f"T{m.id[1:]}01"
            _ok(await client.post("/v1/terminals", json={"id": terminal_id, "merchant_id": m.id}, headers=admin))
            terminal_keys[terminal_id] = config.create_key("terminal", terminal_id=terminal_id)
        # The demo plays the ward's payment app too: it moves the coins and signs a receipt
        # (SPEC §9.1) for every purchase and refund, which the terminal carries.
        payment_app = PaymentApp(
            DEMO_APP_ID, app.state.apps.add(DEMO_APP_ID), now_s=lambda: clock.now_us() // 1_000_000
        )

        posted: dict[str, tuple[str, str]] = {}  # event key -> (transaction id, terminal)
        spendable: collections.Counter[str] = collections.Counter()  # what each wallet has earned so far
        collector.settle()  # the application and the ward, kept for the day: out of collections until `release`
        advance = progress(len(events)) if progress else None
        samples: list[tuple[int, str]] = []  # (day index, wallet) of purchases with pending and credited points
        counts_by_merchant: collections.Counter[str] = collections.Counter()

        def prepare(key: str, event: Purchase | Refund) -> tuple[str, dict[str, Any], dict[str, str]] | None:
            """The signed body and headers of one event, as its terminal sends it; None for a
            refund of a purchase the demo never posted."""
            body = event.model_dump(mode="json", exclude_none=True)
            if isinstance(event, Purchase):
                terminal_id = event.terminal_id
                # Wallets start empty here: redeem only what the wallet's earlier events earned it.
                body["points_used"] = min(event.points_used, spendable[event.wallet_id])
                body = payment_app.sign_purchase(body, jti=f"pay_{key}")
            else:
                if event.original_id not in posted:
                    return None
                body["original_id"], terminal_id = posted[event.original_id]
                body = payment_app.sign_refund(body, jti=f"ref_{key}")
            headers = {
                "Authorization": f"Bearer {terminal_keys[terminal_id]}",
                "Idempotency-Key": key,
                "X-Request-Id": key,
            }
            return terminal_id, body, headers

        async def post(request: tuple[str, dict[str, Any], dict[str, str]]) -> _Answer:
            return await transport.send("POST", "/v1/transactions", request[2], request[1])

        async def transact(index: int, key: str, event: Purchase | Refund) -> None:
            """Post one event as its terminal does (a few of them twice) and note the answer."""
            request = prepare(key, event)
            if request is None:
                return
            terminal_id, body, headers = request
            response = await post(request)
            answer = response.json()
            payment_app.accepted(body, answer)
            if index % 97 == 0:  # a terminal that lost the answer retries; it must be a replay
                retry = await post((terminal_id, body, {**headers, "X-Request-Id": f"{key}.retry"}))
                assert retry.headers.get("idempotent-replayed") == "true" and retry.json() == answer
                counts["retries replayed"] += 1
            if response.status_code == 201:
                counts[f"{event.type}s accepted"] += 1
                counts_by_merchant[answer["merchant_id"]] += 1
                if isinstance(event, Purchase):
                    posted[key] = (answer["id"], terminal_id)
                    credited = sum(a["points"] for a in answer["awards"] if a["status"] == "credited")
                    spendable[event.wallet_id] += credited - body["points_used"]
                    counts["redemptions"] += body["points_used"] > 0
                    pending = any(a["status"] == "pending" for a in answer["awards"])
                    if pending and credited:
                        samples.append((index, event.wallet_id))
                else:
                    wallet = answer["wallet_id"]
                    spendable[wallet] = max(
                        0, spendable[wallet] + answer["points_returned"] - answer["points_clawed_back"]
                    )
            else:
                counts[f"declined: {answer['code']}"] += 1

        # Terminals post at once, each transaction as soon as it may: the server's group commit
        # rates and writes together whatever is in flight. A wallet's transactions (a refund
        # counts for the wallet of its purchase) go out one at a time in the day's order, each
        # after the answer to the one before, so its awards, redemptions and refunds never
        # depend on the order within a group (see `_Schedule`) — until a campaign's budget runs
        # out: which wallets get its last points then depends on how groups fall, so a day much
        # longer than the default may differ from run to run in its last awards of that campaign.
        tasks: dict[asyncio.Task[None], int] = {}
        schedule = _Schedule(events)
        try:
            while not schedule.done():
                for index in schedule.ready(IN_FLIGHT_MAX - len(tasks)):
                    key, event = events[index]
                    # The engine's clock follows the day (it never moves back): a transaction is
                    # accepted at least a few seconds after it happened, at most as late as the
                    # latest one sent so far.
                    clock.set(to_us(event.occurred_at) + 3_000_000)
                    tasks[asyncio.create_task(transact(index, key, event))] = index
                finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    schedule.answered(tasks.pop(task))
                for task in finished:
                    task.result()  # a failed transaction fails the demo
                if advance:
                    advance(len(finished))
        finally:  # on a failure, the others in flight end before the application shuts down
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        sample_wallet = min(samples)[1] if samples else None
        finance = {"Authorization": f"Bearer {config.create_key('finance')}"}
        wallet_before = (await client.get(f"/v1/wallets/{sample_wallet}/points", headers=finance)).json()
        # The crediting run of the day's dekad: every pending point-back becomes available.
        due = [p["credit_at"] for p in wallet_before["pending_by_credit_date"]]
        credit_run = None
        if due:
            clock.set(to_us(dt.datetime.fromisoformat(max(due))))
            credit_run = lifecycle.credit_due(app.state.ledger, to_us(dt.datetime.fromisoformat(max(due))))
        wallet_after = (await client.get(f"/v1/wallets/{sample_wallet}/points", headers=finance)).json()
        busiest = max(members, key=lambda m: counts_by_merchant[m.id]).id if counts_by_merchant else members[0].id
        rewards = (await client.get(f"/v1/merchants/{busiest}/rewards", headers=finance)).json()

        # Month end: settle December, write the payout file, sign the chain heads, reconcile.
        period = ward_demo.DEMO_DATE.strftime("%Y-%m")
        clock.set(
            to_us(
                dt.datetime(
                    ward_demo.DEMO_DATE.year + (ward_demo.DEMO_DATE.month == 12),
                    ward_demo.DEMO_DATE.month % 12 + 1,
                    2,
                    9,
                    tzinfo=TOKYO,
                )
            )
        )
        run = (await client.post("/v1/settlement-runs", json={"period": period}, headers=finance)).json()
        out_path = Path(out_dir or Path.cwd() / "setapay-demo-out")
        out_path.mkdir(exist_ok=True)
        zengin_path = out_path / f"payout-{period}.zengin.txt"
        zengin_path.write_bytes((await client.get(f"/v1/settlement-runs/{run['id']}/zengin", headers=finance)).content)
        (out_path / f"statement-{period}.json").write_text(
            json.dumps(run["statement"], ensure_ascii=False, indent=1), encoding="utf-8"
        )
        (out_path / f"statement-{period}.csv").write_text(
            (await client.get(f"/v1/settlement-runs/{run['id']}/statement.csv", headers=finance)).text,
            encoding="utf-8",
        )
        await client.post("/v1/chain-heads", headers=finance)
        reconciliation = (await client.get("/v1/reconciliation", headers=finance)).json()
    check = queries.ledger_check(app.state.engine)
    app.state.engine.dispose()
    return {
        "database_url": url,
        "counts": dict(counts),
        "check": check,
        "sample_wallet": wallet_before,
        "sample_wallet_after_credit": wallet_after,
        "credit_run": credit_run,
        "merchant_rewards": rewards,
        "settlement": run,
        "zengin_path": str(zengin_path),
        "reconciliation": reconciliation,
    }


class _Schedule:
    """Which of the day's events may go out now: each wallet's events one at a time in the day's
    order (a refund belongs to its purchase's wallet), each after the answer to the one before,
    and none more than LOOKAHEAD events after the earliest one not yet answered (so no wallet
    falls far behind the day)."""

    def __init__(self, events: list[Event]) -> None:
        wallet_of = {key: ev.wallet_id for key, ev in events if isinstance(ev, Purchase)}
        self.chains = [
            ev.wallet_id if isinstance(ev, Purchase) else wallet_of.get(ev.original_id, key) for key, ev in events
        ]
        self.total = len(events)
        self.scanned = 0  # events before this index are out or waiting behind their wallet
        self.waiting: dict[str, collections.deque[int]] = {}  # wallet -> its events not yet out, in order
        self.busy: set[str] = set()  # wallets with an event in flight
        self.unanswered: list[int] = []  # heap of the indexes out or waiting
        self.finished: set[int] = set()
        self.free: list[int] = []  # heap of waiting indexes whose wallet is free

    def done(self) -> bool:
        return len(self.finished) == self.total

    def ready(self, room: int) -> list[int]:
        """Up to `room` events to send now, in the day's order."""
        while self.unanswered and self.unanswered[0] in self.finished:
            heapq.heappop(self.unanswered)
        horizon = (self.unanswered[0] if self.unanswered else self.scanned) + LOOKAHEAD
        while self.scanned < min(horizon, self.total):
            i, chain = self.scanned, self.chains[self.scanned]
            self.scanned += 1
            heapq.heappush(self.unanswered, i)
            queue = self.waiting.setdefault(chain, collections.deque())
            queue.append(i)
            if chain not in self.busy and len(queue) == 1:
                heapq.heappush(self.free, i)
        out: list[int] = []
        while self.free and len(out) < room:
            i = heapq.heappop(self.free)
            chain = self.chains[i]
            self.waiting[chain].popleft()
            self.busy.add(chain)
            out.append(i)
        return out

    def answered(self, index: int) -> None:
        chain = self.chains[index]
        self.finished.add(index)
        self.busy.discard(chain)
        queue = self.waiting.get(chain)
        if queue:
            heapq.heappush(self.free, queue[0])
        elif queue is not None:
            del self.waiting[chain]


class _Answer(NamedTuple):
    status_code: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return orjson.loads(self.content)


class _InProcess(httpx.AsyncBaseTransport):
    """HTTP to the ASGI application on the caller's event loop, as `httpx.ASGITransport` does
    (without its per-request probe for trio: a failed import, a scan of sys.path, each time
    when sniffio is not installed). `send` is the terminals' lean client: one request as
    method, path, headers and JSON body, without building httpx's request and response."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self._call(
            request.method, request.url.path, request.url.query, list(request.headers.raw), await request.aread()
        )
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    async def send(self, method: str, path: str, headers: dict[str, str], body: Any) -> _Answer:
        # Compact, UTF-8 as is: the bytes of json.dumps(separators=(",", ":"), ensure_ascii=False).
        content = orjson.dumps(body)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw += [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        return await self._call(method, path, b"", raw, content)

    async def _call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> _Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "headers": [(k.lower(), v) for k, v in headers],
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
            "root_path": "",
        }
        done = asyncio.Event()
        started: dict[str, Any] = {}
        parts: list[bytes] = []
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await done.wait()
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        if not (done.is_set() and started):
            raise RuntimeError(f"{method} {path}: the application did not answer in full")
        response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in started.get("headers", [])}
        return _Answer(started["status"], response_headers, b"".join(parts))


def _bank_account(i: int) -> BankAccount:
    """A plausible payout account per demo merchant (made-up numbers)."""
    return BankAccount(
        bank_code="0159",
        branch_code=f"{100 + i % 50:03d}",
        account_type="ordinary",
        account_number=f"{1_000_000 + i * 7919 % 8_999_999:07d}",
        holder_kana=f"ｾﾀｶﾞﾔｼｮｳﾃﾝ{i:04d}",
    )


def _ok(response: httpx.Response) -> None:
    assert response.status_code == 201, response.text


def print_ledger_summary(summary: LedgerSummary, console: Console | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"\n[bold]Posted through the API[/bold] ({summary['database_url']})")
    for name, value in sorted(summary["counts"].items()):
        console.print(f"  {name}: {value:,}")
    check = summary["check"]
    table = Table(title="Ledger check (from the postings)")
    for column in ("campaign", "issued", "clawed back", "redeemed (net)", "outstanding", "identity"):
        table.add_column(column, justify="right" if column != "campaign" else "left")
    for cid, c in check["campaigns"].items():
        table.add_row(
            cid,
            f"{c['issued']:,}",
            f"{c['clawed_back']:,}",
            f"{c['redeemed']:,}",
            f"{c['outstanding']:,}",
            "holds" if c["identity_holds"] else "BROKEN",
        )
    console.print(table)
    for name, ok in check["checks"].items():
        console.print(f"  {'✓' if ok else '✗'} {name.replace('_', ' ')}")
    console.print(f"  postings: {check['postings']:,}, trial balance: {check['trial_balance']}")
    for label, w in (
        ("after the day", summary["sample_wallet"]),
        ("after the crediting run", summary["sample_wallet_after_credit"]),
    ):
        console.print(
            f"\n[bold]Wallet {w['wallet_id']}[/bold] {label}: pending {w['pending']:,}, "
            f"available {w['available']:,}, debt {w['debt']:,}"
        )
        for p in w["pending_by_credit_date"]:
            console.print(f"  pending {p['points']:,} pt of {p['campaign_id']}, credited at {p['credit_at']}")
        for e in w["expiring"]:
            console.print(f"  {e['points']:,} pt expire at {e['expires_at']}")
    if summary["credit_run"]:
        run = summary["credit_run"]
        console.print(f"\ncrediting run as of {run['as_of']}: {run['awards_credited']:,} awards, {run['points']:,} pt")
    run = summary["settlement"]
    totals = run["statement"]["document"]["totals"]
    paid = [p for p in run["payouts"] if p["payout_status"] == "pending"]
    console.print(
        f"\n[bold]Settlement {run['statement']['document']['period']['name']}[/bold] ({run['id']}): "
        f"coin sales ¥{totals['coin_sales']:,}, points redeemed {totals['points_redeemed']:,}, "
        f"net payouts ¥{totals['net_payout']:,} to {len(paid)} merchants; statement signed "
        f"(key {run['statement']['signature']['key_id']})"
    )
    console.print(f"  Zengin payout file: {summary['zengin_path']}")
    rec = summary["reconciliation"]
    console.print(f"\n[bold]Reconciliation[/bold]: {'PASS' if rec['ok'] else 'FAIL'}")
    for name, c in rec["checks"].items():
        console.print(f"  {'✓' if c['pass'] else '✗'} {name.replace('_', ' ')}")
    r = summary["merchant_rewards"]
    console.print(
        f"\n[bold]Merchant {r['merchant_id']}[/bold]: {r['transactions']:,} transactions, coin sales "
        f"¥{r['coin_sales']:,}, points redeemed {r['points_redeemed']:,}"
    )
    for c in r["campaigns"]:
        console.print(
            f"  {c['campaign_id']}: awarded {c['awarded']:,}, pending {c['pending']:,}, "
            f"credited {c['credited']:,}, clawed back {c['clawed_back']:,}"
        )


def serve_demo(summary: LedgerSummary, host: str, port: int, console: Console | None = None) -> None:
    """Keep the demo's ledger up behind `setapay serve`'s application until interrupted, its clock on
    the evening of the demo day (so the pages' "today" is that day), and print where to sign in
    with a key of the busiest merchant and a finance key, made now for the purpose."""
    import uvicorn
    from rich.console import Console

    from api.app import create_app
    from engine.clock import SystemClock
    from engine.store.config import Config
    from engine.store.db import make_engine

    console = console or Console()
    evening = dt.datetime.combine(ward_demo.DEMO_DATE, dt.time(20), TOKYO)
    offset_s = int(evening.timestamp() - dt.datetime.now(dt.UTC).timestamp())
    settings = Settings(database_url=summary["database_url"], clock_offset_s=offset_s)
    engine = make_engine(settings.database_url)
    config = Config(engine, settings, SystemClock(offset_s))
    merchant_id = summary["merchant_rewards"]["merchant_id"]
    merchant_key = config.create_key("merchant", merchant_id=merchant_id)
    finance_key = config.create_key("finance")
    engine.dispose()
    console.print(f"\n[bold]Serving the demo's ledger[/bold] at http://{host}:{port}/ui/ (Ctrl-C stops it)")
    console.print(f"  clock: the evening of {ward_demo.DEMO_DATE.isoformat()} (Asia/Tokyo)")
    console.print(f"  merchant key ({merchant_id}): {merchant_key}", soft_wrap=True)
    console.print(f"  finance key: {finance_key}", soft_wrap=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
