"""prefix_oracle: an ORACLE placement for prefix reuse (ablation; simulator, `--view oracle`).

It reads each engine's real prefix-cache contents (the oracle view's `cached_prefix_tokens`),
which no live router has, and sends a request to the engine that holds the most of its prompt,
guarded against overload the way SGLang's cache-aware router is (least in-flight engine when
the router's in-flight counts differ by more than 64 and by more than 1.5x), ties and misses
going to the least-loaded engine. Its hit rate is the comparison point for what routers that
guess the caches reach. Under the live view it refuses to run.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy


class PrefixOracle(RoutingPolicy):
    name = "prefix_oracle"
    uses_prefix = True  # the live router hashes prompt blocks for it
    oracle = True

    def __init__(self, balance_abs_threshold: int = 64, balance_rel_threshold: float = 1.5):
        self.balance_abs = int(balance_abs_threshold)
        self.balance_rel = float(balance_rel_threshold)

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        idx = [i for i, e in enumerate(engines) if e.healthy]
        if not idx:
            raise NoEngineAvailable("no healthy engine")
        probe = getattr(engines[idx[0]], "cached_prefix_tokens", None)
        if probe is None:
            raise ValueError(
                "prefix_oracle reads the engines' real caches: run it under --view oracle"
            )
        loads = [engines[i].inflight for i in idx]
        lo, hi = min(loads), max(loads)
        least = idx[loads.index(lo)]
        if not req.prefix_hashes or (hi - lo > self.balance_abs and hi > self.balance_rel * lo):
            return least
        best, best_key = least, (0, -lo)
        for i, load in zip(idx, loads, strict=True):
            key = (engines[i].cached_prefix_tokens(req.prefix_hashes), -load)
            if key > best_key:
                best, best_key = i, key
        return best
