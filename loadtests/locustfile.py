"""Locust load test of setapay-engine: a campaign-launch day at the ward's terminals (issue 4, item 6).

The mix (weights are per user class; see loadtests/README.md for the command):

* TerminalUser (most users): one terminal each, posting purchases with
  `POST /v1/transactions` (some with tagged items, a few retried with the same
  Idempotency-Key as a terminal does when it missed the answer), and refunding
  some of its own earlier purchases;
* BatchUser (few): an offline terminal uploading its backlog with
  `POST /v1/transactions/batch`, 100-1,000 items per request;
* MerchantUser: a merchant reading its own transactions, `GET /v1/transactions/{id}`;
* WalletUser: the wallet app reading `GET /v1/wallets/{id}/points` (app key).

Only http://127.0.0.1 is ever targeted: any other host is refused at start-up,
so the test cannot be pointed at a shared or production server by mistake.

Configuration (environment):

  LOAD_TEST_HOST        default http://127.0.0.1:8000 (used when --host is not given)
  LOAD_TEST_KEYS_FILE   JSON with the keys to use (format below); written by LOAD_TEST_SETUP=1
  LOAD_TEST_SETUP=1     seed the server's database first: an admin key through `setapay keys create`,
                        merchants, campaigns and terminals through the admin API, then terminal,
                        merchant and finance keys through the CLI. Needs LOAD_TEST_DATABASE_URL (the
                        server's SETAPAY_DATABASE_URL), since keys are made only by the CLI.
  LOAD_TEST_MERCHANTS   merchants to seed (default 5); LOAD_TEST_TERMINALS terminals (default 10)
  LOAD_TEST_WALLETS     distinct wallets purchases are spread over (default 2000)
  LOAD_TEST_BATCH_MIN / LOAD_TEST_BATCH_MAX   items per batch upload (default 100 / 1000)
  LOAD_TEST_MAX_TRANSACTIONS  stop once this many transactions were posted (0 = no bound, the default)
  LOAD_TEST_SEED        random seed (default: random)

Keys file:
  {"terminals": [{"id": "T1", "merchant_id": "M1", "key": "sp_terminal_..."}],
   "merchants": [{"id": "M1", "key": "sp_merchant_..."}],   # optional: MerchantUser idles without
   "finance_key": "sp_finance_...",                          # optional: WalletUser idles without
   "wallet_prefix": "LW"}                                     # optional
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import requests
from locust import HttpUser, between, events, task
from locust.exception import StopUser

from engine.receipts import PaymentApp

REPO = Path(__file__).resolve().parents[1]
TOKYO = dt.timezone(dt.timedelta(hours=9))
ALLOWED_HOSTNAME = "127.0.0.1"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


HOST = os.environ.get("LOAD_TEST_HOST", "http://127.0.0.1:8000")
WALLETS = _int_env("LOAD_TEST_WALLETS", 2000)
BATCH_MIN = _int_env("LOAD_TEST_BATCH_MIN", 100)
BATCH_MAX = _int_env("LOAD_TEST_BATCH_MAX", 1000)
MAX_TRANSACTIONS = _int_env("LOAD_TEST_MAX_TRANSACTIONS", 0)
SEED = os.environ.get("LOAD_TEST_SEED")
_rng = random.Random(int(SEED) if SEED else None)

# Filled at init (from the keys file or by seeding) and shared by every user of this process.
CONFIG: dict = {}
PAYMENT_APP: list = []  # the one PaymentApp of the run, made at init from the keys file
# Purchases this process saw accepted, per merchant, for refunds and merchant reads; bounded.
ACCEPTED: dict[str, deque] = defaultdict(lambda: deque(maxlen=5000))
_terminal_cycle = None
_posted = 0
_posted_lock = threading.Lock()


# -- start-up: host check, keys, optional seeding ---------------------------------------


def _check_host(url: str | None) -> None:
    parts = urlsplit(url or "")
    if parts.scheme != "http" or parts.hostname != ALLOWED_HOSTNAME:
        raise SystemExit(f"loadtests: refusing host {url!r}: only http://{ALLOWED_HOSTNAME}[:port] may be targeted")


def _now(offset_s: float = 0) -> str:
    return (dt.datetime.now(TOKYO) + dt.timedelta(seconds=offset_s)).isoformat(timespec="milliseconds")


def _cli_key(
    database_url: str, role: str, merchant: str | None = None, terminal: str | None = None
) -> subprocess.Popen:
    """`setapay keys create` under the server's database URL; the key is alone on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETAPAY_")}
    env["SETAPAY_DATABASE_URL"] = database_url
    args = [sys.executable, "-m", "engine.cli", "keys", "create", "--role", role]
    if merchant:
        args += ["--merchant", merchant]
    if terminal:
        args += ["--terminal", terminal]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _keys(database_url: str, requests_: list[tuple[str, str | None, str | None]], parallel: int = 4) -> list[str]:
    # A few at a time: each is a Python start-up, and this machine has two cores.
    out: list[str] = []
    for i in range(0, len(requests_), parallel):
        procs = [_cli_key(database_url, *r) for r in requests_[i : i + parallel]]
        for r, p in zip(requests_[i : i + parallel], procs):
            stdout, stderr = p.communicate(timeout=120)
            if p.returncode != 0:
                raise SystemExit(f"loadtests: keys create {r} failed: {stderr.strip()}")
            out.append(stdout.strip())
    return out


