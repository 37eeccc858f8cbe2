"""Per-process caches of the database look-ups every request needs, refreshed ahead of their TTL.

The API trusts a key's look-up (`api.auth`), a terminal's registered signing key
(`api.signatures`) and the payment apps' receipt secrets (`engine.store.apps`) for a few seconds,
so a revocation, a moved terminal, a new signing key or a rotated secret reaches every API process
within that TTL. Looked up again by the first request that finds its
entry stale, every busy key cost a worker-thread hop and a read every TTL, and the terminals that
had started together found their entries stale together: their requests queued behind those
look-ups (with 64 terminals posting flat out, every ~2 s a half-second of answers came at 3 to 4
times the median, the p99 of single posts).

`RefreshingCache` keeps the guarantee (nothing is served looked up longer ago than the TTL) and
takes the look-ups off the requests: one thread per cache looks up again, in one query per batch,
every entry a request used since it was loaded once it is half the TTL old, so busy keys are
found fresh. An entry no request used since it was loaded is left to go stale (the next request
looks it up itself, as before), and so is every entry of a refresh that failed (the database
away: requests then look up themselves and answer 503 as before). A drop (a revocation or a key
change through this process) is not undone by a look-up that began before it, the refresher's
or a request's (`stamp` before the look-up, `put(..., stamp)` after), and an entry's age counts
from the start of the look-up that brought it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

REFRESH_BATCH = 500  # keys per look-up query
REFRESH_INTERVAL_MIN_S = 0.1  # however short the TTL, the thread wakes at most ten times a second


class Stamp(NamedTuple):
    """When a look-up began, and how many drops the cache had seen by then."""

    at: float
    drops: int


class _Entry(Generic[V]):
    __slots__ = ("value", "loaded_at", "used")

    def __init__(self, value: V, loaded_at: float) -> None:
        self.value = value
        self.loaded_at = loaded_at
        self.used = False  # a request read it since it was loaded


class RefreshingCache(Generic[K, V]):
    """Values looked up by key, trusted for `ttl_s` after their look-up; at most `size_max`, least
    recently used first out. `lookup_many(keys)` returns the value of every key it finds (a key it
    does not return is gone: its entry is dropped). An entry older than the TTL is still returned
    (marked stale): what it says of the past is the caller's to use or not."""

    def __init__(
        self,
        ttl_s: float,
        lookup_many: Callable[[Sequence[K]], Mapping[K, V]],
        *,
        size_max: int,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.lookup_many = lookup_many
        self.size_max = size_max
        self.name = name
        self._clock = clock
        self._entries: collections.OrderedDict[K, _Entry[V]] = collections.OrderedDict()
        self._drops = 0  # drops so far: a look-up that began before one is not cached
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the requests' side --------------------------------------------------

    def get(self, key: K) -> tuple[V, bool] | None:
        """(the value, whether it is fresh), or None for a key not cached."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            entry.used = True
            return entry.value, self._clock() - entry.loaded_at < self.ttl_s

    def stamp(self) -> Stamp:
        """Taken before a look-up whose answer is then `put`."""
        with self._lock:
            return Stamp(self._clock(), self._drops)

    def put(self, key: K, value: V, stamp: Stamp | None = None) -> None:
        """Cache `value`, looked up since `stamp` (else just now); not if a drop came after the stamp."""
        with self._lock:
            if stamp is not None and stamp.drops != self._drops:
                return  # the look-up may predate a revocation: the next request looks up again
            self._entries[key] = _Entry(value, self._clock() if stamp is None else stamp.at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size_max:
                self._entries.popitem(last=False)
        self._start()

    def drop(self, key: K) -> None:
        """Forget `key` because it changed (a revocation, a new signing key): look-ups already
        under way are not cached either."""
        with self._lock:
            self._drops += 1
            self._entries.pop(key, None)

    def discard(self, key: K) -> None:
        """Forget `key` because its look-up found nothing (an unknown key: nothing else is stale)."""
        with self._lock:
            self._entries.pop(key, None)

    def drop_where(self, condition: Callable[[V], bool]) -> None:
        """`drop` of every entry whose value meets `condition`."""
        with self._lock:
            self._drops += 1
            for key in [k for k, e in self._entries.items() if condition(e.value)]:
                del self._entries[key]

    # -- the refresher's side ------------------------------------------------

    def due(self) -> list[K]:
        """Keys of entries used since their look-up and at least half the TTL old."""
        horizon = self._clock() - self.ttl_s / 2
        with self._lock:
            return [k for k, e in self._entries.items() if e.used and e.loaded_at <= horizon]

    def refresh(self) -> int:
        """Look up every due entry again (one query per `REFRESH_BATCH` keys); returns how many were
        looked up. A failed look-up leaves its entries as they were, to go stale."""
        keys = self.due()
        for start in range(0, len(keys), REFRESH_BATCH):
            batch = keys[start : start + REFRESH_BATCH]
            with self._lock:
                seen = {k: self._entries[k] for k in batch if k in self._entries}
            if not seen:
                continue
            loaded_at = self._clock()
            try:
                found = self.lookup_many(list(seen))
            except Exception as failure:  # noqa: BLE001 - the requests look up themselves meanwhile
                log.warning("%s: refreshing %d entries failed (%s)", self.name, len(seen), type(failure).__name__)
                with self._lock:
                    for entry in seen.values():
                        entry.used = False  # not tried again until a request uses it again
                return start
            with self._lock:
                for key, entry in seen.items():
                    if self._entries.get(key) is not entry:
                        continue  # dropped or put by a request meanwhile: its word stands
                    if key in found:
                        self._entries[key] = _Entry(found[key], loaded_at)  # keeps its place in the LRU order
                    else:
                        del self._entries[key]
        return len(keys)

    def _start(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:  # started under the lock, so `close` never joins a thread not yet started
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=f"refresh-{self.name}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Every quarter TTL, on fixed deadlines: an entry is at most half the TTL old when it
        # becomes due and is looked up again within a quarter more (plus the query), so a busy
        # key is found fresh while refreshes work.
        interval = max(self.ttl_s / 4, REFRESH_INTERVAL_MIN_S)
        deadline = time.monotonic() + interval
        while not self._stop.wait(max(0.0, deadline - time.monotonic())):
            deadline = max(deadline + interval, time.monotonic())
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the thread must outlive any one failure
                log.exception("%s: refresh failed", self.name)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1)  # a refresh stuck on the database does not hold up the shutdown
