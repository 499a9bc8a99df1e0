"""Mean SLO attainment of prism variants over several seeds and rate scales on the prefix-heavy
scenarios: one sweep point swings 10+ points either way on these traces (small changes in
placement cascade through the caches), so PRISM's prefix knobs are judged on means. `--bars`
takes issue 12's bars the same way: goodput per seed (prefix_bars.py).

    python benchmarks/bench_prefix_means.py                    # prism before/after the costs
    python benchmarks/bench_prefix_means.py --bars --seeds 5   # issue 12's bars on means
    python benchmarks/bench_prefix_means.py --variants "prism,prism:place_cost=0;move_cost=0,llmd_weighted"
    python benchmarks/bench_prefix_means.py --cases sessions --trace-seeds 2,3,4,5,6 --variants prism

A variant is `router[:key=value;key=value]` (PrismConfig fields for prism). Cells: sessions on
a100:4 (trace seeds 2/3/4), the report's mooncake-conv slice (400 requests, a100:8; simulation
seeds 0/1), each on LENS and vLLM-default engines at three scales around the goodput. An unstable
run counts as 0%.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prefix_routing import CASES, Case, _setup  # noqa: E402
from prefix_bars import add_bar_args, bars_main  # noqa: E402

from nexussched.eval.replay import simulate  # noqa: E402
from nexussched.traces import head, load_trace  # noqa: E402

MOON8 = Case("moon8", "mooncake-conv", 400, "a100:8", 10.0, 0.1, 1.0)
# (case, engine policy, trace seeds (sessions), simulation seeds, rate scales)
CELLS = (
    (CASES["sessions"], "lens", (2, 3, 4), (0,), (2.2, 2.6, 3.0)),
    (CASES["sessions"], "vllm_default", (2, 3, 4), (0,), (2.6, 2.9, 3.2)),
    (MOON8, "lens", (None,), (0, 1), (1.2, 1.41, 1.7)),
    (MOON8, "vllm_default", (None,), (0, 1), (1.0, 1.2, 1.41)),
)


def parse_variant(v: str) -> tuple[str, dict]:
    name, _, kw = v.partition(":")
    opts = {}
    for item in filter(None, kw.split(";")):
        k, _, val = item.partition("=")
        opts[k.strip()] = ast.literal_eval(val.strip())
    return name, opts


def cell_runs(case: Case, engine: str, tseeds, sseeds, scales, variant: str) -> list[float]:
    name, opts = parse_variant(variant)
    out = []
    for ts in tseeds:
        spec = case.trace if ts is None else case.trace.replace("seed=2", f"seed={ts}")
        trace = head(load_trace(spec), case.n)
        for ss in sseeds:
            setup = _setup(case, "live")
            setup.seed = ss
            if opts:
                setup.policy_kwargs = {name: opts}
            for sc in scales:
                s = simulate(trace, setup, name, engine, sc).summary
                out.append(s["slo_attainment"] if s.get("stable", True) else 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", default="prism:place_cost=0;move_cost=0,prism")
    ap.add_argument("--cases", default="sessions,moon8", help="cells of these cases only")
    ap.add_argument("--trace-seeds", default="2,3,4", help="sessions trace seeds")
    ap.add_argument("--bars", action="store_true", help="issue 12's bars on means over seeds "
                    "(goodput per seed, see --cells and the options after it)")  # fmt: skip
    add_bar_args(ap)
    args = ap.parse_args(argv)
    if args.bars:
        return bars_main(args)
    cases = set(args.cases.split(","))
    seeds = tuple(int(x) for x in args.trace_seeds.split(","))
    for case, engine, tseeds, sseeds, scales in CELLS:
        if case.name not in cases:
            continue
        if tseeds != (None,):
            tseeds = seeds
        for v in args.variants.split(","):
            a = cell_runs(case, engine, tseeds, sseeds, scales, v)
            runs = " ".join(f"{x:.0%}" for x in a)
            print(f"{case.name:9s} {engine:12s} {v:36s} mean {sum(a) / len(a):6.1%} | {runs}",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
