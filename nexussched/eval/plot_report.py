"""Plots of the evaluation report (matplotlib, headless): attainment vs rate per scenario, and
goodput per scenario. Colour = routing policy, hatch = engine policy (plot_style)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator, PercentFormatter  # noqa: E402

from .plot_style import draw_target, engine_hatch, legend_handles, router_color  # noqa: E402


def _rate_ticks(rates: list[float]) -> list[float]:
    """A handful of the rates actually run, spread over the log axis (every axis gets labels)."""
    rates = sorted(set(rates))
    out: list[float] = []
    for r in rates:
        if not out or r / out[-1] >= 1.35:
            out.append(r)
    if rates and rates[-1] not in out and rates[-1] / out[-1] >= 1.15:
        out.append(rates[-1])
    return out


def plot_scenario(entry: dict, path: str | Path, goodput: float = 0.9) -> Path:
    """SLO attainment vs offered rate, one panel per engine policy, one line per routing policy."""
    pairs = list(entry["pairs"].values())
    engines = list(dict.fromkeys(p["engine_policy"] for p in pairs))
    fig, axes = plt.subplots(1, len(engines), figsize=(5.6 * len(engines), 4.4), dpi=110,
                             sharey=True, squeeze=False)  # fmt: skip
    base = entry["pairs"].get("round_robin+vllm_default")
    op_rate = base["at_operating_point"]["rate_rps"] if base else None
    for ax, eng in zip(axes[0], engines, strict=True):
        mine = [p for p in pairs if p["engine_policy"] == eng]
        # best first (legend order); earlier lines wider, so identical curves stay visible
        mine.sort(key=lambda p: -sum(c["slo_attainment"] for c in p["curve"]) / len(p["curve"]))
        rates: list[float] = []
        for z, p in enumerate(mine):
            xs = [c["rate_rps"] for c in p["curve"]]
            ys = [c["slo_attainment"] for c in p["curve"]]
            rates += xs
            ax.plot(xs, ys, marker="o", ms=3.5, lw=max(1.0, 3.4 - 0.35 * z), zorder=2 + z,
                    color=router_color(p["policy"]), label=p["policy"])  # fmt: skip
        draw_target(ax, goodput)
        if op_rate:
            ax.axvline(op_rate, color="black", ls=":", lw=0.8)
            ax.text(op_rate, 0.02, " operating point", fontsize=7, rotation=90, va="bottom")
        ax.set_xscale("log")
        ticks = _rate_ticks(rates)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:.3g}" for t in ticks], fontsize=7, rotation=45)
        ax.set_ylim(0, 1.05)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.tick_params(axis="y", labelleft=True)
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_title(f"engine policy: {eng}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", title="router (best first)", title_fontsize=7)
    axes[0][0].set_ylabel("SLO attainment")
    sc = entry["scenario"]
    fig.suptitle(
        f"{sc['name']} on {sc['cluster']} (TTFT<={sc['slo_ttft']}s, TPOT<={sc['slo_tpot']}s)",
        fontsize=10,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_goodput(res: dict, path: str | Path, goodput: float = 0.9) -> Path:
    """Goodput of every pair, one panel per scenario, bars sorted (best at the top)."""
    names = list(res["scenarios"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.9 * len(names), 5.2), dpi=110,
                             squeeze=False)  # fmt: skip
    routers: list[str] = []
    engines: list[str] = []
    for ax, n in zip(axes[0], names, strict=True):
        pairs = sorted(res["scenarios"][n]["pairs"].items(), key=lambda kv: kv[1]["goodput_rps"])
        for _, p in pairs:
            routers.append(p["policy"])
            engines.append(p["engine_policy"])
        vals = [p["goodput_rps"] for _, p in pairs]
        bars = ax.barh([k for k, _ in pairs], vals, edgecolor="black", lw=0.5,
                       color=[router_color(p["policy"]) for _, p in pairs])  # fmt: skip
        for b, (_, p) in zip(bars, pairs, strict=True):
            b.set_hatch(engine_hatch(p["engine_policy"]))
        top = max(vals) if vals and max(vals) > 0 else 1.0
        for i, (v, (_, p)) in enumerate(zip(vals, pairs, strict=True)):
            txt = f"< {p['curve'][0]['rate_rps']:.2g}" if p["goodput_below_lowest"] else f"{v:.2f}"
            ax.text(v + top * 0.01, i, txt, va="center", fontsize=6)
        ax.set_xlim(0, top * 1.25)
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("goodput (req/s)")
        ax.tick_params(axis="y", labelsize=6)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    fig.legend(handles=legend_handles(list(dict.fromkeys(routers)), list(dict.fromkeys(engines))),
               loc="lower center", ncol=5, fontsize=7)  # fmt: skip
    fig.suptitle(f"goodput: the highest offered rate with >= {goodput:.0%} SLO attainment",
                 fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
