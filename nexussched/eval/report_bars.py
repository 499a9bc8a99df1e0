"""The report's bars: gains of prism+lens over round_robin+vllm_default and over the best other
baseline, in attainment at the operating point and in goodput, from the runs in results.json."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .report_config import BASELINE, ENGINES, OURS


# ---- the bars ------------------------------------------------------------------------------------
def op_attainment(entry: dict, key: str) -> float | None:
    p = entry["pairs"].get(key)
    return p["at_operating_point"]["slo_attainment"] if p else None


def _good(entry: dict, key: str) -> float | None:
    p = entry["pairs"].get(key)
    return p["goodput_rps"] if p else None


def _best_other(entry: dict, metric: Callable[[dict, str], float | None],
                engines: Sequence[str]) -> tuple[str | None, float]:  # fmt: skip
    best, val = None, -1.0
    for key, p in entry["pairs"].items():
        if p["policy"] == OURS[0] or p["engine_policy"] not in engines:
            continue
        if (key, p["engine_policy"]) == ("+".join(BASELINE), BASELINE[1]):
            continue  # the round-robin baseline has its own bar
        v = metric(entry, key)
        if v is not None and v > val:
            best, val = key, v
    return best, val


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    if b <= 0:
        return math.inf if a > 0 else None
    return a / b


def compute_bars(res: dict) -> dict:
    """The issue's bars, measured on the runs (None where a needed pair was not run)."""
    ours, base = "+".join(OURS), "+".join(BASELINE)
    gains_rr, gains_best, gains_best_any, rows = [], [], [], []
    for name, entry in res["scenarios"].items():
        a_ours, a_rr = op_attainment(entry, ours), op_attainment(entry, base)
        bo, a_bo = _best_other(entry, op_attainment, (BASELINE[1],))
        ba, a_ba = _best_other(entry, op_attainment, ENGINES)
        g_rr = _ratio(a_ours, a_rr)
        g_bo = _ratio(a_ours, a_bo)
        g_ba = _ratio(a_ours, a_ba)
        if g_rr is not None:
            gains_rr.append(g_rr - 1)
        if g_bo is not None:
            gains_best.append(g_bo - 1)
        if g_ba is not None:
            gains_best_any.append(g_ba - 1)
        rows.append({
            "scenario": name,
            "rate_rps": entry["pairs"][base]["at_operating_point"]["rate_rps"]
            if base in entry["pairs"] else None,
            "ours": a_ours, "round_robin": a_rr,
            "best_other": bo, "best_other_att": a_bo,
            "best_any": ba, "best_any_att": a_ba,
            "gain_rr": None if g_rr is None else g_rr - 1,
            "gain_best": None if g_bo is None else g_bo - 1,
            "gain_best_any": None if g_ba is None else g_ba - 1,
        })  # fmt: skip
    goodput = []
    for name in ("heterogeneous", "mooncake-conv"):
        entry = res["scenarios"].get(name)
        if entry is None:
            continue
        g_ours, g_rr = _good(entry, ours), _good(entry, base)
        bo, g_bo = _best_other(entry, _good, (BASELINE[1],))
        ba, g_ba = _best_other(entry, _good, ENGINES)
        goodput.append({
            "scenario": name, "ours": g_ours, "round_robin": g_rr,
            "best_other": bo, "best_other_rps": g_bo, "best_any": ba, "best_any_rps": g_ba,
            "x_rr": _ratio(g_ours, g_rr), "x_best": _ratio(g_ours, g_bo),
            "x_best_any": _ratio(g_ours, g_ba),
        })  # fmt: skip

    def mean(v: list[float]) -> float | None:
        return sum(v) / len(v) if v else None

    return {
        "attainment_rows": rows,
        "mean_gain_rr": mean(gains_rr),
        "mean_gain_best": mean(gains_best),
        "mean_gain_best_any": mean(gains_best_any),
        "goodput_rows": goodput,
    }
