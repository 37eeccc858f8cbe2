"""One asyncio Redis client per event loop, for the caches and stores that talk to Redis from
request handlers: a connection belongs to the loop that opened it, and a process may run
several loops (uvicorn's, a test client's)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio

CLIENT_TIMEOUT_S = 1.0


class LoopClients:
    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[int, redis.asyncio.Redis] = {}

    @property
    def client(self) -> redis.asyncio.Redis:
        import redis.asyncio as redis

        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients[loop] = redis.Redis.from_url(
                self.url, socket_timeout=CLIENT_TIMEOUT_S, socket_connect_timeout=CLIENT_TIMEOUT_S
            )
        return self._clients[loop]
