"""Perf model: prediction cost per batch, and held-out MAPE per engine on simulated telemetry.

python benchmarks/bench_perfmodel.py
"""

from __future__ import annotations

import timeit

import numpy as np

from nexussched.perfmodel import PerfModel, PerfModelConfig, StepRecord, mape
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, parse_cluster
from nexussched.traces import head, load_trace, scale_rate, scenario


def telemetry(spec: str, trace) -> list[StepRecord]:
    recs: list[StepRecord] = []
    ClusterSim(parse_cluster(spec), make_policy("least_load"), telemetry=recs.append).run(
        trace, 2.0, 0.1
    )
    return recs


def main() -> None:
    conv = head(scale_rate(load_trace("azure-conv"), 4.0), 4000)
    mixed = scenario("heterogeneous", n=3000, seed=1, rate=8.0)
    print("held-out MAPE (70/30 split by time), one model per engine")
    print(
        f"{'workload':<14} {'engine':<8} {'steps':>7} {'NNLS MAPE':>10} {'p90 APE':>8} "
        f"{'+LGBM MAPE':>11}"
    )
    for label, trace, spec in (
        ("azure-conv x4", conv, "a100:1,h100:1,l4:1"),
        ("mixed", mixed, "a100:1,h100:1,l4:1"),
    ):
        recs = telemetry(spec, trace)
        for eng in sorted({r.engine for r in recs}):
            mine = [r for r in recs if r.engine == eng]
            cut = int(len(mine) * 0.7)
            lin = PerfModel()
            lin.fit_records(mine[:cut])
            m1, p90 = mape(lin, mine[cut:])
            res = PerfModel(PerfModelConfig(residual=True))
            res.fit_records(mine[cut - min(cut, 20000) : cut])
            m2, _ = mape(res, mine[cut:], exact=True)
            print(f"{label:<14} {eng:<8} {len(mine):>7} {m1:>10.2%} {p90:>8.2%} {m2:>11.2%}")

    m = PerfModel()
    m.fit_records(telemetry("a100:1", head(conv, 800)))
    n = 200_000
    t_step = timeit.timeit(lambda: m.predict_step(512, 512 * 1024.0, 64, 64000), number=n) / n
    t_pred = timeit.timeit(lambda: m.predict([(512, 1000)], 64, 64000), number=n // 4) / (n // 4)
    X = np.random.default_rng(0).random((256, 5)) * [2048, 1e6, 256, 2e5, 1]
    t_mat = timeit.timeit(lambda: m.predict_matrix(X), number=20000) / 20000
    t_cap = timeit.timeit(lambda: m.capacity(0.1, 64, 64000), number=n // 4) / (n // 4)
    print("\nprediction cost (one core)")
    print(f"{'call':<40} {'us/call':>9}")
    print(f"{'predict_step (aggregate terms)':<40} {t_step * 1e6:>9.2f}")
    print(f"{'predict (chunk list)':<40} {t_pred * 1e6:>9.2f}")
    print(f"{'predict_matrix, 256 candidate batches':<40} {t_mat * 1e6:>9.2f}")
    print(f"{'capacity (closed form)':<40} {t_cap * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
