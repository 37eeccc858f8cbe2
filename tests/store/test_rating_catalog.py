"""A group is rated against the campaigns it can meet (`CatalogSnapshot.rating_for`), not every
campaign the ward ever ran: those whose window `[starts_at, ends_at)` holds an instant between
its first and last purchase. Campaigns that ended long ago cost a group nothing and their item
tags do not count against the kernel's 64; a refund still takes back the awards of campaigns
ended since, in the order they were awarded. Campaigns whose windows come within a group's span
of each other may not name more than 64 item tags together (422 `too_many_item_tags`).
"""

from __future__ import annotations

import datetime as dt

import pytest

from engine.errors import EngineError
from engine.model import Purchase, Refund
from engine.store import rerate
from engine.store.ledger import CatalogSnapshot
from engine.timeutil import TOKYO
from tests.lifecycle.support import Books, campaign

T0 = dt.datetime(2026, 10, 1, tzinfo=TOKYO)
DAY = dt.timedelta(days=1)
US = dt.timedelta(microseconds=1)


def _purchase(at: dt.datetime) -> Purchase:
    return Purchase(wallet_id="W1", merchant_id="M1", terminal_id="T1", occurred_at=at, amount=1_000)


def test_a_group_meets_the_campaigns_whose_window_holds_an_instant_of_its_span() -> None:
    snapshot = CatalogSnapshot(
        version=1,
        campaigns={
            c.id: c
            for c in (
                campaign("A", starts_at=T0.isoformat(), ends_at=(T0 + 10 * DAY).isoformat()),
                campaign("B", starts_at=(T0 + 10 * DAY).isoformat(), ends_at=(T0 + 20 * DAY).isoformat()),
                campaign("C", starts_at=(T0 + 20 * DAY).isoformat(), ends_at=(T0 + 30 * DAY).isoformat()),
            )
        },
        merchants={},
        merchant_by_terminal={},
    )

    def met(*instants: dt.datetime) -> list[str]:
        return snapshot.rating_for([_purchase(at) for at in instants]).campaign_ids

    assert met(T0) == ["A"]
    assert met(T0 + 10 * DAY - US) == ["A"]
    assert met(T0 + 10 * DAY) == ["B"]  # half-open: A has ended
    assert met(T0 + 10 * DAY - US, T0 + 10 * DAY) == ["A", "B"]
    assert sorted(met(T0 + 20 * DAY, T0 + 5 * DAY)) == ["A", "B", "C"]  # every instant in between
    assert met(T0 - US) == [] and met(T0 + 30 * DAY) == []
    # Refunds alone meet none: a refund takes back its original's awards whatever the catalog.
    refund = Refund(original_id="tx_1", amount=1, occurred_at=T0 + DAY)
    assert snapshot.rating_for([refund]).campaign_ids == []
    # Built once per set of campaigns.
    assert snapshot.rating_for([_purchase(T0)]) is snapshot.rating_for([_purchase(T0 + DAY)])


def _tags(prefix: str, n: int = 40) -> list[str]:
    return [f"{prefix}_{i}" for i in range(n)]


def test_ended_campaigns_naming_many_tags_leave_posting_and_refunds_as_they_were(database_url) -> None:
    """Two campaigns of October, one naming 40 item tags, and one of December naming 40 others:
    80 tags in all, which a kernel catalog of every campaign cannot hold (every group failed).
    A December purchase is rated against December's campaign only; a refund in December of an
    October purchase takes back both October awards, in the order they were awarded."""
    books = Books(database_url, start=T0 - DAY)
    try:
        october = {"starts_at": T0.isoformat(), "ends_at": (T0 + 31 * DAY).isoformat()}
        december = {"starts_at": (T0 + 61 * DAY).isoformat(), "ends_at": (T0 + 92 * DAY).isoformat()}
        books.setup(
            {"M1": ["T1"]},
            [
                campaign("OCT_TAGGED", item_tags=_tags("oct"), priority=1, **october),
                campaign("ZZ_OCT_ALL", priority=5, **october),
                campaign("DEC_TAGGED", item_tags=_tags("dec"), **december),
            ],
        )
        books.at(T0 + 14 * DAY)
        items = [{"amount": 6_000, "tags": ["oct_3"]}, {"amount": 4_000, "tags": []}]
        bought = books.submit(
            "T1",
            {
                "type": "purchase",
                "wallet_id": "W1",
                "merchant_id": "M1",
                "terminal_id": "T1",
                "occurred_at": (T0 + 14 * DAY).isoformat(),
                "amount": 10_000,
                "points_used": 0,
                "items": items,
            },
        )
        assert bought.status == 201, bought.body
        awarded = [(a["campaign_id"], a["points"]) for a in bought.body["awards"]]
        assert awarded == [("ZZ_OCT_ALL", 1_000), ("OCT_TAGGED", 600)]

        books.at(T0 + 70 * DAY)
        later = books.purchase("T1", "W2", 5_000, T0 + 70 * DAY)
        assert later.status == 201, later.body
        assert later.body["awards"] == []  # DEC_TAGGED counts tagged items only; these have none

        refund = books.refund("T1", bought.body["id"], 10_000, T0 + 70 * DAY)
        assert refund.status == 201, refund.body
        assert [(c["campaign_id"], c["points"]) for c in refund.body["clawbacks"]] == awarded
        books.check()
        # Reconciliation's re-rate rates a day of acceptance at a time against the campaigns it
        # can meet, so it re-rates this ledger too, to the same answers.
        report = rerate.rerate_check(books.engine)
        assert (report["ok"], report["checked"], report["mismatch_count"]) == (True, 3, 0), report
    finally:
        books.close()


