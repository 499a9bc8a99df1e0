"""How well PRISM predicts each request's TTFT and ITL, by what it learns from.

Three engine-sims of different speeds (h100, a100, l4 profiles; real time; vLLM's default batching)
behind a live router (in this process, so its predictions can be read), fed the same Poisson
stream of streaming requests once per way. Requests go round robin so that every engine is
measured, PRISM predicting and accounting for each one in shadow (Prism.place; `--prism-routes`
lets PRISM choose instead), each time with a fresh router that learns differently:
- telemetry: the engines' step records over the Redis telemetry plane (engine-sim --redis-url,
  the vLLM plug-in's publisher; `learn=telemetry`);
- observed: only what the router sees of stock engines (`learn=observed`,
  router/observed_feed.py): the streams it relays and the engines' vLLM /metrics counters;
- metrics: only those /metrics counters (`learn=metrics`), as for traffic that is not streamed
  (the requests here stream, but the router learns nothing from their chunks);
- none: the prior (`learn=none`).
Each way also prints how many observations the router's own watch taught (streams, /metrics).
At each routing decision the router's predicted TTFT and decode step time (its ITL) for the
engine it picks are recorded; the client measures the request's TTFT and mean ITL. Printed: the
mean relative error |predicted - measured| / measured per engine, after `--warmup` requests.
Every prompt starts with a distinct token (an engine with prefix caching serves no repeat).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_learning_error.py [--requests 60]
        [--warmup 60] [--rate 4] [--ways telemetry,observed,metrics,none]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _procs import free_port, start, stop, wait_http  # noqa: E402

from nexussched.localproc import LocalRedis  # noqa: E402

PROFILES = ("h100", "a100", "l4")
MODES = ("telemetry", "observed", "metrics", "none")
MODEL = "sim-llama-3-8b"


def workload(n: int, rate: float, seed: int) -> list[tuple[float, int, int]]:
    """(arrival s, prompt tokens, max_tokens) of n requests."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    return [
        (float(t[i]), int(rng.integers(100, 2000)), int(rng.integers(16, 96))) for i in range(n)
    ]


