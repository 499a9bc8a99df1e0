"""engine-sim's Prometheus metrics, with vLLM's names: gauges and counters read from the engine at
scrape time (EngineCollector) and the counters and histograms vLLM V1 updates as steps and requests
end (ServerMetrics), with vLLM's meaning: per step, the tokens it sampled and the prompts it
finished (`vllm:iteration_tokens_total`, `vllm:prompt_tokens`, `vllm:prompt_tokens_cached`,
`vllm:generation_tokens`), each
token's inter-token latency, each request's TTFT and queue time when its first token comes; the
end-to-end latency and finish reason when it ends. A router learns a stock engine's step time from
their deltas (router/observed_feed.py), on engine-sim as on vLLM."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..perfmodel.telemetry import StepRecord
from .request import SimRequest

# vLLM's buckets (vllm/v1/metrics/buckets.py, 0.32)
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
ITERATION_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class BulkHistogram(Collector):
    """A histogram that takes n equal observations at once (prometheus_client's takes one)."""

    def __init__(self, name: str, doc: str, model: str, buckets: Sequence[float]) -> None:
        self.name, self.doc, self.model = name, doc, model
        self.bounds = tuple(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += n
        self.sum += value * n

    def collect(self):
        h = HistogramMetricFamily(self.name, self.doc, labels=["model_name"])
        cum, acc = [], 0
        for bound, c in zip((*self.bounds, math.inf), self.counts, strict=True):
            acc += c
            cum.append((floatToGoString(bound), acc))
        h.add_metric([self.model], cum, self.sum)
        yield h


class EngineCollector(Collector):
    def __init__(self, server) -> None:
        self.s = server

    def collect(self):
        s = self.s
        e = s.engine
        labels = ["model_name", "engine"]
        lv = [s.cfg.models[0], "0"]
        for name, doc, v in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                e.num_running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                e.num_waiting,
            ),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage),
        ):
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(lv, v)
            yield g
        # vLLM exports its cache configuration as an info gauge (value 1, values in labels)
        cfg = {
            "block_size": str(e.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": "False",
            "gpu_memory_utilization": str(e.profile.gpu_mem_util),
            "num_cpu_blocks": "None",
            "num_gpu_blocks": str(e.total_blocks),
        }
        g = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(cfg)
        )
        g.add_metric(list(cfg.values()), 1.0)
        yield g
        c = CounterMetricFamily(
            "vllm:num_preemptions", "Cumulative number of preemptions.", labels=labels
        )
        c.add_metric(lv, e.preemptions)
        yield c
        # vLLM V1's prefix-cache counters (tokens queried / served from cache at admission)
        for name, doc, v in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                e.prefix_cache_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                e.prefix_cache_hits,
            ),
        ):
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric(lv, v)
            yield c
        c = CounterMetricFamily("nexussched_sim_steps", "Engine steps simulated.", labels=labels)
        c.add_metric(lv, e.steps)
        yield c


class ServerMetrics:
    """The per-request series of one engine-sim (model label `m`), in a registry of its own that
    also serves `collector`'s engine state."""

    def __init__(self, m: str, collector: Collector) -> None:
        reg = CollectorRegistry(auto_describe=False)
        self.registry = reg
        lab = ["model_name"]
        self.prompt = Counter(
            "vllm:prompt_tokens", "Prefill tokens processed.", lab, registry=reg
        ).labels(m)
        self.cached = Counter(
            "vllm:prompt_tokens_cached",
            "Number of cached prompt tokens (local + external).",
            lab,
            registry=reg,
        ).labels(m)
        self.gen = Counter(
            "vllm:generation_tokens", "Generation tokens processed.", lab, registry=reg
        ).labels(m)
        self.success = Counter(
            "vllm:request_success",
            "Finished requests.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        self.success_by = {r: self.success.labels(m, r) for r in ("length", "stop", "abort")}
        b = (
            0.001,
            0.005,
            0.01,
            0.02,
            0.04,
            0.06,
            0.08,
            0.1,
            0.25,
            0.5,
            0.75,
            1.0,
            2.5,
            5.0,
            7.5,
            10.0,
            20.0,
            40.0,
            80.0,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "TTFT (wall seconds).", lab, buckets=b, registry=reg
        ).labels(m)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "E2E latency (wall seconds).",
            lab,
            buckets=b,
            registry=reg,
        ).labels(m)
        # one observation per token: counted in bulk (a step's decodes share one value)
        self.itl = BulkHistogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            m,
            ITL_BUCKETS,
        )
        reg.register(self.itl)
        self.queue = Histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            lab,
            buckets=b,
            registry=reg,
        ).labels(m)
        self.iteration = Histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            lab,
            buckets=ITERATION_BUCKETS,
            registry=reg,
        ).labels(m)
        reg.register(collector)

    def step(self, rec: StepRecord, firsts: Sequence[SimRequest], scale: float) -> None:
        """One engine step ended: `rec` its record, `firsts` the requests whose first token it
        sampled; `scale` wall seconds per engine second (fast mode, 0: engine seconds)."""
        s = scale if scale > 0 else 1.0
        prompts = cached = 0
        for r in firsts:
            prompts += r.prompt
            cached += r.cached
            self.ttft.observe((r.first_token - r.arrival) * s)
            # from arrival to the start of the step that finished its prompt (a prompt chunked
            # over several steps: to its last chunk's step; vLLM counts to its first, and
            # observes it when the request ends)
            self.queue.observe(max(0.0, rec.t - r.arrival) * s)
        sampled = len(firsts) + rec.num_decodes
        if prompts:
            self.prompt.inc(prompts)
            self.cached.inc(cached)
        self.gen.inc(sampled)
        self.iteration.observe(prompts - cached + sampled)
        if rec.num_decodes:
            # every decode of a continuous batch waited exactly this step for its token
            self.itl.observe(rec.duration * s, rec.num_decodes)
