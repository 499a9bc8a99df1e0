"""What information is worth: the same runs under the oracle view and the live view, with exact
and capped declared lengths (the "value of information" table of the report and
benchmarks/bench_information.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..sim import parse_cluster
from ..traces import Trace
from .information import Information
from .replay import SimSetup, simulate

PAIRS: tuple[tuple[str, str], ...] = (
    ("prism", "vllm_default"),
    ("prism", "lens"),
    ("llmd_weighted", "lens"),
    ("round_robin", "lens"),
)


@dataclass(frozen=True)
class Setting:
    label: str
    info: Information


SETTINGS: tuple[Setting, ...] = (
    Setting("oracle, exact", Information("oracle", max_tokens="exact")),
    Setting("oracle, cap:4096", Information("oracle", max_tokens="cap:4096")),
    Setting("live, exact", Information("live", max_tokens="exact")),
    Setting("live, cap:4096 (default)", Information("live", max_tokens="cap:4096")),
)

SCRAPE_SETTINGS: tuple[Setting, ...] = (
    Setting("live, cap:4096, scrape 0.05 s", Information("live", 0.05, max_tokens="cap:4096")),
    Setting("live, cap:4096, scrape 2 s", Information("live", 2.0, max_tokens="cap:4096")),
)


def run_value_of_information(
    trace: Trace,
    cluster: str,
    rate_scale: float,
    pairs: Sequence[tuple[str, str]] = PAIRS,
    settings: Sequence[Setting] = SETTINGS,
    slo_ttft: float = 2.0,
    slo_tpot: float = 0.1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """One run summary per (setting, pair), each tagged with `setting`."""
    rows = []
    for st in settings:
        setup = SimSetup(parse_cluster(cluster), slo_ttft, slo_tpot, seed, info=st.info)
        for pol, eng in pairs:
            s = simulate(trace, setup, pol, eng, rate_scale).summary
            s["setting"] = st.label
            rows.append(s)
            if progress is not None:
                progress(f"{st.label}: {pol}+{eng} {s['slo_attainment'] * 100:.1f}%")
    return rows


def format_value_table(rows: Sequence[dict], pairs: Sequence[tuple[str, str]] = PAIRS) -> str:
    """Markdown table: one line per setting, SLO attainment (%) per policy pair."""
    by = {(r["setting"], r["policy"], r["engine_policy"]): r for r in rows}
    labels = list(dict.fromkeys(r["setting"] for r in rows))
    head = "| information | " + " | ".join(f"{p}+{e}" for p, e in pairs) + " |"
    out = [head, "|---" * (len(pairs) + 1) + "|"]
    for lab in labels:
        cells = []
        for p, e in pairs:
            r = by.get((lab, p, e))
            cells.append("" if r is None else f"{r['slo_attainment'] * 100:.1f}%")
        out.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def value_section(voi: dict | None) -> list[str]:
    """The report's "value of information" section (report.md lines; none when not run)."""
    if not voi or not voi["rows"]:
        return []
    pairs = [tuple(pe) for pe in voi["pairs"]]
    r0 = voi["rows"][0]
    return [
        "## Value of information\n",
        f"SLO attainment on {voi['scenario']} at its operating point (x{voi['operating_scale']:.3g}"
        f" the trace's rate = {r0['rate_rps']:.2f} req/s) when the policies see the engines' "
        "exact, instant state (oracle) or what a live router has (live: vLLM's gauges as of the "
        "last scrape, the router's own counts, published step records), and when clients "
        "declare their true output length (exact) or max_tokens = 4096 (cap:4096, outputs cut "
        "there). The live, cap:4096 row is the report's default world. Reproduce: `python "
        "benchmarks/bench_information.py` (its own slice and rate).\n",
        format_value_table(voi["rows"], pairs),
        "",
    ]
