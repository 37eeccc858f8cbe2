"""Property test of the wallet lifecycle: random sequences of purchases (with and
without points, some beyond the wallet's points), refunds (partial, the rest,
beyond the original), grants (some beyond the budget, some replayed), crediting
runs and expiry runs at random instants (including re-runs of an earlier
instant), over an `immediate` and a `dekad` campaign whose budgets and caps bind.

After every step, computed independently of the engine's own bookkeeping where
it matters:
- `ledger_check` is ok with every check true (trial balance, cached balances,
  hash chain, lots against balances, the liability identity per campaign, per
  wallet and in total, budget meters);
- no award is credited twice and no points expire twice: at most one credit
  posting per award, and a lot's second expiry posting only after a refund
  returned points into it; a run credits/expires exactly what was due, and a
  re-run of the same instant posts nothing;
- each wallet's pending and available − debt from the read query equal the sums
  of its pending and available account postings from the posting table;
- every decline is the one the posting table predicts (insufficient points,
  refund beyond the original, budget exceeded) and writes nothing.

Every example runs on a fresh database: a copy of a migrated and configured
template (a file copy on SQLite, CREATE DATABASE … TEMPLATE on PostgreSQL).
"""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from collections import defaultdict

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.engine import make_url

from engine.store.models import PaymentRow, RedemptionLegRow
from engine.timeutil import to_us
from tests.conftest import CONNECT_TIMEOUT_S, PG_HOST, PG_PORT, PG_USER
from tests.lifecycle.support import Books, account_sums, campaign, due_points, wallet_sums
from tests.tokyo import jst

HOUR_US = 3_600_000_000
START = jst("2026-12-01T09:00")
WALLETS = ["W_1", "W_2", "W_3"]
TERMINALS = ["T_A", "T_B"]
BUDGETS = {"C_IMM": 2000, "C_DEK": 1500}
CAMPAIGNS = [
    campaign(
        "C_IMM",
        starts_at="2026-11-01T00:00:00+09:00",
        ends_at="2027-03-01T00:00:00+09:00",
        tiers=[{"match": {}, "rate_bp": 1000}],
        per_wallet_cap=400,
        per_wallet_cap_period="month",
        budget=BUDGETS["C_IMM"],
        validity_months=1,
        priority=10,
    ),
    campaign(
        "C_DEK",
        starts_at="2026-11-01T00:00:00+09:00",
        ends_at="2027-03-01T00:00:00+09:00",
        tiers=[{"match": {}, "rate_bp": 500}],
        per_tx_cap=150,
        budget=BUDGETS["C_DEK"],
        credit={"schedule": "dekad", "delay_business_days": 2},
        validity_months=1,
        priority=5,
    ),
]
EXAMPLES = {"sqlite": 60, "postgresql": 10}

advance = st.sampled_from([0, 0, 1, 6, 24, 72, 168, 240])
buy = st.tuples(
    st.just("buy"),
    st.sampled_from(WALLETS),
    st.sampled_from(TERMINALS),
    st.integers(1, 6000),
    st.sampled_from(["none", "none", "some", "all", "over"]),
    st.integers(0, 100),
    st.sampled_from([0, 0, 0, 2, 30, 300]),
    advance,
)
refund = st.tuples(
    st.just("refund"),
    st.integers(0, 1000),
    st.sampled_from(["part", "part", "rest", "over"]),
    st.integers(1, 99),
    advance,
)
grant = st.tuples(
    st.just("grant"),
    st.sampled_from(WALLETS),
    st.sampled_from(sorted(BUDGETS)),
    st.integers(1, 900),
    st.sampled_from([False, False, False, True]),
    advance,
)
# as_of relative to the clock, in hours: from ten days back to almost three months ahead (lots credited in
# December expire on 1 February); or an earlier run's instant.
# Or an instant at a month's end, where lots of a month expire (an exclusive instant: 00:00 JST), or just before.
BOUNDARIES = [
    to_us(jst(day)) + delta
    for day in ("2027-01-01T00:00", "2027-02-01T00:00", "2027-03-01T00:00", "2027-04-01T00:00")
    for delta in (-1, 0)
]
as_of = st.one_of(
    st.integers(-240, 2000),
    st.integers(0, 50).map(lambda i: ("again", i)),
    st.sampled_from(BOUNDARIES).map(lambda at: ("at", at)),
)
run = st.tuples(st.sampled_from(["credit", "expire"]), as_of, advance)
OPERATIONS = st.lists(st.one_of(buy, buy, buy, refund, refund, grant, run, run), min_size=10, max_size=30)


