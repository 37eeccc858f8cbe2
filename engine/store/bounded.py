"""Blocking calls that take no timeout of their own (the operating system's resolver, a read on a
pooled database connection), made on daemon threads and waited for at most a given time.

A call that never returns keeps its thread, not the caller: `Calls` keeps at most `most` of them
in flight (one more is refused at once, `Busy`), never blocks the interpreter's exit (the threads
are daemons, unlike a `ThreadPoolExecutor`'s, which are joined at exit), and, given a key, lets a
caller asking while a call of that key is in flight wait for that one instead of starting
another: a host name that resolves slowly holds one thread, not all of them, and the lookups of
other names go on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

T = TypeVar("T")


class Busy(RuntimeError):
    """`most` calls are in flight already."""


class Calls(Generic[T]):
    def __init__(self, name: str, most: int) -> None:
        self.name = name
        self.most = most
        self._lock = threading.Lock()
        self._flying: dict[Hashable, Future[T]] = {}

    def start(self, fn: Callable[[], T], key: Hashable | None = None) -> Future[T]:
        """The call's future: the one of `key` in flight, or a new call on a thread of its own
        (with no key, always a new one). `Busy` when `most` are in flight."""
        with self._lock:
            if key is not None and key in self._flying:
                return self._flying[key]
            if len(self._flying) >= self.most:
                raise Busy(f"{self.most} {self.name} calls in flight")
            slot: Hashable = key if key is not None else object()
            future: Future[T] = Future()
            future.set_running_or_notify_cancel()  # running: a waiter giving up cannot cancel it
            self._flying[slot] = future
        try:
            threading.Thread(target=self._run, args=(fn, slot, future), name=self.name, daemon=True).start()
        except BaseException as exc:  # no thread (the process's limit, or shutting down): no slot kept
            self._done(slot)
            future.set_exception(exc)
            raise
        return future

    def _run(self, fn: Callable[[], T], slot: Hashable, future: Future[T]) -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to every waiter
            self._done(slot)
            future.set_exception(exc)
        else:
            self._done(slot)
            future.set_result(result)

    def _done(self, slot: Hashable) -> None:
        with self._lock:
            self._flying.pop(slot, None)

    def call(self, fn: Callable[[], T], seconds: float, key: Hashable | None = None) -> T:
        """`fn()`'s result, waited for at most `seconds` (`TimeoutError`), or its exception."""
        return self.start(fn, key).result(timeout=seconds)


async def wait_async(future: Future[T], seconds: float) -> T:
    """`future`'s result (of `Calls.start`), the event loop waiting at most `seconds`
    (`TimeoutError`), no thread of its executor; giving up leaves the call running for whoever
    else waits on it."""
    wrapped = asyncio.wrap_future(future)
    # Retrieved whatever happens: a waiter that gave up leaves nobody to read a failure that comes
    # after, which asyncio would log as never retrieved, once a waiter (helper-90).
    wrapped.add_done_callback(lambda done: done.cancelled() or done.exception())
    return await asyncio.wait_for(asyncio.shield(wrapped), seconds)
