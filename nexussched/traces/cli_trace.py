"""`nexussched trace info`: describe a trace (counts, rate, length percentiles, burstiness)."""

from __future__ import annotations

import argparse

from . import describe, head, load_trace
from .loaders import BUNDLED, KNOWN_TRACES, TRACES_DIR_ENV

TRACE_HELP = (
    f"{' | '.join(KNOWN_TRACES)} (public traces, shipped in the package) | {BUNDLED} (the first "
    "3,000 azure-conv requests) | PATH (Azure 2023/2024 or BurstGPT CSV, Mooncake JSONL; .xz/.gz "
    "ok) | synthetic:NAME[,key=value...]"
)


def add_traces_dir_argument(p: argparse.ArgumentParser) -> None:
    """`--traces-dir`: where the short trace names are read from, before the packaged copies."""
    p.add_argument(
        "--traces-dir",
        default=None,
        metavar="DIR",
        help=f"directory holding the public trace files (plain, .xz or .gz); default: "
        f"${TRACES_DIR_ENV}, else a shared/traces above the working directory, else the copies "
        "shipped in the package",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="inspect traces")
    tsub = p.add_subparsers(dest="trace_command", metavar="ACTION", required=True)
    i = tsub.add_parser("info", help="summary statistics of a trace")
    i.add_argument("trace", help=TRACE_HELP)
    i.add_argument(
        "--head",
        type=int,
        default=None,
        metavar="N",
        help="only the first N requests (default: all)",
    )
    add_traces_dir_argument(i)
    i.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    if args.head is not None and args.head <= 0:
        raise ValueError(f"--head must be positive, got {args.head}")
    tr = load_trace(args.trace, args.traces_dir)
    if args.head:
        tr = head(tr, args.head)
    for k, v in describe(tr).items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    return 0
