"""PRISM's decision throughput: routing decisions per second on one core (used by the benchmark
and by `nexussched report`).

Every decision scores every engine: all engines are healthy and have room, each has a learned
model of a different speed, and each route() of a fresh request is paired with the on_finish()
of an older one so the in-flight set stays at a steady size, as in a serving router.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass

from ..perfmodel.telemetry import StepRecord
from ..router.policies.base import RequestInfo
from ..router.policies.prism import Prism


@dataclass
class View:
    """An engine as a live router would expose it (the EngineView contract)."""

    name: str
    healthy: bool = True
    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.2
    last_scrape: float = 0.0
    block_size: int | None = 16
    num_gpu_blocks: int | None = 25000
    inflight: int = 0
    inflight_prompt_tokens: int = 0
    inflight_max_tokens: int = 0


def step(rng: random.Random, speed: float, t: float) -> StepRecord:
    """A plausible step record of an engine `speed` times slower than a reference one."""
    nd = rng.randint(0, 128)
    ctx = nd * rng.randint(200, 3000)
    chunks: tuple[tuple[int, int], ...] = ()
    if rng.random() < 0.4:
        chunks = ((rng.randint(16, 4096), rng.randint(0, 2048)),)
    tok = sum(c for c, _ in chunks)
    attn = sum(c * (x + c / 2) for c, x in chunks)
    dur = speed * (0.01 + 8e-5 * tok + 5e-9 * attn + 1e-4 * nd + 8e-8 * ctx)
    return StepRecord(dur, chunks, nd, ctx, t=t, num_waiting=rng.randint(0, 3))


def decision_throughput(
    n_engines: int, decisions: int, seed: int = 0
) -> tuple[float, float, float, int]:
    """(decisions/s, us per observed step record, us per tick, requests held) on this core."""
    rng = random.Random(seed)
    prism = Prism()
    views = [View(f"e{i}") for i in range(n_engines)]
    speeds = [rng.choice((0.5, 1.0, 1.0, 2.5)) for _ in range(n_engines)]
    t = 0.0
    recs = 0
    t0 = time.perf_counter()
    for _ in range(200):  # enough telemetry for every model to fit and to judge its pace
        for i, s in enumerate(speeds):
            prism.observe(i, step(rng, s, t))
            recs += 1
        t += 0.05
    obs_us = (time.perf_counter() - t0) / recs * 1e6
    reqs = [
        RequestInfo(k, rng.randint(50, 4000), rng.randint(10, 500), 0.0, 2.0, 0.1)
        for k in range(4096)
    ]
    live: deque = deque()
    window = n_engines * 4
    now = t
    held = 0
    gap = 1.0 / (3.0 * n_engines)  # offered load the cluster can take (few requests held)
    t0 = time.perf_counter()
    for k in range(decisions):
        base = reqs[k % 4096]
        req = RequestInfo(k, base.prompt_tokens, base.max_tokens, now, 2.0, 0.1)
        idx = prism.route(req, views, now)
        if idx is None:
            held += 1
        else:
            live.append((k, idx))
        if len(live) > window:
            rid, i = live.popleft()
            prism.on_finish(rid, i, now)
        now += gap
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    for _ in range(100):
        prism.tick(views, now)
    tick_us = (time.perf_counter() - t1) / 100 * 1e6
    return decisions / dt, obs_us, tick_us, held
