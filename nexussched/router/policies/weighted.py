"""An llm-d-style weighted scorer: queue depth + KV-cache use, highest total score wins.

Behaviour follows llm-d's inference scheduler (Gateway API Inference Extension endpoint picker)
as its documentation and sample configs describe it, for a workload without prefix reuse:
- queue scorer: each endpoint's waiting-queue length, min-max normalised across the candidates,
  so the shortest queue scores 1 and the longest 0; all equal scores 1 for everyone;
- KV-cache utilisation scorer: 1 - the endpoint's KV-cache usage;
- the weighted sum of the scores; the max-score picker takes the best, breaking ties at random.
The default weights are llm-d's default profile's (queue 2, KV cache 2; its prefix-cache scorer,
weight 3, has nothing to score here because the simulated engines keep no prefix cache).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy


class WeightedScorer(RoutingPolicy):
    name = "llmd_weighted"

    def __init__(self, queue_weight: float = 2.0, kv_weight: float = 2.0, seed: int = 0) -> None:
        if queue_weight < 0 or kv_weight < 0:
            raise ValueError("llmd_weighted: weights must be >= 0")
        self.queue_weight = float(queue_weight)
        self.kv_weight = float(kv_weight)
        self._rng = random.Random(seed)

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        idx = [i for i, e in enumerate(engines) if e.healthy]
        if not idx:
            raise NoEngineAvailable("no healthy engine")
        queues = [engines[i].num_waiting for i in idx]
        qmin, qmax = min(queues), max(queues)
        span = qmax - qmin
        best: list[int] = []
        best_score = -1.0
        for i, q in zip(idx, queues, strict=True):
            qs = 1.0 if span == 0 else (qmax - q) / span
            score = self.queue_weight * qs + self.kv_weight * (1.0 - engines[i].kv_usage)
            if score > best_score + 1e-12:
                best, best_score = [i], score
            elif score >= best_score - 1e-12:
                best.append(i)
        return best[0] if len(best) == 1 else self._rng.choice(best)
