"""A router-side prefix index: which prompt blocks the router sent to which engine.

A router cannot see an engine's prefix cache; it can remember what it sent where. Requests carry
their prompt's chained block hashes (RequestInfo.prefix_hashes: equal hashes mean equal
prefixes), and the index keeps, per engine, the hashes it sent there in least-recently-sent
order, up to a capacity in blocks. It is the approximation llm-d's prefix-cache scorer (Gateway
API Inference Extension, `prefix-cache-scorer`: an LRU of block hashes per server) and SGLang's
cache-aware router (an approximate radix tree per worker) keep; PRISM sizes it from the engine's
`vllm:cache_config_info` (num_gpu_blocks).

Where engines publish KV events (vLLM's BlockStored / BlockRemoved), `stored()` / `removed()`
apply them, and the index then tracks the cache itself rather than a guess.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

BLOCK_TOKENS = 16  # tokens per hash in RequestInfo.prefix_hashes (vLLM's default block size)


class PrefixIndex:
    """Per-engine LRU sets of block hashes, with a hash -> engines map for matching."""

    __slots__ = ("_lru", "_where", "_cap", "default_capacity")

    def __init__(self, default_capacity: int | None = None) -> None:
        self.default_capacity = default_capacity  # blocks per engine; None: unbounded
        self._lru: list[OrderedDict[int, None]] = []
        self._where: dict[int, set[int]] = {}
        self._cap: list[int | None] = []

    def _grow(self, idx: int) -> None:
        while len(self._lru) <= idx:
            self._lru.append(OrderedDict())
            self._cap.append(self.default_capacity)

    def set_capacity(self, idx: int, blocks: int | None) -> None:
        """Blocks engine `idx` can cache (its num_gpu_blocks); trims the oldest beyond it."""
        self._grow(idx)
        self._cap[idx] = blocks
        self._trim(idx)

    def capacity(self, idx: int) -> int | None:
        self._grow(idx)
        return self._cap[idx]

    def size(self, idx: int) -> int:
        self._grow(idx)
        return len(self._lru[idx])

    def _trim(self, idx: int) -> None:
        cap = self._cap[idx]
        lru = self._lru[idx]
        if cap is None:
            return
        where = self._where
        while len(lru) > cap:
            h, _ = lru.popitem(last=False)
            s = where.get(h)
            if s is not None:
                s.discard(idx)
                if not s:
                    del where[h]

    def add(self, idx: int, hashes: Sequence[int]) -> None:
        """The router sent a prompt with these blocks to engine `idx`: they are now its newest."""
        if not hashes:
            return
        self._grow(idx)
        lru = self._lru[idx]
        where = self._where
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                s = where.get(h)
                if s is None:
                    where[h] = {idx}
                else:
                    s.add(idx)
        self._trim(idx)

    stored = add  # a KV event: the engine cached these blocks

    def removed(self, idx: int, hashes: Sequence[int]) -> None:
        """A KV event: engine `idx` evicted these blocks."""
        self._grow(idx)
        lru = self._lru[idx]
        where = self._where
        for h in hashes:
            if h in lru:
                del lru[h]
                s = where.get(h)
                if s is not None:
                    s.discard(idx)
                    if not s:
                        del where[h]

    def match(self, hashes: Sequence[int], n: int, limit: int | None = None) -> list[int]:
        """Per engine 0..n-1, how many leading blocks of `hashes` it holds (contiguous prefix).

        `limit` caps the blocks examined (llm-d matches at most 256)."""
        out = [0] * n
        where = self._where
        m = len(hashes) if limit is None else min(len(hashes), limit)
        for k in range(m):
            s = where.get(hashes[k])
            if not s:
                break
            got = 0
            for e in s:
                if e < n and out[e] == k:
                    out[e] = k + 1
                    got += 1
            if got == 0:
                break
        return out
