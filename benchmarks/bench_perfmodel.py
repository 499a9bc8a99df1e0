"""Perf model: held-out MAPE per engine on simulated telemetry, and prediction cost per batch.

The simulator's step time is built from measured profiles (sim/hardware.py), not from the perf
model's terms, and carries 3% lognormal noise with rare stragglers. So two errors are shown:
- "measured": against the noisy step times the engine reported (what a live engine would see;
  the noise alone sets a floor of about 2.4% MAPE);
- "truth": against the noise-free step time of the same batch (the model's own structural error).
The benchmark may read the truth; no scheduler does.

Models: NNLS on the structural terms (the hot path), + LightGBM residual (`exact=True`), and
online (predict each step before observing it, from an empty model, default config).

python benchmarks/bench_perfmodel.py [--quick]
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np

from nexussched.perfmodel import PerfModel, PerfModelConfig, StepRecord
from nexussched.perfmodel.features import records_matrix
from nexussched.router.policies import make_policy
from nexussched.sim import ClusterSim, get_profile, parse_cluster
from nexussched.traces import head, load_trace, scale_rate, scenario


def telemetry(spec: str, trace) -> list[StepRecord]:
    recs: list[StepRecord] = []
    ClusterSim(parse_cluster(spec), make_policy("least_load"), telemetry=recs.append).run(
        trace, 2.0, 0.1
    )
    return recs


def true_times(recs: list[StepRecord]) -> np.ndarray:
    """Noise-free step time of each record's batch on its engine's device."""
    out = np.empty(len(recs))
    for i, r in enumerate(recs):
        m = get_profile(r.engine.split("-")[0]).step_model()
        out[i] = m.time(r.prefill_chunks, r.num_decodes, r.decode_ctx_sum)
    return out


def ape(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.abs(pred - y) / y


def online_errors(recs: list[StepRecord]) -> np.ndarray:
    """Predict each step before observing it (default config, cold start); errors after warm-up."""
    m = PerfModel()
    pred = np.empty(len(recs))
    for i, r in enumerate(recs):
        pred[i] = m.predict(r.prefill_chunks, r.num_decodes, r.decode_ctx_sum)
        m.observe(r)
    return pred


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller traces")
    a = ap.parse_args()
    n_conv, n_mixed = (1500, 1000) if a.quick else (4000, 3000)
    conv = head(scale_rate(load_trace("azure-conv"), 4.0), n_conv)
    mixed = scenario("heterogeneous", n=n_mixed, seed=1, rate=8.0)
    print(
        "held-out MAPE (70/30 split by time), one model per engine; measured | truth (noise-free)"
    )
    print(
        f"{'workload':<14} {'engine':<8} {'steps':>7} {'NNLS meas':>10} {'NNLS truth':>11} "
        f"{'p90 truth':>10} {'+LGBM meas':>11} {'+LGBM truth':>12} {'online meas':>12} "
        f"{'online truth':>13}"
    )
    worst = {}
    by_workload: dict[str, list[StepRecord]] = {}
    for label, trace, spec in (
        ("azure-conv x4", conv, "a100:1,h100:1,l4:1"),
        ("mixed", mixed, "a100:1,h100:1,l4:1"),
    ):
        recs = telemetry(spec, trace)
        by_workload[label] = recs
        for eng in sorted({r.engine for r in recs}):
            mine = [r for r in recs if r.engine == eng]
            cut = int(len(mine) * 0.7)
            test = mine[cut:]
            X, y = records_matrix(test)
            truth = true_times(test)
            lin = PerfModel()
            lin.fit_records(mine[:cut])
            p_lin = lin.predict_matrix(X)
            res = PerfModel(PerfModelConfig(residual=True))
            res.fit_records(mine[cut - min(cut, 20000) : cut])
            p_res = res.predict_matrix(X, exact=True)
            p_onl = online_errors(mine)[cut:]
            cols = [
                ape(p_lin, y).mean(),
                ape(p_lin, truth).mean(),
                np.percentile(ape(p_lin, truth), 90),
                ape(p_res, y).mean(),
                ape(p_res, truth).mean(),
                ape(p_onl, y).mean(),
                ape(p_onl, truth).mean(),
            ]
            dev = eng.split("-")[0]
            worst[dev] = max(worst.get(dev, 0.0), cols[0])
            print(
                f"{label:<14} {eng:<8} {len(mine):>7} {cols[0]:>10.2%} {cols[1]:>11.2%} "
                f"{cols[2]:>10.2%} {cols[3]:>11.2%} {cols[4]:>12.2%} {cols[5]:>12.2%} "
                f"{cols[6]:>13.2%}"
            )
    print(
        "worst measured NNLS MAPE per engine: "
        + ", ".join(f"{d} {v:.2%}" for d, v in sorted(worst.items()))
    )

    # Transfer: a model fitted on one workload's steps, scored on the other's (harder than the
    # split by time: the batch shapes differ; the online model would refit to the new ones).
    print("\ntransfer: fit on all steps of one workload, score on the other (NNLS | + LGBM)")
    print(
        f"{'fit on':<14} {'scored on':<14} {'engine':<6} {'NNLS meas':>10} {'NNLS truth':>11} "
        f"{'+LGBM meas':>11} {'+LGBM truth':>12}"
    )
    names = list(by_workload)
    for src, dst in ((names[0], names[1]), (names[1], names[0])):
        for dev in ("a100", "h100", "l4"):
            tr = [r for r in by_workload[src] if r.engine.startswith(dev)]
            te = [r for r in by_workload[dst] if r.engine.startswith(dev)]
            X, y = records_matrix(te)
            truth = true_times(te)
            lin = PerfModel()
            lin.fit_records(tr)
            res = PerfModel(PerfModelConfig(residual=True))
            res.fit_records(tr[-20000:])
            p_lin = lin.predict_matrix(X)
            p_res = res.predict_matrix(X, exact=True)
            print(
                f"{src:<14} {dst:<14} {dev:<6} {ape(p_lin, y).mean():>10.2%} "
                f"{ape(p_lin, truth).mean():>11.2%} {ape(p_res, y).mean():>11.2%} "
                f"{ape(p_res, truth).mean():>12.2%}"
            )

    m = PerfModel(PerfModelConfig(residual=True, residual_min_samples=400))
    m.fit_records(telemetry("a100:1", head(conv, 800)))
    n = 200_000
    t_step = timeit.timeit(lambda: m.predict_step(512, 512 * 1024.0, 64, 64000), number=n) / n
    t_pred = timeit.timeit(lambda: m.predict([(512, 1000)], 64, 64000), number=n // 4) / (n // 4)
    t_exact = timeit.timeit(
        lambda: m.predict([(512, 1000)], 64, 64000, exact=True), number=n // 40
    ) / (n // 40)
    X = np.random.default_rng(0).random((256, 5)) * [2048, 1e6, 256, 2e5, 1]
    t_mat = timeit.timeit(lambda: m.predict_matrix(X), number=20000) / 20000
    t_cap = timeit.timeit(lambda: m.capacity(0.1, 64, 64000), number=n // 4) / (n // 4)
    print("\nprediction cost (one core)")
    print(f"{'call':<44} {'us/call':>9}")
    print(f"{'predict_step (aggregate terms)':<44} {t_step * 1e6:>9.2f}")
    print(f"{'predict (chunk list)':<44} {t_pred * 1e6:>9.2f}")
    print(f"{'predict (chunk list, exact: + residual)':<44} {t_exact * 1e6:>9.2f}")
    print(f"{'predict_matrix, 256 candidate batches':<44} {t_mat * 1e6:>9.2f}")
    print(f"{'capacity (closed form)':<44} {t_cap * 1e6:>9.2f}")


if __name__ == "__main__":
    main()
