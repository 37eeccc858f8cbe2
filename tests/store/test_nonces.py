"""Signature nonces (SPEC §9.2): single use for 600 s per terminal, in the database or in Redis."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from engine.errors import EngineError
from engine.store import db
from engine.store.models import SignatureNonceRow
from engine.store.nonces import DatabaseNonces, RedisNonces
from engine.store.redis_loop import POOL_CONNECTIONS_MAX

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
    assert nonces.pruning is not None
    nonces.pruning.join(10)
    with engine.connect() as c:
        assert c.execute(SignatureNonceRow.__table__.select()).fetchall() == [("T1", "later-000000000", T0 + 1300 * S)]
    nonces.claim_now("T1", "later-000000001", T0 + 2000 * S)  # within a minute of the last prune? no: prunes
    nonces.pruning.join(10)
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


def test_claims_in_one_batch_answer_each_as_if_one_after_the_other(database_url):
    """One statement for many claims: a nonce twice in it is one use and one replay, a live use is a
    replay, an expired one is taken over by the claim's own instant, terminals apart."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    nonces = DatabaseNonces(engine)
    assert nonces.claim_now("T1", "live-00000000000", T0)
    assert nonces.claim_now("T1", "old-000000000000", T0)
    answers = nonces.claim_many(
        [
            ("T1", "twice-0000000000", T0 + 1),
            ("T1", "live-00000000000", T0 + 599 * S),  # still live at its instant
            ("T2", "twice-0000000000", T0 + 1),  # another terminal's nonce
            ("T1", "twice-0000000000", T0 + 2),  # the batch's second claim of one nonce
            ("T1", "old-000000000000", T0 + 600 * S),  # expired at its instant: taken over
        ]
    )
    assert answers == [True, False, True, False, True]
    assert nonces.claim_many([("T1", "old-000000000000", T0 + 601 * S)]) == [False]  # taken over: live again
    engine.dispose()


def test_concurrent_requests_claims_are_gathered_and_each_nonce_is_used_once(database_url):
    """The API's path (`claim`): 200 requests at once, 100 nonces each sent twice; every nonce is
    accepted exactly once, and the claims went in fewer commits than requests."""
    db.upgrade(database_url)
    engine = db.make_engine(database_url)
    nonces = DatabaseNonces(engine)
    batches: list[int] = []
    claim_many = nonces.claim_many

    def counted(claims):
        batches.append(len(claims))
        return claim_many(claims)

    nonces.claim_many = counted  # type: ignore[method-assign]

    async def storm() -> list[bool]:
        return await asyncio.gather(*(nonces.claim("T1", f"storm-{i % 100:010d}", T0) for i in range(200)))

    won = asyncio.run(storm())
    assert sum(won) == 100
    assert all(won[i] != won[i + 100] for i in range(100))  # one of each pair
    assert sum(batches) == 200 and len(batches) < 200
    engine.dispose()


def test_a_batch_that_cannot_be_claimed_refuses_every_request(tmp_path):
    """A database without the nonce table (or away): each request of the batch is refused, 503."""
    engine = db.make_engine(f"sqlite+pysqlite:///{tmp_path}/empty.db")
    nonces = DatabaseNonces(engine)

    async def two() -> list[object]:
        return await asyncio.gather(
            nonces.claim("T1", "a" * 16, T0), nonces.claim("T1", "b" * 16, T0), return_exceptions=True
        )

    refused = asyncio.run(two())
    assert all(isinstance(r, EngineError) and r.code == "service_unavailable" for r in refused)
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


def test_a_rush_of_claims_on_one_event_loop_waits_for_connections(redis_url):
    """400 claims at once on one event loop (a rush of signed requests): each is answered, the pool
    holding at most `POOL_CONNECTIONS_MAX` connections while the others wait for one. (redis-py's
    default pool raised `MaxConnectionsError` past 100 in use: 503s for valid signatures.)"""
    nonces = RedisNonces(redis_url)

    async def rush() -> tuple[list[bool], int]:
        claimed = await asyncio.gather(*(nonces.claim("T1", f"nonce-{n:04d}-rush", T0) for n in range(400)))
        pool = nonces.client.connection_pool
        opened = len(pool._available_connections) + len(pool._in_use_connections)
        await nonces.client.aclose()
        return list(claimed), opened

    claimed, opened = asyncio.run(rush())
    assert claimed == [True] * 400
    assert opened <= POOL_CONNECTIONS_MAX
