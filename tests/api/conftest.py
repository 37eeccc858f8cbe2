"""Fixtures for the HTTP tests: fresh databases, a real uvicorn server, keys from the CLI.

Every test here talks to `setapay serve` over a socket with httpx, exactly as a
terminal would; nothing runs in-process. A server is started once per test
module and backend (SQLite file, PostgreSQL database), on a database of its own,
and stopped at teardown. API keys are created the way an operator creates them,
with `setapay keys create` under the server's environment.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from engine.store.db import make_engine
from engine.store.models import PaymentRow, PostingRow
from tests.conftest import CONNECT_TIMEOUT_S, PG_HOST, PG_PORT, PG_USER, _unavailable
from tests.server import ServerProcess

REPO = Path(__file__).resolve().parents[2]
VECTORS_DIR = Path(os.environ.get("SETAPAY_VECTORS_DIR") or REPO.parent / "shared" / "vectors").resolve()
VECTOR_FILES = sorted(VECTORS_DIR.glob("*.json"))

# Vectors are dated December 2026 and later; replaying them needs the
# occurred_at window opened wide, as importing history would.
WIDE_OCCURRED_AT_ENV = {
    "SETAPAY_OCCURRED_AT_MAX_FUTURE_S": str(10**9),
    "SETAPAY_OCCURRED_AT_MAX_PAST_DAYS": "100000",
}
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
TOKYO = dt.timezone(dt.timedelta(hours=9))


def now_tokyo(offset_s: float = 0) -> str:
    """An RFC 3339 instant near the engine's clock, in Asia/Tokyo."""
    return (dt.datetime.now(TOKYO) + dt.timedelta(seconds=offset_s)).isoformat(timespec="seconds")


class Databases:
    """Fresh databases for one module: SQLite files or PostgreSQL databases, dropped at the end."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pg_names: list[str] = []

    @staticmethod
    def _admin_dsn() -> str:
        return f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout={CONNECT_TIMEOUT_S}"

    def create(self, backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite+pysqlite:///{self.directory}/setapay_{uuid.uuid4().hex[:12]}.db"
        import psycopg

        name = f"setapay_test_{uuid.uuid4().hex[:16]}"
        try:
            with psycopg.connect(self._admin_dsn(), autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as error:
            _unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT}", error)
        self.pg_names.append(name)
        return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def drop_all(self) -> None:
        if not self.pg_names:
            return
        import psycopg

        with psycopg.connect(self._admin_dsn(), autocommit=True) as admin:
            for name in self.pg_names:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


class Server(ServerProcess):
    """`setapay serve` in a subprocess of its own on a database of its own, with the admin API and
    the database at hand."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        cli_in_process: bool = False,
    ) -> None:
        super().__init__(database_url, log_dir, env, workers, cli_in_process=cli_in_process)
        self._db = None
        self._admin_key: str | None = None

    def stop(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None
        super().stop()

    def create_keys(self, requests: list[tuple[str, str | None, str | None]]) -> list[str]:
        """Several `setapay keys create` at once; each is a process that mostly waits on imports."""
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(lambda r: self.create_key(*r), requests))

    @property
    def admin_key(self) -> str:
        if self._admin_key is None:
            self._admin_key = self.create_key("admin")
        return self._admin_key

    # -- HTTP ------------------------------------------------------------------

    def admin_post(self, path: str, body: dict) -> dict:
        with self.client(self.admin_key) as c:
            r = c.post(path, json=body)
        assert r.status_code == 201, (path, r.status_code, r.text)
        return r.json()

    def configure(self, merchants: list[dict], campaigns: list[dict], terminals: dict[str, str]) -> dict[str, str]:
        """Merchants, campaigns and terminals through the admin API; returns a key per terminal."""
        for merchant in merchants:
            self.admin_post("/v1/merchants", merchant)
        for campaign in campaigns:
            self.admin_post("/v1/campaigns", campaign)
        for terminal_id, merchant_id in terminals.items():
            self.admin_post("/v1/terminals", {"id": terminal_id, "merchant_id": merchant_id})
        ids = list(terminals)
        return dict(zip(ids, self.create_keys([("terminal", None, t) for t in ids])))

    # -- the database, read directly -------------------------------------------

    @property
    def db(self):
        if self._db is None:
            self._db = make_engine(self.database_url)
        return self._db

    def count(self, model) -> int:
        with self.db.connect() as connection:
            return connection.execute(select(func.count()).select_from(model)).scalar_one()

    def postings(self) -> int:
        return self.count(PostingRow)

    def payments(self) -> int:
        return self.count(PaymentRow)


