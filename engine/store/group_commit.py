"""Group commit: concurrent single requests share one sequenced database transaction.

Request threads hand their submission to `GroupCommitter.submit` and block on
a future. One committer thread per process (`engine.store.gather.Gatherer`) takes
the first waiting submission, lets company gather for at most `wait_ms` (or until
`size_max`), and posts the whole group with one `Ledger.submit` call: one lock, one kernel
call, one commit. Every future is resolved only after that commit returned,
so nothing is acknowledged before it is durable.

A group that fails is posted again one submission at a time, so one bad submission does not fail
its neighbours; unless the database cannot be reached at all (a `SELECT 1` on a fresh connection
fails too): then every submission of the group fails at once with the group's error (503 at the
API), and one line is logged for the group instead of a traceback per submission.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future

from sqlalchemy import text

from engine import metrics
from engine.store.gather import Gatherer
from engine.store.ledger import Ledger, Result, Submission

log = logging.getLogger(__name__)


class GroupCommitter:
    def __init__(self, ledger: Ledger, wait_ms: float = 2.0, size_max: int = 1000) -> None:
        self.ledger = ledger
        self._gatherer: Gatherer[Submission, Result] = Gatherer(
            self._commit, wait_ms=wait_ms, size_max=size_max, name="group-commit"
        )

    def submit(self, submission: Submission, timeout_s: float = 60.0) -> Result:
        return self.enqueue(submission).result(timeout=timeout_s)

    def enqueue(self, submission: Submission) -> Future[Result]:
        """Queue a submission; the future resolves after its group committed."""
        return self._gatherer.enqueue(submission)

    def _commit(self, group: list[tuple[Submission, Future[Result]]]) -> None:
        metrics.GROUP_SIZE.observe(len(group))
        try:
            with metrics.GROUP_COMMIT_SECONDS.time():
                results = self.ledger.submit([s for s, _ in group])
        except Exception as failure:
            if not self._reachable():
                log.warning("group of %d failed: the database cannot be reached (%s)", len(group), _name(failure))
                for _, future in group:
                    future.set_exception(failure)
                return
            # One bad submission must not fail its neighbours: post them one by one.
            log.exception("group of %d failed; posting its submissions singly", len(group))
            for submission, future in group:
                try:
                    future.set_result(self.ledger.submit([submission])[0])
                except Exception as exc:  # the single one fails on its own
                    future.set_exception(exc)
            return
        for (_, future), result in zip(group, results):
            future.set_result(result)

    def _reachable(self) -> bool:
        """Whether a fresh connection to the database answers `SELECT 1`."""
        try:
            with self.ledger.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


def _name(error: BaseException) -> str:
    """The error's class and, for a wrapped driver error, the driver's class; never its text,
    which can quote parameters."""
    original = getattr(error, "orig", None)
    return type(error).__name__ + (f"/{type(original).__name__}" if original is not None else "")
