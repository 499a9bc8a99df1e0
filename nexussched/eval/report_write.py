"""Writing report.md: findings first, then the bars, the per-scenario tables and the plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .report_bars import compute_bars, op_attainment
from .report_config import (
    BASELINE,
    GOODPUT,
    OURS,
    TARGET_HI,
    TARGET_LO,
    ReportConfig,
)
from .value_of_information import value_section


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
    vals = [op_attainment(e, key) for e in res["scenarios"].values()]
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
        best = max(e["pairs"].items(), key=lambda kv: op_attainment(e, kv[0]) or 0.0)
        o = op_attainment(e, ours)
        if o is not None and best[0] != ours and (op_attainment(e, best[0]) or 0) > o + 0.005:
            not_best.append(f"{name} ({best[0]} {_pct(op_attainment(e, best[0]))} vs {_pct(o)})")
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


def _cpu_split(res: dict) -> str:
    """Where the CPU went, per scenario, costliest first (results.json: cpu_s_by_scenario)."""
    by = res.get("cpu_s_by_scenario") or {}
    if not by:
        return ""
    parts = [f"{k} {v / 60:.1f}" for k, v in sorted(by.items(), key=lambda kv: -kv[1])]
    return "; by scenario: " + ", ".join(parts)


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
        f"{res.get('workers', 1)} worker(s){_cpu_split(res)}). SLO attainment = share of requests meeting both "
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
    L.extend(value_section(res.get("value_of_information")))
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
