"""What a step record costs a live PRISM router to learn from, counted rather than timed: machine
instructions (valgrind's callgrind) per record through the HTTP telemetry feed's own path (decode,
PrismPredictor.observe, the model's refits), each the difference between two runs of N1 and N2
records so start-up cancels out.

The records are real: an engine-sim at --time-scale 0 driven the way bench_router_throughput.py
drives it (the records a router learns from in that benchmark), then fed to the feed in polls of
`--rate` x 0.2 s worth. Each row is one learning budget (router/telemetry_thin.py; 0: every
record); `--baseline DIR` also runs another checkout (one without a budget runs its own feed
loop: parse_lines, StepRecord.from_dict, observe).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_learning_cost.py [--rate 800]
        [--budgets 0,100] [--records 2000,6000] [--baseline /path/to/other/checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import bench_router_throughput as bt  # noqa: E402
from _procs import ROOT, free_port, start, stop, wait_http  # noqa: E402

POLL = 0.2  # s, the feed's poll interval (policies/view.py TELEMETRY_POLL)


def capture(path: str, seconds: float = 3.0) -> int:
    """Step records of an engine-sim under the throughput benchmark's load, as JSON lines."""
    port = free_port()
    p = start(["engine-sim", "--time-scale", "0"], port)
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        asyncio.run(bt._load(port, 16, seconds, 0.2, 4, False))
        url = f"http://127.0.0.1:{port}/telemetry?since=0&limit=1000000"
        with urllib.request.urlopen(url) as r:
            body = r.read().decode()
    finally:
        stop([p])
    with open(path, "w") as f:
        f.write(body)
    return len(body.splitlines())


def worker(path: str, n: int, budget: float, rate: float) -> None:
    """Feed n records (repeating the file) to a PRISM policy through the feed, in polls."""
    from nexussched.perfmodel.fit import load_solver
    from nexussched.router.policies import make_policy
    from nexussched.router.telemetry_feed import TelemetryFeed

    load_solver()
    lines = [ln for ln in open(path).read().splitlines() if ln]
    src = (lines * (n // len(lines) + 1))[:n]
    batch = max(1, int(rate * POLL))
    p = make_policy("prism")
    if hasattr(TelemetryFeed, "ingest"):
        feed = TelemetryFeed(p.observe, [], None, learn_budget=budget, seen=p.seen)  # type: ignore[arg-type]
        now = 0.0
        for i in range(0, n, batch):
            now += POLL
            feed.ingest(0, src[i : i + batch], now)
        learned = feed.records
    else:  # a checkout from before the budget: its feed's loop
        from nexussched.perfmodel.telemetry import StepRecord
        from nexussched.router.telemetry_feed import parse_lines

        learned = 0
        for i in range(0, n, batch):
            for d in parse_lines(src[i : i + batch]) or []:
                p.observe(0, StepRecord.from_dict(d))
                learned += 1
    print(f"learned {learned}")


def count(root: str, path: str, n: int, budget: float, rate: float, tmp: str) -> tuple[int, int]:
    """(instructions, records learned) of a worker run under callgrind."""
    out = os.path.join(tmp, f"cg.{n}")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           __file__, "--worker", path, str(n), str(budget), str(rate)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=root)
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    learned = int(res.stdout.split("learned")[-1])
    total = 0
    for line in open(out):
        if line.startswith(("totals:", "summary:")):
            total = max(total, int(line.split()[1]))
    return total, learned


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, path, n, budget, rate = sys.argv
        worker(path, int(n), float(budget), float(rate))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=800.0, help="records a second per engine")
    p.add_argument("--budgets", default="0,100", help="learning budgets to run (0: every record)")
    p.add_argument("--records", default="2000,6000", help="N1,N2")
    p.add_argument("--baseline", metavar="PATH", help="another checkout to run as well")
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("needs valgrind")
    n1, n2 = (int(x) for x in a.records.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "records.jsonl")
        got = capture(path)
        print(f"{got} step records of an engine-sim (--time-scale 0) under the throughput "
              f"benchmark's load; fed at {a.rate:.0f} records/s in {POLL} s polls")  # fmt: skip
        print(f"{'checkout':<10} {'budget/s':>9} {'learned':>8} {'instructions/record':>20}")
        roots = [("this", str(ROOT))] + ([("baseline", a.baseline)] if a.baseline else [])
        for name, root in roots:
            for budget in (float(x) for x in a.budgets.split(",")):
                (i1, l1), (i2, l2) = (count(root, path, n, budget, a.rate, tmp) for n in (n1, n2))
                share = (l2 - l1) / (n2 - n1)
                print(f"{name:<10} {budget:>9.0f} {share:>8.1%} {(i2 - i1) / (n2 - n1):>20,.0f}")
                if not hasattr_budget(root):
                    break  # a checkout without the budget learns every record whatever it is


def hasattr_budget(root: str) -> bool:
    return os.path.exists(os.path.join(root, "nexussched", "router", "telemetry_thin.py"))


if __name__ == "__main__":
    main()
