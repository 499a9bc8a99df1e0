"""Leases on claimed requests: renewal by the worker, requeue when they run out, adoption of a
dead node's queue. Together they make execution at-least-once: work held by a node that dies
returns to a queue once its lease expires; the fencing in PUSH keeps a late worker from streaming
next to the new one, and the origin drops chunks it already delivered."""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from .keys import KeySpace
from .records import Claimed
from .scripts import Scripts


class Leases:
    def __init__(self, client: aioredis.Redis, keys: KeySpace, scripts: Scripts) -> None:
        self.r = client
        self.k = keys
        self.s = scripts

    async def renew(self, worker: str, held: Iterable[Claimed], lease_s: float) -> list[str]:
        """Extend the leases `worker` holds; returns the rids it lost (stop executing those)."""
        args: list[object] = [self.k.prefix, worker, int(lease_s * 1000)]
        n = 0
        for c in held:
            args += [c.rid, c.attempt]
            n += 1
        if n == 0:
            return []
        return list(await self.s.renew(keys=[self.k.stats], args=args))

    async def reap(self, fallback: str = "", fallback_shard: int = 0, limit: int = 200) -> int:
        """Requeue requests whose lease expired; returns how many."""
        return int(
            await self.s.reap(
                keys=[self.k.stats], args=[self.k.prefix, limit, fallback, fallback_shard]
            )
        )

    async def adopt(self, dead: str, dead_shard: int, me: str, my_shard: int) -> int:
        """Move (up to scripts.MAX_MOVE of) a dead node's queue onto mine; 0 when dead == me."""
        return int(
            await self.s.adopt(
                keys=[self.k.stats], args=[self.k.prefix, dead, dead_shard, me, my_shard]
            )
        )

    async def held(self) -> int:
        return int(await self.r.zcard(self.k.leases))
