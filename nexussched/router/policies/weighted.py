"""An llm-d-style weighted scorer: prefix cache + queue depth + KV-cache use, best total wins.

Behaviour follows llm-d's inference scheduler (the Gateway API Inference Extension endpoint
picker) as its documentation, default configuration and plugin sources give it:
- prefix-cache scorer (`prefix-cache-scorer`): the router remembers, per endpoint, the block
  hashes of the prompts it sent there (an LRU per server); an endpoint scores the share of the
  request's blocks that form a prefix it holds. Defaults from the plugin (GIE
  pkg/epp/scheduling/framework/plugins/multi/prefix/plugin.go): hash blocks of 64 characters
  (vLLM's 16-token block at ~4 characters a token: our RequestInfo.prefix_hashes, 16 tokens
  each), at most 256 blocks matched, 31,250 entries per server, or, with its autoTune, the
  server's own KV block count where `vllm:cache_config_info` gives it;
- queue scorer: each endpoint's waiting-queue length, min-max normalised across the candidates,
  so the shortest queue scores 1 and the longest 0; all equal scores 1 for everyone;
- KV-cache utilisation scorer: 1 - the endpoint's KV-cache usage;
- the weighted sum of the scores; the max-score picker takes the best, breaking ties at random.
The default weights are llm-d's default scheduling profile's (llm-d inference-scheduling guide,
EndpointPickerConfig `default`: prefix-cache-scorer 3, queue-scorer 2,
kv-cache-utilization-scorer 2). After picking, the request's blocks are recorded for the endpoint
(the plugin's PreRequest step).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy
from .prefix_index import PrefixIndex

LLMD_MAX_PREFIX_BLOCKS = 256
LLMD_LRU_CAPACITY_PER_SERVER = 31250


class WeightedScorer(RoutingPolicy):
    name = "llmd_weighted"
    uses_prefix = True  # the live router hashes prompt blocks for it

    def __init__(
        self,
        queue_weight: float = 2.0,
        kv_weight: float = 2.0,
        prefix_weight: float = 3.0,
        max_prefix_blocks: int = LLMD_MAX_PREFIX_BLOCKS,
        lru_capacity: int = LLMD_LRU_CAPACITY_PER_SERVER,
        auto_tune: bool = True,
        seed: int = 0,
    ) -> None:
        if queue_weight < 0 or kv_weight < 0 or prefix_weight < 0:
            raise ValueError("llmd_weighted: weights must be >= 0")
        if max_prefix_blocks < 1 or lru_capacity < 1:
            raise ValueError("llmd_weighted: max_prefix_blocks and lru_capacity must be >= 1")
        self.queue_weight = float(queue_weight)
        self.kv_weight = float(kv_weight)
        self.prefix_weight = float(prefix_weight)
        self.max_prefix_blocks = int(max_prefix_blocks)
        self.auto_tune = bool(auto_tune)
        self.index = PrefixIndex(int(lru_capacity))
        self._sized: set[int] = set()
        self._rng = random.Random(seed)

    def _size(self, engines: Sequence[EngineView]) -> None:
        for i, e in enumerate(engines):
            if i in self._sized:
                continue
            nb = getattr(e, "num_gpu_blocks", None)
            if nb:
                self.index.set_capacity(i, int(nb))
                self._sized.add(i)

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        idx = [i for i, e in enumerate(engines) if e.healthy]
        if not idx:
            raise NoEngineAvailable("no healthy engine")
        hashes = req.prefix_hashes[: self.max_prefix_blocks]
        if self.auto_tune and len(self._sized) < len(engines):
            self._size(engines)
        matched = self.index.match(hashes, len(engines)) if hashes else None
        total = len(hashes)
        queues = [engines[i].num_waiting for i in idx]
        qmin, qmax = min(queues), max(queues)
        span = qmax - qmin
        best: list[int] = []
        best_score = -1.0
        for i, q in zip(idx, queues, strict=True):
            qs = 1.0 if span == 0 else (qmax - q) / span
            score = self.queue_weight * qs + self.kv_weight * (1.0 - engines[i].kv_usage)
            if matched is not None:
                score += self.prefix_weight * matched[i] / total
            if score > best_score + 1e-12:
                best, best_score = [i], score
            elif score >= best_score - 1e-12:
                best.append(i)
        pick = best[0] if len(best) == 1 else self._rng.choice(best)
        if hashes:
            self.index.add(pick, hashes)
        return pick
