"""The state plane bundled for one topic: one client, its scripts and the typed views."""

from __future__ import annotations

import redis.asyncio as aioredis

from .client import RedisAddress, connect
from .keys import KeySpace
from .leases import Leases
from .loadtable import LoadTable
from .queues import RequestQueues, ResponseQueues
from .registry import Registry
from .scripts import Scripts


class Plane:
    def __init__(
        self,
        client: aioredis.Redis,
        topic: str = "default",
        shards: int = 1,
        resp_ttl_s: float = 900.0,
        addr: RedisAddress | None = None,
    ) -> None:
        self.client = client
        self.addr = addr
        self.keys = KeySpace(topic)
        self.scripts = Scripts.register(client)
        self.queues = RequestQueues(client, self.keys, self.scripts)
        self.responses = ResponseQueues(client, self.keys, self.scripts, resp_ttl_s)
        self.loads = LoadTable(client, self.keys, shards)
        self.registry = Registry(client, self.keys, self.scripts)
        self.leases = Leases(client, self.keys, self.scripts)

    @classmethod
    async def open(
        cls,
        addr: RedisAddress,
        topic: str = "default",
        shards: int = 1,
        resp_ttl_s: float = 900.0,
        timeout: float = 5.0,
    ) -> Plane:
        """Connect (PlaneUnavailable with a one-line reason if Redis is unreachable)."""
        client = await connect(addr, timeout)
        return cls(client, topic, shards, resp_ttl_s, addr)

    async def stats(self) -> dict[str, int]:
        raw = await self.client.hgetall(self.keys.stats)
        return {k: int(v) for k, v in raw.items()}

    async def close(self) -> None:
        await self.client.aclose()
