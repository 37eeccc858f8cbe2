"""Signature nonces (SPEC §9.2): single use for 600 s per terminal, in the database or in Redis."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.errors import EngineError
from engine.store import db
from engine.store.models import SignatureNonceRow
from engine.store.nonces import DatabaseNonces, RedisNonces

S = 1_000_000
T0 = 1_800_000_000 * S


def test_database_nonces_are_single_use_until_they_expire(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    nonces = DatabaseNonces(engine)
    assert nonces.claim_now("T1", "n" * 16, T0)
    assert not nonces.claim_now("T1", "n" * 16, T0 + 1)
    assert nonces.claim_now("T2", "n" * 16, T0 + 2)  # per terminal
    assert not nonces.claim_now("T1", "n" * 16, T0 + 599 * S)
    assert nonces.claim_now("T1", "n" * 16, T0 + 600 * S)  # expired, not pruned yet: taken over
    assert not nonces.claim_now("T1", "n" * 16, T0 + 601 * S)
    assert asyncio.run(nonces.claim("T1", "m" * 16, T0)) is True
    assert asyncio.run(nonces.claim("T1", "m" * 16, T0)) is False
    engine.dispose()


def test_expired_nonces_are_pruned_at_most_once_a_minute(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    nonces = DatabaseNonces(engine)
    for i in range(5):
        nonces.claim_now("T1", f"nonce-{i:010d}", T0)
    assert nonces.prune(T0 + 599 * S) == 0
    nonces.claim_now("T1", "later-000000000", T0 + 700 * S)  # prunes the five on the way
    with engine.connect() as c:
        assert c.execute(SignatureNonceRow.__table__.select()).fetchall() == [("T1", "later-000000000", T0 + 1300 * S)]
    nonces.claim_now("T1", "later-000000001", T0 + 2000 * S)  # within a minute of the last prune? no: prunes
    nonces.claim_now("T1", "later-000000002", T0 + 2001 * S)  # within a minute: does not
    with engine.connect() as c:
        assert len(c.execute(SignatureNonceRow.__table__.select()).fetchall()) == 2
    engine.dispose()


def test_one_nonce_claimed_at_once_from_many_threads_wins_once(database_url):
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    nonces = DatabaseNonces(engine)
    with ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda _: nonces.claim_now("T1", "r" * 20, T0), range(16)))
    assert won.count(True) == 1
    engine.dispose()


def test_redis_nonces(redis_url):
    import redis

    nonces = RedisNonces(redis_url)

    async def run():
        return [
            await nonces.claim("T1", "n" * 16, T0),
            await nonces.claim("T1", "n" * 16, T0),
            await nonces.claim("T2", "n" * 16, T0),
        ]

    assert asyncio.run(run()) == [True, False, True]
    client = redis.Redis.from_url(redis_url)
    assert 595 <= client.ttl(RedisNonces.key("T1", "n" * 16)) <= 600
    client.close()


def test_an_unreachable_redis_refuses_rather_than_lets_a_replay_through():
    nonces = RedisNonces("redis://127.0.0.1:1/0")
    with pytest.raises(EngineError) as caught:
        asyncio.run(nonces.claim("T1", "n" * 16, T0))
    assert caught.value.status == 503 and caught.value.code == "service_unavailable"
