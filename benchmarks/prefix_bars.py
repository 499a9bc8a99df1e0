"""Issue 12's bars on means over seeds (`bench_prefix_means.py --bars`).

One goodput bisection swings 10+ points on these traces, so each bar is taken over several seeds:
per cell (scenario x engine policy) and router, the goodput (the highest rate at which >= 90% of
requests meet both SLOs in a stable run, live view) on each seed, then the mean and range per
router, the ratio of means (prism over the best other router by mean) and the per-seed ratios
(prism over the best other router on that seed). Seed k replays the scenario with simulation
seed k; a synthetic trace (sessions) is also generated with its seed + k, so seed 0 is the
report's run.

The fluid ceiling (capacity_ceiling.py: the long-run rate no router sustains, with every
reusable prefix free) stands beside each cell, per seed. A finite slice replayed above it can
still pass the stability test (its backlog drains after the last arrival: the report once passed
prism+lens at 1.02x fluid), so by default a rate above the seed's fluid ceiling counts as a
failing run without being simulated, and a router whose goodput that rule cut is flagged
`capped` (`--no-fluid-cap` measures the slice as it is).

Routers: every router the report ranks, splitwise at the prefill split (of 1/4, 1/2, 3/4 of the
engines) that attains most at the cell's start scale on seed 0, as the report picks it. Beside
them, not counted as "other": `prism@info` (prism with the oracle view and true output lengths
declared: the information ceiling) and prefix_oracle's hit rate (real cache contents, oracle
view; one run at the start scale), the hit-rate reference.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from statistics import mean

from bench_prefix_routing import CASES, ORACLE, Case, _setup, reusable
from capacity_ceiling import fluid_ceiling

from nexussched.eval.replay import simulate
from nexussched.eval.sweep import goodput_sweep
from nexussched.sim import parse_cluster
from nexussched.traces import Trace, head, load_trace

# bar cell name -> (the report's scenario, the sweep's start scale, near every router's goodput)
BAR_CASES: dict[str, tuple[Case, float]] = {
    "sessions": (CASES["sessions"], 2.6),
    "heterogeneous": (CASES["heterogeneous-report"], 15.6),
    "mooncake": (CASES["mooncake-report"], 1.2),
}
OTHERS = ("round_robin", "least_load", "local", "global", "llmd_weighted", "sglang_cache_aware")
INFO = "prism@info"  # the information ceiling, never "other"
NOT_OTHER = ("prism", INFO, ORACLE)
TARGET = 1.3


def add_bar_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cells", default=",".join(BAR_CASES), help="bar scenarios (with --bars)")
    ap.add_argument("--engines", default="lens,vllm_default")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell")
    ap.add_argument("--step", type=float, default=1.25, help="the sweep's bracketing factor")
    ap.add_argument("--iters", type=int, default=3, help="bisection steps per goodput")
    ap.add_argument("--routers", default="", help="override the routers (comma list)")
    ap.add_argument("--no-info", action="store_true", help="skip the prism@info ceiling")
    ap.add_argument("--no-fluid-cap", action="store_true",
                    help="let a rate above the fluid ceiling pass (finite-slice goodput)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write every sweep here")
    ap.add_argument("--from-json", default=None, help="print the bars of a saved --json run")


def seed_spec(spec: str, k: int) -> str:
    """A synthetic trace spec with its generator seed moved on by k (others unchanged)."""
    return re.sub(r"seed=(\d+)", lambda m: f"seed={int(m.group(1)) + k}", spec)


@lru_cache(maxsize=16)
def seed_trace(case: Case, k: int) -> Trace:
    return head(load_trace(seed_spec(case.trace, k)), case.n)


def splits(cluster: str) -> list[int]:
    """splitwise's prefill-node counts the report tries: 1/4, 1/2, 3/4 of the engines."""
    k = len(parse_cluster(cluster))
    return sorted({min(k - 1, max(1, round(k * f))) for f in (0.25, 0.5, 0.75)})


def _sim(case: Case, k: int, router: str, engine: str, scale: float) -> dict:
    name, _, kw = router.partition(":")
    if name == "prism@info":
        setup = _setup(case, "oracle", max_tokens="exact")
        name = "prism"
    else:
        setup = _setup(case, "oracle" if name == ORACLE else "live")
    setup = replace(setup, seed=k)
    if kw:  # splitwise:prefill_nodes=N
        key, _, val = kw.partition("=")
        setup.policy_kwargs = {name: {key: int(val)}}
    return simulate(seed_trace(case, k), setup, name, engine, scale).summary