def seed(host: str) -> dict:
    """Merchants, campaigns and terminals of a fresh load-test ward; returns the keys file content."""
    database_url = os.environ.get("LOAD_TEST_DATABASE_URL")
    if not database_url:
        raise SystemExit("loadtests: LOAD_TEST_SETUP=1 needs LOAD_TEST_DATABASE_URL (the server's database)")
    # A tag of its own, so seeding twice into one database does not collide on ids.
    tag = uuid.uuid4().hex[:6]
    n_merchants = _int_env("LOAD_TEST_MERCHANTS", 5)
    n_terminals = _int_env("LOAD_TEST_TERMINALS", 10)
    classes = ["small", "small", "semi_large", "small", "large"]
    merchants = [
        {
            "id": f"LM_{tag}_{i:02d}",
            "name": f"負荷試験店 {i}",
            "merchant_class": classes[i % len(classes)],
            "shotengai_id": "S_LOAD" if i % 2 == 0 else None,
            "ward_local": True,
            "ethical_certifications": [],
        }
        for i in range(n_merchants)
    ]
    window = {"starts_at": _now(-30 * 86400), "ends_at": _now(30 * 86400)}
    campaigns = [
        # Like the ward's real ones: 20% at small shops, 10% at convenience stores, monthly cap, big budget;
        # a tagged ethical campaign with a small budget so its exhaustion is part of the run.
        {
            "id": f"LC_{tag}_POINTBACK",
            "name": "負荷試験 ポイント還元",
            "funding_source": "ward_general",
            **window,
            "tiers": [
                {"match": {"merchant_classes": ["small"]}, "rate_bp": 2000},
                {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 1000},
            ],
            "per_wallet_cap": 10000,
            "per_wallet_cap_period": "month",
            "budget": 50_000_000,
            "priority": 10,
        },
        {
            "id": f"LC_{tag}_ETHICAL",
            "name": "負荷試験 エシカル",
            "funding_source": "climate_fund",
            **window,
            "tiers": [{"match": {}, "rate_bp": 1000}],
            "item_tags": ["ethical", "local_produce"],
            "per_tx_cap": 300,
            "budget": 200_000,
            "priority": 5,
        },
    ]
    terminals = [
        {"id": f"LT_{tag}_{i:03d}", "merchant_id": merchants[i % n_merchants]["id"]} for i in range(n_terminals)
    ]
    admin = _keys(database_url, [("admin", None, None)])[0]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {admin}"
    for path, records in (("/v1/merchants", merchants), ("/v1/campaigns", campaigns), ("/v1/terminals", terminals)):
        for record in records:
            r = session.post(host + path, json=record, timeout=30)
            if r.status_code != 201:
                raise SystemExit(f"loadtests: POST {path} answered {r.status_code}: {r.text[:300]}")
    # The payment app whose receipts the terminals carry (SPEC §9.1); this file plays the app too.
    app_id = f"LAPP_{tag}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SETAPAY_")}
    env["SETAPAY_DATABASE_URL"] = database_url
    added = subprocess.run(
        [sys.executable, "-m", "engine.cli", "apps", "add", app_id],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if added.returncode != 0:
        raise SystemExit(f"loadtests: apps add failed: {added.stderr.strip()}")
    keys = _keys(
        database_url,
        [("terminal", None, t["id"]) for t in terminals]
        + [("merchant", m["id"], None) for m in merchants]
        + [("finance", None, None), ("app", None, None)],
    )
    return {
        "terminals": [{**t, "key": k} for t, k in zip(terminals, keys[:n_terminals])],
        "merchants": [{"id": m["id"], "key": k} for m, k in zip(merchants, keys[n_terminals:-2])],
        "finance_key": keys[-2],
        "app_key": keys[-1],
        "app": {"id": app_id, "secret": added.stdout.strip()},
        "wallet_prefix": f"LW{tag}",
    }


@events.init.add_listener
def _init(environment, **_kwargs) -> None:
    global _terminal_cycle
    host = environment.host or HOST
    _check_host(host)
    # Every user class targets the checked host, whatever a class or option said before.
    environment.host = host
    for user_class in environment.user_classes:
        user_class.host = host
    keys_file = os.environ.get("LOAD_TEST_KEYS_FILE")
    if os.environ.get("LOAD_TEST_SETUP") == "1":
        CONFIG.update(seed(environment.host.rstrip("/")))
        if keys_file:
            Path(keys_file).write_text(json.dumps(CONFIG, indent=1))
    elif keys_file:
        CONFIG.update(json.loads(Path(keys_file).read_text()))
    else:
        raise SystemExit("loadtests: set LOAD_TEST_KEYS_FILE (keys JSON) or LOAD_TEST_SETUP=1 (seed the database)")
    if not CONFIG.get("terminals"):
        raise SystemExit("loadtests: the keys file names no terminals")
    CONFIG.setdefault("wallet_prefix", "LW")
    if not CONFIG.get("app"):
        raise SystemExit("loadtests: the keys file names no payment app (seed again with LOAD_TEST_SETUP=1)")
    PAYMENT_APP.append(PaymentApp(CONFIG["app"]["id"], CONFIG["app"]["secret"]))
    _terminal_cycle = itertools.cycle(CONFIG["terminals"])


def _count_posted(n: int, environment) -> None:
    """LOAD_TEST_MAX_TRANSACTIONS: stop the whole run once that many transactions were posted."""
    global _posted
    if not MAX_TRANSACTIONS:
        return
    with _posted_lock:
        _posted += n
        reached = _posted >= MAX_TRANSACTIONS
    if reached and environment.runner is not None:
        # Not from inside this request's greenlet: quitting kills the users, this one included.
        gevent.spawn(environment.runner.quit)


# -- the users -------------------------------------------------------------------


def _wallet() -> str:
    # A few heavy users and a long tail, as in a ward: the square of a uniform number favours low ids.
    return f"{CONFIG['wallet_prefix']}{int(WALLETS * _rng.random() ** 2):06d}"


def _purchase(terminal: dict, occurred_at: str) -> dict:
    amount = _rng.choice([120, 280, 450, 680, 980, 1280, 1650, 2200, 3300, 5400, 8800, 15000])
    body = {
        "type": "purchase",
        "wallet_id": _wallet(),
        "merchant_id": terminal["merchant_id"],
        "terminal_id": terminal["id"],
        "occurred_at": occurred_at,
        "amount": amount,
        "points_used": 0,
    }
    if _rng.random() < 0.3:  # a basket with local produce or ethical goods
        tagged = amount // 3
        body["items"] = [
            {"amount": tagged, "tags": [_rng.choice(["ethical", "local_produce", "fair_trade"])]},
            {"amount": amount - tagged, "tags": []},
        ]
    return body


class TerminalUser(HttpUser):
    """A shop terminal: purchases, the odd retry, refunds of its own purchases."""

    weight = 20
    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.terminal = next(_terminal_cycle)
        self.headers = {"Authorization": f"Bearer {self.terminal['key']}"}
        self.mine: deque = deque(maxlen=200)  # (id, amount) of this terminal's accepted purchases

    def _post(self, body: dict, key: str, name: str, ok_codes: tuple[str, ...] = ()) -> dict | None:
        with self.client.post(
            "/v1/transactions",
            json=body,
            headers={**self.headers, "Idempotency-Key": key},
            name=name,
            catch_response=True,
        ) as r:
            _count_posted(1, self.environment)
            if r.status_code == 201:
                r.success()
                return r.json()
            code = r.json().get("code") if r.headers.get("content-type", "").endswith("json") else None
            if code in ok_codes:  # a business decline the scenario expects (e.g. refund already full)
                r.success()
            else:
                r.failure(f"{r.status_code} {code}")
            return None

    @task(20)
    def purchase(self) -> None:
        jti = "pay_" + uuid.uuid4().hex
        body, key = PAYMENT_APP[0].sign_purchase(_purchase(self.terminal, _now(-1)), jti=jti), uuid.uuid4().hex
        answer = self._post(body, key, "POST /v1/transactions [purchase]")
        if answer:
            self.mine.append((answer["id"], body["amount"], jti))
            ACCEPTED[self.terminal["merchant_id"]].append(answer["id"])
            if _rng.random() < 0.05:  # missed the answer: the same key again must replay it
                replay = self._post(body, key, "POST /v1/transactions [retry]")
                if replay is not None and replay != answer:
                    self.environment.events.request.fire(
                        request_type="CHECK",
                        name="replay identical",
                        response_time=0,
                        response_length=0,
                        exception=AssertionError("a replay differed from the original answer"),
                    )

    @task(2)
    def refund(self) -> None:
        if not self.mine:
            return
        pid, amount, jti = _rng.choice(self.mine)
        refund_amount = amount if _rng.random() < 0.5 else _rng.randint(1, amount)
        body = PAYMENT_APP[0].sign_refund(
            {"type": "refund", "original_id": pid, "amount": refund_amount, "occurred_at": _now(-1)}, original_jti=jti
        )
        self._post(body, uuid.uuid4().hex, "POST /v1/transactions [refund]", ok_codes=("refund_exceeds_original",))


class BatchUser(HttpUser):
    """A terminal back online, uploading the backlog it kept while offline."""

    weight = 1
    wait_time = between(2, 5)

    def on_start(self) -> None:
        self.terminal = next(_terminal_cycle)
        self.headers = {"Authorization": f"Bearer {self.terminal['key']}"}

    @task
    def upload_backlog(self) -> None:
        n = _rng.randint(BATCH_MIN, BATCH_MAX)
        # Spread over the last hours, in order, as the terminal recorded them.
        items = [
            {
                **PAYMENT_APP[0].sign_purchase(_purchase(self.terminal, _now(-3 * 3600 * (n - i) / n))),
                "idempotency_key": uuid.uuid4().hex,
            }
            for i in range(n)
        ]
        with self.client.post(
            "/v1/transactions/batch",
            json={"transactions": items},
            headers=self.headers,
            name=f"POST /v1/transactions/batch [{BATCH_MIN}-{BATCH_MAX}]",
            catch_response=True,
        ) as r:
            _count_posted(n, self.environment)
            if r.status_code != 200:
                r.failure(f"{r.status_code}")
                return
            results = r.json()["results"]
            bad = [x["status"] for x in results if x["status"] != 201]
            if len(results) != n or bad:
                r.failure(f"{len(results)} results for {n} items, not accepted: {bad[:5]}")
                return
            r.success()
            for x in results[:: max(1, n // 20)]:
                ACCEPTED[self.terminal["merchant_id"]].append(x["body"]["id"])


class MerchantUser(HttpUser):
    """A merchant checking the points its customers earned on its own transactions."""

    weight = 3
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        merchants = CONFIG.get("merchants") or []
        if not merchants:
            raise StopUser()
        self.merchant = _rng.choice(merchants)
        self.headers = {"Authorization": f"Bearer {self.merchant['key']}"}

    @task
    def read_transaction(self) -> None:
        seen = ACCEPTED.get(self.merchant["id"])
        if not seen:
            return
        pid = _rng.choice(seen)
        with self.client.get(
            f"/v1/transactions/{pid}", headers=self.headers, name="GET /v1/transactions/[id]", catch_response=True
        ) as r:
            if r.status_code == 200 and r.json().get("id") == pid:
                r.success()
            else:
                r.failure(f"{r.status_code}")


class WalletUser(HttpUser):
    """The wallet app showing a resident's pending, available and expiring points."""

    weight = 3
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        if not CONFIG.get("app_key"):
            raise StopUser()
        self.headers = {"Authorization": f"Bearer {CONFIG['app_key']}"}

    @task
    def read_points(self) -> None:
        with self.client.get(
            f"/v1/wallets/{_wallet()}/points",
            headers=self.headers,
            name="GET /v1/wallets/[id]/points",
            catch_response=True,
        ) as r:
            if r.status_code == 200 and "available" in r.json():
                r.success()
            else:
                r.failure(f"{r.status_code}")
