"""engine/store/caches.py: the API's per-process look-up caches are refreshed ahead of their TTL, in
batches, without ever serving a look-up older than the TTL; and, over the real stores on both
databases, what the refresher brings back (a revoked key, a moved terminal, a new signing key)
is what the requests then see, with no look-up of their own."""

from __future__ import annotations

import asyncio
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import event, text

from api.auth import Auth
from api.signatures import TerminalSignatures
from engine import http_signing, receipts, sealing
from engine.clock import SystemClock
from engine.errors import EngineError
from engine.model import Merchant
from engine.settings import Settings
from engine.store import caches, db
from engine.store.apps import FAILED_READ_HOLD_S, ROTATION_GRACE_US, Apps
from engine.store.caches import RefreshingCache
from engine.store.config import Config
from engine.store.keys import Keys, hash_key
from engine.store.nonces import DatabaseNonces

TTL_S = 2.0


class _Now:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Source:
    """What the cache looks up: a dict, with every call recorded."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values
        self.calls: list[list[str]] = []
        self.during = None  # run inside the next look-up (a request acting meanwhile)
        self.fail = False

    def __call__(self, keys):
        self.calls.append(list(keys))
        if self.during is not None:
            during, self.during = self.during, None
            during()
        if self.fail:
            raise ConnectionError("the database went away")
        return {k: self.values[k] for k in keys if k in self.values}


def _raw(apps: Apps, app_id: str) -> list[bytes]:
    """The raw secrets `apps` lets a receipt of `app_id` be checked against now."""
    return [raw for raw, _ in apps.live_secrets(app_id)]


def _cache(source: _Source, now: _Now) -> RefreshingCache[str, int]:
    return RefreshingCache(TTL_S, source, size_max=5_000, name="test", clock=now)


def _used(values: dict[str, int]) -> tuple[_Now, _Source, RefreshingCache[str, int]]:
    """A cache holding `values`, each read once since its look-up, half the TTL old; its
    thread stopped (refresh() is called by hand)."""
    now, source = _Now(), _Source(dict(values))
    cache = _cache(source, now)
    for key, value in values.items():
        cache.put(key, value)
    cache.close()
    for key in values:
        cache.get(key)
    now.t += TTL_S / 2
    return now, source, cache


def test_used_entries_are_looked_up_again_at_half_the_ttl_in_one_batch() -> None:
    now, source = _Now(), _Source({"a": 1, "b": 2, "c": 3})
    cache = _cache(source, now)
    for key in ("a", "b", "c"):
        cache.put(key, source.values[key])
    cache.close()  # the thread is not needed here: refresh() is called by hand
    assert cache.get("a") == (1, True) and cache.get("b") == (2, True)  # c is never read
    now.t += TTL_S / 2 - 0.01
    assert cache.refresh() == 0 and source.calls == []
    now.t += 0.01
    source.values.update(a=10, b=20)
    assert cache.refresh() == 2
    assert source.calls == [["a", "b"]]  # one look-up for both, c (unused) left alone
    now.t += TTL_S - 0.01  # fresh a whole TTL after the refresh's look-up began
    assert cache.get("a") == (10, True) and cache.get("b") == (20, True)
    assert cache.get("c") == (3, False)  # stale: looked up by the next request, not ahead
    now.t += 0.01
    assert cache.get("a") == (10, False)


def test_a_key_the_look_up_no_longer_finds_is_dropped() -> None:
    _, source, cache = _used({"a": 1, "b": 2})
    del source.values["a"]  # revoked, or its row deleted, by another process
    cache.refresh()
    assert cache.get("a") is None and cache.get("b") == (2, True)


def test_what_a_request_did_during_the_look_up_stands() -> None:
    _, source, cache = _used({"a": 1, "b": 2})

    def meanwhile() -> None:
        cache.drop("a")  # revoked through this process while the look-up ran
        cache.put("b", 99)  # looked up again by a request

    source.during = meanwhile
    cache.refresh()
    assert cache.get("a") is None  # not brought back by a look-up that began before the revocation
    assert cache.get("b") == (99, True)


def test_an_entry_is_as_old_as_the_start_of_the_look_up_that_brought_it() -> None:
    now, source, cache = _used({"a": 1})
    started = now.t

    def slow() -> None:
        now.t += 0.5  # the query takes half a second

    source.during = slow
    cache.refresh()
    now.t = started + TTL_S - 0.01
    assert cache.get("a") == (1, True)
    now.t = started + TTL_S
    assert cache.get("a") == (1, False)
    # A request's own look-up likewise, stamped before it began.
    stamp = cache.stamp()
    now.t += 0.5
    cache.put("a", 2, stamp)
    now.t = stamp.at + TTL_S
    assert cache.get("a") == (2, False)


def test_a_request_look_up_that_began_before_a_drop_is_not_cached() -> None:
    now, source, cache = _used({"a": 1, "b": 2})
    before = cache.stamp()
    cache.drop("a")  # key "a" revoked (or its signing key changed) through this process
    cache.put("a", 1, before)  # a request's look-up of "a" that read the row before the change
    assert cache.get("a") is None
    cache.put("b", 3, before)  # any look-up that began before a drop: the drop may concern it
    assert cache.get("b") == (2, True)
    after = cache.stamp()
    cache.discard("zzz")  # an unknown key's look-up found nothing: nothing else is stale
    cache.put("a", 4, after)
    assert cache.get("a") == (4, True)


def test_a_failed_refresh_leaves_its_entries_to_go_stale_and_is_not_retried_until_used() -> None:
    now, source, cache = _used({"a": 1})
    source.fail = True
    assert cache.refresh() == 0 and len(source.calls) == 1
    source.fail = False
    assert cache.refresh() == 0 and len(source.calls) == 1  # not tried again: nobody used it since
    now.t += TTL_S / 2 - 0.01
    assert cache.get("a") == (1, True)  # still within the TTL of its last look-up
    now.t += 0.01
    assert cache.get("a") == (1, False)  # never served as fresh past it
    assert cache.refresh() == 1  # used again by the gets above: tried again, and fresh
    assert cache.get("a") == (1, True) and len(source.calls) == 2


def test_many_due_entries_are_looked_up_in_batches() -> None:
    _, source, cache = _used({f"k{i}": i for i in range(1_200)})
    assert cache.refresh() == 1_200
    assert [len(c) for c in source.calls] == [caches.REFRESH_BATCH, caches.REFRESH_BATCH, 200]


# -- over the real stores ------------------------------------------------------------------


@pytest.fixture
def ward(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    config = Config(engine)
    for m in ("M1", "M2"):
        config.create_merchant(Merchant(id=m, name=m, merchant_class="small"))
    for t in ("T1", "T2"):
        config.create_terminal(t, "M1")
    yield engine, config, Keys(engine, SystemClock())
    engine.dispose()


def _auth(engine, keys: Keys, config: Config, url: str, ttl_s: float = TTL_S) -> Auth:
    settings = Settings(database_url=url, key_cache_ttl_s=ttl_s, rate_limit_per_key="off")
    signatures = TerminalSignatures(config, DatabaseNonces(engine), SystemClock(), key_cache_s=ttl_s)
    return Auth(keys, settings, SystemClock(), signatures)


def test_the_refresher_brings_back_revocations_and_moved_terminals(ward, database_url) -> None:
    engine, config, keys = ward
    ttl_s = 5.0  # the longest allowed: "within the TTL" below holds on a slow machine too
    auth = _auth(engine, keys, config, database_url, ttl_s)
    try:
        auth.cache.close()  # refreshed by hand below, at once instead of at half the TTL
        one, _ = keys.create("terminal", terminal_id="T1")
        two, record_two = keys.create("terminal", terminal_id="T2")
        assert asyncio.run(auth.authenticate(one, "10.0.0.1")).merchant_id == "M1"
        assert asyncio.run(auth.authenticate(two, "10.0.0.1")).terminal_id == "T2"
        # Another process revokes one key and moves a terminal; this one has not been told.
        keys.revoke(record_two["id"])
        config.update_terminal("T1", {"merchant_id": "M2"})
        assert asyncio.run(auth.authenticate(two, "10.0.0.1")).terminal_id == "T2"  # within the TTL
        assert asyncio.run(auth.authenticate(one, "10.0.0.1")).merchant_id == "M1"  # used since its look-up
        for digest in (hash_key(one), hash_key(two)):
            entry = auth.cache._entries[digest]
            entry.loaded_at -= ttl_s / 2  # half the TTL old, as the refresher finds it
        assert auth.cache.refresh() == 2
        assert asyncio.run(auth.authenticate(one, "10.0.0.1")).merchant_id == "M2"
        with pytest.raises(EngineError) as refused:
            asyncio.run(auth.authenticate(two, "10.0.0.1"))
        assert refused.value.code == "unauthenticated"
    finally:
        auth.close()


def test_busy_keys_stay_fresh_without_a_look_up_of_their_own(ward, database_url) -> None:
    """The refresher's thread, as a server runs it: a key and a terminal key used every 50 ms for
    more than two TTLs are found fresh on every use, and a new signing key registered by another
    process reaches the requests within the TTL."""
    engine, config, keys = ward
    auth = _auth(engine, keys, config, database_url)
    signatures = auth.signatures
    assert signatures is not None
    try:
        secret, _ = keys.create("terminal", terminal_id="T1")
        asyncio.run(auth.authenticate(secret, "10.0.0.1"))
        assert asyncio.run(signatures.public_key("T1")) is None  # bearer-only so far
        private = Ed25519PrivateKey.generate()
        registered_at = seen_after = None
        stale = []
        started = time.monotonic()
        while time.monotonic() - started < 2.25 * TTL_S:
            cached = auth.cache.get(hash_key(secret))
            terminal = signatures._keys.get("T1")
            assert cached is not None and terminal is not None
            if not (cached[1] and terminal[1]):
                stale.append(round(time.monotonic() - started, 2))
            if registered_at is None and time.monotonic() - started > TTL_S / 4:
                config.update_terminal("T1", {"public_key": http_signing.public_key_b64(private)})
                registered_at = time.monotonic()
            if terminal[0] is not None and registered_at is not None and seen_after is None:
                seen_after = time.monotonic() - registered_at
            time.sleep(0.05)
        assert stale == []
        assert seen_after is not None and seen_after < TTL_S  # the new key, found by the refresher
    finally:
        auth.close()


def test_a_terminal_keys_first_look_up_brings_its_signing_key(ward, database_url) -> None:
    """A terminal key's first request reads the key and its terminal's signing key in one query:
    the signature check that follows finds the signing key (or that the terminal is bearer-only)
    cached, fresh, and reads nothing. Other roles bring no terminal's key."""
    engine, config, keys = ward
    auth = _auth(engine, keys, config, database_url)
    signatures = auth.signatures
    assert signatures is not None
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))
    reads = lambda: [s for s in statements if s.lstrip().upper().startswith("SELECT")]  # noqa: E731
    try:
        private = Ed25519PrivateKey.generate()
        config.update_terminal("T1", {"public_key": http_signing.public_key_b64(private)})
        signed, _ = keys.create("terminal", terminal_id="T1")
        bearer, _ = keys.create("terminal", terminal_id="T2")
        admin, _ = keys.create("admin")
        statements.clear()
        assert asyncio.run(auth.authenticate(signed, "10.0.0.1")).terminal_id == "T1"
        assert asyncio.run(auth.authenticate(bearer, "10.0.0.1")).terminal_id == "T2"
        assert asyncio.run(auth.authenticate(admin, "10.0.0.1")).role == "admin"
        assert len(reads()) == 3  # one read a key
        t1, t2 = signatures._keys.get("T1"), signatures._keys.get("T2")
        assert t1 is not None and t1[1] and t2 == (None, True)
        assert t1[0].public_bytes_raw() == private.public_key().public_bytes_raw()
        assert asyncio.run(signatures.public_key("T1")).public_bytes_raw() == private.public_key().public_bytes_raw()
        assert asyncio.run(signatures.public_key("T2")) is None
        assert len(reads()) == 3  # the signature checks read nothing
        # A key of another role naming a terminal (no API makes one) brings nothing for it.
        other, record = keys.create("finance")
        with engine.begin() as c:
            c.execute(text("UPDATE api_key SET terminal_id = 'T3' WHERE id = :id"), {"id": record["id"]})
        assert asyncio.run(auth.authenticate(other, "10.0.0.1")).role == "finance"
        assert signatures._keys.get("T3") is None
    finally:
        auth.close()