def _point(scale: float, s: dict) -> dict:
    return {"scale": scale, "slo": s["slo_attainment"], "ttft": s.get("ttft_attainment"),
            "tpot": s.get("tpot_attainment"), "stable": s.get("stable", True),
            "hit": s.get("prefix_hit_rate"), "refused": s.get("refused", False)}  # fmt: skip


def capped_goodput(run, start: float, fluid_scale: float | None, step: float, iters: int) -> dict:
    """goodput_sweep over `run`, where a scale above `fluid_scale` (None: no cap) fails without
    running. `capped`: the lowest failing scale above the goodput was such a refusal, so the cap,
    not a run, set the goodput."""

    def guarded(scale: float) -> dict:
        if fluid_scale is not None and scale > fluid_scale:
            return {"slo_attainment": 0.0, "stable": False, "refused": True}
        return run(scale)

    sw = goodput_sweep(guarded, start=start, iters=iters, step=step)
    pts = [_point(sc, s) for sc, s in sw.points]
    g = sw.goodput_scale
    above = [p for p in pts if g is None or p["scale"] > g]
    capped = bool(above) and min(above, key=lambda p: p["scale"])["refused"]
    return {"goodput_scale": g, "capped": capped, "curve": pts}


def _sweep_job(job: tuple) -> dict:
    cell, case, k, router, engine, start, fluid_rps, step, iters = job
    t0 = time.perf_counter()
    tr = seed_trace(case, k)
    if router == ORACLE:  # hit-rate reference: one run at the start scale
        pts = [_point(start, _sim(case, k, router, engine, start))]
        res = {"goodput_scale": None, "capped": False, "curve": pts}
    else:
        cap = None if fluid_rps is None else fluid_rps / tr.rate
        res = capped_goodput(lambda sc: _sim(case, k, router, engine, sc), start, cap, step, iters)
    g = res["goodput_scale"]
    at = next(p for p in res["curve"] if p["scale"] == start)
    return {"cell": cell, "engine": engine, "router": router, "seed": k,
            "goodput_rps": 0.0 if g is None else g * tr.rate, **res, "at": at,
            "wall_s": time.perf_counter() - t0}  # fmt: skip


def _split_job(job: tuple) -> tuple:
    cell, case, engine, start, n = job
    return cell, engine, n, _sim(case, 0, f"splitwise:prefill_nodes={n}", engine, start)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def first_failure(row: dict) -> dict | None:
    """Where a sweep's attainment was lost: its lowest failing run above the goodput (None: no
    failing run, or only refused ones above the fluid ceiling)."""
    g = row.get("goodput_scale")
    above = [p for p in row["curve"] if (g is None or p["scale"] > g) and not p["refused"]]
    return min(above, key=lambda p: p["scale"]) if above else None


