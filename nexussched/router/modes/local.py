"""`--scheduler-name local`: FastDeploy's local scheduler in the live router.

Each backend (node) has an in-memory queue in this replica; a front round robin (optionally
weighted) assigns requests to nodes; a node's engine takes work only when it has consumed what it
was given and has free KV blocks (the FastDeployLocal policy, the same object the simulator runs).
A node already holding `scheduler_max_size` requests answers 429; a request still queued after
`scheduler_ttl` seconds gets 504 (never a hang). Once a request runs, the router's
--request-timeout bounds it.

Backends may join and leave while it runs (the admin API, --backends-file): a joining backend
becomes a node with an empty queue once its /health answers; a leaving one drains (what its
engine took finishes there) and what still waits in its queue is routed again to the others.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..dispatch import BackendFailed, Dispatcher, ProxyCall, RouterCore
from ..errors import APIError
from ..policies import NoEngineAvailable
from ..policies.fastdeploy_modes import FastDeployLocal, QueueFull
from ..policy_dispatch import fail_dropped
from .common import NodeState, NodeView
from .params import SchedulerParams

log = logging.getLogger("nexussched.router.local")

POLL_S = 0.02  # how often nodes with queued work re-check their engine


class _ModelView(NodeView):
    """A NodeView that reads unhealthy for backends not serving the request's model."""

    __slots__ = ("ok",)

    def __init__(self, backend, node: NodeState, ok: bool) -> None:
        super().__init__(backend, node)
        self.ok = ok

    @property
    def healthy(self) -> bool:
        return self.ok and self.b.healthy


class LocalDispatcher(Dispatcher):
    membership = True  # nodes are the registry's backends, by index: they may join and leave

    def __init__(self, params: SchedulerParams) -> None:
        self.params = params
        self.policy = FastDeployLocal(
            max_size=params.max_size,
            ttl=params.ttl,
            front_weights=params.front_weights or None,
            max_prefill_batch=params.max_prefill_batch,
        )
        self._waiters: dict[object, asyncio.Future] = {}
        self._model_of: dict[object, str] = {}  # of each waiting request (to route it again)
        self._task: asyncio.Task | None = None
        self.nodes: list[NodeState] = []
        self.views: list[NodeView] = []

    async def start(self, router: RouterCore) -> None:
        self.router = router
        self.nodes = []
        self.views = []
        self._grow()
        router.registry.on_change.append(lambda i, up: up and self._offer(i))
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for f in self._waiters.values():
            if not f.done():
                f.cancel()

    def _grow(self) -> None:
        """A node for every backend that joined since (the registry only appends; a backend
        that leaves keeps its index, and comes back at it)."""
        p = self.params
        for b in self.router.backends[len(self.nodes) :]:
            node = NodeState(p.kv_blocks, p.block_size)
            self.nodes.append(node)
            self.views.append(NodeView(b, node))

    def _evacuate(self) -> None:
        """Requests queued at a node whose backend left go to the others' queues (as new
        arrivals would); one that no node can take now fails with the reason."""
        now = time.monotonic()
        for i, b in enumerate(self.router.backends[: len(self.views)]):
            if not b.retired:
                continue
            for info in self.policy.evacuate(i):
                fut = self._waiters.get(info.id)
                if fut is None or fut.done():
                    continue
                model = self._model_of.get(info.id, "")
                try:
                    self.policy.route(info, self._views(model), now)
                except QueueFull as e:
                    fut.set_exception(APIError(429, f"{e}; retry later", code="queue_full"))
                except NoEngineAvailable:
                    fut.set_exception(self.router.no_backend(model))

    def _offer(self, idx: int) -> None:
        if len(self.nodes) < len(self.router.backends):
            self._grow()
        for info in self.policy.pull(idx, self.views, time.monotonic()):
            fut = self._waiters.pop(info.id, None)
            if fut is not None and not fut.done():
                self.nodes[idx].sent(info.id)  # counts against the gate from this moment
                fut.set_result(idx)
            else:  # the client left between queueing and now
                self.policy.on_finish(info.id, idx, time.monotonic())
        fail_dropped(self.policy, self._waiters)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            if self._waiters:
                self._evacuate()
                for i in range(len(self.views)):
                    self._offer(i)

    def _views(self, model: str) -> list[NodeView]:
        if len(self.nodes) < len(self.router.backends):
            self._grow()
        serving = self.router.views_for(model)
        if serving is self.router.backends:
            return self.views
        return [
            _ModelView(b, n, v.healthy or not b.healthy)
            for b, n, v in zip(self.router.backends, self.nodes, serving, strict=True)
        ]

    async def _queue(self, call: ProxyCall) -> int:
        info = call.info
        try:
            self.policy.route(info, self._views(call.model), time.monotonic())
        except QueueFull as e:
            raise APIError(429, f"{e}; retry later", code="queue_full") from None
        except NoEngineAvailable:
            raise self.router.no_backend(call.model) from None
        fut = asyncio.get_running_loop().create_future()
        self._waiters[info.id] = fut
        self._model_of[info.id] = call.model
        for i in range(len(self.views)):
            self._offer(i)
        left = self.params.ttl - (time.monotonic() - call.t0)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, left))
        except TimeoutError:
            self.policy.cancel(info.id)
            raise APIError(
                504,
                f"request expired: not scheduled within scheduler_ttl="
                f"{self.params.ttl:g} s (all nodes busy)",
                code="expired",
            ) from None
        finally:
            self._waiters.pop(info.id, None)
            self._model_of.pop(info.id, None)
            if not fut.done():
                self.policy.cancel(info.id)
                fut.cancel()

    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        router = self.router
        attempts = 0
        while True:
            idx = await self._queue(call)
            b = router.backends[idx]
            node = self.nodes[idx]
            rid = call.info.id
            b.begin(call.info)
            try:
                try:
                    up = await router.open_upstream(call, idx)
                except BackendFailed as e:
                    router.backend_failed(e)
                    attempts += 1
                    if attempts > router.settings.retries:
                        raise APIError(
                            502, f"backend {b.name} failed: {e.reason}", code="backend_failed"
                        ) from None
                    router.metrics.retries.inc()
                    continue
                node.confirm(rid)
                return await router.relay(call, up)
            finally:
                b.end(call.info)
                node.confirm(rid)
                self.policy.on_finish(rid, idx, time.monotonic())
                self._offer(idx)