# -- fresh databases from a template ----------------------------------------------


class Template:
    """A migrated, configured database, copied for every example."""

    def __init__(self, url: str, directory) -> None:
        self.url = url
        self.directory = directory
        books = Books(url)
        books.setup({"M_A": ["T_A"], "M_B": ["T_B"]}, CAMPAIGNS)
        self.terminals = dict(books.terminals)
        books.close()
        self.sqlite = url.startswith("sqlite")

    def _admin(self):
        import psycopg

        return psycopg.connect(
            f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres connect_timeout={CONNECT_TIMEOUT_S}",
            autocommit=True,
        )

    def copy(self) -> str:
        if self.sqlite:
            target = self.directory / f"example_{uuid.uuid4().hex[:12]}.db"
            shutil.copyfile(make_url(self.url).database, target)
            return f"sqlite+pysqlite:///{target}"
        name = f"setapay_test_{uuid.uuid4().hex[:16]}"
        template = make_url(self.url).database
        with self._admin() as admin:
            admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return str(make_url(self.url).set(database=name))

    def drop(self, url: str) -> None:
        if self.sqlite:
            return
        name = make_url(url).database
        with self._admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the independent reading of the posting table ----------------------------------


def campaign_meters(postings) -> dict[str, int]:
    """Net issued per campaign (awards and grants minus clawbacks) from the postings."""
    meter: dict[str, int] = defaultdict(int)
    for p in postings:
        if p.reason in ("award", "grant"):
            meter[p.campaign_id] += p.amount
        elif p.reason == "clawback":
            meter[p.campaign_id] -= p.amount
    return meter


def assert_only_expired(new_postings, due: int) -> None:
    """A declined purchase or refund writes no posting but the expiry of its wallet's due lots
    (what the expiry run would have posted, taken out before the kernel looked at the wallet)."""
    assert all(p.reason == "expiry" for p in new_postings), [(p.reason, p.amount) for p in new_postings]
    assert sum(p.amount for p in new_postings) == due, ([p.amount for p in new_postings], due)
    if new_postings:
        event("a declined transaction expired its wallet's due lots first")


