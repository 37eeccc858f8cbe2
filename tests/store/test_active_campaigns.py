"""CAMPAIGNS_ACTIVE_MAX (engine/limits.py): at most 64 campaigns running or scheduled at once.

A campaign is active from its creation until its `ends_at` (running or scheduled). Creating the
65th, or making an ended one run again, is refused with 422 `too_many_active_campaigns`; ended
campaigns do not count, so ending one (once its end has passed) makes room. On SQLite and on
PostgreSQL, and over HTTP.
"""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from engine import limits
from engine.clock import ManualClock
from engine.errors import EngineError
from engine.model import Campaign
from engine.settings import Settings
from engine.store import db
from engine.store.config import Config
from engine.timeutil import TOKYO, to_us

NOW = dt.datetime(2026, 12, 1, 10, tzinfo=TOKYO)
DAY = dt.timedelta(days=1)


def _campaign(campaign_id: str, starts: dt.datetime, ends: dt.datetime) -> Campaign:
    return Campaign.model_validate(
        {
            "id": campaign_id,
            "name": campaign_id,
            "starts_at": starts.isoformat(),
            "ends_at": ends.isoformat(),
            "tiers": [{"match": {}, "rate_bp": 100}],
        }
    )


def _refused(action) -> EngineError:
    with pytest.raises(EngineError) as caught:
        action()
    assert (caught.value.code, caught.value.status) == ("too_many_active_campaigns", 422)
    return caught.value


@pytest.fixture
def config(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    clock = ManualClock(to_us(NOW))
    try:
        yield Config(engine, clock=clock)
    finally:
        engine.dispose()


def test_the_limit_counts_running_and_scheduled_campaigns_not_ended_ones(config: Config) -> None:
    assert limits.CAMPAIGNS_ACTIVE_MAX == 64
    # Ended campaigns (a past programme kept on record) never count.
    for i in range(3):
        config.create_campaign(_campaign(f"C_PAST_{i}", NOW - 60 * DAY, NOW - 30 * DAY))
    half = limits.CAMPAIGNS_ACTIVE_MAX // 2
    for i in range(half):
        config.create_campaign(_campaign(f"C_RUN_{i:02d}", NOW - DAY, NOW + 30 * DAY))
    for i in range(limits.CAMPAIGNS_ACTIVE_MAX - half - 1):
        config.create_campaign(_campaign(f"C_LATER_{i:02d}", NOW + 10 * DAY, NOW + 40 * DAY))
    config.create_campaign(_campaign("C_SOON_OVER", NOW - DAY, NOW + DAY))  # the 64th: at the limit

    error = _refused(lambda: config.create_campaign(_campaign("C_ONE_TOO_MANY", NOW + DAY, NOW + 2 * DAY)))
    assert "64" in error.detail
    assert len(config.list_campaigns()) == 3 + limits.CAMPAIGNS_ACTIVE_MAX  # nothing written
    # A campaign that is over already is history, not one more active campaign.
    config.create_campaign(_campaign("C_PAST_LATE_ENTRY", NOW - 20 * DAY, NOW - 10 * DAY))
    # Changes to active campaigns go on as before (a version, a higher budget, an earlier end).
    config.update_campaign("C_RUN_00", {"budget": 5000})
    config.update_campaign("C_LATER_00", {"name": "renamed", "ends_at": (NOW + 50 * DAY).isoformat()})
    # An ended campaign may not run again while the limit is reached.
    _refused(lambda: config.update_campaign("C_PAST_0", {"ends_at": (NOW + 5 * DAY).isoformat()}))

    # Once C_SOON_OVER has ended there is room for one, whichever way it comes.
    config.clock.set(to_us(NOW + DAY))
    config.update_campaign("C_PAST_0", {"ends_at": (NOW + 5 * DAY).isoformat()})
    _refused(lambda: config.create_campaign(_campaign("C_ONE_TOO_MANY", NOW + 2 * DAY, NOW + 3 * DAY)))


def test_the_api_answers_422_too_many_active_campaigns(sqlite_url) -> None:
    # 65 POSTs in a row: no per-key rate limit, or a fast machine gets a 429 within one second.
    app = create_app(Settings(database_url=sqlite_url, rate_limit_per_key="off"), clock=ManualClock(to_us(NOW)))
    with TestClient(app) as client:
        admin = {"Authorization": f"Bearer {app.state.config.create_key('admin')}"}
        for i in range(limits.CAMPAIGNS_ACTIVE_MAX):
            body = _campaign(f"C{i:02d}", NOW, NOW + 30 * DAY).model_dump(mode="json", exclude={"version"})
            assert client.post("/v1/campaigns", json=body, headers=admin).status_code == 201
        body = _campaign("C_EXTRA", NOW, NOW + 30 * DAY).model_dump(mode="json", exclude={"version"})
        answer = client.post("/v1/campaigns", json=body, headers=admin)
        assert answer.status_code == 422
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "too_many_active_campaigns"
        for method in ("post", "patch"):
            path = "/v1/campaigns" if method == "post" else "/v1/campaigns/{campaign_id}"
            documented = app.openapi()["paths"][path][method]["responses"]["422"]["content"]
            assert "too_many_active_campaigns" in documented["application/problem+json"]["examples"]
    app.state.engine.dispose()