@pytest.fixture(scope="module")
def databases(tmp_path_factory):
    made = Databases(tmp_path_factory.mktemp("db"))
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture(scope="module")
def start_server(databases, tmp_path_factory):
    """A factory: `start_server(backend, env=..., workers=...)` → a running `Server`, stopped at module end."""
    started: list[Server] = []
    log_dir = tmp_path_factory.mktemp("logs")

    def start(
        backend: str, env: dict[str, str] | None = None, workers: int = 1, cli_in_process: bool = False
    ) -> Server:
        server = Server(databases.create(backend), log_dir, env, workers, cli_in_process)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """The module's tests on the embedded SQLite file and on PostgreSQL."""
    return request.param


# -- a small ward for the tests that are not vectors -----------------------------

CAMPAIGN_WINDOW = {"starts_at": "2026-01-01T00:00:00+09:00", "ends_at": "2036-01-01T00:00:00+09:00"}
WARD_MERCHANTS = [
    {
        "id": "M_SHOTEN",
        "name": "三茶八百屋",
        "merchant_class": "small",
        "shotengai_id": "S_SANCHA",
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
    {
        "id": "M_LARGE",
        "name": "Department Store Futako",
        "merchant_class": "large",
        "shotengai_id": None,
        "ward_local": False,
        "ethical_certifications": [],
    },
]
WARD_CAMPAIGNS = [
    {
        "id": "C_POINTBACK",
        "name": "ポイント還元",
        "funding_source": "ward_general",
        **CAMPAIGN_WINDOW,
        "tiers": [
            {"match": {"merchant_classes": ["small"]}, "rate_bp": 2000},
            {"match": {"merchant_classes": ["semi_large"]}, "rate_bp": 1000},
        ],
        "per_wallet_cap": 5000,
        "per_wallet_cap_period": "month",
        "priority": 10,
    },
    {
        "id": "C_ETHICAL",
        "name": "エシカル消費",
        "funding_source": "climate_fund",
        **CAMPAIGN_WINDOW,
        "tiers": [{"match": {}, "rate_bp": 1000}],
        "item_tags": ["ethical", "local_produce"],
        "per_tx_cap": 300,
        "budget": 8000,
        "priority": 5,
    },
    {
        "id": "C_DAILY",
        "name": "毎日ボーナス",
        "funding_source": "national_grant",
        **CAMPAIGN_WINDOW,
        "tiers": [{"match": {"shotengai_member": True}, "rate_bp": 500}, {"match": {}, "rate_bp": 100}],
        "fixed_points": 5,
        "min_base": 300,
        "per_wallet_cap": 200,
        "per_wallet_cap_period": "day",
        "priority": 1,
    },
    {
        "id": "C_LARGE_ONLY",
        "name": "大型店限定",
        "funding_source": "merchant:M_LARGE",
        **CAMPAIGN_WINDOW,
        "tiers": [{"match": {"merchant_ids": ["M_LARGE"]}, "rate_bp": 300}],
        "budget": 1500,
        "stacking": "exclusive",
        "priority": 20,
    },
]
WARD_TERMINALS = {"T_SHOTEN_1": "M_SHOTEN", "T_SHOTEN_2": "M_SHOTEN", "T_CONV": "M_CONV", "T_LARGE": "M_LARGE"}


def purchase(
    terminal_id: str, wallet_id: str, amount: int, points_used: int = 0, items=None, occurred_at: str | None = None
) -> dict:
    body = {
        "type": "purchase",
        "wallet_id": wallet_id,
        "merchant_id": WARD_TERMINALS[terminal_id],
        "terminal_id": terminal_id,
        "occurred_at": occurred_at or now_tokyo(-60),
        "amount": amount,
        "points_used": points_used,
    }
    if items is not None:
        body["items"] = items
    return body


def refund(original_id: str, amount: int, occurred_at: str | None = None) -> dict:
    return {
        "type": "refund",
        "original_id": original_id,
        "amount": amount,
        "occurred_at": occurred_at or now_tokyo(-30),
    }


class Ward:
    """A running server configured with the small ward above; keys are made when first needed."""

    def __init__(self, server: Server) -> None:
        self.server = server
        server.configure(WARD_MERCHANTS, WARD_CAMPAIGNS, {})
        for terminal_id, merchant_id in WARD_TERMINALS.items():
            server.admin_post("/v1/terminals", {"id": terminal_id, "merchant_id": merchant_id})
        self._keys: dict[tuple, str] = {}
        self._keys_lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}
        self._plain: dict[str, httpx.Client] = {}  # terminals' clients that send bodies exactly as given

    def key(self, role: str, merchant_id: str | None = None, terminal_id: str | None = None) -> str:
        wanted = (role, merchant_id, terminal_id)
        with self._keys_lock:
            if wanted not in self._keys:
                self._keys[wanted] = self.server.create_key(role, merchant_id, terminal_id)
            return self._keys[wanted]

    @property
    def finance_key(self) -> str:
        return self.key("finance")

    def terminal_key(self, terminal_id: str) -> str:
        return self.key("terminal", None, terminal_id)

    def terminal(self, terminal_id: str) -> httpx.Client:
        """The terminal's client; its transactions carry the test payment app's receipts."""
        if terminal_id not in self._clients:
            self._clients[terminal_id] = self.server.terminal_client(self.terminal_key(terminal_id))
        return self._clients[terminal_id]

    @property
    def app_client(self) -> httpx.Client:
        """The payment app's backend (role `app`): it reads wallets."""
        if "app" not in self._clients:
            self._clients["app"] = self.server.client(self.key("app"))
        return self._clients["app"]

    def post(self, terminal_id: str, body, key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        if isinstance(body, (bytes, str)):
            return self.terminal(terminal_id).post(
                "/v1/transactions", content=body, headers={**headers, "Content-Type": "application/json"}
            )
        return self.terminal(terminal_id).post("/v1/transactions", json=body, headers=headers)

    def send_signed(
        self,
        terminal_id: str,
        private_key,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        **sign,
    ) -> httpx.Response:
        """A request of the terminal's key signed as SPEC §9.2 says. `body` is the final bytes sent and
        `headers` the request's own (an Idempotency-Key among them is covered); `sign` goes to
        `engine.http_signing.sign_request` (`created=`, `nonce=`)."""
        from engine.http_signing import sign_request
        from tests.receipts import TRANSACTION_PATHS, sign_payload

        headers = dict(headers or {})
        path = target.split("?")[0]
        if body and method == "POST" and path in TRANSACTION_PATHS:
            # The payment app's receipts go into the body first: the signature covers the bytes sent.
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            signed = sign_payload(
                self.server.payment_app,
                payload,
                path.endswith("/batch"),
                terminal_id + "\x1f",
                headers.get("Idempotency-Key", ""),
            )
            if signed is not payload:
                body = json.dumps(signed).encode()
        if body:
            headers.setdefault("Content-Type", "application/json")
        headers.update(sign_request(private_key, terminal_id, method, target, headers, body, **sign))
        if terminal_id not in self._plain:
            self._plain[terminal_id] = self.server.client(self.terminal_key(terminal_id))
        return self._plain[terminal_id].request(method, target, content=body, headers=headers)

    def post_signed(self, terminal_id: str, private_key, body, key: str | None = None, **sign) -> httpx.Response:
        """`post`, signed: a dict body is sent as its JSON bytes, bytes as they are."""
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.send_signed(
            terminal_id,
            private_key,
            "POST",
            "/v1/transactions",
            content,
            {"Idempotency-Key": key or uuid.uuid4().hex},
            **sign,
        )

    def close(self) -> None:
        for c in [*self._clients.values(), *self._plain.values()]:
            c.close()


@pytest.fixture(scope="module")
def ward(backend, start_server):
    """The small ward on this module's backend, with the default occurred_at window (near now)."""
    w = Ward(start_server(backend))
    try:
        yield w
    finally:
        w.close()
