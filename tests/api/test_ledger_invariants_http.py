"""Ledger invariants (SPEC §5) after a long random sequence posted over HTTP.

A seeded sequence of purchases, redemptions and refunds (some declined) over
several wallets, merchants and campaigns with caps and budgets goes through a
real server, the tail of it from several threads at once. Afterwards:
the ledger check passes (trial balance zero, cached balances equal postings,
the liability identity, the hash chain); every wallet's points as the API
reports them equal the sums of that wallet's postings, computed here straight
from the posting table; every answer equals what the pure-Python rating twin
computes for the same events in the server's acceptance order; budgets hold.
Then, as the database owner, an UPDATE, DELETE or bad INSERT of a posting is
refused by the database itself.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from pydantic import TypeAdapter
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from engine.model import Campaign, Merchant, Transaction
from engine.rating import RatingState, build_catalog, rate
from engine.store import queries
from engine.store.db import make_engine
from engine.store.models import PaymentRow, PostingRow
from tests.ward import WARD_CAMPAIGNS, WARD_MERCHANTS, WARD_TERMINALS, Ward, now_tokyo, purchase, refund

SEED = 20261129
SEQUENTIAL_OPERATIONS = 240
CONCURRENT_PURCHASES = 60
CONCURRENT_THREADS = 4
WALLETS = [f"W_RANDOM_{i}" for i in range(7)]
TAGS = ["ethical", "local_produce", "fair_trade", "plain"]
# Spread over the last six days, inside the default occurred_at window, so daily caps reset.
SPREAD_S = 6 * 86_400


class Run:
    """What the random sequence sent and what the server answered, by transaction id."""

    def __init__(self) -> None:
        self.accepted: dict[str, tuple[dict, dict]] = {}  # id -> (request body, answer)
        self.declines: dict[str, int] = defaultdict(int)
        self.purchases: list[dict] = []  # accepted purchase answers, with "refundable" left


def _random_purchase(rng: random.Random, terminal_id: str, wallet_id: str) -> dict:
    amount = rng.choice([rng.randint(1, 300), rng.randint(300, 5_000), rng.randint(5_000, 60_000)])
    items = None
    if rng.random() < 0.5:
        cut = rng.randint(0, amount)
        items = [
            {"amount": cut, "tags": rng.sample(TAGS, rng.randint(0, 2))},
            {"amount": amount - cut, "tags": rng.sample(TAGS, rng.randint(0, 2))},
        ]
    return purchase(terminal_id, wallet_id, amount, items=items, occurred_at=now_tokyo(-rng.randint(60, SPREAD_S)))


def _available(ward: Ward, terminal_id: str, wallet_id: str) -> int:
    r = ward.app_client.get(f"/v1/wallets/{wallet_id}/points")
    assert r.status_code == 200, r.text
    return r.json()["available"]


def _step(ward: Ward, rng: random.Random, run: Run) -> None:
    roll = rng.random()
    if roll < 0.28 and run.purchases:
        original = rng.choice(run.purchases)
        terminal_id = rng.choice([t for t, m in WARD_TERMINALS.items() if m == original["merchant_id"]])
        left = original["refundable"]
        amount = left + rng.randint(1, 50) if (left == 0 or rng.random() < 0.1) else rng.randint(1, left)
        body = refund(original["id"], amount, occurred_at=now_tokyo(-rng.randint(1, 60)))
        r = ward.post(terminal_id, body)
        if amount > left:
            assert (r.status_code, r.json()["code"]) == (422, "refund_exceeds_original"), r.text
            run.declines["refund_exceeds_original"] += 1
            return
        assert r.status_code == 201, r.text
        original["refundable"] -= amount
        run.accepted[r.json()["id"]] = (body, r.json())
        return
    terminal_id = rng.choice(list(WARD_TERMINALS))
    wallet_id = rng.choice(WALLETS)
    body = _random_purchase(rng, terminal_id, wallet_id)
    available = None
    if roll > 0.8:  # a redemption, now and then asking for more than the wallet has
        available = _available(ward, terminal_id, wallet_id)
        wanted = available + rng.randint(1, 100) if rng.random() < 0.2 else rng.randint(0, available)
        body["points_used"] = min(wanted, body["amount"])
    r = ward.post(terminal_id, body)
    if available is not None and body["points_used"] > available:
        assert (r.status_code, r.json()["code"]) == (422, "insufficient_points"), r.text
        run.declines["insufficient_points"] += 1
        return
    assert r.status_code == 201, r.text
    run.accepted[r.json()["id"]] = (body, r.json())
    run.purchases.append({**r.json(), "refundable": body["amount"]})


def _concurrent_purchases(ward: Ward, rng: random.Random, run: Run) -> None:
    bodies = [
        _random_purchase(rng, rng.choice(list(WARD_TERMINALS)), rng.choice(WALLETS))
        for _ in range(CONCURRENT_PURCHASES)
    ]
    for terminal_id in WARD_TERMINALS:
        ward.terminal_key(terminal_id)
    lock = threading.Lock()
    failures: list[str] = []

    def send(part: list[dict]) -> None:
        clients = {t: ward.server.terminal_client(ward.terminal_key(t)) for t in WARD_TERMINALS}
        try:
            for body in part:
                r = clients[body["terminal_id"]].post(
                    "/v1/transactions", json=body, headers={"Idempotency-Key": f"concurrent-{id(body)}"}
                )
                with lock:
                    if r.status_code == 201:
                        run.accepted[r.json()["id"]] = (body, r.json())
                    else:
                        failures.append(r.text)
        finally:
            for c in clients.values():
                c.close()

    threads = [threading.Thread(target=send, args=(bodies[i::CONCURRENT_THREADS],)) for i in range(CONCURRENT_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@pytest.fixture(scope="module")
def run(ward: Ward) -> Run:
    rng = random.Random(SEED)
    done = Run()
    for _ in range(SEQUENTIAL_OPERATIONS):
        _step(ward, rng, done)
    _concurrent_purchases(ward, rng, done)
    return done


def test_the_sequence_exercised_caps_budgets_refunds_and_declines(run: Run) -> None:
    capped = {a["capped_by"] for _, answer in run.accepted.values() for a in answer.get("awards", [])}
    assert {"per_tx_cap", "wallet_cap", "budget"} <= capped, capped
    kinds = defaultdict(int)
    for body, _ in run.accepted.values():
        kinds["redemption" if body.get("points_used") else body["type"]] += 1
    assert min(kinds["purchase"], kinds["refund"], kinds["redemption"]) >= 20, kinds
    assert run.declines["insufficient_points"] and run.declines["refund_exceeds_original"], run.declines


def test_ledger_check_passes(ward: Ward, run: Run) -> None:
    check = queries.ledger_check(ward.server.db)
    assert check["checks"] == {name: True for name in check["checks"]}, check
    assert check["ok"]
    assert check["trial_balance"] == 0
    assert check["postings"] == ward.server.postings() > len(run.accepted)


def test_budgets_hold(ward: Ward, run: Run) -> None:
    check = queries.ledger_check(ward.server.db)
    for campaign in WARD_CAMPAIGNS:
        if campaign.get("budget") is not None:
            issued = check["campaigns"][campaign["id"]]
            assert issued["issued"] - issued["clawed_back"] <= campaign["budget"], (campaign["id"], issued)


def _wallet_sums_from_postings(ward: Ward) -> dict[str, dict[str, int]]:
    """Per wallet: pending and available points, summed here from the posting table alone."""
    balances: dict[str, int] = defaultdict(int)
    with ward.server.db.connect() as connection:
        for debit, credit, amount in connection.execute(
            select(PostingRow.debit_account_id, PostingRow.credit_account_id, PostingRow.amount)
        ):
            balances[debit] -= amount
            balances[credit] += amount
    wallets: dict[str, dict[str, int]] = defaultdict(lambda: {"pending": 0, "available": 0})
    for account, balance in balances.items():
        parts = account.split(":")  # wallet:<wallet>:<campaign>:<pending|available>; ids never hold ":"
        if parts[0] == "wallet":
            wallets[parts[1]][parts[3]] += balance
    return wallets


def test_wallet_points_equal_the_sum_of_their_postings(ward: Ward, run: Run) -> None:
    sums = _wallet_sums_from_postings(ward)
    assert set(sums) <= set(WALLETS)
    with ward.server.client(ward.finance_key) as finance:
        for wallet_id in WALLETS:
            got = finance.get(f"/v1/wallets/{wallet_id}/points").json()
            s = sums[wallet_id]
            assert (got["pending"], got["available"], got["debt"]) == (
                s["pending"],
                max(s["available"], 0),
                max(-s["available"], 0),
            ), (wallet_id, got, s)


def test_answers_equal_the_rating_twin_in_acceptance_order(ward: Ward, run: Run) -> None:
    """Rating state read back from the database rates exactly as the in-memory twin does."""
    with ward.server.db.connect() as connection:
        order = [row.id for row in connection.execute(select(PaymentRow.id).order_by(PaymentRow.sequence))]
    assert sorted(order) == sorted(run.accepted)
    parse = TypeAdapter(Transaction).validate_python
    events = [(pid, parse(run.accepted[pid][0])) for pid in order]
    catalog = build_catalog(
        [Merchant.model_validate(m) for m in WARD_MERCHANTS], [Campaign.model_validate(c) for c in WARD_CAMPAIGNS]
    )
    twin = {o.key: o.as_expected() for o in rate(catalog, events, RatingState(), "python")}
    for pid in order:
        answer = run.accepted[pid][1]
        if answer["type"] == "purchase":
            got = {
                "awards": [{k: a[k] for k in ("campaign_id", "points", "capped_by")} for a in answer["awards"]],
                "points_awarded": answer["points_awarded"],
            }
        else:
            got = {k: answer[k] for k in ("clawbacks", "points_clawed_back", "points_returned")}
        assert got == twin[pid], (pid, run.accepted[pid][0])


# -- the database refuses to rewrite history ------------------------------------------

TAMPERING = {
    "update_amount": "UPDATE posting SET amount = amount + 1 WHERE sequence = 1",
    "update_account": (
        "UPDATE posting SET credit_account_id = 'wallet:W_THIEF:C_POINTBACK:available' WHERE sequence = 2"
    ),
    "delete_one": "DELETE FROM posting WHERE sequence = 3",
    "delete_all": "DELETE FROM posting",
    "insert_zero_amount": "INSERT INTO posting (sequence, reason, debit_account_id, credit_account_id, amount, "
    "posted_at_us, hash) VALUES (999999, 'award', 'a', 'b', 0, 0, 'x')",
    "insert_negative_amount": "INSERT INTO posting (sequence, reason, debit_account_id, credit_account_id, amount, "
    "posted_at_us, hash) VALUES (999999, 'award', 'a', 'b', -5, 0, 'x')",
    "insert_same_account": "INSERT INTO posting (sequence, reason, debit_account_id, credit_account_id, amount, "
    "posted_at_us, hash) VALUES (999999, 'award', 'a', 'a', 5, 0, 'x')",
}


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
def test_the_database_refuses_to_rewrite_postings(ward: Ward, run: Run, statement: str) -> None:
    before = ward.server.postings()
    # The owner's own connection (the URL's user owns the database), not the API.
    owner = make_engine(ward.server.database_url)
    try:
        with pytest.raises(DBAPIError), owner.begin() as connection:
            connection.execute(text(statement))
    finally:
        owner.dispose()
    assert ward.server.postings() == before
    assert queries.ledger_check(ward.server.db)["ok"]


def test_truncate_is_refused_on_postgresql(ward: Ward, run: Run, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite has no TRUNCATE; its DELETE without WHERE is refused above")
    owner = make_engine(ward.server.database_url)
    try:
        with pytest.raises(DBAPIError), owner.begin() as connection:
            connection.execute(text("TRUNCATE posting"))
    finally:
        owner.dispose()
    assert queries.ledger_check(ward.server.db)["ok"]


def test_an_edit_past_the_triggers_breaks_the_hash_chain(ward: Ward, run: Run, backend: str, tmp_path: Path) -> None:
    """Should someone drop the guard, the chain still tells: on a copy of the SQLite file."""
    if backend != "sqlite":
        pytest.skip("copying the PostgreSQL database needs the server's connections gone; the SQLite copy shows it")
    source = ward.server.database_url.split("///", 1)[1]
    copy = tmp_path / "tampered.db"
    with sqlite3.connect(source) as live, sqlite3.connect(copy) as target:
        live.backup(target)
    with sqlite3.connect(copy) as target:
        target.execute("DROP TRIGGER posting_no_update")
        target.execute("UPDATE posting SET amount = amount + 1 WHERE sequence = 5")
    tampered = make_engine(f"sqlite+pysqlite:///{copy}")
    try:
        check = queries.ledger_check(tampered)
    finally:
        tampered.dispose()
    assert not check["ok"]
    assert not check["checks"]["hash_chain_intact"] and check["chain_breaks"] == [5]
    assert not check["checks"]["cached_balances_match"]
    shutil.rmtree(tmp_path, ignore_errors=True)
