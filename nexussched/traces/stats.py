"""Summary statistics of a trace, for `trace info` and for sanity checks in tests."""

from __future__ import annotations

import numpy as np

from .types import Trace


def _dist(values: np.ndarray, prefix: str) -> dict[str, float]:
    if values.size == 0:
        return {f"{prefix}_mean": 0.0, f"{prefix}_p50": 0.0, f"{prefix}_p99": 0.0}
    p50, p99 = np.percentile(values, [50, 99])
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_p50": float(p50),
        f"{prefix}_p99": float(p99),
    }


def describe(trace: Trace) -> dict[str, float | int | str]:
    """count, duration_s, rate_rps, prompt_/output_ mean/p50/p99, interarrival_cv.

    interarrival_cv is std/mean of the gaps between arrivals: ~1 for Poisson, >1 bursty.
    """
    reqs = trace.requests
    arrivals = np.fromiter((r.arrival for r in reqs), dtype=float, count=len(reqs))
    gaps = np.diff(arrivals)
    cv = float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else 0.0
    return {
        "name": trace.name,
        "count": len(reqs),
        "duration_s": trace.duration,
        "rate_rps": trace.rate,
        **_dist(np.array([r.prompt_tokens for r in reqs], dtype=float), "prompt"),
        **_dist(np.array([r.output_tokens for r in reqs], dtype=float), "output"),
        "interarrival_cv": cv,
    }
