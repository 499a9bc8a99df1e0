"""`nexussched tune`: optuna search of PRISM's (and LENS's) knobs on a training trace, reported
on a different evaluation trace."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..engine_sched import ENGINE_POLICIES
from ..router.knobs import Knobs
from ..sim import get_profile, parse_cluster
from ..traces import slice_trace
from ..traces.cli_trace import add_traces_dir_argument
from .cli_eval import _positive_floats, resolve_trace
from .tune import TuneSetup, tune


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="tune PRISM/LENS knobs with optuna on one trace, report on another",
        description="Search PRISM's (and LENS's) knobs with optuna on a training trace slice and "
        "compare default vs tuned knobs on a different evaluation slice.",
    )
    p.add_argument("--trace", default="azure-conv", help="trace for both slices")
    p.add_argument("--train", default="0:1500", help="training slice START:STOP of --trace")
    p.add_argument("--eval", default="1500:3000", help="evaluation slice START:STOP of --trace")
    p.add_argument("--eval-trace", default=None,
                   help="take the evaluation slice from this trace instead")  # fmt: skip
    add_traces_dir_argument(p)
    p.add_argument("--engines", type=int, default=8, help="number of a100 engines")
    p.add_argument("--cluster", default=None, help="mixed hardware, e.g. h100:2,a100:4,l4:2")
    p.add_argument(
        "--engine-policy",
        default=None,
        help="engine policy (default: lens if available, else vllm_default)",
    )
    p.add_argument(
        "--rate-scale",
        default="12,14",
        help="rate scales the objective averages over (default 12,14)",
    )
    p.add_argument("--trials", type=int, default=12, help="optuna trials (default 12)")
    p.add_argument("--no-lens", action="store_true", help="tune PRISM's knobs only")
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO in seconds")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO in seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of optuna and the simulations")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the tuned knobs (a knob file for `eval`/`report`/`router --policy-config`) "
        "with the figures (JSON; default: print only)",
    )
    p.set_defaults(func=run_tune)


def _slice(spec: str, what: str) -> tuple[int, int]:
    a, sep, b = spec.partition(":")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        raise ValueError(f"{what} must be START:STOP request indices, got {spec!r}") from None
    if not sep or lo < 0 or hi <= lo:
        raise ValueError(f"{what} must be START:STOP with 0 <= START < STOP, got {spec!r}")
    return lo, hi


def run_tune(args: argparse.Namespace) -> int:
    if args.trials <= 0 or args.engines <= 0:
        raise ValueError("--trials and --engines must be positive")
    epol = args.engine_policy or ("lens" if "lens" in ENGINE_POLICIES else "vllm_default")
    if epol not in ENGINE_POLICIES:
        raise ValueError(f"unknown engine policy {epol!r}; known: {', '.join(ENGINE_POLICIES)}")
    scales = _positive_floats(args.rate_scale, "--rate-scale")
    train_slice = _slice(args.train, "--train")  # cheap checks before loading any trace
    eval_slice = _slice(args.eval, "--eval")
    tr = resolve_trace(args.trace, args.traces_dir)
    ev = resolve_trace(args.eval_trace, args.traces_dir) if args.eval_trace else tr
    train = slice_trace(tr, *train_slice)
    evaluation = slice_trace(ev, *eval_slice)
    if len(train) < 10 or len(evaluation) < 10:
        raise ValueError("the training and evaluation slices need at least 10 requests each")
    profiles = parse_cluster(args.cluster) if args.cluster else [get_profile("a100")] * args.engines
    setup = TuneSetup(profiles, train, evaluation, scales, epol, args.slo_ttft, args.slo_tpot,
                      args.seed, tune_lens=not args.no_lens)  # fmt: skip

    def progress(n: int, value: float, best: float) -> None:
        print(f"trial {n:3d}: attainment {value:.3f}  (best {best:.3f})", file=sys.stderr)

    res = tune(setup, args.trials, progress)
    print(f"tuned prism + {epol} on {args.trace}[{args.train}] x{args.rate_scale}, "
          f"{res.trials} trials")  # fmt: skip
    for name, val in sorted(res.best_prism.items()):
        print(
            f"  prism.{name} = {val:.4g}" if isinstance(val, float) else f"  prism.{name} = {val}"
        )
    for name, val in sorted(res.best_lens.items()):
        print(f"  lens.{name} = {val:.4g}")
    print(f"{'':24}{'default':>10}{'tuned':>10}")
    print(f"{'train attainment':24}{res.train_default:>10.1%}{res.train_tuned:>10.1%}")
    for d, t in zip(res.eval_default, res.eval_tuned, strict=True):
        label = f"eval x{d['rate_scale']:g} ({d['rate_rps']:.1f}/s)"
        print(f"{label:24}{d['slo_attainment']:>10.1%}{t['slo_attainment']:>10.1%}")
    print(f"{'eval mean':24}{res.eval_default_mean:>10.1%}{res.eval_tuned_mean:>10.1%}")
    beats_train = res.train_tuned > res.train_default
    beats_eval = res.eval_tuned_mean > res.eval_default_mean
    if not beats_train and res.train_default >= 0.999:
        print("the defaults already meet the SLOs of every training request at these rates: "
              "nothing to tune there; the knobs are the defaults (raise --rate-scale)")  # fmt: skip
    elif not beats_train:
        print(f"the search did not beat the defaults on the training slice in {res.trials} "
              "trials: the knobs are the defaults (try more --trials)")  # fmt: skip
    elif not beats_eval:
        print("the tuned knobs beat the defaults on the training slice but not on the evaluation "
              "slice: keep the defaults")  # fmt: skip
    knobs = Knobs({"prism": res.best_prism}, {epol: res.best_lens} if res.best_lens else {})
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            **knobs.to_json(),
            "beats_defaults_on_train": beats_train, "beats_defaults_on_eval": beats_eval,
            "engine_policy": epol, "trace": args.trace, "train": args.train,
            "eval_trace": args.eval_trace or args.trace, "eval": args.eval,
            "rate_scales": scales, "trials": res.trials,
            "train_default": res.train_default, "train_tuned": res.train_tuned,
            "eval_default": res.eval_default, "eval_tuned": res.eval_tuned,
        }, indent=1))  # fmt: skip
        print(f"wrote {path} (use it with --policy-config {path})")
    return 0
