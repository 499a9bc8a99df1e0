"""Knob tuning with optuna: search PRISM's (and LENS's) knobs on a training trace, then report
default vs tuned on a different evaluation trace, so the gain shown is not fitted to its test.

The objective is the mean SLO attainment of prism + the engine policy over a few rate scales of the
training trace (rates around the cluster's saturation, where knobs matter).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

from ..engine_sched import ENGINE_POLICIES, make_engine_policy
from ..router.policies.prism import Prism, PrismConfig
from ..sim import ClusterSim, HardwareProfile
from ..traces import Trace, scale_rate
from .metrics import outcomes_from_sim, summarize

# name -> (low, high, log scale) of the float knobs searched; categorical ones below
PRISM_SPACE: dict[str, tuple[float, float, bool]] = {
    "tpot_margin": (0.6, 1.0, False),
    "slack": (0.05, 2.0, True),
    "queue_limit": (0.1, 4.0, True),
    "self_paced_itl": (0.7, 1.6, False),
    "rebind_gain": (0.05, 2.0, True),
    "ttft_margin": (0.8, 1.3, False),
}
PRISM_CHOICES: dict[str, tuple] = {
    "order": ("edf", "lifo", "cost"),
    "max_moves": (0, 1, 2),
    # holding requests at the router for pace: off by default (no harm where there is nothing to
    # choose), it pays on vLLM-default engines in overload, so the tuner may turn it on
    "hold_for_pace": (False, True),
}
LENS_SPACE: dict[str, tuple[float, float, bool]] = {
    "tpot_margin": (0.0, 0.35, False),
    "bank_spend": (0.0, 1.0, False),
    "ttft_optimism": (0.6, 1.5, False),
}


@dataclass
class TuneSetup:
    profiles: list[HardwareProfile]
    train: Trace
    eval: Trace
    scales: Sequence[float]
    engine_policy: str = "lens"
    slo_ttft: float = 2.0
    slo_tpot: float = 0.1
    seed: int = 0
    tune_lens: bool = True


@dataclass
class TuneResult:
    best_prism: dict
    best_lens: dict
    trials: int
    train_default: float
    train_tuned: float
    eval_default: list[dict] = field(default_factory=list)  # one summary per scale
    eval_tuned: list[dict] = field(default_factory=list)

    @property
    def eval_default_mean(self) -> float:
        return _mean(s["slo_attainment"] for s in self.eval_default)

    @property
    def eval_tuned_mean(self) -> float:
        return _mean(s["slo_attainment"] for s in self.eval_tuned)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else math.nan


def _engine_factory(setup: TuneSetup, lens: dict) -> Callable:
    def make(i: int, name: str):
        if setup.engine_policy == "lens" and lens:
            from ..engine_sched import LensConfig, LensPolicy

            return LensPolicy(engine_name=name, config=LensConfig(**lens))
        return make_engine_policy(
            setup.engine_policy,
            engine_name=name,
            slo_ttft=setup.slo_ttft,
            slo_tpot=setup.slo_tpot,
            seed=setup.seed + i,
        )

    return make


def run_once(setup: TuneSetup, trace: Trace, scale: float, prism: dict, lens: dict) -> dict:
    """One simulated replay of prism (+ the engine policy) with the given knobs."""
    cluster = ClusterSim(
        setup.profiles,
        Prism(PrismConfig(**prism)),
        _engine_factory(setup, lens),
        seed=setup.seed,
    )
    res = cluster.run(scale_rate(trace, scale), setup.slo_ttft, setup.slo_tpot)
    s = summarize(outcomes_from_sim(res.requests))
    s["rate_scale"] = scale
    s["rate_rps"] = trace.rate * scale
    return s


def objective_value(setup: TuneSetup, trace: Trace, prism: dict, lens: dict) -> float:
    return _mean(run_once(setup, trace, k, prism, lens)["slo_attainment"] for k in setup.scales)


def suggest(trial, tune_lens: bool) -> tuple[dict, dict]:
    prism: dict = {}
    for name, (lo, hi, log) in PRISM_SPACE.items():
        prism[name] = trial.suggest_float(f"prism.{name}", lo, hi, log=log)
    for name, options in PRISM_CHOICES.items():
        prism[name] = trial.suggest_categorical(f"prism.{name}", list(options))
    lens: dict = {}
    if tune_lens:
        for name, (lo, hi, log) in LENS_SPACE.items():
            lens[name] = trial.suggest_float(f"lens.{name}", lo, hi, log=log)
    return prism, lens


def _split(params: dict) -> tuple[dict, dict]:
    prism = {k[6:]: v for k, v in params.items() if k.startswith("prism.")}
    lens = {k[5:]: v for k, v in params.items() if k.startswith("lens.")}
    return prism, lens


def tune(
    setup: TuneSetup,
    trials: int = 12,
    progress: Callable[[int, float, float], None] | None = None,
) -> TuneResult:
    """Run `trials` optuna trials (TPE, seeded) on the training trace; evaluate on the other."""
    import optuna

    if setup.engine_policy not in ENGINE_POLICIES:
        raise ValueError(f"unknown engine policy {setup.engine_policy!r}")
    tune_lens = setup.tune_lens and setup.engine_policy == "lens"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=setup.seed)
    )
    # the defaults are the first trial: tuning can only report an improvement it measured
    defaults = {f"prism.{f.name}": getattr(PrismConfig(), f.name) for f in fields(PrismConfig)
                if f.name in PRISM_SPACE or f.name in PRISM_CHOICES}  # fmt: skip
    if tune_lens:
        from ..engine_sched import LensConfig

        defaults.update({f"lens.{k}": getattr(LensConfig(), k) for k in LENS_SPACE})
    study.enqueue_trial(defaults)

    def objective(trial) -> float:
        prism, lens = suggest(trial, tune_lens)
        return objective_value(setup, setup.train, prism, lens)

    def cb(study, trial) -> None:
        if progress is not None:
            progress(trial.number + 1, trial.value, study.best_value)

    study.optimize(objective, n_trials=max(1, trials), callbacks=[cb])
    best_prism, best_lens = _split(study.best_params)
    default_value = study.trials[0].value
    res = TuneResult(best_prism, best_lens, len(study.trials), default_value, study.best_value)
    for k in setup.scales:
        res.eval_default.append(run_once(setup, setup.eval, k, {}, {}))
        res.eval_tuned.append(run_once(setup, setup.eval, k, best_prism, best_lens))
    return res
