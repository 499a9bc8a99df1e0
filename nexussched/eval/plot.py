"""PNG plots of evaluation results (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_attainment(runs: list[dict], path: str | Path, title: str = "") -> Path:
    """SLO attainment vs offered rate, one line per (policy, engine policy)."""
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        label = f"{r['policy']} + {r['engine_policy']}"
        series[label].append((r["rate_rps"], r["slo_attainment"]))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    single = all(len(v) == 1 for v in series.values())
    if single:
        labels = list(series)
        vals = [series[k][0][1] for k in labels]
        ax.barh(labels, vals, color="tab:blue")
        ax.set_xlim(0, 1.0)
        ax.set_xlabel("SLO attainment (TTFT and TPOT met)")
        for i, v in enumerate(vals):
            inside = v > 0.85  # long bars carry their label inside, in white
            x = v - 0.01 if inside else v + 0.01
            ax.text(
                x,
                i,
                f"{v:.1%}",
                va="center",
                fontsize=8,
                ha="right" if inside else "left",
                color="white" if inside else "black",
            )
    else:
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
        ax.axhline(0.9, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_ylabel("SLO attainment")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or "SLO attainment", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
