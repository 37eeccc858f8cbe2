"""Posting a group of plain purchases, without a database: `PostingWriter.plain_purchases` (the
postings, awards, lots and answers of `engine.posting_columns`, then a payment row, its hash and
its answer's JSON per purchase) and `PostingWriter.flush` queueing the rows and the rating's
meters (unsent), the committer's share of a group after rating.

A group as `bench/group_phases.py` posts it: `--group` purchases of `bench/ingest.py`'s shape
(8 terminals, one `occurred_at`, no points used) against the campaigns of its ward, rated once
by `engine.rating.rate` (not timed), each with a receipt as the API hands them (`--no-receipts`:
none, as `bench/group_phases.py` sends them). Each repetition posts the group with a new writer,
fresh books and the chains' heads of the first; the collector is tuned as in a serving process.

    .venv/bin/python bench/posting_columns.py [--group 1000] [--repeat 200] [--instants 1]

Last line: `posting_columns plain_purchases_us=<median> flush_us=<median> rows=<sha256 prefix>`,
a group; `rows` fingerprints every row, hash and answer the writer made (rows by column name),
so runs before and after a change can be compared for byte equality.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import pickle
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import collector, rating  # noqa: E402
from engine import ledger_rules as rules  # noqa: E402
from engine.demo import ward  # noqa: E402
from engine.model import Campaign, Purchase  # noqa: E402
from engine.receipts import Receipt  # noqa: E402
from engine.store import ledger  # noqa: E402
from engine.timeutil import TOKYO, to_us  # noqa: E402
from engine.wallet_book import WalletBook  # noqa: E402

# One fixed day, so every run posts the same rows and the fingerprints compare.
DAY = dt.datetime(2026, 6, 10, 12, tzinfo=TOKYO)


Run = list[tuple[str, ledger.Submission, rating.Outcome]]


class _Session:
    """A session on PostgreSQL as a `WriteBatch` sees it: it queues its statements, sent by none."""

    def get_bind(self) -> Any:
        return SimpleNamespace(dialect=SimpleNamespace(name="postgresql"))


class _Ledger:
    """What a `UnitOfWork` asks of its ledger: the catalog, here only the campaigns."""

    def __init__(self, campaigns: dict[str, Campaign]) -> None:
        self.campaigns = campaigns

    def _catalog_snapshot(self, session: Any, version: int) -> Any:
        return SimpleNamespace(campaigns=self.campaigns)


# The chains' heads every repetition starts from: a fresh ledger's.
HEAD = SimpleNamespace(
    last_posting_sequence=0,
    last_hash=rules.GENESIS_HASH,
    last_payment_sequence=0,
    last_payment_hash=rules.GENESIS_HASH,
    catalog_version=1,
    stamp_floor_us=0,
    order_floor_us=0,
)


class Rated(NamedTuple):
    """A group rated: its campaigns, its run of plain purchases, their wallets, and the rating
    state after rating with its meters before (what `Ledger._decide_group` flushes with)."""

    campaigns: dict[str, Campaign]
    run: Run
    wallets: set[str]
    state: rating.RatingState
    usage_before: dict[tuple[str, str, int], int]
    spend_before: dict[str, int]


def group(size: int, instants: int, receipts: bool) -> Rated:
    merchants, campaigns = ward(7, DAY.date())
    catalog = rating.build_catalog(merchants, campaigns)
    bodies, submissions = [], []
    for i in range(size):
        m = merchants[i % 8 % len(merchants)]
        # Validated from JSON text and pickled, as the committer receives them (their offsets pydantic's).
        body = Purchase.model_validate(
            {
                "wallet_id": f"W{(i * 104729) % 50_000}",
                "merchant_id": m.id,
                "terminal_id": f"T_BENCH_{i % 8}",
                "occurred_at": (DAY + dt.timedelta(seconds=i % instants)).isoformat(),
                "amount": 500 + (i * 37) % 9500,
            }
        )
        canonical = body.model_dump_json()
        s = ledger.Submission(
            body.terminal_id, f"r0-{i}", hashlib.sha256(canonical.encode()).hexdigest(), body, canonical
        )
        s.merchant_id = m.id
        if receipts:
            s.receipt = Receipt("app_bench", f"pay_{i:08d}")
        bodies.append(body)
        submissions.append(pickle.loads(pickle.dumps(s)))
    pids = [f"tx_{i:032x}" for i in range(size)]
    wallets = {body.wallet_id for body in bodies}
    state = rating.RatingState(balance=dict.fromkeys(wallets, 0))
    usage_before, spend_before = dict(state.usage), dict(state.spend)
    outcomes = rating.rate(catalog, list(zip(pids, bodies)), state)
    assert not any(o.declined for o in outcomes)
    run = list(zip(pids, submissions, outcomes))
    return Rated({c.id: c for c in campaigns}, run, wallets, state, usage_before, spend_before)


def fingerprint(writer: ledger.PostingWriter, answers: list[Any], statements: list[tuple[str, Any]]) -> str:
    """A digest of the answers, their stored texts, the books' lots and every statement queued
    (the balances' among them); rows copied in are taken by column name (whatever order the
    writer keeps a table's columns in)."""
    h = hashlib.sha256()
    h.update(repr((answers, writer.answers_json)).encode())
    for book in sorted(writer.books.values(), key=lambda b: b.wallet_id):
        h.update(repr(sorted((lot_id, dataclasses.astuple(lot)) for lot_id, lot in book.lots.items())).encode())
    for sql, params in statements:
        if sql.startswith("COPY"):
            table, columns = sql.split()[1], sql[sql.index("(") + 1 : sql.index(")")].split(", ")
            types, rows = params
            h.update(repr((table, sorted(zip(columns, types)))).encode())
            h.update(repr([sorted(zip(columns, row)) for row in rows]).encode())
        else:
            h.update(repr((sql, params)).encode())
    return h.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--instants", type=int, default=1)
    parser.add_argument("--no-receipts", action="store_true")
    args = parser.parse_args()
    rated = group(args.group, args.instants, not args.no_receipts)
    campaigns, run, wallets = rated.campaigns, rated.run, rated.wallets
    at_us = to_us(DAY) + args.instants * 1_000_000  # accepted just after the last purchase
    collector.tune()  # as the committer runs
    times: dict[str, list[float]] = {"plain_purchases": [], "flush": []}
    prints = set()
    session, stub = _Session(), _Ledger(campaigns)
    for _ in range(args.repeat):
        unit = ledger.UnitOfWork(session, HEAD, stub)  # type: ignore[arg-type]
        books = {w: WalletBook(w, [], {}) for w in wallets}
        writer = unit.writer(at_us, books)
        t0 = time.perf_counter()
        answers = writer.plain_purchases(run)
        t1 = time.perf_counter()
        batch = writer.flush(rated.state, rated.usage_before, rated.spend_before, send=False)
        t2 = time.perf_counter()
        prints.add(fingerprint(writer, answers, batch.statements))
        times["plain_purchases"].append(t1 - t0)
        times["flush"].append(t2 - t1)
    assert len(prints) == 1, prints
    print(
        "posting_columns "
        + " ".join(f"{k}_us={statistics.median(v) * 1e6:.0f}" for k, v in times.items())
        + f" rows={prints.pop()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
