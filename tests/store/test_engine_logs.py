"""A statement that fails is raised and logged without its parameters: they may be a sealed bank
account, a key's hash or a stored request (helper-77 found a failed statement's values in the
server's log, with SQLAlchemy's `[parameters: ...]`)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from engine.store import db

SECRET = "0159-101-7654321-sealed-blob"


def test_a_failed_statement_names_no_parameter(database_url, caplog) -> None:
    engine = db.make_engine(database_url)
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(DBAPIError) as raised, engine.connect() as c:
            c.execute(text("SELECT * FROM no_such_table WHERE secret = :s"), {"s": SECRET})
        assert "no_such_table" in str(raised.value)  # the statement is named, its values are not
        assert SECRET not in str(raised.value)
        assert SECRET not in caplog.text
    finally:
        engine.dispose()
