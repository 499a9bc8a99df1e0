"""Issue 12's bars on means over seeds (benchmarks/prefix_bars.py): seeds, the fluid cap on the
goodput sweep, and the aggregation into ratios."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

_BENCH = str(Path(__file__).resolve().parent.parent / "benchmarks")


@pytest.fixture(scope="module")
def pb():
    sys.path.insert(0, _BENCH)  # prefix_bars imports its sibling benchmarks by name
    try:
        yield importlib.import_module("prefix_bars")
    finally:
        sys.path.remove(_BENCH)


def test_seed_moves_a_synthetic_generator_seed_and_leaves_real_traces_alone(pb):
    assert pb.seed_spec("synthetic:sessions,n=1200,seed=2", 3) == "synthetic:sessions,n=1200,seed=5"
    assert pb.seed_spec("synthetic:sessions,n=1200,seed=2", 0) == "synthetic:sessions,n=1200,seed=2"
    assert pb.seed_spec("azure-conv", 4) == "azure-conv"


def test_splitwise_splits_are_the_reports_quarters(pb):
    assert pb.splits("a100:4") == [1, 2, 3]
    assert pb.splits("a100:8") == [2, 4, 6]
    assert pb.splits("h100:2,a100:4,l4:2") == [2, 4, 6]


def _threshold_run(threshold: float, calls: list[float]):
    def run(scale: float) -> dict:
        calls.append(scale)
        return {"slo_attainment": 0.95 if scale <= threshold else 0.5, "stable": True}

    return run


def test_a_rate_above_the_fluid_ceiling_fails_unrun_and_flags_the_goodput_capped(pb):
    calls: list[float] = []
    # the slice would pass up to 2.0, but the long-run ceiling is at 1.5
    res = pb.capped_goodput(_threshold_run(2.0, calls), 1.0, 1.5, 1.25, 3)
    assert res["goodput_scale"] <= 1.5 and res["capped"]
    assert max(calls) <= 1.5  # nothing above the ceiling was simulated
    assert any(p["refused"] for p in res["curve"])
    # a ceiling above the threshold changes nothing: the run's own failure sets the goodput
    calls2: list[float] = []
    free = pb.capped_goodput(_threshold_run(2.0, calls2), 1.0, 3.0, 1.25, 3)
    none = pb.capped_goodput(_threshold_run(2.0, []), 1.0, None, 1.25, 3)
    assert free["goodput_scale"] == none["goodput_scale"] > 1.5
    assert not free["capped"] and not any(p["refused"] for p in free["curve"])


def _row(router: str, seed: int, rps: float, hit: float | None = 0.5, capped=False) -> dict:
    at = {"slo": 0.9, "ttft": 0.95, "tpot": 0.97, "hit": hit}
    return {"router": router, "seed": seed, "goodput_rps": rps, "capped": capped, "at": at,
            "goodput_scale": None, "curve": []}  # fmt: skip


def test_cell_bar_ranks_others_by_mean_and_ratios_each_seed_against_its_own_best(pb):
    rows = [
        _row("prism", 0, 10.0, 0.8, capped=True),
        _row("prism", 1, 14.0, 0.9),
        _row("llmd_weighted", 0, 8.0, 0.7),
        _row("llmd_weighted", 1, 12.0, 0.7),
        _row("sglang_cache_aware", 0, 11.0, 0.6),
        _row("sglang_cache_aware", 1, 6.0, 0.6),
        _row("prefix_oracle", 0, 0.0, 0.95),  # hit-rate reference, never "other"
        _row("prefix_oracle", 1, 0.0, 0.85),
        _row("prism@info", 0, 30.0),  # the information ceiling, never "other"
        _row("prism@info", 1, 30.0),
    ]
    b = pb.summarize_cell(rows, [20.0, 30.0])
    assert b["best"] == "llmd_weighted"  # mean 10 beats sglang's 8.5 though sglang wins seed 0
    assert b["ratio"] == pytest.approx(12.0 / 10.0)
    # per seed against that seed's best other: 10 / 11 (sglang), 14 / 12 (llmd)
    assert b["per_seed"] == pytest.approx([10 / 11, 14 / 12])
    assert b["fluid"] == 25.0 and b["fluid_range"] == (20.0, 30.0)
    assert b["bar_rps"] == pytest.approx(13.0) and b["bar_of_fluid"] == pytest.approx(13 / 25)
    assert b["prism_of_fluid"] == pytest.approx(12 / 25)
    assert b["info_ratio"] == pytest.approx(3.0)
    r = b["routers"]
    assert r["prism"]["capped"] == 1 and r["prism"]["min"] == 10.0 and r["prism"]["max"] == 14.0
    assert r["prism"]["hit"] == pytest.approx(0.85)
    assert r["prefix_oracle"]["hit"] == pytest.approx(0.9)


def test_a_router_that_never_meets_the_target_counts_zero_and_no_hits_are_none(pb):
    rows = [_row("prism", 0, 5.0, None), _row("global", 0, 0.0, None)]
    b = pb.summarize_cell(rows, [10.0])
    assert b["ratio"] is None and b["per_seed"] == [None]  # no ratio over a zero goodput
    assert b["routers"]["prism"]["hit"] is None


def test_attainment_is_read_where_it_was_lost_not_where_the_cap_refused(pb):
    def pt(scale: float, slo: float, refused: bool = False) -> dict:
        return {"scale": scale, "slo": slo, "ttft": slo, "tpot": 1.0, "stable": True,
                "hit": None, "refused": refused}  # fmt: skip

    row = {"goodput_scale": 1.0, "curve": [pt(0.8, 0.95), pt(1.0, 0.92), pt(1.1, 0.85),
                                           pt(1.25, 0.6), pt(1.5, 0.0, True)]}  # fmt: skip
    assert pb.first_failure(row)["scale"] == 1.1
    capped = {"goodput_scale": 1.0, "curve": [pt(1.0, 0.92), pt(1.25, 0.0, True)]}
    assert pb.first_failure(capped) is None
    b = pb.summarize_cell([{**row, "router": "prism", "seed": 0, "goodput_rps": 5.0,
                            "capped": False, "at": pt(1.0, 0.92)}], [9.0])  # fmt: skip
    assert b["routers"]["prism"]["fail"]["slo"] == 0.85