def test_campaigns_meeting_may_not_name_more_than_64_tags_together(database_url) -> None:
    books = Books(database_url, start=T0 - DAY)
    try:
        month = {"starts_at": T0.isoformat(), "ends_at": (T0 + 31 * DAY).isoformat()}
        books.setup({"M1": ["T1"]}, [campaign("FIRST", item_tags=_tags("a"), **month)])
        # Within a group's span of FIRST's window (7 days behind, 300 s ahead by default, and a
        # day more for the re-rate).
        near = {"starts_at": (T0 + 37 * DAY).isoformat(), "ends_at": (T0 + 60 * DAY).isoformat()}
        with pytest.raises(EngineError) as refused:
            books.config.create_campaign(campaign("SECOND", item_tags=_tags("b"), **near))
        assert (refused.value.code, refused.value.status) == ("too_many_item_tags", 422)
        assert [c.id for c in books.config.list_campaigns()] == ["FIRST"]
        # Sharing tags is no new tag; far enough apart, 80 distinct tags are fine.
        books.config.create_campaign(campaign("SHARED", item_tags=_tags("a")[:30] + _tags("b", 24), **near))
        far = {"starts_at": (T0 + 40 * DAY).isoformat(), "ends_at": (T0 + 60 * DAY).isoformat()}
        with pytest.raises(EngineError):
            books.config.create_campaign(campaign("FAR", item_tags=_tags("c"), **far))  # meets SHARED
        books.config.create_campaign(campaign("LATER", item_tags=_tags("c"), starts_at=(T0 + 70 * DAY).isoformat()))
        # An update that brings a window, or tags, within reach is refused the same way.
        with pytest.raises(EngineError) as moved:
            books.config.update_campaign("LATER", {"starts_at": (T0 + 50 * DAY).isoformat()})
        assert moved.value.code == "too_many_item_tags"
        with pytest.raises(EngineError) as retagged:
            books.config.update_campaign("SHARED", {"item_tags": _tags("a")[:10] + _tags("d", 35)})
        assert retagged.value.code == "too_many_item_tags"
        assert books.config.get_campaign("SHARED").version == 1
    finally:
        books.close()


def test_campaigns_over_the_tag_limit_already_can_still_be_ended_or_rebudgeted(database_url) -> None:
    """Campaigns made while `occurred_at_max_past_days` was 0 may stand 3 days apart with 80 tags;
    at the default 7 days they meet. Ending one early or changing its budget passes; a new tag or
    a wider window is refused."""
    from engine.settings import Settings
    from engine.store.config import Config

    books = Books(database_url, start=T0 - DAY)
    try:
        narrow = Config(books.engine, Settings(occurred_at_max_past_days=0), clock=books.clock)
        narrow.create_campaign(
            campaign("A", item_tags=_tags("a"), starts_at=T0.isoformat(), ends_at=(T0 + 10 * DAY).isoformat())
        )
        narrow.create_campaign(
            campaign(
                "B", item_tags=_tags("b"), starts_at=(T0 + 13 * DAY).isoformat(), ends_at=(T0 + 30 * DAY).isoformat()
            )
        )
        books.config.update_campaign("A", {"ends_at": (T0 + 9 * DAY).isoformat(), "budget": 50_000})
        with pytest.raises(EngineError) as tagged:
            books.config.update_campaign("A", {"item_tags": [*_tags("a"), "new_tag"]})
        assert tagged.value.code == "too_many_item_tags"
        with pytest.raises(EngineError) as widened:
            books.config.update_campaign("B", {"ends_at": (T0 + 31 * DAY).isoformat()})
        assert widened.value.code == "too_many_item_tags"
        assert [books.config.get_campaign(c).version for c in ("A", "B")] == [2, 1]
    finally:
        books.close()
