"""The node side of FastDeploy's global (and splitwise) scheduler over the Redis plane: one
NodeWorker per backend this replica drives pulls work (its own queue, else stealing) and
executes it; ChunkWriter streams a claimed request's events back to its origin."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from ...plane import (
    PLANE_ERRORS,
    Chunk,
    Claimed,
    crc16,
    shard_of,
)
from ..errors import APIError
from ..policies.fastdeploy import (
    LOAD_COUNT,
    admit_count,
    choose_victim,
    engine_resources,
    lookup_shards,
    mini_batches,
    steal_candidates,
)
from .common import NodeState, NodeView, Payload

log = logging.getLogger("nexussched.router.plane")


if TYPE_CHECKING:
    from .global_mode import PlaneDispatcher

ERRORS = (*PLANE_ERRORS, RedisError)
GATE_POLL_S = 0.02  # a node whose engine is busy re-checks it this often (no Redis calls)
BELL_WAIT_S = 0.5  # an idle node blocks this long on the bells before looking again
RESYNC_S = 2.0  # how often the origin checks that Redis still knows its requests
MAX_ATTEMPTS = 4  # engine failures before a request is answered with an error
# A replica counts as a dead origin (its queued work dropped) after this many keep-alive periods
# without renewal: dropping a live origin's work is costly, so it gets more slack than a node.
ORIGIN_KEEPALIVES = 3
ATTEMPT_STRIDE = 1 << 20  # attempt ids of successive enqueues of one request never overlap


class Warn:
    """Log a recurring failure once per outage, and its recovery."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down = False

    def fail(self, e: BaseException) -> None:
        if not self.down:
            log.error("%s: %s", self.what, str(e).splitlines()[0] if str(e) else repr(e))
            self.down = True

    def ok(self) -> None:
        if self.down:
            log.warning("%s: recovered", self.what)
            self.down = False


class ChunkWriter:
    """Streams one claimed request's events to its origin: the first push goes at once, later
    events accumulate while a push is in flight (natural batching, at most writer_batch_size per
    call). A push refused by the plane (lease lost, origin gone) sets `fenced`: stop working on it.

    A push that cannot reach Redis is retried until the client's deadline (receipt + ttl), and no
    longer than progress_timeout after the first failure: by then the origin has given up too."""

    def __init__(
        self, d: PlaneDispatcher, c: Claimed, worker: str, node: str, t0: float | None = None
    ) -> None:
        self.d = d
        self.c = c
        self.worker = worker
        self.node = node
        self.buf: list[str] = []
        self.seq = 0
        self.status = 200
        self.content_type = ""
        self.fenced = False
        if t0 is None:
            try:
                t0 = float(json.loads(c.payload).get("t0") or time.time())
            except (ValueError, AttributeError, TypeError):
                t0 = time.time()
        self.deadline = t0 + d.params.ttl  # the client's, in wall time
        self._task: asyncio.Task | None = None

    @property
    def sent(self) -> int:
        """Events handed to the plane so far (0: the origin has seen nothing of this attempt)."""
        return self.seq

    def add(self, events: list[str]) -> None:
        if not events:
            return
        self.buf.extend(events)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _retry(self, what, first_fail: list[float]):
        """Run `what()` until it answers; None once the deadline passed."""
        p = self.d.params
        while True:
            try:
                async with self.d.writers:
                    return await what()
            except ERRORS as e:
                self.d.warn_push.fail(e)
                now = time.monotonic()
                if not first_fail:
                    first_fail.append(now)
                if time.time() > self.deadline or now - first_fail[0] > p.progress_timeout:
                    return None
                await asyncio.sleep(min(0.25, p.redis_timeout))

    async def _push(self, events: list[str], fin: bool) -> bool:
        ch = Chunk(
            self.c.rid,
            self.c.attempt,
            self.seq,
            events,
            fin,
            self.status,
            self.content_type,
            self.node,
        )
        self.seq += len(events)
        resp = self.d.plane.responses
        failed: list[float] = []
        # the fence and the events separately: a retried fin must not be refused as "done"
        ok = await self._retry(
            lambda: resp.fence(self.c, self.worker, fin, self.d.params.lease), failed
        )
        if not ok:
            return False
        if await self._retry(lambda: resp.append(self.c, [ch]), failed) is None:
            return False
        self.d.warn_push.ok()
        return True

    async def _flush(self) -> None:
        n = self.d.params.writer_batch_size
        while self.buf and not self.fenced:
            events = self.buf[:n]
            del self.buf[:n]
            if not await self._push(events, False):
                self.fenced = True

    async def drain(self) -> None:
        if self._task is not None:
            await self._task

    async def close(self) -> bool:
        """Send what is left with fin; False if the lease was lost."""
        await self.drain()
        if self.fenced:
            return False
        n = self.d.params.writer_batch_size
        while len(self.buf) > n:
            await self._flush_some(n)
            if self.fenced:
                return False
        events, self.buf = self.buf, []
        # shielded: once the fin's fence passed (the task is done) its events must reach the
        # origin even if this run is cancelled meanwhile (a renewal that saw it done, a client)
        ok = await asyncio.shield(self._push(events, True))
        self.fenced = not ok
        return ok

    async def fail(self, err: APIError) -> bool:
        """End this attempt's answer with an error after what was sent (an SSE error event at the
        client once the stream started, the error body before that)."""
        await self.drain()
        if self.fenced:
            return False
        self.buf = []
        self.status = err.status
        self.content_type = "application/json"
        ok = await asyncio.shield(self._push([json.dumps(err.body())], True))
        self.fenced = not ok
        return ok

    async def _flush_some(self, n: int) -> None:
        events = self.buf[:n]
        del self.buf[:n]
        if not await self._push(events, False):
            self.fenced = True


