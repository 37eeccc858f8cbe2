"""engine/store/gather.py: batches of what callers queued, each future answered once its batch is
handled; an item whose caller gave up (cancelled its future) before its batch is left out, and the
rest of its batch is answered as usual."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from engine.store.gather import Gatherer


def test_batches_answer_each_item_and_leave_out_cancelled_ones() -> None:
    handled: list[list[int]] = []
    first_batch_held = threading.Event()
    release = threading.Event()

    def handle(batch: list[tuple[int, Future[int]]]) -> None:
        handled.append([item for item, _ in batch])
        if len(handled) == 1:
            first_batch_held.set()
            release.wait(10)
        for item, future in batch:
            future.set_result(item * 10)

    gatherer: Gatherer[int, int] = Gatherer(handle, wait_ms=50, size_max=100, name="test-gather")
    first = gatherer.enqueue(1)
    assert first_batch_held.wait(10)  # the thread is busy with the first batch
    waiting = [gatherer.enqueue(n) for n in (2, 3, 4)]
    assert waiting[1].cancel()  # the caller of 3 gave up
    release.set()
    assert first.result(10) == 10
    assert waiting[0].result(10) == 20 and waiting[2].result(10) == 40
    assert waiting[1].cancelled()
    assert handled == [[1], [2, 4]]


def test_a_handler_that_raises_fails_its_batch_and_the_thread_goes_on() -> None:
    def handle(batch: list[tuple[str, Future[str]]]) -> None:
        if any(item == "bad" for item, _ in batch):
            raise RuntimeError("the database went away")
        for item, future in batch:
            future.set_result(item.upper())

    gatherer: Gatherer[str, str] = Gatherer(handle, wait_ms=1, size_max=1, name="test-gather-fail")
    bad = gatherer.enqueue("bad")
    try:
        bad.result(10)
        raise AssertionError("the failed batch's future was answered")
    except RuntimeError as failure:
        assert str(failure) == "the database went away"
    assert gatherer.enqueue("good").result(10) == "GOOD"
