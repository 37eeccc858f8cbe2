"""engine/store/keys.py on SQLite and PostgreSQL: the terminal's current merchant, revocation,
expiry as data, `last_used_at_us` at most once a minute, and the migration both ways."""

from __future__ import annotations

import concurrent.futures

import pytest
from sqlalchemy import select

from engine.audit import Actor
from engine.clock import ManualClock
from engine.errors import EngineError
from engine.model import Merchant
from engine.store import audit, db
from engine.store.config import Config
from engine.store.keys import DAY_US, Keys, hash_key
from engine.store.models import ApiKeyRow

START_US = 1_796_000_000_000_000
MINUTE_US = 60_000_000


@pytest.fixture
def store(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    clock = ManualClock(START_US)
    config = Config(engine, clock=clock)
    for m in ("M1", "M2"):
        config.create_merchant(Merchant(id=m, name=m, merchant_class="small"))
    config.create_terminal("T1", "M1")
    yield Keys(engine, clock), config, clock
    engine.dispose()


def test_a_terminal_key_follows_its_terminal_to_another_merchant(store) -> None:
    keys, config, _ = store
    secret, record = keys.create("terminal", terminal_id="T1")
    assert record["merchant_id"] == "M1"
    assert keys.lookup(hash_key(secret)).principal.merchant_id == "M1"
    config.update_terminal("T1", {"merchant_id": "M2"})
    found = keys.lookup(hash_key(secret))
    assert (found.principal.role, found.principal.terminal_id, found.principal.merchant_id) == ("terminal", "T1", "M2")
    assert next(k for k in keys.list() if k["id"] == record["id"])["merchant_id"] == "M2"
    assert config.authenticate(secret).merchant_id == "M2"


def test_revoke_is_idempotent_and_unknown_is_404(store) -> None:
    keys, config, clock = store
    secret, record = keys.create("finance")
    first = keys.revoke(record["id"], actor=Actor("k_admin", "admin"))
    clock.set(START_US + DAY_US)
    assert keys.revoke(record["id"])["revoked_at"] == first["revoked_at"] is not None
    assert keys.lookup(hash_key(secret)) is None and config.authenticate(secret) is None
    with pytest.raises(EngineError) as raised:
        keys.revoke("0123456789abcdef")
    assert raised.value.status == 404
    # One audit entry, by the revoking key, of the key's listing before (not revoked) and after.
    page, _ = audit.entries(keys.engine, target=f"key:{record['id']}")
    revocations = [e for e in page if e["action"] == "key.revoke"]
    assert len(revocations) == 1 and revocations[0]["actor"] == {"key_id": "k_admin", "role": "admin"}
    assert revocations[0]["after"] == first
    assert revocations[0]["before"] == {**first, "revoked_at": None}


def test_expiry_is_stored_and_checked_by_authenticate(store) -> None:
    keys, config, clock = store
    secret, _ = keys.create("merchant", merchant_id="M1", expires_in_days=2)
    found = keys.lookup(hash_key(secret))
    assert found.expires_at_us is not None
    # The principal carries it too: a terminal's requests take it to the ledger, checked when posted.
    assert found.principal.expires_at_us == found.expires_at_us
    assert config.authenticate(secret).merchant_id == "M1"
    clock.set(START_US + 2 * DAY_US + 1_000_000)
    assert config.authenticate(secret) is None
    for bad in (0, -1, 3651):
        with pytest.raises(EngineError):
            keys.create("admin", expires_in_days=bad)
    with pytest.raises(EngineError):
        keys.create("superuser")


def test_last_used_is_rewritten_at_most_once_a_minute(store) -> None:
    keys, _, _ = store
    _, record = keys.create("finance")

    def last_used() -> int | None:
        with keys.engine.connect() as c:
            return c.execute(select(ApiKeyRow.last_used_at_us).where(ApiKeyRow.id == record["id"])).scalar_one()

    keys.touch({record["id"]: START_US})
    assert last_used() == START_US
    keys.touch({record["id"]: START_US + MINUTE_US - 1})  # another process, 59.99 s later
    assert last_used() == START_US
    keys.touch({record["id"]: START_US + MINUTE_US})
    assert last_used() == START_US + MINUTE_US
    keys.touch({"no-such-key": START_US})  # a deleted key: nothing to write, no error


def test_one_touch_writes_each_key_by_its_own_instant(store) -> None:
    """Several keys in one `touch` (one statement, many parameter sets): each row is held to its
    own instant and its own last write; a key unknown among them changes nothing."""
    keys, _, _ = store
    ids = [keys.create("finance")[1]["id"] for _ in range(3)]
    keys.touch({ids[0]: START_US, ids[1]: START_US})

    def last_used() -> list[int | None]:
        with keys.engine.connect() as c:
            found = dict(c.execute(select(ApiKeyRow.id, ApiKeyRow.last_used_at_us).where(ApiKeyRow.id.in_(ids))).all())
        return [found[i] for i in ids]

    assert last_used() == [START_US, START_US, None]
    keys.touch(
        {
            ids[0]: START_US + MINUTE_US - 1,  # too soon after its last write: kept
            ids[1]: START_US + MINUTE_US,  # a minute on: rewritten
            "no-such-key": START_US + MINUTE_US,
            ids[2]: START_US + 5,  # never written: written
        }
    )
    assert last_used() == [START_US, START_US + MINUTE_US, START_US + 5]


def test_look_ups_do_not_wait_for_the_ledgers_writer_on_sqlite(store) -> None:
    """A request's key and signing-key look-ups read a snapshot (SQLite: a DEFERRED transaction,
    `db.reader`): with another connection holding the write lock, as the group committer does
    while it writes, they answer at once instead of waiting on SQLite's 30 s busy timeout."""
    keys, config, _ = store
    if not db.is_sqlite(keys.engine):
        pytest.skip("PostgreSQL's reads never wait for a writer")
    secret, record = keys.create("terminal", terminal_id="T1")
    with keys.engine.connect() as writer:
        writer.exec_driver_sql("SELECT 1")  # BEGIN IMMEDIATE (`db.make_engine`): the write lock held
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            found = pool.submit(keys.lookup, hash_key(secret)).result(timeout=5)
            signing = pool.submit(config.terminal_public_keys, ["T1"]).result(timeout=5)
        writer.rollback()
    assert found is not None and found.principal.key_id == record["id"]
    assert signing == {"T1": None}


def test_migration_down_and_up_keeps_keys(database_url) -> None:
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    try:
        secret, _ = Keys(engine).create("admin", expires_in_days=5)
        engine.dispose()
        db.downgrade(database_url, "20261129_budget_check")
        db.upgrade(database_url)
        found = Keys(engine).lookup(hash_key(secret))
        assert found is not None and found.principal.role == "admin" and found.expires_at_us is None
    finally:
        engine.dispose()
