"""The in-memory rate-limit counts (`api.auth.SweptMemoryStorage`): `limits`' fixed windows, with
expired keys swept on the counting thread instead of by a timer thread started every 10 ms."""

from __future__ import annotations

import threading
import time

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from api import auth


def test_the_library_still_has_the_hook_it_replaces() -> None:
    """The class replaces `MemoryStorage.__schedule_expiry` by its mangled name: should a release
    of `limits` rename it, the override would silently stop working (each count would start timer
    threads again)."""
    assert callable(getattr(MemoryStorage, "_MemoryStorage__schedule_expiry", None))
    assert "_MemoryStorage__schedule_expiry" in vars(auth.SweptMemoryStorage)


def _timers_started(storage: MemoryStorage, counts: int) -> int:
    """How many timer threads of `storage` came alive around `counts` counts 15 ms apart (after the
    one the library's constructor starts has ended)."""
    limiter = FixedWindowRateLimiter(storage)
    item = parse("1000/second")

    def timers() -> set[threading.Thread]:  # the threads themselves: an id could be reused
        return {
            thread
            for thread in threading.enumerate()
            if isinstance(thread, threading.Timer) and getattr(thread.function, "__self__", None) is storage
        }

    time.sleep(0.05)
    before = timers()
    seen: set[threading.Thread] = set()
    for i in range(counts):
        limiter.hit(item, "test", f"key-{i % 3}")
        seen |= timers()
        time.sleep(0.015)
    return len(seen - before)


def test_counting_starts_no_thread() -> None:
    assert _timers_started(auth.SweptMemoryStorage(), 8) == 0
    # The library's own storage starts them (what the class is for): the check can fail.
    assert _timers_started(MemoryStorage(), 8) >= 2


def test_windows_count_and_end_as_the_library_s() -> None:
    ours, theirs = FixedWindowRateLimiter(auth.SweptMemoryStorage()), FixedWindowRateLimiter(MemoryStorage())
    item = parse("3/second")
    for limiter in (ours, theirs):
        assert [limiter.hit(item, "ns", "a") for _ in range(5)] == [True, True, True, False, False]
        assert limiter.hit(item, "ns", "b") is True  # another identifier, its own window
        assert limiter.test(item, "ns", "a") is False
        assert limiter.get_window_stats(item, "ns", "a").remaining == 0
    time.sleep(1.05)
    for limiter in (ours, theirs):
        assert limiter.test(item, "ns", "a") is True  # the window ended
        assert limiter.hit(item, "ns", "a") is True
        assert limiter.get_window_stats(item, "ns", "a").remaining == 2


def test_keys_no_one_counts_again_are_swept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "SWEEP_EVERY_S", 0.0)
    storage = auth.SweptMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    short, long_ = parse("5/second"), parse("5/hour")
    for i in range(200):
        limiter.hit(short, "failures", f"address-{i}")
    limiter.hit(long_, "keys", "kept")
    assert len(storage.expirations) == 201
    time.sleep(1.05)
    limiter.hit(long_, "keys", "kept")  # a count sweeps: the ended windows go, the live one stays
    assert set(storage.expirations) == {long_.key_for("keys", "kept")}
    assert set(storage.storage) == {long_.key_for("keys", "kept")}
    assert storage.get(long_.key_for("keys", "kept")) == 2


def test_a_sweep_reads_only_ended_windows_and_drops_a_bounded_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows end in the order they started: a sweep stops at the first one still open, and drops at
    most `SWEEP_KEYS_MAX` at a time, the rest at the next count (a flood of addresses never holds the
    loop for long)."""
    monkeypatch.setattr(auth, "SWEEP_EVERY_S", 3600.0)
    monkeypatch.setattr(auth, "SWEEP_KEYS_MAX", 100)
    storage = auth.SweptMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    item = parse("5/second")
    for i in range(250):
        limiter.hit(item, "failures", f"address-{i}")
    time.sleep(1.05)
    live = [f"live-{i}" for i in range(50)]
    for address in live:
        limiter.hit(item, "failures", address)  # the sweep is an hour away: nothing dropped yet
    assert len(storage.expirations) == 300
    storage._sweep_at = 0.0
    limiter.hit(item, "failures", live[0])  # the first sweep: 100 of the 250 ended
    assert len(storage.expirations) == 200
    limiter.hit(item, "failures", live[0])  # capped: the next count sweeps again at once
    limiter.hit(item, "failures", live[0])
    assert set(storage.expirations) == {item.key_for("failures", address) for address in live}
    assert storage._sweep_at > time.monotonic() + 3000  # the ended ones gone: the next an hour away
    limiter.hit(item, "failures", live[0])
    assert len(storage.expirations) == 50


def test_a_rush_of_counts_on_one_event_loop_stays_in_redis(redis_url) -> None:
    """300 counts at once on one event loop (a rush of requests under one key): each is counted in
    Redis, shared by every process, the others waiting for a pooled connection. (redis-py's default
    pool raised `MaxConnectionsError` past 100 in use, and the limit fell back to counting in each
    process for 5 s: the workers together let through their number times the limit.)"""
    import asyncio

    limit = auth.Limit("1000/minute", redis_url, "rush")

    async def rush() -> list[bool]:
        return list(await asyncio.gather(*(limit.hit("key-1") for _ in range(300))))

    assert asyncio.run(rush()) == [True] * 300
    assert limit._redis_down_until == 0.0  # never fell back to this process's counts
    stats = asyncio.run(limit._call("get_window_stats", "key-1"))  # read back from Redis, on another loop
    assert stats.remaining == 700 and limit._redis_down_until == 0.0
