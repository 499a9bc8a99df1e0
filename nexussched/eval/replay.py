"""Trace replay through the simulated cluster: one (routing policy, engine policy, rate) per run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..engine_sched import make_engine_policy
from ..perfmodel.telemetry import StepRecord
from ..router.policies import make_policy
from ..sim import ClusterSim, HardwareProfile
from ..sim.engine import EngineConfig
from ..traces import Trace, scale_rate
from .information import Information
from .metrics import RequestOutcome, outcomes_from_sim, summarize

DEFAULT_CLIENT_TIMEOUT = 60.0


@dataclass
class SimSetup:
    """Everything but the policies and the rate: the cluster and the SLO defaults."""

    profiles: list[HardwareProfile]
    slo_ttft: float = 2.0
    slo_tpot: float = 0.1
    seed: int = 0
    engine_config: EngineConfig | None = None
    policy_kwargs: dict = field(default_factory=dict)  # per routing-policy name -> kwargs
    info: Information = field(default_factory=Information)  # what the policies may know
    # s a client waits for its first token before it gives up (cancelled at its engine); None: forever
    client_timeout: float | None = DEFAULT_CLIENT_TIMEOUT
    # per engine-policy name -> extra kwargs for make_engine_policy (see router.knobs.Knobs)
    engine_policy_kwargs: dict = field(default_factory=dict)

    @property
    def cluster_label(self) -> str:
        counts: dict[str, int] = {}
        for p in self.profiles:
            counts[p.name] = counts.get(p.name, 0) + 1
        return ",".join(f"{k}:{v}" for k, v in counts.items())


@dataclass
class RunOutput:
    summary: dict
    outcomes: list[RequestOutcome]
    wall_s: float


def prefix_stats(engines: list) -> dict:
    """Prefix-cache hit rate over the cluster, as vLLM's counters give it (hit / queried prompt
    tokens at first admission); None where no engine caches."""
    queries = sum(e.prefix_cache_queries for e in engines)
    hits = sum(e.prefix_cache_hits for e in engines)
    caching = any(e.cache is not None for e in engines)
    return {
        "prefix_hit_rate": (hits / queries if queries else 0.0) if caching else None,
        "prefix_cached_tokens": hits,
    }


def simulate(
    trace: Trace,
    setup: SimSetup,
    policy: str,
    engine_policy: str = "vllm_default",
    rate_scale: float = 1.0,
    telemetry: Callable[[StepRecord], None] | None = None,
    progress: Callable[[int], None] | None = None,
    trace_label: str | None = None,
) -> RunOutput:
    """Replay `trace` at `rate_scale` x its rate through a fresh simulated cluster."""
    scaled = scale_rate(trace, rate_scale) if rate_scale != 1.0 else trace
    kwargs = dict(setup.policy_kwargs.get(policy, {}))
    routing = make_policy(policy, **kwargs)
    ekw = dict(setup.engine_policy_kwargs.get(engine_policy, {}))

    def engine_policy_factory(i: int, name: str):
        return make_engine_policy(
            engine_policy,
            engine_name=name,
            slo_ttft=setup.slo_ttft,
            slo_tpot=setup.slo_tpot,
            seed=setup.seed + i,
            **ekw,
        )

    cluster = ClusterSim(
        setup.profiles,
        routing,
        engine_policy_factory,
        seed=setup.seed,
        engine_config=setup.engine_config,
        telemetry=telemetry,
        view=setup.info.view,
        scrape_period=setup.info.scrape_period,
        telemetry_delay=setup.info.telemetry_delay,
        client_timeout=setup.client_timeout,
        max_tokens=setup.info.max_tokens,
    )
    t0 = time.perf_counter()
    res = cluster.run(scaled, setup.slo_ttft, setup.slo_tpot, progress=progress)
    wall = time.perf_counter() - t0
    outcomes = outcomes_from_sim(res.requests)
    summary = {
        "policy": policy,
        "engine_policy": engine_policy,
        "trace": trace_label or trace.name,
        "rate_scale": rate_scale,
        "rate_rps": scaled.rate,
        "engines": len(setup.profiles),
        "cluster": setup.cluster_label,
        "slo_ttft": setup.slo_ttft,
        "slo_tpot": setup.slo_tpot,
        "seed": setup.seed,
        **setup.info.summary(),
        "client_timeout": setup.client_timeout,
        **summarize(outcomes),
        "rejected": res.rejected,
        "sim_time_s": res.sim_time,
        "sim_wall_s": wall,
        "sim_steps": sum(e.steps for e in res.engines),
        **prefix_stats(res.engines),
        "goodput_rps": None,
    }
    return RunOutput(summary, outcomes, wall)
