"""engine-sim's Prometheus metrics, with vLLM's names: gauges and counters read from the engine at
scrape time (EngineCollector) and the per-request counters and histograms (ServerMetrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


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
        reg.register(collector)
