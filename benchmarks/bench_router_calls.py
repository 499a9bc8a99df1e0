"""What one request costs the router, counted rather than timed (so a loaded machine does not move
it): Python function calls per request (cProfile) and, with --syscalls, system calls per request
(strace -c), each the difference between two runs of N1 and N2 requests so start-up and shut-down
cancel out; with --instructions, the machine instructions the router executes per request in user
space (valgrind's callgrind, counting only while 400 requests are served; pass
`--router-arg=--health-interval=600 --router-arg=--scrape-interval=600` to keep the background
probes, which run on the clock and not per request, out of the count).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_router_calls.py [--stream] [--requests 200,1200]
        [--syscalls] [--instructions] [--router-arg=--policy --router-arg=least_load]

The router runs in front of 2 engine-sims (--time-scale 0), driven over 16 keep-alive connections
by the same lean client as bench_router_throughput.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import bench_router_throughput as bt  # noqa: E402
from _procs import ROOT, free_port, start, stop, wait_http  # noqa: E402

CONNS = 16


async def drive(port: int, n: int, stream: bool) -> int:
    """Send n requests over CONNS keep-alive connections; returns how many were not 200."""
    req = bt._request("127.0.0.1", port, 16 if stream else 4, stream)
    left = [n]
    bad = [0]

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            bad[0] += head[9:12] != b"200"
            await bt._read_body(reader, head)
        writer.close()

    await asyncio.gather(*[one() for _ in range(CONNS)])
    return bad[0]


def _router_cmd(engines: list[int], port: int, extra: list[str]) -> list[str]:
    backends = [x for ep in engines for x in ("--backend", f"http://127.0.0.1:{ep}")]
    return ["-m", "nexussched.cli", "router", *backends, *extra, "--port", str(port)]


def calls(engines: list[int], n: int, a: argparse.Namespace, tmp: str) -> tuple[int, int]:
    """(function calls in the router process, failed requests) for n requests."""
    port = free_port()
    out = os.path.join(tmp, f"calls.{n}")
    cmd = [sys.executable, "-m", "cProfile", "-o", out, *_router_cmd(engines, port, a.router_arg)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        bt.wait_ready(port)
        asyncio.run(drive(port, 64, a.stream))  # fill the connection pools first
        bad = asyncio.run(drive(port, n, a.stream))
    finally:
        p.send_signal(signal.SIGINT)  # a clean exit: cProfile writes its file
        p.wait(timeout=60)
    return pstats.Stats(out).total_calls, bad


def syscalls(engines: list[int], n: int, a: argparse.Namespace, tmp: str) -> dict[str, int]:
    """System calls of the router process (all its threads) while it serves n requests."""
    port = free_port()
    p = subprocess.Popen([sys.executable, *_router_cmd(engines, port, a.router_arg)], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    out = os.path.join(tmp, f"strace.{n}")
    try:
        bt.wait_ready(port)
        asyncio.run(drive(port, 64, a.stream))
        tids = [x for t in os.listdir(f"/proc/{p.pid}/task") for x in ("-p", t)]
        st = subprocess.Popen(["strace", "-f", "-c", "-o", out, *tids], stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # strace attaches
        asyncio.run(drive(port, n, a.stream))
        st.send_signal(signal.SIGINT)
        st.wait(timeout=60)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    counts: dict[str, int] = {}
    for line in open(out):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
        if m and m.group(2) != "total":
            counts[m.group(2)] = int(m.group(1))
    return counts


def instructions(engines: list[int], n: int, a: argparse.Namespace, tmp: str) -> float:
    """User-space instructions (callgrind's Ir) of the router process per request, counted
    only while n requests are served (after a warm-up), start-up excluded."""
    port = free_port()
    out = os.path.join(tmp, "callgrind.out")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           sys.executable, *_router_cmd(engines, port, a.router_arg)]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        bt.wait_ready(port, timeout=300)  # (about 50 times slower under valgrind)
        asyncio.run(drive(port, 200, a.stream))
        subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], capture_output=True)
        asyncio.run(drive(port, n, a.stream))
        subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], capture_output=True)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=120)
    total = 0
    for line in open(out):
        if line.startswith(("totals:", "summary:")):
            total = max(total, int(line.split()[1]))
    return total / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stream", action="store_true", help="streamed requests (16 tokens)")
    p.add_argument("--requests", default="200,1200", help="N1,N2")
    p.add_argument("--syscalls", action="store_true", help="also count system calls (strace)")
    p.add_argument("--instructions", action="store_true", help="also count instructions (valgrind)")
    p.add_argument("--router-arg", action="append", default=[], help="extra flag for the router")
    a = p.parse_args()
    n1, n2 = (int(x) for x in a.requests.split(","))
    if a.syscalls and shutil.which("strace") is None:
        sys.exit("--syscalls needs strace")
    if a.instructions and shutil.which("callgrind_control") is None:
        sys.exit("--instructions needs valgrind (callgrind_control)")
    engines = [free_port() for _ in range(2)]
    procs = [start(["engine-sim", "--time-scale", "0"], ep) for ep in engines]
    try:
        for ep in engines:
            wait_http(f"http://127.0.0.1:{ep}/health")
        with tempfile.TemporaryDirectory() as tmp:
            (c1, b1), (c2, b2) = calls(engines, n1, a, tmp), calls(engines, n2, a, tmp)
            what = "streamed" if a.stream else "non-streaming"
            print(f"router {' '.join(a.router_arg) or '(defaults)'}, {what} requests, "
                  f"{CONNS} connections; failed requests: {b1 + b2}")  # fmt: skip
            print(f"Python function calls per request: {(c2 - c1) / (n2 - n1):.1f}")
            if a.syscalls:
                s1 = syscalls(engines, n1, a, tmp)
                s2 = syscalls(engines, n2, a, tmp)
                per = {k: (s2.get(k, 0) - s1.get(k, 0)) / (n2 - n1) for k in s2}
                shown = {k: v for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05}
                print(
                    f"system calls per request: {sum(per.values()):.2f} ("
                    + ", ".join(f"{k} {v:.2f}" for k, v in shown.items())
                    + ")"
                )
            if a.instructions:
                per = instructions(engines, 400, a, tmp)
                print(f"instructions per request (user space): {per / 1000:.1f}k")
    finally:
        stop(procs)


if __name__ == "__main__":
    main()
