"""Idempotency fast path in Redis: remembered answers served without the committer or the lock.

The database is the record of every remembered answer (an accepted payment's on
its `payment` row, a decline's in `idempotency_key`, kept 30 days and more).
Redis only holds recent answers for a day, written after the commit that made
them durable, so a terminal retrying in a storm gets its replay without waiting
for the sequencer lock. A miss, an evicted key or Redis being down simply falls
through to the database path: correctness never depends on Redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import orjson

from engine.store import bounded
from engine.store.redis_loop import LoopClients

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

TTL_S = 24 * 3600
# How long a replay waits for the ledger id's read, and how many reads may be waiting at once.
CHECK_TIMEOUT_S = 1.0
_CHECKS: bounded.Calls[str] = bounded.Calls("ledger-id", 8)


class AnswerCache:
    """Answers of the ledger `ledger_id` names (`ledger_head.ledger_id`): another database, or this
    one restored from a backup (a new id), never meets them, even on the same Redis. Without the id,
    a restored ledger replayed the answer of a sale it no longer held (helper-82's probe).

    `current` reads the database's ledger id now. It is read at start-up, and again before a
    remembered answer is replayed (one read of the head row, no lock waited for): a process left
    running while its database was emptied and restored from a backup (helper-84) no longer
    replays the answers of the ledger it served before, and keeps its answers under the new id
    from then on."""

    def __init__(self, url: str, current: Callable[[], str]) -> None:
        self.url = url
        self._current = current
        self.ledger_id = current()
        self._redis = LoopClients(url)
        # The last read of the ledger id: when it began, and its result to come. A replay whose
        # answer was read from Redis before that read began waits for it rather than reading
        # again: a storm of retries reads the head row a few times, not once a retry.
        self._latest: tuple[float, Future[str]] | None = None

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._redis.client

    @staticmethod
    def _key(ledger_id: str, terminal_id: str, idempotency_key: str) -> str:
        return f"setapay:answer:{ledger_id}:{terminal_id}:{idempotency_key}"

    async def get(self, terminal_id: str, idempotency_key: str) -> tuple[str, int, dict[str, Any]] | None:
        """(request hash, status, body) of a remembered answer, or None."""
        kept_under = self.ledger_id  # the id the answer is read under is the one checked after
        asked_at = time.monotonic()
        try:
            raw = await self.client.get(self._key(kept_under, terminal_id, idempotency_key))
        except Exception:  # Redis is an optimisation; the database path answers instead
            log.warning("answer cache unavailable", exc_info=True)
            return None
        if raw is None:
            return None
        if not await self._still_current(kept_under, asked_at):
            return None
        entry = json.loads(raw)
        return entry["hash"], entry["status"], entry["body"]

    async def _still_current(self, kept_under: str, asked_at: float) -> bool:
        """Whether the database still holds the ledger `kept_under` names, read after `asked_at`
        (the replay's look-up in Redis: a read begun before it may have seen the database before a
        restore the answer came after); if not, this process's answers are kept under the one it
        holds now. The read waits at most CHECK_TIMEOUT_S on a thread of its own (`bounded.Calls`,
        none of the event loop's executor): a database that cannot be read in time replays
        nothing, and the database path answers, or fails, instead."""
        try:
            latest = self._latest
            if latest is None or latest[0] <= asked_at:
                latest = (time.monotonic(), _CHECKS.start(self._current))
                self._latest = latest
            now = await bounded.wait_async(latest[1], CHECK_TIMEOUT_S)
        except Exception as exc:
            log.warning("ledger id not read (%s); no answer replayed from the cache", type(exc).__name__)
            return False
        if now == kept_under:
            return True
        if now != self.ledger_id:
            log.warning("the database holds another ledger (restored?): the last one's answers are not replayed")
            self.ledger_id = now
        return False

    async def put(
        self,
        terminal_id: str,
        idempotency_key: str,
        request_hash: str,
        status: int,
        body_json: bytes,
        ledger_id: str | None = None,
    ) -> None:
        """Remember an answer whose body is `body_json` (JSON of an object, written into the entry
        as it is: the API process holds an answer as the committer child sent it), under
        `ledger_id`: the id as it stood before the request was posted (the caller reads
        `self.ledger_id` then). A restore that another replay found between the commit and this
        write moved `self.ledger_id` to the new ledger, which may not hold the sale (helper-90); an
        id older than the ledger that took the sale only loses the entry."""
        try:
            await self.client.set(
                self._key(self.ledger_id if ledger_id is None else ledger_id, terminal_id, idempotency_key),
                orjson.dumps({"hash": request_hash, "status": status, "body": orjson.Fragment(body_json)}),
                ex=TTL_S,
            )
        except Exception:
            log.warning("answer cache unavailable", exc_info=True)
