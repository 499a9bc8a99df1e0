"""How far vLLM's API server lags its engine: six decodes at once, straight to vLLM and through
`nexussched router`, each one's time to first byte and to end, and the API server's CPU per
engine step. Run with the vLLM tier's venv (what `make test-vllm` builds), beside whatever load
you want to see it under:

    .venv-vllm/bin/python tests/vllm_tier/frontend_lag.py [--model .venv-vllm/tiny-llama]
        [--rounds 2] [--tokens 1500] [--no-stream]

A first byte that comes seconds after the post, at about the time another decode ends, is the
lag the tier's tight-TPOT test met on a busy machine: the engine ran the decodes (its step records
show it) while the API server sent nothing, and read no new request, until its output burst
ended.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import aiohttp  # noqa: E402
from conftest import RedisProcess, ServerProc  # noqa: E402
from vllm_tier.tier import MODEL, TelemetryTail, VllmServer  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def six(url: str, tokens: int, stream: bool) -> list[tuple[float, float, int]]:
    """(first byte s, end s, token events) of six decodes posted together."""
    t0 = time.monotonic()

    async def one(session: aiohttp.ClientSession, i: int) -> tuple[float, float, int]:
        body = {"model": MODEL, "prompt": [1000 + i + 7 * k for k in range(100)],
                "max_tokens": tokens, "ignore_eos": True, "stream": stream}  # fmt: skip
        first, events = float("nan"), 0
        async with session.post(url + "/v1/completions", json=body) as r:
            async for data in r.content.iter_any():
                if first != first:
                    first = time.monotonic() - t0
                events += data.count(b"data: {")
        return first, time.monotonic() - t0, events

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        return list(await asyncio.gather(*(one(s, i) for i in range(6))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path(".venv-vllm/tiny-llama"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=1500)
    ap.add_argument("--no-stream", action="store_true")
    a = ap.parse_args()
    if not (a.model / "config.json").exists():
        sys.exit(f"no model at {a.model} (make .venv-vllm/tiny-llama/config.json builds it)")
    d = Path(tempfile.mkdtemp(prefix="vllm-lag-"))
    telemetry = d / "telemetry.jsonl"
    redis = RedisProcess()
    server = VllmServer(a.model, telemetry, redis.port, d / "vllm.log")
    router = None
    try:
        print(f"vLLM healthy after {server.wait_ready():.0f} s (log: {d / 'vllm.log'})")
        router = ServerProc(["router", "--backend", server.url, "--policy", "round_robin",
                             "--scrape-timeout", "10"])  # fmt: skip
        router.wait_ready(timeout=60)
        print(f"{'round':>5} {'via':<7}{'first byte s (6 decodes)':<44}{'end s':>8}{'steps':>7}"
              f"{'ms/step':>8}{'API CPU ms/step':>16}")  # fmt: skip
        for k in range(a.rounds):
            for via, url in (("direct", server.url), ("router", router.url)):
                tail, c0, t0 = TelemetryTail(telemetry), cpu_s(server.proc.pid), time.monotonic()
                res = asyncio.run(six(url, a.tokens, not a.no_stream))
                wall, steps = time.monotonic() - t0, len(tail.new())
                cpu = cpu_s(server.proc.pid) - c0
                firsts = " ".join(f"{f:.2f}" for f, _, _ in res)
                print(f"{k:>5} {via:<7}{firsts:<44}{max(e for _, e, _ in res):>8.2f}{steps:>7}"
                      f"{1000 * wall / max(1, steps):>8.1f}{1000 * cpu / max(1, steps):>16.2f}",
                      flush=True)  # fmt: skip
    finally:
        if router is not None:
            router.close()
        server.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
