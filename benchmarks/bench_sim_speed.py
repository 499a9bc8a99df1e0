"""Simulator speed: the whole azure-conv trace (19,366 requests) on 8 a100 engines, one policy.

python benchmarks/bench_sim_speed.py [--rate-scale 1,8] [--policy round_robin]
"""

from __future__ import annotations

import argparse
import time

from nexussched.eval.replay import SimSetup, simulate
from nexussched.sim import get_profile
from nexussched.traces import load_trace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate-scale", default="1,8")
    ap.add_argument("--policy", default="round_robin")
    ap.add_argument("--engines", type=int, default=8)
    a = ap.parse_args()
    t0 = time.perf_counter()
    trace = load_trace(a.trace)
    load_s = time.perf_counter() - t0
    print(f"trace {a.trace}: {len(trace)} requests, loaded in {load_s:.2f}s")
    print(
        f"{'rate x':>7} {'wall s':>7} {'sim s':>8} {'steps':>9} {'req/wall s':>11} {'steps/wall s':>13}"
    )
    for k in (float(x) for x in a.rate_scale.split(",")):
        setup = SimSetup([get_profile("a100")] * a.engines)
        r = simulate(trace, setup, a.policy, rate_scale=k)
        s = r.summary
        print(
            f"{k:>7g} {r.wall_s:>7.2f} {s['sim_time_s']:>8.0f} {s['sim_steps']:>9} "
            f"{len(trace) / r.wall_s:>11.0f} {s['sim_steps'] / r.wall_s:>13.0f}"
        )


if __name__ == "__main__":
    main()
