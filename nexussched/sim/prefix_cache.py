"""Automatic prefix caching for the simulated engine, as vLLM V1 does it.

Behaviour follows vLLM V1's KV cache manager and block pool (vllm/v1/core/kv_cache_manager.py,
block_pool.py; design doc "Automatic Prefix Caching"):
- only full blocks are cached, each under a hash of its tokens chained with its parent's hash, so
  one hash names a whole prefix and a lookup walks a request's chain until the first miss;
- a hit is capped at `num_tokens - 1` tokens (the last prompt token is always computed, for its
  logits), in whole blocks;
- a request's blocks are cached as soon as they are allocated for full-block work;
- cached blocks are reference-counted; a block no request references stays cached but free, and
  is evicted least-recently-freed first, only when a new block is needed and no uncached free
  block is left (vLLM puts unhashed freed blocks at the front of its free queue, hashed ones at
  the back; a request frees its blocks tail first, so a shared prefix outlives its suffixes);
- stats as vLLM's PrefixCacheStats: per lookup, `queries` += the request's tokens and `hits` +=
  the hit tokens (a preempted request's re-lookups are left out, as in recent vLLM).

The pool counts blocks; only cached ones have an identity. Free blocks = uncached free blocks +
cached blocks with no reference (evictable), which is what vLLM's `kv_cache_usage_perc` reports
as free.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import compress, filterfalse, repeat
from operator import not_

_minus_one = (-1).__add__  # c - 1, mapped in C

BlockListener = Callable[[str, list[int]], None]  # ("stored" | "removed", block hashes)


def block_chain(
    source: Sequence[int], source_block: int, tokens: int, block_size: int
) -> tuple[int, ...]:
    """Hashes of a sequence's full engine blocks from hashes of its `source_block`-token blocks.

    `source[i]` names the content of source block i (Mooncake's `hash_ids` use 512-token blocks);
    the source hashes are chained first, so equal engine hashes mean equal prefixes even if the
    source ids name blocks alone. Engine block k (tokens up to e = (k+1) * block_size) is named by
    the chained source hash of the block holding token e-1 and e's offset in it. Only the first
    `tokens` tokens (at most what the source covers) get hashes.
    """
    if not source or block_size <= 0 or source_block <= 0:
        return ()
    chained: list[int] = []
    h = 0x9E3779B9
    for s in source:
        h = hash((h, s))
        chained.append(h)
    covered = min(len(source) * source_block, tokens)
    P = source_block
    return tuple(
        hash((chained[(e - 1) // P], e - ((e - 1) // P) * P))
        for e in range(block_size, covered + 1, block_size)
    )


@lru_cache(maxsize=4096)
def cached_block_chain(
    source: tuple[int, ...], source_block: int, tokens: int, block_size: int
) -> tuple[int, ...]:
    """block_chain, remembered: a report replays one trace slice in dozens of runs per worker
    process, and a long prompt's chain is hundreds of hashes (~15% of a cheap Mooncake run)."""
    return block_chain(source, source_block, tokens, block_size)


class PrefixCache:
    """The cached-block side of a paged KV pool (the engine keeps the total free count).

    `anon_free` is the number of free blocks without a cached identity; `lru` holds cached blocks
    no request references, oldest first; `ref` maps every cached block to its reference count.
    """

    __slots__ = ("anon_free", "lru", "ref", "queries", "hits", "requests", "listener")

    def __init__(self, num_blocks: int, listener: BlockListener | None = None) -> None:
        self.anon_free = num_blocks
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.ref: dict[int, int] = {}
        self.queries = 0
        self.hits = 0
        self.requests = 0
        self.listener = listener  # KV events (BlockStored / BlockRemoved), where published

    @property
    def num_free(self) -> int:
        return self.anon_free + len(self.lru)

    @property
    def num_cached(self) -> int:
        return len(self.ref)

    def match(self, hashes: Sequence[int], max_blocks: int) -> tuple[int, int]:
        """(blocks of the longest cached prefix of `hashes`, how many of them are free now)."""
        ref = self.ref
        k = 0
        free = 0
        n = min(len(hashes), max_blocks)
        while k < n:
            c = ref.get(hashes[k])
            if c is None:
                break
            if c == 0:
                free += 1
            k += 1
        return k, free

    def record(self, tokens: int, hit_tokens: int) -> None:
        self.requests += 1
        self.queries += tokens
        self.hits += hit_tokens

    def acquire(self, hashes: Sequence[int]) -> None:
        """Reference cached blocks (a hit); free ones leave the evictable list."""
        ref = self.ref
        lru = self.lru
        for h in hashes:
            c = ref[h]
            if c == 0:
                del lru[h]
            ref[h] = c + 1

    def take(self, n: int) -> None:
        """Hand out n free blocks (the caller checked they exist): uncached ones first, then the
        least recently freed cached ones, whose cache entries are evicted."""
        a = self.anon_free
        if n <= a:
            self.anon_free = a - n
            return
        self.anon_free = 0
        n -= a
        pop = self.lru.popitem
        gone = [pop(last=False)[0] for _ in range(n)]
        deque(map(self.ref.__delitem__, gone), maxlen=0)  # a loop in C: evictions come in hundreds
        if self.listener is not None:
            self.listener("removed", gone)

    def store(self, h: int) -> bool:
        """A block the caller holds became full with content `h`: cache it (reference 1).

        False if `h` is cached already (computed twice at once): the block stays uncached."""
        if h in self.ref:
            return False
        self.ref[h] = 1
        if self.listener is not None:
            self.listener("stored", [h])
        return True

    def store_run(self, hashes: Sequence[int], start: int, stop: int, held: list[int]) -> None:
        """store() for hashes[start:stop], appending the ones cached to `held` (the blocks a
        request holds)."""
        ref = self.ref
        # each hash once (dict.fromkeys keeps the first), then only the ones not cached yet
        new = list(filterfalse(ref.__contains__, dict.fromkeys(hashes[start:stop])))
        ref.update(zip(new, repeat(1)))
        held += new
        if self.listener is not None and new:
            self.listener("stored", new)

    def release(self, held: Sequence[int], anon: int) -> int:
        """A request frees its blocks: `anon` uncached ones and the cached `held` (in sequence
        order; freed tail first). Returns how many blocks became free."""
        self.anon_free += anon
        ref = self.ref
        tail_first = held[::-1]
        if len(dict.fromkeys(tail_first)) != len(tail_first):  # never by construction; be exact
            freed = anon
            for h in tail_first:
                c = ref[h] - 1
                ref[h] = c
                if c == 0:
                    self.lru[h] = None
                    freed += 1
            return freed
        # Bulk, in C where it can be (a long prompt holds thousands of blocks)
        left = list(map(_minus_one, map(ref.__getitem__, tail_first)))
        ref.update(zip(tail_first, left, strict=True))
        now_free = list(compress(tail_first, map(not_, left)))
        self.lru.update(zip(now_free, repeat(None)))
        return anon + len(now_free)

    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0