class NodeWorker:
    """The puller and executor of one backend this replica drives."""

    def __init__(self, d: PlaneDispatcher, idx: int) -> None:
        self.d = d
        self.idx = idx
        b = d.router.backends[idx]
        self.backend = b
        self.name = b.name
        self.shard = shard_of(self.name, d.params.load_shards_num)
        self.worker = f"{d.replica}/{self.name}"
        self.state = NodeState(d.params.kv_blocks, d.params.block_size)
        self.view = NodeView(b, self.state)
        self.held: dict[str, tuple[Claimed, asyncio.Task]] = {}
        self.rng = random.Random(crc16(self.worker))
        self.slot = crc16(self.worker) % max(1, d.params.load_shards_num)
        self.candidates: list[str] = []
        self.load: dict[str, tuple[int, float]] = {}  # splitwise: rid -> (load, since)
        self.warn = Warn(f"node {self.name}")
        self._run = asyncio.create_task(self.run())
        self._renew = asyncio.create_task(self.renew_loop())

    @property
    def role(self) -> str:
        return self.d.role_of(self.idx)

    def stop(self) -> None:
        """Stop pulling; work in hand finishes (its leases keep being renewed meanwhile)."""
        self._run.cancel()

    def halt(self) -> list[Claimed]:
        """Shut down: stop pulling and executing; returns what was held (to give back)."""
        self._run.cancel()
        self._renew.cancel()
        held = [c for c, _ in self.held.values()]
        for _, t in self.held.values():
            t.cancel()
        return held

    # ---- pulling -----------------------------------------------------------------------------
    async def run(self) -> None:
        d = self.d
        q = d.plane.queues
        p = d.params
        while True:
            try:
                res = engine_resources(self.view, p.max_prefill_batch)
                if res is None:
                    await asyncio.sleep(GATE_POLL_S)
                    continue
                got = await q.claim(self.name, self.shard, res.batch, self.worker, p.lease)
                if not got and d.steals:
                    victim = await self._victim()
                    if victim is not None:
                        got = await q.claim(
                            self.name,
                            self.shard,
                            res.batch,
                            self.worker,
                            p.lease,
                            victim=victim,
                            victim_shard=shard_of(victim, p.load_shards_num),
                            n_steal=mini_batches(res.batch)[0],
                            min_score=p.min_load_score,
                        )
                self.warn.ok()
                if not got:
                    await self._wait_bells()
                    continue
                prompts = [Payload.from_json(c.payload).prompt_tokens for c in got]
                k = admit_count(prompts, res)
                if k == 0 and not self.held:
                    k = 1  # an idle engine always takes one (the block estimate is coarse)
                if k < len(got):
                    await q.unclaim(self.worker, got[k:])
                for c in got[:k]:
                    self.state.sent(c.rid)  # counts against the gate from this moment
                    if c.stolen:
                        d.counters["stolen"] += 1
                    self.held[c.rid] = (c, asyncio.create_task(self._execute(c)))
            except asyncio.CancelledError:
                raise
            except ERRORS as e:
                self.warn.fail(e)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("node %s: puller error", self.name)
                await asyncio.sleep(0.5)

    async def _victim(self) -> str | None:
        p = self.d.params
        heavy: list[str] = []
        for shard in lookup_shards(self.slot, p.load_shards_num):
            self.slot += 1
            rows = await self.d.plane.loads.heavy(shard, p.min_load_score, LOAD_COUNT)
            if rows:
                heavy = [m for m, _ in rows]
                break
        self.candidates = steal_candidates(heavy, self.name, self.rng)
        return choose_victim(self.candidates, self.rng)

    async def _wait_bells(self) -> None:
        k = self.d.plane.keys
        keys = [k.bell(self.name)] + [k.bell(n) for n in self.candidates]
        await self.d.plane.client.blpop(
            keys, timeout=min(BELL_WAIT_S, self.d.params.redis_timeout / 2)
        )

    async def renew_loop(self) -> None:
        every = self.d.params.lease / 3.0
        while True:
            await asyncio.sleep(every)
            if not self.held:
                if self._run.done():
                    return  # stopped and nothing left in hand
                continue
            try:
                lost = await self.d.plane.leases.renew(
                    self.worker, [c for c, _ in self.held.values()], self.d.params.lease
                )
            except ERRORS as e:
                self.warn.fail(e)
                continue
            for rid in lost:
                item = self.held.get(rid)
                if item is not None:
                    log.warning("node %s lost the lease of %s: aborting it", self.name, rid)
                    item[1].cancel()

    # ---- executing ---------------------------------------------------------------------------
    async def _execute(self, c: Claimed) -> None:
        try:
            await self.d.execute(self, c)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("node %s: executing %s failed", self.name, c.rid)
        finally:
            self.held.pop(c.rid, None)
            self.state.confirm(c.rid)

    async def give_back(self, c: Claimed, why: str) -> None:
        """The engine failed: return the request to its queue for another try (or fail it)."""
        if c.attempt % ATTEMPT_STRIDE >= MAX_ATTEMPTS:
            err = APIError(
                502,
                f"request failed {c.attempt % ATTEMPT_STRIDE} times; last: {why}",
                code="backend_failed",
            )
            await ChunkWriter(self.d, c, self.worker, self.name).fail(err)
            return
        try:
            await self.d.plane.queues.unclaim(self.worker, [c])
        except ERRORS as e:
            self.warn.fail(e)  # the lease will expire and requeue it
