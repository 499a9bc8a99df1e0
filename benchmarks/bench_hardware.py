"""Simulated step time of the canonical batches against measured references (issue 11).

Each batch runs through a whole EngineSim with the noise switched off, and the step of the wanted
shape is read from its telemetry, so the figure is what the simulator really charges. The "before"
column is the same benchmark run on commit efdc128 (the roofline truth in the perf model's own
terms), recorded here because that code is gone.

python benchmarks/bench_hardware.py
"""

from __future__ import annotations

import math

from nexussched.sim import get_profile
from nexussched.sim.references import BATCHES, REFERENCES_MS, simulated_step_ms

BEFORE_EFDC128_MS = {
    ("a100", "1 decode @1k"): 12.45,
    ("a100", "64 decodes @1k"): 19.38,
    ("a100", "256 decodes @1k"): 50.51,
    ("a100", "prefill 2048"): 174.78,
    ("h100", "1 decode @1k"): 8.27,
    ("h100", "64 decodes @1k"): 13.02,
    ("h100", "256 decodes @1k"): 30.25,
    ("h100", "prefill 2048"): 72.45,
    ("l4", "1 decode @1k"): 66.53,
    ("l4", "prefill 2048"): 447.23,
}


def main() -> None:
    print(
        f"{'device':<6} {'batch':<17} {'ref ms':>7} {'before ms':>10} {'before/ref':>11} "
        f"{'sim ms':>8} {'sim/ref':>8}"
    )
    for dev in ("a100", "h100", "l4"):
        for b in BATCHES:
            sim = simulated_step_ms(dev, b)
            before = BEFORE_EFDC128_MS.get((dev, b), math.nan)
            ref = REFERENCES_MS.get((dev, b))
            if ref is None:
                print(f"{dev:<6} {b:<17} {'-':>7} {before:>10.2f} {'-':>11} {sim:>8.2f} {'-':>8}")
                continue
            print(
                f"{dev:<6} {b:<17} {ref:>7.1f} {before:>10.2f} {before / ref:>10.2f}x "
                f"{sim:>8.2f} {sim / ref:>7.2f}x"
            )
    for dev in ("a100", "h100", "l4"):
        print(f"{dev}: linear layers from {get_profile(dev).source}")
    print("l4 has no measured reference; nan = the batch's KV does not fit the device")


if __name__ == "__main__":
    main()
