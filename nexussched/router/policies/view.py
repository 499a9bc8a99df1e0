"""The information contract: everything a routing policy may know about an engine.

A policy sees an engine only through an EngineView. Its attributes (VIEW_ATTRS) are exactly what
the live router has:

- vLLM's load gauges as of the router's last /metrics scrape (`num_running`, `num_waiting`,
  `kv_usage`) and when that scrape happened (`last_scrape`, on the router's clock: the `now` the
  policy is called with). The live router scrapes every SCRAPE_PERIOD seconds.
- what vLLM exposes about its configuration in `vllm:cache_config_info`: `block_size` and
  `num_gpu_blocks` (None where the engine does not export it). vLLM does not expose
  `max_num_batched_tokens` or `max_num_seqs`, so no view carries them.
- the router's own counts: requests it sent to the engine and has not seen finish (`inflight`),
  and their prompt tokens and declared `max_tokens` (`inflight_prompt_tokens`,
  `inflight_max_tokens`). Never a request's true output length.
- `name` and `healthy`.

A second channel reaches policies that learn (`observe(idx, StepRecord)`): the step records an
engine publishes (engine-sim's /telemetry, the vLLM plug-in's stream), only for engines that
publish them, polled in batches every TELEMETRY_POLL seconds and late by the publishing delay.
And the router sees each answer it relays start (`on_first_token`) and end, with how many tokens
it carried (`on_output`, then `on_finish`).

Nothing else reaches a policy in the default (live) world. The simulator's oracle view
(`--view oracle`) adds the engine's exact, instant state (ORACLE_ATTRS) as an ablation; a policy
may use an oracle attribute only where the view has it (getattr with a default) and must work
without it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

SCRAPE_PERIOD = 0.5  # s between the live router's /metrics scrapes of a healthy backend
TELEMETRY_POLL = 0.2  # s between the live router's polls of engines' step telemetry

VIEW_ATTRS: tuple[str, ...] = (
    "name",
    "healthy",
    # scraped gauges (vllm:num_requests_running, vllm:num_requests_waiting,
    # vllm:kv_cache_usage_perc) and the time of the scrape that gave them
    "num_running",
    "num_waiting",
    "kv_usage",
    "last_scrape",
    # vllm:cache_config_info
    "block_size",
    "num_gpu_blocks",
    # the router's own counts
    "inflight",
    "inflight_prompt_tokens",
    "inflight_max_tokens",
)

# The simulator's exact engine state, offered only by the oracle view (an ablation).
ORACLE_ATTRS: tuple[str, ...] = (
    "queued_prefill_tokens",
    "decode_ctx_sum",
    "free_blocks",
    "max_num_batched_tokens",
    "cached_prefix_tokens",  # the engine's real prefix-cache hit for a prompt (prefix_oracle)
)


@runtime_checkable
class EngineView(Protocol):
    """What a policy may read about one engine (see the module docstring)."""

    name: str
    healthy: bool
    num_running: int
    num_waiting: int
    kv_usage: float
    last_scrape: float
    block_size: int | None
    num_gpu_blocks: int | None
    inflight: int
    inflight_prompt_tokens: int
    inflight_max_tokens: int


def kv_capacity_tokens(view: EngineView) -> int | None:
    """The engine's KV cache in tokens, from vllm:cache_config_info; None when not exported."""
    bs = view.block_size
    nb = view.num_gpu_blocks
    if not bs or not nb:
        return None
    return int(bs) * int(nb)


def scraped_free_blocks(view: EngineView) -> int | None:
    """Free KV blocks as of the last scrape (total blocks x (1 - usage)); None when unknown."""
    nb = view.num_gpu_blocks
    if not nb:
        return None
    used = min(1.0, max(0.0, float(view.kv_usage)))
    return int(nb * (1.0 - used))
