"""FastDeploy's scheduler modes vs round robin on a skewed azure-conv replay (simulated cluster).

Two kinds of skew, each printed as a table:
  hetero: engines of different speed behind an even (round-robin) front, FastDeploy's own case:
          equal request counts, unequal work;
  front:  equal engines behind a front load balancer that sends requests unevenly (weights); the
          `local` and `global` rows get the skewed front, round_robin the even one it always has.

  PYTHONPATH=. python benchmarks/bench_fastdeploy_modes.py            # full trace, both tables
  PYTHONPATH=. python benchmarks/bench_fastdeploy_modes.py --requests 5000
"""

from __future__ import annotations

import argparse
import time

from nexussched.eval.metrics import outcomes_from_sim, summarize
from nexussched.eval.replay import DEFAULT_CLIENT_TIMEOUT
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import head, load_trace, scale_rate


def run(
    trace, cluster: str, policy: str, kw: dict, slo_ttft: float, slo_tpot: float, seed: int
) -> dict:
    pol = make_policy(policy, **kw)
    # the eval's defaults: live view, max_tokens cap:4096, clients give up after 60 s
    sim = ClusterSim(parse_cluster(cluster), pol, seed=seed, client_timeout=DEFAULT_CLIENT_TIMEOUT)
    t0 = time.perf_counter()
    res = sim.run(trace, slo_ttft, slo_tpot)
    s = summarize(outcomes_from_sim(res.requests))
    s["wall_s"] = time.perf_counter() - t0
    s["steals"] = getattr(pol, "steals", 0)
    s["rejected"] = res.rejected
    s["expired"] = getattr(pol, "expired", 0)
    return s


def table(title: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n{title}")
    print(
        "done/failed/strnd: requests; ttft/tpot: s; slo_att, ttft_att: shares of offered "
        "requests; starv%: TTFT over 10x its SLO or never; live view, max_tokens cap:4096, "
        "client timeout 60 s"
    )
    hdr = (
        f"{'policy':24s} {'done':>6s} {'ttft_p50':>9s} {'ttft_p99':>9s} {'tpot_p99':>9s} "
        f"{'slo_att':>8s} {'ttft_att':>8s} {'failed':>6s} {'strnd':>5s} {'starv%':>6s} "
        f"{'stable':>6s} {'steals':>7s} {'expired':>7s} {'wall_s':>6s}"
    )
    print(hdr)
    print("-" * len(hdr))
    for label, s in rows:
        print(
            f"{label:24s} {s['completed']:6d} {s['ttft_p50']:9.3f} {s['ttft_p99']:9.3f} "
            f"{s['tpot_p99']:9.4f} {s['slo_attainment']:8.3f} {s['ttft_attainment']:8.3f} "
            f"{s['failed']:6d} {s['stranded']:5d} {s['starved_share'] * 100:6.2f} "
            f"{'yes' if s['stable'] else 'NO':>6s} {s['steals']:7d} {s['expired']:7d} "
            f"{s['wall_s']:6.1f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--requests", type=int, default=0, help="first N requests (0: all)")
    ap.add_argument("--hetero-cluster", default="a100:2,l4:2")
    ap.add_argument("--hetero-rate", type=float, default=1.0, help="rate scale for hetero")
    ap.add_argument("--front-cluster", default="a100:4")
    ap.add_argument("--front-weights", default="4,2,1,1")
    ap.add_argument("--front-rate", type=float, default=2.0, help="rate scale for front")
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--slo-tpot", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    trace = load_trace(a.trace)
    if a.requests:
        trace = head(trace, a.requests)
    print(
        f"trace {a.trace}: {len(trace)} requests, {trace.rate:.2f} req/s; "
        f"SLO ttft {a.slo_ttft}s tpot {a.slo_tpot}s"
    )

    t = scale_rate(trace, a.hetero_rate)
    rows = [
        (p, run(t, a.hetero_cluster, p, {}, a.slo_ttft, a.slo_tpot, a.seed))
        for p in ("round_robin", "least_load", "local", "global", "splitwise")
    ]
    table(
        f"hetero: {a.hetero_cluster}, even front, rate x{a.hetero_rate} ({t.rate:.2f} req/s)", rows
    )

    t = scale_rate(trace, a.front_rate)
    fw = {"front_weights": a.front_weights}
    rows = [
        (
            "round_robin (even)",
            run(t, a.front_cluster, "round_robin", {}, a.slo_ttft, a.slo_tpot, a.seed),
        ),
        (
            f"local ({a.front_weights})",
            run(t, a.front_cluster, "local", fw, a.slo_ttft, a.slo_tpot, a.seed),
        ),
        (
            f"global ({a.front_weights})",
            run(t, a.front_cluster, "global", fw, a.slo_ttft, a.slo_tpot, a.seed),
        ),
    ]
    table(
        f"front: {a.front_cluster}, front weights {a.front_weights}, rate x{a.front_rate} "
        f"({t.rate:.2f} req/s)",
        rows,
    )


if __name__ == "__main__":
    main()
