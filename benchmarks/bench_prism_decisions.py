"""PRISM decision throughput: routing decisions per second on one core, every decision scoring
every engine (all healthy, all with room, learned per-engine models of different speeds).

python benchmarks/bench_prism_decisions.py [--engines 8,16,64,128] [--decisions 50000]

Each decision is a route() call for a fresh request plus the on_finish() of an older one, so the
in-flight set stays at a steady size; the table also shows the cost of one step record (observe)
and of one tick. The bar: >= 5,000 decisions/s with 64 engines (llm-d's latency-predictor sidecar
serves about 300 predictions/s).
"""

from __future__ import annotations

import argparse

from nexussched.eval.decisions import decision_throughput


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="8,16,64,128")
    ap.add_argument("--decisions", type=int, default=50000)
    a = ap.parse_args()
    print(
        f"{'engines':>8} {'decisions/s':>12} {'us/decision':>12} {'observe us':>11} "
        f"{'tick us':>8} {'held':>6}"
    )
    decision_throughput(4, 1000)  # warm-up: first imports and first model fits
    for n in (int(x) for x in a.engines.split(",")):
        rate, obs_us, tick_us, held = decision_throughput(n, a.decisions)
        print(
            f"{n:>8} {rate:>12,.0f} {1e6 / rate:>12.1f} {obs_us:>11.1f} {tick_us:>8.0f} {held:>6}"
        )


if __name__ == "__main__":
    main()
