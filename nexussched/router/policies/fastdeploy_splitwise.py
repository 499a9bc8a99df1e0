"""FastDeploy's splitwise scheduler mode as a routing policy: prefill/decode disaggregation.

A request's prompt runs on a prefill node (one output token) and continues on a decode node
chosen by load; the simulator moves the KV cache over a link (`splits = True` hooks). The prefill
node's engine pulls from its queue as in `local` (fastdeploy_modes.py). The decisions are the pure
functions of `fastdeploy.py`. Parameter names and defaults are FastDeploy's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import ClassVar

from .base import (
    Dropped,
    EngineView,
    NoEngineAvailable,
    RequestInfo,
    healthy_indices,
)
from .fastdeploy import (
    MAX_NUM_BATCHED_TOKENS,
    MAX_PREFILL_BATCH,
    RESERVED_OUTPUT_BLOCKS,
    admit_count,
    blur_select,
    can_ever_hold,
    decode_blur_step,
    engine_resources,
    prefill_blur_step,
)
from .fastdeploy_modes import NodeQueues, check_param, too_large


class FastDeploySplitwise(NodeQueues):
    """Prefill/decode disaggregation: prefill node by blurred least load (prompt tokens
    outstanding), decode node by blurred least load (requests outstanding), both chosen when the
    request arrives; the prefill node's engine pulls from its queue like `local`."""

    name = "splitwise"
    splits: ClassVar[bool] = True

    def __init__(
        self,
        prefill_nodes: int | None = None,
        roles: str | None = None,
        ttl: float = 900.0,
        sync_period: float = 5.0,
        expire_period: float = 3000.0,
        release_load_expire_period: float = 600.0,
        max_prefill_batch: int = MAX_PREFILL_BATCH,
        reserved_output_blocks: int = RESERVED_OUTPUT_BLOCKS,
        max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
        seed: int = 0,
    ) -> None:
        super().__init__(
            ttl, max_prefill_batch, reserved_output_blocks, max_num_batched_tokens, seed
        )
        check_param(
            "scheduler_sync_period", sync_period > 0, f"must be positive, got {sync_period}"
        )
        self.prefill_nodes = prefill_nodes
        self.roles_spec = roles
        self.sync_period = float(sync_period)
        self.expire_period = float(expire_period)
        self.release_load_expire_period = float(release_load_expire_period)
        self.roles: list[str] = []
        self.load: list[dict[object, tuple[int, float]]] = []  # node -> rid -> (load, since)
        self.reported: list[float] = []
        self.since_report: list[float] = []
        self.last_sync = -1e18
        self.plan: dict[object, tuple[int, int, int]] = {}  # rid -> (prefill, decode, prompt)
        self.handoffs = 0

    # ---- roles and loads ----------------------------------------------------------------------
    def _ensure(self, n: int) -> None:
        if len(self.roles) == n:
            return
        self.roles = split_roles(n, self.prefill_nodes, self.roles_spec)
        self.queues = [deque() for _ in range(n)]
        self.load = [{} for _ in range(n)]
        self.reported = [0.0] * n
        self.since_report = [0.0] * n

    def is_prefill(self, idx: int) -> bool:
        return bool(self.roles) and self.roles[idx] == "prefill"

    def _node_load(self, i: int) -> float:
        return float(sum(v for v, _ in self.load[i].values()))

    def _sync(self, now: float) -> None:
        """Nodes report their load every sync_period; between reports the API side adds its own
        assignments (FastDeploy's nodes report every few ms, so its view is always fresh)."""
        if now - self.last_sync < self.sync_period:
            return
        self.last_sync = now
        cut = now - self.release_load_expire_period
        for i, reqs in enumerate(self.load):
            stale = [rid for rid, (_, t) in reqs.items() if t < cut]
            for rid in stale:
                del reqs[rid]
            self.reported[i] = self._node_load(i)
            self.since_report[i] = 0.0

    def _add(self, i: int, rid: object, amount: int, now: float) -> None:
        self.load[i][rid] = (amount, now)
        self.since_report[i] += amount

    def _release(self, i: int, rid: object) -> None:
        self.load[i].pop(rid, None)

    def _choose(
        self,
        role: str,
        engines: Sequence[EngineView],
        step: float,
        req: RequestInfo | None = None,
    ) -> int:
        nodes = [i for i in healthy_indices(engines) if self.roles[i] == role]
        if not nodes:
            raise NoEngineAvailable(f"no healthy {role} node")
        if req is not None:
            # a prefill node must hold the prompt; a decode node the prompt and all its output
            # (one that cannot would idle behind it for good): refuse what none can hold
            mt = req.max_tokens if role == "decode" else 0
            res = self.reserved_output_blocks if role == "prefill" else 0
            nodes = [i for i in nodes if can_ever_hold(engines[i], req.prompt_tokens, mt, res)]
            if not nodes:
                raise too_large(req, f"{role} node")
        loads = [(i, self.reported[i] + self.since_report[i]) for i in nodes]
        return int(blur_select(loads, step, self.rng))  # type: ignore[arg-type]

    # ---- policy hooks -------------------------------------------------------------------------
    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int | None:
        self._ensure(len(engines))
        self._sync(now)
        p = self._choose("prefill", engines, prefill_blur_step(req.prompt_tokens), req)
        n_decode = sum(1 for r in self.roles if r == "decode")
        d = self._choose("decode", engines, decode_blur_step(n_decode), req)
        self.plan[req.id] = (p, d, req.prompt_tokens)
        self._add(p, req.id, req.prompt_tokens, now)
        self._add(d, req.id, 1, now)
        self.queues[p].append(req)
        return None

    def pull(self, idx: int, engines: Sequence[EngineView], now: float) -> list[RequestInfo]:
        if not self.roles or not self.is_prefill(idx):
            return []
        q = self.queues[idx]
        while q and now - q[0].arrival > self.ttl:
            r = q.popleft()
            self.expired += 1
            self._forget(r.id, idx)
            self._dropped.append(
                Dropped(r.id, "expired", f"queued longer than scheduler_ttl={self.ttl:g}s")
            )
        if not q:
            return []
        v = engines[idx]
        res = engine_resources(
            v,
            self.max_prefill_batch,
            self.reserved_output_blocks,
            self.pending.waiting(idx, v),
            self.max_num_batched_tokens,
        )
        if res is None:
            return []
        head = list(islice(q, res.batch))
        k = admit_count([r.prompt_tokens for r in head], res)
        got = [q.popleft() for _ in range(k)]
        for r in got:
            self.pending.sent(idx, r.id, now)
        return got

    def _forget(self, req_id: object, idx: int = -1) -> None:
        p, d, _ = self.plan.pop(req_id, (idx, -1, 0))
        if p >= 0:
            self._release(p, req_id)
        if d >= 0:
            self._release(d, req_id)

    def cancel(self, req_id: object) -> bool:
        for q in self.queues:
            for r in q:
                if r.id == req_id:
                    q.remove(r)
                    self._forget(req_id)
                    return True
        return False

    def decode_target(
        self, req_id: object, src: int, engines: Sequence[EngineView], now: float
    ) -> int | None:
        """The prefill of `req_id` finished on `src`: the decode node to continue on."""
        self.pending.done(src, req_id)
        self._sync(now)
        p, d, _ = self.plan.get(req_id, (src, -1, 0))
        self._release(p, req_id)
        if d < 0 or not engines[d].healthy:
            n_decode = sum(1 for r in self.roles if r == "decode")
            try:
                d = self._choose("decode", engines, decode_blur_step(n_decode))
            except NoEngineAvailable:
                return None
            self.plan[req_id] = (p, d, 0)
            self._add(d, req_id, 1, now)
        self.handoffs += 1
        return d

    def on_first_token(self, req_id: object, idx: int, now: float) -> None:
        self.pending.done(idx, req_id)  # the engine has taken it (as the live NodeView confirms)

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        self.pending.done(idx, req_id)
        p, d, _ = self.plan.pop(req_id, (-1, -1, 0))
        if p >= 0:
            self._release(p, req_id)
        if d >= 0:
            self._release(d, req_id)


