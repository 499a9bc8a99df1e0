"""`nexussched trace info`: describe a trace (counts, rate, length percentiles, burstiness)."""

from __future__ import annotations

import argparse

from . import describe, head, load_trace


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect traces")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    i = tsub.add_parser("info", help="summary statistics of a trace")
    i.add_argument("trace", help="name, path or synthetic:... spec")
    i.add_argument("--head", type=int, default=None)
    i.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    tr = load_trace(args.trace)
    if args.head:
        tr = head(tr, args.head)
    for k, v in describe(tr).items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0
