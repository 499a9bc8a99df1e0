"""`--scheduler-name splitwise`: FastDeploy's prefill/decode disaggregation over the plane.

Backends have roles (`--scheduler-roles P,D,D`; default: the first half prefill; a backend that
joins while it runs takes the role fewer members have, decode on a tie). The replica
that receives a request picks a prefill node and a decode node from the registry by blurred least
load (FastDeploy's choice: prefill load in prompt tokens, decode load in requests; nodes report
every `sync_period` seconds, and a replica adds its own assignments since the last report) and
queues the request on the prefill node. The prefill node runs the prompt with `max_tokens=1` and
vLLM's disaggregated-prefill `kv_transfer_params` (`do_remote_decode`), then hands the request,
with the KV-transfer parameters the engine returned, to the decode node's queue in one atomic
step; the decode node's engine pulls the KV from the prefill engine and streams the answer to the
origin. Leases, fencing and duplicate suppression are those of the global mode.

FastDeploy's code reports node loads every `sync_period` milliseconds while its docs say seconds;
we take seconds, as documented, and keep choices fresh with the replica's own assignments.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

from ...plane import Claimed, NodeInfo, shard_of
from ..dispatch import BackendFailed, ProxyCall, RouterCore
from ..errors import APIError
from ..policies.fastdeploy import blur_select, decode_blur_step, prefill_blur_step
from ..policies.fastdeploy_splitwise import split_roles
from .common import Payload
from .global_mode import PlaneDispatcher
from .params import SchedulerParams
from .plane_node import ERRORS, ChunkWriter, NodeWorker

log = logging.getLogger("nexussched.router.splitwise")

PREFILL_KV_PARAMS = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


class SplitwiseDispatcher(PlaneDispatcher):
    steals = False
    mode_name = "splitwise"
    # backends may join and leave (as in global mode); a joining one's role is _joining_role's
    membership = True

    def __init__(self, params: SchedulerParams) -> None:
        super().__init__(params)
        self.roles: list[str] = []
        self.view: list[NodeInfo] = []
        self.delta: dict[str, float] = {}
        self.rng = random.Random()
        self.counters["handoffs"] = 0

    async def start(self, router: RouterCore) -> None:
        self.roles = split_roles(len(router.backends), roles=self.params.roles or None)
        await super().start(router)
        await self._sync()
        self._tasks.append(asyncio.create_task(self._sync_loop()))

    def role_of(self, idx: int) -> str:
        if not self.roles:
            return "mixed"
        while len(self.roles) <= idx:  # backends that joined while running
            self.roles.append(self._joining_role())
        return self.roles[idx]

    def _joining_role(self) -> str:
        """The role fewer of the member backends have (ties: decode); kept for good, also if
        it leaves and comes back (the registry gives it its old index)."""
        backends = self.router.backends
        members = [r for i, r in enumerate(self.roles) if not backends[i].retired]
        return "prefill" if members.count("prefill") < members.count("decode") else "decode"

    # ---- loads -------------------------------------------------------------------------------
    def node_info(self, w: NodeWorker) -> NodeInfo:
        cut = time.monotonic() - self.params.release_load_expire_period
        for rid in [r for r, (_, t) in w.load.items() if t < cut]:
            del w.load[rid]
        return NodeInfo(
            w.name, w.role, w.shard, w.backend.url, self.replica, sum(v for v, _ in w.load.values())
        )

    async def _sync(self) -> None:
        """Report the loads of the nodes this replica drives (plus what waits in their queues)
        and refresh this replica's view of every node."""
        reg = self.plane.registry
        scores = await self.plane.loads.scores()
        # a copy: the registry round may take a node away while this awaits Redis (the loop
        # died of "dictionary changed size during iteration" and the view froze)
        for w in list(self.workers.values()):
            info = self.node_info(w)
            queued = int(scores.get(w.name, 0))
            if w.role == "prefill":
                unit = info.load / len(w.load) if w.load else 1000.0
                info.load += int(queued * unit)
            else:
                info.load += queued
            await reg.publish(info)
        self.view = await reg.nodes(expire_s=self.params.expire_period)
        self.delta = {}

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.params.sync_period)
            try:
                await self._sync()
            except ERRORS as e:
                self.warn_loop.fail(e)

    def _choose(self, role: str, step_of) -> str:
        nodes = [n for n in self.view if n.alive and n.role == role]
        if not nodes:
            have = {
                r: sum(1 for n in self.view if n.alive and n.role == r)
                for r in ("prefill", "decode")
            }
            raise APIError(
                503,
                f"splitwise needs a live prefill and a live decode node in topic "
                f"{self.params.topic!r}; alive: {have['prefill']} prefill, "
                f"{have['decode']} decode",
                code="no_backend",
            )
        loads = [(n.name, n.load + self.delta.get(n.name, 0.0)) for n in nodes]
        return str(blur_select(loads, step_of(len(nodes)), self.rng))

    def target(self, call: ProxyCall, payload: Payload) -> str:
        pn = self._choose("prefill", lambda n: prefill_blur_step(payload.prompt_tokens))
        dn = self._choose("decode", decode_blur_step)
        payload.decode_node = dn
        self.delta[pn] = self.delta.get(pn, 0.0) + payload.prompt_tokens
        self.delta[dn] = self.delta.get(dn, 0.0) + 1
        return pn

    # ---- executing ---------------------------------------------------------------------------
    async def execute(self, w: NodeWorker, c: Claimed) -> None:
        p = Payload.from_json(c.payload)
        if w.role == "prefill":
            if p.kv_transfer_params is None:
                await self._prefill(w, c, p)
            else:
                # a decode-phase request came back to a prefill node (its decode node died)
                await self._handoff(w, c, p, self._choose("decode", decode_blur_step))
            return
        body = json.loads(p.body)
        if p.kv_transfer_params:
            body["kv_transfer_params"] = p.kv_transfer_params
        w.load[c.rid] = (1, time.monotonic())
        try:
            await self.run_on_engine(w, c, p, p.call(json.dumps(body).encode()))
        finally:
            w.load.pop(c.rid, None)

    async def _prefill(self, w: NodeWorker, c: Claimed, p: Payload) -> None:
        router = self.router
        body = json.loads(p.body)
        body["stream"] = False
        body["max_tokens"] = 1
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = 1
        for k in ("stream_options", "min_tokens", "min_completion_tokens"):
            body.pop(k, None)
        body["kv_transfer_params"] = dict(PREFILL_KV_PARAMS)
        call = p.call(json.dumps(body).encode())
        call.stream = False
        b = w.backend
        b.begin(call.info)
        w.load[c.rid] = (p.prompt_tokens, time.monotonic())
        try:
            try:
                up = await router.open_upstream(call, w.idx)
            except BackendFailed as e:
                router.backend_failed(e)
                await w.give_back(c, e.reason)
                return
            except APIError as e:
                await self._fail(w, c, e.status, json.dumps(e.body()))
                return
            w.state.confirm(c.rid)
            up.resp.release()
            if up.resp.status != 200:
                await self._fail(w, c, up.resp.status, up.first.decode("utf-8", "replace"))
                return
            try:
                kv = json.loads(up.first).get("kv_transfer_params")
            except ValueError:
                kv = None
            if not kv:
                log.warning(
                    "prefill engine %s returned no kv_transfer_params: the decode node "
                    "recomputes the prompt",
                    w.name,
                )
            p.kv_transfer_params = kv or {}
            dn = p.decode_node
            alive = {n.name for n in self.view if n.alive and n.role == "decode"}
            if dn not in alive:
                dn = self._choose("decode", decode_blur_step)
            await self._handoff(w, c, p, dn)
        finally:
            b.end(call.info)
            w.load.pop(c.rid, None)

    async def _handoff(self, w: NodeWorker, c: Claimed, p: Payload, dn: str) -> None:
        p.decode_node = dn
        ok = await self.plane.queues.handoff(
            c, w.worker, dn, shard_of(dn, self.params.load_shards_num), p.to_json()
        )
        if ok:
            self.counters["handoffs"] += 1
        else:
            log.warning("node %s lost the lease of %s before its hand-off", w.name, c.rid)

    async def _fail(self, w: NodeWorker, c: Claimed, status: int, body: str) -> None:
        writer = ChunkWriter(self, c, w.worker, w.name)
        writer.status = status
        writer.content_type = "application/json"
        writer.buf = [body]
        await writer.close()
