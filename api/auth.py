"""Bearer authentication and rate limits (SPEC §6, §9.3, §9.4).

`Auth.principal` authenticates every `/v1` request: it is called by
`api.deps.principal`, the dependency every `/v1` route reaches through its role
check `api.deps.role(...)`. For each request it:

1. reads `Authorization: Bearer <key>` and hashes the key (SHA-256);
2. takes the key from this process's principal cache when it was looked up
   less than `SETAPAY_KEY_CACHE_TTL_S` (≤ 5 s) ago, else looks it up in the
   database (`engine.store.keys.Keys.lookup`, in a worker thread): unknown and
   revoked keys are refused, and a terminal key's merchant is the terminal's
   merchant as the row says now. So a revocation, a deleted key row or a moved
   terminal reaches every API process within the TTL. A key in use is looked up
   again ahead of its TTL by the cache's own thread, many keys in one query
   (`engine.store.caches.RefreshingCache`), so its requests do not wait for look-ups;
   A request that may change something (any method but GET, HEAD and OPTIONS) of an admin or
   finance key looks its key up again whatever the cache holds: an admin or finance key revoked
   in one process made keys and grants in another until its TTL ran out (helper-103), and the
   keys it made outlived it. A terminal's payments are checked against revocations again under
   the ledger's lock (`CatalogSnapshot.revoked_keys`), so its posts keep the cache, as do an
   app's quotes;
3. checks the expiry against the engine's clock on every request (never cached);
4. counts the request against the key's limit (`SETAPAY_RATE_LIMIT_PER_KEY`);
5. notes the use, written to `api_key.last_used_at_us` by a background thread
   at most once a minute per key.

Failed authentications are counted per client address
(`SETAPAY_AUTH_FAILURES_PER_IP`). A key this process has never seen succeed
is looked up only while its address is under that limit: over it, the answer
is 429 before any database look-up. Such a key is counted as a failure before
its look-up (an atomic increment, in Redis shared by every process) and the
count is given back when it proves good, so however many guesses arrive at
once, from however many processes, at most `limit` of them per window reach
the database. Keys that authenticated here before
(still in the cache, even if stale) are looked up regardless, so a terminal
behind the same NAT as a misbehaving one keeps working.

Limits count in fixed windows starting at the first hit, in Redis when
`SETAPAY_REDIS_URL` is set (shared by every process), in process memory
otherwise, and in process memory for a few seconds whenever Redis fails.
"""

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Literal, overload

import anyio
from fastapi import Request
from limits.storage import MemoryStorage
from redis.exceptions import RedisError

from engine.errors import EngineError
from engine.settings import Settings
from engine.store import db
from engine.store.caches import RefreshingCache
from engine.store.config import Principal
from engine.store.keys import LAST_USED_RESOLUTION_US, KeyLookup, Keys, hash_key
from engine.store.redis_loop import blocking_pool

if TYPE_CHECKING:
    from limits.aio.strategies import FixedWindowRateLimiter as AsyncFixedWindowRateLimiter
    from limits.util import WindowStats

    from api.signatures import TerminalSignatures
    from engine.clock import Clock

log = logging.getLogger(__name__)

__all__ = ["Auth", "Principal", "RateLimited"]

SECRET_LENGTH_MAX = 256
PRINCIPAL_CACHE_SIZE_MAX = 10_000
# Methods that change nothing: a cached key answers them (`Auth.authenticate`'s `fresh`).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# The roles whose other requests look their key up again: those that make keys, grant points,
# settle and configure. A terminal's payments are checked under the ledger's lock; an app's and a
# merchant's requests (quotes: the app's hot path) change no one's rights or money.
FRESH_ROLES = frozenset({"admin", "finance"})
# A terminal's closeouts are written straight, not under the ledger's lock where its payments are
# checked again: a terminal key revoked through one process posted them on another until its
# cache there expired (helper-105, helper-106). They look the key up again too.
FRESH_TERMINAL_PATH_SUFFIX = "/closeouts"
LAST_USED_FLUSH_INTERVAL_S = 1.0
REDIS_RETRY_AFTER_FAILURE_S = 5.0
# The rate limit's Redis: connecting, answering, and waiting for a pooled connection in a rush.
RATE_LIMIT_REDIS_TIMEOUT_S = 0.5
SWEEP_EVERY_S = 1.0  # how often the in-memory rate-limit counts drop keys whose window ended
SWEEP_KEYS_MAX = 2_000  # keys dropped by one sweep at most (the next count goes on)


