"""Awaiting, on the event loop, futures that another thread resolves in bursts (issue 11).

A group commit resolves the futures of a whole group at once, from one thread (the committer's
receiving thread: `engine.store.committer_process`). `asyncio.wrap_future` would have each of
them call `loop.call_soon_threadsafe` on its own: a wake-up write a request, and as many loop
callbacks. `LoopFutures` hands the event loop the futures resolved since its last call in one
callback: a group of 25 wakes the loop once. Measured alone (25 futures resolved together from a
thread, with `asyncio.timeout` instead of `asyncio.wait_for`): 16–17 µs of the loop's CPU a
future against 27–29 (`docs/BENCHMARKS.md`).

Cancelling the awaitable (a request's time-out) cancels the concurrent future too, as
`asyncio.wrap_future` does: a parcel not yet taken into a group is then left out
(`engine.store.gather`).
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopFutures:
    """Concurrent futures awaited on one event loop, their results handed over in bursts."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._done: list[tuple[Future[Any], asyncio.Future[Any]]] = []
        self._lock = threading.Lock()

    def wrap(self, future: Future[T]) -> asyncio.Future[T]:
        """An awaitable of this loop resolved like `future` (call on the loop's thread)."""
        waiter: asyncio.Future[T] = self.loop.create_future()
        waiter.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)
        future.add_done_callback(lambda f: self._resolved(f, waiter))
        return waiter

    def _resolved(self, future: Future[Any], waiter: asyncio.Future[Any]) -> None:
        # Any thread: the first of a burst schedules the hand-over, the rest join it.
        with self._lock:
            self._done.append((future, waiter))
            first = len(self._done) == 1
        if first:
            try:
                self.loop.call_soon_threadsafe(self._hand_over)
            except RuntimeError:  # the loop closed: nobody awaits any more
                with self._lock:
                    self._done.clear()

    def _hand_over(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, waiter in done:
            if waiter.done():  # cancelled meanwhile
                continue
            try:
                if future.cancelled():
                    waiter.cancel()
                    continue
                failure = future.exception()
                if failure is not None:
                    waiter.set_exception(failure)
                else:
                    waiter.set_result(future.result())
            except BaseException as unusable:  # noqa: BLE001 - one waiter's trouble strands no other
                if not waiter.done():
                    waiter.set_exception(RuntimeError(type(unusable).__name__))


_BY_LOOP: dict[asyncio.AbstractEventLoop, LoopFutures] = {}  # closed loops' are dropped as new ones come
_BY_LOOP_LOCK = threading.Lock()  # loops of several threads (tests' portals) register at once


def loop_futures() -> LoopFutures:
    """The running loop's `LoopFutures` (one a loop; call on the loop's thread)."""
    loop = asyncio.get_running_loop()
    found = _BY_LOOP.get(loop)
    if found is None:
        with _BY_LOOP_LOCK:
            for closed in [other for other in _BY_LOOP if other.is_closed()]:
                del _BY_LOOP[closed]
            found = _BY_LOOP.setdefault(loop, LoopFutures(loop))
    return found


async def awaited(future: Future[T], timeout_s: float) -> T:
    """`future`'s result, awaited on the running loop for at most `timeout_s` (then
    `TimeoutError`, and `future` is cancelled)."""
    async with asyncio.timeout(timeout_s):
        return await loop_futures().wrap(future)
