"""The router's Prometheus metrics, in a registry of its own (no process-global state).

Per-request series are pre-resolved label children so the hot path is one dict lookup and an
increment; backend state (health, in-flight, scraped engine load) is read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_DECISION_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 1e-2)
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
)


class _BackendCollector(Collector):
    def __init__(self, backends: Callable[[], Sequence]) -> None:
        self._backends = backends

    def collect(self) -> Iterable[GaugeMetricFamily]:
        bs = self._backends()
        fams = {
            "healthy": GaugeMetricFamily(
                "nexussched_router_backend_healthy",
                "1 if the backend is in rotation",
                labels=["backend"],
            ),
            "inflight": GaugeMetricFamily(
                "nexussched_router_inflight",
                "Requests sent to the backend and not finished",
                labels=["backend"],
            ),
            "running": GaugeMetricFamily(
                "nexussched_router_backend_num_running",
                "Scraped vllm:num_requests_running",
                labels=["backend"],
            ),
            "waiting": GaugeMetricFamily(
                "nexussched_router_backend_num_waiting",
                "Scraped vllm:num_requests_waiting",
                labels=["backend"],
            ),
            "kv": GaugeMetricFamily(
                "nexussched_router_backend_kv_usage",
                "Scraped vllm:kv_cache_usage_perc (0-1)",
                labels=["backend"],
            ),
        }
        for b in bs:
            fams["healthy"].add_metric([b.name], 1.0 if b.healthy else 0.0)
            fams["inflight"].add_metric([b.name], b.inflight)
            fams["running"].add_metric([b.name], b.num_running)
            fams["waiting"].add_metric([b.name], b.num_waiting)
            fams["kv"].add_metric([b.name], b.kv_usage)
        total = GaugeMetricFamily("nexussched_router_inflight_total", "Requests in flight")
        total.add_metric([], sum(b.inflight for b in bs))
        yield from fams.values()
        yield total


class RouterMetrics:
    def __init__(self, backends: Callable[[], Sequence]) -> None:
        r = CollectorRegistry(auto_describe=False)
        self.registry = r
        self.requests = Counter(
            "nexussched_router_requests",
            "Requests answered, by backend and HTTP status ('none': answered by the router itself)",
            ["backend", "status"],
            registry=r,
        )
        self.retries = Counter(
            "nexussched_router_retries", "Requests retried on another backend", registry=r
        )
        self.backend_failures = Counter(
            "nexussched_router_backend_failures",
            "Connection failures and failed probes, by backend",
            ["backend"],
            registry=r,
        )
        self.moves = Counter(
            "nexussched_router_moves", "Requests re-bound by the policy", registry=r
        )
        self.held = Counter(
            "nexussched_router_held",
            "Requests the policy held at the router (late binding) before sending them on",
            registry=r,
        )
        self.decision = Histogram(
            "nexussched_router_routing_decision_seconds",
            "Time the policy took to choose a backend",
            buckets=_DECISION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "nexussched_router_ttft_seconds",
            "Time from request receipt to the first streamed byte",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "nexussched_router_e2e_seconds",
            "Time from request receipt to the last byte",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_BackendCollector(backends))
        self._req: dict[tuple[str, int], object] = {}
        self._ttft: dict[str, object] = {}
        self._e2e: dict[str, object] = {}
        self.observe_decision = self.decision.observe

    def count(self, backend: str, status: int) -> None:
        key = (backend, status)
        c = self._req.get(key)
        if c is None:
            c = self._req[key] = self.requests.labels(backend, str(status))
        c.inc()

    def observe_ttft(self, backend: str, seconds: float) -> None:
        h = self._ttft.get(backend)
        if h is None:
            h = self._ttft[backend] = self.ttft.labels(backend)
        h.observe(seconds)

    def observe_e2e(self, backend: str, seconds: float) -> None:
        h = self._e2e.get(backend)
        if h is None:
            h = self._e2e[backend] = self.e2e.labels(backend)
        h.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
