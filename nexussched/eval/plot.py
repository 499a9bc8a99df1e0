"""PNG plots of `nexussched eval` results (matplotlib, headless): SLO attainment per run (bars) or
against the offered rate (curves), and a timeline of one run."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .plot_style import (  # noqa: E402
    draw_target,
    engine_hatch,
    engine_line,
    engine_marker,
    legend_handles,
    router_color,
)


def _label(r: dict) -> str:
    return f"{r['policy']} + {r['engine_policy']}"


def plot_attainment(
    runs: list[dict], path: str | Path, title: str = "", target: float = 0.9
) -> Path:
    """SLO attainment: sorted bars when each pair ran at one rate, curves against the offered
    rate otherwise. Colour = routing policy, hatch / line style = engine policy."""
    series: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for r in runs:
        series[(r["policy"], r["engine_policy"])].append((r["rate_rps"], r["slo_attainment"]))
    routers = list(dict.fromkeys(k[0] for k in series))
    engines = list(dict.fromkeys(k[1] for k in series))
    single = all(len(v) == 1 for v in series.values())
    if single:
        order = sorted(series, key=lambda k: series[k][0][1])  # best at the top
        fig, ax = plt.subplots(figsize=(9.5, 1.4 + 0.32 * len(order)), dpi=110)
        vals = [series[k][0][1] for k in order]
        bars = ax.barh([f"{p} + {e}" for p, e in order], vals,
                       color=[router_color(p) for p, _ in order], edgecolor="black", lw=0.5)  # fmt: skip
        for b, (_, e) in zip(bars, order, strict=True):
            b.set_hatch(engine_hatch(e))
        for i, v in enumerate(vals):
            ax.text(min(v, 1.0) + 0.01, i, f"{v:.1%}", va="center", fontsize=8)
        ax.set_xlim(0, 1.12)
        ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        ax.set_xticklabels(["0%", "20%", "40%", "60%", "80%", "100%"])
        ax.set_xlabel("SLO attainment (share of requests meeting TTFT and TPOT SLOs)")
        draw_target(ax, target, vertical=True)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(alpha=0.3, axis="x")
        # outside the axes, so that no bar hides behind it
        ax.legend(handles=legend_handles(routers, engines), fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # fmt: skip
    else:
        fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
        # best curve first in the legend; earlier curves drawn wider so equal curves stay visible
        keys = sorted(series, key=lambda k: -np.mean([a for _, a in series[k]]))
        for z, k in enumerate(keys):
            pts = sorted(series[k])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=engine_line(k[1]),
                    marker=engine_marker(k[1]), ms=4, lw=max(1.0, 3.2 - 0.25 * z),
                    color=router_color(k[0]), label=f"{k[0]} + {k[1]}", zorder=2 + z)  # fmt: skip
        draw_target(ax, target)
        ax.set_xlabel("offered rate (requests/s)")
        ax.set_ylabel("SLO attainment")
        ax.set_ylim(0, 1.05)
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.set_title(title or "SLO attainment", fontsize=10, pad=16)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")  # keeps the legend outside the axes in the image
    plt.close(fig)
    return path


def _in_system(arrival: np.ndarray, end: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Requests arrived and not yet finished at each grid time."""
    a = np.searchsorted(np.sort(arrival), grid, side="right")
    d = np.searchsorted(np.sort(end), grid, side="right")
    return a - d


def _leaves(o, client_timeout: float | None) -> float:
    """When a request left the system: its last token; a client that gave up, at its timeout;
    one refused at the door, at once; one stranded, never."""
    if o.completed:
        return o.arrival + o.e2e
    if o.failure == "timeout" and client_timeout:
        return o.arrival + client_timeout
    if o.failure in ("rejected", "shed", "error"):
        return o.arrival
    return math.inf


def plot_timeline(runs: Sequence[tuple[dict, list]], path: str | Path, title: str = "") -> Path:
    """One column per run (its summary, its per-request outcomes): requests in the system per
    engine over time (top) and each request's TTFT against its arrival time (bottom)."""
    n = len(runs)
    fig, axes = plt.subplots(2, n, figsize=(6.2 * n, 6.4), dpi=110, squeeze=False,
                             sharex="col")  # fmt: skip
    horizon = 0.0
    for summary, outs in runs:
        for o in outs:
            end = _leaves(o, summary.get("client_timeout"))
            horizon = max(horizon, end if end < math.inf else o.arrival)
    ymax = 0
    ttfts = [o.ttft for _, outs in runs for o in outs if o.completed]
    tlo = max(1e-3, min(ttfts) * 0.7) if ttfts else 1e-3
    thi = max([*ttfts, *(s.get("slo_ttft") or 1.0 for s, _ in runs)]) * 1.6 if ttfts else 10.0
    for col, (summary, outs) in enumerate(runs):
        ax, bx = axes[0][col], axes[1][col]
        grid = np.linspace(0.0, horizon, 600)
        engines = sorted({o.engine or "(none)" for o in outs})
        cmap = plt.get_cmap("tab10")
        for k, eng in enumerate(engines):
            mine = [o for o in outs if (o.engine or "(none)") == eng]
            arr = np.array([o.arrival for o in mine])
            end = np.array([_leaves(o, summary.get("client_timeout")) for o in mine])
            y = _in_system(arr, end, grid)
            ymax = max(ymax, int(y.max()) if len(y) else 0)
            ax.plot(grid, y, lw=1.2, color=cmap(k % 10), label=eng)
        ax.set_ylabel("requests in the system")
        ax.set_title(f"{_label(summary)}: {summary['slo_attainment']:.1%} within SLO",
                     fontsize=9, color=router_color(summary["policy"]))  # fmt: skip
        ax.legend(fontsize=7, loc="upper left", title="engine", title_fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        ok = [o for o in outs if o.completed]
        met = [o for o in ok if o.ttft <= o.slo_ttft]
        late = [o for o in ok if o.ttft > o.slo_ttft]
        for group, c, lab in ((met, "tab:green", "TTFT within SLO"),
                              (late, "tab:red", "TTFT over SLO")):  # fmt: skip
            bx.scatter([o.arrival for o in group], [max(o.ttft, 1e-3) for o in group], s=3,
                       color=c, label=f"{lab} ({len(group)})", alpha=0.6, lw=0)  # fmt: skip
        slo = summary.get("slo_ttft")
        if slo:
            bx.axhline(slo, color="black", ls="--", lw=1.0)
            bx.text(0.99, slo, f"TTFT SLO {slo:g} s ", va="bottom", ha="right", fontsize=8,
                    transform=bx.get_yaxis_transform())  # fmt: skip
        failed = len(outs) - len(ok)
        if failed:
            kinds: dict[str, int] = defaultdict(int)
            for o in outs:
                if not o.completed:
                    kinds[o.failure or "failed"] += 1
            why = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))
            bx.text(0.99, 0.02, f"no first token: {why}", transform=bx.transAxes, ha="right",
                    va="bottom",
                    fontsize=8, color="tab:red")  # fmt: skip
        bx.set_yscale("log")
        bx.set_ylim(tlo, thi)
        bx.set_xlabel("time since the first arrival (s)")
        bx.set_ylabel("TTFT (s), at arrival time")
        bx.legend(fontsize=7, loc="lower right" if not failed else "lower left", markerscale=3)
        bx.grid(alpha=0.3)
        bx.tick_params(labelbottom=True)
    for col in range(n):
        axes[0][col].set_ylim(0, max(1, ymax) * 1.08)
    fig.suptitle(title or "timeline", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
