"""Liveness and bounded unfairness (issue 9, items 4 and 5).

python benchmarks/bench_liveness.py --part repros [--client-timeout S]
python benchmarks/bench_liveness.py --part fairness [--rate-scale K] [--requests N]
    [--lens-age-limit X] [--prism-age-limit X] [--workers W]

repros: the strandings issue 9 found, each replayed as it was found (clients that wait forever
by default, so that a stranded request is not hidden behind its client's timeout). Prints per
case the requests offered, stranded (neither finished nor failed when the simulation ended) and
failed by reason. The script also runs on older trees (efdc128), where a request has no failure
record: there "stranded" is the unfinished requests less those the simulator counted rejected.

fairness: the operating point of the issue (the rate at which round_robin + vllm_default attains
50-70% of SLOs; searched unless --rate-scale is given) on azure-conv with 8 a100, TTFT 2 s /
TPOT 0.1 s SLOs and 60 s client timeouts. Prints per pair the attainment, the starved share
(TTFT above 10x its SLO, or none), TTFT p99 and max, failures and stability, and whether the
starved share is within round_robin + vllm_default's plus 0.5 points (the issue's bar).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from nexussched.engine_sched import make_engine_policy
from nexussched.eval.metrics import outcomes_from_sim, summarize
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import Trace, TraceRequest, load_trace, scale_rate, slice_trace

BAR_POINTS = 0.005  # the bar: starved share at most vllm_default's + 0.5 points
PAIRS = (
    ("round_robin", "vllm_default"),
    ("round_robin", "sarathi"),
    ("round_robin", "lens"),
    ("least_load", "lens"),
    ("llmd_weighted", "lens"),
    ("prism", "vllm_default"),
    ("prism", "lens"),
)


# ---- one simulation -------------------------------------------------------------------------
def _engine_factory(engine: str, slo_ttft: float, slo_tpot: float, lens_age: float | None):
    def make(i: int, name: str):
        if engine == "lens" and lens_age is not None:
            from nexussched.engine_sched import LensConfig, LensPolicy

            return LensPolicy(engine_name=name, config=LensConfig(age_limit=lens_age))
        return make_engine_policy(
            engine, engine_name=name, slo_ttft=slo_ttft, slo_tpot=slo_tpot, seed=i
        )

    return make


def run_pair(
    trace: Trace,
    cluster: str,
    router: str,
    engine: str,
    slo_ttft: float,
    slo_tpot: float,
    client_timeout: float | None,
    policy_kwargs: dict | None = None,
    lens_age: float | None = None,
) -> tuple[dict, object]:
    kw = {"client_timeout": client_timeout} if client_timeout else {}
    sim = ClusterSim(
        parse_cluster(cluster),
        make_policy(router, **(policy_kwargs or {})),
        _engine_factory(engine, slo_ttft, slo_tpot, lens_age),
        **kw,
    )
    res = sim.run(trace, slo_ttft, slo_tpot)
    return summarize(outcomes_from_sim(res.requests)), res


def stranded_of(res) -> tuple[int, dict]:
    """(stranded, failures by reason) of a run, also on trees without failure records."""
    reqs = res.requests
    if hasattr(reqs[0], "failure"):
        reasons: dict[str, int] = {}
        for r in reqs:
            if r.failure is not None:
                reasons[r.failure] = reasons.get(r.failure, 0) + 1
        return sum(1 for r in reqs if r.finish != r.finish and r.failure is None), reasons
    unfinished = sum(1 for r in reqs if r.finish != r.finish)
    return max(0, unfinished - res.rejected), {"rejected": res.rejected}


# ---- repros -----------------------------------------------------------------------------------
def _synthetic(items: list[tuple[float, int, int]]) -> Trace:
    return Trace(
        "synthetic",
        [TraceRequest(id=i, arrival=a, prompt_tokens=p, output_tokens=o)
         for i, (a, p, o) in enumerate(items)],
    )  # fmt: skip


def repro_cases() -> list[tuple[str, Trace, str, str, str, float]]:
    """(name, trace, cluster, router, engine, TTFT SLO) of each stranding issue 9 named."""
    moon = load_trace("mooncake-conv")
    return [
        (
            "LENS partial prefills fill an l4's KV",
            scale_rate(slice_trace(moon, 0, 400), 0.5), "l4:2", "round_robin", "lens", 10.0,
        ),
        (
            "LENS on small-KV engines (mixed)",
            slice_trace(moon, 0, 400), "a100:1,l4:2", "round_robin", "lens", 10.0,
        ),
        (
            "PRISM late list on vllm_default",
            _synthetic([(0.0, 100_000, 50)] + [(0.1 + 0.01 * i, 500, 20) for i in range(20)]),
            "a100:1", "prism", "vllm_default", 2.0,
        ),
        (
            "FastDeploy local, prompt > l4 KV",
            _synthetic([(0.0, 100, 10), (0.1, 50_000, 10)]
                       + [(0.2 + 0.1 * i, 200, 10) for i in range(200)]),
            "a100:1,l4:1", "local", "vllm_default", 2.0,
        ),
        (
            "FastDeploy local, mooncake",
            scale_rate(slice_trace(moon, 0, 300), 0.3), "a100:2,l4:2", "local", "vllm_default",
            10.0,
        ),
        (
            "splitwise decode node outgrown",
            _synthetic([(0.0, 45_000, 2000)] + [(0.5 + 0.1 * i, 200, 10) for i in range(200)]),
            "a100:1,l4:1", "splitwise", "vllm_default", 2.0,
        ),
    ]  # fmt: skip


def part_repros(args: argparse.Namespace) -> None:
    print(f"client timeout: {args.client_timeout or 'none (clients wait forever)'}")
    head = f"{'case':<40} {'pair':<26} {'cluster':<12} {'offered':>7} {'stranded':>8}  failed"
    print(head)
    print("-" * len(head))
    for name, trace, cluster, router, engine, slo in repro_cases():
        t0 = time.perf_counter()
        _, res = run_pair(trace, cluster, router, engine, slo, 0.1, args.client_timeout or None)
        stranded, reasons = stranded_of(res)
        print(
            f"{name:<40} {router + '+' + engine:<26} {cluster:<12} {len(trace):>7} "
            f"{stranded:>8}  {reasons or '-'}  ({time.perf_counter() - t0:.1f}s)",
            flush=True,
        )


# ---- fairness ---------------------------------------------------------------------------------
def _fair_task(task: tuple) -> tuple[str, str, dict]:
    trace, cluster, router, engine, timeout, lens_age, prism_age = task
    kw = {"age_limit": prism_age} if router == "prism" and prism_age is not None else None
    s, res = run_pair(trace, cluster, router, engine, 2.0, 0.1, timeout, kw, lens_age)
    ttfts = [r.first_token - r.arrival for r in res.requests if r.first_token == r.first_token]
    s["ttft_max"] = max(ttfts) if ttfts else math.nan
    return router, engine, s


def find_operating_point(trace: Trace, cluster: str, timeout: float | None) -> float:
    lo, hi = 4.0, 16.0
    k = 10.0
    for _ in range(8):
        s, _ = run_pair(scale_rate(trace, k), cluster, "round_robin", "vllm_default", 2.0, 0.1,
                        timeout)  # fmt: skip
        att = s["slo_attainment"]
        print(f"  search: x{k:g} round_robin+vllm_default attains {att:.1%}", flush=True)
        if 0.5 <= att <= 0.7:
            return k
        lo, hi = (k, hi) if att > 0.7 else (lo, k)
        k = round((lo + hi) / 2.0, 3)
    return k


def part_fairness(args: argparse.Namespace) -> None:
    trace = load_trace(args.trace)
    if args.requests:
        trace = slice_trace(trace, 0, args.requests)
    timeout = args.client_timeout or None
    k = args.rate_scale or find_operating_point(trace, args.cluster, timeout)
    scaled = scale_rate(trace, k)
    print(
        f"{args.trace} ({len(trace)} requests) x{k:g} = {scaled.rate:.1f} req/s on {args.cluster}; "
        f"SLO TTFT 2 s / TPOT 0.1 s; client timeout {timeout}; LENS age_limit "
        f"{'default' if args.lens_age_limit is None else args.lens_age_limit}, PRISM age_limit "
        f"{'default' if args.prism_age_limit is None else args.prism_age_limit}"
    )
    pairs = [tuple(p.split("+")) for p in args.pairs.split(",")] if args.pairs else list(PAIRS)
    tasks = [(scaled, args.cluster, r, e, timeout, args.lens_age_limit, args.prism_age_limit)
             for r, e in pairs]  # fmt: skip
    t0 = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            results = list(pool.map(_fair_task, tasks))
    else:
        results = [_fair_task(t) for t in tasks]
    base = next((s for r, e, s in results if (r, e) == ("round_robin", "vllm_default")), None)
    bar = base["starved_share"] + BAR_POINTS if base else None
    head = (
        f"{'pair':<26} {'SLO att':>7} {'starved':>8} {'TTFT p99 s':>10} {'TTFT max s':>10} "
        f"{'failed':>6} {'stranded':>8} {'stable':>6}  bar"
    )
    print(head)
    print("-" * len(head))
    for r, e, s in results:
        verdict = "-" if bar is None or (r, e) == ("round_robin", "vllm_default") else (
            "ok" if s["starved_share"] <= bar else "OVER"
        )  # fmt: skip
        p99 = s["ttft_p99"] if s["ttft_p99"] is not None else math.nan
        print(
            f"{r + '+' + e:<26} {s['slo_attainment']:>7.1%} {s['starved_share']:>8.2%} "
            f"{p99:>10.1f} {s['ttft_max']:>10.1f} {s['failed']:>6} {s['stranded']:>8} "
            f"{'yes' if s['stable'] else 'NO':>6}  {verdict}"
        )
    if bar is not None:
        print(f"bar: starved <= round_robin+vllm_default's {base['starved_share']:.2%} + 0.5 "
              f"points = {bar:.2%}; {time.perf_counter() - t0:.0f}s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("repros", "fairness"), required=True)
    p.add_argument("--client-timeout", type=float, default=None,
                   help="s to first token (repros default: none; fairness default: 60)")  # fmt: skip
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--cluster", default="a100:8")
    p.add_argument("--requests", type=int, default=0, help="first N requests (0: all)")
    p.add_argument("--rate-scale", type=float, default=0.0, help="0: search the operating point")
    p.add_argument("--pairs", default="", help="router+engine,... (default: the issue's seven)")
    p.add_argument("--lens-age-limit", type=float, default=None, help="x TTFT SLO")
    p.add_argument("--prism-age-limit", type=float, default=None, help="x TTFT SLO")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.part == "repros":
        part_repros(args)
    else:
        if args.client_timeout is None:
            args.client_timeout = 60.0
        part_fairness(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
