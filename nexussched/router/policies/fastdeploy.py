"""FastDeploy's scheduling decisions as pure functions, shared by the simulator's modes and the
live router's Redis-backed nodes (no redis, aiohttp or simulator imports here).

Behaviour follows FastDeploy's `fastdeploy/scheduler/` (local, global, splitwise):

- a node asks for work only when its engine has free KV blocks and token budget; it takes at most
  `max_prefill_batch` requests, split into two mini-batches (own queue: both; a steal: the first);
  requests that do not fit the blocks (prompt blocks + reserved output blocks each) or the token
  budget go back to the head of the queue they came from;
- global: a node whose own queue is empty looks up nodes whose score (queued requests) is at least
  `min_load_score`, a few shards at a time from a rotating slot, samples up to 10, drops itself
  and steals from one at random;
- splitwise: the API side picks the least-loaded prefill node with a "blur" (any node whose load
  is within a step of the minimum is equally good, chosen at random); the step grows with the
  prompt; decode nodes likewise with a step of min(#decode nodes, 10).
"""

from __future__ import annotations

import binascii
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .view import EngineView, scraped_free_blocks

LOAD_LOOKUP_NUM = 5  # shards read per steal attempt (FastDeploy's load_lookup_num)
LOAD_COUNT = 50  # members read per shard (load_count)
STEAL_SAMPLE = 10  # candidates sampled before the random pick
MAX_PREFILL_BATCH = 3  # FastDeploy's max_prefill_batch (MAX_PREFILL_NUM)
RESERVED_OUTPUT_BLOCKS = 2  # enc_dec_block_num
MAX_NUM_BATCHED_TOKENS = 8192  # a node's token budget when its engine's is not known


@dataclass(frozen=True, slots=True)
class Resources:
    """What a node's engine can take right now."""

    available_blocks: int
    block_size: int
    max_num_batched_tokens: int
    batch: int  # requests it may take in this pull
    reserved_output_blocks: int = RESERVED_OUTPUT_BLOCKS


def node_shard(name: str, shards: int) -> int:
    """A node's load-table shard: CRC-16/CCITT-FALSE of its name modulo the shard count (the
    same function as nexussched.plane.keys.shard_of, which the plane uses)."""
    return binascii.crc_hqx(name.encode("utf-8"), 0xFFFF) % max(1, shards)


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


def engine_resources(
    view: EngineView,
    max_prefill_batch: int = MAX_PREFILL_BATCH,
    reserved_output_blocks: int = RESERVED_OUTPUT_BLOCKS,
    waiting: int | None = None,
    max_num_batched_tokens: int = MAX_NUM_BATCHED_TOKENS,
    assumed_blocks: int = 1000,
) -> Resources | None:
    """Resources of an engine as a policy sees it, or None when it should not take work now: its
    own queue is not empty (FastDeploy pulls only when the engine has taken everything it was
    given; `waiting`: the router's reckoning of that queue, PendingPulls.waiting; None: the
    view's num_waiting) or it has no free blocks beyond the reserve.

    Free blocks come from vllm:cache_config_info's block count and the scraped KV usage
    (`assumed_blocks` when the engine exports no block count); the token budget is the node's
    configured `max_num_batched_tokens` (vLLM does not expose it). The oracle view's exact
    `free_blocks` and budget are used where it offers them."""
    if not view.healthy or (view.num_waiting if waiting is None else waiting) > 0:
        return None
    free = getattr(view, "free_blocks", None)  # exact: the oracle view only
    if free is None:
        free = scraped_free_blocks(view)
    if free is None:
        free = int(assumed_blocks * (1.0 - min(1.0, max(0.0, float(view.kv_usage)))))
    bs = int(view.block_size or 16)
    if free <= reserved_output_blocks or max_prefill_batch < 1:
        return None
    budget = int(getattr(view, "max_num_batched_tokens", None) or max_num_batched_tokens)
    return Resources(int(free), bs, budget, max_prefill_batch, reserved_output_blocks)


class PendingPulls:
    """What a node handed its engine, as the router sees it (the live modes' NodeState keeps the
    same books). FastDeploy's engine asks for more only once it has consumed what it was given;
    with scraped gauges the router must remember what it sent:
    - unconfirmed: sent, no first byte yet, and no scrape since showing an empty waiting queue;
    - not started: sent, no first byte yet. Only this router feeds the engine, so its waiting
      queue holds at most these: a bound that is never stale, unlike the scraped gauge.
    `waiting()` is what the resource check takes as the engine's queue."""

    def __init__(self) -> None:
        self._sent: list[dict[object, float]] = []
        self._open: list[set[object]] = []

    def _node(self, idx: int) -> dict[object, float]:
        while len(self._sent) <= idx:
            self._sent.append({})
            self._open.append(set())
        return self._sent[idx]

    def sent(self, idx: int, req_id: object, now: float) -> None:
        self._node(idx)[req_id] = now
        self._open[idx].add(req_id)

    def done(self, idx: int, req_id: object) -> None:
        """It started answering, or ended."""
        if idx < len(self._sent):
            self._sent[idx].pop(req_id, None)
            self._open[idx].discard(req_id)

    def waiting(self, idx: int, view: EngineView) -> int:
        sent = self._node(idx)
        if sent and view.num_waiting == 0:
            seen = view.last_scrape
            for k in [k for k, t in sent.items() if t < seen]:
                del sent[k]
        return min(view.num_waiting, len(self._open[idx])) + len(sent)


