"""The prefix-routing benchmark's ceilings: the free-prefix trace and the bars over them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from nexussched.traces import Trace
from nexussched.traces.types import TraceRequest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_prefix_routing.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_prefix_routing", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _req(i: int, hashes: tuple[int, ...], prompt: int) -> TraceRequest:
    return TraceRequest(i, float(i), prompt, 8, prefix_hashes=hashes, prefix_block=16)


def test_free_prefix_cuts_exactly_what_an_earlier_request_left_to_reuse():
    b = _bench()
    tr = Trace("t", [_req(0, (1, 2, 3), 48), _req(1, (1, 2, 3, 4), 64), _req(2, (9, 2), 40)])
    # request 1 repeats request 0's three blocks; request 2 shares a block but not a prefix
    assert b.reusable(tr) == [0, 48, 0]
    free = b.free_prefix(tr)
    assert [r.prompt_tokens for r in free.requests] == [48, 16, 40]
    assert all(r.prefix_hashes == () for r in free.requests)
    assert b.reuse_bound(tr) == 48 / (48 + 64 + 40)
    assert [r.prompt_tokens for r in tr.requests] == [48, 64, 40]  # the trace is left alone


def test_bars_rank_prism_against_live_routers_only_and_ceilings_against_the_best_of_them():
    b = _bench()

    def row(policy: str, rps: float, variant: str = "live") -> dict:
        return {"policy": policy, "engine": "lens", "goodput_rps": rps, "variant": variant}

    rows = [
        row("prism", 12.0),
        row("llmd_weighted", 10.0),
        row("sglang_cache_aware", 8.0),
        row("prefix_oracle", 30.0),  # an oracle never counts as the best other router
        row("llmd_weighted", 25.0, "free"),
        row("prism", 20.0, "free"),
        row("prism", 11.0, "info"),
    ]
    bar = b.bars(rows)["lens"]
    assert bar["best_other"] == "llmd_weighted" and bar["ratio"] == 1.2
    assert bar["free"] == {"router": "llmd_weighted", "rps": 25.0, "ratio": 2.5}
    assert bar["info"]["ratio"] == 1.1


def test_capacity_ceiling_bars_put_prism_against_the_long_run_rate():
    b = _bench()
    rows = [
        {"policy": "prism", "engine": "lens", "goodput_rps": 9.0, "variant": "live"},
        {"policy": "global", "engine": "lens", "goodput_rps": 8.0, "variant": "live"},
        {"policy": "capacity bound", "engine": "lens", "goodput_rps": 40.0, "fluid_rps": 10.0,
         "variant": "capacity"},
    ]  # fmt: skip
    cap = b.bars(rows)["lens"]["capacity"]
    assert cap["rps"] == 40.0 and cap["ratio"] == 5.0
    assert cap["fluid_rps"] == 10.0 and cap["fluid_ratio"] == 1.25
    assert cap["prism_of_fluid"] == 0.9
