"""Two API hosts whose clocks differ (helper-107): the re-rate takes the campaign and merchant
versions, and the grants, in force at a payment's acceptance instant, while live a payment is rated
under what was in force when its group was decided, in acceptance order. A change dated by a
clock behind a payment another host stamped earlier in the chain, or a payment stamped by a clock
behind a change made earlier in the chain, made reconciliation name payments whose live award was
right. Now each change and grant is dated past the ledger's last payment and every live stamp after
it is at least its instant (`ledger.date_catalog_change`, `ledger_head.order_floor_us`)."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import func, select

from engine.clock import ManualClock
from engine.store import lifecycle
from engine.store.config import Config
from engine.store.importer import import_history
from engine.store.ledger import Ledger, Submission
from engine.store.models import LedgerHead, PostingRow
from tests.finance.support import Ward, submission
from tests.tokyo import jst, us

SKEW_US = 1_000_000  # one second, as helper-107's two hosts


def _submission(key: str, occurred: str, amount: int = 10_000, wallet: str = "W1") -> Submission:
    return submission(
        key,
        {
            "type": "purchase",
            "wallet_id": wallet,
            "merchant_id": "M001",
            "terminal_id": "TM001",
            "occurred_at": jst(occurred).isoformat(),
            "amount": amount,
            "points_used": 0,
        },
    )


def _refund(key: str, original_id: str, amount: int) -> Submission:
    occurred = jst("2026-12-01T09:59").isoformat()
    return submission(key, {"type": "refund", "original_id": original_id, "amount": amount, "occurred_at": occurred})


def _purchase(ledger: Ledger, key: str, occurred: str, amount: int = 10_000, wallet: str = "W1") -> dict:
    answer = ledger.submit([_submission(key, occurred, amount, wallet)])
    assert answer[0].status == 201, answer[0].body
    return answer[0].body


class _Host:
    """An API host: its own clock, ledger and configuration over the ward's database."""

    def __init__(self, ward: Ward, at_us: int) -> None:
        self.clock = ManualClock(at_us)
        self.ledger = Ledger(ward.engine, self.clock)
        self.config = Config(ward.engine, ward.settings, self.clock)

    def tick(self, us_: int = 1_000) -> None:
        self.clock.set(self.clock.now_us() + us_)

    def close(self) -> None:
        self.ledger.close()


def _hosts(ward: Ward) -> tuple[_Host, _Host]:
    """Host A one second ahead of host B."""
    ward.merchant("M001")
    ward.campaign("PB", 100, budget=10_000)
    base = us("2026-12-01T10:00")
    return _Host(ward, base + SKEW_US), _Host(ward, base)


def _assert_reconciles(ward: Ward) -> None:
    report = ward.reconcile()
    assert report["ok"], {n: c for n, c in report["checks"].items() if not c["pass"]}


def _award(answer: dict) -> int:
    return sum(a["points"] for a in answer["awards"])


def test_a_change_on_a_clock_behind_is_dated_after_the_payment_before_it(ward: Ward) -> None:
    ahead, behind = _hosts(ward)
    try:
        first = _purchase(ahead.ledger, "a-1", "2026-12-01T09:59")  # stamped a second ahead of B
        behind.tick()
        behind.config.update_campaign("PB", {"tiers": [{"match": {}, "rate_bp": 500}]})
        behind.tick()
        after = _purchase(behind.ledger, "b-1", "2026-12-01T09:59")  # rated under the new rate
        assert (_award(first), _award(after)) == (100, 500)
        assert us(after["accepted_at"]) > us(first["accepted_at"])
        _assert_reconciles(ward)
    finally:
        ahead.close(), behind.close()


def test_a_change_on_a_clock_behind_comes_after_every_payment_before_it(ward: Ward) -> None:
    """Dated past only the ledger's last payment, a change on the host behind still came before an
    earlier payment of the host ahead (helper-110: a purchase on A, one on B, a PATCH on B, a
    purchase on B; the re-rate gave A's purchase the new rate). Acceptance instants no longer go
    back along the chain, so the last payment's is the latest."""
    ahead, behind = _hosts(ward)
    try:
        first = _purchase(ahead.ledger, "a-1", "2026-12-01T09:59")
        behind.tick()
        second = _purchase(behind.ledger, "b-1", "2026-12-01T09:59")
        assert us(second["accepted_at"]) >= us(first["accepted_at"])  # at the order floor, not its clock
        behind.tick()
        behind.config.update_campaign("PB", {"tiers": [{"match": {}, "rate_bp": 500}]})
        behind.tick()
        third = _purchase(behind.ledger, "b-2", "2026-12-01T09:59")
        assert [_award(a) for a in (first, second, third)] == [100, 100, 500]
        # A grant on the host behind after a refund there of the host ahead's purchase.
        big = _purchase(ahead.ledger, "a-2", "2026-12-01T09:59", 100_000, wallet="W4")
        behind.tick()
        refund = behind.ledger.submit([_refund("b-r", big["id"], 100_000)])[0]
        assert refund.status == 201, refund.body
        granted = lifecycle.grant(behind.ledger, "admin", "g-1", "W2", "PB", 9_000, "welcome")
        assert granted.status == 201, granted.body
        assert us(granted.body["granted_at"]) > us(big["accepted_at"])
        _assert_reconciles(ward)
    finally:
        ahead.close(), behind.close()


