"""Caps and budgets stay exact with several API processes on one PostgreSQL (issue 4, item 4).

Three writing processes share one fresh PostgreSQL database: server A is
`setapay serve --workers 2` and server B a second `setapay serve` on another
port. Two stacking campaigns have small budgets and tight per-wallet caps
(C_RUSH: 5,000 pt, 300 pt per wallet for the whole campaign; C_DAILY: 3,000 pt,
150 pt per wallet per Tokyo day), far below what the load asks for.

CLIENT_THREADS threads act as terminals, spread over both servers:

* phase 1, a mix: single purchases (some retried with the same
  Idempotency-Key, often on the other server, some sent to both servers at
  the same instant), refunds of accepted purchases (full, partial, or too
  large, some from a terminal of another merchant), batch posts with fresh
  items, replayed keys, in-batch duplicates and refunds (some whole batches
  re-sent to the other server), and keys reused with a different body;
* phase 2, after every thread finished phase 1: purchases only, one per
  wallet large enough to fill its caps, twice over. Refunds return budget, so
  this phase is what guarantees that demand exceeds the budget at the end.

Every definitive answer (201 or a business decline) is recorded. Afterwards
the database is checked against the answers and against SPEC §4 recomputed
here, independently of the engine, in acceptance (sequence) order: the award
of every purchase and the clawback of every refund, the budget and every
wallet window never exceeded at any point, net issued equal to the budget
exactly, every acknowledged id in `payment` once with its postings and
nothing else written, replays identical, the sequence gapless, and the
engine's own ledger check (trial balance, cached balances, hash chain).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.store.db import make_engine
from engine.store.models import (
    AwardRow,
    CampaignRow,
    IdempotencyRow,
    LedgerHead,
    PaymentRow,
    PostingRow,
    WalletWindowUsageRow,
)
from engine.store.queries import ledger_check
from tests.receipts import SigningTransport
from tests.server import ServerProcess
from tests.ward import Plan, Ward

TOKYO = dt.timezone(dt.timedelta(hours=9))

CLIENT_THREADS = 48
PHASE1_OPS_PER_THREAD = 30
PHASE2_ROUNDS = 2
REQUEST_TIMEOUT_S = 30
# A client keeps retrying a key (transport error, 5xx, 409 in progress) for at most this long.
ANSWER_DEADLINE_S = 30
PHASE_TIMEOUT_S = 90
# Under chaos phase 1 lasts until the chaos is over, at most this many operations per thread.
CHAOS_OPS_PER_THREAD_MAX = 400

MERCHANTS = [
    {
        "id": "M_SHOTEN",
        "name": "三茶八百屋",
        "merchant_class": "small",
        "shotengai_id": "S_SANCHA",
        "ward_local": True,
        "ethical_certifications": [],
    },
    {
        "id": "M_BAKERY",
        "name": "用賀ベーカリー",
        "merchant_class": "small",
        "shotengai_id": None,
        "ward_local": True,
        "ethical_certifications": [],
    },
    {
        "id": "M_CONV",
        "name": "コンビニ 桜新町店",
        "merchant_class": "semi_large",
        "shotengai_id": None,
        "ward_local": True,
        "ethical_certifications": [],
    },
]
MERCHANT_CLASS = {m["id"]: m["merchant_class"] for m in MERCHANTS}
TERMINALS = {
    "T_SHOTEN_1": "M_SHOTEN",
    "T_SHOTEN_2": "M_SHOTEN",
    "T_BAKERY_1": "M_BAKERY",
    "T_BAKERY_2": "M_BAKERY",
    "T_CONV_1": "M_CONV",
    "T_CONV_2": "M_CONV",
}
TERMINALS_OF = defaultdict(list)
for _t, _m in TERMINALS.items():
    TERMINALS_OF[_m].append(_t)
SMALL_SHOP_TERMINALS = ["T_SHOTEN_1", "T_SHOTEN_2", "T_BAKERY_1", "T_BAKERY_2"]
# Few wallets, so that concurrent purchases of one wallet on different processes
# race for its cap. Their caps together still exceed each budget
# (24 x 300 >= 5,000 and 24 x 150 >= 3,000), which phase 2 relies on.
WALLETS = [f"W{i:02d}" for i in range(24)]
# Phase 2's purchase at a small shop: 20% = 400 pt >= the C_RUSH cap, 10% = 200 pt >= the C_DAILY cap.
PHASE2_AMOUNT = 2000


@dataclasses.dataclass(frozen=True)
class CampaignRule:
    """The part of a campaign the independent recomputation needs."""

    id: str
    priority: int
    rate_bp_by_class: dict[str, int]  # first matching tier, by merchant class
    per_wallet_cap: int
    period: str  # "campaign" | "day"
    budget: int


RULES = [
    CampaignRule("C_RUSH", 10, {"small": 2000, "semi_large": 1000}, 300, "campaign", 5000),
    CampaignRule("C_DAILY", 5, {"small": 1000, "semi_large": 1000, "large": 1000}, 150, "day", 3000),
]
RULES_IN_ORDER = sorted(RULES, key=lambda r: (-r.priority, r.id))  # SPEC §4: priority desc, id asc
RULE = {r.id: r for r in RULES}


def campaign_records(now: dt.datetime) -> list[dict]:
    # Instants near now: the engine's default occurred_at window then accepts the load as it is.
    window = {
        "starts_at": (now - dt.timedelta(days=1)).isoformat(timespec="seconds"),
        "ends_at": (now + dt.timedelta(days=1)).isoformat(timespec="seconds"),
    }
    common = {
        "item_tags": None,
        "fixed_points": 0,
        "min_base": 0,
        "per_tx_cap": None,
        "stacking": "stack",
        "credit": {"schedule": "immediate", "delay_business_days": 0},
        "validity_months": 6,
        **window,
    }
    return [
        {
            "id": "C_RUSH",
            "name": "開始記念 20%還元",
            "funding_source": "ward_general",
            "tiers": [
                {"match": {"merchant_classes": ["small"]}, "rate_bp": 2000},
                {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 1000},
            ],
            "per_wallet_cap": 300,
            "per_wallet_cap_period": "campaign",
            "budget": 5000,
            "priority": 10,
            **common,
        },
        {
            "id": "C_DAILY",
            "name": "毎日10%",
            "funding_source": "national_grant",
            "tiers": [{"match": {}, "rate_bp": 1000}],
            "per_wallet_cap": 150,
            "per_wallet_cap_period": "day",
            "budget": 3000,
            "priority": 5,
            **common,
        },
    ]


def now_iso(offset_s: float = -20) -> str:
    # A little in the past: the engine refuses instants more than 5 minutes ahead of its clock.
    return (dt.datetime.now(TOKYO) + dt.timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")


def purchase_body(terminal: str, wallet: str, amount: int) -> dict:
    return {
        "type": "purchase",
        "wallet_id": wallet,
        "merchant_id": TERMINALS[terminal],
        "terminal_id": terminal,
        "occurred_at": now_iso(),
        "amount": amount,
        "points_used": 0,
    }


def refund_body(original_id: str, amount: int) -> dict:
    return {"type": "refund", "original_id": original_id, "amount": amount, "occurred_at": now_iso(-5)}


# -- what the clients were told ------------------------------------------------------


@dataclasses.dataclass
class Answer:
    status: int
    body: dict
    replayed: bool
    server: str
    via: str  # "single" | "batch"


@dataclasses.dataclass
class Scope:
    """One (terminal, Idempotency-Key) and every definitive answer it got for its one body."""

    terminal: str
    key: str
    request: dict
    answers: list[Answer] = dataclasses.field(default_factory=list)
    # An attempt ended without an answer (transport error, 5xx): it may or may not have been
    # written, so the first answer the client saw may legitimately be a replay.
    uncertain: bool = False


class Journal:
    """Everything the clients sent and were told; shared by all client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.scopes: dict[tuple[str, str], Scope] = {}
        self.reuses: list[tuple[tuple[str, str], Answer]] = []
        self.problems: list[str] = []
        self.accepted: dict[str, list[tuple[str, int]]] = defaultdict(list)  # merchant -> (purchase id, amount)
        self.answered_by_terminal: dict[str, list[tuple[str, dict]]] = defaultdict(list)  # terminal -> (key, body)
        # Under chaos (tests/concurrency/test_crash_safety.py) a server whose database connections
        # were just ended answers 503 service_unavailable: a retry signal, counted, not a problem.
        self.tolerate_unavailable = False
        self.unavailable = 0

    def open(self, terminal: str, key: str, request: dict) -> None:
        with self.lock:
            scope = self.scopes.setdefault((terminal, key), Scope(terminal, key, request))
            assert scope.request == request, "the test itself reused a key with another body by mistake"

    def uncertain(self, terminal: str, key: str) -> None:
        with self.lock:
            self.scopes[(terminal, key)].uncertain = True

    def add(self, terminal: str, key: str, answer: Answer) -> None:
        with self.lock:
            scope = self.scopes[(terminal, key)]
            scope.answers.append(answer)
            if len(scope.answers) == 1:
                self.answered_by_terminal[terminal].append((key, scope.request))
                if answer.status == 201 and scope.request["type"] == "purchase":
                    self.accepted[scope.request["merchant_id"]].append((answer.body["id"], scope.request["amount"]))

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def pick_purchase(self, rng: random.Random, merchant: str | None = None) -> tuple[str, str, int] | None:
        with self.lock:
            merchants = [merchant] if merchant else [m for m, v in self.accepted.items() if v]
            merchants = [m for m in merchants if self.accepted.get(m)]
            if not merchants:
                return None
            m = rng.choice(merchants)
            pid, amount = rng.choice(self.accepted[m])
            return m, pid, amount

    def pick_answered(self, rng: random.Random, terminal: str, n: int) -> list[tuple[str, dict]]:
        with self.lock:
            done = self.answered_by_terminal.get(terminal, [])
            return rng.sample(done, min(n, len(done)))


