"""Router overhead: TTFT through the router vs straight to the same engine-sim, 64 streams.

One engine-sim (a100 profile, real time) and one router per policy in front of it. A separate
client process keeps C streaming requests in flight (closed loop) and measures TTFT at the first
content chunk. Phases cycle (direct, router with each policy, direct, ...) so drift in machine load
hits every side. With `--engines N` (N > 1) there is no "direct": the routers front N equal
engine-sims and are compared with round robin (the tail on equal engines); each round runs every
side once (in an order that rotates) and its p99 ratios pair phases of nearly the same machine
load; a side named twice (round_robin#2) measures how far two runs of the same policy differ.
PRISM runs as deployed (`--mode prism`, learning from the engines' step telemetry).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_router_overhead.py [--streams 64] [--phases 4]
        [--policies round_robin,least_load,prism] [--engines 1]   (a policy may carry knobs:
        prism:kv_events=false; round_robin#2 runs round robin again as an A/A control)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    bodies: list[tuple[int, int]],
    seed: int,
    stop_at: float,
    t_warm: float,
    ttfts: list[float],
    errors: list[int],
    done: list[int],
) -> None:
    import aiohttp

    rng = random.Random(seed)
    await asyncio.sleep(rng.uniform(0, 1.0))  # stagger the streams so they do not move in waves
    while time.monotonic() < stop_at:
        n, mt = bodies[rng.randrange(len(bodies))]
        # a distinct first token: no two prompts share a prefix (an engine with prefix caching
        # would otherwise serve repeats from cache)
        prompt = [rng.randrange(1000, 30000)] + [7] * (n - 1)
        body = json.dumps(
            {
                "model": "sim-llama-3-8b",
                "prompt": prompt,
                "max_tokens": mt,
                "ignore_eos": True,
                "stream": True,
            }  # fmt: skip
        ).encode()
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
                done[0] += 1
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
        (
            max(1, int(prompt * rng.uniform(0.5, 1.5))),
            max(1, int(tokens * rng.uniform(0.5, 1.5))),
        )
        for _ in range(32)
    ]
    url = f"http://127.0.0.1:{port}/v1/completions"
    ttfts: list[float] = []
    errors = [0]
    done = [0]  # every request answered, warm-up included (the router's CPU served them all)
    t_warm = time.monotonic() + warmup
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(
            *[
                _stream_loop(s, url, bodies, i, t_warm + seconds, t_warm, ttfts, errors, done)
                for i in range(streams)
            ]
        )
    return {"ttft": ttfts, "errors": errors[0], "done": done[0]}


TAIL_BOUNDS = (0.04, 0.06, 0.1)  # vLLM's TTFT bucket bounds (s) near round robin's p99


def _held(port: int) -> int:
    """Requests the router held back (late binding), from its /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("nexussched_router_held_total"):
                return int(float(line.split()[-1]))
    return 0


def engine_ttft_buckets(ports: list[int]) -> dict[float, float]:
    """The engines' vllm:time_to_first_token_seconds buckets (cumulative counts by upper bound),
    summed. engine-sim measures TTFT on its own clock (arrival at the engine to the step that
    sampled the first token), which a loaded machine does not stretch: where requests queued,
    not how late the router and client processes ran."""
    import urllib.request

    out: dict[float, float] = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("vllm:time_to_first_token_seconds_bucket"):
                    le = line.split('le="', 1)[1].split('"', 1)[0]
                    b = float("inf") if le == "+Inf" else float(le)
                    out[b] = out.get(b, 0.0) + float(line.split()[-1])
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """Quantile q of the observations between two bucket snapshots (linear within a bucket)."""
    bounds = sorted(after)
    cum = [after[b] - before.get(b, 0.0) for b in bounds]
    total = cum[-1] if cum else 0.0
    if total <= 0:
        return float("nan")
    want = q * total
    lo, prev = 0.0, 0.0
    for b, c in zip(bounds, cum, strict=True):
        if c >= want:
            if b == float("inf"):
                return lo
            return lo + (b - lo) * (want - prev) / max(c - prev, 1e-12)
        lo, prev = b, c
    return lo


