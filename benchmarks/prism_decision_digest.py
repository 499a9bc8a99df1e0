"""A digest of every decision PRISM makes over simulated replays: run it in two checkouts to show a
cost cut left PRISM's decisions as they were.

Each replay (seeds x {a sessions trace with shared prefixes on h100/a100/l4, a heterogeneous one
on a100/l4} x 8 PRISM configs: default, prefix off, affinity off, place_cost 0, no late binding,
cost order with shed, jitter, hold_for_pace) feeds one SHA-256 with every route() answer (engine,
None for held, or the exception), every pull() hand-over, every tick() move, and the run's summary
(wall time left out). Equal digests: the same decisions, in the same order, with the same results.

    PYTHONPATH=. .venv/bin/python benchmarks/prism_decision_digest.py [--seeds 5] [--each]
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter

from nexussched.eval.replay import SimSetup, simulate
from nexussched.router.policies import prism as prism_mod
from nexussched.sim import get_profile
from nexussched.traces import load_trace

CONFIGS: dict[str, dict] = {
    "default": {},
    "noprefix": {"prefix_aware": False},
    "noaff": {"prefix_affinity": False},
    "place0": {"place_cost": 0.0},
    "nolate": {"late_binding": False},
    "cost_shed": {"order": "cost", "shed": True},
    "jitter": {"jitter": 0.02, "seed": 3},
    "pace": {"hold_for_pace": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--each", action="store_true", help="also print the digest after each run")
    a = ap.parse_args()
    digest = hashlib.sha256()
    counts: Counter = Counter()
    Prism = prism_mod.Prism
    route, pull, tick = Prism.route, Prism.pull, Prism.tick

    def route_logged(self, req, engines, now):  # type: ignore[no-untyped-def]
        try:
            idx = route(self, req, engines, now)
        except Exception as e:
            digest.update(f"R{req.id}:{type(e).__name__};".encode())
            raise
        digest.update(f"R{req.id}:{idx};".encode())
        counts["routed"] += 1
        counts["held"] += idx is None
        return idx

    def pull_logged(self, idx, engines, now):  # type: ignore[no-untyped-def]
        out = pull(self, idx, engines, now)
        if out:
            digest.update(f"P{idx}:{[i.id for i in out]};".encode())
            counts["pulled"] += len(out)
        return out

    def tick_logged(self, engines, now):  # type: ignore[no-untyped-def]
        moves = tick(self, engines, now)
        if moves:
            digest.update(f"T{[(m.req_id, m.src, m.dst) for m in moves]};".encode())
            counts["moved"] += len(moves)
        return moves

    Prism.route, Prism.pull, Prism.tick = route_logged, pull_logged, tick_logged  # type: ignore[method-assign]
    try:
        for seed in range(a.seeds):
            for spec, profiles in (
                (f"synthetic:sessions,n=400,rate=14,seed={seed}", ["h100", "a100", "l4"]),
                (f"synthetic:heterogeneous,n=400,rate=18,seed={seed}", ["a100", "l4"]),
            ):
                trace = load_trace(spec)
                for name, kwargs in CONFIGS.items():
                    setup = SimSetup(
                        [get_profile(p) for p in profiles],
                        seed=seed,
                        policy_kwargs={"prism": kwargs},
                    )
                    s = simulate(trace, setup, "prism").summary
                    digest.update(
                        repr(sorted(kv for kv in s.items() if kv[0] != "sim_wall_s")).encode()
                    )
                    if a.each:
                        print(seed, spec.split(",")[0], name, digest.hexdigest()[:12])
    finally:
        Prism.route, Prism.pull, Prism.tick = route, pull, tick  # type: ignore[method-assign]
    print(f"digest {digest.hexdigest()}  ({', '.join(f'{k} {v}' for k, v in counts.items())})")


if __name__ == "__main__":
    main()
