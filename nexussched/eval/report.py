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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..engine_sched import ENGINE_POLICIES
from ..router.knobs import Knobs
from ..router.policies import POLICIES
from ..sim import parse_cluster
from ..traces import Trace, head, load_trace
from .information import Information
from .jobs import Job, JobRunner, Spawn, Urgent
from .replay import DEFAULT_CLIENT_TIMEOUT, SimSetup, simulate

BASELINE = ("round_robin", "vllm_default")
OURS = ("prism", "lens")
ROUTERS = ("round_robin", "least_load", "local", "global", "splitwise", "llmd_weighted",
           "sglang_cache_aware", "prism")  # fmt: skip
ENGINES = ("vllm_default", "lens")
TARGET_LO, TARGET_HI, TARGET = 0.5, 0.7, 0.6  # the operating point: rr + vllm attains 50-70%
GOODPUT = 0.9
GRID = (0.25, 0.5, 0.75, 1.0, 1.25)  # rate scales relative to the operating point


@dataclass(frozen=True)
class Scenario:
    name: str
    trace: str  # a trace name, path or synthetic spec
    requests: int  # the first N requests of the trace
    cluster: str  # hardware, e.g. "a100:8" or "h100:2,a100:4,l4:2"
    slo_ttft: float  # s
    slo_tpot: float  # s
    start: float  # first guess of the operating point's rate scale
    description: str
    policy_kwargs: dict = field(default_factory=dict)  # per routing policy, chosen by the report
    client_timeout: float | None = DEFAULT_CLIENT_TIMEOUT  # s to first token; None: wait forever


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("azure-conv", "azure-conv", 3000, "a100:8", 2.0, 0.1, 12.0,
             "Azure LLM inference trace 2023, conversation (1.2k-token prompts, 211 out)"),
    Scenario("azure-code", "azure-code", 2000, "a100:8", 2.0, 0.1, 3.5,
             "Azure LLM inference trace 2023, code (2k-token prompts, 28 out; arrival CV 13)"),
    Scenario("mooncake-conv", "mooncake-conv", 1500, "a100:8", 10.0, 0.1, 0.5,
             "Mooncake conversation trace, long context (12k-token prompts, p99 85k); shared "
             "prefixes from its hash_ids"),
    Scenario("bursty", "synthetic:bursty,n=2000,seed=1", 2000, "a100:8", 2.0, 0.1, 6.5,
             "synthetic, Gamma arrivals with CV 4, conversation-like lengths"),
    Scenario("heterogeneous", "azure-conv", 3000, "h100:2,a100:4,l4:2", 2.0, 0.1, 11.0,
             "azure-conv on 2 fast (h100) + 4 medium (a100) + 2 slow (l4) engines"),
    Scenario("sessions", "synthetic:sessions,n=1200,seed=2", 1200, "a100:4", 2.0, 0.1, 2.0,
             "synthetic multi-turn chats and agent loops over shared system prompts, each turn "
             "extending the last (prefix-heavy: an infinite shared cache serves 90% of prompt "
             "tokens)"),
)  # fmt: skip


@dataclass
class ReportConfig:
    out: Path
    scenarios: tuple[Scenario, ...] = SCENARIOS
    routers: tuple[str, ...] = ROUTERS
    engines: tuple[str, ...] = ENGINES
    requests_scale: float = 1.0  # multiplies every scenario's request count
    grid: tuple[float, ...] = GRID
    bisect: int = 2  # goodput refinement steps (interpolated, see _next_probe)
    search: int = 8  # operating-point search runs at most
    workers: int = 0  # 0: one per CPU
    seed: int = 0
    decision_engines: int = 64
    decisions: int = 20000
    knobs: Knobs = field(default_factory=Knobs)  # --policy-config / --policy-arg
    traces_dir: str | None = None  # --traces-dir (None: the usual lookup, see load_trace)
    info: Information = field(default_factory=Information)  # what the policies may know
    progress: Callable[[str], None] | None = None
    skipped: list[str] = field(default_factory=list)


