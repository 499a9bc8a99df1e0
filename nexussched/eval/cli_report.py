"""`nexussched report`: the scenario matrix, its bars, tables and plots (see eval/report.py)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..traces.cli_trace import add_traces_dir_argument
from .cli_eval import knobs_from_args
from .information import add_information_args, information_from_args
from .replay import DEFAULT_CLIENT_TIMEOUT
from .report import ENGINES, ROUTERS, SCENARIOS, ReportConfig, make_report


def _names(value: str | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not value:
        return known
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    if what == "scenario":
        bad = [n for n in names if n not in known]
        if bad:
            raise ValueError(f"unknown scenario {bad[0]!r}; known: {', '.join(known)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="run the evaluation matrix and write a Markdown report with plots",
        description="Replay the scenario matrix (azure-conv, azure-code, mooncake-conv, bursty, "
        "heterogeneous, sessions) under every routing x engine policy at the rate where "
        "round_robin + vllm_default attains 50-70%, search each pair's goodput from there, and "
        "write report.md, results.json and PNGs.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--scenarios",
        default=None,
        help=f"comma list (default all: {', '.join(s.name for s in SCENARIOS)})",
    )
    p.add_argument(
        "--policies", default=None, help=f"routing policies (default: {', '.join(ROUTERS)})"
    )
    p.add_argument(
        "--engine-policies", default=None, help=f"engine policies (default: {', '.join(ENGINES)})"
    )
    p.add_argument(
        "--requests-scale",
        type=float,
        default=1.0,
        help="multiply every scenario's trace slice (default 1: the sizes in the report)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="replay mooncake-conv's first 1,500 requests instead of 400 (its long prompts "
        "make it the costliest scenario per request, and a run costs in proportion to its "
        "requests; the default keeps the report under 3 minutes on 2 cores)",
    )
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: one per CPU)")
    p.add_argument(
        "--bisect",
        type=int,
        default=4,
        help="goodput refinement runs per pair at most between the last passing and first "
        "failing rate; they stop once the two are within 12%% (default: %(default)s)",
    )
    p.add_argument(
        "--decisions",
        type=int,
        default=20000,
        help="PRISM decision-throughput sample size (0: skip; default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and policies")
    add_traces_dir_argument(p)
    add_information_args(p)
    p.add_argument(
        "--client-timeout",
        type=float,
        default=DEFAULT_CLIENT_TIMEOUT,
        help="seconds a client waits for its first token before it gives up; its request is "
        "cancelled at its engine and counted failed (default %(default)g; 0: wait forever)",
    )
    p.add_argument(
        "--policy-config",
        default=None,
        metavar="FILE",
        help="knob file (JSON) as `nexussched tune --out` writes, applied to every run",
    )
    p.add_argument(
        "--policy-arg",
        action="append",
        default=None,
        metavar="POLICY.KEY=VALUE",
        help="one knob of a routing or engine policy, e.g. prism.slack=0.4 (repeatable)",
    )
    p.add_argument(
        "--information-scenario",
        default="heterogeneous",
        metavar="NAME|none",
        help="scenario of the 'value of information' table: its policy pairs at its operating "
        "point under the oracle and live views, with exact and capped max_tokens (12 extra runs; "
        "default %(default)s; none: skip; a scenario not run is skipped)",
    )
    p.set_defaults(func=run_report)  # fmt: skip


def run_report(args: argparse.Namespace) -> int:
    if not args.requests_scale > 0:
        raise ValueError("--requests-scale must be positive")
    if args.workers < 0 or args.bisect < 0 or args.decisions < 0:
        raise ValueError("--workers, --bisect and --decisions must be >= 0")
    if not args.client_timeout >= 0:
        raise ValueError("--client-timeout must be >= 0 (0: clients wait forever)")
    names = _names(args.scenarios, tuple(s.name for s in SCENARIOS), "scenario")
    timeout = args.client_timeout or None
    scenarios = tuple(replace(s, client_timeout=timeout) for s in SCENARIOS if s.name in names)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    cfg = ReportConfig(
        out=Path(args.out),
        scenarios=scenarios,
        routers=_names(args.policies, ROUTERS, "policy"),
        engines=_names(args.engine_policies, ENGINES, "engine policy"),
        requests_scale=args.requests_scale,
        full=args.full,
        bisect=args.bisect,
        workers=args.workers,
        seed=args.seed,
        decisions=args.decisions,
        traces_dir=args.traces_dir,
        info=information_from_args(args),
        knobs=knobs_from_args(args),
        progress=say,
        information_scenario=None
        if args.information_scenario == "none"
        else _names(args.information_scenario, tuple(s.name for s in SCENARIOS), "scenario")[0],
    )
    cfg = replace(cfg)
    path = make_report(cfg)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f}s)")
    return 0
