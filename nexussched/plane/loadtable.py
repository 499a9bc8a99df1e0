"""The sharded load table: a sorted set per shard, node -> requests queued on it."""

from __future__ import annotations

import redis.asyncio as aioredis

from .keys import KeySpace, shard_of


class LoadTable:
    def __init__(self, client: aioredis.Redis, keys: KeySpace, shards: int = 1) -> None:
        self.r = client
        self.k = keys
        self.shards = max(1, shards)

    def shard_of(self, node: str) -> int:
        return shard_of(node, self.shards)

    async def heavy(self, shard: int, min_score: float, limit: int = 50) -> list[tuple[str, float]]:
        """Nodes of one shard whose score is at least min_score (FastDeploy's lookup)."""
        rows = await self.r.zrangebyscore(
            self.k.load(shard), min_score, "+inf", start=0, num=limit, withscores=True
        )
        return [(m, float(s)) for m, s in rows]

    async def scores(self) -> dict[str, float]:
        """Every node's score across shards."""
        pipe = self.r.pipeline(transaction=False)
        for s in range(self.shards):
            pipe.zrange(self.k.load(s), 0, -1, withscores=True)
        out: dict[str, float] = {}
        for rows in await pipe.execute():
            for m, s in rows:
                out[m] = float(s)
        return out

    async def join(self, node: str) -> None:
        """Make a node visible in its shard with its current queue length as score."""
        n = await self.r.llen(self.k.queue(node))
        await self.r.zadd(self.k.load(self.shard_of(node)), {node: n})

    async def drop(self, node: str) -> None:
        """Remove a node (dead, nothing queued); a live node re-adds itself at its next claim."""
        await self.r.zrem(self.k.load(self.shard_of(node)), node)
