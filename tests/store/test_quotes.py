"""A quote (`Ledger.quote`) equals what posting the same purchase at once awards.

Hypothesis draws campaigns (tiers, tagged items, fixed points, per-transaction and per-wallet
caps of each period, small budgets that earlier purchases nearly exhaust, exclusive stacking,
immediate and dekad crediting) and a few purchases that use them up, then a purchase that is
quoted and posted right after: the same decline, or the same awards with the same caps,
status and dates. On the embedded SQLite file and on PostgreSQL. Each example has a merchant of
its own and campaigns that match only it, ended afterwards, so examples do not interfere.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import ManualClock
from engine.model import Campaign, Merchant, Purchase
from engine.quotes import quote_awards
from engine.store import db
from engine.store.config import Config
from engine.store.ledger import Ledger, Submission
from engine.timeutil import TOKYO, to_us

START = dt.datetime(2026, 12, 14, 12, tzinfo=TOKYO)
TAGS = ("eco", "local_produce")

_ledgers: dict[str, tuple[Ledger, Config, ManualClock]] = {}
_count = itertools.count()


def _ledger(url: str) -> tuple[Ledger, Config, ManualClock]:
    if url not in _ledgers:
        db.upgrade(url)
        engine = db.make_engine(url)
        clock = ManualClock(to_us(START))
        _ledgers[url] = (Ledger(engine, clock), Config(engine, clock=clock), clock)
    return _ledgers[url]


def _campaign(cid: str, merchant_id: str) -> st.SearchStrategy[Campaign]:
    optional = st.none() | st.integers(1, 300)
    fields = st.fixed_dictionaries(
        {
            "rate_bp": st.integers(0, 3000),
            "item_tags": st.none() | st.just(["eco"]),
            "fixed_points": st.integers(0, 20),
            "per_tx_cap": optional,
            "per_wallet_cap": optional,
            "per_wallet_cap_period": st.sampled_from(["campaign", "month", "day"]),
            "budget": st.none() | st.integers(1, 400),
            "stacking": st.sampled_from(["stack", "exclusive"]),
            "priority": st.integers(0, 3),
            "schedule": st.sampled_from(["immediate", "dekad"]),
        }
    )
    return fields.map(
        lambda f: Campaign.model_validate(
            {
                "id": cid,
                "name": cid,
                "starts_at": "2026-12-01T00:00:00+09:00",
                "ends_at": "2027-03-01T00:00:00+09:00",
                "tiers": [{"match": {"merchant_ids": [merchant_id]}, "rate_bp": f["rate_bp"]}],
                "item_tags": f["item_tags"],
                "fixed_points": f["fixed_points"],
                "per_tx_cap": f["per_tx_cap"],
                "per_wallet_cap": f["per_wallet_cap"],
                "per_wallet_cap_period": f["per_wallet_cap_period"],
                "budget": f["budget"],
                "stacking": f["stacking"],
                "priority": f["priority"],
                "credit": {"schedule": f["schedule"], "delay_business_days": 2},
            }
        )
    )


def _purchase(data: st.DataObject, at: dt.datetime, wallet_id: str, merchant_id: str, terminal_id: str) -> Purchase:
    amount = data.draw(st.integers(1, 20_000))
    tagged = data.draw(st.integers(0, amount))
    items = None
    if data.draw(st.booleans()):
        items = [{"amount": tagged, "tags": list(TAGS)}, {"amount": amount - tagged, "tags": []}]
    return Purchase.model_validate(
        {
            "wallet_id": wallet_id,
            "merchant_id": merchant_id,
            "terminal_id": terminal_id,
            "occurred_at": at.isoformat(),
            "amount": amount,
            "points_used": data.draw(st.sampled_from([0, 0, 1, min(amount, 50), amount])),
            "items": items,
        }
    )


def _plain_campaign(cid: str, merchant_id: str, rate_bp: int, **fields) -> Campaign:
    """A campaign of one tier for one merchant, running all winter."""
    return Campaign.model_validate(
        {
            "id": cid,
            "name": cid,
            "starts_at": "2026-12-01T00:00:00+09:00",
            "ends_at": "2027-03-01T00:00:00+09:00",
            "tiers": [{"match": {"merchant_ids": [merchant_id]}, "rate_bp": rate_bp}],
            **fields,
        }
    )


def _post(ledger: Ledger, body: Purchase, key: str):
    return ledger.submit([Submission(body.terminal_id, key, key, body, body.model_dump_json())])[0]


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_quote_equals_posting_at_once(database_url, data) -> None:
    ledger, config, clock = _ledger(database_url)
    i = next(_count)
    # An hour of the clock each: the campaigns of earlier examples ended before this one's start.
    base = START + dt.timedelta(hours=i)
    clock.set(to_us(base))
    merchant_id, terminal_id, wallet_id = f"M{i}", f"T{i}", f"W{i}"
    config.create_merchant(
        Merchant(id=merchant_id, name=merchant_id, merchant_class=data.draw(st.sampled_from(["small", "large"])))
    )
    config.create_terminal(terminal_id, merchant_id)
    campaigns = [data.draw(_campaign(f"C{i}_{j}", merchant_id)) for j in range(data.draw(st.integers(1, 3)))]
    for c in campaigns:
        config.create_campaign(c)
    try:
        for n in range(data.draw(st.integers(0, 4))):  # earlier purchases use up caps and budgets
            at = base + dt.timedelta(minutes=n)
            _post(ledger, _purchase(data, at, wallet_id, merchant_id, terminal_id), f"w{i}_{n}")
        body = _purchase(data, base + dt.timedelta(minutes=5), wallet_id, merchant_id, terminal_id)
        outcome, catalog = ledger.quote(body)
        posted = _post(ledger, body, f"q{i}")
        if outcome.declined is not None:
            assert posted.status != 201 and posted.body["code"] == outcome.declined, (outcome, posted.body)
            return
        assert posted.status == 201, (outcome, posted.body)
        quoted = quote_awards(outcome, catalog.campaigns, to_us(body.occurred_at), ledger.clock.now_us())
        fields = ("campaign_id", "campaign_version", "points", "capped_by", "status", "expires_at")
        assert [{k: a[k] for k in fields} for a in quoted] == [{k: a[k] for k in fields} for a in posted.body["awards"]]

        # A dekad credit date follows from occurred_at; an immediate one is the instant of acceptance.
        def pending(awards: list[dict]) -> list[tuple[str, str]]:
            return [(a["campaign_id"], a["credit_at"]) for a in awards if a["status"] == "pending"]

        assert pending(quoted) == pending(posted.body["awards"])
    finally:
        clock.set(to_us(base + dt.timedelta(minutes=30)))
        ended = (base + dt.timedelta(minutes=31)).isoformat()
        for c in campaigns:
            config.update_campaign(c.id, {"ends_at": ended})


def test_some_quotes_were_capped_by_a_budget(sqlite_url) -> None:
    """The property is not vacuous: a budget about to run out cuts the quote exactly as the post."""
    ledger, config, _ = _ledger(sqlite_url)
    config.create_merchant(Merchant(id="MB", name="MB", merchant_class="small"))
    config.create_terminal("TB", "MB")
    config.create_campaign(_plain_campaign("CB", "MB", 1000, budget=150))
    first = Purchase(wallet_id="WB", merchant_id="MB", terminal_id="TB", occurred_at=START, amount=1000)
    assert _post(ledger, first, "b1").body["points_awarded"] == 100
    second = first.model_copy(update={"amount": 2000})
    outcome, _ = ledger.quote(second)
    assert [(a.points, a.capped_by) for a in outcome.awards] == [(50, "budget")]
    posted = _post(ledger, second, "b2").body["awards"]
    assert [(a["points"], a["capped_by"]) for a in posted] == [(50, "budget")]


def test_a_quote_follows_a_catalog_changed_by_another_process(database_url) -> None:
    """A quoting process keeps its catalog between quotes; when another process changes a
    campaign, the next quote rates against the new version, not the one it had loaded."""
    db.upgrade(database_url)
    clock = ManualClock(to_us(START))
    quoting = Ledger(db.make_engine(database_url), clock)
    other = Config(db.make_engine(database_url), clock=clock)  # another process's engine and pool
    other.create_merchant(Merchant(id="MV", name="MV", merchant_class="small"))
    other.create_terminal("TV", "MV")
    other.create_campaign(_plain_campaign("CV", "MV", 100))
    body = Purchase(wallet_id="WV", merchant_id="MV", terminal_id="TV", occurred_at=START, amount=10_000)
    before, catalog = quoting.quote(body)
    assert [(a.campaign_id, a.points) for a in before.awards] == [("CV", 100)]
    version = catalog.version
    other.update_campaign("CV", {"tiers": [{"match": {"merchant_ids": ["MV"]}, "rate_bp": 500}]})
    after, catalog = quoting.quote(body)
    assert catalog.version > version
    assert [(a.campaign_id, a.points) for a in after.awards] == [("CV", 500)]
    assert catalog.campaigns["CV"].tiers[0].rate_bp == 500


def test_a_quote_on_postgresql_is_one_round_trip_in_its_own_read_only_snapshot(postgres_url) -> None:
    """Against the process's catalog a quote is the pool's ping and one pipeline (BEGIN
    REPEATABLE READ READ ONLY, the head's version, the state, ROLLBACK), and the pooled
    connection goes back transactional."""
    db.upgrade(postgres_url)
    engine = db.make_engine(postgres_url)
    config = Config(engine)
    config.create_merchant(Merchant(id="MR", name="MR", merchant_class="small"))
    config.create_terminal("TR", "MR")
    config.create_campaign(_plain_campaign("CR", "MR", 1000))
    engine.dispose()
    engine = db.make_engine(postgres_url)
    ledger = Ledger(engine, ManualClock(to_us(START)))
    body = Purchase(wallet_id="WR", merchant_id="MR", terminal_id="TR", occurred_at=START, amount=2_000)
    assert [a.points for a in ledger.quote(body)[0].awards] == [200]  # loads the catalog
    with engine.connect() as connection:
        raw = db.psycopg_connection(connection)
    with tempfile.TemporaryFile("w+") as trace:
        raw.pgconn.trace(trace.fileno())
        outcome, _ = ledger.quote(body.model_copy(update={"points_used": 50}))
        raw.pgconn.untrace()
        trace.seek(0)
        lines = trace.readlines()
    assert outcome.declined == "insufficient_points"  # the wallet's books were read too
    answers = [line for line in lines if "\tB\t" in line and "ReadyForQuery" in line]
    assert len(answers) == 2, answers  # the pool's ping, then the one pipeline
    sent = "".join(line for line in lines if "\tF\t" in line)
    assert "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY" in sent and "ROLLBACK" in sent
    with engine.connect() as connection:
        assert db.psycopg_connection(connection) is raw, "the same pooled connection"
        assert raw.autocommit is False, "the quote's autocommit does not leak to the next user"
    engine.dispose()
