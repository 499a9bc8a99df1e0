"""One look for every plot: a colour per routing policy, a hatch (bars) or line style (curves)
per engine policy, and the goodput target drawn the same way everywhere."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.patches import Patch

ROUTER_COLORS = {
    "prism": "tab:red",
    "round_robin": "tab:gray",
    "least_load": "tab:blue",
    "llmd_weighted": "tab:green",
    "local": "tab:olive",
    "global": "tab:purple",
    "splitwise": "tab:brown",
    "live": "tab:cyan",
    "live router": "tab:cyan",
}
_SPARE = ("tab:pink", "tab:orange", "tab:cyan", "black")
ENGINE_HATCHES = {"vllm_default": "", "sarathi": "..", "lens": "///"}
ENGINE_LINES = {"vllm_default": "-", "sarathi": ":", "lens": "--"}
ENGINE_MARKERS = {"vllm_default": "o", "sarathi": "s", "lens": "^"}


def router_color(policy: str) -> str:
    if policy in ROUTER_COLORS:
        return ROUTER_COLORS[policy]
    return _SPARE[sum(map(ord, policy)) % len(_SPARE)]


def engine_hatch(engine: str) -> str:
    return ENGINE_HATCHES.get(engine, "xx")


def engine_line(engine: str) -> str:
    return ENGINE_LINES.get(engine, "-.")


def engine_marker(engine: str) -> str:
    return ENGINE_MARKERS.get(engine, "D")


def draw_target(ax: Axes, target: float, vertical: bool = False) -> None:
    """The goodput target as a dashed line: labelled above it when vertical (bar charts), named in
    the legend when horizontal (curves)."""
    kw = {"color": "black", "ls": "--", "lw": 1.0, "zorder": 5}
    label = f"{target:.0%} target"
    if vertical:
        ax.axvline(target, **kw)
        ax.text(target, 1.0, f" {label}", transform=ax.get_xaxis_transform(), va="bottom",
                ha="center", fontsize=8)  # fmt: skip
    else:
        # named in the legend (the caller's ax.legend() after this picks it up): a label at the
        # line's end sits where curves near the target run, and they covered it
        ax.axhline(target, label=label, **kw)


def legend_handles(routers: list[str], engines: list[str]) -> list[Patch]:
    """Legend entries: one colour swatch per router, one hatch swatch per engine policy."""
    hs = [Patch(facecolor=router_color(r), label=f"router: {r}") for r in routers]
    hs += [Patch(facecolor="white", edgecolor="black", hatch=engine_hatch(e),
                 label=f"engine: {e}") for e in engines]  # fmt: skip
    return hs