class RateLimited(EngineError):
    """429 `rate_limited`, with the seconds to wait in `Retry-After`."""

    def __init__(self, retry_after_s: int, detail: str) -> None:
        super().__init__("rate_limited", detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class SweptMemoryStorage(MemoryStorage):
    """`limits`' in-memory storage with its expired keys swept on the caller's thread, at most once
    every `SWEEP_EVERY_S`, instead of by a timer thread.

    `MemoryStorage` starts a `threading.Timer` thread on every count after the last one ended
    (every 10 ms under load), and the event loop that counts waits for each new thread to start:
    measured under single posts, ~10% of the loop's time (docs/BENCHMARKS.md). A fixed window's
    count is expired when it is read (`get`, which `incr` calls first), so the timer only freed
    the keys no one counts again (an address that failed once); the sweep frees those. This
    replaces the library's private hook (`__schedule_expiry`, name-mangled);
    `tests/api/test_rate_limit_storage.py` fails if the library no longer has it."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()  # the one the constructor started
        self._sweep_at = time.monotonic() + SWEEP_EVERY_S

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the library's private name
        now = time.monotonic()
        if now < self._sweep_at:
            return
        # A storage counts one limit, so one window length: windows end in the order they started
        # (`incr` sets a key's expiry when its window starts, after `get` dropped the ended one),
        # which is the order of `expirations`. The sweep reads up to the first window still open
        # and drops at most SWEEP_KEYS_MAX at a time (the rest at the next count): a flood of
        # addresses never holds the loop for long.
        ended: list[str] = []
        wall = time.time()
        for key, expiry in self.expirations.items():
            if expiry > wall or len(ended) == SWEEP_KEYS_MAX:
                break
            ended.append(key)
        if len(ended) < SWEEP_KEYS_MAX:
            self._sweep_at = now + SWEEP_EVERY_S
        for key in ended:
            self.get(key)  # drops the key: its window has ended


class Limit:
    """One rate limit ("50/second") over fixed windows, in Redis when configured, else in memory."""

    def __init__(self, spec: str, redis_url: str | None, namespace: str) -> None:
        from limits import parse
        from limits.strategies import FixedWindowRateLimiter

        self.item = None if spec == "off" else parse(spec)
        self.namespace = namespace
        self.redis_url = redis_url
        self._memory = FixedWindowRateLimiter(SweptMemoryStorage())
        self._per_loop: dict[int, tuple[asyncio.AbstractEventLoop, AsyncFixedWindowRateLimiter]] = {}
        self._redis_down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self.item is not None

    def _redis(self, redis_url: str) -> "AsyncFixedWindowRateLimiter":
        """One asyncio limiter per event loop: a Redis connection belongs to the loop that opened it."""
        from limits.aio.strategies import FixedWindowRateLimiter
        from limits.storage import storage_from_string

        loop = asyncio.get_running_loop()
        found = self._per_loop.get(id(loop))
        if found is None or found[0] is not loop:
            if len(self._per_loop) > 8:
                self._per_loop.clear()
            storage = storage_from_string(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="setapay:limits",
                # The redispy bridge takes a pool of its own (`RedispyBridge.use_basic`); the
                # options' annotation names only scalars.
                connection_pool=blocking_pool(redis_url, RATE_LIMIT_REDIS_TIMEOUT_S),  # type: ignore[arg-type]
            )
            found = (loop, FixedWindowRateLimiter(storage))
            self._per_loop[id(loop)] = found
        return found[1]

    @overload
    async def _call(self, name: Literal["hit", "test"], identifier: str) -> bool: ...
    @overload
    async def _call(self, name: Literal["get_window_stats"], identifier: str) -> "WindowStats": ...
    async def _call(self, name: str, identifier: str) -> "bool | WindowStats":
        """`name` of the fixed-window limiter (`hit`, `test`, `get_window_stats`), on Redis or in memory."""
        item = self.item
        assert item is not None, "only called for a limit that is on"
        if self.redis_url and time.monotonic() >= self._redis_down_until:
            try:
                limiter = self._redis(self.redis_url)
                answer: bool | WindowStats = await getattr(limiter, name)(item, self.namespace, identifier)
                return answer
            except (RedisError, OSError) as exc:  # shared state for limits, never a reason to fail a request
                log.warning(
                    "rate limit storage unavailable (%s: %s); counting in this process for %s s",
                    type(exc).__name__,
                    exc,
                    REDIS_RETRY_AFTER_FAILURE_S,
                )
                self._redis_down_until = time.monotonic() + REDIS_RETRY_AFTER_FAILURE_S
        answer = getattr(self._memory, name)(item, self.namespace, identifier)
        return answer

    async def hit(self, identifier: str) -> bool:
        """Count one (atomically, in Redis across processes); False when that went over the limit."""
        return True if self.item is None else await self._call("hit", identifier)

    async def test(self, identifier: str) -> bool:
        """Whether one more would still be within the limit (counts nothing)."""
        return True if self.item is None else await self._call("test", identifier)

    async def retry_after_s(self, identifier: str) -> int:
        stats = await self._call("get_window_stats", identifier)
        return max(1, math.ceil(stats.reset_time - time.time()))


class LastUsed:
    """Notes key uses and writes them from a background thread, at most once a minute per key per
    process (and `Keys.touch` refuses rewrites within a minute across processes)."""

    def __init__(self, keys: Keys, clock: "Clock") -> None:
        self.keys = keys
        self.clock = clock
        self._noted: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._noted.get(key_id, -math.inf) < LAST_USED_RESOLUTION_US / 1e6:
                return
            if len(self._noted) > PRINCIPAL_CACHE_SIZE_MAX:
                horizon = now - LAST_USED_RESOLUTION_US / 1e6
                self._noted = {k: t for k, t in self._noted.items() if t >= horizon}
            self._noted[key_id] = now
            self._pending[key_id] = self.clock.now_us()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="key-last-used", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        try:
            self.keys.touch(pending)
        except Exception:  # a missed note is not worth failing anything; the next use notes again
            log.warning("could not note key use", exc_info=True)
            with self._lock:
                for key_id in pending:
                    self._noted.pop(key_id, None)

    def _run(self) -> None:
        while not self._stop.wait(LAST_USED_FLUSH_INTERVAL_S):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self.flush()


class Auth:
    def __init__(
        self, keys: Keys, settings: Settings, clock: "Clock", signatures: "TerminalSignatures | None" = None
    ) -> None:
        self.keys = keys
        self.signatures = signatures  # api.signatures.TerminalSignatures (SPEC §9.2), when wired
        self.clock = clock
        # Key look-ups by SHA-256 (`engine.store.caches`): a stale entry is looked up again before it is
        # trusted, but still says "this key authenticated here before".
        self.cache: RefreshingCache[str, KeyLookup] = RefreshingCache(
            settings.key_cache_ttl_s, keys.lookup_many, size_max=PRINCIPAL_CACHE_SIZE_MAX, name="api-keys"
        )
        self.per_key = Limit(settings.rate_limit_per_key, settings.redis_url, "key")
        self.failures = Limit(settings.auth_failures_per_ip, settings.redis_url, "auth-failure")
        self.last_used = LastUsed(keys, clock)
        self._in_flight: dict[str, concurrent.futures.Future[KeyLookup | None]] = {}
        self._in_flight_lock = threading.Lock()

    def close(self) -> None:
        self.last_used.close()
        self.cache.close()
        if self.signatures is not None:
            self.signatures.close()

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache at once (other processes drop it within the TTL)."""
        self.cache.drop_where(lambda lookup: lookup.principal.key_id == key_id)

    async def _over_failure_limit(self, address: str) -> RateLimited:
        return RateLimited(
            await self.failures.retry_after_s(address), "too many failed authentications from this address"
        )

    async def failed(self, address: str) -> EngineError:
        """Count a failed authentication: 401, or 429 once the address is over its limit."""
        if not await self.failures.hit(address):
            return await self._over_failure_limit(address)
        return EngineError("unauthenticated")

    async def _lookup(self, digest: str) -> KeyLookup | None:
        stamp = self.cache.stamp()  # a revocation here while it runs keeps its answer out of the cache
        signatures = self.signatures
        signing_stamp = signatures.stamp() if signatures is not None else None
        try:
            found = await anyio.to_thread.run_sync(self.keys.lookup, digest)
        except db.UNREACHABLE as exc:
            raise EngineError("service_unavailable", type(exc).__name__) from None
        if found is None:
            self.cache.discard(digest)
            return None
        self.cache.put(digest, found, stamp)
        terminal_id = found.principal.terminal_id
        if signatures is not None and signing_stamp is not None and found.principal.role == "terminal" and terminal_id:
            # A terminal's signing key came with its key (one read): its request checks it next.
            signatures.found(terminal_id, found.terminal_public_key, signing_stamp)
        return found

    async def _first_lookup(self, digest: str, address: str) -> KeyLookup:
        """Look up a key never seen here, only while its address is under its failure limit.

        The address's count is tested (not consumed) before the look-up and counted only
        when the key proves unknown, so the first requests of many good keys from one
        address at once (a launch rush behind one NAT, every terminal after a restart)
        are never refused for failures that did not happen. Guessed keys reach the
        database at most the limit plus the requests in flight at once from that
        address. Concurrent first requests with one key share one look-up.
        """
        for _ in range(3):
            with self._in_flight_lock:
                shared = self._in_flight.get(digest)
                if shared is None:
                    mine = self._in_flight[digest] = concurrent.futures.Future()
            if shared is not None:
                try:
                    found = await asyncio.wrap_future(shared)
                except RateLimited:
                    continue  # the leader's address was over its limit; this request's may not be
                if found is None:
                    raise await self.failed(address)
                return found
            try:
                if not await self.failures.test(address):
                    raise await self._over_failure_limit(address)
                found = await self._lookup(digest)
                mine.set_result(found)
            except BaseException as exc:
                mine.set_exception(exc)
                raise
            finally:
                with self._in_flight_lock:
                    self._in_flight.pop(digest, None)
            if found is None:
                raise await self.failed(address)
            return found
        raise await self._over_failure_limit(address)

    async def principal(self, request: Request) -> Principal:
        """The caller of `request`, else a 401, 429 or 503 `EngineError` (`api.deps.principal` is the
        dependency that calls this and documents the bearer scheme in the OpenAPI)."""
        scheme, _, credentials = (request.headers.get("authorization") or "").partition(" ")
        address = request.client.host if request.client else "unknown"
        secret = credentials.strip() if scheme.lower() == "bearer" else ""  # RFC 9110: the scheme's case is free
        fresh = frozenset() if request.method in SAFE_METHODS else FRESH_ROLES
        if fresh and request.url.path.endswith(FRESH_TERMINAL_PATH_SUFFIX):
            fresh |= {"terminal"}
        p = await self.authenticate(secret, address, counted=False, fresh=fresh)
        counted = False

        async def admitted() -> None:
            nonlocal counted
            counted = True
            await self.count(p)

        if p.role == "terminal" and self.signatures is not None:
            # Every route a terminal key can call: its request signature, if the terminal has a key.
            # The key's rate is counted once the signature holds, before its nonce is claimed: a
            # stolen bearer key alone cannot spend a signing terminal's rate (and lock it out with
            # 429s), and a request refused for the rate may be sent again as it is. A signature
            # refused is a failed authentication of the address (SPEC §9.4), so bad or replayed
            # signatures are limited even though they spend no key's rate.
            assert p.terminal_id is not None, "a terminal key names its terminal"
            try:
                await self.signatures.verify(request, p.terminal_id, admitted)
            except EngineError as refused:
                if refused.status == 401 and not await self.failures.hit(address):
                    raise await self._over_failure_limit(address) from None
                raise
        if not counted:
            await self.count(p)
        self.last_used.note(p.key_id)
        return p

    async def count(self, p: Principal) -> None:
        """Count a request of `p`'s key against its rate, else a 429 `RateLimited`."""
        if not await self.per_key.hit(p.key_id):
            raise RateLimited(await self.per_key.retry_after_s(p.key_id), "this key is over its request rate")

    async def authenticate(
        self, secret: str, address: str, counted: bool = True, fresh: frozenset[str] = frozenset()
    ) -> Principal:
        """The key `secret` sent from `address` (steps 2 to 4 above), else a 401 or 429 `EngineError`;
        also the check of a key entered on the pages' sign-in form (api/routers/ui.py). With
        `counted`, the request is counted against the key's rate (`principal` counts it itself,
        once the request's signature is checked). A key of a role in `fresh` (for a request that
        may change something: `FRESH_ROLES`) is looked up again even when cached."""
        if not secret or len(secret) > SECRET_LENGTH_MAX:
            raise await self.failed(address)
        digest = hash_key(secret)
        cached = self.cache.get(digest)
        if cached is None:
            found = await self._first_lookup(digest, address)
        elif cached[1] and cached[0].principal.role not in fresh:
            found = cached[0]
        else:
            looked_up = await self._lookup(digest)  # known here: not held back by its address's failures
            if looked_up is None:
                raise await self.failed(address)
            found = looked_up
        if found.expires_at_us is not None and found.expires_at_us <= self.clock.now_us():
            raise await self.failed(address)
        p = found.principal
        if counted:
            await self.count(p)
        return p