def check_invariants(books: Books, now_us: int) -> None:
    books.check()
    postings = books.postings()
    awards = books.awards()
    lots = books.lots()

    # Credits: at most one posting per award, never more than the award.
    credits: dict[tuple[str, str], list[int]] = defaultdict(list)
    for p in postings:
        if p.reason == "credit":
            credits[(p.payment_id, p.campaign_id)].append(p.amount)
    by_award = {(a.payment_id, a.campaign_id): a for a in awards}
    for key, amounts in credits.items():
        assert len(amounts) == 1, f"award {key} credited {len(amounts)} times: {amounts}"
        award = by_award[key]
        assert 0 < amounts[0] <= award.points, (key, amounts, award)
    for a in awards:
        assert a.pending >= 0 and 0 <= a.clawed_back <= a.points, a
        if (a.payment_id, a.campaign_id) in credits:
            assert a.pending == 0, f"award credited yet still pending: {a}"

    # Expiry: a lot's points leave once; a second expiry only after a refund returned points into it.
    with books.engine.connect() as c:
        legs = list(c.execute(select(RedemptionLegRow.payment_id, RedemptionLegRow.lot_id)))
        originals = dict(
            c.execute(select(PaymentRow.id, PaymentRow.original_id).where(PaymentRow.original_id.is_not(None))).all()
        )
    lots_of_purchase: dict[str, set[str]] = defaultdict(set)
    for payment_id, lot in legs:
        lots_of_purchase[payment_id].add(lot)
    returns_into: dict[str, list[int]] = defaultdict(list)  # lot -> sequences of points_return postings
    for p in postings:
        if p.reason == "points_return":
            for lot in lots_of_purchase.get(originals.get(p.payment_id), ()):
                returns_into[lot].append(p.sequence)
    expiries: dict[str, list] = defaultdict(list)
    for p in postings:
        if p.reason == "expiry":
            expiries[f"{p.payment_id}:{p.campaign_id}"].append(p)
    lot_rows = {lot.id: lot for lot in lots}
    for lot_id, posted in expiries.items():
        if len(posted) > 1:
            event("a lot expired again after a refund returned points into it")
        for earlier, later in zip(posted, posted[1:]):
            assert any(earlier.sequence < s < later.sequence for s in returns_into[lot_id]), (
                f"lot {lot_id} expired twice with no points returned into it in between: "
                f"{[(p.sequence, p.amount) for p in posted]}"
            )
        assert sum(p.amount for p in posted) == lot_rows[lot_id].expired, (lot_id, posted, lot_rows[lot_id])

    # Wallets: the read query equals the postings.
    sums = account_sums(postings)
    for wallet in WALLETS:
        detail = books.wallet(wallet)
        pending, net_available = wallet_sums(postings, wallet)
        net_available -= due_points(lots, wallet, now_us)  # past their expiry: not available, nor expiring
        assert detail["pending"] == pending, (wallet, detail, pending)
        assert detail["available"] - detail["debt"] == net_available, (wallet, detail, net_available)
        assert detail["available"] >= 0 and detail["debt"] >= 0 and not (detail["available"] and detail["debt"])
        assert sum(p["points"] for p in detail["pending_by_credit_date"]) == pending, detail
        assert sum(e["points"] for e in detail["expiring"]) == detail["available"], detail
        buckets = [sums[f"wallet:{wallet}:{c}:available"] for c in BUDGETS]
        assert not (any(b > 0 for b in buckets) and any(b < 0 for b in buckets)), (
            f"{wallet} holds spendable points in one campaign and debt in another: {buckets}"
        )

    # Budgets bind exactly: net issued never above the budget.
    for campaign_id, issued in campaign_meters(postings).items():
        assert issued <= BUDGETS[campaign_id], (campaign_id, issued)


# -- one example --------------------------------------------------------------------


