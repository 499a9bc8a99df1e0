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

from collections import OrderedDict, deque
from collections.abc import Sequence
from itertools import repeat

BLOCK_TOKENS = 16  # tokens per hash in RequestInfo.prefix_hashes (vLLM's default block size)


class PrefixIndex:
    """Per-engine LRU sets of block hashes.

    Matching asks each engine's set in turn (a prompt's blocks are matched only up to each
    engine's first miss), so no hash -> engines map needs keeping up on every add and eviction:
    the sets change far more often than they are matched."""

    __slots__ = ("_lru", "_cap", "default_capacity")

    def __init__(self, default_capacity: int | None = None) -> None:
        self.default_capacity = default_capacity  # blocks per engine; None: unbounded
        self._lru: list[OrderedDict[int, None]] = []
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
        over = len(lru) - cap
        if over > 0:
            pop = lru.popitem
            for _ in range(over):
                pop(last=False)

    def add(self, idx: int, hashes: Sequence[int]) -> None:
        """The router sent a prompt with these blocks to engine `idx`: they are now its newest
        (in the order sent; a hash sent twice counts where it was last sent)."""
        if not hashes:
            return
        if idx >= len(self._lru):
            self._grow(idx)
        lru = self._lru[idx]
        if len(hashes) <= 16:
            # A short prompt (the common case: one block per 16 tokens): a plain loop is cheaper
            # than the bulk path's setup, and leaves the same order (each hash moves to the end
            # where it is sent, so a hash sent twice ends where it was last sent).
            move = lru.move_to_end
            for h in hashes:
                if h in lru:
                    move(h)
                else:
                    lru[h] = None
            cap = self._cap[idx]
            if cap is not None and len(lru) > cap:
                self._trim(idx)
            return
        # Bulk, in C: drop the ones held, then append all (prompts are hundreds of blocks long,
        # and a per-block Python loop here was a third of a prefix-heavy simulation).
        order = list(dict.fromkeys(reversed(hashes)))  # each hash once, by last send, newest first
        order.reverse()
        deque(map(lru.pop, order, repeat(None)), maxlen=0)
        lru.update(zip(order, repeat(None)))
        self._trim(idx)

    stored = add  # a KV event: the engine cached these blocks

    def removed(self, idx: int, hashes: Sequence[int]) -> None:
        """A KV event: engine `idx` evicted these blocks."""
        self._grow(idx)
        deque(map(self._lru[idx].pop, hashes, repeat(None)), maxlen=0)

    def match(self, hashes: Sequence[int], n: int, limit: int | None = None) -> list[int]:
        """Per engine 0..n-1, how many leading blocks of `hashes` it holds (contiguous prefix).

        `limit` caps the blocks examined (llm-d matches at most 256)."""
        out = [0] * n
        m = len(hashes) if limit is None else min(len(hashes), limit)
        if m == 0:
            return out
        for e, lru in enumerate(self._lru[:n]):
            if hashes[0] not in lru:
                continue
            k = 1
            while k < m and hashes[k] in lru:
                k += 1
            out[e] = k
        return out

    def hit_tokens(self, hashes: Sequence[int], n: int, cap: int) -> list[int]:
        """Per engine 0..n-1, the tokens of `hashes`' leading blocks it holds, at most `cap`
        blocks: [min(k, cap) * BLOCK_TOKENS for k in match(hashes, n)], in one pass (PRISM asks
        this for every request it routes)."""
        out = [0] * n
        m = len(hashes)
        if m == 0:
            return out
        h0 = hashes[0]
        for e, lru in enumerate(self._lru[:n]):
            if h0 not in lru:
                continue
            k = 1
            while k < m and hashes[k] in lru:
                k += 1
            out[e] = (k if k < cap else cap) * BLOCK_TOKENS
        return out