def _apps(engine, ttl_s: float) -> Apps:
    settings = Settings(data_key_b64=_DATA_KEY)
    return Apps(engine, settings, SystemClock(), cache_ttl_s=ttl_s)


_DATA_KEY = sealing.generate_key_b64()


def test_receipt_secrets_change_here_at_once_and_elsewhere_through_the_refresher(ward, database_url) -> None:
    """The payment apps' secrets: an app added, rotated or revoked through this process is seen
    here at once; one revoked through another process is found by the refresher within the TTL,
    while a request using the secrets never reads them itself."""
    engine, _, _ = ward
    ttl_s = 0.8
    here, elsewhere = _apps(engine, ttl_s), _apps(engine, ttl_s)
    try:
        assert _raw(here, "app-a") == []
        first = receipts.decode_secret(here.add("app-a"))
        assert _raw(here, "app-a") == [first]  # added here: not hidden by the cached absence
        rotated_at = here.clock.now_us()
        second = receipts.decode_secret(here.rotate("app-a"))
        assert sorted(_raw(here, "app-a")) == sorted([first, second])
        # The rotated-out secret comes with its end, which its receipts carry to the ledger.
        ends = dict(here.live_secrets("app-a"))
        assert ends[second] is None and ends[first] is not None
        assert ends[first] - rotated_at - ROTATION_GRACE_US in range(0, 5_000_000)
        here.revoke("app-a")
        assert _raw(here, "app-a") == []  # revoked here: refused at once
        third = receipts.decode_secret(elsewhere.add("app-b"))
        started = time.monotonic()
        while _raw(here, "app-b") != [third]:  # another process's new app: within the TTL
            assert time.monotonic() - started < 2 * ttl_s
            time.sleep(0.02)
        elsewhere.revoke("app-b")
        started, fresh_throughout, gone_after = time.monotonic(), True, None
        while time.monotonic() - started < 2.5 * ttl_s:
            fresh_throughout &= here.current() is not None  # what a request checks before using them
            if gone_after is None and _raw(here, "app-b") == []:
                gone_after = time.monotonic() - started
            time.sleep(0.02)
        assert fresh_throughout  # kept fresh by the cache's thread: no request had to read them
        assert gone_after is not None and gone_after < ttl_s  # the revocation elsewhere, found in time
    finally:
        here.close()
        elsewhere.close()