# ---- one simulation (runs in a worker process) ---------------------------------------------------
@lru_cache(maxsize=8)
def _trace(spec: str, n: int, traces_dir: str | None = None) -> Trace:
    return head(load_trace(spec, traces_dir), n)


def _n_requests(sc: Scenario, scale: float) -> int:
    return max(50, int(round(sc.requests * scale)))


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
    return out, time.process_time() - t0


def _task_key(task: tuple) -> tuple:
    sc, n, policy, engine, scale, seed = task[:6]
    return (sc.name, json.dumps(sc.policy_kwargs, sort_keys=True), sc.client_timeout, n, policy,
            engine, scale, seed)  # fmt: skip


def _task_cost(task: tuple) -> float:
    """A rough relative cost to start the longest runs first: requests x engines, long prompts
    and late-binding/stealing policies costing more."""
    sc, n, policy, engine = task[:4]
    c = n * len(parse_cluster(sc.cluster)) * (1.0 + (sc.trace == "mooncake-conv"))
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

    def task(self, sc: Scenario, n: int, policy: str, engine: str, scale: float) -> tuple:
        c = self.cfg
        return (sc, n, policy, engine, scale, c.seed, c.traces_dir, c.knobs, c.info)


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
    """One pair's attainment-vs-rate curve on the grid, then its goodput: brackets below/above
    the grid where needed, then bisection. Each step starts as soon as the last one is done."""
    grid = [op * g for g in ctx.cfg.grid]
    res = yield [ctx.task(sc, n, p, e, s) for s in grid]
    P: dict[float, dict] = dict(zip(grid, res, strict=True))
    for _ in range(3):
        lo, hi = _goodput_from(P)
        if lo is None and min(P) > op / 64:
            s = min(P) / 2.0
        elif hi is None and lo is not None and max(P) < op * 8:
            s = max(P) * 2.0
        else:
            break
        (P[s],) = yield [ctx.task(sc, n, p, e, s)]
    for _ in range(ctx.cfg.bisect):
        lo, hi = _goodput_from(P)
        if lo is None or hi is None:
            break
        s = _next_probe(lo, P[lo]["slo_attainment"], hi, P[hi]["slo_attainment"])
        (P[s],) = yield [ctx.task(sc, n, p, e, s)]
    return P


def _next_probe(lo: float, a_lo: float, hi: float, a_hi: float) -> float:
    """Where attainment crosses the goodput target between a passing and a failing scale, by
    interpolation in log-rate (kept inside the middle 60% so that each probe narrows the
    bracket): closer than plain bisection for the same number of runs."""
    f = (a_lo - GOODPUT) / (a_lo - a_hi) if a_lo > a_hi else 0.5
    f = min(0.8, max(0.2, f))
    return math.exp(math.log(lo) + f * (math.log(hi) - math.log(lo)))


def _scenario_job(ctx: _Ctx, sc: Scenario) -> Job:
    n = _n_requests(sc, ctx.cfg.requests_scale)
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
            say(f"  {done} runs done, {queued} queued or running")

    runner = JobRunner(_run_task, cfg.workers, cost=_task_cost, progress=progress, key=_task_key)
    say(f"{len(cfg.scenarios)} scenarios x {len(pairs)} pairs on {runner.workers} worker(s)")
    entries = runner.run([_scenario_job(ctx, sc) for sc in cfg.scenarios])
    out: dict = {
        "scenarios": {e["scenario"]["name"]: e for e in entries},
        "pairs": [list(p) for p in pairs],
        "sim_runs": runner.runs,
        "cpu_s": runner.cpu_s,
        "workers": runner.workers,
        "wall_s": time.perf_counter() - t0,
    }
    return out


# ---- the bars ------------------------------------------------------------------------------------
def _att(entry: dict, key: str) -> float | None:
    p = entry["pairs"].get(key)
    return p["at_operating_point"]["slo_attainment"] if p else None


