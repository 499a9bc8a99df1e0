"""Plain-text tables for the terminal."""

from __future__ import annotations

COLUMNS = [
    ("policy", "policy", "{}"),
    ("engine_policy", "engine", "{}"),
    ("rate_rps", "rate/s", "{:.2f}"),
    ("offered", "offered", "{}"),
    ("slo_attainment", "SLO att", "{:.1%}"),
    ("ttft_p50", "TTFT p50", "{:.3f}"),
    ("ttft_p99", "TTFT p99", "{:.3f}"),
    ("tpot_p50", "TPOT p50", "{:.4f}"),
    ("tpot_p99", "TPOT p99", "{:.4f}"),
    ("failed", "failed", "{}"),
    ("stranded", "stranded", "{}"),
    ("starved_share", "starved", "{:.2%}"),
    ("stable", "stable", "{}"),
    ("throughput_rps", "thru/s", "{:.2f}"),
    ("goodput_rps", "goodput/s", "{:.2f}"),
]
UNITS = (
    "rate, thru and goodput: requests/s (thru: completions per second of the arrival window); "
    "TTFT and TPOT: seconds (TTFT/TPOT percentiles over completed requests); failed, stranded: "
    "requests; starved: share of offered requests whose TTFT exceeded 10x its SLO or never came; "
    "stable: the backlog did not keep growing through the arrival window; goodput counts only "
    "stable runs"
)


def _fmt(fmt: str, v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def format_table(runs: list[dict], columns=COLUMNS, units: bool = True) -> str:
    head = [c[1] for c in columns]
    rows = [[_fmt(fmt, r.get(key)) for key, _, fmt in columns] for r in runs]
    widths = [
        max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                v.rjust(w) if i > 1 else v.ljust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if units and columns is COLUMNS:
        lines.append(f"units: {UNITS}")
    return "\n".join(lines)
