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
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from ..engine_sched import ENGINE_POLICIES
from ..router.policies import POLICIES
from ..sim import parse_cluster
from ..traces import Trace, head, load_trace
from .information import Information
from .replay import DEFAULT_CLIENT_TIMEOUT, SimSetup, simulate

BASELINE = ("round_robin", "vllm_default")
OURS = ("prism", "lens")
ROUTERS = ("round_robin", "least_load", "local", "global", "splitwise", "llmd_weighted", "prism")
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
             "Mooncake conversation trace, long context (12k-token prompts, p99 85k)"),
    Scenario("bursty", "synthetic:bursty,n=2000,seed=1", 2000, "a100:8", 2.0, 0.1, 6.5,
             "synthetic, Gamma arrivals with CV 4, conversation-like lengths"),
    Scenario("heterogeneous", "azure-conv", 3000, "h100:2,a100:4,l4:2", 2.0, 0.1, 11.0,
             "azure-conv on 2 fast (h100) + 4 medium (a100) + 2 slow (l4) engines"),
)  # fmt: skip


@dataclass
class ReportConfig:
    out: Path
    scenarios: tuple[Scenario, ...] = SCENARIOS
    routers: tuple[str, ...] = ROUTERS
    engines: tuple[str, ...] = ENGINES
    requests_scale: float = 1.0  # multiplies every scenario's request count
    grid: tuple[float, ...] = GRID
    bisect: int = 3  # goodput refinement steps
    search: int = 8  # operating-point search runs at most
    workers: int = 0  # 0: one per CPU
    seed: int = 0
    decision_engines: int = 64
    decisions: int = 20000
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
              traces_dir: str | None = None, info: Information | None = None) -> dict:  # fmt: skip
    """Replay scenario `sc` (first n requests) at `scale` x its rate under one policy pair."""
    setup = SimSetup(parse_cluster(sc.cluster), sc.slo_ttft, sc.slo_tpot, seed,
                     policy_kwargs=sc.policy_kwargs, info=info or Information(),
                     client_timeout=sc.client_timeout)  # fmt: skip
    s = simulate(
        _trace(sc.trace, n, traces_dir), setup, policy, engine, scale, trace_label=sc.name
    ).summary
    s["scenario"] = sc.name
    return s


def _run_task(task: tuple) -> dict:
    return run_point(*task)