def _good(entry: dict, key: str) -> float | None:
    p = entry["pairs"].get(key)
    return p["goodput_rps"] if p else None


def _best_other(entry: dict, metric: Callable[[dict, str], float | None],
                engines: Sequence[str]) -> tuple[str | None, float]:  # fmt: skip
    best, val = None, -1.0
    for key, p in entry["pairs"].items():
        if p["policy"] == OURS[0] or p["engine_policy"] not in engines:
            continue
        if (key, p["engine_policy"]) == ("+".join(BASELINE), BASELINE[1]):
            continue  # the round-robin baseline has its own bar
        v = metric(entry, key)
        if v is not None and v > val:
            best, val = key, v
    return best, val


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b <= 0:
        return math.inf if a > 0 else None
    return a / b


def compute_bars(res: dict) -> dict:
    """The issue's bars, measured on the runs (None where a needed pair was not run)."""
    ours, base = "+".join(OURS), "+".join(BASELINE)
    gains_rr, gains_best, gains_best_any, rows = [], [], [], []
    for name, entry in res["scenarios"].items():
        a_ours, a_rr = _att(entry, ours), _att(entry, base)
        bo, a_bo = _best_other(entry, _att, (BASELINE[1],))
        ba, a_ba = _best_other(entry, _att, ENGINES)
        g_rr = _ratio(a_ours, a_rr)
        g_bo = _ratio(a_ours, a_bo)
        g_ba = _ratio(a_ours, a_ba)
        if g_rr is not None:
            gains_rr.append(g_rr - 1)
        if g_bo is not None:
            gains_best.append(g_bo - 1)
        if g_ba is not None:
            gains_best_any.append(g_ba - 1)
        rows.append({
            "scenario": name,
            "rate_rps": entry["pairs"][base]["at_operating_point"]["rate_rps"]
            if base in entry["pairs"] else None,
            "ours": a_ours, "round_robin": a_rr,
            "best_other": bo, "best_other_att": a_bo,
            "best_any": ba, "best_any_att": a_ba,
            "gain_rr": None if g_rr is None else g_rr - 1,
            "gain_best": None if g_bo is None else g_bo - 1,
            "gain_best_any": None if g_ba is None else g_ba - 1,
        })  # fmt: skip
    goodput = []
    for name in ("heterogeneous", "mooncake-conv"):
        entry = res["scenarios"].get(name)
        if entry is None:
            continue
        g_ours, g_rr = _good(entry, ours), _good(entry, base)
        bo, g_bo = _best_other(entry, _good, (BASELINE[1],))
        ba, g_ba = _best_other(entry, _good, ENGINES)
        goodput.append({
            "scenario": name, "ours": g_ours, "round_robin": g_rr,
            "best_other": bo, "best_other_rps": g_bo, "best_any": ba, "best_any_rps": g_ba,
            "x_rr": _ratio(g_ours, g_rr), "x_best": _ratio(g_ours, g_bo),
            "x_best_any": _ratio(g_ours, g_ba),
        })  # fmt: skip

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    return {
        "attainment_rows": rows,
        "mean_gain_rr": mean(gains_rr),
        "mean_gain_best": mean(gains_best),
        "mean_gain_best_any": mean(gains_best_any),
        "goodput_rows": goodput,
    }


# ---- writing -------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _sgn(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1%}"


def _num(v: float | None, fmt: str = "{:.2f}") -> str:
    if v is None:
        return "-"
    if v == math.inf:
        return "inf"
    return fmt.format(v)