def test_a_payment_on_a_clock_behind_a_change_is_stamped_at_or_after_it(ward: Ward) -> None:
    ahead, behind = _hosts(ward)
    try:
        before = _purchase(behind.ledger, "b-1", "2026-12-01T09:59")
        ahead.config.update_campaign("PB", {"tiers": [{"match": {}, "rate_bp": 500}]})  # dated a second ahead
        behind.tick()
        after = _purchase(behind.ledger, "b-2", "2026-12-01T09:59")
        assert (_award(before), _award(after)) == (100, 500)
        with ward.engine.connect() as c:
            floor = c.execute(select(LedgerHead.order_floor_us)).scalar_one()
        assert us(after["accepted_at"]) >= floor >= us(before["accepted_at"]) + SKEW_US  # the change's instant
        # A merchant made on the host ahead and a payment there on the host behind, too.
        ahead.config.update_merchant("M001", {"fee_bp": 250})
        behind.tick()
        _purchase(behind.ledger, "b-3", "2026-12-01T09:59")
        _assert_reconciles(ward)
    finally:
        ahead.close(), behind.close()


def test_grants_on_either_host_are_dated_between_the_payments_around_them(ward: Ward) -> None:
    """A grant counts against its campaign's budget: the re-rate counts the grants made before a
    payment, by instant. Granted on the host ahead, the purchase after it on the host behind was
    capped by the budget live and not in the re-rate; granted on the host behind after a purchase
    on the host ahead, the re-rate counted it before the purchase."""
    ahead, behind = _hosts(ward)
    try:
        purchase = _purchase(ahead.ledger, "a-1", "2026-12-01T09:59", 100_000)  # 1,000 points
        behind.tick()
        granted = lifecycle.grant(behind.ledger, "admin", "g-1", "W2", "PB", 8_900, "welcome")
        assert granted.status == 201, granted.body
        assert us(granted.body["granted_at"]) > us(purchase["accepted_at"])
        ahead.tick()
        granted = lifecycle.grant(ahead.ledger, "admin", "g-2", "W2", "PB", 50, "welcome")
        assert granted.status == 201, granted.body
        behind.tick()
        capped = _purchase(behind.ledger, "b-1", "2026-12-01T09:59", 10_000, wallet="W3")  # 100 points, 50 left
        assert _award(capped) == 50, capped
        assert us(capped["accepted_at"]) >= us(granted.body["granted_at"])
        _assert_reconciles(ward)
    finally:
        ahead.close(), behind.close()


def test_the_history_import_still_enters_versions_with_its_clock_set_back(early: Ward) -> None:
    """The import's procedure (docs/IMPORT.md): every version entered first, each with the clock
    set back to its instant, then the payments between them, each rated under the version in force
    at its instant. The order floor holds live stamps only: the import's own instants are not held
    to it (they would all be refused behind the last version's)."""
    early.merchant("M001")
    early.campaign("PB", 100)
    early.at("2026-11-20T00:00")
    r = early.client.patch("/v1/campaigns/PB", json={"tiers": [{"match": {}, "rate_bp": 500}]}, headers=early.admin)
    assert r.status_code == 200, r.text
    early.at("2026-12-01T09:00")
    header = (
        "payment_id,type,wallet_id,merchant_id,terminal_id,occurred_at,amount,points_used,items,original_payment_id"
    )
    rows = [
        f"{prefix}{i},purchase,WH{i % 5},M001,TM001,{day}T10:00:{i:02d}+09:00,1000,,,"
        for prefix, day in (("H", "2026-11-15"), ("J", "2026-11-25"))
        for i in range(30)
    ]
    summary = import_history(
        early.ledger, io.StringIO("\n".join([header, *rows]) + "\n"), io.StringIO(), source="OLDAPP"
    )
    assert summary.imported == 60, summary.summary()
    with early.engine.connect() as c:
        awarded = c.execute(select(func.sum(PostingRow.amount)).where(PostingRow.reason == "award")).scalar_one()
    assert awarded == 30 * 10 + 30 * 50  # 1% before the change, 5% after
    _assert_reconciles(early)


def test_a_group_decided_ahead_on_a_clock_behind_a_change_is_stamped_at_or_after_it(ward: Ward) -> None:
    if ward.engine.dialect.name != "postgresql":
        pytest.skip("groups are decided ahead of the lock on PostgreSQL only")
    ahead, behind = _hosts(ward)
    try:
        ahead.config.update_campaign("PB", {"tiers": [{"match": {}, "rate_bp": 500}]})
        submission = _submission("b-ahead", "2026-12-01T09:59")
        decided = behind.ledger.decide_ahead([submission], accepted_at_us=None)
        assert decided is not None and behind.ledger.write_decided(decided)
        answer = decided.results[0].body
        assert _award(answer) == 500, answer
        with ward.engine.connect() as c:
            assert us(answer["accepted_at"]) >= c.execute(select(LedgerHead.order_floor_us)).scalar_one()
        _assert_reconciles(ward)
    finally:
        ahead.close(), behind.close()