async def run_mode(
    mode: str, urls: list[str], redis_url: str, reqs, first_token: int, spread: bool
) -> list[tuple]:
    import aiohttp
    from aiohttp.test_utils import TestServer

    from nexussched.router.compose import create_app
    from nexussched.router.config import RouterSettings, backend_from_url
    from nexussched.router.policies import Prism
    from nexussched.router.prism_live import PrismDispatcher

    policy = Prism(rebind=False)  # a request stays where it was predicted
    preds: dict[object, tuple[int, float, float]] = {}
    route = policy.route

    turn = [0]

    def recording_route(req, engines, now):
        if not spread:
            before = [policy.predict(req, i, now) for i in range(len(engines))]
            idx = route(req, engines, now)
            if idx is not None:
                preds[req.id] = (idx, *before[idx])
            return idx
        # every engine gets its share, so each one's error is measured: PRISM predicts and
        # accounts for the request where round robin sends it (Prism.place)
        idx = turn[0] % len(engines)
        turn[0] += 1
        preds[req.id] = (idx, *policy.predict(req, idx, now))
        policy._sync(engines)
        policy.place(req, idx, now)
        return idx

    policy.route = recording_route  # type: ignore[method-assign]
    tag: dict[object, int] = {}  # router request id -> the request's distinct first token

    class Tagging(PrismDispatcher):
        async def dispatch(self, call):
            tag[call.info.id] = call.body["prompt"][0]
            return await super().dispatch(call)

    disp = Tagging(
        policy, redis=redis_url if mode == "telemetry" else None, learn=mode, topic="learnerr"
    )
    settings = RouterSettings(backends=[backend_from_url(u) for u in urls])
    server = TestServer(create_app(settings, disp))
    await server.start_server()
    router = server.app["router"]
    out: list[tuple] = []
    try:
        for _ in range(200):
            if sum(b.healthy for b in router.backends) == len(urls):
                break
            await asyncio.sleep(0.05)
        url = str(server.make_url("/v1/completions"))

        async def one(k: int, at: float, prompt: int, mt: int, t0: float, s) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            body = {
                "model": MODEL,
                "prompt": [first_token + k] + [7] * (prompt - 1),
                "max_tokens": mt,
                "ignore_eos": True,
                "stream": True,
            }
            sent = time.monotonic()
            times: list[float] = []
            async with s.post(url, json=body) as r:
                while True:
                    chunk = await r.content.readany()
                    if not chunk:
                        break
                    if b'"text"' in chunk:
                        times.extend([time.monotonic()] * chunk.count(b'"text"'))
            out.append((k, sent, times))

        t0 = time.monotonic()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            await asyncio.gather(*(one(k, *req, t0, s) for k, req in enumerate(reqs)))
    finally:
        obs = disp.observed
        if obs is not None:  # what the router's own watch taught, by source
            segs = sum(w.steps + w.segments for w in obs.engines)
            scr = [w.samples for w in obs.scrapes]
            print(f"{mode}: taught {segs} steps/segments from streams, {scr} /metrics samples")
        await server.close()
    by_token = {p: rid for rid, p in tag.items()}
    rows = []
    for k, sent, times in out:
        rid = by_token.get(first_token + k)
        if rid not in preds or len(times) < 2:
            continue
        idx, p_ttft, p_itl = preds[rid]
        ttft = times[0] - sent
        itl = (times[-1] - times[0]) / (len(times) - 1)
        rows.append((k, idx, p_ttft, ttft, p_itl, itl))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=60, help="measured requests per way")
    p.add_argument("--warmup", type=int, default=60, help="requests before measuring")
    p.add_argument("--rate", type=float, default=4.0, help="requests per second")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dump", help="write every (way, engine, predicted, measured) row here")
    p.add_argument(
        "--prism-routes",
        dest="spread",
        action="store_false",
        help="let PRISM pick the engine (default: round robin, PRISM predicting in shadow, so "
        "every engine is measured)",
    )
    p.add_argument(
        "--ways", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES)
    )
    a = p.parse_args()
    ways = [w for w in a.ways.split(",") if w]
    if not ways or any(w not in MODES for w in ways):
        p.error(f"--ways: pick from {','.join(MODES)}")
    redis = LocalRedis()
    ports = [free_port() for _ in PROFILES]
    procs = [
        start(
            [
                "engine-sim",
                "--profile",
                prof,
                "--redis-url",
                redis.url,
                "--topic",
                "learnerr",
                "--seed",
                str(k),
            ],
            port,
        )  # fmt: skip
        for k, (prof, port) in enumerate(zip(PROFILES, ports, strict=True))
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    reqs = workload(a.warmup + a.requests, a.rate, a.seed)
    results: dict[str, list[tuple]] = {}
    try:
        for u in urls:
            wait_http(u + "/health")
        for j, mode in enumerate(ways):  # distinct prompts across the ways too
            results[mode] = asyncio.run(
                run_mode(mode, urls, redis.url, reqs, 1000 + 5000 * j, a.spread)
            )
    finally:
        stop(procs)
        redis.stop()
    print(
        f"per-request prediction error (mean |predicted - measured| / measured), "
        f"{a.requests} requests after {a.warmup}, Poisson {a.rate:g}/s, engine-sims "
        f"{','.join(PROFILES)} (real time, vllm_default), "
        f"{'round robin, PRISM in shadow' if a.spread else 'PRISM routing'}"
    )
    head = f"{'engine':<8}" + "".join(f"{m + ' TTFT':>16}{m + ' ITL':>15}" for m in ways)
    print(head)
    for i, prof in enumerate(PROFILES):
        line = f"{prof:<8}"
        for m in ways:
            rows = [r for r in results[m] if r[0] >= a.warmup and r[1] == i]
            if not rows:
                line += f"{'-':>16}{'-':>15}"
                continue
            e_ttft = np.mean([abs(r[2] - r[3]) / r[3] for r in rows])
            e_itl = np.mean([abs(r[4] - r[5]) / r[5] for r in rows])
            line += f"{e_ttft:>11.3f} n={len(rows):<2}{e_itl:>15.3f}"
        print(line)
    if a.dump:
        with open(a.dump, "w") as f:
            for m in ways:
                for r in results[m]:
                    f.write(f"{m} {PROFILES[r[1]]} k={r[0]} ttft {r[2]:.4f} {r[3]:.4f} "
                            f"itl {r[4]:.4f} {r[5]:.4f}\n")  # fmt: skip


if __name__ == "__main__":
    main()
