"""Routing decision time with many backends: each policy's route() over the live router's
Backend objects (the EngineViews it routes on), one call at a time, as the router times it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_routing_decision.py [--backends 64] [--calls 200000]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from nexussched.router.backends import Backend
from nexussched.router.config import backend_from_url
from nexussched.router.policies import POLICIES, RequestInfo, make_policy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", type=int, default=64)
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--policies", default="least_load,round_robin")
    a = p.parse_args()
    rng = random.Random(0)
    bs = [
        Backend(backend_from_url(f"http://10.0.{i // 250}.{i % 250 + 1}:8000"))
        for i in range(a.backends)
    ]
    for b in bs:
        b.healthy = rng.random() > 0.05
        b.num_running = rng.randrange(0, 64)
        b.num_waiting = rng.randrange(0, 16)
        b.kv_usage = rng.random()
        b.inflight = rng.randrange(0, 80)
    bs[0].healthy = True
    infos = [
        RequestInfo(i, rng.randrange(10, 4000), rng.randrange(10, 1000), 0.0, 1.0, 0.1)
        for i in range(1024)
    ]
    print(f"routing decision time, {a.backends} backends (~5% unhealthy), {a.calls} calls each")
    print(f"{'policy':<14}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}{'mean us':>10}")
    for name in a.policies.split(","):
        if name not in POLICIES:
            raise SystemExit(f"unknown policy {name}")
        pol = make_policy(name)
        ns = np.empty(a.calls, dtype=np.int64)
        clock = time.perf_counter_ns
        for i in range(a.calls):
            info = infos[i & 1023]
            b = bs[i % a.backends]
            b.inflight = (b.inflight + 1) % 80  # state moves between calls, as in the router
            t = clock()
            pol.route(info, bs, 0.0)
            ns[i] = clock() - t
        us = ns / 1000.0
        print(
            f"{name:<14}{np.percentile(us, 50):>10.2f}{np.percentile(us, 99):>10.2f}"
            f"{np.percentile(us, 99.9):>10.2f}{us.mean():>10.2f}"
        )


if __name__ == "__main__":
    main()
