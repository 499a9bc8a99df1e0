"""The information contract: routing policies read only what the live router has, and every kind
of engine view (the live Backend, the simulator's ScrapedView and OracleView) supplies all of it."""

from __future__ import annotations

import asyncio
import inspect
import math
import random

import aiohttp
import pytest

from nexussched.engine_sched import make_engine_policy
from nexussched.eval.metrics import outcomes_from_sim, summarize
from nexussched.router.backends import Backend, BackendRegistry
from nexussched.router.config import BackendSpec
from nexussched.router.policies import (
    ORACLE_ATTRS,
    POLICIES,
    SCRAPE_PERIOD,
    TELEMETRY_POLL,
    VIEW_ATTRS,
    RoutingPolicy,
    make_policy,
)
from nexussched.router.vllm_metrics import parse_vllm_metrics
from nexussched.sim import ClusterSim, OracleView, ScrapedView, parse_cluster
from nexussched.traces import Trace, TraceRequest


class Recorder:
    """A view as the live router would offer it, recording what a policy asks of it. Reads of
    contract attributes pass through; any other name is recorded and raises AttributeError (what
    a policy probing a live Backend for it would get)."""

    __slots__ = ("_view", "_log")

    def __init__(self, view: object, log: dict[str, set[str]]) -> None:
        object.__setattr__(self, "_view", view)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name: str):
        if name in VIEW_ATTRS:
            self._log["read"].add(name)
            return getattr(self._view, name)
        self._log["refused"].add(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: object) -> None:
        self._log["written"].add(name)
        raise AttributeError(f"a policy may not write {name!r} on an engine view")


class RecordingPolicy(RoutingPolicy):
    """Runs a policy with every engine view it is handed wrapped in a Recorder."""

    def __init__(self, inner: RoutingPolicy) -> None:
        self.inner = inner
        self.log: dict[str, set[str]] = {"read": set(), "refused": set(), "written": set()}
        self.name = inner.name  # type: ignore[misc]
        self.holds = inner.holds  # type: ignore[misc]
        self.tick_interval = inner.tick_interval  # type: ignore[misc]
        self.splits = bool(getattr(inner, "splits", False))
        if hasattr(inner, "observe"):
            self.observe = inner.observe
        if hasattr(inner, "is_prefill"):
            self.is_prefill = inner.is_prefill

    def _wrap(self, views):
        return [Recorder(v, self.log) for v in views]

    def route(self, req, engines, now):
        return self.inner.route(req, self._wrap(engines), now)

    def pull(self, idx, engines, now):
        return self.inner.pull(idx, self._wrap(engines), now)

    def tick(self, engines, now):
        return self.inner.tick(self._wrap(engines), now)

    def on_finish(self, req_id, idx, now):
        return self.inner.on_finish(req_id, idx, now)

    def on_output(self, req_id, output_tokens):
        return self.inner.on_output(req_id, output_tokens)

    def on_first_token(self, req_id, idx, now):
        return self.inner.on_first_token(req_id, idx, now)

    def decode_target(self, req_id, src, engines, now):
        return self.inner.decode_target(req_id, src, self._wrap(engines), now)


def _trace(n: int, rate: float, seed: int = 3) -> Trace:
    rng = random.Random(seed)
    t = 0.0
    reqs = []
    for i in range(n):
        t += rng.expovariate(rate)
        reqs.append(
            TraceRequest(
                id=i,
                arrival=t,
                prompt_tokens=int(rng.lognormvariate(6.5, 0.8)) + 16,
                output_tokens=int(rng.lognormvariate(4.5, 0.8)) + 2,
            )
        )
    return Trace("contract", reqs)


def _run(policy: RoutingPolicy, view: str = "live", engine_policy: str = "vllm_default", **kw):
    sim = ClusterSim(
        parse_cluster("h100:1,a100:1,l4:1"),
        policy,
        lambda i, name: make_engine_policy(engine_policy, engine_name=name),
        seed=1,
        view=view,
        **kw,
    )
    res = sim.run(_trace(300, 12.0), 2.0, 0.1)
    return sim, res, summarize(outcomes_from_sim(res.requests))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_reads_only_the_contract_and_works_without_the_oracle(name):
    if getattr(POLICIES[name], "oracle", False):
        # an oracle ablation by name (prefix_oracle): it refuses the live view outright
        with pytest.raises(ValueError, match="--view oracle"):
            _run(make_policy(name))
        _, res, s = _run(make_policy(name), view="oracle")
        assert s["completed"] + res.rejected == 300
        return
    rec = RecordingPolicy(make_policy(name))
    sim, res, s = _run(rec, engine_policy="lens" if name == "prism" else "vllm_default")
    log = rec.log
    assert not log["written"]
    # every attribute a policy got is in the contract (the Recorder lets nothing else through);
    # names it asked for and was refused are only the oracle ablation's, which it may use where
    # a view offers them and must do without otherwise
    assert log["refused"] <= set(ORACLE_ATTRS), log["refused"] - set(ORACLE_ATTRS)
    if name != "round_robin":
        assert log["read"] - {"name", "healthy"}, "a load-aware policy read no load at all"
    assert s["completed"] + res.rejected == 300


def test_backend_scraped_and_oracle_views_supply_every_contract_attribute():
    sim = ClusterSim(parse_cluster("a100:1,l4:1"), make_policy("round_robin"))
    backend = Backend(BackendSpec("http://127.0.0.1:1", "b"))
    views = [backend, ScrapedView(sim.engines[0]), OracleView(sim.engines[1], lambda: 3.0)]
    for v in views:
        missing = [a for a in VIEW_ATTRS if not hasattr(v, a)]
        assert not missing, (type(v).__name__, missing)
    # the live-router views offer nothing beyond the contract (their oracle fields do not exist)
    for v in views[:2]:
        assert not [a for a in ORACLE_ATTRS if hasattr(v, a)]
    assert all(hasattr(views[2], a) for a in ORACLE_ATTRS)
    assert views[2].last_scrape == 3.0  # the oracle is always current


