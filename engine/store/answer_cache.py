"""Idempotency fast path in Redis: remembered answers served without the committer or the lock.

The database is the record of every remembered answer (an accepted payment's on
its `payment` row, a decline's in `idempotency_key`, kept 30 days and more).
Redis only holds recent answers for a day, written after the commit that made
them durable, so a terminal retrying in a storm gets its replay without waiting
for the sequencer lock. A miss, an evicted key or Redis being down simply falls
through to the database path: correctness never depends on Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from engine.store.redis_loop import LoopClients

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger(__name__)

TTL_S = 24 * 3600


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

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._redis.client

    def _key(self, terminal_id: str, idempotency_key: str) -> str:
        return f"setapay:answer:{self.ledger_id}:{terminal_id}:{idempotency_key}"

    async def get(self, terminal_id: str, idempotency_key: str) -> tuple[str, int, dict[str, Any]] | None:
        """(request hash, status, body) of a remembered answer, or None."""
        try:
            raw = await self.client.get(self._key(terminal_id, idempotency_key))
        except Exception:  # Redis is an optimisation; the database path answers instead
            log.warning("answer cache unavailable", exc_info=True)
            return None
        if raw is None:
            return None
        if not await self._still_current():
            return None
        entry = json.loads(raw)
        return entry["hash"], entry["status"], entry["body"]

    async def _still_current(self) -> bool:
        """Whether the database still holds the ledger this process's answers are kept under; if
        not, they are kept under the one it holds now. A database that cannot be read replays
        nothing: the database path answers, or fails, instead."""
        try:
            now = await asyncio.to_thread(self._current)
        except Exception:
            log.warning("ledger id unreadable; no answer replayed from the cache", exc_info=True)
            return False
        if now == self.ledger_id:
            return True
        log.warning("the database holds another ledger (restored?): answers cached for the last one are not replayed")
        self.ledger_id = now
        return False

    async def put(
        self, terminal_id: str, idempotency_key: str, request_hash: str, status: int, body_json: bytes
    ) -> None:
        """Remember an answer whose body is `body_json` (JSON of an object, written into the entry
        as it is: the API process holds an answer as the committer child sent it)."""
        try:
            await self.client.set(
                self._key(terminal_id, idempotency_key),
                orjson.dumps({"hash": request_hash, "status": status, "body": orjson.Fragment(body_json)}),
                ex=TTL_S,
            )
        except Exception:
            log.warning("answer cache unavailable", exc_info=True)
