"""Prefix-heavy routing: goodput and prefix-cache hit rate per router, on LENS and vLLM-default
engines (issue 12's bars).

For each scenario and engine policy, every router's goodput (the highest rate scale x the
trace's rate at which >= 90% of requests meet both SLOs in a stable run, by the eval's goodput
sweep) under the live view, and its prefix-cache hit rate (cached / queried prompt tokens, vLLM's
counters) at the common rate scale `--at`. prefix_oracle (real cache contents, oracle view) and
the trace's reuse bound (an infinite cache shared by all engines) are the hit-rate references.
The bars: prism's goodput over the best other real router's (prefix_oracle excluded), per engine
policy. Prints one table per scenario and the bars.

`--ceiling free,info,capacity` adds the bars' ceilings, benchmark-only references (never
product policies): `free` runs every listed router again on the trace with each request's
reusable prefix (what an infinite cache shared by all engines would serve) cut from its prompt,
so the best of them bounds what any router could gain from prefix reuse over the best other
router (optimistically: the cut tokens cost no KV and no attention either); `info` is prism told
everything a live router is not: the oracle view (exact, instant engine state and cache
contents) and every request's true output length as its max_tokens; `capacity` is no run but
two bounds on any router's goodput from the engines' true step-time models and the trace's true
lengths (capacity_ceiling.py: the least work each request costs on each engine type): `fluid`,
the long-run rate the cluster can serve at all, and `slice`, what a finite replay could reach at
most with >= 90% of requests meeting their deadlines (looser: the slice's work may drain after
its last arrival).

    python benchmarks/bench_prefix_routing.py                  # sessions, mooncake, heterogeneous
    python benchmarks/bench_prefix_routing.py --scenario sessions --iters 3 --workers 2
    python benchmarks/bench_prefix_routing.py --scenario sessions --no-oracle --ceiling free,info
    python benchmarks/bench_prefix_routing.py --scenario heterogeneous --routers prism,global \
        --no-oracle --ceiling capacity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from capacity_ceiling import capacity_ceiling  # noqa: E402

from nexussched.eval.information import Information  # noqa: E402
from nexussched.eval.replay import SimSetup, simulate  # noqa: E402
from nexussched.eval.sweep import goodput_sweep  # noqa: E402
from nexussched.sim import parse_cluster  # noqa: E402
from nexussched.sim.prefix_cache import block_chain  # noqa: E402
from nexussched.traces import Trace, head, load_trace  # noqa: E402

ROUTERS = ("round_robin", "least_load", "llmd_weighted", "sglang_cache_aware", "prism")
ORACLE = "prefix_oracle"
ENGINES = ("lens", "vllm_default")


@dataclass(frozen=True)
class Case:
    name: str
    trace: str
    n: int
    cluster: str
    slo_ttft: float
    slo_tpot: float
    at: float  # rate scale for the hit-rate column (and the sweep's start)


CASES = {
    "sessions": Case("sessions", "synthetic:sessions,n=1200,seed=2", 1200, "a100:4", 2.0, 0.1, 2.0),
    "mooncake": Case("mooncake", "mooncake-conv", 1000, "a100:4", 10.0, 0.1, 1.0),
    # the report's heterogeneous scenario (azure-conv on fast, medium and slow engines), shorter
    "heterogeneous": Case(
        "heterogeneous", "azure-conv", 1500, "h100:2,a100:4,l4:2", 2.0, 0.1, 11.0
    ),
    # the report's slices of these two (`nexussched report`; sessions is the same as above)
    "heterogeneous-report": Case(
        "heterogeneous-report", "azure-conv", 3000, "h100:2,a100:4,l4:2", 2.0, 0.1, 15.6
    ),
    "mooncake-report": Case("mooncake-report", "mooncake-conv", 400, "a100:8", 10.0, 0.1, 1.0),
    # prefix-heavy work on a heterogeneous cluster
    "sessions-hetero": Case(
        "sessions-hetero",
        "synthetic:sessions,n=1200,seed=2",
        1200,
        "h100:1,a100:2,l4:1",
        2.0,
        0.1,
        2.0,
    ),
}


def reusable(trace: Trace, block: int = 16) -> list[int]:
    """Per request, the prompt tokens an infinite cache shared by every engine could serve."""
    seen: set[int] = set()
    out = []
    for r in trace.requests:
        ch = block_chain(r.prefix_hashes, r.prefix_block, r.prompt_tokens + r.output_tokens, block)
        pr = ch[: max(0, r.prompt_tokens - 1) // block]
        k = 0
        while k < len(pr) and pr[k] in seen:
            k += 1
        out.append(k * block)
        seen.update(ch)
    return out


def reuse_bound(trace: Trace, block: int = 16) -> float:
    """Share of prompt tokens an infinite cache shared by every engine could serve."""
    tot = sum(r.prompt_tokens for r in trace.requests)
    return sum(reusable(trace, block)) / tot if tot else 0.0


def free_prefix(trace: Trace) -> Trace:
    """The ceiling's trace: every request's reusable prefix (reusable()) given for free, i.e.
    cut from its prompt, and no prefix hashes left to route on. Optimistic beyond any cache:
    the cut tokens take no KV and no attention either, so no router on these engines gains
    more from prefix reuse than the best router does on this trace."""
    reqs = [
        replace(r, prompt_tokens=max(1, r.prompt_tokens - k), prefix_hashes=())
        for r, k in zip(trace.requests, reusable(trace), strict=True)
    ]
    return Trace(trace.name + " (free prefix)", reqs, dict(trace.meta))


def _trace(case: Case) -> Trace:
    return head(load_trace(case.trace), case.n)


def _setup(case: Case, view: str, max_tokens: str | None = None) -> SimSetup:
    info = (
        Information(view=view) if max_tokens is None else Information(view, max_tokens=max_tokens)
    )
    return SimSetup(parse_cluster(case.cluster), case.slo_ttft, case.slo_tpot, 0, info=info)


# Ceilings (benchmark-only references, never product policies): "free" runs a router on the
# free_prefix() trace; "info" runs prism with the oracle view (exact, instant engine state and
# cache contents) and every request declaring its true output length (max_tokens exact).
VARIANTS = ("live", "free", "info", "capacity")


def run_pair(case: Case, policy: str, engine: str, iters: int, variant: str = "live") -> dict:
    trace = free_prefix(_trace(case)) if variant == "free" else _trace(case)
    if variant == "info":
        view = "oracle"
        setup = _setup(case, view, max_tokens="exact")
    else:
        view = "oracle" if policy == ORACLE else "live"
        setup = _setup(case, view)

    def run(scale: float) -> dict:
        return simulate(trace, setup, policy, engine, scale).summary

    t0 = time.perf_counter()
    at = run(case.at)
    sw = goodput_sweep(run, start=case.at, iters=iters)
    good = sw.goodput_scale * trace.rate if sw.goodput_scale is not None else 0.0
    return {
        "case": case.name,
        "policy": policy,
        "engine": engine,
        "view": view,
        "variant": variant,
        "goodput_rps": good,
        "goodput_scale": sw.goodput_scale,
        "hit_rate": at.get("prefix_hit_rate"),
        "attainment_at": at["slo_attainment"],
        "stable_at": at.get("stable"),
        "rate_at": at["rate_rps"],
        "points": len(sw.points),
        # every run of the sweep: (rate scale, attainment, stable, hit rate)
        "curve": [
            (sc, pt["slo_attainment"], pt.get("stable"), pt.get("prefix_hit_rate"))
            for sc, pt in sw.points
        ],
        "wall_s": time.perf_counter() - t0,
    }


def capacity_rows(case: Case, engines: list[str]) -> list[dict]:
    """The capacity ceiling (capacity_ceiling.py) of a case as one row per engine policy (it
    holds for any router and any engine policy): goodput_rps is the slice bound, fluid_rps the
    long-run one. A prefix cache is granted every reusable prefix (reusable())."""
    tr = _trace(case)
    c = capacity_ceiling(tr, parse_cluster(case.cluster), case.slo_ttft, case.slo_tpot,
                         cached=reusable(tr))  # fmt: skip
    return [{"case": case.name, "policy": "capacity bound", "engine": e, "view": "oracle",
             "variant": "capacity", "goodput_rps": c.slice_rps, "fluid_rps": c.fluid_rps,
             "goodput_scale": c.slice_scale, "hit_rate": None, "attainment_at": float("nan"),
             "curve": [], "points": 0, "wall_s": 0.0} for e in engines]  # fmt: skip


def _job(args: tuple) -> dict:
    return run_pair(*args)


def bars(rows: list[dict]) -> dict:
    out = {}
    for eng in ENGINES:
        live = [r for r in rows if r["engine"] == eng and r.get("variant", "live") == "live"]
        mine = next((r for r in live if r["policy"] == "prism"), None)
        others = [r for r in live if r["policy"] not in ("prism", ORACLE)]
        if mine is None or not others:
            continue
        best = max(others, key=lambda r: r["goodput_rps"])
        b = best["goodput_rps"]
        ratio = mine["goodput_rps"] / b if b else None
        out[eng] = {"prism": mine["goodput_rps"], "best_other": best["policy"],
                    "best_other_rps": b, "ratio": ratio}  # fmt: skip
        # the ceilings over the same best other router: the most any router gains from prefix
        # reuse (best goodput with every reusable prefix free), and prism told everything
        for v in ("free", "info", "capacity"):
            got = [r for r in rows if r["engine"] == eng and r.get("variant") == v]
            if got:
                top = max(got, key=lambda r: r["goodput_rps"])
                out[eng][v] = {"router": top["policy"], "rps": top["goodput_rps"],
                               "ratio": top["goodput_rps"] / b if b else None}  # fmt: skip
        cap = out[eng].get("capacity")
        if cap is not None:
            # the long-run bound, and where prism and 1.3x the best other stand against it
            f = next(r["fluid_rps"] for r in rows if r.get("variant") == "capacity"
                     and r["engine"] == eng)  # fmt: skip
            cap.update(fluid_rps=f, fluid_ratio=f / b if b else None,
                       prism_of_fluid=mine["goodput_rps"] / f if f else None)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="all", help=f"{', '.join(CASES)} or all (comma list ok)")
    ap.add_argument("--iters", type=int, default=3, help="bisection steps of each goodput sweep")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-oracle", action="store_true", help="skip prefix_oracle")
    ap.add_argument(
        "--ceiling",
        default="",
        help="comma list of ceilings to add (benchmark-only references): free = every router "
        "again on the trace with each request's reusable prefix cut from its prompt (what any "
        "router could gain from reuse, optimistically); info = prism with the oracle view and "
        "true output lengths declared; capacity = bounds on any router's goodput from the "
        "engines' true step-time models (capacity_ceiling.py: fluid = long-run rate, slice = "
        "this finite replay)",
    )
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--routers", default=",".join(ROUTERS), help="routers to sweep (prism first)")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    names = (
        [n for n in CASES if not n.endswith("-report")]
        if args.scenario == "all"
        else args.scenario.split(",")
    )
    bad = [n for n in names if n not in CASES]
    if bad:
        ap.error(f"unknown scenario(s) {', '.join(bad)}; known: {', '.join(CASES)}")
    engines = [e for e in args.engines.split(",") if e]
    policies = [p for p in args.routers.split(",") if p] + ([] if args.no_oracle else [ORACLE])
    ceil = [c for c in args.ceiling.split(",") if c]
    if any(c not in VARIANTS[1:] for c in ceil):
        ap.error(f"--ceiling takes {', '.join(VARIANTS[1:])}")
    variants = [("live", p) for p in policies]
    if "free" in ceil:
        variants += [("free", p) for p in policies if p != ORACLE]
    if "info" in ceil:
        variants.append(("info", "prism"))
    jobs = [(CASES[n], p, e, args.iters, v) for n in names for e in engines for v, p in variants]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        rows = list(pool.map(_job, jobs))
    if "capacity" in ceil:
        rows += [r for n in names for r in capacity_rows(CASES[n], engines)]
    result = {}
    for n in names:
        case = CASES[n]
        tr = _trace(case)
        bound = reuse_bound(tr)
        print(f"\n== {n}: {case.trace} (first {case.n}), {case.cluster}, TTFT {case.slo_ttft}s "
              f"TPOT {case.slo_tpot}s; trace rate {tr.rate:.2f}/s; hit rate at {case.at}x; "
              f"reuse bound {bound:.1%}")  # fmt: skip
        print(f"{'router':34s} {'engine':13s} {'goodput/s':>10s} {'hit@at':>8s} {'SLO@at':>8s}")
        mine = [r for r in rows if r["case"] == n]
        for r in mine:
            hit = "-" if r["hit_rate"] is None else f"{r['hit_rate']:.1%}"
            tag = {"free": " (free prefix)", "info": " (oracle info)",
                   "capacity": " (slice)"}.get(r.get("variant", ""))  # fmt: skip
            name = r["policy"] + (tag or (" (oracle)" if r["view"] == "oracle" else ""))
            if r.get("variant") == "capacity":
                name = f"capacity (fluid {r['fluid_rps']:.2f}/s), slice"
            print(f"{name:34s} {r['engine']:13s} {r['goodput_rps']:10.2f} {hit:>8s} "
                  f"{r['attainment_at']:8.1%}")  # fmt: skip
        b = bars(mine)
        for eng, v in b.items():
            ratio = "n/a" if v["ratio"] is None else f"{v['ratio']:.2f}x"
            print(f"bar ({eng}): prism {v['prism']:.2f}/s vs best other {v['best_other']} "
                  f"{v['best_other_rps']:.2f}/s = {ratio} (target 1.30x)")  # fmt: skip
            hit = next(
                r["hit_rate"] for r in mine
                if r["engine"] == eng and r["policy"] == v["best_other"]
                and r.get("variant", "live") == "live"
            )  # fmt: skip
            if hit is not None and bound > 0:
                # the reuse a perfect placement could still win over the best other router: it
                # computes 1 - hit of the prompt tokens, a perfect one 1 - bound; only where
                # goodput were bound by prefill compute alone would it gain that whole ratio
                left = (1 - hit) / (1 - bound) if bound < 1 else float("inf")
                v["prefill_left"] = left
                print(f"  reuse left ({eng}): {v['best_other']} hits {hit:.1%} of prompt tokens, "
                      f"the reuse bound {bound:.1%}: at most {left:.2f}x less prefill compute")  # fmt: skip
            for c, what in (("free", "every reusable prefix free"), ("info", "prism, oracle info")):
                if c in v and v[c]["ratio"] is not None:
                    print(f"  ceiling ({eng}, {what}): {v[c]['router']} {v[c]['rps']:.2f}/s = "
                          f"{v[c]['ratio']:.2f}x {v['best_other']}")  # fmt: skip
            cap = v.get("capacity")
            if cap is not None and cap["ratio"] is not None:
                print(f"  ceiling ({eng}, capacity): fluid {cap['fluid_rps']:.2f}/s = "
                      f"{cap['fluid_ratio']:.2f}x {v['best_other']} (prism at "
                      f"{cap['prism_of_fluid']:.2f} of it); this slice at most "
                      f"{cap['rps']:.2f}/s = {cap['ratio']:.2f}x")  # fmt: skip
        result[n] = {"reuse_bound": bound, "rows": mine, "bars": b}
    print(f"\n{len(jobs)} sweeps in {time.perf_counter() - t0:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
