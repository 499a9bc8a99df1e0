"""Sim-to-live agreement: the same azure-conv slice through the simulator (live view) and through
the live router in front of 3 engine-sims of different speeds (h100, a100, l4; real time), for
round_robin, least_load and prism: SLO attainment side by side, the gap (live - sim) per policy
and whether it is within 5 points (nexussched/eval/sim_live.py). With --rounds N the comparison
runs N times, round k with seed k on both sides (the simulator's step noise, engine-sim's), and a
last table gives each policy's mean and range over the rounds.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sim_live.py [--requests 300] [--rate 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time

from nexussched.eval.sim_live import agreement_table, rounds_table, sim_vs_live
from nexussched.traces import head, load_trace, scale_rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", default="azure-conv")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--rate", type=float, default=6.0, help="mean requests/s of the slice")
    p.add_argument("--cluster", default="h100,a100,l4", help="engine profiles, comma-separated")
    p.add_argument("--policies", default="round_robin,least_load,prism")
    p.add_argument("--slo-ttft", type=float, default=2.0)
    p.add_argument("--slo-tpot", type=float, default=0.1)
    p.add_argument("--rounds", type=int, default=1, help="repeat with seeds 0..N-1 (default 1)")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    tr = head(load_trace(a.trace), a.requests)
    tr = scale_rate(tr, a.rate / tr.rate) if tr.rate > 0 else tr
    print(
        f"{a.trace}, first {len(tr.requests)} requests at {a.rate:g}/s, engines {a.cluster} "
        f"(vllm_default; live: engine-sim, real time), SLO TTFT {a.slo_ttft:g} s / TPOT "
        f"{a.slo_tpot:g} s; {os.cpu_count()} CPUs",
        flush=True,
    )
    rounds = []
    for k in range(a.rounds):
        load0, t0 = os.getloadavg()[0], time.monotonic()
        rows = sim_vs_live(
            tr, a.cluster.split(","), a.policies.split(","), a.slo_ttft, a.slo_tpot, seed=k
        )
        rounds.append(rows)
        print(
            f"\nround {k + 1}/{a.rounds} (seed {k}), load average {load0:.1f} -> "
            f"{os.getloadavg()[0]:.1f}, {time.monotonic() - t0:.0f} s"
        )
        print(agreement_table(rows), flush=True)
    if a.rounds > 1:
        print(f"\nover {a.rounds} rounds")
        print(rounds_table(rounds))


if __name__ == "__main__":
    main()
