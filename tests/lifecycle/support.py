"""Helpers for the wallet-lifecycle tests: a ledger on a real database, a controlled
clock for in-process writes, independent sums from the posting table, and
`setapay <command>` run as an operator runs it. The HTTP tests' real
`setapay serve` subprocess is `ServerProcess` from tests/server.py.

The clock: the ledger stamps acceptance (and so an `immediate` award's crediting
instant, a grant's lot and every posting's `posted_at`) with its clock. The
timelines run in December 2026 and the months after, so in-process writes use
the engine's `ManualClock`, set by the test as if each purchase were accepted a
minute after it happened. The database, the rating kernel and the calendar are
the real ones.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import uuid
from collections import defaultdict

from sqlalchemy import select

from engine.clock import ManualClock
from engine.model import Campaign, Merchant, Purchase, Refund
from engine.store import db, lifecycle, queries
from engine.store.config import Config
from engine.store.ledger import Ledger, Result, Submission
from engine.store.models import WALLET_LOT, AwardRow, PostingRow
from engine.timeutil import to_us
from tests.server import clock_at, run_cli, setapay_env


def iso(instant: dt.datetime) -> str:
    return instant.isoformat()


# -- a ledger on a real database ---------------------------------------------------


def merchant(merchant_id: str) -> Merchant:
    return Merchant(
        id=merchant_id, name=f"店 {merchant_id}", merchant_class="small", shotengai_id="S_SANCHA", ward_local=True
    )


def campaign(campaign_id: str, **fields) -> Campaign:
    record = {
        "id": campaign_id,
        "name": campaign_id,
        "starts_at": "2026-01-01T00:00:00+09:00",
        "ends_at": "2036-01-01T00:00:00+09:00",
        "tiers": [{"match": {}, "rate_bp": 1000}],
    }
    record.update(fields)
    return Campaign.model_validate(record)


class Books:
    """Config, Ledger and the read queries of one database, with short-hand submissions."""

    def __init__(self, url: str, migrate: bool = True, start: dt.datetime | None = None) -> None:
        if migrate:
            db.upgrade(url)
        self.url = url
        self.engine = db.make_engine(url)
        # Without `start`, the system clock (the HTTP tests post near now).
        self.clock = ManualClock(to_us(start)) if start is not None else None
        self.config = Config(self.engine, clock=self.clock)
        self.ledger = Ledger(self.engine, clock=self.clock)
        self.terminals: dict[str, str] = {}

    def at(self, instant: dt.datetime | int) -> None:
        """Move the manual clock forward to `instant` (it never moves back)."""
        self.clock.set(instant if isinstance(instant, int) else to_us(instant))

    def close(self) -> None:
        self.engine.dispose()

    # -- configuration --

    def setup(self, merchants: dict[str, list[str]], campaigns: list[Campaign]) -> None:
        """`merchants`: merchant id -> its terminal ids."""
        for merchant_id, terminal_ids in merchants.items():
            self.config.create_merchant(merchant(merchant_id))
            for terminal_id in terminal_ids:
                self.config.create_terminal(terminal_id, merchant_id)
                self.terminals[terminal_id] = merchant_id
        for c in campaigns:
            self.config.create_campaign(c)

    # -- writes --

    def submit(self, terminal_id: str, body: dict, key: str | None = None) -> Result:
        record = (Purchase if body.get("type", "purchase") == "purchase" else Refund).model_validate(body)
        canonical = record.model_dump_json()
        submission = Submission(
            terminal_id, key or uuid.uuid4().hex, hashlib.sha256(canonical.encode()).hexdigest(), record, canonical
        )
        return self.ledger.submit([submission])[0]

    def purchase(
        self,
        terminal_id: str,
        wallet_id: str,
        amount: int,
        occurred_at: dt.datetime,
        points_used: int = 0,
        key: str | None = None,
    ) -> Result:
        body = {
            "type": "purchase",
            "wallet_id": wallet_id,
            "merchant_id": self.terminals[terminal_id],
            "terminal_id": terminal_id,
            "occurred_at": iso(occurred_at),
            "amount": amount,
            "points_used": points_used,
        }
        return self.submit(terminal_id, body, key)

    def refund(
        self, terminal_id: str, original_id: str, amount: int, occurred_at: dt.datetime, key: str | None = None
    ) -> Result:
        body = {"type": "refund", "original_id": original_id, "amount": amount, "occurred_at": iso(occurred_at)}
        return self.submit(terminal_id, body, key)

    def grant(
        self, wallet_id: str, campaign_id: str, points: int, key: str | None = None, reason: str = "省エネ還元"
    ) -> Result:
        return lifecycle.grant(
            self.ledger, "finance:test", key or uuid.uuid4().hex, wallet_id, campaign_id, points, reason
        )

    def credit(self, as_of: dt.datetime | int) -> dict:
        return lifecycle.credit_due(self.ledger, as_of if isinstance(as_of, int) else to_us(as_of))

    def expire(self, as_of: dt.datetime | int) -> dict:
        return lifecycle.expire_due(self.ledger, as_of if isinstance(as_of, int) else to_us(as_of))

    # -- reads --

    def wallet(self, wallet_id: str) -> dict:
        """The wallet as the API shows it now: as of the ledger's clock."""
        return queries.wallet_detail(self.engine, wallet_id, self.ledger.clock.now_us())

    def expiring(self, wallet_id: str) -> dict[str, int]:
        return {e["expires_at"]: e["points"] for e in self.wallet(wallet_id)["expiring"]}

    def check(self) -> dict:
        report = queries.ledger_check(self.engine)
        assert report["ok"] and all(report["checks"].values()), report
        return report

    def postings(self) -> list[PostingRow]:
        with self.engine.connect() as c:
            return list(c.execute(select(PostingRow.__table__).order_by(PostingRow.sequence)))

    def awards(self) -> list:
        with self.engine.connect() as c:
            return list(c.execute(select(AwardRow.__table__)))

    def lots(self) -> list:
        with self.engine.connect() as c:
            return list(c.execute(select(WALLET_LOT)))  # every lot, wherever it is kept


def account_sums(postings) -> dict[str, int]:
    """Balance of every account recomputed from the postings alone."""
    out: dict[str, int] = defaultdict(int)
    for p in postings:
        out[p.debit_account_id] -= p.amount
        out[p.credit_account_id] += p.amount
    return out


def wallet_sums(postings, wallet_id: str) -> tuple[int, int]:
    """(pending, available − debt) of a wallet from the postings alone."""
    pending = available = 0
    prefix = f"wallet:{wallet_id}:"
    for account, balance in account_sums(postings).items():
        if account.startswith(prefix):
            if account.endswith(":pending"):
                pending += balance
            elif account.endswith(":available"):
                available += balance
    return pending, available


def due_points(lots, wallet_id: str, now_us: int) -> int:
    """A wallet's points in lots past their expiry by `now_us` the expiry run has not taken out:
    no longer available (SPEC §4); a unit that spends from the wallet expires them first."""
    return sum(
        lot.remaining
        for lot in lots
        if lot.wallet_id == wallet_id and lot.remaining > 0 and lot.expires_at_us <= now_us
    )


# -- the CLI ---------------------------------------------------------------------


def cli(database_url: str, *args: str, at: str | None = None) -> subprocess.CompletedProcess:
    """`setapay <args>` in a process of its own, as an operator or a cron job runs it; `at`: on a
    clock that has reached that instant."""
    env = setapay_env(database_url)
    return run_cli(env if at is None else clock_at(env, at), *args)
