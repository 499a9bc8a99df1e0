"""Per-node request queues and per-replica response queues."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from .keys import KeySpace, crc16
from .records import Chunk, Claimed
from .scripts import Scripts

TASK_GRACE_MS = 60_000  # a task's hash outlives its TTL this long, for late lookups


class RequestQueues:
    """Enqueue, claim (own queue first, else steal), give back, cancel."""

    def __init__(self, client: aioredis.Redis, keys: KeySpace, scripts: Scripts) -> None:
        self.r = client
        self.k = keys
        self.s = scripts

    async def enqueue(
        self,
        node: str,
        shard: int,
        rid: str,
        payload: str,
        origin: str,
        lane: int,
        ttl_s: float,
        attempt0: int = 0,
        origin_keepalive_s: float = 30.0,
    ) -> int:
        """Queue `rid` on `node`; the queue length after it, or 0 if `rid` is already known and
        live. A request that was cancelled, expired or dropped may be queued again: its attempts
        continue after max(attempt0, the last one the plane gave it). Renews the origin's
        keep-alive to at least origin_keepalive_s."""
        return int(
            await self.s.enqueue(
                keys=[self.k.stats],
                args=[
                    self.k.prefix,
                    node,
                    shard,
                    rid,
                    payload,
                    origin,
                    lane,
                    int(ttl_s * 1000),
                    TASK_GRACE_MS,
                    int(attempt0),
                    int(origin_keepalive_s * 1000),
                ],
            )
        )

    async def claim(
        self,
        me: str,
        my_shard: int,
        n_own: int,
        worker: str,
        lease_s: float,
        victim: str = "",
        victim_shard: int = 0,
        n_steal: int = 0,
        min_score: float = 0.0,
    ) -> list[Claimed]:
        """Up to n_own requests from my queue; if none, up to n_steal from `victim` when its
        score is still >= min_score. Each comes leased to `worker` for lease_s."""
        flat = await self.s.claim(
            keys=[self.k.stats],
            args=[
                self.k.prefix,
                me,
                my_shard,
                n_own,
                victim,
                victim_shard,
                n_steal,
                min_score,
                int(lease_s * 1000),
                worker,
            ],
        )
        out = []
        for i in range(0, len(flat), 7):
            rid, att, payload, origin, lane, home, stolen = flat[i : i + 7]
            out.append(Claimed(rid, int(att), payload, origin, int(lane), home, stolen == 1))
        return out

    async def unclaim(self, worker: str, claimed: Sequence[Claimed]) -> int:
        """Give back requests that did not fit, to the head of their home queues in order."""
        if not claimed:
            return 0
        args: list[object] = [self.k.prefix, worker]
        for c in claimed:
            args += [c.rid, c.attempt]
        return int(await self.s.unclaim(keys=[self.k.stats], args=args))

    async def handoff(self, c: Claimed, worker: str, node: str, shard: int, payload: str) -> bool:
        """Move a request this worker holds to the tail of `node`'s queue with a new payload."""
        return (
            await self.s.handoff(
                keys=[self.k.stats],
                args=[self.k.prefix, c.rid, c.attempt, worker, node, shard, payload],
            )
            == 1
        )

    async def cancel(self, rid: str) -> str:
        """Expire a request (TTL passed, client gone): returns the state it was in."""
        return str(await self.s.cancel(keys=[self.k.stats], args=[self.k.prefix, rid]) or "")

    async def state(self, rid: str) -> str | None:
        return await self.r.hget(self.k.task(rid), "st")

    async def states(self, rids: Sequence[str]) -> list[str | None]:
        if not rids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for rid in rids:
            pipe.hget(self.k.task(rid), "st")
        return list(await pipe.execute())

    async def length(self, node: str) -> int:
        return int(await self.r.llen(self.k.queue(node)))


def lane_of(rid: str, lanes: int) -> int:
    return crc16(rid) % max(1, lanes)


class ResponseQueues:
    """Workers push chunks (fenced by their lease); the origin reads its lanes in batches."""

    def __init__(
        self, client: aioredis.Redis, keys: KeySpace, scripts: Scripts, resp_ttl_s: float = 900.0
    ) -> None:
        self.r = client
        self.k = keys
        self.s = scripts
        self.resp_ttl_ms = int(resp_ttl_s * 1000)

    async def push(
        self, c: Claimed, worker: str, chunks: Sequence[Chunk], fin: bool, lease_s: float
    ) -> bool:
        """Append chunks for the origin. False: this attempt lost its lease, or its origin is
        gone (stop working). Two steps: the fence (a script in the topic's slot), then the
        events (the response list, in its own slot); `fence` and `append` separately let a
        caller retry each step on its own."""
        ok = await self.fence(c, worker, fin, lease_s)
        if ok and chunks:
            await self.append(c, chunks)
        return ok

    async def fence(self, c: Claimed, worker: str, fin: bool, lease_s: float) -> bool:
        code, origin, lane = await self.s.push(
            keys=[self.k.stats],
            args=[self.k.prefix, c.rid, c.attempt, worker, 1 if fin else 0, int(lease_s * 1000)],
        )
        if int(code) == -1:  # the origin is gone: its response list is garbage
            await self.r.delete(self.k.resp(origin, int(lane)))
        return int(code) == 1

    async def append(self, c: Claimed, chunks: Sequence[Chunk]) -> bool:
        key = self.k.resp(c.origin, c.lane)
        pipe = self.r.pipeline(transaction=False)
        pipe.rpush(key, *[ch.to_json() for ch in chunks])
        pipe.pexpire(key, self.resp_ttl_ms)
        await pipe.execute()
        return True

    async def read(self, replica: str, lane: int, batch: int, block_s: float) -> list[Chunk]:
        """Up to `batch` chunks; waits up to block_s when the lane is empty (one BLMPOP)."""
        got = await self.r.blmpop(
            block_s, 1, self.k.resp(replica, lane), direction="LEFT", count=batch
        )
        if not got:
            return []
        return [Chunk.from_json(x) for x in got[1]]