def can_ever_hold(
    view: object, prompt_tokens: int, max_tokens: int = 0, reserved_output_blocks: int = 0
) -> bool:
    """Whether the engine could ever admit this request, even empty (from vLLM's
    cache_config_info; True when the view does not export it: the engine itself refuses then).
    With max_tokens, the whole request must fit its KV cache (a decode node holds the prompt and
    every output token); else the prompt's blocks plus the output reserve (FastDeploy's
    admission)."""
    blocks = getattr(view, "num_gpu_blocks", None)
    if not blocks:
        return True
    bs = int(getattr(view, "block_size", 16) or 16)
    if max_tokens:
        return blocks_for(prompt_tokens + max_tokens, bs) <= int(blocks)
    return blocks_for(prompt_tokens, bs) + reserved_output_blocks <= int(blocks)


def mini_batches(batch: int) -> list[int]:
    """FastDeploy splits a pull into two halves: [ceil(b/2), floor(b/2)] (empty halves dropped)."""
    if batch < 1:
        return []
    first = (batch + 1) // 2
    return [first] + ([batch - first] if batch - first > 0 else [])


def admit_count(prompt_tokens: Sequence[int], res: Resources) -> int:
    """How many of these requests (in order) fit: blocks for each prompt plus the output reserve
    within the free blocks, and their prompt tokens within the budget (the first request is
    always allowed past the budget: the engine chunks its prefill)."""
    blocks = 0
    tokens = 0
    n = 0
    for p in prompt_tokens[: res.batch]:
        blocks += blocks_for(p, res.block_size) + res.reserved_output_blocks
        tokens += p
        if blocks > res.available_blocks:
            break
        if tokens > res.max_num_batched_tokens and n > 0:
            break
        n += 1
    return n


def lookup_shards(start_slot: int, shards: int, lookup_num: int = LOAD_LOOKUP_NUM) -> list[int]:
    """Shards to read, in order, for one steal attempt starting at a rotating slot."""
    shards = max(1, shards)
    return [(start_slot + i) % shards for i in range(min(lookup_num, shards))]


def steal_candidates(
    heavy: Sequence[str], me: str, rng: random.Random, sample: int = STEAL_SAMPLE
) -> list[str]:
    """Sample up to `sample` heavy nodes (score >= min_load_score), never myself."""
    if not heavy:
        return []
    picked = rng.sample(list(heavy), k=min(sample, len(heavy)))
    return [n for n in picked if n != me]


def choose_victim(candidates: Sequence[str], rng: random.Random) -> str | None:
    return rng.choice(list(candidates)) if candidates else None


def prefill_blur_step(prompt_tokens: int) -> int:
    """Load slack (prompt tokens) within which prefill nodes count as equally loaded."""
    rate = 2 if prompt_tokens < 1000 else 10
    return max(100, min(500, int(prompt_tokens / rate)))


def decode_blur_step(num_decode_nodes: int) -> int:
    return min(num_decode_nodes, 10)


def blur_select(
    loads: Sequence[tuple[Hashable, float]], step: float, rng: random.Random
) -> Hashable:
    """Pick at random among the nodes whose load is below min_load + step (loads: (key, load))."""
    if not loads:
        raise ValueError("no nodes to choose from")
    ordered = sorted(loads, key=lambda kv: kv[1])
    limit = ordered[0][1] + step
    k = 1
    while k < len(ordered) and ordered[k][1] < limit:
        k += 1
    return rng.choice(ordered[:k])[0]


class SmoothWeighted:
    """Deterministic weighted round robin (nginx's smooth variant): the front load balancer that
    spreads requests over nodes; equal weights give plain round robin."""

    def __init__(self, weights: Sequence[float]) -> None:
        if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"bad front weights {list(weights)!r}")
        self.weights = [float(w) for w in weights]
        self.current = [0.0] * len(weights)

    def grow(self, weights: Sequence[float]) -> None:
        """Nodes joined: the weights of all nodes, the old ones first (their state is kept)."""
        self.weights = [float(w) for w in weights]
        self.current += [0.0] * (len(self.weights) - len(self.current))

    def next(self, allowed: Sequence[int] | None = None) -> int:
        idx = range(len(self.weights)) if allowed is None else allowed
        total = 0.0
        best = -1
        for i in idx:
            w = self.weights[i]
            if w <= 0:
                continue
            self.current[i] += w
            total += w
            if best < 0 or self.current[i] > self.current[best]:
                best = i
        if best < 0:
            raise ValueError("no node with positive weight")
        self.current[best] -= total
        return best


def parse_weights(spec: str | Sequence[float] | None, n: int) -> list[float]:
    """'4,2,1,1' -> weights for n nodes (repeated cyclically when shorter); None -> equal."""
    if spec is None or spec == "":
        return [1.0] * n
    if isinstance(spec, str):
        try:
            vals = [float(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(
                f"bad front weights {spec!r}: expected numbers like '4,2,1,1'"
            ) from None
    else:
        vals = [float(x) for x in spec]
    if not vals:
        return [1.0] * n
    return [vals[i % len(vals)] for i in range(n)]