def _code(r: httpx.Response) -> object:
    try:
        return r.json().get("code")
    except ValueError:
        return None


class Client:
    """One client thread: a terminal fleet talking to both servers, retrying like a terminal does."""

    def __init__(self, servers: list[ServerProcess], keys: dict[str, str], journal: Journal, seed: int) -> None:
        self.servers = servers
        self.keys = keys
        self.journal = journal
        self.rng = random.Random(seed)
        # The payment app (registered once on the shared database) signs every transaction's receipt.
        self.http = [
            httpx.Client(
                base_url=s.base_url, timeout=REQUEST_TIMEOUT_S, transport=SigningTransport(servers[0].payment_app)
            )
            for s in servers
        ]

    def close(self) -> None:
        for h in self.http:
            h.close()

    def _headers(self, terminal: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.keys[terminal]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def _send(self, server: int, terminal: str, key: str, body: dict) -> Answer:
        """POST until a definitive answer: 201 or a business decline. 409 in progress, 5xx and
        transport errors are retried with the same key, on the other server after a failure."""
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while True:
            assert time.monotonic() < deadline, f"no definitive answer for {terminal}/{key} in {ANSWER_DEADLINE_S}s"
            try:
                r = self.http[server].post("/v1/transactions", json=body, headers=self._headers(terminal, key))
            except httpx.TransportError:
                self.journal.uncertain(terminal, key)
                server = 1 - server
                time.sleep(0.05)
                continue
            if r.status_code == 409 and r.json().get("code") == "request_in_progress":
                time.sleep(0.01 + self.rng.random() * 0.03)
                continue
            if r.status_code >= 500:
                self.journal.uncertain(terminal, key)
                if self.journal.tolerate_unavailable and r.status_code == 503 and _code(r) == "service_unavailable":
                    with self.journal.lock:
                        self.journal.unavailable += 1
                    server = 1 - server
                    time.sleep(0.05)
                    continue
                self.journal.problem(f"{r.status_code} from {self.servers[server].name}: {r.text[:300]}")
                server = 1 - server
                time.sleep(0.05)
                continue
            return Answer(
                r.status_code,
                r.json(),
                r.headers.get("Idempotent-Replayed") == "true",
                self.servers[server].name,
                "single",
            )

    def single(self, server: int, terminal: str, key: str, body: dict) -> Answer:
        self.journal.open(terminal, key, body)
        answer = self._send(server, terminal, key, body)
        self.journal.add(terminal, key, answer)
        return answer

    def batch(self, server: int, terminal: str, items: list[tuple[str, dict]]) -> None:
        for key, body in items:
            self.journal.open(terminal, key, body)
        payload = {"transactions": [{**body, "idempotency_key": key} for key, body in items]}
        try:
            r = self.http[server].post("/v1/transactions/batch", json=payload, headers=self._headers(terminal))
        except httpx.TransportError:
            r = None
        if r is None or r.status_code >= 500:
            # The batch may or may not be written; each item is then settled by retrying it alone.
            for key, body in items:
                self.journal.uncertain(terminal, key)
                self.journal.add(terminal, key, self._send(1 - server, terminal, key, body))
            return
        if r.status_code != 200:
            self.journal.problem(f"batch answered {r.status_code}: {r.text[:300]}")
            return
        results = r.json()["results"]
        if len(results) != len(items):
            self.journal.problem(f"batch of {len(items)} answered {len(results)} results")
            return
        for (key, body), res in zip(items, results):
            if res["status"] == 409 or res["status"] >= 500:
                if res["status"] >= 500:
                    self.journal.uncertain(terminal, key)
                answer = self._send(1 - server, terminal, key, body)
            else:
                answer = Answer(res["status"], res["body"], res["replayed"], self.servers[server].name, "batch")
            self.journal.add(terminal, key, answer)

    # -- phase 1: the mix ----------------------------------------------------------

    def phase1_op(self) -> None:
        x = self.rng.random()
        if x < 0.55:
            self.purchase()
        elif x < 0.75:
            self.refund()
        elif x < 0.82:
            self.batch_upload()
        elif x < 0.91:
            self.racing_duplicate()
        elif x < 0.96:
            self.reused_key()
        else:
            self.foreign_refund()

    def purchase(self, terminal: str | None = None, wallet: str | None = None, amount: int | None = None) -> None:
        rng = self.rng
        terminal = terminal or rng.choice(list(TERMINALS))
        body = purchase_body(terminal, wallet or rng.choice(WALLETS), amount or rng.randrange(500, 3001, 10))
        key, server = uuid.uuid4().hex, rng.randrange(2)
        self.single(server, terminal, key, body)
        if rng.random() < 0.3:  # the terminal did not hear the answer and retries, maybe elsewhere
            self.single(server if rng.random() < 0.3 else 1 - server, terminal, key, body)

    def refund(self, terminal: str | None = None) -> None:
        rng = self.rng
        picked = self.journal.pick_purchase(rng)
        if picked is None:
            return self.purchase()
        merchant, pid, amount = picked
        # Full refunds, partial ones, and some that exceed what is left (declined).
        refund_amount = amount if rng.random() < 0.4 else rng.randrange(1, amount // 2 + 1)
        terminal = terminal or rng.choice(TERMINALS_OF[merchant])
        body, key, server = refund_body(pid, refund_amount), uuid.uuid4().hex, rng.randrange(2)
        self.single(server, terminal, key, body)
        if rng.random() < 0.3:
            self.single(1 - server, terminal, key, body)

    def foreign_refund(self) -> None:
        """A refund sent by a terminal of another merchant: declined, remembered, nothing written."""
        picked = self.journal.pick_purchase(self.rng)
        if picked is None:
            return self.purchase()
        merchant, pid, amount = picked
        terminal = self.rng.choice([t for t, m in TERMINALS.items() if m != merchant])
        self.single(self.rng.randrange(2), terminal, uuid.uuid4().hex, refund_body(pid, amount))

    def batch_upload(self) -> None:
        """An offline terminal's backlog: fresh purchases, a refund or two, keys it already sent
        (their answers must be replayed), and one key twice in the same batch."""
        rng = self.rng
        terminal = rng.choice(list(TERMINALS))
        merchant = TERMINALS[terminal]
        items = [
            (uuid.uuid4().hex, purchase_body(terminal, rng.choice(WALLETS), rng.randrange(500, 3001, 10)))
            for _ in range(rng.randrange(10, 41))
        ]
        for _ in range(rng.randrange(0, 3)):
            picked = self.journal.pick_purchase(rng, merchant)
            if picked:
                items.append((uuid.uuid4().hex, refund_body(picked[1], rng.randrange(1, picked[2] // 2 + 1))))
        items += self.journal.pick_answered(rng, terminal, 3)
        items.append(rng.choice(items))
        rng.shuffle(items)
        server = rng.randrange(2)
        self.batch(server, terminal, items)
        if rng.random() < 0.4:  # the whole upload retried on the other server: every item a replay
            self.batch(1 - server, terminal, items)

    def racing_duplicate(self) -> None:
        """The same key sent to both servers at the same instant."""
        terminal = self.rng.choice(list(TERMINALS))
        body = purchase_body(terminal, self.rng.choice(WALLETS), self.rng.randrange(500, 3001, 10))
        key = uuid.uuid4().hex
        failure: list[BaseException] = []

        def other() -> None:
            try:
                self.single(1, terminal, key, body)
            except BaseException as exc:  # reported by the calling thread
                failure.append(exc)

        self.journal.open(terminal, key, body)
        thread = threading.Thread(target=other)
        thread.start()
        self.single(0, terminal, key, body)
        thread.join()
        if failure:
            raise failure[0]

    def reused_key(self) -> None:
        """A key already answered, sent again with another body: 422 idempotency_key_reused."""
        rng = self.rng
        terminal = rng.choice(list(TERMINALS))
        done = self.journal.pick_answered(rng, terminal, 1)
        if not done:
            return self.purchase(terminal)
        key, body = done[0]
        changed = {**body, "amount": body["amount"] + 10}
        deadline = time.monotonic() + ANSWER_DEADLINE_S
        while True:
            assert time.monotonic() < deadline, f"no answer for the reused key {terminal}/{key}"
            try:
                r = self.http[rng.randrange(2)].post(
                    "/v1/transactions", json=changed, headers=self._headers(terminal, key)
                )
            except httpx.TransportError:
                return
            # Another thread may be retrying the original body with this key right now.
            if r.status_code == 409 and r.json().get("code") == "request_in_progress":
                time.sleep(0.02)
                continue
            break
        with self.journal.lock:
            self.journal.reuses.append(((terminal, key), Answer(r.status_code, r.json(), False, "", "single")))


def _run_clients(servers, keys, journal, chaos: threading.Event | None = None) -> None:
    """The two phases. With `chaos` (an event set once the chaos is over), phase 1 goes on past
    its count of operations until the chaos is over, so every planned kill lands under load."""
    barrier = threading.Barrier(CLIENT_THREADS, timeout=PHASE_TIMEOUT_S)
    phase2 = [(wallet, n) for n in range(PHASE2_ROUNDS) for wallet in WALLETS]
    _ = servers[0].payment_app  # registered once, before the client threads share it

    def work(index: int) -> None:
        client = Client(servers, keys, journal, seed=1000 + index)
        try:
            done = 0
            while done < PHASE1_OPS_PER_THREAD or (
                chaos is not None and not chaos.is_set() and done < CHAOS_OPS_PER_THREAD_MAX
            ):
                client.phase1_op()
                done += 1
            # No refund after this point: phase 2 fills the budgets for good.
            barrier.wait()
            for wallet, n in phase2[index::CLIENT_THREADS]:
                terminal = SMALL_SHOP_TERMINALS[(index + n) % len(SMALL_SHOP_TERMINALS)]
                client.single(
                    (index + n) % 2, terminal, uuid.uuid4().hex, purchase_body(terminal, wallet, PHASE2_AMOUNT)
                )
        except BaseException:
            barrier.abort()  # the other threads must not wait for this one forever
            raise
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        futures = [pool.submit(work, i) for i in range(CLIENT_THREADS)]
        for f in futures:
            f.result(timeout=2 * PHASE_TIMEOUT_S)


# -- the recomputation of SPEC §4 ------------------------------------------------------


def _window(rule: CampaignRule, occurred_at: str) -> object:
    if rule.period == "day":
        return dt.datetime.fromisoformat(occurred_at).astimezone(TOKYO).date()
    return None


def recompute(payments: list[PaymentRow]) -> dict[str, dict]:
    """SPEC §4 for these two campaigns, in acceptance order, from the stored requests:
    returns per payment id the awards {campaign: (points, capped_by)} or the clawbacks
    {campaign: points}; asserts no budget and no wallet window is exceeded at any point."""
    spend: dict[str, int] = defaultdict(int)
    usage: dict[tuple, int] = defaultdict(int)
    purchases: dict[str, dict] = {}
    expected: dict[str, dict] = {}
    for row in payments:
        request = json.loads(row.request_json)
        if row.type == "purchase":
            coin = request["amount"] - request["points_used"]
            awards = {}
            for rule in RULES_IN_ORDER:
                rate = rule.rate_bp_by_class.get(MERCHANT_CLASS[request["merchant_id"]])
                if rate is None or coin == 0:
                    continue
                points, capped = coin * rate // 10000, None
                slot = (rule.id, request["wallet_id"], _window(rule, request["occurred_at"]))
                if points > rule.per_wallet_cap - usage[slot]:
                    points, capped = rule.per_wallet_cap - usage[slot], "wallet_cap"
                if points > rule.budget - spend[rule.id]:
                    points, capped = rule.budget - spend[rule.id], "budget"
                if points <= 0:
                    continue
                awards[rule.id] = (points, capped)
                usage[slot] += points
                spend[rule.id] += points
                assert usage[slot] <= rule.per_wallet_cap and spend[rule.id] <= rule.budget
            purchases[row.id] = {
                "amount": row.amount,
                "refunded": 0,
                "awards": awards,
                "slots": {c: (c, request["wallet_id"], _window(RULE[c], request["occurred_at"])) for c in awards},
            }
            expected[row.id] = {"awards": awards}
        else:
            original = purchases[request["original_id"]]
            before, after = original["refunded"], original["refunded"] + request["amount"]
            assert after <= original["amount"], f"refund {row.id} accepted beyond its original's amount"
            original["refunded"] = after
            clawbacks = {}
            for cid, (share, _) in original["awards"].items():

                def target(r: int, share: int = share, amount: int = original["amount"]) -> int:
                    return share if r == amount else share * r // amount

                delta = target(after) - target(before)
                if delta:
                    clawbacks[cid] = delta
                    usage[original["slots"][cid]] -= delta
                    spend[cid] -= delta
            expected[row.id] = {"clawbacks": clawbacks}
    return {"payments": expected, "spend": dict(spend)}


# -- the test ------------------------------------------------------------------


def test_caps_budgets_and_idempotency_exact_across_processes(postgres_url, tmp_path):
    exercise(postgres_url, tmp_path)


def exercise(
    postgres_url,
    tmp_path,
    chaos: Callable[[list[ServerProcess], threading.Event], None] | None = None,
    env_a: dict[str, str] | None = None,
    env_b: dict[str, str] | None = None,
):
    """Start the servers, configure the ward, run the clients, verify everything; returns the
    journal. With `chaos`, it runs in a thread of its own while the clients post, given the
    servers and an event to set when it is over. `env_a`, `env_b`: settings of server A, B only."""
    started = time.monotonic()
    server_a = ServerProcess(postgres_url, tmp_path, workers=2, name="A", log_tail=3000, env=env_a)
    server_b = ServerProcess(postgres_url, tmp_path, workers=1, name="B", log_tail=3000, env=env_b)
    servers = [server_a, server_b]
    db = make_engine(postgres_url)
    try:
        # A migrates the fresh database; B starts only then, so two servers never race to migrate.
        server_a.start()
        server_b.launch()
        # The ward of this test (tests/ward.py), configured through A's admin API, a key per terminal.
        keys = Ward(server_a, Plan(MERCHANTS, campaign_records(dt.datetime.now(TOKYO)), TERMINALS)).terminal_keys()
        server_b.wait_ready()
        setup_s = time.monotonic() - started

        journal = Journal()
        load_started = time.monotonic()
        if chaos is None:
            _run_clients(servers, keys, journal)
        else:
            journal.tolerate_unavailable = True
            over = threading.Event()
            failures: list[BaseException] = []

            def run_chaos() -> None:
                try:
                    chaos(servers, over)
                except BaseException as exc:  # reported below, after the clients stop
                    failures.append(exc)
                finally:
                    over.set()

            thread = threading.Thread(target=run_chaos, name="chaos")
            thread.start()
            try:
                _run_clients(servers, keys, journal, over)
            finally:
                thread.join()
            if failures:
                raise failures[0]
        load_s = time.monotonic() - load_started
        for s in servers:
            assert s.process.poll() is None, f"server {s.name} died under load:\n{s.log()}"
        _verify(db, journal)
        print(
            f"\nsetup {setup_s:.1f}s, load {load_s:.1f}s, total {time.monotonic() - started:.1f}s, "
            f"{len(journal.scopes)} keys, {sum(len(s.answers) for s in journal.scopes.values())} answers, "
            f"{journal.unavailable} answers 503 service_unavailable"
        )
        return journal
    except BaseException:
        for s in servers:
            print(f"--- server {s.name} log tail ---\n{s.log()}")
        raise
    finally:
        for s in servers:
            s.stop()
        db.dispose()


def _verify(db, journal: Journal) -> None:
    assert not journal.problems, journal.problems[:10]

    # -- the answers themselves ---------------------------------------------------------
    acknowledged: dict[str, tuple[Scope, dict]] = {}  # payment id -> scope, body
    cross_server_replays = 0
    for (terminal, key), scope in journal.scopes.items():
        assert scope.answers, f"{terminal}/{key} never got a definitive answer"
        first = scope.answers[0]
        for a in scope.answers:
            assert (a.status, a.body) == (first.status, first.body), (
                f"{terminal}/{key}: answers differ between attempts: {first} vs {a}"
            )
        originals = [a for a in scope.answers if not a.replayed]
        assert len(originals) <= 1, f"{terminal}/{key} was processed {len(originals)} times: {scope.answers}"
        if not scope.uncertain:
            assert len(originals) == 1, f"{terminal}/{key}: no first answer, only replays: {scope.answers}"
        if len({a.server for a in scope.answers}) > 1:
            cross_server_replays += 1
        kind = scope.request["type"]
        if first.status == 201:
            pid = first.body["id"]
            assert pid not in acknowledged, f"two keys acknowledged the same payment {pid}"
            acknowledged[pid] = (scope, first.body)
        elif kind == "purchase":
            pytest.fail(f"purchase {terminal}/{key} declined: {first.status} {first.body}")
        else:
            assert first.body.get("code") in ("refund_exceeds_original", "refund_merchant_mismatch"), (
                f"refund {terminal}/{key} declined unexpectedly: {first.status} {first.body}"
            )
    for scope_key, answer in journal.reuses:
        assert answer.status == 422 and answer.body.get("code") == "idempotency_key_reused", (scope_key, answer)

    with Session(db) as session:
        payments = list(session.execute(select(PaymentRow).order_by(PaymentRow.sequence)).scalars())
        awards = list(session.execute(select(AwardRow)).scalars())
        postings = list(session.execute(select(PostingRow).order_by(PostingRow.sequence)).scalars())
        usage_rows = list(session.execute(select(WalletWindowUsageRow)).scalars())
        meters = {r.id: r.issued_net for r in session.execute(select(CampaignRow)).scalars()}
        remembered = {(r.terminal_id, r.key): r for r in session.execute(select(IdempotencyRow)).scalars()}
        head = session.get(LedgerHead, 1)

    # -- every acknowledged transaction once, nothing else -------------------------------
    by_id = {p.id: p for p in payments}
    assert len(by_id) == len(payments)
    assert set(by_id) == set(acknowledged), (
        f"written but never acknowledged: {sorted(set(by_id) - set(acknowledged))[:10]}; "
        f"acknowledged but not written: {sorted(set(acknowledged) - set(by_id))[:10]}"
    )
    sequences = [p.sequence for p in payments]
    assert sequences == list(range(1, len(payments) + 1)), "payment sequence is not gapless 1..N"
    assert head.last_payment_sequence == len(payments)
    for pid, (scope, body) in acknowledged.items():
        row = by_id[pid]
        assert body["sequence"] == row.sequence
        assert (row.type, row.terminal_id, row.amount) == (
            scope.request["type"],
            scope.terminal,
            scope.request["amount"],
        )
        assert json.loads(row.response_json) == body, f"{pid}: stored answer differs from the acknowledged one"
    # An accepted payment remembers its answer under its key on its own row; a decline in `idempotency_key`.
    on_payments = {(p.terminal_id, p.idempotency_key): p for p in payments}
    assert len(on_payments) == len(payments) and not set(on_payments) & set(remembered)
    assert set(remembered) | set(on_payments) == set(journal.scopes), "remembered keys differ from the answered ones"
    for scope_key, scope in journal.scopes.items():
        first = scope.answers[0]
        if first.status == 201:
            assert on_payments[scope_key].id == first.body["id"]
        else:
            assert (remembered[scope_key].response_status, remembered[scope_key].payment_id) == (first.status, None)

    # -- postings, awards and payments agree; nothing half-written ------------------------
    postings_of: dict[str, list[PostingRow]] = defaultdict(list)
    for p in postings:
        assert p.payment_id in by_id, f"posting {p.sequence} belongs to no payment ({p.payment_id})"
        postings_of[p.payment_id].append(p)
    awards_of: dict[str, dict[str, AwardRow]] = defaultdict(dict)
    for a in awards:
        assert a.payment_id in by_id, f"award of unknown payment {a.payment_id}"
        awards_of[a.payment_id][a.campaign_id] = a
    clawed_of: dict[tuple[str, str], int] = defaultdict(int)
    refunded_of: dict[str, int] = defaultdict(int)
    for pid, row in by_id.items():
        body = acknowledged[pid][1]
        mine = postings_of.get(pid)
        assert mine, f"payment {pid} has no postings"
        reasons = Counter()
        per_campaign: dict[str, int] = defaultdict(int)
        for p in mine:
            reasons[p.reason] += p.amount
            if p.campaign_id:
                per_campaign[p.campaign_id] += p.amount
        if row.type == "purchase":
            answered = {a["campaign_id"]: (a["points"], a["capped_by"]) for a in body["awards"]}
            stored = {c: (a.points, a.capped_by) for c, a in awards_of.get(pid, {}).items()}
            assert stored == answered, f"{pid}: award rows {stored} != acknowledged {answered}"
            assert set(reasons) <= {"coin_sale", "award"} and reasons["coin_sale"] == row.amount, (pid, reasons)
            assert dict(per_campaign) == {c: p for c, (p, _) in answered.items()}, (pid, per_campaign, answered)
            assert body["points_awarded"] == sum(p for p, _ in answered.values())
        else:
            assert pid not in awards_of
            answered = {c["campaign_id"]: c["points"] for c in body["clawbacks"]}
            assert set(reasons) <= {"coin_refund", "clawback"} and reasons["coin_refund"] == row.amount, (pid, reasons)
            assert dict(per_campaign) == answered, (pid, per_campaign, answered)
            assert body["points_clawed_back"] == sum(answered.values())
            for c, p in answered.items():
                clawed_of[(row.original_id, c)] += p
            refunded_of[row.original_id] += row.amount
    for pid, row in by_id.items():
        if row.type == "purchase":
            assert row.refunded_amount == refunded_of.get(pid, 0) <= row.amount, (pid, row.refunded_amount)
            for c, a in awards_of.get(pid, {}).items():
                assert a.clawed_back == clawed_of.get((pid, c), 0), (pid, c, a.clawed_back)

    # -- SPEC §4 recomputed in acceptance order -------------------------------------------
    oracle = recompute(payments)
    for pid, row in by_id.items():
        want = oracle["payments"][pid]
        body = acknowledged[pid][1]
        if row.type == "purchase":
            got = {a["campaign_id"]: (a["points"], a["capped_by"]) for a in body["awards"]}
            assert got == want["awards"], f"purchase #{row.sequence} {pid}: awarded {got}, SPEC §4 gives {want}"
        else:
            got = {c["campaign_id"]: c["points"] for c in body["clawbacks"]}
            assert got == want["clawbacks"], f"refund #{row.sequence} {pid}: clawed {got}, SPEC §4 gives {want}"

    # -- wallet windows: recomputed from the award rows, within the cap, equal to the table --
    recomputed: dict[tuple, int] = defaultdict(int)
    for a in awards:
        recomputed[(a.campaign_id, a.wallet_id, a.window_key)] += a.points - a.clawed_back
    table = {(u.campaign_id, u.wallet_id, u.window_key): u.points for u in usage_rows}
    for slot in set(recomputed) | set(table):
        assert recomputed.get(slot, 0) == table.get(slot, 0), (slot, recomputed.get(slot), table.get(slot))
        assert recomputed.get(slot, 0) <= RULE[slot[0]].per_wallet_cap, f"wallet window over its cap: {slot}"

    # -- budgets: exact to the point -------------------------------------------------------
    net: dict[str, int] = defaultdict(int)
    for p in postings:
        if p.reason == "award":
            net[p.campaign_id] += p.amount
        elif p.reason == "clawback":
            net[p.campaign_id] -= p.amount
    for rule in RULES:
        assert net[rule.id] == meters[rule.id] == oracle["spend"][rule.id] == rule.budget, (
            f"{rule.id}: postings net {net[rule.id]}, meter {meters[rule.id]}, "
            f"recomputed {oracle['spend'][rule.id]}, budget {rule.budget}"
        )

    check = ledger_check(db)
    assert check["ok"], {k: v for k, v in check.items() if k != "campaigns"}

    # -- the load did what this test claims to exercise --------------------------------
    capped = Counter(a.capped_by for a in awards)
    refunds_with_clawbacks = sum(
        1 for pid, row in by_id.items() if row.type == "refund" and acknowledged[pid][1]["clawbacks"]
    )
    declined = Counter(s.answers[0].body.get("code") for s in journal.scopes.values() if s.answers[0].status != 201)
    replays = sum(1 for s in journal.scopes.values() for a in s.answers if a.replayed)
    vias = Counter(a.via for s in journal.scopes.values() for a in s.answers)
    assert capped["budget"] > 0 and capped["wallet_cap"] > 0, capped
    assert refunds_with_clawbacks > 0 and declined["refund_exceeds_original"] > 0, declined
    assert declined["refund_merchant_mismatch"] > 0 and journal.reuses
    assert cross_server_replays > 0 and replays > 0 and vias["batch"] > 0 and vias["single"] > 0
    print(
        f"\npayments {len(payments)} (refunds {sum(1 for p in payments if p.type == 'refund')}), "
        f"postings {len(postings)}, capped_by {dict(capped)}, declines {dict(declined)}, replays {replays}, "
        f"cross-server {cross_server_replays}, answers by {dict(vias)}, key reuses {len(journal.reuses)}"
    )
