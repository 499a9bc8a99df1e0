"""The simulator's speed-ups change no result: each fast path against a plain reference."""

from __future__ import annotations

import random
from collections import OrderedDict

from nexussched.router.policies.prefix_index import PrefixIndex
from nexussched.sim.prefix_cache import PrefixCache, block_chain, cached_block_chain


class ReferenceIndex:
    """The prefix index as a plain per-block loop (how it was written before the bulk version)."""

    def __init__(self, cap: int | None) -> None:
        self.default = cap
        self.lru: list[OrderedDict[int, None]] = []
        self.cap: list[int | None] = []

    def _grow(self, idx: int) -> None:
        while len(self.lru) <= idx:
            self.lru.append(OrderedDict())
            self.cap.append(self.default)

    def _trim(self, idx: int) -> None:
        cap = self.cap[idx]
        while cap is not None and len(self.lru[idx]) > cap:
            self.lru[idx].popitem(last=False)

    def set_capacity(self, idx: int, blocks: int | None) -> None:
        self._grow(idx)
        self.cap[idx] = blocks
        self._trim(idx)

    def add(self, idx: int, hashes: list[int]) -> None:
        if not hashes:
            return
        self._grow(idx)
        for h in hashes:
            if h in self.lru[idx]:
                self.lru[idx].move_to_end(h)
            else:
                self.lru[idx][h] = None
        self._trim(idx)

    def removed(self, idx: int, hashes: list[int]) -> None:
        self._grow(idx)
        for h in hashes:
            self.lru[idx].pop(h, None)

    def match(self, hashes: list[int], n: int, limit: int | None) -> list[int]:
        m = len(hashes) if limit is None else min(len(hashes), limit)
        out = []
        for e in range(n):
            lru = self.lru[e] if e < len(self.lru) else {}
            k = 0
            while k < m and hashes[k] in lru:
                k += 1
            out.append(k)
        return out


def test_prefix_index_matches_the_per_block_reference_under_random_use():
    rng = random.Random(7)
    for cap in (None, 40):
        fast, ref = PrefixIndex(cap), ReferenceIndex(cap)
        for _ in range(3000):
            idx = rng.randrange(4)
            # prompts share prefixes drawn from a small pool, sometimes repeating a block
            hashes = [rng.randrange(60) for _ in range(rng.randrange(0, 30))]
            op = rng.random()
            if op < 0.45:
                fast.add(idx, hashes)
                ref.add(idx, hashes)
            elif op < 0.6:
                fast.stored(idx, hashes)
                ref.add(idx, hashes)
            elif op < 0.8:
                fast.removed(idx, hashes)
                ref.removed(idx, hashes)
            elif op < 0.85:
                c = rng.choice((None, 10, 25, 50))
                fast.set_capacity(idx, c)
                ref.set_capacity(idx, c)
            limit = rng.choice((None, 5))
            assert fast.match(hashes, 5, limit) == ref.match(hashes, 5, limit)
            ref._grow(idx)
            assert fast.size(idx) == len(ref.lru[idx])
        # the recency order too: trimming to one block keeps each engine's newest
        for idx in range(4):
            fast.set_capacity(idx, 1)
            ref.set_capacity(idx, 1)
            (newest,) = ref.lru[idx] or (None,)
            if newest is not None:
                assert fast.match([newest], 4, None)[idx] == 1


def test_cached_block_chain_is_block_chain():
    src = (11, 12, 13, 14)
    for tokens in (0, 15, 16, 600, 2048, 5000):
        assert cached_block_chain(src, 512, tokens, 16) == block_chain(src, 512, tokens, 16)
    assert cached_block_chain(src, 512, 600, 16) is cached_block_chain(src, 512, 600, 16)


def test_prefix_cache_store_and_evict_keep_the_per_block_bookkeeping():
    events: list[tuple[str, list[int]]] = []
    c = PrefixCache(4, lambda kind, hs: events.append((kind, list(hs))))
    held: list[int] = []
    c.take(3)
    # a run with a repeated block and one already cached: each new hash stored once, in order
    c.store_run([1, 2, 2, 3], 0, 4, held)
    c.store_run([3, 4], 0, 2, held)
    assert held == [1, 2, 3, 4]
    assert events == [("stored", [1, 2, 3]), ("stored", [4])]
    assert c.release(held, 0) == 4  # all four unreferenced now: free, still cached
    events.clear()
    c.take(2)  # one uncached free block, then the least recently freed cached one
    assert events == [("removed", [4])]


def test_prefix_cache_release_frees_only_unshared_blocks_tail_first():
    events: list[tuple[str, list[int]]] = []
    c = PrefixCache(6, lambda kind, hs: events.append((kind, list(hs))))
    a: list[int] = []
    c.take(4)
    c.store_run([1, 2, 3, 4], 0, 4, a)
    b = [1, 2]
    c.acquire(b)  # a second request shares the first two blocks
    assert c.release(a, 0) == 2  # only 3 and 4 are unreferenced now
    assert c.release(b, 1) == 1 + 2  # one uncached block, then 1 and 2
    c.take(3 + 3)  # the 3 uncached free blocks first, then the oldest freed: 4, 3, 2 (tail first)
    assert events[-1] == ("removed", [4, 3, 2])
    # a block listed twice is released twice (the exact path, not the bulk one)
    d = PrefixCache(4)
    d.take(1)
    d.store_run([9], 0, 1, [])
    d.acquire([9])
    assert d.release([9, 9], 0) == 1 and d.num_free == 4