def split_roles(n: int, prefill_nodes: int | None = None, roles: str | None = None) -> list[str]:
    """Roles of n nodes: an explicit 'P,P,D,D' list, or the first `prefill_nodes` (default n//2,
    at least one of each) as prefill and the rest decode."""
    if roles:
        names = {"p": "prefill", "prefill": "prefill", "d": "decode", "decode": "decode"}
        parts = [x.strip().lower() for x in roles.split(",") if x.strip()]
        try:
            out = [names[x] for x in parts]
        except KeyError:
            raise ValueError(f"bad splitwise roles {roles!r}: use P/D or prefill/decode") from None
        if len(out) != n:
            raise ValueError(
                f"splitwise roles {roles!r} name {len(out)} nodes, the cluster has {n}"
            )
    else:
        if n < 2:
            raise ValueError("splitwise needs at least two engines (a prefill and a decode node)")
        k = prefill_nodes if prefill_nodes is not None else max(1, n // 2)
        if not 1 <= k < n:
            raise ValueError(f"splitwise prefill_nodes must be in 1..{n - 1}, got {k}")
        out = ["prefill"] * k + ["decode"] * (n - k)
    if "prefill" not in out or "decode" not in out:
        raise ValueError("splitwise needs at least one prefill and one decode node")
    return out
