"""Node registry with keep-alives: which nodes exist, who drives them, and their reported load.

A node is alive while its keep-alive key ``node:<name>`` exists; the replica driving it renews
the key every third of the keep-alive period. Replicas register the same way (``replica:<id>``),
which lets the others count live replicas when they share out nodes.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from .keys import KeySpace
from .records import NodeInfo
from .scripts import Scripts


class Registry:
    def __init__(self, client: aioredis.Redis, keys: KeySpace, scripts: Scripts) -> None:
        self.r = client
        self.k = keys
        self.s = scripts

    async def server_time(self) -> float:
        sec, usec = await self.r.time()
        return sec + usec / 1e6

    # ---- replicas ----------------------------------------------------------------------------
    async def heartbeat_replica(self, replica: str, keepalive_s: float, lanes: int = 1) -> None:
        """Renew the replica's keep-alive and its entry in the replicas hash."""
        now_ms = int(await self.server_time() * 1000)
        pipe = self.r.pipeline(transaction=False)
        pipe.set(self.k.replica(replica), "1", px=int(keepalive_s * 1000))
        pipe.hset(self.k.replicas, replica, json.dumps({"t": now_ms, "lanes": int(lanes)}))
        await pipe.execute()

    async def drop_replica(self, replica: str) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(self.k.replica(replica))
        pipe.hdel(self.k.replicas, replica)
        await pipe.execute()

    async def live_replicas(self) -> list[str]:
        """Replicas whose keep-alive is current (one HGETALL and one EXISTS each; no SCAN)."""
        names = sorted(await self.r.hkeys(self.k.replicas))
        if not names:
            return []
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.exists(self.k.replica(n))
        alive = await pipe.execute()
        return [n for n, a in zip(names, alive, strict=True) if a]

    async def sweep_replicas(self, dead_after_s: float) -> list[str]:
        """Forget replicas whose keep-alive is gone and whose last heartbeat is older than
        dead_after_s, and delete their response lists (nobody will read them). Returns them."""
        raw = await self.r.hgetall(self.k.replicas)
        if not raw:
            return []
        names = sorted(raw)
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.exists(self.k.replica(n))
        alive = await pipe.execute()
        now_ms = int(await self.server_time() * 1000)
        gone = []
        for n, a in zip(names, alive, strict=True):
            try:
                rec = json.loads(raw[n])
                t, lanes = int(rec["t"]), max(1, min(int(rec["lanes"]), 1024))
            except (ValueError, KeyError, TypeError):
                t, lanes = 0, 1
            if a or now_ms - t < dead_after_s * 1000:
                continue
            for lane in range(lanes):
                await self.r.delete(self.k.resp(n, lane))
            await self.r.hdel(self.k.replicas, n)
            gone.append(n)
        return gone

    # ---- nodes -------------------------------------------------------------------------------
    async def own(self, node: str, owner: str, keepalive_s: float) -> bool:
        """Take or renew the node's keep-alive for `owner`; False if another replica drives it."""
        return (
            await self.s.own_node(
                keys=[self.k.stats], args=[self.k.prefix, node, owner, int(keepalive_s * 1000)]
            )
            == 1
        )

    async def release(self, node: str, owner: str) -> bool:
        return (
            await self.s.release_node(keys=[self.k.stats], args=[self.k.prefix, node, owner]) == 1
        )

    async def owner(self, node: str) -> str | None:
        return await self.r.get(self.k.node(node))

    async def publish(self, info: NodeInfo) -> None:
        """Write the node's registry entry (stamped with the Redis clock)."""
        info.ts = await self.server_time()
        await self.r.hset(self.k.nodes, info.name, info.to_json())

    async def nodes(self, expire_s: float | None = None) -> list[NodeInfo]:
        """All registered nodes; `alive` from the keep-alive key (and, when expire_s is given,
        from the age of the last report: FastDeploy splitwise's scheduler_expire_period)."""
        raw = await self.r.hgetall(self.k.nodes)
        names = sorted(raw)
        if not names:
            return []
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.get(self.k.node(n))
        owners = await pipe.execute()
        now = await self.server_time() if expire_s is not None else 0.0
        out = []
        for n, owner in zip(names, owners, strict=True):
            info = NodeInfo.from_json(raw[n])
            info.alive = owner is not None
            if owner is not None:
                info.owner = owner
            if expire_s is not None and now - info.ts > expire_s:
                info.alive = False
            out.append(info)
        return out

    async def forget(self, node: str) -> None:
        await self.r.hdel(self.k.nodes, node)
