"""Plots of the evaluation report (matplotlib, headless): attainment vs rate per scenario, and
goodput per scenario."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

COLORS = {
    "prism": "tab:red",
    "round_robin": "tab:gray",
    "least_load": "tab:blue",
    "llmd_weighted": "tab:green",
    "local": "tab:olive",
    "global": "tab:purple",
    "splitwise": "tab:brown",
}


def plot_scenario(entry: dict, path: str | Path, goodput: float = 0.9) -> Path:
    """SLO attainment vs offered rate, one panel per engine policy, one line per routing policy."""
    pairs = entry["pairs"].values()
    engines = list(dict.fromkeys(p["engine_policy"] for p in pairs))
    fig, axes = plt.subplots(1, len(engines), figsize=(5.2 * len(engines), 4.0), dpi=110,
                             sharey=True, squeeze=False)  # fmt: skip
    base = entry["pairs"].get("round_robin+vllm_default")
    op_rate = base["at_operating_point"]["rate_rps"] if base else None
    for ax, eng in zip(axes[0], engines, strict=True):
        for p in pairs:
            if p["engine_policy"] != eng:
                continue
            xs = [c["rate_rps"] for c in p["curve"]]
            ys = [c["slo_attainment"] for c in p["curve"]]
            pol = p["policy"]
            ax.plot(xs, ys, marker="o", ms=3, lw=2.2 if pol == "prism" else 1.2,
                    color=COLORS.get(pol), label=pol)  # fmt: skip
        ax.axhline(goodput, color="grey", ls="--", lw=0.8)
        if op_rate:
            ax.axvline(op_rate, color="black", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_title(f"engines: {eng}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("SLO attainment")
    sc = entry["scenario"]
    fig.suptitle(
        f"{sc['name']} on {sc['cluster']} (TTFT<={sc['slo_ttft']}s, TPOT<={sc['slo_tpot']}s); "
        "dotted: operating point",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_goodput(res: dict, path: str | Path) -> Path:
    """Goodput of every pair, one panel per scenario (horizontal bars; PRISM pairs in red)."""
    names = list(res["scenarios"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 4.6), dpi=110,
                             squeeze=False)  # fmt: skip
    for ax, n in zip(axes[0], names, strict=True):
        pairs = list(res["scenarios"][n]["pairs"].items())
        labels = [k for k, _ in pairs]
        vals = [p["goodput_rps"] for _, p in pairs]
        colors = [COLORS.get(p["policy"], "tab:gray") for _, p in pairs]
        hatches = ["" if p["engine_policy"] == "vllm_default" else "//" for _, p in pairs]
        bars = ax.barh(labels, vals, color=colors)
        for b, h in zip(bars, hatches, strict=True):
            b.set_hatch(h)
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("goodput (req/s)")
        ax.tick_params(axis="y", labelsize=6)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("goodput: highest rate with >= 90% SLO attainment (hatched: LENS engines)",
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
