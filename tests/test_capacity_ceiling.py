"""The capacity ceiling of bench_prefix_routing (benchmarks/capacity_ceiling.py): its least work
per request is below what the simulated engines really spend, and its slice bound is above the
goodput real routers reach."""

from __future__ import annotations

import importlib.util
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from nexussched.eval.replay import SimSetup, simulate
from nexussched.eval.sweep import goodput_sweep
from nexussched.sim import parse_cluster
from nexussched.traces import head, load_trace

_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    if str(_DIR) not in sys.path:
        sys.path.insert(0, str(_DIR))
    spec = importlib.util.spec_from_file_location(name, _DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


CLUSTER = "a100:1,l4:1"
TRACE = "synthetic:poisson,n=300,seed=3"


@pytest.mark.parametrize(
    ("engine", "trace", "n", "scale"),
    [
        ("vllm_default", TRACE, 300, 1.0),
        ("lens", TRACE, 300, 1.0),
        # long prompts, where prefill attention is a large part of the work
        ("vllm_default", "synthetic:long-context,n=40,seed=1", 40, 0.5),
    ],
)
def test_least_work_is_below_each_engines_busy_time(engine, trace, n, scale):
    cc = _load("capacity_ceiling")
    profiles = parse_cluster(CLUSTER)
    tr = head(load_trace(trace), n)
    steps: list = []
    res = simulate(tr, SimSetup(profiles, 2.0, 0.1, 0), "round_robin", engine, scale,
                   telemetry=steps.append)  # fmt: skip
    busy: dict[str, float] = defaultdict(float)
    for s in steps:
        busy[s.engine] += s.duration
    models = {p.name: p.step_model() for p in profiles}
    least: dict[str, float] = defaultdict(float)
    assert sum(o.completed for o in res.outcomes) > 0.8 * n
    for o in res.outcomes:
        if not o.completed:
            continue  # (its work, if any, is in the busy time and not in the bound)
        sm = models[o.engine.rsplit("-", 1)[0]]
        least[o.engine] += cc.work(sm, o.prompt_tokens, o.output_tokens)
    assert set(least) == set(busy) and len(busy) == 2
    for name, t in busy.items():
        # a bound, and not a vacuous one
        assert 0.2 * t < least[name] <= t, (name, least[name], t)


def test_prefill_work_is_part_of_the_whole():
    cc = _load("capacity_ceiling")
    sm = parse_cluster("a100:1")[0].step_model()
    assert cc.prefill_work(sm, 1000) < cc.work(sm, 1000, 50)
    assert cc.prefill_work(sm, 1000, cached=800) < cc.prefill_work(sm, 1000)
    # one output token: the whole work is the prefill
    assert cc.work(sm, 1000, 1) == pytest.approx(cc.prefill_work(sm, 1000))


def test_fluid_rate_adds_up_over_engines():
    cc = _load("capacity_ceiling")
    tr = head(load_trace(TRACE), 300)
    one = cc.capacity_ceiling(tr, parse_cluster("a100:1"), 2.0, 0.1).fluid_rps
    two = cc.capacity_ceiling(tr, parse_cluster("a100:2"), 2.0, 0.1).fluid_rps
    assert two == pytest.approx(2 * one, rel=1e-6)
    l4 = cc.capacity_ceiling(tr, parse_cluster("l4:1"), 2.0, 0.1).fluid_rps
    mixed = cc.capacity_ceiling(tr, parse_cluster("a100:1,l4:1"), 2.0, 0.1).fluid_rps
    # a split over unlike engines serves at least their rates added (each request on the
    # engine relatively best for it), and the fluid program finds it
    assert mixed >= (one + l4) * (1 - 1e-6)
    # the fluid bound alone is the same figure, and a cache serving prompt tokens raises it
    assert cc.fluid_ceiling(tr, parse_cluster("a100:2")) == pytest.approx(two, rel=1e-9)
    half = [r.prompt_tokens // 2 for r in tr.requests]
    assert cc.fluid_ceiling(tr, parse_cluster("a100:2"), cached=half) > two * 1.01


def test_slice_bound_is_above_what_routers_reach():
    cc = _load("capacity_ceiling")
    profiles = parse_cluster(CLUSTER)
    tr = head(load_trace(TRACE), 300)
    c = cc.capacity_ceiling(tr, profiles, 2.0, 0.1)
    setup = SimSetup(profiles, 2.0, 0.1, 0)
    for policy, engine in (("prism", "lens"), ("least_load", "vllm_default")):

        def run(scale: float, policy=policy, engine=engine) -> dict:
            return simulate(tr, setup, policy, engine, scale).summary

        sw = goodput_sweep(run, start=1.0, iters=3)
        assert sw.goodput_scale is not None and sw.goodput_scale > 0
        assert sw.goodput_scale <= c.slice_scale, (policy, sw.goodput_scale, c.slice_scale)


def test_a_window_that_cannot_hold_its_work_lowers_the_slice_bound():
    cc = _load("capacity_ceiling")
    n = 100
    arr = np.linspace(0.0, 99.0, n)  # one request a second at scale 1
    u = np.full(n, 0.5)  # each costs half a second of the one engine
    lag = np.full(n, 3.0)
    s = cc.slice_scale(u, u * 0.2, 1.0, arr, 1.0, lag, 1.0, 8)
    # at scale s requests come s a second and cost s/2 s of work per second: above 2 they
    # pile up (a window of the whole slice then holds ~n/2 s of work in ~(99/s + 3) s)
    assert 1.8 < s < 2.4
    dropped = cc.slice_scale(u, u * 0.2, 1.0, arr, 1.0, lag, 0.5, 8)
    assert dropped > s  # half the requests may miss: twice the rate


def test_outputs_past_the_declared_cap_count_only_up_to_it():
    cc = _load("capacity_ceiling")
    from nexussched.traces import Trace
    from nexussched.traces.types import TraceRequest

    def trace(out: int) -> Trace:
        return Trace("t", [TraceRequest(i, i * 0.5, 500, out) for i in range(40)])

    a100 = parse_cluster("a100:1")
    # an engine stops at max_tokens (cap:N cuts longer outputs): 9,000 asked, 4,096 served
    long = cc.capacity_ceiling(trace(9000), a100, 2.0, 0.1, max_tokens="cap:4096")
    at_cap = cc.capacity_ceiling(trace(4096), a100, 2.0, 0.1, max_tokens="cap:4096")
    exact = cc.capacity_ceiling(trace(9000), a100, 2.0, 0.1, max_tokens="exact")
    assert long.fluid_rps == pytest.approx(at_cap.fluid_rps)
    assert exact.fluid_rps < long.fluid_rps


@pytest.mark.parametrize("device", ["a100", "h100", "l4"])
def test_least_attention_is_below_the_simulators_for_any_chunking(device):
    cc = _load("capacity_ceiling")
    sm = parse_cluster(f"{device}:1")[0].step_model()
    rng = np.random.default_rng(7)
    tight = 0.0
    for _ in range(300):
        prompt = int(rng.integers(1, 60000))
        cached = int(rng.integers(0, prompt)) // 16 * 16
        # the computed tokens in random chunks, some steps holding several of them
        pos, chunks = cached, []
        while pos < prompt:
            c = int(min(prompt - pos, rng.integers(1, 9000)))
            chunks.append((c, pos))
            pos += c
        steps, k = [], 0
        while k < len(chunks):
            j = k + int(rng.integers(1, 4))
            steps.append(chunks[k:j])
            k = j
        real = sum(sm.prefill_attn(s) for s in steps) * sm.speed
        least = cc._attn(sm, prompt, cached)
        assert least <= real * (1 + 1e-9), (prompt, cached, steps, least, real)
        tight = max(tight, least / real)
    assert tight > 0.5  # and close to it for some
