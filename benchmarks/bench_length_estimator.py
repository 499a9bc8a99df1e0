"""Error of the online output-length estimator (perfmodel/lengths.py) on the public traces.

Requests are replayed in arrival order. Before a request is predicted, the estimator has seen the
final lengths of the requests that finished by its arrival (a request is taken to finish
`output_tokens x --tpot` seconds after it arrives, plus --ttft: the estimator learns lengths late,
as a router does). Each request declares max_tokens = --cap and its true output is cut there.

For g in --at (tokens generated so far), over the requests whose output exceeds g, the table gives
the mean absolute error (tokens) of the predicted final length:
- estimator: E[min(L, cap) | L > g] over the finished requests' lengths;
- plain mean: the mean finished length (at least g + 1): what a length-blind router would use;
- the cap: trusting the declared max_tokens.

python benchmarks/bench_length_estimator.py [--traces azure-conv,azure-code,mooncake-conv]
"""

from __future__ import annotations

import argparse
import heapq

from nexussched.perfmodel import LengthEstimator
from nexussched.traces import load_trace


def run(name: str, cap: int, at: list[int], tpot: float, ttft: float) -> list[tuple]:
    tr = load_trace(name)
    est = LengthEstimator()
    pending: list[tuple[float, int]] = []  # (finish time, length)
    total = 0.0
    n_fin = 0
    err = {g: [0.0, 0.0, 0.0, 0] for g in at}  # estimator, mean, cap, count
    for r in sorted(tr.requests, key=lambda r: r.arrival):
        while pending and pending[0][0] <= r.arrival:
            _, x = heapq.heappop(pending)
            est.observe(x, cap)
            total += x
            n_fin += 1
        true = min(max(1, r.output_tokens), cap)
        mean = total / n_fin if n_fin else float(cap)
        for g in at:
            if true <= g:
                continue
            e = err[g]
            e[0] += abs(est.expected_total(g, cap) - true)
            e[1] += abs(min(cap, max(g + 1.0, mean)) - true)
            e[2] += abs(cap - true)
            e[3] += 1
        heapq.heappush(pending, (r.arrival + ttft + true * tpot, true))
    return [(name, g, e[3], e[0] / e[3], e[1] / e[3], e[2] / e[3]) for g, e in err.items() if e[3]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", default="azure-conv,azure-code,mooncake-conv")
    ap.add_argument("--cap", type=int, default=4096, help="declared max_tokens (default 4096)")
    ap.add_argument("--at", default="0,64,256", help="tokens generated so far")
    ap.add_argument("--tpot", type=float, default=0.05, help="s per output token (learning delay)")
    ap.add_argument("--ttft", type=float, default=1.0, help="s before the first token")
    a = ap.parse_args()
    at = [int(x) for x in a.at.split(",")]
    print(f"MAE of the predicted final output length (tokens), max_tokens = {a.cap}")
    print(
        f"{'trace':<15} {'generated':>9} {'requests':>9} {'estimator':>10} {'mean':>8} {'cap':>8}"
    )
    for name in a.traces.split(","):
        for row in run(name.strip(), a.cap, at, a.tpot, a.ttft):
            print(
                f"{row[0]:<15} {row[1]:>9} {row[2]:>9} {row[3]:>10.1f} {row[4]:>8.1f} {row[5]:>8.1f}"
            )


if __name__ == "__main__":
    main()
