"""The router's Prometheus metrics, in a registry of its own (no process-global state).

The per-request series (requests by backend and status, TTFT, E2E, routing decision time) are
plain counts kept here and turned into Prometheus families at scrape time: on the request path an
answer costs a dict update and a histogram a bisect, with no lock (the router is one event loop
per process) and no label lookup; prometheus_client's Counter and Histogram (a label child, a
lock and a Python loop over the buckets per observation) were 2-3% of the router's CPU. Rare
events (retries, failures, moves, holds) keep prometheus_client's Counters. Backend state (health,
in-flight, scraped engine load) is read at scrape time too.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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


class _Hist:
    """One histogram series: counts per bucket (the last one +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(self.bounds, v)] += 1  # le: v <= bound
        self.sum += v

    def buckets(self) -> list[tuple[str, float]]:
        out, n = [], 0
        for le, c in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            n += c
            out.append((le, n))
        return out


class _HotCollector(Collector):
    """The per-request series, from RouterMetrics' plain counts."""

    def __init__(self, m: RouterMetrics) -> None:
        self._m = m

    def collect(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        m = self._m
        req = CounterMetricFamily(
            "nexussched_router_requests",
            "Requests answered, by backend and HTTP status ('none': answered by the router itself)",
            labels=["backend", "status"],
        )
        for (backend, status), n in sorted(m._req.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            req.add_metric([backend, str(status)], n)
        yield req
        dec = HistogramMetricFamily(
            "nexussched_router_routing_decision_seconds",
            "Time the policy took to choose a backend",
        )
        dec.add_metric([], m._decision.buckets(), m._decision.sum)
        yield dec
        for name, doc, series in (
            ("ttft", "Time from request receipt to the first streamed byte", m._ttft),
            ("e2e", "Time from request receipt to the last byte", m._e2e),
        ):
            fam = HistogramMetricFamily(
                f"nexussched_router_{name}_seconds", doc, labels=["backend"]
            )
            for backend, h in sorted(series.items()):
                fam.add_metric([backend], h.buckets(), h.sum)
            yield fam


class RouterMetrics:
    def __init__(self, backends: Callable[[], Sequence]) -> None:
        r = CollectorRegistry(auto_describe=False)
        self.registry = r
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
        self._req: dict[tuple[str, int], int] = {}  # (backend, status) -> answers
        self._decision = _Hist(_DECISION_BUCKETS)
        self._ttft: dict[str, _Hist] = {}
        self._e2e: dict[str, _Hist] = {}
        r.register(_HotCollector(self))
        r.register(_BackendCollector(backends))
        self.observe_decision = self._decision.observe

    def count(self, backend: str, status: int) -> None:
        key = (backend, status)
        self._req[key] = self._req.get(key, 0) + 1

    def answered(self, backend: str, status: int) -> int:
        """How many answers of `status` came from `backend` (tests, diagnostics)."""
        return self._req.get((backend, status), 0)

    def observe_ttft(self, backend: str, seconds: float) -> None:
        h = self._ttft.get(backend)
        if h is None:
            h = self._ttft[backend] = _Hist(_LATENCY_BUCKETS)
        h.observe(seconds)

    def observe_e2e(self, backend: str, seconds: float) -> None:
        h = self._e2e.get(backend)
        if h is None:
            h = self._e2e[backend] = _Hist(_LATENCY_BUCKETS)
        h.counts[bisect_left(h.bounds, seconds)] += 1  # (h.observe, inline: every request)
        h.sum += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)
