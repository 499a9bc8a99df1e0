"""A trace's requests as the simulated cluster takes them: the SimRequests the engines serve and,
at each arrival, the RequestInfo a live router would build for its policy."""

from __future__ import annotations

from ..router.policies.base import RequestInfo
from ..router.policies.prefix_index import BLOCK_TOKENS
from ..traces.types import Trace, TraceRequest
from .prefix_cache import cached_block_chain
from .request import SimRequest, declare


def sim_requests(
    trace: Trace, cap: int | None, slo_ttft: float, slo_tpot: float
) -> list[SimRequest]:
    """The trace's requests, each declaring max_tokens as `cap` says (its true length if None),
    with the run's SLO where the trace states none."""
    reqs = []
    for r in trace.requests:
        out, declared = declare(r.output_tokens, cap)
        reqs.append(
            SimRequest(
                r.id,
                r.arrival,
                r.prompt_tokens,
                out,
                r.slo_ttft if r.slo_ttft is not None else slo_ttft,
                r.slo_tpot if r.slo_tpot is not None else slo_tpot,
                r.priority,
                declared,
            )
        )
    return reqs


def arrival_info(r: SimRequest, tr: TraceRequest, block_size: int, caching: bool) -> RequestInfo:
    """What the router's policy sees of arriving `r` (trace entry `tr`). Where the engines cache
    prefixes (`caching`), it also gives `r` the block hashes their caches key on."""
    prefix: tuple[int, ...] = ()
    if tr.prefix_hashes:
        # the prompt's content as block hashes: what a live router hashes from the
        # prompt it forwards, and what the engine's prefix cache keys on
        bs = block_size
        src = tuple(tr.prefix_hashes)
        chain = cached_block_chain(src, tr.prefix_block, r.prompt + r.output, bs)
        if caching:
            r.hashes = chain
        if bs == BLOCK_TOKENS:
            prefix = chain[: r.prompt // bs]
        else:
            prefix = cached_block_chain(src, tr.prefix_block, r.prompt, BLOCK_TOKENS)
    elif caching:
        # content the trace does not name is this request's own: its blocks are hashed and
        # cached all the same, as vLLM (and engine-sim) hash every full block. They can hit
        # only for the request itself, re-admitted after a preemption with its blocks not yet
        # evicted; without them the simulator recomputed every preempted request in full
        # where a live engine did not (round robin's l4 in the sim-to-live agreement).
        base = (r.id + 1) << 32  # a range of ids no other request's blocks take (ids are unique)
        r.hashes = range(base, base + (r.prompt + r.output) // block_size)
        r.own_content = True
    return RequestInfo(
        r.id,
        r.prompt,
        r.max_tokens,
        r.arrival,
        r.slo_ttft,
        r.slo_tpot,
        r.priority,
        prefix_hashes=prefix,
    )
