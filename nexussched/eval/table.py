"""Plain-text tables for the terminal: named columns with their units, and a legend."""

from __future__ import annotations

# (key in a run summary, header, format, shown: always | when any run has a value for it)
COLUMNS = [
    ("policy", "router", "{}", "always"),
    ("engine_policy", "engine policy", "{}", "always"),
    ("rate_rps", "offered req/s", "{:.2f}", "always"),
    ("requests", "requests", "{}", "always"),
    ("slo_attainment", "SLO met", "{:.1%}", "always"),
    ("ttft_p50", "TTFT p50 s", "{:.3f}", "always"),
    ("ttft_p99", "TTFT p99 s", "{:.3f}", "always"),
    ("tpot_p50_ms", "TPOT p50 ms", "{:.1f}", "always"),
    ("tpot_p99_ms", "TPOT p99 ms", "{:.1f}", "always"),
    ("throughput_rps", "served req/s", "{:.2f}", "always"),
    ("goodput_rps", "goodput req/s", "{:.2f}", "any"),
    ("failed", "failed", "{}", "always"),
    ("stranded", "stranded", "{}", "any"),
    ("starved_share", "starved", "{:.2%}", "any"),
    ("stable", "stable", "{}", "any"),
]

# One line per shown column that needs words (metric definitions: eval/metrics.py).
LEGEND = {
    "rate_rps": "units: rates in requests/s, TTFT in seconds, TPOT in milliseconds per output "
    "token (percentiles over completed requests)",
    "slo_attainment": "SLO met: share of offered requests within both the TTFT and the TPOT SLO "
    "(a failed or unfinished request counts as missed)",
    "throughput_rps": "served req/s: requests completed per second of the arrival window; below "
    "the offered rate when requests failed or never finished",
    "goodput_rps": "goodput req/s: the highest offered rate with SLO met >= the goodput target "
    "in a stable run (swept with --goodput)",
    "failed": "failed: requests refused, shed, timed out by their client or expired in a queue",
    "stranded": "stranded: requests neither finished nor failed when the run ended (a bug)",
    "starved_share": "starved: share of requests whose TTFT exceeded 10x its SLO or never came",
    "stable": "stable: the backlog did not keep growing through the arrival window (goodput "
    "counts stable runs only)",
}


def _fmt(fmt: str, v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def _value(r: dict, key: str) -> object:
    if key.endswith("_ms"):
        v = r.get(key[:-3])
        return None if v is None else v * 1000.0
    return r.get(key)


def format_table(runs: list[dict], columns=COLUMNS, legend: bool = True) -> str:
    cols = [c for c in columns
            if c[3] == "always" or any(_value(r, c[0]) is not None for r in runs)]  # fmt: skip
    head = [c[1] for c in cols]
    rows = [[_fmt(fmt, _value(r, key)) for key, _, fmt, _ in cols] for r in runs]
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(head, widths, strict=True)))]  # fmt: skip
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                v.rjust(w) if i > 1 else v.ljust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if legend:
        keys = {c[0] for c in cols}
        lines += [f"  {text}" for key, text in LEGEND.items() if key in keys]
    return "\n".join(lines)
