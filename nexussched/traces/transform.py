"""Pure transforms on traces. Each returns a new Trace with ids renumbered 0..n-1."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace

from .types import Trace, TraceRequest


def _rebuild(
    trace: Trace, requests: Iterable[TraceRequest], shift: float = 0.0, k: float = 1.0
) -> Trace:
    """Copy requests with arrival (a - shift) / k and sequential ids; the input is untouched."""
    out = [replace(r, id=i, arrival=(r.arrival - shift) / k) for i, r in enumerate(requests)]
    return Trace(name=trace.name, requests=out, meta=dict(trace.meta))


def scale_rate(trace: Trace, k: float) -> Trace:
    """Multiply the arrival rate by k (arrivals divided by k); lengths are unchanged."""
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"rate scale must be a positive number, got {k!r}")
    return _rebuild(trace, trace.requests, k=k)


def slice_trace(trace: Trace, start: int | None = None, stop: int | None = None) -> Trace:
    """Requests [start:stop] by index, arrivals re-based so the first is 0."""
    part = trace.requests[start:stop]
    return _rebuild(trace, part, shift=part[0].arrival if part else 0.0)


def head(trace: Trace, n: int) -> Trace:
    """The first n requests."""
    if n < 0:
        raise ValueError(f"head needs n >= 0, got {n!r}")
    return slice_trace(trace, 0, n)


def time_window(trace: Trace, t0: float, t1: float) -> Trace:
    """Requests arriving in [t0, t1), arrivals re-based to t0 (a leading idle gap is kept)."""
    if not t1 >= t0:
        raise ValueError(f"time window needs t0 <= t1, got [{t0!r}, {t1!r})")
    return _rebuild(trace, (r for r in trace.requests if t0 <= r.arrival < t1), shift=t0)


def with_slo(trace: Trace, ttft: float | None = None, tpot: float | None = None) -> Trace:
    """Fill per-request SLOs (seconds) where they are None; set ones are kept."""
    for label, value in (("ttft", ttft), ("tpot", tpot)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"SLO {label} must be a positive number of seconds, got {value!r}")
    filled = (
        replace(
            r,
            slo_ttft=r.slo_ttft if r.slo_ttft is not None else ttft,
            slo_tpot=r.slo_tpot if r.slo_tpot is not None else tpot,
        )
        for r in trace.requests
    )
    return _rebuild(trace, filled)
