"""The ledger half of `setapay demo`: a synthetic ward day posted through the HTTP API.

Seeds the demo ward (merchants, campaigns, one terminal and key per merchant)
through the admin API of a fresh embedded database, posts the first part of
the day's purchases, refunds and redemptions to `POST /v1/transactions` as
terminals would (each with its Idempotency-Key, a few retried; up to WAVE_MAX
terminals at once, so the server's group commit writes them together), and
ends with the ledger check computed from the postings alone.

The day is a synthetic one in December 2026, so the demo widens the accepted
`occurred_at` window the way a history import does.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from engine import demo as ward_demo
from engine.clock import ManualClock
from engine.model import BankAccount, Credit, Purchase, Refund
from engine.rating.columns import Event
from engine.receipts import PaymentApp
from engine.settings import Settings
from engine.store import lifecycle, queries
from engine.timeutil import TOKYO, to_us

if TYPE_CHECKING:
    import httpx
    from rich.console import Console

DEMO_DATABASE = "setapay-demo.db"
DEMO_APP_ID = "SETAGAYA_PAY"
# Transactions in flight at once, as many terminals post them (see `_waves`).
WAVE_MAX = 64


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
    import warnings

    with warnings.catch_warnings():
        # Starlette's notice about its httpx-based client is not for the demo's audience.
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from api.app import create_app

    url = database_url or _fresh_sqlite(Path.cwd() / DEMO_DATABASE)
    # A synthetic day posted as fast as the machine goes: no per-key rate limit.
    settings = Settings(database_url=url, rate_limit_per_key="off")
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
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {config.create_key('admin')}"}
        for m in members:
            _ok(client.post("/v1/merchants", json=m.model_dump(mode="json"), headers=admin))
        for c in camps:
            _ok(client.post("/v1/campaigns", json=c.model_dump(mode="json", exclude={"version"}), headers=admin))
        terminal_keys = {}
        for m in members:
            terminal_id = f"T{m.id[1:]}01"
            _ok(client.post("/v1/terminals", json={"id": terminal_id, "merchant_id": m.id}, headers=admin))
            terminal_keys[terminal_id] = config.create_key("terminal", terminal_id=terminal_id)
        # The demo plays the ward's payment app too: it moves the coins and signs a receipt
        # (SPEC §9.1) for every purchase and refund, which the terminal carries.
        payment_app = PaymentApp(
            DEMO_APP_ID, app.state.apps.add(DEMO_APP_ID), now_s=lambda: clock.now_us() // 1_000_000
        )

        posted: dict[str, tuple[str, str]] = {}  # event key -> (transaction id, terminal)
        spendable: collections.Counter[str] = collections.Counter()  # what each wallet has earned so far
        advance = progress(len(events)) if progress else None
        sample_wallet = None
        counts_by_merchant: collections.Counter[str] = collections.Counter()

        def prepare(key: str, event: Purchase | Refund) -> tuple[str, dict[str, Any], dict[str, str]] | None:
            """The signed body and headers of one event, as its terminal sends it; None for a
            refund of a purchase the demo never posted."""
            body = event.model_dump(mode="json", exclude_none=True)
            if isinstance(event, Purchase):
                terminal_id = event.terminal_id
                # Wallets start empty here: redeem only what earlier waves have earned them.
                body["points_used"] = min(event.points_used, spendable[event.wallet_id])
                body = payment_app.sign_purchase(body, jti=f"pay_{key}")
            else:
                if event.original_id not in posted:
                    return None
                body["original_id"], terminal_id = posted[event.original_id]
                body = payment_app.sign_refund(body, jti=f"ref_{key}")
            return terminal_id, body, {"Authorization": f"Bearer {terminal_keys[terminal_id]}", "Idempotency-Key": key}

        def post(request: tuple[str, dict[str, Any], dict[str, str]]) -> httpx.Response:
            response: httpx.Response = client.post("/v1/transactions", json=request[1], headers=request[2])
            return response

        # Terminals post at once: a wave of events goes out concurrently and the server's
        # group commit rates and writes them together. A wave never holds one wallet twice
        # (its awards then do not depend on the order in the group) nor a refund of a
        # purchase in the same wave (its terminal has not been answered yet).
        n = 0
        with ThreadPoolExecutor(max_workers=WAVE_MAX) as pool:
            for wave in _waves(events):
                # The wave's transactions reach the engine a few seconds after its last one happened.
                clock.set(to_us(wave[-1][1].occurred_at) + 3_000_000)
                prepared = [(key, event, prepare(key, event)) for key, event in wave]
                ready = [(key, event, request) for key, event, request in prepared if request is not None]
                responses = list(pool.map(post, [request for _, _, request in ready]))
                for (key, event, request), response in zip(ready, responses):
                    terminal_id, body, _ = request
                    payment_app.accepted(body, response.json())
                    if n % 97 == 0:  # a terminal that lost the answer retries; it must be a replay
                        retry = post(request)
                        assert retry.headers.get("Idempotent-Replayed") == "true" and retry.json() == response.json()
                        counts["retries replayed"] += 1
                    n += 1
                    answer = response.json()
                    if response.status_code == 201:
                        counts[f"{event.type}s accepted"] += 1
                        counts_by_merchant[answer["merchant_id"]] += 1
                        if isinstance(event, Purchase):
                            posted[key] = (answer["id"], terminal_id)
                            credited = sum(a["points"] for a in answer["awards"] if a["status"] == "credited")
                            spendable[event.wallet_id] += credited - body["points_used"]
                            counts["redemptions"] += body["points_used"] > 0
                            pending = any(a["status"] == "pending" for a in answer["awards"])
                            if pending and credited and sample_wallet is None:
                                sample_wallet = event.wallet_id
                        else:
                            wallet = answer["wallet_id"]
                            spendable[wallet] = max(
                                0, spendable[wallet] + answer["points_returned"] - answer["points_clawed_back"]
                            )
                    else:
                        counts[f"declined: {answer['code']}"] += 1
                if advance:
                    advance(len(wave))
        finance = {"Authorization": f"Bearer {config.create_key('finance')}"}
        wallet_before = client.get(f"/v1/wallets/{sample_wallet}/points", headers=finance).json()
        # The crediting run of the day's dekad: every pending point-back becomes available.
        due = [p["credit_at"] for p in wallet_before["pending_by_credit_date"]]
        credit_run = None
        if due:
            clock.set(to_us(dt.datetime.fromisoformat(max(due))))
            credit_run = lifecycle.credit_due(app.state.ledger, to_us(dt.datetime.fromisoformat(max(due))))
        wallet_after = client.get(f"/v1/wallets/{sample_wallet}/points", headers=finance).json()
        busiest = max(members, key=lambda m: counts_by_merchant[m.id]).id if counts_by_merchant else members[0].id
        rewards = client.get(f"/v1/merchants/{busiest}/rewards", headers=finance).json()

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
        run = client.post("/v1/settlement-runs", json={"period": period}, headers=finance).json()
        out_path = Path(out_dir or Path.cwd() / "setapay-demo-out")
        out_path.mkdir(exist_ok=True)
        zengin_path = out_path / f"payout-{period}.zengin.txt"
        zengin_path.write_bytes(client.get(f"/v1/settlement-runs/{run['id']}/zengin", headers=finance).content)
        (out_path / f"statement-{period}.json").write_text(json.dumps(run["statement"], ensure_ascii=False, indent=1))
        (out_path / f"statement-{period}.csv").write_text(
            client.get(f"/v1/settlement-runs/{run['id']}/statement.csv", headers=finance).text
        )
        client.post("/v1/chain-heads", headers=finance)
        reconciliation = client.get("/v1/reconciliation", headers=finance).json()
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


def _waves(events: list[Event]) -> Iterator[list[Event]]:
    """The day's events in order, cut into waves of at most WAVE_MAX that never hold one
    wallet twice nor a refund of a purchase in the same wave."""
    wave: list[Event] = []
    wallets: set[str] = set()
    keys: set[str] = set()
    for key, event in events:
        wallet = event.wallet_id if isinstance(event, Purchase) else None
        if wave and (
            len(wave) == WAVE_MAX or wallet in wallets or (isinstance(event, Refund) and event.original_id in keys)
        ):
            yield wave
            wave, wallets, keys = [], set(), set()
        wave.append((key, event))
        keys.add(key)
        if wallet is not None:
            wallets.add(wallet)
    if wave:
        yield wave


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
