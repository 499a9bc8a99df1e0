"""Online learning under a hardware change: an engine slows down 2x mid-run; how fast does LENS's
perf model (learned only from that engine's step telemetry) track it?

python benchmarks/bench_slowdown.py [--rate-scale 6] [--at 200] [--factor 2] [--slowed 0|all]

azure-conv on 8 simulated a100 engines behind round_robin, every engine driven by LENS. At
simulated time --at the slowed engines' true step time is multiplied by --factor. Each step's
prediction is scored *before* the model sees that step (prequential), so the error is the one the
planner acted on. Prints the mean absolute percentage error over 50-step windows before and after
the change, the steps until the windowed MAPE is back under 10%, the MAPE from then to step 500 and
over steps 500-1500, and how often a 50-step window exceeds 10% after recovery compared with the
steady state before the change (the linear model's occasional misses on unusual batches).
"""

from __future__ import annotations

import argparse

import numpy as np

from nexussched.engine_sched import LensPolicy
from nexussched.eval.metrics import outcomes_from_sim, summarize
from nexussched.perfmodel import StepRecord
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import load_trace, scale_rate

WINDOW = 50


def window_means(ape: np.ndarray) -> np.ndarray:
    """Mean APE of every WINDOW-step window (index = window start)."""
    if len(ape) < WINDOW:
        return np.zeros(0)
    return np.convolve(ape, np.ones(WINDOW) / WINDOW, "valid")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--rate-scale", type=float, default=6.0)
    ap.add_argument("--at", type=float, default=200.0, help="simulated second of the slowdown")
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--slowed", default="0", help="engine index, or 'all'")
    ap.add_argument("--threshold", type=float, default=0.10)
    a = ap.parse_args()
    trace = scale_rate(load_trace(a.trace), a.rate_scale)
    profiles = parse_cluster("a100:8")
    pols: dict[str, LensPolicy] = {}
    errs: dict[str, list[tuple[float, float]]] = {}

    def factory(i: int, name: str) -> LensPolicy:
        pols[name] = LensPolicy(engine_name=name)
        errs[name] = []
        return pols[name]

    def score(rec: StepRecord) -> None:
        # Runs before the policy's own observe() (the engine calls the telemetry sink first).
        p = pols[rec.engine].model.predict(rec.prefill_chunks, rec.num_decodes, rec.decode_ctx_sum)
        errs[rec.engine].append((rec.t, abs(p - rec.duration) / rec.duration))

    cluster = ClusterSim(profiles, make_policy("round_robin"), factory, telemetry=score)
    slowed = range(len(profiles)) if a.slowed == "all" else [int(a.slowed)]

    def slow(now: float) -> None:
        for i in slowed:
            cluster.engines[i].set_speed(a.factor)

    cluster.add_timer(a.at, slow)
    res = cluster.run(trace, 2.0, 0.1)
    s = summarize(outcomes_from_sim(res.requests))
    print(
        f"{a.trace} x{a.rate_scale:g}, 8 a100, round_robin, LENS; engines {list(slowed)} slowed "
        f"{a.factor:g}x at t={a.at:g}s; SLO attainment {s['slo_attainment']:.3f}"
    )
    offsets = (0, 10, 25, 50, 100, 200, 500, 1000)
    print(
        f"\n{'engine':<9} {'MAPE pre':>8} "
        + " ".join(f"{'+' + str(o):>6}" for o in offsets)
        + f" {'back<10%':>8} {'to 500':>7} {'500-1500':>8} {'>10% pre':>8} {'>10% post':>9}"
    )
    worst = 0
    for i in slowed:
        name = cluster.engines[i].name
        e = np.array(errs[name])
        t, ape = e[:, 0], e[:, 1]
        i0 = int(np.searchsorted(t, a.at))
        pre = ape[max(0, i0 - 2000) : i0]
        after = ape[i0:]
        cells = " ".join(
            f"{after[o : o + WINDOW].mean():>6.3f}" if o + WINDOW <= len(after) else f"{'-':>6}"
            for o in offsets
        )
        post_w = window_means(after[: 2000 + WINDOW])
        under = np.where(post_w < a.threshold)[0]
        back = int(under[0]) if len(under) else 10**9
        worst = max(worst, back)
        to500 = after[back:500].mean() if back < 500 else float("nan")
        mid = after[500:1500].mean() if len(after) >= 1500 else float("nan")
        pre_w = window_means(pre)
        frac_pre = (pre_w >= a.threshold).mean() if len(pre_w) else float("nan")
        frac_post = (post_w[back + WINDOW :] >= a.threshold).mean() if back < len(post_w) else 1.0
        print(
            f"{name:<9} {pre.mean():>8.3f} {cells} {back:>8} {to500:>7.3f} {mid:>8.3f} "
            f"{frac_pre:>8.3f} {frac_post:>9.3f}"
        )
    print(
        f"\n+k: MAPE of steps [k, k+{WINDOW}) after the change; back<10%: first step whose "
        f"{WINDOW}-step window is under {a.threshold:.0%}; to 500: MAPE from there to step 500; "
        f">10% pre/post: share of {WINDOW}-step windows over {a.threshold:.0%} in the 2000 steps "
        f"before the change / in steps back+{WINDOW}..2000 after it."
    )
    print(f"worst steps until under {a.threshold:.0%}: {worst}")


if __name__ == "__main__":
    main()
