"""The evaluation report: a scenario matrix of traces and clusters, replayed under every routing
policy x engine policy, measured at one common operating point and by goodput sweeps.

For each scenario:
1. find the operating point: the rate at which round_robin + vllm_default attains 50-70% of
   requests within SLO (a short search on the rate scale, aiming at 60%);
2. run every (routing policy, engine policy) there;
3. run a grid of rates around it for every pair (the attainment-vs-rate plots), then refine each
   pair's goodput (the highest rate with attainment >= 90%) by bisection between grid points.
Runs are independent simulations, spread over worker processes. The bars of the PRISM issue are
computed from these runs and written at the top of report.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import islice
from pathlib import Path

from ..engine_sched import ENGINE_POLICIES
from ..router.knobs import Knobs
from ..router.policies import POLICIES
from ..sim import parse_cluster
from ..traces import Trace, head, load_trace
from .information import Information
from .jobs import Job, JobRunner, Spawn, Urgent
from .replay import SimSetup, simulate
from .report_bars import compute_bars
from .report_config import (
    BASELINE,
    ENGINES,
    GOODPUT,
    ROUTERS,
    SCENARIOS,
    TARGET,
    TARGET_HI,
    TARGET_LO,
    ReportConfig,
    Scenario,
)
from .report_write import write_report
from .value_of_information import PAIRS as VOI_PAIRS
from .value_of_information import SETTINGS as VOI_SETTINGS

__all__ = [
    "ENGINES",
    "ROUTERS",
    "SCENARIOS",
    "ReportConfig",
    "Scenario",
    "compute_bars",
    "make_report",
]


# ---- one simulation (runs in a worker process) ---------------------------------------------------
@lru_cache(maxsize=8)
def _trace(spec: str, n: int, traces_dir: str | None = None) -> Trace:
    return head(load_trace(spec, traces_dir), n)


def _n_requests(sc: Scenario, scale: float, full: bool = False) -> int:
    base = sc.full if full and sc.full else sc.requests
    return max(50, int(round(base * scale)))


def run_point(sc: Scenario, n: int, policy: str, engine: str, scale: float, seed: int,
              traces_dir: str | None = None, knobs: Knobs | None = None,
              info: Information | None = None) -> dict:  # fmt: skip
    """Replay scenario `sc` (first n requests) at `scale` x its rate under one policy pair."""
    knobs = knobs or Knobs()
    pkw = {**knobs.policy_args.get(policy, {}), **sc.policy_kwargs.get(policy, {})}
    setup = SimSetup(parse_cluster(sc.cluster), sc.slo_ttft, sc.slo_tpot, seed,
                     policy_kwargs={policy: pkw},
                     engine_policy_kwargs={engine: knobs.engine_kwargs(engine)},
                     info=info or Information(), client_timeout=sc.client_timeout)  # fmt: skip
    s = simulate(
        _trace(sc.trace, n, traces_dir), setup, policy, engine, scale, trace_label=sc.name
    ).summary
    s["scenario"] = sc.name
    return s


def _run_task(task: tuple) -> tuple[dict, float]:
    """One task in a worker: its summary and the CPU seconds it took."""
    t0 = time.process_time()
    out = run_point(*task)
    cpu = time.process_time() - t0
    out["cpu_s"] = cpu  # where the report's time goes (results.json: cpu_s_by_scenario)
    return out, cpu


def _task_key(task: tuple) -> tuple:
    sc, n, policy, engine, scale, seed = task[:6]
    return (sc.name, json.dumps(sc.policy_kwargs, sort_keys=True), sc.client_timeout, n, policy,
            engine, scale, seed, task[8])  # fmt: skip


def _task_cost(task: tuple, seen: dict[str, tuple[float, int]] | None = None) -> float:
    """A rough cost in CPU-s, to start the longest runs first so that cheap ones fill the end:
    the scenario's mean run so far (`seen`: name -> (CPU-s, runs)), else requests x engines;
    late-binding/stealing policies and LENS engines cost more."""
    sc, n, policy, engine = task[:4]
    cpu, runs = (seen or {}).get(sc.name, (0.0, 0))
    if runs:
        c = cpu / runs
    else:
        c = 3e-5 * n * len(parse_cluster(sc.cluster)) * (1.0 + (sc.trace == "mooncake-conv"))
    return c * (1.5 if policy in ("prism", "global") else 1.0) * (1.3 if engine == "lens" else 1.0)


# ---- the matrix ----------------------------------------------------------------------------------
def _goodput_from(points: dict[float, dict]) -> tuple[float | None, float | None]:
    """(highest passing scale, lowest failing scale above it) among run points. A point passes
    with attainment >= GOODPUT in a stable run (eval/metrics.py: its backlog did not keep
    growing), so a finite slice cannot hide a growing queue."""
    ok = [k for k, s in points.items() if s["slo_attainment"] >= GOODPUT and s.get("stable", True)]
    if not ok:
        return None, min(points)
    lo = max(ok)
    above = [k for k in points if k > lo]
    return lo, (min(above) if above else None)


@dataclass
class _Ctx:
    cfg: ReportConfig
    pairs: list[tuple[str, str]]
    say: Callable[[str], None]

    def task(self, sc: Scenario, n: int, policy: str, engine: str, scale: float,
             info: Information | None = None) -> tuple:  # fmt: skip
        c = self.cfg
        return (sc, n, policy, engine, scale, c.seed, c.traces_dir, c.knobs, info or c.info)


def _search_job(ctx: _Ctx, sc: Scenario, n: int) -> Job:
    """The operating point: where round_robin + vllm_default attains 50-70% (aiming at 60%)."""
    lo = hi = None
    s = sc.start
    tried: list[tuple[float, dict]] = []
    for _ in range(ctx.cfg.search):
        (r,) = yield Urgent([ctx.task(sc, n, *BASELINE, s)])
        tried.append((s, r))
        a = r["slo_attainment"]
        ctx.say(f"{sc.name}: round_robin+vllm_default at x{s:.3g} attains {a:.1%}")
        if TARGET_LO <= a <= TARGET_HI:
            return s, tried
        if a > TARGET_HI:
            lo = s
            s = (s * hi) ** 0.5 if hi else s * 2.0
        else:
            hi = s
            s = (s * lo) ** 0.5 if lo else s / 2.0
    best = min(tried, key=lambda p: abs(p[1]["slo_attainment"] - TARGET))  # budget spent
    return best[0], tried


def _split_job(ctx: _Ctx, sc: Scenario, n: int, op: float) -> Job:
    """Give splitwise its best prefill:decode split, as a FastDeploy user would.

    A fixed half/half split is prefill-bound on prompt-heavy traces and would make the baseline a
    straw man: try a quarter, half and three quarters of the engines as prefill nodes at the
    operating point (vLLM-default engines) and keep the best."""
    if "splitwise" not in ctx.cfg.routers:
        return sc
    k_all = len(parse_cluster(sc.cluster))
    splits = sorted({min(k_all - 1, max(1, round(k_all * f))) for f in (0.25, 0.5, 0.75)})
    cands = [replace(sc, policy_kwargs={**sc.policy_kwargs, "splitwise": {"prefill_nodes": k}})
             for k in splits]  # fmt: skip
    res = yield Urgent([ctx.task(c, n, "splitwise", "vllm_default", op) for c in cands])
    best = max(range(len(splits)), key=lambda i: res[i]["slo_attainment"])
    ctx.say(f"{sc.name}: splitwise prefill nodes " + ", ".join(
        f"{k}/{k_all} -> {r['slo_attainment']:.1%}" for k, r in zip(splits, res, strict=True)))  # fmt: skip
    # every other routing policy ignores the splitwise entry, so one scenario serves all pairs
    return cands[best]


def _pair_job(ctx: _Ctx, sc: Scenario, n: int, p: str, e: str, op: float) -> Job:
    """One pair's goodput, searched from the operating point: the run there (the attainment
    table's), then steps up while it passes or down while it fails until a passing and a failing
    rate bracket the target, then up to `cfg.bisect` probes between them (interpolated, and
    every other one the midpoint) while the bracket is wider than `cfg.resolution` (a factor).
    Each step starts as soon as the last one is done; the runs make the pair's curve.

    4-8 runs a pair, most 5: a fixed grid around the operating point spent 7-10, most of them
    far from the pair's own goodput (the report's cost is its number of runs)."""
    P: dict[float, dict] = {}
    (P[op],) = yield [ctx.task(sc, n, p, e, op)]
    last: tuple[float, float] | None = None  # the step before, while going the same way
    for _ in range(ctx.cfg.bracket):
        lo, hi = _goodput_from(P)
        if lo is None and min(P) > op / 16:
            s0 = min(P)
            f = 1.0 / _bracket_factor(ctx.cfg.step, s0, P[s0]["slo_attainment"], last)
        elif hi is None and lo is not None and max(P) < op * 8:
            s0 = max(P)
            f = _bracket_factor(ctx.cfg.step, s0, P[s0]["slo_attainment"], last)
        else:
            break
        s = s0 * f
        (P[s],) = yield [ctx.task(sc, n, p, e, s)]
        last = (s0, P[s0]["slo_attainment"])
    for k in range(ctx.cfg.bisect):
        lo, hi = _goodput_from(P)
        if lo is None or hi is None or hi / lo <= ctx.cfg.resolution:
            break
        if k % 2:  # every other probe halves the bracket: a curve flat, then steep, draws
            s = math.sqrt(lo * hi)  # interpolation short of its drop again and again
        else:
            s = _next_probe(lo, P[lo]["slo_attainment"], hi, P[hi]["slo_attainment"])
        (P[s],) = yield [ctx.task(sc, n, p, e, s)]
    return P


def _bracket_factor(
    step: float, s: float, a: float, last: tuple[float, float] | None
) -> float:  # fmt: skip
    """How far (a factor > 1) the next bracketing step goes from scale s (attainment a).

    With a point before it on the same side, the secant through both in log-rate aims 20% past
    where attainment reaches the target, kept within step..step^2; else one step, two when a is
    far from the target (under a third of it)."""
    if last is not None:
        s1, a1 = last
        slope = (a - a1) / (math.log(s) - math.log(s1)) if s != s1 else 0.0
        if slope < 0:  # attainment falls with rate, as it should
            reach = abs((GOODPUT - a) / slope) * 1.2
            return min(step * step, max(step, math.exp(reach)))
        return step * step
    return step * step if a < GOODPUT / 3 else step


def _next_probe(lo: float, a_lo: float, hi: float, a_hi: float) -> float:
    """Where attainment crosses the goodput target between a passing and a failing scale, by
    interpolation in log-rate (kept inside the middle 40% so that each probe narrows the
    bracket): closer than plain bisection for the same number of runs."""
    f = (a_lo - GOODPUT) / (a_lo - a_hi) if a_lo > a_hi else 0.5
    f = min(0.7, max(0.3, f))
    return math.exp(math.log(lo) + f * (math.log(hi) - math.log(lo)))


def _scenario_job(ctx: _Ctx, sc: Scenario) -> Job:
    n = _n_requests(sc, ctx.cfg.requests_scale, ctx.cfg.full)
    op, tried = yield from _search_job(ctx, sc, n)
    sc = yield from _split_job(ctx, sc, n, op)
    curves = yield Spawn([_pair_job(ctx, sc, n, p, e, op) for p, e in ctx.pairs])
    ctx.say(f"{sc.name}: done")
    entry: dict = {
        "scenario": asdict(sc),
        "requests": n,
        "operating_scale": op,
        "search": [{"scale": s, "slo_attainment": r["slo_attainment"]} for s, r in tried],
        "pairs": {},
    }
    for (p, e), P in zip(ctx.pairs, curves, strict=True):
        lo, hi = _goodput_from(P)
        at = P[op] if op in P else min(P.items(), key=lambda kv: abs(kv[0] - op))[1]
        rate0 = at["rate_rps"] / at["rate_scale"]
        entry["pairs"][f"{p}+{e}"] = {
            "policy": p,
            "engine_policy": e,
            "at_operating_point": at,
            "goodput_scale": lo,
            "goodput_rps": lo * rate0 if lo is not None else 0.0,
            "goodput_below_lowest": lo is None,
            "goodput_at_least": hi is None and lo is not None,
            "curve": [
                {"scale": k, "rate_rps": s["rate_rps"], "slo_attainment": s["slo_attainment"]}
                for k, s in sorted(P.items())
            ],
            "runs": [s for _, s in sorted(P.items())],
        }
    return entry


def _information_job(ctx: _Ctx, sc: Scenario) -> Job:
    """The value of information on one scenario at its operating point: the pairs of
    value_of_information.PAIRS under each of its settings (oracle/live view, exact/capped
    max_tokens). The search, the split and the runs under the report's own information are the
    matrix's (memoised), so this adds only the other settings' runs."""
    n = _n_requests(sc, ctx.cfg.requests_scale, ctx.cfg.full)
    quiet = replace(ctx, say=lambda m: None)  # the scenario's own job reports the search
    op, _ = yield from _search_job(quiet, sc, n)
    sc = yield from _split_job(quiet, sc, n, op)
    pairs = [pe for pe in VOI_PAIRS if pe in ctx.pairs]
    runs = [(st, p, e) for st in VOI_SETTINGS for p, e in pairs]
    res = yield [ctx.task(sc, n, p, e, op, st.info) for st, p, e in runs]
    rows = [{**r, "setting": st.label} for (st, _, _), r in zip(runs, res, strict=True)]
    ctx.say(f"{sc.name}: value of information done ({len(rows)} runs)")
    return {"scenario": sc.name, "operating_scale": op, "pairs": [list(pe) for pe in pairs],
            "rows": rows}  # fmt: skip


def run_matrix(cfg: ReportConfig) -> dict:
    """Run the whole matrix; returns a JSON-able dict of every run and the derived figures.

    Each scenario is one job (search, split, then one job per pair); all of them share one
    worker pool, so added scenarios cost their own runs and no waiting on others."""
    say = cfg.progress or (lambda m: None)
    pairs = [(p, e) for p in cfg.routers for e in cfg.engines]
    ctx = _Ctx(cfg, pairs, say)
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int, queued: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 10.0:
            last[0] = now
            say(f"  {done} runs done ({runner.cpu_s:.0f} CPU-s), {queued} queued or running")

    seen: dict[str, tuple[float, int]] = {}  # the scenarios' measured run costs so far
    counted = [0]  # runs of runner.cache (insertion-ordered) already in `seen`

    def cost(task: tuple) -> float:
        # a sessions request costs ~6x an Azure one: order by what runs actually cost
        for r in islice(runner.cache.values(), counted[0], None):
            c, k = seen.get(r["scenario"], (0.0, 0))
            seen[r["scenario"]] = (c + r["cpu_s"], k + 1)
        counted[0] = len(runner.cache)
        return _task_cost(task, seen)

    runner = JobRunner(_run_task, cfg.workers, cost=cost, progress=progress, key=_task_key)
    say(f"{len(cfg.scenarios)} scenarios x {len(pairs)} pairs on {runner.workers} worker(s)")
    jobs = [_scenario_job(ctx, sc) for sc in cfg.scenarios]
    voi = [sc for sc in cfg.scenarios if sc.name == cfg.information_scenario]
    jobs += [_information_job(ctx, sc) for sc in voi]
    entries = runner.run(jobs)
    information = entries.pop() if voi else None
    by_scenario: dict[str, float] = {}
    for run in runner.cache.values():
        by_scenario[run["scenario"]] = by_scenario.get(run["scenario"], 0.0) + run["cpu_s"]
    out: dict = {
        "scenarios": {e["scenario"]["name"]: e for e in entries},
        "pairs": [list(p) for p in pairs],
        "sim_runs": runner.runs,
        "cpu_s": runner.cpu_s,
        "cpu_s_by_scenario": by_scenario,
        "workers": runner.workers,
        "wall_s": time.perf_counter() - t0,
        "value_of_information": information,
    }
    return out


def available(cfg: ReportConfig) -> ReportConfig:
    """Drop policies this build does not register, noting them for the report."""
    routers = tuple(p for p in cfg.routers if p in POLICIES)
    engines = tuple(e for e in cfg.engines if e in ENGINE_POLICIES)
    skipped = [f"routing policy {p}" for p in cfg.routers if p not in POLICIES]
    skipped += [f"engine policy {e}" for e in cfg.engines if e not in ENGINE_POLICIES]
    cfg.routers, cfg.engines = routers, engines
    cfg.skipped = skipped
    if BASELINE[0] not in routers or BASELINE[1] not in engines:
        raise ValueError("the report needs round_robin and vllm_default (its operating point)")
    return cfg


def make_report(cfg: ReportConfig) -> Path:
    cfg = available(cfg)
    res = run_matrix(cfg)
    decision = None
    if cfg.decisions > 0 and "prism" in cfg.routers:
        from .decisions import decision_throughput

        rate, obs_us, tick_us, _ = decision_throughput(cfg.decision_engines, cfg.decisions)
        decision = {
            "engines": cfg.decision_engines,
            "decisions_per_s": rate,
            "observe_us": obs_us,
            "tick_us": tick_us,
        }
    return write_report(res, cfg, decision)
