"""Single-use signature nonces (SPEC §9.2): a nonce a terminal signed with is refused for 600 s.

Shared by every API process: Redis (`SET setapay:nonce:<terminal>:<nonce> 1
NX EX 600`) when `SETAPAY_REDIS_URL` is set, else the `signature_nonce`
table, where the primary key (terminal_id, nonce) decides: an insert that
meets a live row is a replay; one that meets an expired row (not pruned yet)
takes it over. Expired rows are pruned at most once a minute per process, not
per request.

In the database, the claims of concurrent requests are gathered (`engine.store.gather`)
for at most `CLAIM_WAIT_MS` and claimed together: one statement and one commit for
many requests, rather than a pooled connection, a round trip and a commit each
(with 64 signing terminals posting at once, that commit per request was the
signed path's bound). Each claim's answer is its own: two claims of one nonce in
one batch are one use and one replay, as if one after the other.

Unlike the answer cache, this is a security check: when the configured store
cannot be reached the request is refused (503), never let through unchecked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING

from sqlalchemy import Table, delete
from sqlalchemy.engine import Engine

from engine.errors import EngineError
from engine.http_signing import NONCE_TTL_S
from engine.store.gather import Gatherer
from engine.store.models import SignatureNonceRow
from engine.store.redis_loop import LoopClients

if TYPE_CHECKING:
    import redis.asyncio
    from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)

PRUNE_EVERY_US = 60 * 1_000_000
CLAIM_WAIT_MS = 1.0  # how long a claim waits for company before its batch is claimed
CLAIM_BATCH_MAX = 500  # claims per statement

Claim = tuple[str, str, int]  # terminal id, nonce, now (µs)


class DatabaseNonces:
    """Nonces in the ledger's database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, ttl_s: int = NONCE_TTL_S) -> None:
        self.engine = engine
        self.ttl_us = ttl_s * 1_000_000
        self._last_prune_us = 0
        self._prune_lock = threading.Lock()
        self._gatherer: Gatherer[Claim, bool] | None = None
        self.pruning: threading.Thread | None = None  # the last prune's thread (tests wait for it)
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
        return self.claim_many([(terminal_id, nonce, now_us)])[0]

    def claim_many(self, claims: list[Claim]) -> list[bool]:
        """`claim_now` of each claim, in order, in one statement and one commit."""
        first: dict[tuple[str, str], int] = {}  # a nonce claimed twice here: the first claim is the use
        for i, (terminal_id, nonce, _) in enumerate(claims):
            first.setdefault((terminal_id, nonce), i)
        # Rows in key order: two processes' batches lock the rows they meet in the same order.
        first = dict(sorted(first.items()))
        table = SignatureNonceRow.__table__
        insert = self._insert(table).values(
            [
                {"terminal_id": claims[i][0], "nonce": claims[i][1], "expires_at_us": claims[i][2] + self.ttl_us}
                for i in first.values()
            ]
        )
        stmt = insert.on_conflict_do_update(
            index_elements=[table.c.terminal_id, table.c.nonce],
            set_={"expires_at_us": insert.excluded.expires_at_us},
            # Only an expired use is taken over: expired by the claim's own instant (its expiry - TTL).
            where=table.c.expires_at_us <= insert.excluded.expires_at_us - self.ttl_us,
        ).returning(table.c.terminal_id, table.c.nonce)
        with self.engine.begin() as connection:
            fresh = {(terminal_id, nonce) for terminal_id, nonce in connection.execute(stmt)}
        self._maybe_prune(max(now_us for _, _, now_us in claims))
        return [(t, n) in fresh and first[(t, n)] == i for i, (t, n, _) in enumerate(claims)]

    def _claim_batch(self, batch: list[tuple[Claim, Future[bool]]]) -> None:
        try:
            answers = self.claim_many([claim for claim, _ in batch])
        except Exception as failure:  # every claim of the batch is refused (503), none let through
            for _, future in batch:
                future.set_exception(failure)
            return
        for (_, future), answer in zip(batch, answers):
            future.set_result(answer)

    def _claims(self) -> Gatherer[Claim, bool]:
        with self._prune_lock:
            if self._gatherer is None:  # started by the first request's claim, not by the CLI
                self._gatherer = Gatherer(
                    self._claim_batch, wait_ms=CLAIM_WAIT_MS, size_max=CLAIM_BATCH_MAX, name="nonce-claims"
                )
            return self._gatherer

    def _maybe_prune(self, now_us: int) -> None:
        """Prune expired rows at most once a minute, in a thread of its own: the claims just
        committed stand whatever the prune does, and the next batch does not wait for it."""
        with self._prune_lock:
            if now_us - self._last_prune_us < PRUNE_EVERY_US:
                return
            self._last_prune_us = now_us
        self.pruning = threading.Thread(target=self._prune_quietly, args=(now_us,), name="nonce-prune", daemon=True)
        self.pruning.start()

    def _prune_quietly(self, now_us: int) -> None:
        try:
            self.prune(now_us)
        except Exception as failure:  # noqa: BLE001 - the next prune a minute later deletes them
            log.warning("pruning expired nonces failed (%s)", type(failure).__name__)

    def prune(self, now_us: int) -> int:
        with self.engine.begin() as connection:
            return connection.execute(
                delete(SignatureNonceRow).where(SignatureNonceRow.expires_at_us <= now_us)
            ).rowcount

    async def claim(self, terminal_id: str, nonce: str, now_us: int) -> bool:
        try:
            return await asyncio.wrap_future(self._claims().enqueue((terminal_id, nonce, now_us)))
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
