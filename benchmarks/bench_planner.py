"""LENS decision time per step: `LensPolicy.plan(state)` on a StepState with N running sequences.

python benchmarks/bench_planner.py [--running 64,256,1024] [--waiting 64] [--calls 3000]

The state mixes decodes of varied context, age and TPOT bank with a few partial prefills and a
waiting queue (prompt lengths and arrivals as in azure-conv), and the perf model is one fitted on
simulator telemetry, so every branch of the planner runs. Prints median / p90 / p99 microseconds.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from nexussched.engine_sched import LensPolicy, SeqState, StepState
from nexussched.perfmodel import PerfModel

# Coefficients of the order an a100-like engine's online model learns (s per unit of each feature).
COEF = (7.9e-5, 4.8e-9, 1.3e-4, 8.0e-8, 1.2e-2)


def make_state(running: int, waiting: int, rng: random.Random) -> StepState:
    now = 1000.0
    decodes, prefills = [], []
    n_partial = min(4, running // 16)
    for i in range(running - n_partial):
        prompt = rng.randint(100, 2000)
        out = rng.randint(20, 600)
        g = rng.randint(1, out - 1)
        # ahead of a 0.1 s TPOT target by 5-50%
        ft = now - (g - 1) * 0.1 * rng.uniform(0.5, 0.95)
        decodes.append(SeqState(i, prompt, prompt + g - 1, g, out, ft - 0.5, True, 2.0, 0.1, 0, ft))
    for j in range(n_partial):
        prompt = rng.randint(2000, 8000)
        prefills.append(
            SeqState(
                10_000 + j,
                prompt,
                rng.randint(1, prompt - 1),
                0,
                200,
                now - 1.0,
                True,
                2.0,
                0.1,
                0,
                None,
            )
        )
    for j in range(waiting):
        prefills.append(
            SeqState(
                20_000 + j,
                rng.randint(50, 4000),
                0,
                0,
                200,
                now - rng.uniform(0, 3),
                False,
                2.0,
                0.1,
                0,
                None,
            )
        )
    return StepState(
        now=now,
        decodes=decodes,
        prefills=prefills,
        free_blocks=20_000,
        total_blocks=28_000,
        block_size=16,
        max_num_seqs=1024,
        max_num_batched_tokens=8192,
        num_running=running,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--running", default="64,256,1024")
    ap.add_argument("--waiting", type=int, default=64)
    ap.add_argument("--calls", type=int, default=3000)
    a = ap.parse_args()
    model = PerfModel.from_dict({"coef": list(COEF)})
    pol = LensPolicy(model=model)
    rng = random.Random(0)
    print(
        f"{'running':>8} {'waiting':>8} {'median us':>10} {'p90 us':>8} {'p99 us':>8} "
        f"{'budget':>7} {'prefills':>9}"
    )
    for n in (int(x) for x in a.running.split(",")):
        states = [make_state(n, a.waiting, rng) for _ in range(20)]
        for s in states[:5]:
            pol.plan(s)  # warm-up
        times = []
        plan = None
        gc.collect()
        for i in range(a.calls):
            s = states[i % len(states)]
            t0 = time.perf_counter_ns()
            plan = pol.plan(s)
            times.append((time.perf_counter_ns() - t0) / 1000.0)
        times.sort()
        q = statistics.quantiles(times, n=100)
        print(
            f"{n:>8} {a.waiting:>8} {statistics.median(times):>10.1f} {q[89]:>8.1f} "
            f"{q[98]:>8.1f} {plan.token_budget:>7} {len(plan.order):>9}"
        )


if __name__ == "__main__":
    main()