def bucket_share_over(before: dict[float, float], after: dict[float, float], bound: float) -> float:
    """Share of the observations between two bucket snapshots above `bound` (a bucket bound):
    exact, where a quantile inside a wide bucket is only interpolated."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0 or bound not in after:
        return float("nan")
    return 1.0 - (after[bound] - before.get(bound, 0.0)) / total


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc (Linux)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    p.add_argument("--policies", default="round_robin", help="comma-separated router policies")
    p.add_argument("--engines", type=int, default=1, help="equal engine-sims behind each router")
    a = p.parse_args()
    policies = [x for x in a.policies.split(",") if x]
    if a.engines < 1 or not policies:
        raise SystemExit("--engines must be >= 1 and --policies non-empty")
    eps = [free_port() for _ in range(a.engines)]
    procs = [
        start(
            [
                "engine-sim",
                "--profile",
                a.profile,
                "--time-scale",
                str(a.time_scale),
                "--seed",
                str(k),
            ],
            ep,
        )  # fmt: skip
        for k, ep in enumerate(eps)
    ]
    sides: list[tuple[str, int]] = [("direct", eps[0])] if a.engines == 1 else []
    pids: dict[str, int] = {}
    try:
        for ep in eps:
            wait_http(f"http://127.0.0.1:{ep}/health", timeout=180.0)  # a loaded machine
        for pol in policies:
            rp = free_port()
            # NAME or NAME:key=value:key=value (the policy's --policy-arg knobs, e.g.
            # prism:kv_events=false); a #tag makes a second side of the same policy (its own
            # router), e.g. round_robin#2: the A/A control that measures the noise of the table
            name, *knobs = pol.split("#", 1)[0].split(":")
            mode = ["--mode", "prism"] if name == "prism" else []
            args = [x for k in knobs for x in ("--policy-arg", k)]
            backends = [x for ep in eps for x in ("--backend", f"http://127.0.0.1:{ep}")]
            procs.append(start(["router", *backends, *mode, "--policy", name, *args], rp))
            pids[pol] = procs[-1].pid
            wait_http(f"http://127.0.0.1:{rp}/health", timeout=180.0)
            sides.append((pol, rp))
        res: dict[str, list[float]] = {name: [] for name, _ in sides}
        errs = {name: 0 for name, _ in sides}
        # the router's CPU per request: what machine load does not change (unlike TTFT)
        cpu = {name: 0.0 for name, _ in sides}
        done = {name: 0 for name, _ in sides}
        # TTFT on the engines' own clocks, per phase (load-robust: where requests queued)
        eng_q: dict[str, dict[float, list[float]]] = {n: {0.5: [], 0.99: []} for n, _ in sides}
        # engine clock: share of requests whose TTFT passed a bucket bound (exact, per round)
        eng_tail: dict[str, dict[float, list[float]]] = {
            n: {b: [] for b in TAIL_BOUNDS} for n, _ in sides
        }
        phase_p50: dict[str, list[float]] = {name: [] for name, _ in sides}
        phase_p99: dict[str, list[float]] = {name: [] for name, _ in sides}
        loads: list[float] = []
        # One unmeasured phase per side first: the first phases of a run were the slowest of it
        # (p50 1,159 ms against 25 ms after, on a loaded machine), and they fell on whichever
        # side came first in every round, round robin's as the reference.
        warm = argparse.Namespace(**{**vars(a), "seconds": min(a.seconds, 2.0)})
        for _, port in sides:
            run_client(port, warm)
        n = len(sides)
        for i in range(a.phases * n):
            # each round starts one side later, so no side always follows the same one
            name, port = sides[(i + i // n) % n]
            c0 = proc_cpu(pids[name]) if name in pids else 0.0
            e0 = engine_ttft_buckets(eps)
            r = run_client(port, a)
            e1 = engine_ttft_buckets(eps)
            for q in (0.5, 0.99):
                eng_q[name][q].append(bucket_quantile(e0, e1, q) * 1000)
            for bound in TAIL_BOUNDS:
                eng_tail[name][bound].append(bucket_share_over(e0, e1, bound))
            if name in pids:
                cpu[name] += proc_cpu(pids[name]) - c0
            done[name] += r["done"]
            res[name] += r["ttft"]
            errs[name] += r["errors"]
            phase_p50[name].append(
                float(np.percentile(r["ttft"], 50)) * 1000 if r["ttft"] else np.nan
            )
            phase_p99[name].append(
                float(np.percentile(r["ttft"], 99)) * 1000 if r["ttft"] else np.nan
            )
            loads.append(os.getloadavg()[0])
        held = {name: _held(port) for name, port in sides if name in pids}
    finally:
        stop(procs)
    ref = sides[0][0]
    print(
        f"TTFT at {a.streams} concurrent streams, {a.engines} engine-sim {a.profile} time-scale "
        f"{a.time_scale:g}, prompt ~{a.prompt} tokens, ~{a.tokens} output tokens, "
        f"{a.phases} rounds of {a.seconds:g} s phases; ratios against {ref}"
    )
    print(
        f"{'path':<14}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
        f"{'p50 ratio':>11}{'p99 ratio':>11}{'router CPU-ms/req':>19}"
    )
    base = np.array(res[ref]) * 1000
    for name, _ in sides:
        x = np.array(res[name]) * 1000
        if len(x) == 0:
            print(f"{name:<14}{0:>10}{errs[name]:>8}   (no requests)")
            continue
        print(
            f"{name:<14}{len(x):>10}{errs[name]:>8}{np.percentile(x, 50):>10.2f}"
            f"{np.percentile(x, 90):>10.2f}{np.percentile(x, 99):>10.2f}"
            f"{np.percentile(x, 50) / np.percentile(base, 50):>11.3f}"
            f"{np.percentile(x, 99) / np.percentile(base, 99):>11.3f}"
            + (f"{cpu[name] / max(1, done[name]) * 1000:>19.3f}" if name in pids else f"{'-':>19}")
        )
    print(
        "engine-side TTFT (engine clock, from the engines' histograms; median over rounds) "
        + "; ".join(
            f"{n} p50 {np.nanmedian(eng_q[n][0.5]):.1f} ms p99 {np.nanmedian(eng_q[n][0.99]):.1f} ms"
            for n, _ in sides
        )
    )
    if len(sides) > 1:
        # each round runs every side once, back to back: a round's ratio pairs phases that saw
        # nearly the same machine load, and the spread over rounds says what one run can tell
        print(f"p99 ratio to {ref} per round (same round), min / median / max over rounds:")
        for name, _ in sides[1:]:
            cl = np.array(phase_p99[name]) / np.array(phase_p99[ref])
            en = np.array(eng_q[name][0.99]) / np.array(eng_q[ref][0.99])
            print(
                f"  {name:<28} client {np.nanmin(cl):.3f} / {np.nanmedian(cl):.3f} / "
                f"{np.nanmax(cl):.3f}   engine clock {np.nanmin(en):.3f} / {np.nanmedian(en):.3f}"
                f" / {np.nanmax(en):.3f}   ({', '.join(f'{v:.2f}' for v in en)})"
            )
        print(
            "engine clock, share of requests with TTFT over "
            + " / ".join(f"{b * 1000:.0f}" for b in TAIL_BOUNDS)
            + " ms (mean over rounds; per round):"
        )
        for name, _ in sides:
            print(
                f"  {name:<28} "
                + " / ".join(f"{np.nanmean(eng_tail[name][b]):.2%}" for b in TAIL_BOUNDS)
                + "   ("
                + "; ".join(", ".join(f"{v:.2%}" for v in eng_tail[name][b]) for b in TAIL_BOUNDS)
                + ")"
            )
        print(f"load average (1 min) over the phases: {min(loads):.1f}-{max(loads):.1f}")
    print("requests held at the router: " + ", ".join(f"{n} {h}" for n, h in held.items()))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min)")
    print(
        "p50 per round (ms): "
        + "; ".join(f"{n} " + ", ".join(f"{v:.1f}" for v in phase_p50[n]) for n, _ in sides)
    )


if __name__ == "__main__":
    main()