def summarize_cell(rows: list[dict], fluid: list[float]) -> dict:
    """One cell's bar from its sweeps (one row per router and seed) and its fluid ceiling per
    seed: per router the goodput's mean/min/max over seeds, mean hit rate and SLO attainment at
    the start scale, capped seeds; the best other router by mean, the ratio of means and the
    per-seed ratios (prism over the best other on that seed), and 1.3x the best other as a share
    of the fluid ceiling."""
    by: dict[str, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["router"], {})[r["seed"]] = r
    seeds = sorted({r["seed"] for r in rows})
    routers = {}
    for name, got in by.items():
        g = [got[k]["goodput_rps"] for k in seeds if k in got]
        hits = [got[k]["at"]["hit"] for k in seeds if k in got and got[k]["at"]["hit"] is not None]
        routers[name] = {
            "goodput": g, "mean": mean(g), "min": min(g), "max": max(g),
            "capped": sum(1 for k in seeds if k in got and got[k]["capped"]),
            "hit": mean(hits) if hits else None,
            "slo_at": mean(got[k]["at"]["slo"] for k in seeds if k in got),
            "ttft_at": mean(got[k]["at"]["ttft"] or 0.0 for k in seeds if k in got),
            "tpot_at": mean(got[k]["at"]["tpot"] or 0.0 for k in seeds if k in got),
        }  # fmt: skip
        fails = [f for k in seeds if k in got and (f := first_failure(got[k])) is not None]
        if fails:  # the first failing run above each seed's goodput, on average
            routers[name]["fail"] = {
                "n": len(fails), "scale": mean(f["scale"] for f in fails),
                "slo": mean(f["slo"] for f in fails), "ttft": mean(f["ttft"] or 0.0 for f in fails),
                "tpot": mean(f["tpot"] or 0.0 for f in fails),
                "unstable": sum(1 for f in fails if not f["stable"]),
            }  # fmt: skip
    out: dict = {"routers": routers, "seeds": seeds, "fluid": mean(fluid) if fluid else None,
                 "fluid_range": (min(fluid), max(fluid)) if fluid else None}  # fmt: skip
    others = [n for n in routers if n not in NOT_OTHER and n != ORACLE]
    if "prism" not in routers or not others:
        return out
    best = max(others, key=lambda n: routers[n]["mean"])
    pm, bm = routers["prism"]["mean"], routers[best]["mean"]
    per_seed = []
    for k in seeds:
        other = max((by[n][k]["goodput_rps"] for n in others if k in by[n]), default=0.0)
        if k in by["prism"]:
            per_seed.append(_ratio(by["prism"][k]["goodput_rps"], other))
    f = out["fluid"]
    out.update(best=best, prism=pm, best_rps=bm, ratio=_ratio(pm, bm), per_seed=per_seed,
               bar_rps=TARGET * bm, bar_of_fluid=_ratio(TARGET * bm, f) if f else None,
               prism_of_fluid=_ratio(pm, f) if f else None)  # fmt: skip
    if INFO in routers:
        out["info_ratio"] = _ratio(routers[INFO]["mean"], bm)
    return out


def _fmt(x: float | None, spec: str = ".2f", none: str = "-") -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_cell(cell: str, engine: str, case: Case, start: float, b: dict) -> None:
    fl = b["fluid_range"]
    print(f"\n== {cell} / {engine}: {case.trace} first {case.n}, {case.cluster}, seeds "
          f"{b['seeds'][0]}-{b['seeds'][-1]}; fluid ceiling {_fmt(b['fluid'])} req/s "
          f"[{_fmt(fl[0])}-{_fmt(fl[1])}]; hit/SLO/TTFT/TPOT at {start}x")  # fmt: skip
    print(f"{'router':30s} {'goodput mean [min-max]':>24s} {'/fluid':>7s} {'capped':>6s} "
          f"{'hit':>6s} {'SLO':>6s} {'TTFT':>6s} {'TPOT':>6s}")  # fmt: skip
    rs = b["routers"]
    for n in sorted(rs, key=lambda n: -rs[n]["mean"]):
        r = rs[n]
        gp = "-" if n == ORACLE else f"{r['mean']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
        of = "-" if n == ORACLE or not b["fluid"] else f"{r['mean'] / b['fluid']:.2f}"
        print(f"{n:30s} {gp:>24s} {of:>7s} {r['capped']:6d} {_fmt(r['hit'], '.1%'):>6s} "
              f"{r['slo_at']:6.1%} {r['ttft_at']:6.1%} {r['tpot_at']:6.1%}")  # fmt: skip
    if "best" not in b:
        return
    for n in ("prism", b["best"]):
        f = rs[n].get("fail")
        if f:
            print(f"  {n} lost at its first failing rate ({f['n']} seeds, mean {f['scale']:.2f}x): "
                  f"SLO {f['slo']:.1%}, TTFT {f['ttft']:.1%}, TPOT {f['tpot']:.1%}, "
                  f"{f['unstable']} unstable")  # fmt: skip
    ps = [x for x in b["per_seed"] if x is not None]
    rng = f"[{min(ps):.2f}-{max(ps):.2f}]" if ps else "[-]"
    print(f"bar: prism {b['prism']:.2f} vs best other {b['best']} {b['best_rps']:.2f} req/s = "
          f"{_fmt(b['ratio'])}x on means, per seed {rng} (target {TARGET}x); {TARGET}x the "
          f"best other = {b['bar_rps']:.2f} = {_fmt(b['bar_of_fluid'])} of the fluid ceiling; "
          f"prism at {_fmt(b['prism_of_fluid'])} of it"
          + (f"; prism@info {_fmt(b['info_ratio'])}x" if "info_ratio" in b else ""))  # fmt: skip


