"""A routing policy's own work per request, in process, warm and with the caches swept: what the
live router runs for each non-streaming request of bench_router_throughput.py (the prompt's block
hashes where the policy reads them, RequestInfo, route(), a re-binding policy's flight record,
on_first_token, and on_end or on_output and on_finish, as the router calls them), 64 requests in
flight over 2 engines with learned models.

Warm: best of --reps runs of --requests back to back (the caches hold the policy's code and
state). Swept: a 16 MB buffer is scanned before each request and only the request is timed, as
in a router where the event loop, the sockets and the other processes on the cores run between
two of a policy's requests. The gap between the two is the policy's cost in cache misses.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_prism_request.py [--policy least_load,prism]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import deque

from nexussched.eval.decisions import View, step
from nexussched.router.policies import make_policy
from nexussched.router.policies.base import RequestInfo
from nexussched.router.policy_dispatch import _hooks
from nexussched.tokens import prompt_block_hashes

BODY = {"model": "m", "prompt": "benchmark the router " * 4, "max_tokens": 4}  # the bench's


class Run:
    def __init__(self, name: str) -> None:
        self.p = make_policy(name)
        self.views = [View("e0"), View("e1")]
        rng = random.Random(1)
        if hasattr(self.p, "observe"):  # fitted models and a trusted pace, as after warm-up
            for k in range(300):
                for i in range(2):
                    self.p.observe(i, step(rng, 1.0, k * 0.01))
        self.prefix = getattr(self.p, "uses_prefix", False)
        self.rebinds = self.p.tick_interval is not None
        self.flights: dict[object, RequestInfo] = {}  # (the router's: its ProxyCalls)
        self.live: deque = deque()
        self.now = 1000.0
        self.k = 0
        self.hooks = _hooks(self.p)

    def one(self) -> None:
        p, k, now = self.p, self.k, self.now
        prefix = prompt_block_hashes(BODY, False, 16) if self.prefix else ()
        info = RequestInfo(k, 22, 4, now, 2.0, 0.1, 0, "m", prefix_hashes=prefix)
        idx = p.route(info, self.views, now)
        if idx is None:
            raise SystemExit(f"{p.name} held a request: the benchmark assumes none are")
        if self.rebinds:
            self.flights[k] = info
            self.flights.pop(k, None)
        first, on_output, on_finish, on_end = self.hooks
        if first is not None:
            first(k, idx, now)
        self.live.append((k, idx))
        if len(self.live) > 64:
            rid, i = self.live.popleft()
            if on_end is not None:
                on_end(rid, i, now, 4)
            else:
                if on_output is not None:
                    on_output(rid, 4)
                if on_finish is not None:
                    on_finish(rid, i, now)
        self.k += 1
        self.now += 0.01  # engines keep up: no backlog grows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="least_load,prism")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--swept", type=int, default=3000, help="requests timed with caches swept")
    a = ap.parse_args()
    buf = bytearray(16 << 20)
    pc = time.perf_counter
    print(f"{'policy':<12}{'warm us/request':>18}{'swept us/request':>18}")
    for name in a.policy.split(","):
        run = Run(name)
        for _ in range(3000):
            run.one()
        warm = float("inf")
        for _ in range(a.reps):
            t0 = pc()
            for _ in range(a.requests):
                run.one()
            warm = min(warm, (pc() - t0) / a.requests)
        swept = 0.0
        for _ in range(a.swept):
            buf.find(b"x")  # reads 16 MB: evicts the policy's code and state from the caches
            t0 = pc()
            run.one()
            swept += pc() - t0
        print(f"{name:<12}{warm * 1e6:>18.2f}{swept / a.swept * 1e6:>18.2f}")


if __name__ == "__main__":
    main()
