"""The ward behind a real `setapay serve`, as its parties see it: one harness for the HTTP tests.

`Ward(server, plan)` configures the plan's merchants, campaigns and terminals through the admin
API of a running server (tests/server.py), makes keys the way an operator does
(`setapay keys create`) when first needed, and hands out clients: a terminal's, whose
transactions carry the test payment app's receipts (tests/receipts.py), and plain ones for
finance, the payment app, a merchant or the admin (`ward["finance"]`, `ward["merchant:M1"]`,
`ward["terminal:T1"]`). `SMALL_WARD` is the plan most tests use: three merchants of the three
classes, four campaigns (tiered point-back, tagged ethical items with a budget, a daily bonus
with a fixed part, an exclusive merchant-funded one) and four terminals.

Tests whose clock must move (settlement periods, crediting days) use the in-process
`tests/finance/support.py` ward instead; a subprocess server runs on the system clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
import uuid

import httpx

TOKYO = dt.timezone(dt.timedelta(hours=9))


def now_tokyo(offset_s: float = 0) -> str:
    """An RFC 3339 instant near the engine's clock, in Asia/Tokyo."""
    return (dt.datetime.now(TOKYO) + dt.timedelta(seconds=offset_s)).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a ward is made of: merchant and campaign records as the admin API takes them, and
    terminals (terminal id -> merchant id)."""

    merchants: list[dict]
    campaigns: list[dict]
    terminals: dict[str, str]


# -- the small ward --------------------------------------------------------------------------

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
SMALL_WARD = Plan(WARD_MERCHANTS, WARD_CAMPAIGNS, WARD_TERMINALS)


def purchase(
    terminal_id: str,
    wallet_id: str,
    amount: int,
    points_used: int = 0,
    items=None,
    occurred_at: str | None = None,
    merchant_id: str | None = None,
) -> dict:
    """A purchase body; the merchant is the terminal's in the small ward unless given."""
    body = {
        "type": "purchase",
        "wallet_id": wallet_id,
        "merchant_id": merchant_id or WARD_TERMINALS[terminal_id],
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


# -- the harness --------------------------------------------------------------------------------


class Ward:
    """A running server configured with `plan` (the small ward unless given); keys are made when
    first needed, one per role and scope, and so are clients."""

    def __init__(self, server, plan: Plan = SMALL_WARD) -> None:
        self.server = server
        self.plan = plan
        self.merchant_of = dict(plan.terminals)
        for merchant in plan.merchants:
            server.admin_post("/v1/merchants", merchant)
        for campaign in plan.campaigns:
            server.admin_post("/v1/campaigns", campaign)
        for terminal_id, merchant_id in plan.terminals.items():
            server.admin_post("/v1/terminals", {"id": terminal_id, "merchant_id": merchant_id})
        self._keys: dict[tuple, str] = {}
        self._keys_lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}
        self._plain: dict[str, httpx.Client] = {}  # terminals' clients that send bodies exactly as given

    # -- keys --

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

    def terminal_keys(self) -> dict[str, str]:
        """A key for every terminal of the plan, made in parallel (each is an operator's command)."""
        missing = [t for t in self.plan.terminals if ("terminal", None, t) not in self._keys]
        made = self.server.create_keys([("terminal", None, t) for t in missing])
        with self._keys_lock:
            self._keys.update({("terminal", None, t): k for t, k in zip(missing, made)})
        return {t: self.terminal_key(t) for t in self.plan.terminals}

    # -- clients --

    def terminal(self, terminal_id: str) -> httpx.Client:
        """The terminal's client; its transactions carry the test payment app's receipts."""
        if terminal_id not in self._clients:
            self._clients[terminal_id] = self.server.terminal_client(self.terminal_key(terminal_id))
        return self._clients[terminal_id]

    def __getitem__(self, name: str) -> httpx.Client:
        """`ward["finance"]`, `ward["app"]`, `ward["admin"]`, `ward["merchant:M1"]`, `ward["terminal:T1"]`."""
        role, _, scope = name.partition(":")
        if role == "terminal":
            return self.terminal(scope)
        if name not in self._clients:
            self._clients[name] = self.server.client(self.key(role, scope or None))
        return self._clients[name]

    def pages(self, key: str) -> httpx.Client:
        """A browser-like client of the pages under /ui/, signed in with `key` (the sign-in form
        and its CSRF token); the caller closes it."""
        client = httpx.Client(base_url=self.server.base_url, follow_redirects=False, timeout=30)
        token = re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/login").text)
        assert token is not None
        answer = client.post("/ui/login", data={"key": key, "csrf": token.group(1)})
        assert answer.status_code == 303, answer.text
        return client

    @property
    def app_client(self) -> httpx.Client:
        """The payment app's backend (role `app`): it reads wallets."""
        return self["app"]

    # -- what the parties do --

    def post(self, terminal_id: str, body, key: str | None = None) -> httpx.Response:
        """One transaction from a terminal: a dict as JSON (with a receipt), bytes or text as they are."""
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        if isinstance(body, (bytes, str)):
            return self.terminal(terminal_id).post(
                "/v1/transactions", content=body, headers={**headers, "Content-Type": "application/json"}
            )
        return self.terminal(terminal_id).post("/v1/transactions", json=body, headers=headers)

    def _answer(self, response: httpx.Response, expect: int, body) -> dict:
        assert response.status_code == expect, (body, response.status_code, response.text)
        return response.json()

    def buy(self, terminal_id: str, wallet_id: str, amount: int, points_used: int = 0, expect: int = 201) -> dict:
        """A purchase at the terminal's merchant a minute ago; its answer, which must have status `expect`."""
        body = purchase(terminal_id, wallet_id, amount, points_used, merchant_id=self.merchant_of[terminal_id])
        return self._answer(self.post(terminal_id, body), expect, body)

    def refund(self, terminal_id: str, original_id: str, amount: int, expect: int = 201) -> dict:
        """A refund of `original_id` half a minute ago; its answer, which must have status `expect`."""
        body = refund(original_id, amount)
        return self._answer(self.post(terminal_id, body), expect, body)

    def grant(
        self, wallet_id: str, points: int, campaign_id: str, key: str | None = None, client: str = "finance"
    ) -> httpx.Response:
        return self[client].post(
            "/v1/grants",
            json={
                "wallet_id": wallet_id,
                "campaign_id": campaign_id,
                "points": points,
                "reason": "省エネ家電の買い替え",
            },
            headers={"Idempotency-Key": key or uuid.uuid4().hex},
        )

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
