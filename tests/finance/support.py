"""A ward on a real database, driven through the HTTP API on a clock the test moves.

`Ward` builds the FastAPI app with `create_app(settings, clock=ManualClock(...))`
and talks to it with FastAPI's TestClient (the demo, `setapay_demo/ledger.py`, on one event loop):
every posting is stamped with the engine's clock, so a test decides exactly
when each transaction is accepted (and so in which settlement period its
postings fall), and can step past a period's end before it settles.

The data key and the signing key are fresh per ward and passed in the
settings, never read from ./setapay-keys/.

Nothing here computes what the engine computes: the tests derive every
expected figure from what they posted.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

from engine.clock import ManualClock
from engine.model import Purchase, Refund
from engine.sealing import generate_key_b64
from engine.settings import Settings
from engine.settlement import signing
from engine.store.ledger import Submission
from tests.receipts import register_in_process
from tests.tokyo import jst, us

HOUR_US = 3_600_000_000


def bank_account(n: int) -> dict:
    return {
        "bank_code": "0159",
        "branch_code": f"{100 + n:03d}",
        "account_type": "ordinary",
        "account_number": f"{1234500 + n:07d}",
        "holder_kana": f"ｾﾀｶﾞﾔｼｮｳﾃﾝ{n:02d}",
    }


def signing_key_b64() -> str:
    return signing.private_key_b64(signing.generate_private_key())


@dataclass
class Sale:
    """What the test posted for one merchant, to compute its statement line independently."""

    coin_sales: int = 0
    coin_refunds: int = 0
    points_redeemed: int = 0
    points_returned: int = 0
    funded: int = 0  # points its own campaigns issued net of clawbacks
    ids: list = field(default_factory=list)

    def activity(self) -> int:
        return self.coin_sales - self.coin_refunds + self.points_redeemed - self.points_returned


class Ward:
    """An app, its clock, an admin, a finance key and a terminal key per terminal."""

    def __init__(self, database_url: str, start: str = "2026-11-30T09:00", **settings) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from fastapi.testclient import TestClient
        from api.app import create_app

        self.data_key_b64 = settings.pop("data_key_b64", None) or generate_key_b64()
        self.signing_key_b64 = settings.pop("signing_key_b64", None) or signing_key_b64()
        self.settings = Settings(
            database_url=database_url,
            group_commit_wait_ms=0,
            data_key_b64=self.data_key_b64,
            signing_key_b64=self.signing_key_b64,
            **settings,
        )
        self.clock = ManualClock(us(start))
        self.app = create_app(self.settings, clock=self.clock)
        self.ledger = self.app.state.ledger
        self.config = self.app.state.config
        self.engine = self.app.state.engine
        self.client = TestClient(self.app)
        self.client.__enter__()
        self.admin = {"Authorization": f"Bearer {self.config.create_key('admin')}"}
        self.finance = {"Authorization": f"Bearer {self.config.create_key('finance')}"}
        self.payment_app = register_in_process(self.app)
        self.terminal_keys: dict[str, dict] = {}
        self.terminal_merchant: dict[str, str] = {}
        self._keys = 0

    def close(self) -> None:
        self.client.__exit__(None, None, None)
        self.engine.dispose()

    @property
    def public_key(self):
        return signing.load_private_key(self.signing_key_b64).public_key()

    def at(self, text: str) -> None:
        self.clock.set(us(text))

    def now_us(self) -> int:
        return self.clock.now_us()

    # -- configuration ----------------------------------------------------------

    def merchant(
        self, merchant_id: str, *, fee_bp: int = 0, bank: int | None = None, terminal: bool = True, **fields
    ) -> str:
        body = {"id": merchant_id, "name": f"Shop {merchant_id}", "merchant_class": "small", "fee_bp": fee_bp, **fields}
        if bank is not None:
            body["bank_account"] = bank_account(bank)
        r = self.client.post("/v1/merchants", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        if terminal:
            self.terminal(f"T{merchant_id}", merchant_id)
        return merchant_id

    def terminal(self, terminal_id: str, merchant_id: str) -> None:
        r = self.client.post("/v1/terminals", json={"id": terminal_id, "merchant_id": merchant_id}, headers=self.admin)
        assert r.status_code == 201, r.text
        key = self.config.create_key("terminal", terminal_id=terminal_id)
        self.terminal_keys[terminal_id] = {"Authorization": f"Bearer {key}"}
        self.terminal_merchant[terminal_id] = merchant_id

    def campaign(
        self,
        campaign_id: str,
        rate_bp: int,
        *,
        starts: str = "2026-11-01T00:00",
        ends: str = "2027-06-01T00:00",
        **fields,
    ) -> dict:
        body = {
            "id": campaign_id,
            "name": f"Campaign {campaign_id}",
            "starts_at": jst(starts).isoformat(),
            "ends_at": jst(ends).isoformat(),
            "tiers": [{"match": {}, "rate_bp": rate_bp}],
            **fields,
        }
        r = self.client.post("/v1/campaigns", json=body, headers=self.admin)
        assert r.status_code == 201, r.text
        return r.json()

    # -- transactions -------------------------------------------------------------

    def _post(self, terminal_id: str, body: dict, expect: int = 201) -> dict:
        self._keys += 1
        headers = {**self.terminal_keys[terminal_id], "Idempotency-Key": f"k{self._keys}"}
        body = self.payment_app.sign_body(body)
        r = self.client.post("/v1/transactions", json=body, headers=headers)
        assert r.status_code == expect, r.text
        self.payment_app.accepted(body, r.json())
        return r.json()

    def purchase(
        self,
        merchant_id: str,
        wallet: str,
        occurred: str,
        amount: int,
        points_used: int = 0,
        accepted: str | None = None,
        terminal_id: str | None = None,
    ) -> dict:
        """A purchase that happened at `occurred` and reached the engine at `accepted` (default: 2 s later)."""
        if accepted:
            self.at(accepted)
        else:
            self.clock.set(us(occurred) + 2_000_000)
        terminal_id = terminal_id or f"T{merchant_id}"
        return self._post(
            terminal_id,
            {
                "type": "purchase",
                "wallet_id": wallet,
                "merchant_id": merchant_id,
                "terminal_id": terminal_id,
                "occurred_at": jst(occurred).isoformat(),
                "amount": amount,
                "points_used": points_used,
            },
        )

    def refund(self, original: dict, occurred: str, amount: int, accepted: str | None = None) -> dict:
        if accepted:
            self.at(accepted)
        else:
            self.clock.set(us(occurred) + 2_000_000)
        return self._post(
            original["terminal_id"],
            {
                "type": "refund",
                "original_id": original["id"],
                "amount": amount,
                "occurred_at": jst(occurred).isoformat(),
            },
        )

    # -- finance --------------------------------------------------------------------

    def settle(self, period: str, expect: int = 201) -> dict:
        r = self.client.post("/v1/settlement-runs", json={"period": period}, headers=self.finance)
        assert r.status_code == expect, r.text
        return r.json()

    def get(self, path: str, expect: int = 200, **kw):
        r = self.client.get(path, headers=self.finance, **kw)
        assert r.status_code == expect, r.text
        return r

    def reconcile(self) -> dict:
        return self.get("/v1/reconciliation").json()


def record(book: dict[str, Sale], merchant_id: str, answer: dict) -> dict:
    """Add a posted purchase or refund answer to the test's own book of a merchant's sales."""
    sale = book.setdefault(merchant_id, Sale())
    if answer["type"] == "purchase":
        sale.coin_sales += answer["amount"] - answer["points_used"]
        sale.points_redeemed += answer["points_used"]
    else:
        sale.coin_refunds += answer["amount"] - answer["points_returned"]
        sale.points_returned += answer["points_returned"]
    sale.ids.append(answer["id"])
    return answer


def expected_line(sale: Sale, fee_bp: int, carried_in: int = 0) -> dict:
    activity = sale.activity()
    fee = max(activity, 0) * fee_bp // 10_000
    return {
        "coin_sales": sale.coin_sales,
        "coin_refunds": sale.coin_refunds,
        "points_redeemed": sale.points_redeemed,
        "points_returned": sale.points_returned,
        "merchant_funded_points": sale.funded,
        "fee_bp": fee_bp,
        "fee": fee,
        "carried_in": carried_in,
        "net_payout": carried_in + activity - fee - sale.funded,
    }


def lines_by_merchant(run: dict) -> dict[str, dict]:
    return {line["merchant_id"]: line for line in run["statement"]["document"]["lines"]}


def pick(line: dict) -> dict:
    return {
        k: line[k]
        for k in (
            "coin_sales",
            "coin_refunds",
            "points_redeemed",
            "points_returned",
            "merchant_funded_points",
            "fee_bp",
            "fee",
            "carried_in",
            "net_payout",
        )
    }


def run_row(ward: Ward, run_id: str):
    """A settlement run's stored row (its Zengin file as stored), detached from its session."""
    from sqlalchemy.orm import Session

    from engine.store.models import SettlementRunRow

    with Session(ward.engine) as s:
        row = s.get(SettlementRunRow, run_id)
        assert row is not None
        s.expunge(row)
        return row


def tamper(engine, table: str, sql: str, **params) -> None:
    """Run `sql` behind the engine's back, past the append-only triggers of `table` (postings,
    the audit log): on PostgreSQL disabled for the statement (the tests connect as a superuser),
    on SQLite dropped."""
    from sqlalchemy import text

    with engine.begin() as c:
        if c.dialect.name == "postgresql":
            c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_update"))
            c.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_delete"))
        c.execute(text(sql), params)
        if c.dialect.name == "postgresql":
            c.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))


def submission(key: str, body: dict, terminal_id: str = "TM001") -> Submission:
    """What the API hands the ledger for `body` (a purchase or a refund) posted by `terminal_id`
    under idempotency key `key`: for tests that drive a `Ledger` of their own (another host's)."""
    record = (Purchase if body["type"] == "purchase" else Refund).model_validate(body)
    canonical = record.model_dump_json()
    return Submission(terminal_id, key, hashlib.sha256(canonical.encode()).hexdigest(), record, canonical)
