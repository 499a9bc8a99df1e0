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
import logging
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from ...plane import (
    Chunk,
    Claimed,
    Plane,
    PlaneUnavailable,
    describe_error,
    lane_of,
    shard_of,
)
from ..dispatch import BackendFailed, Dispatcher, ProxyCall, RouterCore
from ..errors import APIError
from .common import ClientAnswer, GenerationLost, Payload, SSESplitter
from .params import SchedulerParams
from .plane_node import (
    ATTEMPT_STRIDE,
    ERRORS,
    ORIGIN_KEEPALIVES,
    RESYNC_S,
    ChunkWriter,
    NodeWorker,
    Warn,
)
from .plane_registry import PlaneRegistry

log = logging.getLogger("nexussched.router.plane")

__all__ = ["ERRORS", "ChunkWriter", "GlobalDispatcher", "NodeWorker", "PlaneDispatcher"]


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


class PlaneDispatcher(PlaneRegistry, Dispatcher):
    """Origin, nodes and janitor of one replica over the plane (global; splitwise extends it)."""

    steals = True
    mode_name = "global"
    # nodes are the backends this replica can claim in each registry round: a joining backend
    # is claimed once healthy; a leaving one is released (its work in hand finishes there, its
    # queue is adopted by a live node)
    membership = True

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
        self.warn_enqueue = Warn("enqueue")
        self.warn_push = Warn("result push")
        self.warn_read = Warn("result read")
        self.warn_loop = Warn("registry")

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
            writer.content_type = resp.content_type
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
                    data = await resp.readany()
                except (OSError, TimeoutError) as e:  # h1client's errors are both
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


class GlobalDispatcher(PlaneDispatcher):
    steals = True
    mode_name = "global"
    # nodes are the backends this replica can claim in each registry round: a joining backend
    # is claimed once healthy; a leaving one is released (its work in hand finishes there, its
    # queue is adopted by a live node)
    membership = True
