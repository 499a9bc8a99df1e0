"""FastDeploy's local and global scheduler modes as routing policies (splitwise, the third, is
in fastdeploy_splitwise.py).

They hold requests at the router front (`holds = True`): each node (engine) has its own queue,
requests reach the queues through a front load balancer (smooth weighted round robin; equal
weights by default), and an engine pulls from its queue only when it has free KV blocks and token
budget (`pull`). `global` adds work stealing from nodes whose queue is at least `min_load_score`
long.

The decisions are the pure functions of `fastdeploy.py`, which the live Redis-backed nodes call
too. Parameter names and defaults are FastDeploy's.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from itertools import islice

from .base import (
    Dropped,
    EngineView,
    NoEngineAvailable,
    RequestInfo,
    RoutingPolicy,
    healthy_indices,
)
from .fastdeploy import (
    LOAD_COUNT,
    MAX_NUM_BATCHED_TOKENS,
    MAX_PREFILL_BATCH,
    RESERVED_OUTPUT_BLOCKS,
    PendingPulls,
    Resources,
    SmoothWeighted,
    admit_count,
    can_ever_hold,
    choose_victim,
    engine_resources,
    lookup_shards,
    mini_batches,
    node_shard,
    parse_weights,
    steal_candidates,
)


class QueueFull(NoEngineAvailable):
    """A node's queue is at `scheduler_max_size` (the live router answers 429)."""


class TooLarge(NoEngineAvailable):
    """No node can ever hold the request (the live router answers 400 context_length_exceeded)."""


def too_large(req: RequestInfo, where: str) -> TooLarge:
    return TooLarge(
        f"a request of {req.prompt_tokens} prompt tokens + {req.max_tokens} max_tokens fits no "
        f"{where}'s KV cache or context length"
    )


