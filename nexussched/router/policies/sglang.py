"""SGLang's router (SGLang Model Gateway) `cache_aware` policy, its default.

Behaviour as SGLang's router documentation and its sources describe it (sgl-project/sglang,
sgl-model-gateway; the defaults are its router_args.py's: cache_threshold 0.3,
balance_abs_threshold 64, balance_rel_threshold 1.5, eviction_interval_secs 120, max_tree_size
2**26):
- the router keeps an approximate radix tree per worker of the request texts it sent there;
- load is each worker's count of the router's requests in flight there; the system is
  imbalanced when (max load - min load) > balance_abs_threshold AND max load >
  balance_rel_threshold * min load; then the request goes to the least-loaded worker;
- otherwise the request's longest prefix match in each worker's tree is found; if the best match
  rate (matched / request length) exceeds cache_threshold, the worker with that match gets it,
  else the worker with the smallest tree (the most cache room);
- the request's text is inserted into the chosen worker's tree; every eviction interval each
  tree is trimmed, least recently used first, to max_tree_size.
Our tree is approximate at block granularity: a request's text is its prompt's 16-token block
hashes (a chain, so a path from the root), and a tree's size is its number of blocks
(max_tree_size, in characters there, becomes max_tree_size / 64 blocks at 4 characters a token).
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import EngineView, NoEngineAvailable, RequestInfo, RoutingPolicy
from .prefix_index import BLOCK_TOKENS, PrefixIndex

CHARS_PER_BLOCK = 64  # 16 tokens x ~4 characters


class SglangCacheAware(RoutingPolicy):
    name = "sglang_cache_aware"
    uses_prefix = True  # the live router hashes prompt blocks for it

    def __init__(
        self,
        cache_threshold: float = 0.3,
        balance_abs_threshold: int = 64,
        balance_rel_threshold: float = 1.5,
        eviction_interval: float = 120.0,
        max_tree_size: int = 2**26,
    ) -> None:
        if not 0.0 <= cache_threshold <= 1.0:
            raise ValueError("sglang_cache_aware: cache_threshold must be in [0, 1]")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1.0:
            raise ValueError(
                "sglang_cache_aware: balance_abs_threshold must be >= 0 and "
                "balance_rel_threshold >= 1"
            )
        if eviction_interval <= 0 or max_tree_size < CHARS_PER_BLOCK:
            raise ValueError("sglang_cache_aware: eviction_interval and max_tree_size too small")
        self.cache_threshold = float(cache_threshold)
        self.balance_abs = int(balance_abs_threshold)
        self.balance_rel = float(balance_rel_threshold)
        self.eviction_interval = float(eviction_interval)
        self.max_blocks = int(max_tree_size) // CHARS_PER_BLOCK
        self.tree = PrefixIndex(None)  # unbounded between evictions, as SGLang's tree
        self._next_evict: float | None = None
        self._rr = 0

    def _evict(self, n: int, now: float) -> None:
        if self._next_evict is None:
            self._next_evict = now + self.eviction_interval
        if now < self._next_evict:
            return
        for i in range(n):
            self.tree.set_capacity(i, self.max_blocks)  # trims least recently used
            self.tree.set_capacity(i, None)
        self._next_evict = now + self.eviction_interval

    def route(self, req: RequestInfo, engines: Sequence[EngineView], now: float) -> int:
        idx = [i for i, e in enumerate(engines) if e.healthy]
        if not idx:
            raise NoEngineAvailable("no healthy engine")
        n = len(engines)
        self._evict(n, now)
        loads = [engines[i].inflight for i in idx]
        lo, hi = min(loads), max(loads)
        hashes = req.prefix_hashes
        if hi - lo > self.balance_abs and hi > self.balance_rel * lo:
            pick = idx[loads.index(lo)]
        else:
            pick = -1
            if hashes:
                matched = self.tree.match(hashes, n)
                best = max(idx, key=lambda i: matched[i])
                # match rate over the request's text; the partial last block counts as unmatched
                if matched[best] * BLOCK_TOKENS / max(1, req.prompt_tokens) > self.cache_threshold:
                    pick = best
            if pick < 0:
                # the smallest tree: the most room for new cache (ties rotate)
                k = len(idx)
                self._rr = (self._rr + 1) % k
                order = idx[self._rr :] + idx[: self._rr]
                pick = min(order, key=self.tree.size)
        if hashes:
            self.tree.add(pick, hashes)
        return pick
