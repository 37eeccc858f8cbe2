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


@pytest.fixture
def early(database_url):
    """A ward whose clock starts when the program did, its configuration entered as of then (the
    history import's procedure, docs/IMPORT.md)."""
    w = Ward(database_url, start="2026-11-10T00:00")
    try:
        yield w
    finally:
        w.close()
