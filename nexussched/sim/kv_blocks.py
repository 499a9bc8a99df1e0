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

    def _seal(self, r: SimRequest, upto: int, freeing: bool = False) -> None:
        """Cache r's blocks that are full once its first `upto` tokens are computed (vLLM caches
        them when it allocates for that work). Blocks of a request's own content (`own_content`)
        are cached only when a preemption frees them (`freeing`): no other request can hit them,
        so caching them as they fill would be work for nothing."""
        if r.own_content and not freeing:
            return
        cache = self.cache
        assert cache is not None
        hashes = r.hashes
        full = min(upto // self.block_size, len(hashes))
        if full > r.sealed:
            cache.store_run(hashes, r.sealed, full, r.held)
            r.sealed = full

    def _free(self, r: SimRequest, preempted: bool = False) -> None:
        """Return r's KV blocks: cached ones stay cached (evictable once unreferenced). A
        preempted request's blocks of its own content are cached now, for its re-admission; a
        finished one's return uncached, as no request can hit them again. (vLLM keeps those in
        its LRU, after blocks freed before them; returned uncached they are evicted first, so a
        preempted request's blocks can outlive them here: on 1,500 azure-conv requests on 2
        overloaded l4s, 349 preemptions instead of 340 and attainment 6.33% instead of 6.27%,
        with 2-5x less simulation CPU than caching every block.)"""
        cache = self.cache
        if cache is None:
            self.free_blocks += r.blocks
        else:
            if preempted and r.own_content and r.computed // self.block_size > r.sealed:
                self._seal(r, r.computed, freeing=True)
            self.free_blocks += cache.release(r.held, r.blocks - len(r.held))
            r.held = []
            r.sealed = 0
        r.blocks = 0

    def _preempt(self, r: SimRequest) -> None:
        # vLLM V1 preempts by recompute: free the KV, restart the prefill from scratch.
        self._free(r, preempted=True)
        r.computed = 0
        r.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(r)
