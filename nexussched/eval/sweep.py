"""Goodput: the highest request rate at which SLO attainment stays >= a target, by rate sweep.

Attainment falls with rate (not strictly, because of noise), so the sweep brackets the threshold by
doubling/halving the rate scale (or stepping by another factor, `step`) and then bisects. Every point run is kept for the plots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class SweepResult:
    goodput_scale: float | None  # rate scale at the threshold (None: not met even at the lowest)
    points: list[tuple[float, dict]] = field(default_factory=list)  # (rate scale, run summary)


def goodput_sweep(
    run: Callable[[float], dict],
    start: float = 1.0,
    target: float = 0.9,
    iters: int = 6,
    lo_limit: float = 1 / 64,
    hi_limit: float = 256.0,
    step: float = 2.0,
) -> SweepResult:
    """`run(scale)` returns a summary with `slo_attainment` (and `stable`). Returns the best
    passing scale: attainment >= target in a stable run (an unstable one never passes: its slice
    hides a growing queue). `step`: the bracketing factor; the result is within a factor of
    step ** (1 / 2 ** iters) of the threshold (a start near it makes a small step cheap)."""
    if start <= 0:
        raise ValueError(f"rate scale must be positive, got {start}")
    if step <= 1:
        raise ValueError(f"bracketing step must be > 1, got {step}")
    points: list[tuple[float, dict]] = []

    def ok(scale: float) -> bool:
        s = run(scale)
        points.append((scale, s))
        return s["slo_attainment"] >= target and s.get("stable", True)

    s = start
    if ok(s):
        lo, hi = s, None
        while s < hi_limit:
            s *= step
            if ok(s):
                lo = s
            else:
                hi = s
                break
        if hi is None:
            return SweepResult(lo, sorted(points, key=lambda p: p[0]))
    else:
        lo, hi = None, s
        while s > lo_limit:
            s /= step
            if ok(s):
                lo = s
                break
            hi = s
        if lo is None:
            return SweepResult(None, sorted(points, key=lambda p: p[0]))
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return SweepResult(lo, sorted(points, key=lambda p: p[0]))
