"""`api.futures`: concurrent futures resolved by another thread, awaited on the event loop, a
burst of them handed over in one loop callback; results, errors, cancellation and time-outs as
`asyncio.wrap_future` and `asyncio.wait_for` gave them."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from api.futures import LoopFutures, awaited, loop_futures


def _resolve_in_thread(futures: list[Future[int]], fail_at: int | None = None) -> threading.Thread:
    def run() -> None:
        for i, future in enumerate(futures):
            if i == fail_at:
                future.set_exception(LookupError(f"no {i}"))
            else:
                future.set_result(i * 10)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_burst_resolved_by_a_thread_reaches_every_waiter_in_few_wake_ups():
    async def main() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        schedule = loop.call_soon_threadsafe

        def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wake_ups
            wake_ups += 1
            return schedule(*args, **kwargs)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        futures: list[Future[int]] = [Future() for _ in range(25)]
        waiting = [asyncio.ensure_future(awaited(f, 5)) for f in futures]
        await asyncio.sleep(0)
        _resolve_in_thread(futures, fail_at=7).join()  # all resolved before the loop runs again
        results = await asyncio.gather(*waiting, return_exceptions=True)
        return results, wake_ups

    results, wake_ups = asyncio.run(main())
    assert [r for i, r in enumerate(results) if i != 7] == [i * 10 for i in range(25) if i != 7]
    assert isinstance(results[7], LookupError) and str(results[7]) == "no 7"
    assert wake_ups == 1  # one hand-over for the whole burst, not one a future


def test_a_future_done_already_and_bursts_one_after_another():
    async def main() -> list[int]:
        done: Future[int] = Future()
        done.set_result(5)
        got = [await awaited(done, 1)]
        for round_ in range(3):
            futures: list[Future[int]] = [Future() for _ in range(4)]
            waiting = [asyncio.ensure_future(awaited(f, 5)) for f in futures]
            await asyncio.sleep(0)
            _resolve_in_thread(futures)
            got += [r + round_ for r in await asyncio.gather(*waiting)]
        return got

    assert asyncio.run(main()) == [5, 0, 10, 20, 30, 1, 11, 21, 31, 2, 12, 22, 32]


def test_a_time_out_raises_and_cancels_the_concurrent_future():
    async def main() -> Future[int]:
        future: Future[int] = Future()
        with pytest.raises(TimeoutError):
            await awaited(future, 0.05)
        return future

    future = asyncio.run(main())
    assert future.cancelled()  # a parcel not yet taken into a group is left out


def test_a_cancelled_concurrent_future_cancels_its_waiter():
    async def main() -> None:
        future: Future[int] = Future()
        waiter = loop_futures().wrap(future)
        threading.Thread(target=future.cancel).start()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())


def test_one_loop_futures_a_loop():
    async def main() -> tuple[LoopFutures, LoopFutures]:
        return loop_futures(), loop_futures()

    first, again = asyncio.run(main())
    assert first is again
    other, _ = asyncio.run(main())
    assert other is not first and other.loop is not first.loop


def test_a_result_the_loop_cannot_take_strands_no_other_waiter_of_its_burst():
    async def main() -> list[object]:
        futures: list[Future[int]] = [Future() for _ in range(3)]
        waiting = [asyncio.ensure_future(awaited(f, 5)) for f in futures]
        await asyncio.sleep(0)

        def resolve() -> None:
            futures[0].set_result(0)
            futures[1].set_exception(StopIteration())  # an asyncio future refuses this one
            futures[2].set_result(2)

        thread = threading.Thread(target=resolve)
        thread.start()
        thread.join()
        return await asyncio.gather(*waiting, return_exceptions=True)

    first, second, third = asyncio.run(main())
    assert first == 0 and third == 2
    assert isinstance(second, RuntimeError)
