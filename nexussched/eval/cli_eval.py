"""`nexussched eval`: trace replay (simulated cluster, or live with --live) under several policies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..engine_sched import ENGINE_POLICIES
from ..perfmodel.telemetry import TelemetryLog
from ..router.knobs import Knobs, load_knobs, parse_policy_args
from ..router.policies import POLICIES
from ..sim import get_profile, parse_cluster
from ..sim.engine import EngineConfig
from ..traces import Trace, head, load_trace
from ..traces.cli_trace import TRACE_HELP, add_traces_dir_argument
from ..traces.loaders import BUNDLED
from .information import add_information_args, information_from_args
from .replay import DEFAULT_CLIENT_TIMEOUT, SimSetup, simulate
from .sweep import goodput_sweep
from .table import format_table


def resolve_trace(spec: str, traces_dir: str | None = None) -> Trace:
    """A trace name, path or synthetic spec (see `load_trace`; `bundled` is the demo's sample)."""
    return load_trace(spec, traces_dir)


def _names(value: str, known: dict, what: str) -> list[str]:
    """A comma list of names, or 'all': every one but the oracle ablations (named explicitly,
    under --view oracle, they run; 'all' must run under the default live view)."""
    if value == "all":
        return [n for n, f in known.items() if not getattr(f, "oracle", False)]
    names = [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in known:
            raise ValueError(f"unknown {what} {n!r}; known: {', '.join(known)}")
    return names


def _positive_floats(value: str, what: str) -> list[float]:
    out = []
    for v in value.split(","):
        try:
            f = float(v)
        except ValueError:
            raise ValueError(
                f"{what} must be a number or a comma list of numbers, got {v!r}"
            ) from None
        if not f > 0:
            raise ValueError(f"{what} must be positive, got {v!r}")
        out.append(f)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="replay a trace through a simulated cluster (or a live endpoint)",
        description="Replay a trace under routing and engine policies; print an SLO table, write "
        "results.json and plots.",
    )
    p.add_argument(
        "--trace",
        default=BUNDLED,
        help=f"{TRACE_HELP} (default: %(default)s)",
    )
    add_traces_dir_argument(p)
    p.add_argument("--head", type=int, default=None, help="use only the first N requests")
    p.add_argument("--engines", type=int, default=8, help="number of a100 engines (default 8)")
    p.add_argument(
        "--cluster",
        default=None,
        help="mixed hardware, e.g. a100:4,h100:2,l4:2 (overrides --engines)",
    )
    p.add_argument(
        "--policies",
        default="round_robin,least_load",
        help=f"comma list of routing policies, or 'all' (all but the oracle ablations): "
        f"{', '.join(POLICIES)}",
    )
    p.add_argument(
        "--engine-policy",
        default="vllm_default",
        help=f"comma list of engine policies, or 'all': {', '.join(ENGINE_POLICIES)}",
    )
    p.add_argument(
        "--rate-scale", default="1.0", help="replay at k x the trace's rate (comma list ok)"
    )
    p.add_argument("--slo-ttft", type=float, default=2.0, help="TTFT SLO in seconds")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="TPOT SLO in seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and policies")
    add_information_args(p)
    p.add_argument(
        "--client-timeout",
        type=float,
        default=DEFAULT_CLIENT_TIMEOUT,
        help="seconds a client waits for its first token before it gives up and disconnects; "
        "its request is cancelled at its engine (KV freed) and counted failed "
        "(default %(default)g; 0: wait forever)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="simulated engines cache prompt prefixes like vLLM V1 (default: on)",
    )
    p.add_argument(
        "--goodput",
        action="store_true",
        help="sweep the rate to find goodput (attainment >= --goodput-target)",
    )
    p.add_argument(
        "--goodput-target",
        type=float,
        default=0.9,
        help="SLO attainment the goodput rate must keep, in (0, 1]",
    )
    p.add_argument("--out", default="results", help="output directory (results.json, *.png)")
    p.add_argument(
        "--telemetry-out",
        default=None,
        metavar="FILE",
        help="write every engine's step records to FILE (JSONL, what `perf fit --telemetry` "
        "reads); with several runs each record carries its run's tag "
        "(POLICY+ENGINE_POLICY@xSCALE), which `perf fit --run TAG` picks",
    )
    p.add_argument(
        "--policy-config",
        default=None,
        metavar="FILE",
        help="knob file (JSON) as `nexussched tune --out` writes: keyword arguments per routing "
        "and engine policy",
    )
    p.add_argument(
        "--policy-arg",
        action="append",
        default=None,
        metavar="POLICY.KEY=VALUE",
        help="one knob of a routing or engine policy, e.g. prism.slack=0.4 or "
        "lens.tpot_margin=0.1 (repeatable; over --policy-config; README lists the knobs)",
    )
    p.add_argument(
        "--live",
        default=None,
        metavar="URL",
        help="replay against a live OpenAI-compatible endpoint instead of the simulator "
        "(URL1,URL2,...: router replicas, taking requests in turn)",
    )
    p.add_argument("--model", default=None, help="model name for --live (default: first listed)")
    p.add_argument("--api-key", default=None, help="bearer key for --live")
    p.add_argument("--concurrency", type=int, default=256, help="max in-flight requests for --live")
    p.add_argument(
        "--timeline",
        default="auto",
        metavar="RUNS",
        help="runs to draw in timeline.png (requests in the system per engine and TTFT over "
        "time), as POLICY+ENGINE_POLICY[,...]; 'auto': the first run and the best; 'none' "
        "(default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_eval)


def _check(args: argparse.Namespace) -> None:
    if args.slo_ttft <= 0 or args.slo_tpot <= 0:
        raise ValueError("--slo-ttft and --slo-tpot must be positive")
    if args.engines <= 0:
        raise ValueError("--engines must be positive")
    if args.head is not None and args.head <= 0:
        raise ValueError("--head must be positive")
    if not 0 < args.goodput_target <= 1:
        raise ValueError("--goodput-target must be in (0, 1]")
    if not args.client_timeout >= 0:
        raise ValueError("--client-timeout must be >= 0 (0: clients wait forever)")


def run_eval(args: argparse.Namespace) -> int:
    _check(args)
    trace = resolve_trace(args.trace, args.traces_dir)
    if args.head:
        trace = head(trace, args.head)
    if not trace.requests:
        raise ValueError(f"trace {args.trace!r} has no requests")
    scales = _positive_floats(args.rate_scale, "--rate-scale")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.live:
        return _run_live(args, trace, scales, out)

    profiles = parse_cluster(args.cluster) if args.cluster else [get_profile("a100")] * args.engines
    knobs = knobs_from_args(args)
    setup = SimSetup(profiles, args.slo_ttft, args.slo_tpot, args.seed,
                     policy_kwargs=knobs.policy_args,
                     engine_policy_kwargs={e: knobs.engine_kwargs(e)
                                           for e in knobs.engine_policy_args},
                     engine_config=EngineConfig(
                         enable_prefix_caching=args.enable_prefix_caching),
                     info=information_from_args(args),
                     client_timeout=args.client_timeout or None)  # fmt: skip
    policies = _names(args.policies, POLICIES, "routing policy")
    engine_policies = _names(args.engine_policy, ENGINE_POLICIES, "engine policy")
    combos = [(p, e) for p in policies for e in engine_policies]
    show = not args.no_progress and sys.stderr.isatty()
    runs: list[dict] = []
    bar = tqdm(
        total=None if args.goodput else len(combos) * len(scales) * len(trace),
        unit="req",
        disable=not show,
        desc="replay",
        leave=False,
    )
    nruns = len(combos) * len(scales)
    outcomes: list[list] = []  # per fixed-rate run, for the timeline
    telemetry_file = Path(args.telemetry_out) if args.telemetry_out else None
    if telemetry_file is not None:
        if args.goodput:
            raise ValueError("--telemetry-out records fixed-rate runs; leave out --goodput")
        telemetry_file.parent.mkdir(parents=True, exist_ok=True)
        telemetry_file.write_text("")  # one file for the whole eval, runs appended in turn
    try:
        for pol, epol in combos:
            if args.goodput:
                runs.extend(_sweep(trace, setup, pol, epol, scales[0], args, bar))
                continue
            for k in scales:
                log = TelemetryLog() if telemetry_file else None
                r = simulate(
                    trace,
                    setup,
                    pol,
                    epol,
                    k,
                    telemetry=log.append if log else None,
                    progress=bar.update,
                    trace_label=args.trace,
                )
                _label_split(r.summary, setup)
                runs.append(r.summary)
                outcomes.append(r.outcomes)
                if log is not None and telemetry_file is not None:
                    tag = run_tag(pol, epol, k)
                    log.write_jsonl(telemetry_file, run=tag if nruns > 1 else None, append=True)
                    r.summary["telemetry_run"] = tag
    finally:
        bar.close()
    return _finish(args, runs, out, outcomes)


def _label_split(summary: dict, setup: SimSetup) -> None:
    """Name the prefill/decode split of a splitwise run (which engines do which) in its label."""
    if summary["policy"] != "splitwise":
        return
    from ..router.policies.fastdeploy_splitwise import split_roles

    kw = setup.policy_kwargs.get("splitwise", {})
    roles = split_roles(len(setup.profiles), kw.get("prefill_nodes"), kw.get("roles"))
    summary["policy"] = "splitwise " + ",".join(r[0].upper() for r in roles)
    summary["splitwise_roles"] = [
        f"{p.name}:{r}" for p, r in zip(setup.profiles, roles, strict=True)
    ]


def _sweep(
    trace: Trace,
    setup: SimSetup,
    pol: str,
    epol: str,
    start: float,
    args: argparse.Namespace,
    bar: tqdm,
) -> list[dict]:
    def run(scale: float) -> dict:
        return simulate(
            trace, setup, pol, epol, scale, progress=bar.update, trace_label=args.trace
        ).summary

    res = goodput_sweep(run, start=start, target=args.goodput_target)
    good = res.goodput_scale * trace.rate if res.goodput_scale is not None else 0.0
    points = [s for _, s in res.points]
    for s in points:
        s["goodput_rps"] = good
        s["goodput_scale"] = res.goodput_scale
        s["sweep_point"] = True
    # The headline row for the table: the point at the goodput rate (or the lowest one run).
    best = next((s for k, s in res.points if k == res.goodput_scale), points[0])
    best["sweep_point"] = False
    return points


def run_tag(pol: str, epol: str, k: float) -> str:
    """The tag of one run in a telemetry file (`perf fit --run TAG`)."""
    return f"{pol}+{epol}@x{k:g}"


def knobs_from_args(args: argparse.Namespace) -> Knobs:
    """--policy-config FILE, then --policy-arg POLICY.KEY=VALUE on top."""
    base = load_knobs(args.policy_config) if args.policy_config else Knobs()
    return base.merged(parse_policy_args(args.policy_arg))


def _finish(
    args: argparse.Namespace, runs: list[dict], out: Path, outcomes: list[list] | None = None
) -> int:
    if getattr(args, "telemetry_out", None) and runs and "telemetry_run" in runs[0]:
        tags = [r["telemetry_run"] for r in runs]
        what = f"{len(tags)} runs, tagged {', '.join(tags)}" if len(tags) > 1 else "one run"
        print(f"telemetry: step records of {what} -> {args.telemetry_out}", file=sys.stderr)
    table_rows = [r for r in runs if not r.get("sweep_point")]
    if any(r.get("goodput_rps") is not None for r in table_rows):  # swept: best goodput first
        table_rows.sort(key=lambda r: -(r.get("goodput_rps") or 0.0))
    else:  # best attainment first at each rate
        table_rows.sort(key=lambda r: (r["rate_rps"], -r["slo_attainment"]))
    cluster = runs[0]["cluster"] if runs else ""
    print(f"{args.trace} on {cluster}, SLO: TTFT <= {args.slo_ttft} s and TPOT <= "
          f"{args.slo_tpot * 1000:g} ms per output token")  # fmt: skip
    print(format_table(table_rows))
    (out / "results.json").write_text(json.dumps({"runs": runs}, indent=1))
    title = f"{args.trace} on {cluster}: TTFT<={args.slo_ttft}s, TPOT<={args.slo_tpot}s"
    from .plot import plot_attainment, plot_timeline  # matplotlib only when a plot is written

    pngs = [plot_attainment(runs, out / "attainment.png", title=title,
                            target=args.goodput_target)]  # fmt: skip
    picked = _timeline_runs(args, runs, outcomes or [])
    if picked:
        pngs.append(plot_timeline(picked, out / "timeline.png", title=f"{title}: one run each"))
    print(f"wrote {out / 'results.json'}, " + ", ".join(str(p) for p in pngs))
    return 0


def _timeline_runs(args: argparse.Namespace, runs: list[dict], outcomes: list[list]) -> list:
    """--timeline: the runs to draw, as (summary, outcomes). 'auto': the first run and the best
    one at the same rate (the baseline next to the winner); 'none': no timeline."""
    choice = getattr(args, "timeline", "auto")
    if choice == "none" or not outcomes or len(outcomes) != len(runs):
        return []
    both = list(zip(runs, outcomes, strict=True))
    if choice == "auto":
        first = both[0]
        same = [b for b in both if b[0]["rate_scale"] == first[0]["rate_scale"]]
        best = max(same, key=lambda b: b[0]["slo_attainment"])
        return [first] if best is first else [first, best]
    want = [c.strip() for c in choice.split(",") if c.strip()]
    picked = []
    for w in want:
        hit = [b for b in both if f"{b[0]['policy']}+{b[0]['engine_policy']}" == w
               or f"{b[0]['policy'].split()[0]}+{b[0]['engine_policy']}" == w]  # fmt: skip
        if not hit:
            known = ", ".join(f"{r['policy'].split()[0]}+{r['engine_policy']}" for r in runs)
            raise ValueError(f"--timeline {w!r} names no run; runs: {known}")
        picked.append(hit[0])
    return picked


def _run_live(args: argparse.Namespace, trace: Trace, scales: list[float], out: Path) -> int:
    import asyncio

    from ..traces import scale_rate
    from .live_replicas import replay_replicas  # one URL, or URL1,URL2 for router replicas
    from .metrics import summarize

    runs = []
    for k in scales:
        tr = scale_rate(trace, k) if k != 1.0 else trace
        outcomes = asyncio.run(
            replay_replicas(
                args.live,
                tr,
                model=args.model,
                slo_ttft=args.slo_ttft,
                slo_tpot=args.slo_tpot,
                api_key=args.api_key,
                concurrency=args.concurrency,
                progress=not args.no_progress,
                client_timeout=args.client_timeout or None,
                max_tokens=args.max_tokens,
            )
        )
        # the live router's policy and its engines' schedulers are whatever they were started
        # with: name them only when the user did
        pols = args.policies if args.policies != "round_robin,least_load" else "live router"
        runs.append(
            {
                "policy": pols,
                "engine_policy": (
                    args.engine_policy if args.engine_policy != "vllm_default" else "as served"
                ),
                "trace": args.trace,
                "rate_scale": k,
                "rate_rps": tr.rate,
                "engines": None,
                "cluster": args.live,
                "slo_ttft": args.slo_ttft,
                "slo_tpot": args.slo_tpot,
                "client_timeout": args.client_timeout or None,
                "live": args.live,
                "view": "live",
                "max_tokens_mode": args.max_tokens,
                **summarize(outcomes),
                "goodput_rps": None,
            }
        )
    return _finish(args, runs, out)