def _mean_att(res: dict, key: str) -> float | None:
    vals = [_att(e, key) for e in res["scenarios"].values()]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def findings(res: dict, bars: dict, decision: dict | None) -> list[str]:
    """The report's opening: what the runs show, in sentences, computed from the runs."""
    ours, base = "+".join(OURS), "+".join(BASELINE)
    out: list[str] = []
    a_o, a_b = _mean_att(res, ours), _mean_att(res, base)
    if a_o is not None and a_b is not None:
        line = (f"At each scenario's operating point {ours} meets the SLOs of {_pct(a_o)} of "
                f"requests on average, against {_pct(a_b)} for {base} "
                f"({_sgn(bars['mean_gain_rr'])} relative)")  # fmt: skip
        if bars["mean_gain_best"] is not None:
            line += (f" and {_sgn(bars['mean_gain_best'])} over the best other router on "
                     "vLLM-default engines")  # fmt: skip
        out.append(line + ".")
    a_lens, a_prism = _mean_att(res, "round_robin+lens"), _mean_att(res, "prism+vllm_default")
    if a_o is not None and a_lens is not None and a_prism is not None and a_b is not None:
        out.append(f"Each layer alone: LENS engines behind round_robin attain {_pct(a_lens)}, "
                   f"PRISM routing on vLLM-default engines {_pct(a_prism)}; "
                   f"{'the engine policy' if a_lens - a_b > a_prism - a_b else 'the router'} "
                   "carries more of the gain.")  # fmt: skip
    not_best = []
    for name, e in res["scenarios"].items():
        best = max(e["pairs"].items(), key=lambda kv: _att(e, kv[0]) or 0.0)
        o = _att(e, ours)
        if o is not None and best[0] != ours and (_att(e, best[0]) or 0) > o + 0.005:
            not_best.append(f"{name} ({best[0]} {_pct(_att(e, best[0]))} vs {_pct(o)})")
    if not_best:
        out.append(f"{ours} is not the best pair everywhere: " + "; ".join(not_best) + ".")
    elif a_o is not None:
        out.append(f"{ours} is the best pair (or within half a point of it) in every scenario.")
    for row in bars["goodput_rows"]:
        out.append(f"Goodput on {row['scenario']}: {ours} {_num(row['ours'])} req/s, "
                   f"{base} {_num(row['round_robin'])} ({_num(row['x_rr'], '{:.2f}x')}), best "
                   f"other {row['best_other']} {_num(row['best_other_rps'])} "
                   f"({_num(row['x_best'], '{:.2f}x')}).")  # fmt: skip
    if decision:
        out.append(f"PRISM decides {decision['decisions_per_s']:,.0f} placements/s on one core "
                   f"with {decision['engines']} engines.")  # fmt: skip
    return out


def _split_note(sc: dict) -> str:
    k = sc.get("policy_kwargs", {}).get("splitwise", {}).get("prefill_nodes")
    return f" Splitwise runs its best prefill:decode split here: {k} prefill nodes." if k else ""