VLLM_TEXT = """\
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",cache_dtype="auto",enable_prefix_caching="True",\
num_cpu_blocks="None",num_gpu_blocks="8123",num_gpu_blocks_override="None"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="0",model_name="m"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
"""


def test_cache_config_info_is_parsed_from_vllm_metrics():
    m = parse_vllm_metrics(VLLM_TEXT)
    assert (m.num_running, m.num_waiting, m.kv_usage) == (3, 1, 0.25)
    assert (m.block_size, m.num_gpu_blocks) == (32, 8123)
    # num_cpu_blocks="None" and the override must not be mistaken for the block count
    assert parse_vllm_metrics(VLLM_TEXT.replace('num_gpu_blocks="8123"', "")).num_gpu_blocks is None


def test_live_backend_scrapes_cache_config_info_from_engine_sim(spawn):
    eng = spawn("engine-sim", "--profile", "l4", "--num-blocks", "777", "--name", "cc")

    async def main() -> Backend:
        reg = BackendRegistry([BackendSpec(eng.url, "cc")], scrape_interval=0.05)
        async with aiohttp.ClientSession() as s:
            await reg.start(s)
            await reg.stop()
        return reg.backends[0]

    b = asyncio.run(main())
    assert b.healthy
    assert (b.block_size, b.num_gpu_blocks) == (16, 777)
    assert b.last_scrape > 0


class Probe(RoutingPolicy):
    """Least load that logs what it saw: (now, view's last_scrape, view's num_waiting, engine's
    true waiting count) per engine per decision, and the end times of the step records it got."""

    name = "probe"

    def __init__(self) -> None:
        self.sim: ClusterSim | None = None
        self.seen: list[tuple[float, float, int, int]] = []
        self.steps: list[tuple[float, float]] = []  # (now of the next decision, record end)
        self._got: list[float] = []

    def observe(self, idx, rec) -> None:
        self._got.append(rec.t + rec.duration)

    def route(self, req, engines, now):
        for j, v in enumerate(engines):
            self.seen.append((now, v.last_scrape, v.num_waiting, len(self.sim.engines[j].waiting)))
        self.steps.extend((now, t) for t in self._got)
        self._got = []
        return min(range(len(engines)), key=lambda j: engines[j].num_running + engines[j].inflight)


def _probe(view: str, **kw) -> Probe:
    p = Probe()
    sim = ClusterSim(parse_cluster("a100:2"), p, seed=2, view=view, **kw)
    p.sim = sim
    sim.run(_trace(400, 30.0), 2.0, 0.1)
    return p


def test_scraped_view_lags_the_engine_by_at_most_a_scrape_period():
    p = _probe("live", scrape_period=0.5)
    stale = 0
    for now, ts, seen, true in p.seen:
        assert now - 0.5 < ts <= now + 1e-9 or ts == -math.inf
        stale += seen != true
    # the router decides on old gauges often; the oracle never does
    assert stale > len(p.seen) // 10
    o = _probe("oracle")
    assert all(ts == now and seen == true for now, ts, seen, true in o.seen)


def test_step_telemetry_arrives_in_polls_after_the_delay():
    delay = 0.3
    p = _probe("live", telemetry_delay=delay)
    assert p.steps
    for now, end in p.steps:
        assert end + delay <= now + 1e-9
        # it was due at the last poll before this decision: never older than a poll + the delay
    lags = sorted(now - end for now, end in p.steps)
    assert lags[0] >= delay - 1e-9
    # the oracle hands every record over as the step ends
    o = _probe("oracle")
    assert min(now - end for now, end in o.steps) < delay


def test_default_scrape_period_is_the_live_routers():
    from nexussched.router.config import RouterSettings

    assert RouterSettings(backends=[BackendSpec("http://x:1")]).scrape_interval == SCRAPE_PERIOD
    from nexussched.router.prism_live import PrismDispatcher
    from nexussched.router.telemetry_feed import TelemetryFeed

    poll = inspect.signature(TelemetryFeed).parameters["interval"].default
    assert poll == TELEMETRY_POLL
    live = inspect.signature(PrismDispatcher).parameters["telemetry_interval"].default
    assert live == TELEMETRY_POLL


class _Gauges:
    def __init__(self, waiting: int, scraped: float) -> None:
        self.num_waiting = waiting
        self.last_scrape = scraped


def test_fastdeploy_nodes_trust_first_bytes_over_a_stale_scrape():
    from nexussched.router.policies.fastdeploy import PendingPulls

    p = PendingPulls()
    v = _Gauges(waiting=2, scraped=0.0)  # scraped before the hand-over below
    p.sent(0, "a", 1.0)
    p.sent(0, "b", 1.0)
    assert p.waiting(0, v) == 2 + 2  # the gauge's 2 (at most the 2 not started) + 2 unconfirmed
    p.done(0, "a")
    p.done(0, "b")  # both answered: the engine took them
    assert p.waiting(0, v) == 0  # the stale gauge's 2 cannot be waiting: only we feed it
    v.num_waiting = 0
    p.sent(0, "c", 2.0)
    assert p.waiting(0, v) == 1  # sent after the last scrape, no answer yet
    v.last_scrape = 2.5  # a scrape after it shows nothing waiting: it was taken
    assert p.waiting(0, v) == 0
