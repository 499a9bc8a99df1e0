"""`nexussched router`: serve the OpenAI API in front of a set of engine backends."""

from __future__ import annotations

import argparse
import logging
import os

from .config import RouterSettings, backend_from_url, load_backends_file, parse_kv
from .knobs import load_knobs
from .modes.params import add_scheduler_args, params_from_args
from .policies import POLICIES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "router",
        help="OpenAI-compatible router in front of vLLM (or engine-sim) backends",
        description="Proxy /v1/completions and /v1/chat/completions (streaming or not) to "
        "backends chosen by a routing policy; /v1/models, /health, /metrics (Prometheus).",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL",
        help="backend base URL, e.g. http://127.0.0.1:8001 (repeatable)",
    )
    p.add_argument(
        "--backends-file",
        metavar="FILE",
        help="YAML or JSON list of backends; watched: entries added join, entries removed drain "
        "(with --workers N > 1, POST/DELETE /backends write their change into it)",
    )
    p.add_argument(
        "--backends-file-poll",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between checks of --backends-file for changes (default 1.0)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--policy",
        default="least_load",
        help=f"routing policy of --mode policy and --mode prism: {', '.join(POLICIES)}",
    )
    p.add_argument(
        "--policy-arg",
        action="append",
        metavar="KEY=VALUE",
        help="one knob of --policy, e.g. slack=0.4 for prism (repeatable; over --policy-config; "
        "README lists the knobs)",
    )
    p.add_argument(
        "--policy-config",
        default=None,
        metavar="FILE",
        help="knob file (JSON) as `nexussched tune --out` writes; the section of --policy is used",
    )
    p.add_argument(
        "--mode",
        default="policy",
        help="placement mode, one of policy, prism, local, global, splitwise: 'policy' routes each request with --policy; 'prism' adds engine "
        "telemetry and Redis state sharing between replicas (--mode-arg redis=URL); local, "
        "global, splitwise are FastDeploy's modes (or use --scheduler-name)",
    )
    p.add_argument(
        "--mode-arg",
        action="append",
        metavar="KEY=VALUE",
        help="option of --mode (repeatable); prism: redis=URL, replica=NAME, topic=T, "
        "learn=auto|telemetry|observed|metrics|none",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("NEXUSSCHED_API_KEY"),
        help="require 'Authorization: Bearer KEY' from clients (default: $NEXUSSCHED_API_KEY)",
    )
    p.add_argument(
        "--metrics-api-key",
        default=os.environ.get("NEXUSSCHED_METRICS_API_KEY"),
        help="key for /metrics alone (a Prometheus scraper's); default: the --api-key",
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request size limit (MiB)")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a connection may take to send a request's headers (also the keep-alive "
        "idle limit)",
    )
    p.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds to receive a request body"
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds requests in flight may still finish; streams still open then "
        "end with an SSE error event",
    )
    p.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="seconds a stream may go without an upstream byte before its run counts as failed "
        "(retried elsewhere if nothing was sent yet, else ended with an SSE error)",
    )
    p.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to connect to a backend"
    )
    p.add_argument(
        "--health-interval",
        type=float,
        default=1.0,
        help="seconds between probes of a backend out of rotation",
    )
    p.add_argument(
        "--scrape-interval",
        type=float,
        default=0.5,
        help="seconds between /metrics scrapes of a healthy backend",
    )
    p.add_argument(
        "--scrape-timeout",
        type=float,
        default=2.0,
        help="seconds a /metrics scrape or /health probe may take; three timed out in a row take "
        "the backend out of rotation and stop its requests (raise it for engines whose HTTP "
        "front lags on a busy host)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=1,
        help="re-sends on another backend before the first response byte (default 1)",
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        default=0.02,
        metavar="S",
        help="seconds before the first re-send, doubling per re-send, with jitter (default 0.02)",
    )
    p.add_argument(
        "--retry-backoff-max",
        type=float,
        default=1.0,
        metavar="S",
        help="cap of the re-send backoff in seconds (default 1.0)",
    )
    p.add_argument(
        "--breaker-failures",
        type=int,
        default=5,
        metavar="N",
        help="consecutive failures (connection errors, 5xx) that open a backend's circuit "
        "breaker; 0 turns it off (default 5)",
    )
    p.add_argument(
        "--breaker-cooldown",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds a breaker stays open before one trial request may go (default 10)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes serving the port (SO_REUSEPORT), each a replica; share PRISM's state "
        "through --mode-arg redis=URL (default 1)",
    )
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not write the access log (one line per request on stderr; on by default)",
    )
    p.add_argument(
        "--max-connections", type=int, default=0, help="upstream pool size (0: no limit)"
    )
    p.add_argument("--slo-ttft", type=float, default=2.0, help="default TTFT SLO (s)")
    p.add_argument("--slo-tpot", type=float, default=0.1, help="default TPOT SLO (s)")
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity",
    )
    add_scheduler_args(p)  # --scheduler-name local|global|splitwise and FastDeploy's parameters
    p.set_defaults(func=_run)


