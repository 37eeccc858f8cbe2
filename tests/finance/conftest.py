"""Fixtures of the ward finance tests: a `Ward` on each backend (see support.py)."""

from __future__ import annotations

import pytest

from tests.finance.support import Ward


@pytest.fixture
def ward(database_url):
    w = Ward(database_url)
    try:
        yield w
    finally:
        w.close()
