"""`nexussched perf fit|score`: fit a perf model on step telemetry, or score one against it."""

from __future__ import annotations

import argparse

from .model import PerfModel, PerfModelConfig, mape
from .telemetry import read_jsonl


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="fit or score a per-step latency model on telemetry")
    psub = p.add_subparsers(dest="perf_command", metavar="ACTION", required=True)
    f = psub.add_parser("fit", help="fit a model on a telemetry JSONL file")
    f.add_argument("--telemetry", required=True, help="JSONL of step records")
    f.add_argument("--engine", default=None, help="only this engine's records")
    f.add_argument("--out", required=True, help="model JSON to write")
    f.add_argument("--residual", action="store_true", help="add a LightGBM residual correction")
    f.add_argument("--holdout", type=float, default=0.2, help="share of newest records held out")
    f.set_defaults(func=_fit)
    s = psub.add_parser("score", help="MAPE of a model on a telemetry JSONL file")
    s.add_argument("--model", required=True)
    s.add_argument("--telemetry", required=True)
    s.add_argument("--engine", default=None)
    s.set_defaults(func=_score)


def _fit(args: argparse.Namespace) -> int:
    if not 0 <= args.holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    recs = list(read_jsonl(args.telemetry, args.engine))
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
    recs = list(read_jsonl(args.telemetry, args.engine))
    m, p90 = mape(model, recs)
    print(f"steps {len(recs)}  MAPE {m:.2%}  p90 APE {p90:.2%}")
    return 0
