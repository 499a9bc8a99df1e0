"""The value of information: SLO attainment of four policy pairs when the policies see the
engines' exact, instant state (oracle) or what a live router has (live: scraped gauges, delayed
telemetry), and when clients declare their true output length (exact) or max_tokens = 4096.

Default scenario: azure-conv, first 3000 requests, heterogeneous cluster h100:2,a100:4,l4:2, at
14x the trace's rate, TTFT <= 2 s, TPOT <= 0.1 s. --scrape adds rows with faster and slower
scrapes of the live view.

python benchmarks/bench_information.py [--scrape] [--n 3000] [--rate-scale 14]
"""

from __future__ import annotations

import argparse
import sys
import time

from nexussched.eval.value_of_information import (
    SCRAPE_SETTINGS,
    SETTINGS,
    format_value_table,
    run_value_of_information,
)
from nexussched.traces import head, load_trace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--n", type=int, default=3000, help="first N requests")
    ap.add_argument("--cluster", default="h100:2,a100:4,l4:2")
    ap.add_argument("--rate-scale", type=float, default=14.0)
    ap.add_argument("--scrape", action="store_true", help="also scrape every 0.05 s and 2 s")
    a = ap.parse_args()
    trace = head(load_trace(a.trace), a.n)
    settings = SETTINGS + (SCRAPE_SETTINGS if a.scrape else ())
    t0 = time.perf_counter()
    rows = run_value_of_information(
        trace,
        a.cluster,
        a.rate_scale,
        settings=settings,
        progress=lambda m: print(f"[{time.perf_counter() - t0:5.0f}s] {m}", file=sys.stderr),
    )
    print(
        f"SLO attainment, {a.trace} first {a.n} on {a.cluster} at x{a.rate_scale:g} "
        "(TTFT <= 2 s, TPOT <= 0.1 s)"
    )
    print(format_value_table(rows))


if __name__ == "__main__":
    main()
