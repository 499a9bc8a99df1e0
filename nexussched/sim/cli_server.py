"""`nexussched engine-sim`: a mock vLLM OpenAI server on the engine simulator."""

from __future__ import annotations

import argparse
import logging

from ..engine_sched import ENGINE_POLICIES
from .hardware import PRESETS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "engine-sim",
        help="mock vLLM server (OpenAI API, vLLM metrics) on the engine simulator",
        description="Serve /v1/completions, /v1/chat/completions (SSE streaming), /v1/models, "
        "/health, /metrics (vLLM names) and /telemetry (step records) from a simulated engine "
        "running in real or scaled time.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8001, help="port to listen on")
    p.add_argument(
        "--profile",
        default="a100",
        choices=sorted(PRESETS),
        help="hardware profile the simulated engine runs at",
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help="served model name (repeatable; default sim-llama-3-8b)",
    )
    p.add_argument("--name", default="", help="engine name in telemetry (default PROFILE-PORT)")
    p.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="wall seconds per simulated second; 0 = fast mode (no pacing)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated engine")
    p.add_argument(
        "--engine-policy",
        default="vllm_default",
        choices=list(ENGINE_POLICIES),
        help="batch planner of the engine",
    )
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="running sequences per step (default: vLLM V1's default for the profile's device)",
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens per step (default: vLLM V1's default for the profile's device)",
    )
    p.add_argument("--num-blocks", type=int, default=None, help="KV blocks (default: from profile)")
    p.add_argument(
        "--max-model-len",
        type=int,
        default=131072,
        help="longest prompt + output in tokens (capped at what the KV cache holds)",
    )
    p.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cache prompt prefixes like vLLM V1 (default: on)",
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=16,
        help="max_tokens of a request that does not set it (as vLLM's completions API)",
    )
    p.add_argument(
        "--eos-mean",
        type=float,
        default=0.0,
        help="without ignore_eos, stop at a geometric length of this mean (0: never)",
    )
    p.add_argument("--slo-ttft", type=float, default=2.0, help="default TTFT SLO (s)")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="default TPOT SLO (s)")
    p.add_argument("--telemetry-out", metavar="FILE", help="append step records (JSON lines)")
    p.add_argument(
        "--telemetry-keep", type=int, default=100_000, help="step records kept for GET /telemetry"
    )
    p.add_argument(
        "--kv-link-gbs",
        type=float,
        default=25.0,
        help="GB/s of the link a decode request's KV arrives over (kv_transfer_params)",
    )
    p.add_argument(
        "--redis-url",
        default=None,
        help="publish step records, load and the fitted model to this Redis (the telemetry "
        "plane, as the vLLM plug-in does), e.g. redis://127.0.0.1:6379/0",
    )
    p.add_argument("--topic", default="default", help="plane topic the records go under")
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from .server import ServerConfig, run_server

    logging.basicConfig(level=args.log_level.upper())
    cfg = ServerConfig(
        profile=args.profile,
        models=tuple(args.model or ("sim-llama-3-8b",)),
        name=args.name,
        time_scale=args.time_scale,
        seed=args.seed,
        engine_policy=args.engine_policy,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        num_blocks=args.num_blocks,
        max_model_len=args.max_model_len,
        enable_prefix_caching=args.enable_prefix_caching,
        default_max_tokens=args.default_max_tokens,
        eos_mean=args.eos_mean,
        slo_ttft=args.slo_ttft,
        slo_tpot=args.slo_tpot,
        telemetry_out=args.telemetry_out,
        telemetry_keep=args.telemetry_keep,
        kv_link_gbs=args.kv_link_gbs,
        redis_url=args.redis_url,
        topic=args.topic,
    ).validate()
    if not 0 <= args.port <= 65535:
        raise ValueError(f"port {args.port} is out of range")
    return run_server(cfg, args.host, args.port)
