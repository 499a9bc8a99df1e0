"""`--scheduler-name global`: FastDeploy's global scheduler over the Redis state plane.

Roles inside one router replica:

- origin: a request that arrives here is queued on one of this replica's nodes (its "own" queue;
  any live node when it drives none), and answered from the response events that come back on
  this replica's response lanes, each event index once;
- nodes: every backend this replica drives (it holds the node's keep-alive key; replicas share
  the backends out between them) runs a puller: when its engine has consumed what it was given
  and has free KV blocks it claims work from its own queue, else steals a small batch from a
  random node holding at least `min_load_score` queued requests, else blocks briefly on the
  wake-up bells of its own and those queues. Claimed work is leased; results stream back through
  the plane to the origin, fenced by the lease;
- janitor: requeues work whose lease ran out (its node died), adopts queues of dead nodes, and
  re-queues this replica's requests that Redis lost (a restart without persistence).

Differences from FastDeploy, on purpose: work is leased, not popped (a node that dies holding
work loses nothing: it returns to a queue when the lease expires, and the origin drops events it
already delivered), and pop + score update are one Lua script (no drift).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from redis.exceptions import RedisError

from ...plane import (
    PLANE_ERRORS,
    Chunk,
    Claimed,
    NodeInfo,
    Plane,
    PlaneUnavailable,
    crc16,
    describe_error,
    lane_of,
    shard_of,
)
from ..dispatch import BackendFailed, Dispatcher, ProxyCall, RouterCore
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
from .common import ClientAnswer, GenerationLost, NodeState, NodeView, Payload, SSESplitter
from .params import SchedulerParams

log = logging.getLogger("nexussched.router.plane")

ERRORS = (*PLANE_ERRORS, RedisError)
GATE_POLL_S = 0.02  # a node whose engine is busy re-checks it this often (no Redis calls)
BELL_WAIT_S = 0.5  # an idle node blocks this long on the bells before looking again
RESYNC_S = 2.0  # how often the origin checks that Redis still knows its requests
MAX_ATTEMPTS = 4  # engine failures before a request is answered with an error
# A replica counts as a dead origin (its queued work dropped) after this many keep-alive periods
# without renewal: dropping a live origin's work is costly, so it gets more slack than a node.
ORIGIN_KEEPALIVES = 3
ATTEMPT_STRIDE = 1 << 20  # attempt ids of successive enqueues of one request never overlap


@dataclass
class _Pending:
    """A request this replica received and is answering."""

    call: ProxyCall
    payload: str
    node: str = ""
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    enqueued_at: float = 0.0
    finished: bool = False
    answer: ClientAnswer | None = None
    attempts_seen: int = 0  # the highest attempt whose events arrived
    enqueues: int = 0  # by this origin: a re-queue's attempts start at enqueues * ATTEMPT_STRIDE

    @property
    def attempt0(self) -> int:
        """Where the attempts of the next enqueue start: above every attempt an earlier enqueue
        could have produced, even in a Redis that has since forgotten them, so that a late event
        of a lost run never passes for one of the new run."""
        return max(self.attempts_seen, self.enqueues * ATTEMPT_STRIDE)


class _Warn:
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
        self.warn = _Warn(f"node {self.name}")
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


class PlaneDispatcher(Dispatcher):
    """Origin, nodes and janitor of one replica over the plane (global; splitwise extends it)."""

    steals = True

    def __init__(self, params: SchedulerParams) -> None:
        self.params = params
        self.replica = ""
        self.plane: Plane | None = None  # type: ignore[assignment]
        self.inbox: dict[str, _Pending] = {}
        self.workers: dict[int, NodeWorker] = {}
        self.alive_nodes: list[str] = []
        self.counters = {
            "duplicates_dropped": 0,
            "requeued_after_loss": 0,
            "orphan_chunks": 0,
            "stolen": 0,
            "expired": 0,
            "generation_lost": 0,  # streams ended with an error rather than spliced
            "cut_streams": 0,  # runs on this replica's nodes that failed after they streamed
            "no_progress": 0,
            "stale_events": 0,  # events of an older attempt, dropped by the origin
        }
        self._boot = uuid.uuid4().hex[:8]  # request ids stay unique across restarts
        self._ids = itertools.count(1)
        self._cancels: set[str] = set()  # cancels that did not reach Redis yet
        self._rr = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self.warn_enqueue = _Warn("enqueue")
        self.warn_push = _Warn("result push")
        self.warn_read = _Warn("result read")
        self.warn_loop = _Warn("registry")

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self, router: RouterCore) -> None:
        self.router = router
        p = self.params
        s = router.settings
        self.replica = p.replica_id or f"{s.host}:{s.port}-{uuid.uuid4().hex[:6]}"
        try:
            self.plane = await Plane.open(
                p.redis, p.topic, p.load_shards_num, resp_ttl_s=p.ttl, timeout=p.redis_timeout
            )
        except PlaneUnavailable as e:
            raise ValueError(str(e)) from None
        self.writers = asyncio.Semaphore(p.writer_parallel)
        await self._registry_round()
        self._tasks = [asyncio.create_task(self._reader(lane)) for lane in range(p.reader_parallel)]
        self._tasks += [
            asyncio.create_task(self._registry_loop()),
            asyncio.create_task(self._janitor_loop()),
            asyncio.create_task(self._resync_loop()),
        ]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        held = {w.worker: w.halt() for w in self.workers.values()}
        if self.plane is not None:
            try:  # hand back work and nodes at once; bounded: Redis may be gone
                await asyncio.wait_for(self._leave(held), timeout=2.0)
            except (TimeoutError, *ERRORS):
                pass
            await self.plane.close()
        self.workers.clear()

    async def _leave(self, held: dict[str, list[Claimed]]) -> None:
        for worker, claimed in held.items():
            if claimed:
                await self.plane.queues.unclaim(worker, claimed)
        for w in self.workers.values():
            await self.plane.registry.release(w.name, self.replica)
        await self.plane.registry.drop_replica(self.replica)

    def role_of(self, idx: int) -> str:
        return "mixed"

    def routes(self) -> list[tuple[str, object]]:
        return [("/scheduler", self._view_handler)]

    # ---- origin ------------------------------------------------------------------------------
    def _plane_error(self, e: BaseException) -> APIError:
        return APIError(
            503,
            f"scheduler state plane unavailable: {describe_error(self.params.redis, e)}",
            code="plane_unavailable",
        )

    def target(self, call: ProxyCall, payload: Payload) -> str:
        """The node whose queue a new request joins: one this replica drives (its own queue),
        round robin; any live node when it drives none."""
        mine = [w.name for w in self.workers.values() if w.backend.healthy and w.role != "decode"]
        names = mine or self.alive_nodes
        if not names:
            raise APIError(
                503,
                f"no scheduler node alive in topic {self.params.topic!r} "
                f"(no router replica drives a healthy backend)",
                code="no_backend",
            )
        return names[next(self._rr) % len(names)]

    async def _enqueue(self, rid: str, pend: _Pending) -> None:
        p = self.params
        assert self.plane is not None
        try:
            n = await self.plane.queues.enqueue(
                pend.node,
                shard_of(pend.node, p.load_shards_num),
                rid,
                pend.payload,
                self.replica,
                lane_of(rid, p.reader_parallel),
                p.ttl,
                attempt0=pend.attempt0,
                origin_keepalive_s=ORIGIN_KEEPALIVES * p.keepalive,
            )
        except ERRORS as e:
            self.warn_enqueue.fail(e)
            raise self._plane_error(e) from None
        self.warn_enqueue.ok()
        pend.enqueues += 1
        pend.enqueued_at = time.monotonic()
        if n == 0:
            raise APIError(500, f"request id {rid} is already known to the plane", code="duplicate")

    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        rid = f"{self.replica}-{self._boot}-{next(self._ids)}"
        payload = Payload.of(call)
        node = self.target(call, payload)
        pend = _Pending(call, payload.to_json(), node)
        self.inbox[rid] = pend
        try:
            await self._enqueue(rid, pend)
            return await self._answer(call, rid, pend)
        finally:
            self.inbox.pop(rid, None)
            if not pend.finished and pend.enqueued_at:
                asyncio.ensure_future(self._cancel(rid))

    async def _cancel(self, rid: str) -> None:
        try:
            await self.plane.queues.cancel(rid)
            self._cancels.discard(rid)
        except ERRORS:
            self._cancels.add(rid)  # retried by the resync loop (its TTL also expires it)

    async def _answer(self, call: ProxyCall, rid: str, pend: _Pending) -> web.StreamResponse:
        ans = ClientAnswer(call)
        pend.answer = ans
        p = self.params
        deadline = call.t0 + p.ttl
        last = time.monotonic()  # the last sign of progress
        try:
            while True:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    self.counters["expired"] += 1
                    return await ans.fail(
                        APIError(
                            504,
                            f"request expired: not completed within scheduler_ttl={p.ttl:g} s",
                            code="expired",
                        )
                    )
                wait = min(left, max(0.01, last + p.progress_timeout - now))
                try:
                    ch: Chunk | APIError = await asyncio.wait_for(pend.queue.get(), wait)
                except TimeoutError:
                    if time.monotonic() - last >= p.progress_timeout:
                        err = await self._stalled(rid, pend)
                        if err is not None:
                            self.counters["no_progress"] += 1
                            return await ans.fail(err)
                        last = time.monotonic()
                    continue
                if isinstance(ch, APIError):  # the resync loop found it lost
                    self.counters["generation_lost"] += 1
                    return await ans.fail(ch)
                last = time.monotonic()
                pend.attempts_seen = max(pend.attempts_seen, ch.attempt)
                try:
                    r = await ans.events(
                        ch.seq, ch.events, ch.status, ch.content_type, ch.fin, ch.attempt
                    )
                except GenerationLost as e:
                    self.counters["generation_lost"] += 1
                    return await ans.fail(
                        APIError(
                            502,
                            f"{e}; the answer ends here rather than continue with another "
                            f"run's tokens",
                            code="generation_lost",
                        )
                    )
                if r is not None:
                    pend.finished = True
                    return r
        finally:
            self.counters["duplicates_dropped"] += ans.duplicates
            self.counters["stale_events"] += ans.stale

    async def _stalled(self, rid: str, pend: _Pending) -> APIError | None:
        """No event for progress_timeout: None to keep waiting (queued, or queued again), else
        the error that ends the request."""
        p = self.params
        try:
            st = await self.plane.queues.state(rid)
        except ERRORS as e:
            return self._plane_error(e)
        if st == "queued":
            return None  # waiting for a node; scheduler_ttl bounds that
        started = pend.answer is not None and pend.answer.started
        if st in (None, "orphaned") and not started:
            # Redis lost it, or dropped it as orphaned while we looked dead: queue it again
            try:
                pend.node = self.target(pend.call, Payload.from_json(pend.payload))
                await self._enqueue(rid, pend)
            except APIError as e:
                return e
            self.counters["requeued_after_loss"] += 1
            return None
        return APIError(
            504,
            f"no progress on this request for {p.progress_timeout:g} s "
            f"(--scheduler-progress-timeout; it is {st or 'unknown'} in the scheduler plane)",
            code="no_progress",
        )

    async def _reader(self, lane: int) -> None:
        p = self.params
        while True:
            try:
                chunks = await self.plane.responses.read(
                    self.replica, lane, p.reader_batch_size, min(1.0, p.redis_timeout / 2)
                )
                self.warn_read.ok()
            except asyncio.CancelledError:
                raise
            except ERRORS as e:
                self.warn_read.fail(e)
                await asyncio.sleep(0.5)
                continue
            for ch in chunks:
                pend = self.inbox.get(ch.rid)
                if pend is None:
                    self.counters["orphan_chunks"] += 1
                else:
                    pend.queue.put_nowait(ch)

    async def _resync_loop(self) -> None:
        """Re-queue requests of this replica that Redis no longer knows (it restarted empty) or
        dropped as orphaned (we looked dead to it), as long as nothing of them went out yet;
        retry cancels that did not reach Redis."""
        while True:
            await asyncio.sleep(RESYNC_S)
            for rid in list(self._cancels):
                await self._cancel(rid)
            now = time.monotonic()
            rids = [
                r
                for r, pd in self.inbox.items()
                if not pd.finished and pd.enqueued_at and now - pd.enqueued_at > 1.0
            ]
            if not rids:
                continue
            try:
                states = await self.plane.queues.states(rids)
                for rid, st in zip(rids, states, strict=True):
                    pend = self.inbox.get(rid)
                    if st not in (None, "orphaned") or pend is None or pend.finished:
                        continue
                    if pend.answer is not None and pend.answer.started:
                        # its run is gone after it streamed: a new run would be another generation
                        pend.queue.put_nowait(
                            APIError(
                                502,
                                f"the scheduler plane lost this request after "
                                f"{pend.answer.delivered} events; the answer ends here rather "
                                f"than continue with another run's tokens",
                                code="generation_lost",
                            )
                        )
                        continue
                    try:
                        pend.node = self.target(pend.call, Payload.from_json(pend.payload))
                    except APIError:
                        continue
                    await self._enqueue(rid, pend)
                    self.counters["requeued_after_loss"] += 1
                    log.warning("request %s was lost by the plane: queued again", rid)
            except (APIError, *ERRORS) as e:
                self.warn_loop.fail(e)

    # ---- executing (a node's claimed request) ------------------------------------------------
    async def execute(self, w: NodeWorker, c: Claimed) -> None:
        p = Payload.from_json(c.payload)
        await self.run_on_engine(w, c, p, p.call())

    async def run_on_engine(self, w: NodeWorker, c: Claimed, p: Payload, call: ProxyCall) -> None:
        """Send the request to the node's engine and stream its answer to the origin.

        A run that fails (the engine breaks, goes silent past --idle-timeout, or leaves rotation)
        is given back for another try only while its origin has seen none of its events; after
        that it ends with an error event, never continued by another run."""
        b = w.backend
        b.begin(call.info)
        writer = ChunkWriter(self, c, w.worker, w.name, p.t0)
        try:
            try:
                with self.router.runs.running(w.idx):  # the engine leaving rotation stops it
                    await self._run_upstream(w, c, p, call, writer)
            except asyncio.CancelledError:
                why = self.router.runs.stopped()
                if why is None:
                    raise  # lease lost or shutting down
                await self._run_failed(w, c, writer, f"backend {b.name} left rotation: {why}")
        finally:
            b.end(call.info)

    async def _run_failed(self, w: NodeWorker, c: Claimed, writer: ChunkWriter, why: str) -> None:
        if writer._task is not None and not writer._task.done() and writer.sent == 0:
            writer._task.cancel()  # nothing reached the plane yet
        if writer.sent == 0:
            await w.give_back(c, why)
        else:
            self.counters["cut_streams"] += 1
            await writer.fail(
                APIError(502, f"{why} after the stream started", code="backend_failed")
            )

    async def _run_upstream(
        self, w: NodeWorker, c: Claimed, p: Payload, call: ProxyCall, writer: ChunkWriter
    ) -> None:
        router = self.router
        try:
            up = await router.open_upstream(call, w.idx)
        except BackendFailed as e:
            router.backend_failed(e)
            await w.give_back(c, e.reason)
            return
        except APIError as e:
            await writer.fail(e)
            return
        w.state.confirm(c.rid)
        resp = up.resp
        released = False
        try:
            writer.status = resp.status
            writer.content_type = resp.headers.get("Content-Type", "")
            if not (p.stream and resp.status == 200):
                resp.release()
                released = True
                writer.buf = [up.first.decode("utf-8", errors="replace")]
                await writer.close()
                return
            split = SSESplitter()
            writer.add(split.feed(up.first))
            broke: BaseException | None = None
            while not writer.fenced:
                try:
                    data = await resp.content.readany()
                except (
                    aiohttp.ClientConnectionError,
                    aiohttp.ClientPayloadError,
                    OSError,
                    TimeoutError,
                ) as e:
                    broke = e
                    break
                if not data:
                    break
                writer.add(split.feed(data))
            if broke is not None:
                resp.close()
                why = f"{type(broke).__name__}: {broke}"
                if isinstance(broke, TimeoutError):
                    why = f"no data for {router.settings.idle_timeout:g} s (--idle-timeout)"
                router.backend_failed(BackendFailed(w.idx, why))
                await writer.drain()
                if not writer.fenced:
                    await self._run_failed(w, c, writer, f"backend {w.backend.name}: {why}")
                return
            tail = split.rest()
            if tail:
                writer.add([tail])
            if writer.fenced:
                return  # lease lost: the finally aborts it on the engine
            resp.release()
            released = True
            await writer.close()
        finally:
            if not released:
                resp.close()  # fenced, failed or cancelled: drop the connection (engine aborts)

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

    mode_name = "global"

    async def _view_handler(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.cluster_view())
        except ERRORS as e:
            return self._plane_error(e).response()


class GlobalDispatcher(PlaneDispatcher):
    steals = True
    mode_name = "global"