def test_a_request_reads_the_secrets_itself_when_the_cache_is_stale(ward, database_url) -> None:
    """Without the refresher (a refresh that failed, or nobody used them), the secrets go stale
    after the TTL and the next use reads them again: never served past the TTL."""
    engine, _, _ = ward
    ttl_s = 1.5  # the checks "within the TTL" below hold on a slow machine too
    here, elsewhere = _apps(engine, ttl_s), _apps(engine, ttl_s)
    try:
        secret = receipts.decode_secret(elsewhere.add("app-c"))
        assert _raw(here, "app-c") == [secret]
        here._cache.close()  # no refreshes from here on
        elsewhere.revoke("app-c")
        assert (here.current() is not None) and _raw(here, "app-c") == [secret]  # within the TTL
        time.sleep(ttl_s + 0.05)
        assert not (here.current() is not None)
        assert _raw(here, "app-c") == []  # read again by the request
        assert here.current() is not None
    finally:
        here.close()
        elsewhere.close()


def test_a_failed_read_answers_the_requests_behind_it_at_once(tmp_path) -> None:
    """The database away (here a file without the tables): the read fails as the database's error
    (503), and for `FAILED_READ_HOLD_S` the requests queued behind it are refused 503 without a
    query of their own, instead of each waiting out its own attempt; then a read is tried again."""
    engine = db.make_engine(f"sqlite+pysqlite:///{tmp_path}/empty.db")
    apps = _apps(engine, 2.0)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, statement, *_: statements.append(statement))
    try:
        with pytest.raises(db.UNREACHABLE):
            apps.load()
        tried = len(statements)
        assert tried >= 1
        with pytest.raises(EngineError) as refused:
            apps.load()
        assert refused.value.code == "service_unavailable" and len(statements) == tried
        time.sleep(FAILED_READ_HOLD_S + 0.05)
        with pytest.raises(db.UNREACHABLE):
            apps.load()
        assert len(statements) > tried
    finally:
        apps.close()
        engine.dispose()
