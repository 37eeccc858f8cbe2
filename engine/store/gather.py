"""Many callers' small writes gathered into one database transaction by one thread.

A caller queues an item and gets a future; one thread per `Gatherer` takes the first waiting
item, lets company gather for at most `wait_ms` (or until `size_max` items), and hands the whole
batch to `handle`, which resolves every item's future, each only once what it stands for is
committed. An item whose caller cancelled its future before the batch was handed over (it gave
up waiting, and answered so) is left out. The group commit of single posts
(`engine.store.group_commit`) and the database's signature nonces (`engine.store.nonces`) both
work this way: one lock, one statement round, one commit for many requests, instead of one each.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Gatherer(Generic[T, R]):
    def __init__(
        self,
        handle: Callable[[list[tuple[T, Future[R]]]], None],
        *,
        wait_ms: float,
        size_max: int,
        name: str,
        size_of: Callable[[T], int] | None = None,
        ready: Callable[[], None] | None = None,
    ) -> None:
        self.handle = handle
        # Called once the first item of a batch is taken, before company is gathered: it may wait
        # until `handle` can take the batch, so the batch holds everything queued meanwhile.
        self.ready = ready
        self.wait_s = wait_ms / 1000
        self.size_max = size_max
        # How much of `size_max` an item takes (1 each by default). A batch ends once it holds
        # `size_max`; an item that would take it past is still taken, as the first always is.
        self.size_of = size_of
        self._queue: queue.Queue[tuple[T, Future[R]]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def enqueue(self, item: T) -> Future[R]:
        """Queue `item`; the future resolves once its batch was handled."""
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    def _gather(self) -> list[tuple[T, Future[R]]]:
        batch = [self._queue.get()]
        if self.ready is not None:
            self.ready()
        size_of = self.size_of
        size = size_of(batch[0][0]) if size_of else 1
        deadline = time.monotonic() + self.wait_s
        while size < self.size_max:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
            size += size_of(item[0]) if size_of else 1
        return batch

    def _run(self) -> None:
        while True:
            # A caller that gave up cancelled its future (a request's timeout): its item is left
            # out, and every other future of the batch can no longer be cancelled from here on.
            batch = [(item, future) for item, future in self._gather() if future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                self.handle(batch)
            except BaseException as failure:  # noqa: BLE001 - the thread serves every later batch
                log.exception("%s: a batch of %d failed", self._thread.name, len(batch))
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
