"""One asyncio Redis client per event loop, for the caches and stores that talk to Redis from
request handlers: a connection belongs to the loop that opened it, and a process may run
several loops (uvicorn's, a test client's).

Every such client draws on a `blocking_pool`: redis-py's default pool raises
`MaxConnectionsError` at once when its 100 connections are in use, which a rush of requests on
one event loop reaches (a race probe's 300 signed posts at once: a fifth of them 503 from the
nonce store, and the per-key rate limit counted per process for 5 s). A blocking pool makes a
request wait for a connection instead, up to the client's timeout, as it waits for an answer."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

CLIENT_TIMEOUT_S = 1.0
# Connections one pool (one user of Redis, on one event loop) holds at most; a request beyond
# them waits for one. Redis serves each command in microseconds, so a few dozen carry a rush.
POOL_CONNECTIONS_MAX = 64


def blocking_pool(url: str, timeout_s: float) -> redis.asyncio.BlockingConnectionPool:
    """A pool of at most `POOL_CONNECTIONS_MAX` connections to `url`, where a request waits up to
    `timeout_s` for a free one (then `redis.ConnectionError`), and each connection times out
    connecting and answering after `timeout_s`."""
    import redis.asyncio as redis

    return redis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS_MAX,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


class LoopClients:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[int, redis.asyncio.Redis] = {}

    @property
    def client(self) -> redis.asyncio.Redis:
        import redis.asyncio as redis

        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients[loop] = redis.Redis(connection_pool=blocking_pool(self.url, CLIENT_TIMEOUT_S))
        return self._clients[loop]
