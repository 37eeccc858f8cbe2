"""The posting pipeline: the next group decided while the last one is written (PostgreSQL).

`Ledger.submit` decides a group and writes it under the sequencer lock, so the process's
Python work and PostgreSQL's take turns: while the database takes a group's rows, the
process waits, and while the process rates and posts, the database idles. A caller that
posts many groups one after the other (the history import) can overlap the two with a
`PostingPipeline`: `submit` decides a group at once in the calling thread and hands its
rows to one writer thread, which sends them and commits while the caller decides the next.

Deciding happens without the lock, optimistically (`Ledger.decide_ahead`, `Ledger.write_decided`;
this module only schedules):

- a group is decided in a `REPEATABLE READ, READ ONLY` snapshot that reads the head with
  the state; while the group before it is still being written, the snapshot may not see it,
  so that group's effects (`GroupEffects`: final usage, budget meters, wallet books, its
  purchases and refunded originals, remembered answers, used receipts) are laid over what
  the snapshot reads, and the group is chained after that group's end. At most one group is
  in flight while the next is decided;
- the writer takes the sequencer lock and checks that the head is exactly the one the group
  was chained after (both chains' sequences and hashes, and the catalog version) and that the
  group before it was written as decided. Only then does it send the rows, move the head and
  commit;
- when a check fails or the write fails (another writer came between, a remembered key or a
  receipt taken meanwhile, which the database's unique keys refuse), the group is decided
  again under the lock by `Ledger.submit`, as if there were no pipeline; the group after it
  then fails its own check and goes the same way. A write that raised after its commit went
  through (the connection lost on COMMIT) is recognised by the head it left, not decided again;
- when a group cannot be written at all (deciding it again fails too), the pipeline stops:
  nothing after it is written, and `submit` and `drain` raise its error, so a caller that
  resumes from what is stored (the import) finds no gap behind it.

So every group is either written exactly as `Ledger.submit` would have decided it at that
point of the chain or decided again by it: caps, budgets, the gapless sequences and the
chains stay exact, and nothing is answered before its commit. A group whose receipts must
be decided in two rounds goes through `Ledger.submit` after the groups before it. Only
PostgreSQL queues a group's rows until they are sent; on SQLite `submit` posts synchronously.

Both threads want the interpreter: the caller decides in Python while the writer dumps rows
and waits on the database. Each time the writer's round trip returns it waits for the caller
to hand the interpreter over, which CPython does every `sys.getswitchinterval()` (5 ms by
default): a group's dozen round trips would each wait that long. While a pipeline is open the
interval is `SWITCH_INTERVAL_S` (process-wide; restored when the last one closes): the history import of
100,000 rows went from 14.2 to 12.7 s with it (`bench/import.py`, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from engine.store.ledger import CatalogSnapshot, DecidedGroup, Ledger, Result, Submission

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.0005  # while a pipeline is open: see the module's description

# The process's own interval, given back when the last open pipeline closes.
_interval_lock = threading.Lock()
_open_pipelines = 0
_own_interval = 0.0


def _lower_switch_interval() -> None:
    global _open_pipelines, _own_interval
    with _interval_lock:
        if _open_pipelines == 0:
            _own_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(SWITCH_INTERVAL_S, _own_interval))
        _open_pipelines += 1


def _restore_switch_interval() -> None:
    global _open_pipelines
    with _interval_lock:
        _open_pipelines -= 1
        if _open_pipelines == 0:
            sys.setswitchinterval(_own_interval)


def open_pipelines() -> int:
    """How many pipelines are open in this process (each lowers the switch interval until closed)."""
    return _open_pipelines


class PostingPipeline:
    """Posts groups through `Ledger`'s money path with deciding and writing overlapped; see the
    module's description. One caller thread at a time; `close()` (or the `with` block's end)
    waits for every group in flight."""

    def __init__(self, ledger: Ledger, enabled: bool = True) -> None:
        self.ledger = ledger
        self.enabled = enabled and ledger.engine.dialect.name == "postgresql"  # else `submit` posts at once
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="posting-writer")
        self._flight: list[tuple[DecidedGroup, Future[list[Result]]]] = []
        self._failure: BaseException | None = None  # the error of a group that could not be written
        self.redecided = 0  # groups whose write found the head moved and were decided again
        self.overlaid = 0  # groups decided over the one before them, not yet written
        self._holds_interval = False  # whether this pipeline counts among those lowering it
        if self.enabled:
            _lower_switch_interval()
            self._holds_interval = True

    def __enter__(self) -> PostingPipeline:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None:
            self.close()
            return
        try:
            self._wait()  # the caller's own error goes on; nothing is left writing behind it
        finally:
            self._shut()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self._shut()

    def _shut(self) -> None:
        self._writer.shutdown()
        if self._holds_interval:
            self._holds_interval = False
            _restore_switch_interval()

    def _wait(self) -> None:
        for _, future in self._flight:
            future.exception()
        self._flight.clear()

    def drain(self) -> None:
        """Wait until every group submitted is written; raise the error of one that could not be."""
        self._wait()
        if self._failure is not None:
            raise self._failure

    def submit(
        self,
        submissions: list[Submission],
        *,
        accepted_at_us: int,
        catalog: CatalogSnapshot | None = None,
        remember_answers: bool = True,
        receipts_unused: bool = False,
    ) -> Future[list[Result]]:
        """`Ledger.submit(submissions, ...)` whose results arrive once the group is committed;
        the group is decided before this returns, the write goes on in the writer thread.
        Raises the error of an earlier group that could not be written.

        The acceptance instant is the caller's (the history import stamps each group with its
        payments' own instants): the clock's now would be read outside the lock, and a
        settlement run relies on every posting committed after it carrying a later stamp.
        `receipts_unused`: see `Ledger.decide_ahead` (a group decided again under the lock
        looks its receipts up)."""
        options: dict[str, Any] = dict(
            accepted_at_us=accepted_at_us, catalog=catalog, remember_answers=remember_answers
        )
        while len(self._flight) > 1:  # at most one group in flight while this one is decided
            self._flight.pop(0)[1].exception()
        if self._failure is not None:
            raise self._failure
        last = self._flight[-1][0] if self._flight and not self._flight[-1][1].done() else None
        decided = (
            self.ledger.decide_ahead(submissions, after=last, receipts_unused=receipts_unused, **options)
            if self.enabled
            else None
        )
        if decided is None:
            self.drain()
            future: Future[list[Result]] = Future()
            future.set_result(self.ledger.submit(submissions, **options))
            return future
        if decided.after is not None:
            self.overlaid += 1
        future = self._dispatch(decided)
        self._flight.append((decided, future))
        return future

    def _dispatch(self, decided: DecidedGroup) -> Future[list[Result]]:
        """Hand a decided group to the writer thread."""
        return self._writer.submit(self._write, decided)

    def _write(self, decided: DecidedGroup) -> list[Result]:
        if self._failure is not None:
            raise self._failure  # a group before it was not written: neither is this one
        try:
            try:
                if self.ledger.write_decided(decided):
                    return decided.results
            except Exception as failure:
                # Refused by a unique key, or lost on COMMIT (perhaps after it went through).
                log.info(
                    "a pipelined group of %d failed to write: %s", len(decided.submissions), type(failure).__name__
                )
                if self.ledger.wrote(decided):
                    return decided.results
            # Decided against a state that moved: decide it again under the lock.
            self.redecided += 1
            return self.ledger.submit(decided.submissions, **decided.options)
        except BaseException as failure:
            self._failure = failure
            raise
        finally:
            # Only this write checked the group before it: let that one go (else every group
            # decided over another would keep the one before it, its rows and books, alive).
            decided.after = None
