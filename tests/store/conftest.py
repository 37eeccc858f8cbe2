"""Fixtures shared by the group committer's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.lifecycle.support import Books
from tests.store.test_pipeline import setup


@pytest.fixture
def two(postgres_url, other_postgres_url) -> Iterator[tuple[Books, Books]]:
    """Two ledgers set up alike: one for the committer deciding ahead, one under the lock."""
    ahead, locked = setup(postgres_url), setup(other_postgres_url)
    try:
        yield ahead, locked
    finally:
        ahead.close()
        locked.close()
