"""Idempotency fast path in Redis: remembered answers served without the database.

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
    a restored ledger replayed the answer of a sale it no longer held (helper-82's probe)."""

    def __init__(self, url: str, ledger_id: str) -> None:
        self.url = url
        self.ledger_id = ledger_id
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
        entry = json.loads(raw)
        return entry["hash"], entry["status"], entry["body"]

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
