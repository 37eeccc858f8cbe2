"""Blocking calls waited for at most a given time (`engine/store/bounded.py`): the webhooks'
host-name lookups and the answer cache's read of the ledger id."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest

from engine.store import bounded


def test_a_failure_after_its_waiters_gave_up_is_not_logged_as_never_retrieved(caplog) -> None:
    """Three replays gave up on a read of the ledger id that then failed: asyncio logged "Future
    exception was never retrieved", with a traceback, once a waiter (helper-90)."""
    calls: bounded.Calls[str] = bounded.Calls("test-fails-late", 4)
    release = threading.Event()

    def late_failure() -> str:
        release.wait(10)
        raise ConnectionError("the database went away")

    async def run() -> None:
        future = calls.start(late_failure)
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await bounded.wait_async(future, 0.05)
        release.set()
        with pytest.raises(ConnectionError):
            await bounded.wait_async(future, 5)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(run())
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_call_whose_thread_cannot_start_keeps_no_slot(monkeypatch) -> None:
    """A thread that could not start left its slot taken and its future unfinished: after `most`
    such failures every call was refused, and a keyed one (a host name) waited on a dead future."""
    calls: bounded.Calls[int] = bounded.Calls("test-no-thread", 2)

    def no_thread(self) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as m:
        m.setattr(threading.Thread, "start", no_thread)
        for _ in range(3):
            with pytest.raises(RuntimeError):
                calls.start(lambda: 1, key="host")
    assert calls.call(lambda: 7, 5, key="host") == 7
    assert calls.call(lambda: 8, 5) == 8


def test_callers_of_one_key_share_one_call_and_others_go_on() -> None:
    calls: bounded.Calls[str] = bounded.Calls("test-shared", 2)
    release = threading.Event()
    started: list[str] = []

    def slow() -> str:
        started.append("slow")
        release.wait(10)
        return "slow"

    try:
        first, second = calls.start(slow, key="a"), calls.start(slow, key="a")
        assert first is second
        assert calls.call(lambda: "quick", 5, key="b") == "quick"
        with pytest.raises(bounded.Busy):
            calls.start(slow, key="c")
            calls.start(slow, key="d")
    finally:
        release.set()
    assert first.result(5) == "slow" and started.count("slow") <= 2
