"""KV block accounting of the simulated engine, with vLLM V1's automatic prefix caching:
admitting a request with its cached prefix, caching blocks as they fill, freeing and preempting.

A mixin of EngineSim (engine.py): these methods share the engine's block counters and queues."""

from __future__ import annotations

from collections import deque

from .prefix_cache import PrefixCache
from .request import SimRequest


class KvBlocks:
    """Block bookkeeping; `free_blocks` counts uncached free plus evictable cached blocks."""

    block_size: int
    free_blocks: int
    cache: PrefixCache | None
    waiting: deque[SimRequest]
    preemptions: int
    _step_cached: int  # prompt tokens served from cache to requests admitted this step

    def _admit_cached(self, r: SimRequest, budget: int, cap: int | None = None) -> int:
        """Admit waiting request r (nothing computed) with its longest cached prefix: the hit
        blocks are referenced and count as computed; then up to min(budget, cap) tokens of what
        is left get new blocks. Returns the tokens scheduled, 0 (nothing changed) if its blocks
        do not fit."""
        cache = self.cache
        assert cache is not None
        bs = self.block_size
        total = r.prompt + r.generated
        hit, hit_free = cache.match(r.hashes, (total - 1) // bs)
        done = hit * bs
        need = total - done
        n = min(need, budget) if cap is None else min(need, budget, cap)
        if n <= 0:
            return 0
        extra = -(-(done + n) // bs) - hit
        if extra + hit_free > self.free_blocks:
            return 0
        if r.preemptions == 0:
            cache.record(total, done)
            r.cached = done
            self._step_cached += done
        if hit:
            held = list(r.hashes[:hit])
            cache.acquire(held)
            r.held = held
            self.free_blocks -= hit_free
        r.sealed = hit
        r.computed = done
        r.blocks = hit + extra
        self.free_blocks -= extra
        if extra:
            cache.take(extra)
        if (done + n) // bs > hit:
            self._seal(r, done + n)
        return n

    def _seal(self, r: SimRequest, upto: int) -> None:
        """Cache r's blocks that are full once its first `upto` tokens are computed (vLLM caches
        them when it allocates for that work)."""
        cache = self.cache
        assert cache is not None
        hashes = r.hashes
        full = min(upto // self.block_size, len(hashes))
        if full > r.sealed:
            cache.store_run(hashes, r.sealed, full, r.held)
            r.sealed = full

    def _free(self, r: SimRequest) -> None:
        """Return r's KV blocks: cached ones stay cached (evictable once unreferenced)."""
        cache = self.cache
        if cache is None:
            self.free_blocks += r.blocks
        else:
            self.free_blocks += cache.release(r.held, r.blocks - len(r.held))
            r.held = []
            r.sealed = 0
        r.blocks = 0

    def _preempt(self, r: SimRequest) -> None:
        # vLLM V1 preempts by recompute: free the KV, restart the prefill from scratch.
        self._free(r)
        r.computed = 0
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)