class Run:
    def __init__(self, books: Books) -> None:
        self.books = books
        self.now = to_us(START)  # the test's notion of now; the ledger's manual clock follows it
        self.purchases: list[dict] = []
        self.grants: list[tuple[str, tuple, object]] = []
        self.as_ofs: dict[str, list[int]] = {"credit": [], "expire": []}

    def step(self, op: tuple) -> None:
        self.now += op[-1] * HOUR_US
        self.books.at(self.now)
        getattr(self, "do_" + op[0])(*op[1:-1])
        check_invariants(self.books, self.now)

    def _postings(self):
        return self.books.postings()

    def do_buy(self, wallet, terminal, amount, mode, percent, backdate_h) -> None:
        before = self._postings()
        due = due_points(self.books.lots(), wallet, self.now)
        if due:
            event("a wallet with points past their expiry buys")
        available = max(wallet_sums(before, wallet)[1] - due, 0)
        points_used = {
            "none": 0,
            "some": available * percent // 100,
            "all": available,
            "over": available + 1 + percent,
        }[mode]
        amount = max(amount, points_used)
        occurred = self.now - backdate_h * HOUR_US - 60_000_000
        result = self.books.purchase(terminal, wallet, amount, _instant(occurred), points_used)
        if points_used > wallet_sums(before, wallet)[1] - due and points_used > 0:
            assert (result.status, result.body.get("code")) == (422, "insufficient_points"), result.body
            assert_only_expired(self._postings()[len(before) :], due)
            event("purchase declined: insufficient_points")
            return
        assert result.status == 201, (points_used, available, result.body)
        event("purchase redeeming points" if points_used else "purchase")
        if any(a["capped_by"] for a in result.body["awards"]):
            event("award capped")
        self.purchases.append(
            {"id": result.body["id"], "terminal": terminal, "wallet": wallet, "amount": amount, "refunded": 0}
        )

    def do_refund(self, index, kind, percent) -> None:
        if not self.purchases:
            return
        original = self.purchases[index % len(self.purchases)]
        left = original["amount"] - original["refunded"]
        amount = {"part": max(1, left * percent // 100), "rest": max(left, 1), "over": left + percent}[kind]
        before = len(self._postings())
        due = due_points(self.books.lots(), original["wallet"], self.now)
        result = self.books.refund(original["terminal"], original["id"], amount, _instant(self.now - 60_000_000))
        if amount > left:
            assert (result.status, result.body.get("code")) == (422, "refund_exceeds_original"), result.body
            assert_only_expired(self._postings()[before:], due)
            event("refund declined: refund_exceeds_original")
            return
        assert result.status == 201, (amount, left, result.body)
        original["refunded"] += amount
        event("refund" + (" returning points" if result.body["points_returned"] else ""))
        if wallet_sums(self._postings(), result.body["wallet_id"])[1] < 0:
            event("wallet in debt after a refund")

    def do_grant(self, wallet, campaign_id, points, replay) -> None:
        before = self._postings()
        if replay and self.grants:
            key, request, first = self.grants[-1]
            result = self.books.grant(*request, key=key)
            assert result.replayed and (result.status, result.body) == (first.status, first.body), result
            assert len(self._postings()) == len(before), "a replayed grant wrote postings"
            event("grant replayed")
            return
        key = uuid.uuid4().hex
        room = BUDGETS[campaign_id] - campaign_meters(before)[campaign_id]
        result = self.books.grant(wallet, campaign_id, points, key=key)
        if points > room:
            assert (result.status, result.body.get("code")) == (422, "budget_exceeded"), (points, room, result.body)
            assert len(self._postings()) == len(before)
            event("grant declined: budget_exceeded")
        else:
            assert result.status == 201, (points, room, result.body)
            event("grant")
        self.grants.append((key, (wallet, campaign_id, points), result))

    def do_credit(self, offset) -> None:
        self._lifecycle("credit", offset)

    def do_expire(self, offset) -> None:
        self._lifecycle("expire", offset)

    def _lifecycle(self, kind, offset) -> None:
        earlier = self.as_ofs[kind]
        if isinstance(offset, tuple) and offset[0] == "at":
            at = offset[1]
        elif isinstance(offset, tuple):  # a re-run of an earlier run's instant
            at = earlier[offset[1] % len(earlier)] if earlier else self.now
        else:
            at = self.now + offset * HOUR_US
        earlier.append(at)
        if kind == "credit":
            due = [a for a in self.books.awards() if a.pending > 0 and a.credit_at_us <= at]
            result = self.books.credit(at)
            assert (result["awards_credited"], result["points"]) == (len(due), sum(a.pending for a in due)), result
            assert not [a for a in self.books.awards() if a.pending > 0 and a.credit_at_us <= at]
            assert self.books.credit(at)["awards_credited"] == 0, "a re-run of the same as_of credited again"
            event("credit run crediting" if due else "credit run with nothing due")
        else:
            due = [lot for lot in self.books.lots() if lot.remaining > 0 and lot.expires_at_us <= at]
            result = self.books.expire(at)
            assert (result["lots_expired"], result["points"]) == (len(due), sum(x.remaining for x in due)), result
            assert not [x for x in self.books.lots() if x.remaining > 0 and x.expires_at_us <= at]
            assert self.books.expire(at)["lots_expired"] == 0, "a re-run of the same as_of expired again"
            event("expiry run expiring" if due else "expiry run with nothing due")


def _instant(at_us: int) -> dt.datetime:
    from tests.tokyo import JST

    return (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=at_us)).astimezone(JST)


def test_random_lifecycles_keep_the_ledger_exact(database_url, tmp_path, request):
    backend = request.node.callspec.params["database_url"]
    template = Template(database_url, tmp_path)

    @settings(
        max_examples=EXAMPLES[backend],
        deadline=None,
        derandomize=False,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(operations=OPERATIONS)
    def example(operations):
        url = template.copy()
        books = Books(url, migrate=False, start=START)
        books.terminals = dict(template.terminals)
        try:
            runner = Run(books)
            for op in operations:
                runner.step(op)
        finally:
            books.close()
            template.drop(url)

    example()
