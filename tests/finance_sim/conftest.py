"""Fixtures of the simulation and re-rate tests: a `Ward` (tests/finance/support.py) on each backend."""

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
