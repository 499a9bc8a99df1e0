"""The live bar: 3 engine-sim backends of different speeds (h100, a100, l4) behind 2 router
replicas; the same trace slice replayed through prism (replicas sharing state through Redis) and
through round_robin, measured as clients see it (streaming TTFT/TPOT).

python benchmarks/bench_live_prism.py [--requests 600] [--rate 8] [--policies round_robin,prism]

Starts its own redis-server (free port, temp dir), engines and routers, and stops them; the replay
is `nexussched eval --live URL1,URL2` (requests alternate between the two replicas). Engines run in real time (time-scale 1); every policy gets
fresh engines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _procs import free_port, start, stop, wait_http  # noqa: E402

from nexussched.cli import main as cli_main  # noqa: E402
from nexussched.traces import Trace, head, load_trace  # noqa: E402

PROFILES = ("h100", "a100", "l4")


def start_redis() -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    d = tempfile.mkdtemp(prefix="nxs-live-redis-")
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    p = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", d],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(0.3)
    return p, port, d


def run_policy(policy: str, trace: Trace, a) -> dict:
    procs: list[subprocess.Popen] = []
    redis_p = None
    try:
        engines = []
        for k, prof in enumerate(PROFILES):
            port = free_port()
            procs.append(start(["engine-sim", "--profile", prof, "--seed", str(k)], port))
            engines.append(f"http://127.0.0.1:{port}")
        for u in engines:
            wait_http(u + "/health")
        mode: list[str] = []
        if policy == "prism":
            redis_p, rport, rdir = start_redis()
            mode = ["--mode", "prism", "--mode-arg", f"redis=redis://127.0.0.1:{rport}"]
        routers = []
        for r in range(2):
            port = free_port()
            args = ["router", "--policy", policy, *mode]
            if policy == "prism":
                args += ["--mode-arg", f"replica=r{r}"]
            for u in engines:
                args += ["--backend", u]
            procs.append(start(args, port))
            routers.append(f"http://127.0.0.1:{port}")
        for u in routers:
            wait_http(u + "/health")
        t0 = time.monotonic()
        out = Path(tempfile.mkdtemp(prefix="nxs-live-eval-"))
        rc = cli_main(
            ["eval", "--live", ",".join(routers), "--trace", a.trace, "--head", str(a.requests),
             "--rate-scale", repr(a.rate / trace.rate), "--policies", policy, "--slo-ttft",
             str(a.slo_ttft), "--slo-tpot", str(a.slo_tpot), "--out", str(out), "--no-progress"]
        )  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"nexussched eval --live failed ({rc})")
        s = json.loads((out / "results.json").read_text())["runs"][0]
        shutil.rmtree(out, ignore_errors=True)
        s["wall_s"] = time.monotonic() - t0
        return s
    finally:
        stop(procs)
        if redis_p is not None:
            redis_p.kill()
            redis_p.wait()
            shutil.rmtree(rdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="azure-conv")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--rate", type=float, default=8.0, help="offered requests/s")
    ap.add_argument("--policies", default="round_robin,prism")
    ap.add_argument("--slo-ttft", type=float, default=2.0)
    ap.add_argument("--slo-tpot", type=float, default=0.1)
    a = ap.parse_args()
    tr = head(load_trace(a.trace), a.requests)
    print(f"{a.trace}: {len(tr)} requests at {a.rate:.1f}/s; engines {', '.join(PROFILES)}; "
          "2 router replicas; `nexussched eval --live URL1,URL2`")  # fmt: skip
    print(f"{'policy':<12} {'SLO att':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} "
          f"{'TPOT p99':>9} {'failed':>7} {'wall s':>7}")  # fmt: skip
    for pol in a.policies.split(","):
        s = run_policy(pol, tr, a)

        def f(v, fmt="{:.3f}"):
            return "-" if v is None else fmt.format(v)

        print(f"{pol:<12} {s['slo_attainment']:>8.1%} {f(s['ttft_p50']):>9} "
              f"{f(s['ttft_p99']):>9} {f(s['tpot_p50'], '{:.4f}'):>9} "
              f"{f(s['tpot_p99'], '{:.4f}'):>9} {s['failed']:>7} {s['wall_s']:>7.0f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
