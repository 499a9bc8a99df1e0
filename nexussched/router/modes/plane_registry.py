"""Node ownership, liveness and the cluster view of a plane dispatcher (a mixin of
PlaneDispatcher): which backends this replica drives, keep-alives, adopting the work of dead
nodes, and the `/scheduler` view."""

from __future__ import annotations

import asyncio
import logging
import math
import time

from aiohttp import web

from ...plane import (
    NodeInfo,
    crc16,
    shard_of,
)
from .plane_node import ERRORS, ORIGIN_KEEPALIVES, NodeWorker

log = logging.getLogger("nexussched.router.plane")


class PlaneRegistry:
    """Registry rounds, the janitor and the cluster view; state lives on the dispatcher."""

    # ---- registry: ownership of nodes, liveness ---------------------------------------------------
    async def _registry_round(self) -> None:
        p = self.params
        reg = self.plane.registry
        backends = self.router.backends
        await reg.heartbeat_replica(
            self.replica, ORIGIN_KEEPALIVES * p.keepalive, p.reader_parallel
        )
        live = await reg.live_replicas()
        n = len(backends)
        share = math.ceil(n / max(1, len(live)))
        start = crc16(self.replica) % n if n else 0
        for k in range(n):
            i = (start + k) % n
            b = backends[i]
            w = self.workers.get(i)
            if w is not None:
                if not b.healthy:
                    w.stop()
                    del self.workers[i]
                    await reg.release(w.name, self.replica)
                    log.warning("released node %s: backend unhealthy", w.name)
                elif not await reg.own(w.name, self.replica, p.keepalive):
                    w.stop()
                    del self.workers[i]
                    log.warning("lost node %s to another replica", w.name)
            elif b.healthy and len(self.workers) < share:
                if await reg.own(b.name, self.replica, p.keepalive):
                    self.workers[i] = NodeWorker(self, i)
                    await self.plane.loads.join(b.name)
        for w in self.workers.values():
            await reg.publish(self.node_info(w))
        self.alive_nodes = [x.name for x in await reg.nodes() if x.alive]

    def node_info(self, w: NodeWorker) -> NodeInfo:
        return NodeInfo(
            w.name, w.role, w.shard, w.backend.url, self.replica, sum(v for v, _ in w.load.values())
        )

    def _healthy_backends(self) -> set[int]:
        return {i for i, b in enumerate(self.router.backends) if b.healthy}

    async def _registry_loop(self) -> None:
        # A round every keepalive/3 s, and at once when a backend has come into rotation since
        # the last round: an engine that starts after its router should not wait ~10 s to serve.
        every = self.params.keepalive / 3.0
        last = time.monotonic()
        seen = self._healthy_backends()
        while True:
            await asyncio.sleep(min(every, 0.5))
            healthy = self._healthy_backends()
            if time.monotonic() - last < every and healthy <= seen:
                seen = healthy
                continue
            last = time.monotonic()
            seen = healthy
            try:
                await self._registry_round()
                self.warn_loop.ok()
            except ERRORS as e:
                self.warn_loop.fail(e)

    async def _janitor_loop(self) -> None:
        p = self.params
        every = max(0.2, p.lease / 2.0)
        last_adopt = 0.0
        while True:
            await asyncio.sleep(every)
            mine = [w for w in self.workers.values() if w.backend.healthy and w.role != "decode"]
            fb = mine[0] if mine else None
            try:
                moved = await self.plane.leases.reap(fb.name if fb else "", fb.shard if fb else 0)
                if moved:
                    log.warning("requeued %d requests whose lease expired", moved)
                now = time.monotonic()
                if fb is not None and now - last_adopt > p.keepalive / 3.0:
                    last_adopt = now
                    await self._tidy(fb)
            except ERRORS as e:
                self.warn_loop.fail(e)

    async def _tidy(self, fb: NodeWorker) -> None:
        """Dead nodes (keep-alive expired): adopt their queued work, drop them from the load
        table, and forget their registry entry once it is older than expire_period."""
        p = self.params
        plane = self.plane
        for node, score in (await plane.loads.scores()).items():
            if await plane.registry.owner(node) is not None:
                continue
            if score > 0:
                n = await plane.leases.adopt(
                    node, shard_of(node, p.load_shards_num), fb.name, fb.shard
                )
                if n:
                    log.warning("adopted %d requests of dead node %s", n, node)
            else:
                await plane.loads.drop(node)
        now = await plane.registry.server_time()
        for info in await plane.registry.nodes():
            if not info.alive and now - info.ts > p.expire_period:
                await plane.registry.forget(info.name)
        for gone in await plane.registry.sweep_replicas((ORIGIN_KEEPALIVES + 1) * p.keepalive):
            log.warning("replica %s is gone: deleted its response lists", gone)

    # ---- the cluster view -------------------------------------------------------------------
    async def cluster_view(self) -> dict:
        reg = self.plane.registry
        nodes = await reg.nodes()
        scores = await self.plane.loads.scores()
        return {
            "mode": self.mode_name,
            "topic": self.params.topic,
            "replica": self.replica,
            "replicas": await reg.live_replicas(),
            "nodes": [
                {
                    "name": x.name,
                    "alive": x.alive,
                    "owner": x.owner if x.alive else None,
                    "role": x.role,
                    "shard": x.shard,
                    "url": x.url,
                    "queued": int(scores.get(x.name, 0)),
                    "load": x.load,
                }
                for x in nodes
            ],
            "leases": await self.plane.leases.held(),
            "stats": await self.plane.stats(),
            "local": {
                **self.counters,
                "driving": sorted(w.name for w in self.workers.values()),
                "held": sum(len(w.held) for w in self.workers.values()),
            },
        }

    async def _view_handler(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.cluster_view())
        except ERRORS as e:
            return self._plane_error(e).response()
