"""Per-request outcomes and the summary figures every evaluation reports.

Attainment counts every request offered: one that failed or never finished did not meet its SLO.

Every request offered ends one of three ways: `completed`; `failed` with a reason (`error`: a
server or connection error; `rejected`: refused at admission, e.g. no engine can hold it;
`shed`: refused by SLO admission control; `timeout`: its client gave up waiting for the first
token, `--client-timeout`; `expired`: a scheduler queue's TTL dropped it); or `stranded`: neither
when the simulation ended, which is a liveness bug and is reported as one.

Steady state. A finite slice of a trace replayed faster than the cluster can serve it still
"completes", with a queue that grew all along; its attainment then describes a system that
cannot run. So each run carries a stability test (`stability()`): the *backlog* at time t is the
number of requests arrived by t that have not been served a first token by t (failed ones never
are, so shedding or timing out does not hide overload). It is sampled at 64 evenly spaced times
in the third and in the last quarter of the arrival window; `backlog_growth` is the median of the
last quarter's samples minus the third quarter's. The run is `stable` unless that growth exceeds
both 10 requests and 5% of the requests that arrived in the second half of the window: a queue
that keeps growing through the window is unstable, a burst that drains is not. Goodput (eval's
sweep and the report) counts stable runs only.
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
    failure: str | None = None  # why it failed (FAILURE_KINDS); "stranded" if it never ended

    def __post_init__(self) -> None:
        if not self.completed and self.failure is None:
            self.failure = "error"

    @property
    def slo_met(self) -> bool:
        return self.completed and self.ttft <= self.slo_ttft and self.tpot <= self.slo_tpot


FAILURE_KINDS = ("error", "rejected", "shed", "timeout", "expired")
STRANDED = "stranded"
STARVED_FACTOR = 10.0  # a request whose TTFT exceeds this x its SLO (or never came) is starved
STABLE_MIN_GROWTH = 10  # requests
STABLE_SHARE = 0.05  # of the requests arriving in the window's second half


def outcomes_from_sim(requests: Iterable) -> list[RequestOutcome]:
    out = []
    for r in requests:
        done = not math.isnan(r.finish) and r.failure is None
        failure = None if done else (r.failure or STRANDED)
        if done:
            error = None
        elif r.failure is None:
            error = "stranded: neither finished nor failed when the simulation ended"
        else:
            error = r.error or r.failure
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
                error=error,
                moves=r.moves,
                preemptions=r.preemptions,
                failure=failure,
            )
        )
    return out


def stability(outcomes: Sequence[RequestOutcome], samples: int = 64) -> tuple[bool, float]:
    """(stable, backlog growth in requests) of one run: the test in this module's docstring."""
    n = len(outcomes)
    if n < 2:
        return True, 0.0
    arr = np.sort(np.array([o.arrival for o in outcomes], dtype=float))
    served = np.array(
        [o.arrival + o.ttft for o in outcomes if o.ttft == o.ttft and math.isfinite(o.ttft)],
        dtype=float,
    )
    served.sort()
    t0, t1 = float(arr[0]), float(arr[-1])
    w = t1 - t0
    if w <= 0:
        return True, 0.0

    def backlog(ts: np.ndarray) -> np.ndarray:
        return np.searchsorted(arr, ts, side="right") - np.searchsorted(served, ts, side="right")

    q3 = backlog(np.linspace(t0 + 0.5 * w, t0 + 0.75 * w, samples))
    q4 = backlog(np.linspace(t0 + 0.75 * w, t1, samples))
    growth = float(np.median(q4) - np.median(q3))
    late = n - int(np.searchsorted(arr, t0 + 0.5 * w, side="left"))
    return growth <= max(STABLE_MIN_GROWTH, STABLE_SHARE * late), growth


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
        # per second of the arrival window (not of the makespan: a slow tail would dilute it)
        t0 = min(o.arrival for o in outcomes)
        window = max(o.arrival for o in outcomes) - t0
        if window <= 0:
            window = max(max(o.arrival + o.e2e for o in done) - t0, 1e-9)
        throughput = len(done) / window
        tokens = sum(o.output_tokens for o in done) / window
    else:
        throughput = tokens = 0.0
    reasons: dict[str, int] = {}
    stranded = 0
    for o in outcomes:
        if not o.completed:
            if o.failure == STRANDED:
                stranded += 1
            else:
                k = o.failure or "error"
                reasons[k] = reasons.get(k, 0) + 1
    limit = STARVED_FACTOR
    starved = sum(1 for o in outcomes if not (o.ttft == o.ttft and o.ttft <= limit * o.slo_ttft))
    stable, growth = stability(outcomes)
    return {
        "requests": n,
        "offered": n,
        "completed": len(done),
        "failed": n - len(done) - stranded,
        "failure_reasons": reasons,
        "stranded": stranded,
        "starved_share": starved / n if n else 0.0,
        "stable": stable,
        "backlog_growth": growth,
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