# ---- the matrix ----------------------------------------------------------------------------------
class _Runner:
    """Runs batches of simulation points, in worker processes when there are several CPUs."""

    def __init__(self, workers: int, say: Callable[[str], None]) -> None:
        self.workers = workers or (os.cpu_count() or 1)
        self.pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        self.count = 0
        self.say = say

    def map(self, tasks: Sequence[tuple]) -> list[dict]:
        self.count += len(tasks)
        if self.pool is None:
            return [_run_task(t) for t in tasks]
        futs = [self.pool.submit(_run_task, t) for t in tasks]
        every = max(50, len(tasks) // 5)
        for k, _ in enumerate(as_completed(futs), 1):
            if k % every == 0 and k < len(tasks):
                self.say(f"  {k}/{len(tasks)} runs done")
        return [f.result() for f in futs]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


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


def _choose_splits(
    cfg: ReportConfig, ns: dict, ops: dict, runner: _Runner, say: Callable[[str], None]
) -> list[Scenario]:
    """Give splitwise its best prefill:decode split per scenario, as a FastDeploy user would.

    A fixed half/half split is prefill-bound on prompt-heavy traces and would make the baseline a
    straw man: try a quarter, half and three quarters of the engines as prefill nodes at the
    operating point (vLLM-default engines) and keep the best.
    """
    if "splitwise" not in cfg.routers:
        return list(cfg.scenarios)
    out = []
    for sc in cfg.scenarios:
        n = len(parse_cluster(sc.cluster))
        splits = sorted({min(n - 1, max(1, round(n * f))) for f in (0.25, 0.5, 0.75)})
        tasks = [
            (replace(sc, policy_kwargs={**sc.policy_kwargs, "splitwise": {"prefill_nodes": k}}),
             ns[sc.name], "splitwise", "vllm_default", ops[sc.name], cfg.seed, cfg.traces_dir, cfg.info)
            for k in splits
        ]  # fmt: skip
        res = runner.map(tasks)
        best = max(range(len(splits)), key=lambda i: res[i]["slo_attainment"])
        say(
            f"{sc.name}: splitwise prefill nodes "
            + ", ".join(
                f"{k}/{n} -> {r['slo_attainment']:.1%}" for k, r in zip(splits, res, strict=True)
            )
        )
        out.append(tasks[best][0])
    return out


def run_matrix(cfg: ReportConfig) -> dict:
    """Run the whole matrix; returns a JSON-able dict of every run and the derived figures."""
    say = cfg.progress or (lambda m: None)
    pairs = [(p, e) for p in cfg.routers for e in cfg.engines]
    runner = _Runner(cfg.workers, say)
    t0 = time.perf_counter()
    out: dict = {"scenarios": {}, "pairs": [list(p) for p in pairs]}
    try:
        # 1. operating points: one search per scenario, searches interleaved across workers
        ns = {sc.name: _n_requests(sc, cfg.requests_scale) for sc in cfg.scenarios}
        ops: dict[str, float] = {}
        searches: dict[str, list] = {sc.name: [] for sc in cfg.scenarios}
        state = {sc.name: [None, None, sc.start] for sc in cfg.scenarios}  # lo, hi, next
        for _ in range(cfg.search):
            todo = [sc for sc in cfg.scenarios if sc.name not in ops]
            if not todo:
                break
            res = runner.map([(sc, ns[sc.name], *BASELINE, state[sc.name][2], cfg.seed, cfg.traces_dir, cfg.info)
                              for sc in todo])  # fmt: skip
            for sc, r in zip(todo, res, strict=True):
                lo, hi, s = state[sc.name]
                searches[sc.name].append((s, r))
                a = r["slo_attainment"]
                say(f"{sc.name}: round_robin+vllm_default at x{s:.3g} attains {a:.1%}")
                if TARGET_LO <= a <= TARGET_HI:
                    ops[sc.name] = s
                    continue
                if a > TARGET_HI:
                    lo = s
                    nxt = (s * hi) ** 0.5 if hi else s * 2.0
                else:
                    hi = s
                    nxt = (s * lo) ** 0.5 if lo else s / 2.0
                state[sc.name] = [lo, hi, nxt]
        for sc in cfg.scenarios:
            if sc.name not in ops:  # budget spent: the closest point found
                best = min(searches[sc.name],
                           key=lambda p: abs(p[1]["slo_attainment"] - TARGET))  # fmt: skip
                ops[sc.name] = best[0]
        scenarios = _choose_splits(cfg, ns, ops, runner, say)
        # 2. + 3. every pair on the grid around the operating point (the grid contains it)
        tasks = []
        for sc in scenarios:
            for p, e in pairs:
                for g in cfg.grid:
                    tasks.append(
                        (
                            sc,
                            ns[sc.name],
                            p,
                            e,
                            ops[sc.name] * g,
                            cfg.seed,
                            cfg.traces_dir,
                            cfg.info,
                        )
                    )
        say(f"grid: {len(tasks)} runs")
        results = runner.map(tasks)
        pts: dict[tuple[str, str, str], dict[float, dict]] = {}
        for t, r in zip(tasks, results, strict=True):
            pts.setdefault((t[0].name, t[2], t[3]), {})[t[4]] = r
        # goodput: extend below/above the grid where needed, then bisect between grid points
        for _ in range(3):
            more = []
            for (name, p, e), P in pts.items():
                sc = next(s for s in scenarios if s.name == name)
                lo, hi = _goodput_from(P)
                if lo is None and min(P) > ops[name] / 64:
                    more.append(
                        (sc, ns[name], p, e, min(P) / 2.0, cfg.seed, cfg.traces_dir, cfg.info)
                    )
                elif hi is None and max(P) < ops[name] * 8:
                    more.append(
                        (sc, ns[name], p, e, max(P) * 2.0, cfg.seed, cfg.traces_dir, cfg.info)
                    )
            if not more:
                break
            say(f"goodput brackets: {len(more)} runs")
            for t, r in zip(more, runner.map(more), strict=True):
                pts[(t[0].name, t[2], t[3])][t[4]] = r
        for i in range(cfg.bisect):
            more = []
            for (name, p, e), P in pts.items():
                sc = next(s for s in scenarios if s.name == name)
                lo, hi = _goodput_from(P)
                if lo is not None and hi is not None:
                    more.append(
                        (sc, ns[name], p, e, (lo * hi) ** 0.5, cfg.seed, cfg.traces_dir, cfg.info)
                    )
            if not more:
                break
            say(f"goodput bisection {i + 1}/{cfg.bisect}: {len(more)} runs")
            for t, r in zip(more, runner.map(more), strict=True):
                pts[(t[0].name, t[2], t[3])][t[4]] = r
        for sc in scenarios:
            op = ops[sc.name]
            entry: dict = {
                "scenario": asdict(sc),
                "requests": ns[sc.name],
                "operating_scale": op,
                "search": [
                    {"scale": s, "slo_attainment": r["slo_attainment"]}
                    for s, r in searches[sc.name]
                ],  # fmt: skip
                "pairs": {},
            }
            for p, e in pairs:
                P = pts[(sc.name, p, e)]
                lo, hi = _goodput_from(P)
                at = (
                    P[op * 1.0]
                    if op * 1.0 in P
                    else min(P.items(), key=lambda kv: abs(kv[0] - op))[1]
                )
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
                        {
                            "scale": k,
                            "rate_rps": s["rate_rps"],
                            "slo_attainment": s["slo_attainment"],
                        }
                        for k, s in sorted(P.items())
                    ],  # fmt: skip
                    "runs": [s for _, s in sorted(P.items())],
                }
            out["scenarios"][sc.name] = entry
    finally:
        runner.close()
    out["sim_runs"] = runner.count
    out["wall_s"] = time.perf_counter() - t0
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


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("PASS" if ok else "FAIL")


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
    L.append(
        f"Simulated cluster replays: {len(res['scenarios'])} scenarios x "
        f"{len(res['pairs'])} (routing policy, engine policy) pairs, {res['sim_runs']} runs in "
        f"{res['wall_s'] / 60:.1f} min. SLO attainment = share of requests meeting both their "
        f"TTFT and TPOT SLO; goodput = the highest rate with attainment >= {GOODPUT:.0%}. "
        "Schedulers learn every engine's speed from step telemetry only; no policy reads the "
        "simulator's hardware profiles.\n"
    )
    if cfg.skipped:
        L.append("**Skipped** (not registered in this build): " + "; ".join(cfg.skipped) + "\n")
    # bars
    L.append("## Bars\n")
    L.append("| bar | measured | target | verdict |")
    L.append("|---|---|---|---|")
    g_rr, g_b, g_any = bars["mean_gain_rr"], bars["mean_gain_best"], bars["mean_gain_best_any"]
    L.append(
        f"| mean relative SLO-attainment gain of prism+lens over round_robin+vllm_default at the "
        f"operating point | {_sgn(g_rr)} | >= +43% | "
        f"{_verdict(None if g_rr is None else g_rr >= 0.43)} |"
    )
    L.append(
        f"| mean relative gain over the best other baseline (other routing policies with "
        f"vllm_default) | {_sgn(g_b)} | >= +20% | "
        f"{_verdict(None if g_b is None else g_b >= 0.20)} |"
    )
    for row in bars["goodput_rows"]:
        L.append(
            f"| goodput of prism+lens / round_robin+vllm_default, {row['scenario']} | "
            f"{_num(row['x_rr'], '{:.2f}x')} | >= 2x | "
            f"{_verdict(None if row['x_rr'] is None else row['x_rr'] >= 2)} |"
        )
        L.append(
            f"| goodput of prism+lens / best other baseline ({row['best_other']}), "
            f"{row['scenario']} | {_num(row['x_best'], '{:.2f}x')} | >= 1.3x | "
            f"{_verdict(None if row['x_best'] is None else row['x_best'] >= 1.3)} |"
        )
    if decision:
        L.append(
            f"| PRISM decisions/s on one core, {decision['engines']} engines, every decision "
            f"scoring every engine | {decision['decisions_per_s']:,.0f} | >= 5,000 | "
            f"{_verdict(decision['decisions_per_s'] >= 5000)} |"
        )
    L.append("")
    L.append(
        "The operating point of a scenario is the rate at which round_robin+vllm_default "
        f'attains {TARGET_LO:.0%}-{TARGET_HI:.0%}. "Best other baseline" is the best of the '
        "other routing policies (least_load, FastDeploy local/global/splitwise, llmd_weighted) "
        "with vLLM's default engine scheduling; the last column of the next table also compares "
        "with the best non-PRISM pair including those policies on LENS engines (informational).\n"
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
            "TPOT p99 | goodput req/s | moves |"
        )
        L.append("|---|---|---|---|---|---|---|---|---|---|")
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
                f"{_num(s['tpot_p99'], '{:.4f}')} | {gtxt} | {s['moves']} |"
            )
        L.append(f"\n![{n}]({png})\n")
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