def _fluid(cell: str, k: int) -> float:
    """The fluid ceiling of a bar cell's seed k (any router, any engine policy)."""
    case = BAR_CASES[cell][0]
    tr = seed_trace(case, k)
    return fluid_ceiling(tr, parse_cluster(case.cluster), cached=reusable(tr))


def print_saved(path: str) -> int:
    """The tables again from a saved run (the bars recomputed from its sweeps)."""
    saved = json.loads(Path(path).read_text())
    for key, v in saved.items():
        cell, engine = key.split("/")
        case, start = BAR_CASES[cell]
        fl = v["bar"].get("fluid_per_seed") or [_fluid(cell, k) for k in v["bar"]["seeds"]]
        print_cell(cell, engine, case, start, summarize_cell(v["rows"], fl))
    return 0


def bars_main(args: argparse.Namespace) -> int:
    if args.from_json:
        return print_saved(args.from_json)
    cells = [c for c in args.cells.split(",") if c]
    bad = [c for c in cells if c not in BAR_CASES]
    if bad:
        raise SystemExit(f"unknown bar cell(s) {', '.join(bad)}; known: {', '.join(BAR_CASES)}")
    engines = [e for e in args.engines.split(",") if e]
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    # the fluid ceiling per seed (it holds for any router and engine policy)
    fluid = {(c, k): _fluid(c, k) for c in cells for k in seeds}
    print(f"fluid ceilings in {time.perf_counter() - t0:.0f} s; resolution: each goodput within "
          f"x{args.step ** (1 / 2**args.iters):.3f} of its threshold (step {args.step}, "
          f"{args.iters} bisections)", flush=True)  # fmt: skip
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        routers = {(c, e): [] for c in cells for e in engines}
        if args.routers:
            for key in routers:
                routers[key] = args.routers.split(",")
        else:
            picks = [(c, BAR_CASES[c][0], e, BAR_CASES[c][1], n)
                     for c in cells for e in engines for n in splits(BAR_CASES[c][0].cluster)]  # fmt: skip
            best: dict[tuple, tuple[float, int]] = {}
            for c, e, n, s in pool.map(_split_job, picks):
                if (c, e) not in best or s["slo_attainment"] > best[(c, e)][0]:
                    best[(c, e)] = (s["slo_attainment"], n)
            for (c, e), (att, n) in best.items():
                print(f"{c}/{e}: splitwise prefill nodes {n} ({att:.1%} at the start)", flush=True)
                routers[(c, e)] = ["prism", *OTHERS, f"splitwise:prefill_nodes={n}", ORACLE]
                routers[(c, e)] += [] if args.no_info else [INFO]
        jobs = [(c, BAR_CASES[c][0], k, r, e, BAR_CASES[c][1],
                 None if args.no_fluid_cap else fluid[(c, k)], args.step, args.iters)
                for c in cells for e in engines for r in routers[(c, e)] for k in seeds]  # fmt: skip
        rows = []
        futs = [pool.submit(_sweep_job, j) for j in jobs]
        for i, f in enumerate(as_completed(futs), 1):
            r = f.result()
            rows.append(r)
            el = time.perf_counter() - t0
            print(f"[{i}/{len(jobs)} {el:.0f}s, ~{el / i * (len(jobs) - i):.0f}s left] "
                  f"{r['cell']}/{r['engine']} {r['router']} seed {r['seed']}: "
                  f"{r['goodput_rps']:.2f} req/s{' (capped)' if r['capped'] else ''}", flush=True)  # fmt: skip
    result = {}
    for c in cells:
        for e in engines:
            mine = [r for r in rows if r["cell"] == c and r["engine"] == e]
            fl = [fluid[(c, k)] for k in seeds]
            b = summarize_cell(mine, fl)
            b["fluid_per_seed"] = fl
            print_cell(c, e, BAR_CASES[c][0], BAR_CASES[c][1], b)
            result[f"{c}/{e}"] = {"bar": b, "rows": mine}
    print(f"\n{len(jobs)} sweeps in {time.perf_counter() - t0:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0
