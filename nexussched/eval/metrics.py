"""Per-request outcomes and the summary figures every evaluation reports.

Attainment counts every request offered: one that failed or never finished did not meet its SLO.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class RequestOutcome:
    id: object
    arrival: float
    prompt_tokens: int
    output_tokens: int
    ttft: float  # seconds; nan if no first token
    tpot: float  # mean seconds per output token after the first; 0 for one-token outputs
    e2e: float
    max_itl: float
    slo_ttft: float
    slo_tpot: float
    completed: bool
    engine: str = ""
    error: str | None = None
    moves: int = 0
    preemptions: int = 0

    @property
    def slo_met(self) -> bool:
        return self.completed and self.ttft <= self.slo_ttft and self.tpot <= self.slo_tpot


def outcomes_from_sim(requests: Iterable) -> list[RequestOutcome]:
    out = []
    for r in requests:
        done = not math.isnan(r.finish)
        out.append(
            RequestOutcome(
                id=r.id,
                arrival=r.arrival,
                prompt_tokens=r.prompt,
                output_tokens=r.output,
                ttft=r.ttft if done else math.nan,
                tpot=r.tpot if done else math.nan,
                e2e=r.e2e if done else math.nan,
                max_itl=r.max_itl,
                slo_ttft=r.slo_ttft,
                slo_tpot=r.slo_tpot,
                completed=done,
                engine=r.engine_name,
                error=None if done else "not completed",
                moves=r.moves,
                preemptions=r.preemptions,
            )
        )
    return out


def _pct(values: np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(outcomes: Sequence[RequestOutcome]) -> dict:
    """Counts, SLO attainment, percentiles (seconds) and throughput of one run."""
    n = len(outcomes)
    done = [o for o in outcomes if o.completed]
    ttft = np.array([o.ttft for o in done])
    tpot = np.array([o.tpot for o in done if o.output_tokens > 1])
    e2e = np.array([o.e2e for o in done])
    itl = np.array([o.max_itl for o in done])
    met = sum(1 for o in outcomes if o.slo_met)
    ttft_met = sum(1 for o in done if o.ttft <= o.slo_ttft)
    tpot_met = sum(1 for o in done if o.tpot <= o.slo_tpot)
    if done:
        t0 = min(o.arrival for o in outcomes)
        t1 = max(o.arrival + o.e2e for o in done)
        span = max(t1 - t0, 1e-9)
        throughput = len(done) / span
        tokens = sum(o.output_tokens for o in done) / span
    else:
        throughput = tokens = 0.0
    return {
        "requests": n,
        "completed": len(done),
        "failed": n - len(done),
        "slo_attainment": met / n if n else 0.0,
        "ttft_attainment": ttft_met / n if n else 0.0,
        "tpot_attainment": tpot_met / n if n else 0.0,
        "ttft_p50": _pct(ttft, 50),
        "ttft_p90": _pct(ttft, 90),
        "ttft_p99": _pct(ttft, 99),
        "tpot_p50": _pct(tpot, 50),
        "tpot_p90": _pct(tpot, 90),
        "tpot_p99": _pct(tpot, 99),
        "itl_max_p99": _pct(itl, 99),
        "e2e_p50": _pct(e2e, 50),
        "e2e_p90": _pct(e2e, 90),
        "e2e_p99": _pct(e2e, 99),
        "throughput_rps": throughput,
        "output_tokens_per_s": tokens,
        "moves": sum(o.moves for o in outcomes),
        "preemptions": sum(o.preemptions for o in outcomes),
    }