def write_report(res: dict, cfg: ReportConfig, decision: dict | None) -> Path:
    from .plot_report import plot_goodput, plot_scenario

    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    bars = compute_bars(res)
    res["bars"] = bars
    res["decision_throughput"] = decision
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    L: list[str] = []
    L.append("# nexussched evaluation report\n")
    L.append("## Findings\n")
    L.extend(f"- {f}" for f in findings(res, bars, decision))
    L.append("")
    L.append(
        f"What ran: simulated cluster replays of {len(res['scenarios'])} scenarios x "
        f"{len(res['pairs'])} (routing policy, engine policy) pairs, {res['sim_runs']} runs in "
        f"{res['wall_s'] / 60:.1f} min ({res.get('cpu_s', 0) / 60:.1f} CPU-min on "
        f"{res.get('workers', 1)} worker(s)). SLO attainment = share of requests meeting both "
        f"their TTFT and TPOT SLO (a request that failed or never finished counts as missed); "
        f"goodput = the highest offered rate with attainment >= {GOODPUT:.0%}. A scenario's "
        f"operating point is the rate at which round_robin+vllm_default attains "
        f"{TARGET_LO:.0%}-{TARGET_HI:.0%}: loaded, not hopeless, where policies differ most. "
        "Schedulers learn every engine's speed from step telemetry only; no policy reads the "
        "simulator's hardware profiles.\n"
    )
    if cfg.skipped:
        L.append("**Skipped** (not registered in this build): " + "; ".join(cfg.skipped) + "\n")
    g_rr, g_b, g_any = bars["mean_gain_rr"], bars["mean_gain_best"], bars["mean_gain_best_any"]
    L.append(
        '"Best other (vllm)" is the best of the other routing policies (least_load, FastDeploy '
        "local/global/splitwise, llmd_weighted, sglang_cache_aware) on vLLM's default engine "
        'scheduling; "best '
        'non-PRISM pair overall" also counts those routers on LENS engines.\n'
    )
    L.append("### Attainment at the operating point\n")
    L.append(
        "| scenario | rate req/s | round_robin+vllm | best other (vllm) | prism+lens | "
        "gain vs rr | gain vs best other | best non-PRISM pair overall | gain vs it |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in bars["attainment_rows"]:
        L.append(
            f"| {r['scenario']} | {_num(r['rate_rps'])} | {_pct(r['round_robin'])} | "
            f"{r['best_other']}: {_pct(r['best_other_att'])} | {_pct(r['ours'])} | "
            f"{_sgn(r['gain_rr'])} | {_sgn(r['gain_best'])} | "
            f"{r['best_any']}: {_pct(r['best_any_att'])} | {_sgn(r['gain_best_any'])} |"
        )
    L.append(f"| **mean** | | | | | **{_sgn(g_rr)}** | **{_sgn(g_b)}** | | {_sgn(g_any)} |\n")
    if bars["goodput_rows"]:
        L.append("### Goodput (req/s at >= 90% attainment)\n")
        L.append(
            "| scenario | round_robin+vllm | best other (vllm) | prism+lens | x rr | x best "
            "other | best non-PRISM pair overall | x it |"
        )
        L.append("|---|---|---|---|---|---|---|---|")
        for r in bars["goodput_rows"]:
            L.append(
                f"| {r['scenario']} | {_num(r['round_robin'])} | {r['best_other']}: "
                f"{_num(r['best_other_rps'])} | {_num(r['ours'])} | {_num(r['x_rr'], '{:.2f}x')} "
                f"| {_num(r['x_best'], '{:.2f}x')} | {r['best_any']}: {_num(r['best_any_rps'])} "
                f"| {_num(r['x_best_any'], '{:.2f}x')} |"
            )
        L.append("")
    if decision:
        L.append(
            f"Decision throughput: {decision['decisions_per_s']:,.0f} decisions/s "
            f"({1e6 / decision['decisions_per_s']:.1f} us each) with {decision['engines']} "
            f"engines on one core; one step record costs {decision['observe_us']:.1f} us to "
            "learn from (`python benchmarks/bench_prism_decisions.py` for more sizes).\n"
        )
    # summary matrix
    L.append("## Summary: attainment at the operating point / goodput (req/s)\n")
    names = list(res["scenarios"])
    L.append("| pair | " + " | ".join(names) + " |")
    L.append("|---|" + "---|" * len(names))
    for p, e in res["pairs"]:
        key = f"{p}+{e}"
        cells = []
        for n in names:
            pr = res["scenarios"][n]["pairs"].get(key)
            if pr is None:
                cells.append("-")
                continue
            g = pr["goodput_rps"]
            gs = "<" if pr["goodput_below_lowest"] else ">=" if pr["goodput_at_least"] else ""
            gtxt = (
                f"{gs}{pr['curve'][0]['rate_rps']:.2f}"
                if pr["goodput_below_lowest"]
                else f"{gs}{g:.2f}"
            )
            cells.append(f"{pr['at_operating_point']['slo_attainment']:.1%} / {gtxt}")
        L.append(f"| {key} | " + " | ".join(cells) + " |")
    L.append("")
    plot_goodput(res, out / "goodput.png")
    L.append("![goodput](goodput.png)\n")
    # per scenario
    for n, entry in res["scenarios"].items():
        sc = entry["scenario"]
        png = f"attainment_{n}.png"
        plot_scenario(entry, out / png, GOODPUT)
        base = entry["pairs"].get("+".join(BASELINE))
        rate = base["at_operating_point"]["rate_rps"] if base else None
        L.append(f"## {n}\n")
        L.append(
            f"{sc['description']}. Trace `{sc['trace']}`, first {entry['requests']} requests; "
            f"cluster `{sc['cluster']}`; SLO TTFT <= {sc['slo_ttft']} s, TPOT <= "
            f"{sc['slo_tpot']} s. Operating point: x{entry['operating_scale']:.3g} the trace's "
            f"rate = {_num(rate)} req/s (search: "
            + ", ".join(f"x{s['scale']:.3g} -> {s['slo_attainment']:.0%}" for s in entry["search"])
            + ")."
            + _split_note(sc)
            + "\n"
        )
        L.append(
            "| pair | SLO att | TTFT att | TPOT att | TTFT p50 | TTFT p99 | TPOT p50 | "
            "TPOT p99 | prefix hit | goodput req/s | moves |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for key, pr in entry["pairs"].items():
            s = pr["at_operating_point"]
            gtxt = (
                ("< " + f"{pr['curve'][0]['rate_rps']:.2f}")
                if pr["goodput_below_lowest"]
                else (">= " if pr["goodput_at_least"] else "") + f"{pr['goodput_rps']:.2f}"
            )
            L.append(
                f"| {key} | {s['slo_attainment']:.1%} | {s['ttft_attainment']:.1%} | "
                f"{s['tpot_attainment']:.1%} | {_num(s['ttft_p50'], '{:.3f}')} | "
                f"{_num(s['ttft_p99'], '{:.2f}')} | {_num(s['tpot_p50'], '{:.4f}')} | "
                f"{_num(s['tpot_p99'], '{:.4f}')} | {_pct(s.get('prefix_hit_rate'))} | {gtxt} | "
                f"{s['moves']} |"
            )
        L.append(f"\n![{n}]({png})\n")
    L.append("## Against the design targets\n")
    L.append("| measure | measured | target |")
    L.append("|---|---|---|")
    L.append(f"| mean relative attainment gain of prism+lens over round_robin+vllm_default | "
             f"{_sgn(g_rr)} | >= +43% |")  # fmt: skip
    L.append(f"| mean relative gain over the best other router on vllm_default | {_sgn(g_b)} | "
             ">= +20% |")  # fmt: skip
    for row in bars["goodput_rows"]:
        L.append(f"| goodput prism+lens / round_robin+vllm_default, {row['scenario']} | "
                 f"{_num(row['x_rr'], '{:.2f}x')} | >= 2x |")  # fmt: skip
        L.append(f"| goodput prism+lens / best other ({row['best_other']}), {row['scenario']} | "
                 f"{_num(row['x_best'], '{:.2f}x')} | >= 1.3x |")  # fmt: skip
    if decision:
        L.append(f"| PRISM decisions/s, one core, {decision['engines']} engines | "
                 f"{decision['decisions_per_s']:,.0f} | >= 5,000 |")  # fmt: skip
    L.append("")
    L.append("## How to reproduce\n")
    L.append(
        "`nexussched report --out DIR` (this report; `--requests-scale` shrinks or grows every "
        "trace slice, `--workers` sets the worker processes). Per-run figures are in "
        "results.json. Times (TTFT, TPOT) are seconds. The live bar (engine-sim backends of "
        "three speeds behind two PRISM replicas sharing state through Redis, replayed with "
        "`nexussched eval --live URL1,URL2`) is `python benchmarks/bench_live_prism.py`; "
        "knob tuning on one trace slice, reported on another, is `nexussched tune`.\n"
    )
    path = out / "report.md"
    path.write_text("\n".join(L))
    return path


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
