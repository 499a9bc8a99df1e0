"""Sustained non-streaming throughput through the router, with a fast engine-sim behind it.

The load comes from a separate process (a lean keep-alive HTTP/1.1 client on raw asyncio streams,
closed loop over C connections), so the router's process measures only the router. Prints requests
per second through the router and, for reference, straight to the engine-sim.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_router_throughput.py [--conns 64] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

sys.path.insert(0, __import__("os").path.dirname(__file__))
from _procs import free_port, start, stop, wait_http  # noqa: E402


async def _conn(
    host: str, port: int, req: bytes, stop_at: float, t_warm: float, counts: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            now = time.monotonic()
            if now >= stop_at:
                return
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            i = head.lower().find(b"content-length:")
            n = int(head[i + 15 : head.index(b"\r\n", i)])
            await reader.readexactly(n)
            if time.monotonic() >= t_warm:
                counts[0 if status == 200 else 1] += 1
    finally:
        writer.close()


async def _load(
    host: str, port: int, conns: int, seconds: float, warmup: float, max_tokens: int
) -> dict:
    body = json.dumps(
        {
            "model": "sim-llama-3-8b",
            "prompt": "benchmark the router " * 4,
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
    ).encode()
    req = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    counts = [0, 0]
    t0 = time.monotonic()
    t_warm = t0 + warmup
    stop_at = t_warm + seconds
    await asyncio.gather(*[_conn(host, port, req, stop_at, t_warm, counts) for _ in range(conns)])
    span = time.monotonic() - t_warm
    return {"ok": counts[0], "errors": counts[1], "rps": counts[0] / span}


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int)
    p.add_argument("--conns", type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--warmup", type=float)
    p.add_argument("--max-tokens", type=int)
    a = p.parse_args(argv)
    print(
        json.dumps(
            asyncio.run(_load("127.0.0.1", a.port, a.conns, a.seconds, a.warmup, a.max_tokens))
        )
    )


def run_client(port: int, a: argparse.Namespace) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            "--port",
            str(port),
            "--conns",
            str(a.conns),
            "--seconds",
            str(a.seconds),
            "--warmup",
            str(a.warmup),
            "--max-tokens",
            str(a.max_tokens),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    if "--client" in sys.argv:
        client_main([x for x in sys.argv[1:] if x != "--client"])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--policy", default="least_load")
    a = p.parse_args()
    ep, rp = free_port(), free_port()
    procs = [start(["engine-sim", "--time-scale", "0"], ep)]
    try:
        wait_http(f"http://127.0.0.1:{ep}/health")
        procs.append(
            start(["router", "--backend", f"http://127.0.0.1:{ep}", "--policy", a.policy], rp)
        )
        wait_http(f"http://127.0.0.1:{rp}/health")
        direct = run_client(ep, a)
        routed = run_client(rp, a)
    finally:
        stop(procs)
    print(
        f"non-streaming completions, max_tokens={a.max_tokens}, {a.conns} keep-alive "
        f"connections, {a.seconds:g} s after {a.warmup:g} s warm-up, fast engine-sim "
        f"(--time-scale 0), policy {a.policy}"
    )
    print(f"{'path':<22}{'requests/s':>12}{'ok':>10}{'errors':>8}")
    for name, r in (("straight to engine", direct), ("through router", routed)):
        print(f"{name:<22}{r['rps']:>12.0f}{r['ok']:>10}{r['errors']:>8}")


if __name__ == "__main__":
    main()
