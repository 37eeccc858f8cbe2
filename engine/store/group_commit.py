"""Group commit: concurrent requests share one sequenced database transaction.

Request threads hand their submissions to `GroupCommitter.enqueue` (a single post) or
`enqueue_many` (a batch's items, kept together and in order) and block on a future. One
committer thread per process (`engine.store.gather.Gatherer`) takes the first waiting parcel,
lets company gather for at most `wait_ms` (or until it holds `size_max` submissions: a batch is
never split, so a group may hold a few more), and posts the whole group: one lock, one kernel
call, one commit. Every future is resolved only after that commit
returned, so nothing is acknowledged before it is durable.

**Deciding ahead** (PostgreSQL, `ahead=True`, the default). The committer thread decides a group
outside the lock (`Ledger.decide_ahead`: rating, postings, rows, in a read-only snapshot, over
the effects of the group still being written) and hands it to one writer thread, which takes the
sequencer lock, checks that the head is the one the group was decided against, sends its rows
and commits (`Ledger.write_decided`), while the committer gathers and decides the next group. So
the process's Python and PostgreSQL work at once instead of taking turns under the lock. At most
one group is being written while the next is decided. The group is stamped with the clock's
instant read once its snapshot holds (after the snapshot read the head), and the head's
`lock_version` moves with every unit of work under the lock: a unit that committed before the
snapshot is in it, so before the stamp; any unit that commits after it (another process's group,
a settlement run that paid nothing, a lifecycle run, a catalog change) makes the write find the
head moved, write nothing, and the group is posted under the lock by `Ledger.submit` as if it had
never been decided, its stamp read again after the lock. So stamps never go back along the chain,
and a settlement run still sees every posting committed after it carrying a later stamp. After
such a refusal the committer decides under the lock for `LOCKED_AFTER_REFUSAL_S`: with several
API processes, optimistic deciding is wasted whenever another process wrote first. A group whose
receipts must be decided in two rounds, and every group on SQLite, is posted by `Ledger.submit`
directly, after the group in flight is written.

A group that fails is posted again one parcel at a time (a single post alone, a batch's items
together), so one bad submission does not fail its neighbours; unless the database cannot be
reached at all (a `SELECT 1` on a fresh connection fails too): then every submission of the group
fails at once with the group's error (503 at the API), and one line is logged for the group
instead of a traceback per submission.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy import text

from engine import metrics
from engine.store.gather import Gatherer
from engine.store.ledger import DecidedGroup, Ledger, Result, Submission
from engine.store.write_process import WriterProcess, error_name

log = logging.getLogger(__name__)

LOCKED_AFTER_REFUSAL_S = 1.0  # deciding under the lock only, after another writer came between

# A parcel: the submissions of one request, and whether it asked for a list of results (a batch).
Parcel = tuple[list[Submission], bool]
Group = list[tuple[Parcel, "Future[Any]"]]


class Committer:
    """What request threads see of a group committer: parcels queued, futures resolved once
    their group is committed. `_gatherer` gathers the groups; `close` ends what it started."""

    _gatherer: Gatherer[Parcel, Any]

    def submit(self, submission: Submission, timeout_s: float = 60.0) -> Result:
        result: Result = self.enqueue(submission).result(timeout=timeout_s)
        return result

    def enqueue(self, submission: Submission) -> Future[Result]:
        """Queue a submission; the future resolves after its group committed."""
        return self._gatherer.enqueue(([submission], False))

    def enqueue_many(self, submissions: list[Submission]) -> Future[list[Result]]:
        """Queue a batch's submissions, posted in order in one group; the future resolves to their
        results after that group committed."""
        return self._gatherer.enqueue((submissions, True))

    def close(self) -> None:
        raise NotImplementedError


class GroupCommitter(Committer):
    def __init__(
        self,
        ledger: Ledger,
        wait_ms: float = 2.0,
        size_max: int = 1000,
        ahead: bool = True,
        writer_process: bool = False,
    ) -> None:
        self.ledger = ledger
        self.ahead = ahead and ledger.engine.dialect.name == "postgresql"
        # Decided groups written by a child process (`engine.store.write_process`), not a thread.
        self.writer_process = (
            WriterProcess(ledger.engine.url.render_as_string(hide_password=False))
            if self.ahead and writer_process
            else None
        )
        if self.writer_process is not None:
            self.writer_process.start()  # spawned now: it loads while the first group gathers
        self.overlaid = 0  # groups decided over the one being written
        self.written_ahead = 0  # groups decided ahead and written as decided
        self.redecided = 0  # groups decided ahead whose write found the head moved (or failed)
        self._locked_until = 0.0  # monotonic instant until which groups are decided under the lock
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="group-write") if self.ahead else None
        self._flight: list[tuple[DecidedGroup, Future[None]]] = []  # written, or being written, in order
        self._flight_lock = threading.Lock()
        self._gatherer: Gatherer[Parcel, Any] = Gatherer(
            self._commit, wait_ms=wait_ms, size_max=size_max, name="group-commit", size_of=size_of_parcel
        )

    def close(self) -> None:
        """End the writer child, if any, and close the ledger's snapshot connection (the process's
        shutdown). A group decided ahead after this finds no child (`WriterLost`) and is posted
        under the lock, in this process; its snapshot connects anew."""
        if self.writer_process is not None:
            self.writer_process.close()
        self.ledger.close()

    def post(self, group: Group) -> None:
        """Post a group gathered elsewhere (`engine.store.committer_process`), as the committer
        thread posts the groups it gathers: its futures resolve once it is committed, and this
        returns once the next group can be decided."""
        self._commit(group)

    # -- the committer thread ------------------------------------------------

    def _commit(self, group: Group) -> None:
        submissions = [s for (parcel, _), _ in group for s in parcel]
        metrics.GROUP_SIZE.observe(len(submissions))
        started = time.perf_counter()
        decided = self._decide(submissions) if self.ahead and time.monotonic() >= self._locked_until else None
        if decided is None:
            self._wait_written(0)
            self._post_locked(group, submissions)
            metrics.GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
            return
        if decided.writes_nothing:
            # Retries of committed answers only: final, answered without the lock, as `Ledger.submit` does.
            self.ledger.count_declines(decided.results)
            _resolve(group, decided.results)
            metrics.GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
            return
        assert self._writer is not None
        if decided.after is not None:
            self.overlaid += 1
        future = self._writer.submit(self._write, decided, group, started)
        with self._flight_lock:
            self._flight.append((decided, future))

    def _decide(self, submissions: list[Submission]) -> DecidedGroup | None:
        """The group decided ahead, over the one being written if any; None to post it under the lock."""
        self._wait_written(1)  # at most one group being written while this one is decided
        with self._flight_lock:
            last = self._flight[-1][0] if self._flight and not self._flight[-1][1].done() else None
        try:
            # Stamped with the clock read inside, once the snapshot holds: see `Ledger.decide_ahead`.
            return self.ledger.decide_ahead(submissions, accepted_at_us=None, after=last)
        except Exception:  # noqa: BLE001 - posted under the lock, where a failure is answered (and logged)
            log.debug("a group of %d could not be decided ahead", len(submissions), exc_info=True)
            return None

    def _wait_written(self, keep: int) -> None:
        """Wait until at most `keep` groups are being written."""
        while True:
            with self._flight_lock:
                if len(self._flight) <= keep:
                    return
                _, future = self._flight.pop(0)
            future.exception()  # `_write` resolves its group's futures itself; it never raises

    # -- the writer thread ---------------------------------------------------

    def _write(self, decided: DecidedGroup, group: Group, started: float) -> None:
        try:
            try:
                written = self.ledger.write_decided(decided, self.writer_process)
            except Exception as failure:  # refused by a unique key, or lost on COMMIT (perhaps after it went through)
                log.info(
                    "a group of %d decided ahead failed to write: %s", len(decided.submissions), error_name(failure)
                )
                written = self._wrote(decided)
            if written:
                self.written_ahead += 1
                _resolve(group, decided.results)
            else:
                # Another unit of work came between, or the write failed: post it under the lock.
                self.redecided += 1
                self._locked_until = time.monotonic() + LOCKED_AFTER_REFUSAL_S
                self._post_locked(group, decided.submissions)
            metrics.GROUP_COMMIT_SECONDS.observe(time.perf_counter() - started)
        except BaseException as failure:  # noqa: BLE001 - every waiting request gets an answer
            log.exception("group-write: a group of %d failed", len(decided.submissions))
            for _, future in group:
                if not future.done():
                    future.set_exception(failure)
        finally:
            # Only this write checked the group before it: let that one go.
            decided.after = None

    def _wrote(self, decided: DecidedGroup) -> bool:
        try:
            return self.ledger.wrote(decided)
        except Exception:  # noqa: BLE001 - not known: posted under the lock, where a retry is a replay
            return False

    # -- under the lock ------------------------------------------------------

    def _post_locked(self, group: Group, submissions: list[Submission]) -> None:
        """`Ledger.submit` for the whole group; should it fail, each parcel on its own."""
        try:
            results = self.ledger.submit(submissions)
        except Exception as failure:
            if not self._reachable():
                log.warning(
                    "group of %d failed: the database cannot be reached (%s)", len(submissions), error_name(failure)
                )
                for _, future in group:
                    future.set_exception(failure)
                return
            # One bad submission must not fail its neighbours: post them one parcel at a time.
            log.exception("group of %d failed; posting its requests singly", len(submissions))
            for (parcel, many), future in group:
                try:
                    answers = self.ledger.submit(parcel)
                except Exception as exc:  # the single one fails on its own
                    future.set_exception(exc)
                else:
                    future.set_result(answers if many else answers[0])
            return
        _resolve(group, results)

    def _reachable(self) -> bool:
        """Whether a fresh connection to the database answers `SELECT 1`."""
        try:
            with self.ledger.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


def size_of_parcel(parcel: Parcel) -> int:
    return len(parcel[0])


def _resolve(group: Group, results: list[Result]) -> None:
    at = 0
    for (parcel, many), future in group:
        n = len(parcel)
        future.set_result(results[at : at + n] if many else results[at])
        at += n