def _policy_args(args: argparse.Namespace) -> dict:
    """--policy-config's section for --policy, with --policy-arg KEY=VALUE on top."""
    base: dict = {}
    if args.policy_config:
        knobs = load_knobs(args.policy_config)
        base = dict(knobs.policy_args.get(args.policy, {}))
        if not base:
            raise ValueError(f"{args.policy_config}: no knobs for policy {args.policy!r} "
                             f"(it has: {', '.join(knobs.policy_args) or 'none'})")  # fmt: skip
    return {**base, **parse_kv(args.policy_arg, "--policy-arg")}


async def _check_redis(url: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when --mode prism's Redis does not answer."""
    import redis.asyncio as aioredis

    try:
        client = aioredis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except ValueError as e:
        raise ValueError(f"--mode-arg redis={url}: {e}") from None
    try:
        await client.ping()
    except Exception as e:  # noqa: BLE001 - any failure to answer is the same error to the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--mode prism: Redis at {url} unavailable: {reason}") from None
    finally:
        await client.aclose()


def settings_from_args(args: argparse.Namespace) -> RouterSettings:
    backends = [backend_from_url(u) for u in args.backend]
    if args.backends_file:
        backends += load_backends_file(args.backends_file)
    if not args.max_body_mb > 0:
        raise ValueError("--max-body-mb must be positive")
    mode, mode_args = args.mode, parse_kv(args.mode_arg, "--mode-arg")
    sched = params_from_args(args)
    if sched is not None:
        mode, mode_args = sched.name, {"params": sched}
    return RouterSettings(
        backends=backends,
        host=args.host,
        port=args.port,
        policy=args.policy,
        policy_args=_policy_args(args),
        mode=mode,
        mode_args=mode_args,
        api_key=args.api_key or None,
        metrics_api_key=args.metrics_api_key or None,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        drain_timeout=args.drain_timeout,
        max_body_bytes=int(args.max_body_mb * 2**20),
        request_timeout=args.request_timeout,
        idle_timeout=args.idle_timeout,
        connect_timeout=args.connect_timeout,
        health_interval=args.health_interval,
        scrape_interval=args.scrape_interval,
        scrape_timeout=args.scrape_timeout,
        retries=args.retries,
        retry_backoff=args.retry_backoff,
        retry_backoff_max=args.retry_backoff_max,
        breaker_failures=args.breaker_failures,
        breaker_cooldown=args.breaker_cooldown,
        backends_file=args.backends_file,
        backends_file_poll=args.backends_file_poll,
        access_log=args.access_log,
        workers=args.workers,
        max_connections=args.max_connections,
        default_slo_ttft=args.slo_ttft,
        default_slo_tpot=args.slo_tpot,
    ).validate()


def _run(args: argparse.Namespace) -> int:
    from .compose import run_router  # aiohttp only when serving

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    settings = settings_from_args(args)
    if settings.access_log:  # on whatever --log-level says: its own handler, at INFO
        from .access_log import use_access_handler

        use_access_handler()
    sched = settings.mode_args.get("params")
    if sched is not None:  # Redis must answer before we serve (one-line error otherwise)
        import asyncio

        from .modes import check_plane

        asyncio.run(check_plane(sched))
    if settings.mode == "prism" and settings.mode_args.get("redis"):
        import asyncio

        asyncio.run(_check_redis(str(settings.mode_args["redis"])))
    return run_router(settings)  # unknown policy/mode: ValueError before binding
