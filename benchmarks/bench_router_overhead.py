"""Router overhead: TTFT through the router vs straight to the same engine-sim, 64 streams.

One engine-sim (a100 profile, real time) and one router in front of it. A separate client process
keeps C streaming requests in flight (closed loop) and measures TTFT at the first content chunk.
Phases alternate (direct, router, direct, router, ...) so drift in machine load hits both sides.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_router_overhead.py [--streams 64] [--phases 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _procs import free_port, start, stop, wait_http  # noqa: E402


async def _stream_loop(
    session,
    url: str,
    bodies: list[bytes],
    seed: int,
    stop_at: float,
    t_warm: float,
    ttfts: list[float],
    errors: list[int],
) -> None:
    import aiohttp

    rng = random.Random(seed)
    await asyncio.sleep(rng.uniform(0, 1.0))  # stagger the streams so they do not move in waves
    while time.monotonic() < stop_at:
        body = bodies[rng.randrange(len(bodies))]
        t0 = time.monotonic()
        try:
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as r:
                if r.status != 200:
                    errors[0] += 1
                    await r.read()
                    continue
                first = None
                while True:
                    chunk = await r.content.readany()
                    if not chunk:
                        break
                    if first is None and b'"text":"' in chunk:
                        first = time.monotonic()
                if first is not None and t0 >= t_warm:
                    ttfts.append(first - t0)
        except aiohttp.ClientError:
            errors[0] += 1


async def _client(
    port: int, streams: int, seconds: float, warmup: float, prompt: int, tokens: int
) -> dict:
    import aiohttp

    # prompt and output lengths vary (x0.5 .. x1.5) so the closed loop does not synchronise
    rng = random.Random(1)
    bodies = [
        json.dumps(
            {
                "model": "sim-llama-3-8b",
                "prompt": [7] * max(1, int(prompt * rng.uniform(0.5, 1.5))),
                "max_tokens": max(1, int(tokens * rng.uniform(0.5, 1.5))),
                "ignore_eos": True,
                "stream": True,
            }
        ).encode()
        for _ in range(32)
    ]
    url = f"http://127.0.0.1:{port}/v1/completions"
    ttfts: list[float] = []
    errors = [0]
    t_warm = time.monotonic() + warmup
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(
            *[
                _stream_loop(s, url, bodies, i, t_warm + seconds, t_warm, ttfts, errors)
                for i in range(streams)
            ]
        )
    return {"ttft": ttfts, "errors": errors[0]}


def run_client(port: int, a: argparse.Namespace) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            str(port),
            str(a.streams),
            str(a.seconds),
            str(a.warmup),
            str(a.prompt),
            str(a.tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, streams, seconds, warmup, prompt, tokens = sys.argv[2:8]
        print(
            json.dumps(
                asyncio.run(
                    _client(
                        int(port),
                        int(streams),
                        float(seconds),
                        float(warmup),
                        int(prompt),
                        int(tokens),
                    )
                )
            )
        )
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=64)
    p.add_argument("--phases", type=int, default=10, help="alternating direct/router phases")
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--prompt", type=int, default=128, help="mean prompt tokens")
    p.add_argument("--tokens", type=int, default=64, help="mean output tokens")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--profile", default="a100")
    a = p.parse_args()
    ep, rp = free_port(), free_port()
    procs = [start(["engine-sim", "--profile", a.profile, "--time-scale", str(a.time_scale)], ep)]
    res: dict[str, list[float]] = {"direct": [], "router": []}
    errs = {"direct": 0, "router": 0}
    phase_p50: list[float] = []
    try:
        wait_http(f"http://127.0.0.1:{ep}/health")
        procs.append(start(["router", "--backend", f"http://127.0.0.1:{ep}"], rp))
        wait_http(f"http://127.0.0.1:{rp}/health")
        for i in range(a.phases):
            side, port = ("direct", ep) if i % 2 == 0 else ("router", rp)
            r = run_client(port, a)
            res[side] += r["ttft"]
            errs[side] += r["errors"]
            phase_p50.append(float(np.percentile(r["ttft"], 50)) * 1000 if r["ttft"] else np.nan)
    finally:
        stop(procs)
    d = np.array(res["direct"]) * 1000
    r = np.array(res["router"]) * 1000
    print(
        f"TTFT at {a.streams} concurrent streams, engine-sim {a.profile} time-scale "
        f"{a.time_scale:g}, prompt ~{a.prompt} tokens, ~{a.tokens} output tokens, "
        f"{a.phases} alternating phases of {a.seconds:g} s"
    )
    print(f"{'path':<10}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    for name, x in (("direct", d), ("router", r)):
        print(
            f"{name:<10}{len(x):>10}{errs[name]:>8}{np.percentile(x, 50):>10.2f}"
            f"{np.percentile(x, 90):>10.2f}{np.percentile(x, 99):>10.2f}"
        )
    p50d, p50r = np.percentile(d, 50), np.percentile(r, 50)
    p99d, p99r = np.percentile(d, 99), np.percentile(r, 99)
    print(
        f"ratio router/direct: p50 {p50r / p50d:.3f}, p99 {p99r / p99d:.3f}; "
        f"added p50 {p50r - p50d:+.2f} ms, added p99 {p99r - p99d:+.2f} ms"
    )
    pairs = [phase_p50[i + 1] - phase_p50[i] for i in range(0, len(phase_p50) - 1, 2)]
    print("added p50 per phase pair (ms): " + ", ".join(f"{x:+.2f}" for x in pairs))


if __name__ == "__main__":
    main()
