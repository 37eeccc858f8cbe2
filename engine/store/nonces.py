"""Single-use signature nonces (SPEC §9.2): a nonce a terminal signed with is refused for 600 s.

Shared by every API process: Redis (`SET setapay:nonce:<terminal>:<nonce> 1
NX EX 600`) when `SETAPAY_REDIS_URL` is set, else the `signature_nonce`
table, where the primary key (terminal_id, nonce) decides: an insert that
meets a live row is a replay; one that meets an expired row (not pruned yet)
takes it over. Expired rows are pruned at most once a minute per process, not
per request.

Unlike the answer cache, this is a security check: when the configured store
cannot be reached the request is refused (503), never let through unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Table, delete
from sqlalchemy.engine import Engine

from engine.errors import EngineError
from engine.http_signing import NONCE_TTL_S
from engine.store.models import SignatureNonceRow
from engine.store.redis_loop import LoopClients

if TYPE_CHECKING:
    import redis.asyncio
    from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

PRUNE_EVERY_US = 60 * 1_000_000


class DatabaseNonces:
    """Nonces in the ledger's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, ttl_s: int = NONCE_TTL_S) -> None:
        self.engine = engine
        self.ttl_us = ttl_s * 1_000_000
        self._last_prune_us = 0
        self._prune_lock = threading.Lock()
        # Both dialects' INSERT have ON CONFLICT DO UPDATE ... RETURNING, alike.
        self._insert: Callable[[Table], postgresql.Insert | sqlite.Insert]
        if engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            self._insert = pg_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            self._insert = sqlite_insert

    def claim_now(self, terminal_id: str, nonce: str, now_us: int) -> bool:
        """True if `nonce` is fresh for `terminal_id` (and is now used up), False if it is a replay."""
        table = SignatureNonceRow.__table__
        insert = self._insert(table).values(terminal_id=terminal_id, nonce=nonce, expires_at_us=now_us + self.ttl_us)
        stmt = insert.on_conflict_do_update(
            index_elements=[table.c.terminal_id, table.c.nonce],
            set_={"expires_at_us": insert.excluded.expires_at_us},
            where=table.c.expires_at_us <= now_us,  # only an expired use is taken over
        ).returning(table.c.terminal_id)
        with self.engine.begin() as connection:
            fresh = connection.execute(stmt).first() is not None
        self._maybe_prune(now_us)
        return fresh

    def _maybe_prune(self, now_us: int) -> None:
        with self._prune_lock:
            if now_us - self._last_prune_us < PRUNE_EVERY_US:
                return
            self._last_prune_us = now_us
        self.prune(now_us)

    def prune(self, now_us: int) -> int:
        with self.engine.begin() as connection:
            return connection.execute(
                delete(SignatureNonceRow).where(SignatureNonceRow.expires_at_us <= now_us)
            ).rowcount

    async def claim(self, terminal_id: str, nonce: str, now_us: int) -> bool:
        try:
            return await asyncio.to_thread(self.claim_now, terminal_id, nonce, now_us)
        except Exception as exc:
            log.warning("nonce store unavailable", exc_info=True)
            raise EngineError("service_unavailable", f"nonce store: {type(exc).__name__}") from None


class RedisNonces:
    """Nonces in Redis, expiring by themselves."""

    def __init__(self, url: str, ttl_s: int = NONCE_TTL_S) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self._redis = LoopClients(url)

    @property
    def client(self) -> redis.asyncio.Redis:
        return self._redis.client

    @staticmethod
    def key(terminal_id: str, nonce: str) -> str:
        return f"setapay:nonce:{terminal_id}:{nonce}"

    async def claim(self, terminal_id: str, nonce: str, now_us: int) -> bool:
        try:
            return bool(await self.client.set(self.key(terminal_id, nonce), 1, nx=True, ex=self.ttl_s))
        except Exception as exc:
            log.warning("nonce store unavailable", exc_info=True)
            raise EngineError("service_unavailable", f"nonce store: {type(exc).__name__}") from None


def nonce_store(engine: Engine, redis_url: str | None) -> DatabaseNonces | RedisNonces:
    return RedisNonces(redis_url) if redis_url else DatabaseNonces(engine)
