"""The database itself refuses a campaign meter above the campaign's current budget."""

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from engine.model import Campaign
from engine.store import db
from engine.store.config import Config


def _campaign(budget):
    return Campaign.model_validate(
        dict(
            id="C1",
            name="c",
            starts_at="2030-01-01T00:00:00+09:00",
            ends_at="2030-02-01T00:00:00+09:00",
            tiers=[{"match": {}, "rate_bp": 1000}],
            budget=budget,
        )
    )


def _set_meter(engine, points: int) -> None:
    with engine.begin() as connection:
        connection.execute(text("UPDATE campaign SET issued_net = :p WHERE id = 'C1'"), {"p": points})


def test_meter_above_budget_is_refused_by_the_database(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    config = Config(engine)
    config.create_campaign(_campaign(100))
    _set_meter(engine, 100)  # exactly the budget: allowed
    with pytest.raises(IntegrityError):
        _set_meter(engine, 101)
    # Raising the budget (a new version) moves the limit the database enforces.
    config.update_campaign("C1", {"budget": 200})
    _set_meter(engine, 200)
    with pytest.raises(IntegrityError):
        _set_meter(engine, 201)
    # No budget: no limit.
    config.update_campaign("C1", {"budget": None})
    _set_meter(engine, 10_000)
    engine.dispose()