def check_param(name: str, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {what}")


class NodeQueues(RoutingPolicy):
    """What FastDeploy's modes share: a FIFO queue per node that its engine pulls from within its
    KV blocks and token budget, requests that expire after `ttl` seconds queued, and the
    requests given up on (take_dropped)."""

    holds = True

    def __init__(
        self,
        ttl: float,
        max_prefill_batch: int,
        reserved_output_blocks: int,
        max_num_batched_tokens: int,
        seed: int,
    ) -> None:
        check_param("scheduler_ttl", ttl > 0, f"must be positive, got {ttl}")
        self.ttl = float(ttl)
        self.max_prefill_batch = max_prefill_batch
        self.reserved_output_blocks = reserved_output_blocks
        self.max_num_batched_tokens = int(max_num_batched_tokens)
        self.pending = PendingPulls()  # pulled by an engine, not yet seen taken by a scrape
        self.rng = random.Random(seed)
        self.queues: list[deque[RequestInfo]] = []
        self.expired = 0
        self._dropped: list[Dropped] = []

    def take_dropped(self) -> list[Dropped]:
        out, self._dropped = self._dropped, []
        return out

    @property
    def held(self) -> int:
        return sum(len(q) for q in self.queues)


class FastDeployLocal(NodeQueues):
    """Per-node in-memory queues with max_size rejection and TTL expiry; no stealing."""

    name = "local"

    def __init__(
        self,
        max_size: int = -1,
        ttl: float = 900.0,
        front_weights: str | Sequence[float] | None = None,
        max_prefill_batch: int = MAX_PREFILL_BATCH,
        reserved_output_blocks: int = RESERVED_OUTPUT_BLOCKS,
        max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
        seed: int = 0,
    ) -> None:
        super().__init__(
            ttl, max_prefill_batch, reserved_output_blocks, max_num_batched_tokens, seed
        )
        check_param(
            "scheduler_max_size",
            max_size == -1 or max_size > 0,
            f"must be -1 (unbounded) or positive, got {max_size}",
        )
        self.max_size = int(max_size)
        self.front_spec = front_weights
        self.front: SmoothWeighted | None = None
        self.outstanding: list[int] = []  # queued + pulled and unfinished (FastDeploy's max_size)
        self.origin: dict[object, int] = {}
        self.rejected = 0
        self.steals = 0

    def _ensure(self, n: int) -> None:
        k = len(self.queues)
        if k == n:
            return
        weights = parse_weights(self.front_spec, n)
        if 0 < k < n and self.front is not None:
            # nodes joined (live membership): the others keep their queues and front position
            self.queues += [deque() for _ in range(n - k)]
            self.outstanding += [0] * (n - k)
            self.front.grow(weights)
            return
        self.queues = [deque() for _ in range(n)]
        self.outstanding = [0] * n
        self.front = SmoothWeighted(weights)

    def evacuate(self, idx: int) -> list[RequestInfo]:
        """Take every request still queued at node `idx` out of its queue (the node left: the
        caller routes them again); requests its engine already took stay counted there."""
        if idx >= len(self.queues):
            return []
        q = self.queues[idx]
        out = list(q)
        q.clear()
        for r in out:
            self.origin.pop(r.id, None)
            self.outstanding[idx] -= 1
        return out

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int | None:
        self._ensure(len(engines))
        assert self.front is not None
        up = healthy_indices(engines)
        node = self.front.next(up)
        if not self._holds(engines[node], req):
            # hand it to the next node (by the front's order) that can ever hold it; none: refuse,
            # rather than let it block a queue whose engine can never admit it
            fit = [i for i in up if self._holds(engines[i], req)]
            if not fit:
                self.rejected += 1
                raise too_large(req, "node")
            node = self.front.next(fit)
        if self.max_size > 0 and self.outstanding[node] >= self.max_size:
            self.rejected += 1
            raise QueueFull(
                f"node {engines[node].name} is full (scheduler_max_size={self.max_size})"
            )
        self.queues[node].append(req)
        self.outstanding[node] += 1
        self.origin[req.id] = node
        return None

    def _holds(self, view: EngineView, req: RequestInfo) -> bool:
        return can_ever_hold(view, req.prompt_tokens, 0, self.reserved_output_blocks)

    def _drop(self, r: RequestInfo, reason: str, message: str) -> None:
        node = self.origin.pop(r.id, None)
        if node is not None:
            self.outstanding[node] -= 1
        self._dropped.append(Dropped(r.id, reason, message))

    def _expire(self, q: deque[RequestInfo], now: float) -> None:
        # FIFO queue: the oldest are at the head
        while q and now - q[0].arrival > self.ttl:
            r = q.popleft()
            self.expired += 1
            self._drop(r, "expired", f"queued longer than scheduler_ttl={self.ttl:g}s")

    def _take(
        self,
        q: deque[RequestInfo],
        n: int,
        res: Resources,
        now: float,
        view: EngineView | None = None,
    ) -> list[RequestInfo]:
        self._expire(q, now)
        # a head this engine can never admit would block the queue for good: refuse it
        while q and view is not None and not self._holds(view, q[0]):
            r = q.popleft()
            self.rejected += 1
            self._drop(r, "rejected", str(too_large(r, f"engine ({view.name})")))
        if not q or n <= 0:
            return []
        head = list(islice(q, min(n, res.batch)))
        k = admit_count([r.prompt_tokens for r in head], res)
        return [q.popleft() for _ in range(k)]

    def resources(self, engines: Sequence[EngineView], idx: int) -> Resources | None:
        v = engines[idx]
        return engine_resources(
            v,
            self.max_prefill_batch,
            self.reserved_output_blocks,
            self.pending.waiting(idx, v),
            self.max_num_batched_tokens,
        )

    def pull(self, idx: int, engines: Sequence[EngineView], now: float) -> list[RequestInfo]:
        if not self.queues:
            return []
        res = self.resources(engines, idx)
        if res is None:
            return []
        got = self._take(self.queues[idx], res.batch, res, now, engines[idx])
        if not got and not self.queues[idx]:
            got = self._steal(idx, engines, res, now)
        for r in got:
            self.pending.sent(idx, r.id, now)
        return got

    def _steal(
        self, idx: int, engines: Sequence[EngineView], res: Resources, now: float
    ) -> list[RequestInfo]:
        return []

    def on_first_token(self, req_id: object, idx: int, now: float) -> None:
        self.pending.done(idx, req_id)  # the engine has taken it (as the live NodeView confirms)

    def on_finish(self, req_id: object, idx: int, now: float) -> None:
        self.pending.done(idx, req_id)
        node = self.origin.pop(req_id, None)
        if node is not None:
            self.outstanding[node] -= 1

    def cancel(self, req_id: object) -> bool:
        """Drop a request still queued (its TTL passed or its client left); True if it was."""
        node = self.origin.get(req_id)
        if node is None:
            return False
        for q in self.queues:
            for r in q:
                if r.id == req_id:
                    q.remove(r)
                    self.origin.pop(req_id, None)
                    self.outstanding[node] -= 1
                    return True
        return False


class FastDeployGlobal(FastDeployLocal):
    """Local queues plus work stealing: an engine with room and an empty queue takes a small batch
    from a random node whose queue holds at least `min_load_score` requests."""

    name = "global"

    def __init__(self, min_load_score: float = 3, load_shards_num: int = 1, **kw: object) -> None:
        check_param(
            "scheduler_min_load_score", min_load_score >= 1, f"must be >= 1, got {min_load_score}"
        )
        check_param(
            "scheduler_load_shards_num",
            load_shards_num >= 1,
            f"must be >= 1, got {load_shards_num}",
        )
        super().__init__(**kw)  # type: ignore[arg-type]
        self.min_load_score = float(min_load_score)
        self.load_shards_num = int(load_shards_num)
        self._slot = 0
        self._shard_members: list[list[int]] | None = None

    def _ensure(self, n: int) -> None:
        if len(self.queues) != n:
            super()._ensure(n)
            self._shard_members = None

    def _steal(
        self, idx: int, engines: Sequence[EngineView], res: Resources, now: float
    ) -> list[RequestInfo]:
        if self._shard_members is None:
            # a node's shard is a hash of its name (as in the Redis load table)
            self._shard_members = [[] for _ in range(self.load_shards_num)]
            for i, e in enumerate(engines):
                self._shard_members[node_shard(e.name, self.load_shards_num)].append(i)
        heavy: list[str] = []
        for shard in lookup_shards(self._slot, self.load_shards_num):
            self._slot += 1
            # ZRANGEBYSCORE min +inf: ascending by score, first LOAD_COUNT
            members = sorted(
                (
                    j
                    for j in self._shard_members[shard]
                    if len(self.queues[j]) >= self.min_load_score
                ),
                key=lambda j: len(self.queues[j]),
            )[:LOAD_COUNT]
            if members:
                heavy = [str(j) for j in members]
                break
        victim = choose_victim(steal_candidates(heavy, str(idx), self.rng), self.rng)
        if victim is None:
            return []
        vq = self.queues[int(victim)]
        if vq and not self._holds(engines[idx], vq[0]):
            return []  # its head is too large for this engine (its own node can hold it)
        got = self._take(vq, mini_batches(res.batch)[0], res, now)
        self.steals += len(got)
        return got
