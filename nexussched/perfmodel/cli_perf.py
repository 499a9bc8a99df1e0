"""`nexussched perf fit|score`: fit a perf model on step telemetry, or score one against it."""

from __future__ import annotations

import argparse

from .model import PerfModel, PerfModelConfig, mape
from .telemetry import StepRecord, read_jsonl, telemetry_index


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--telemetry",
        required=True,
        metavar="FILE",
        help="JSONL of step records, as `nexussched eval --telemetry-out FILE` writes (required)",
    )
    p.add_argument(
        "--engine",
        default=None,
        help="only this engine's records, e.g. a100-0 (default: every engine's)",
    )
    p.add_argument(
        "--run",
        default=None,
        metavar="TAG",
        help="only this run's records when the file holds several, e.g. "
        "round_robin+vllm_default@x1 (default: every run's)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="fit or score a per-step latency model on telemetry")
    psub = p.add_subparsers(dest="perf_command", metavar="ACTION", required=True)
    f = psub.add_parser(
        "fit",
        help="fit a model on a telemetry JSONL file",
        description="Fit the step-latency model (NNLS on structural terms) on step records and "
        "report its error on the newest records, held out.",
    )
    _selection_args(f)
    f.add_argument("--out", required=True, metavar="FILE", help="model JSON to write (required)")
    f.add_argument("--residual", action="store_true", help="add a LightGBM residual correction")
    f.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="share of the newest records held out to score the fit (default: %(default)s)",
    )
    f.set_defaults(func=_fit)
    s = psub.add_parser(
        "score",
        help="MAPE of a model on a telemetry JSONL file",
        description="Mean and p90 absolute percentage error of a fitted model's step-time "
        "predictions on step records.",
    )
    s.add_argument(
        "--model", required=True, metavar="FILE", help="model JSON from `perf fit` (required)"
    )
    _selection_args(s)
    s.set_defaults(func=_score)


def _records(args: argparse.Namespace) -> list[StepRecord]:
    """The selected records; an empty selection names what the file holds instead."""
    recs = list(read_jsonl(args.telemetry, args.engine, args.run))
    runs, engines = telemetry_index(args.telemetry)
    if args.run is not None and args.run not in runs:
        raise ValueError(f"{args.telemetry}: no run {args.run!r}; runs: "
                         f"{', '.join(r for r in runs if r) or 'none tagged (one run)'}")  # fmt: skip
    if args.engine is not None and args.engine not in engines:
        raise ValueError(f"{args.telemetry}: no engine {args.engine!r}; engines: "
                         f"{', '.join(sorted(engines))}")  # fmt: skip
    tagged = [r for r in runs if r]
    if args.run is None and len(tagged) > 1:
        print(f"using records of all {len(tagged)} runs in {args.telemetry} "
              f"({', '.join(tagged)}); --run TAG picks one")  # fmt: skip
    return recs


def _fit(args: argparse.Namespace) -> int:
    if not 0 <= args.holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    recs = _records(args)
    if len(recs) < 10:
        raise ValueError(f"{args.telemetry}: need at least 10 step records, found {len(recs)}")
    cut = len(recs) - int(len(recs) * args.holdout)
    model = PerfModel(PerfModelConfig(residual=args.residual), name=args.engine or "")
    model.fit_records(recs[:cut])
    model.save(args.out)
    line = f"fitted on {cut} steps -> {args.out}; coef " + " ".join(f"{c:.3g}" for c in model.coef)
    if cut < len(recs):
        m, p90 = mape(model, recs[cut:])
        line += f"; held-out {len(recs) - cut} steps: MAPE {m:.2%}, p90 APE {p90:.2%}"
    print(line)
    return 0


def _score(args: argparse.Namespace) -> int:
    model = PerfModel.load(args.model)
    recs = _records(args)
    if not recs:
        raise ValueError(f"{args.telemetry}: no step records selected")
    m, p90 = mape(model, recs)
    print(f"steps {len(recs)}  MAPE {m:.2%}  p90 APE {p90:.2%}")
    return 0
