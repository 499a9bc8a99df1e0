"""The router's data-plane cost, side by side: ours with 1 and N workers, and (when asked)
sglang-router, in front of the same fast engine-sims, driven by the same client, in one run.

For each router (ours once per policy in --policy: round_robin, least_load and prism by default,
prism as deployed with --mode prism): non-streaming requests per second (closed loop over C keep-alive connections),
the router's CPU seconds per 1,000 of them (its whole process tree, from /proc), and TTFT p50/p99
at S concurrent streams, next to the same streams sent straight to the engines, spread evenly
over them as the router spreads them (the added TTFT; --direct one: all to the first engine), with
streams per second and CPU ms per stream (the router's tree; in the straight-to-engine row, the
engines').
The load comes from a separate process (a lean HTTP/1.1 client on raw asyncio streams), so a
router's process measures only the router. engine-sim runs with --time-scale 0 (answers at once).

Two operating points for the streams (--stream-speed): `instant`, the engines above at
--time-scale 0, where the 64 closed-loop streams saturate the machine's cores and every CPU
microsecond the router takes is taken from the engines and the client on the same cores (what
this measures is the router's CPU per stream, not its latency); and `real`, a second set of
engine-sims stepping in real time at their profile's modelled speed (a100: a GPU's step times),
where the CPU is not the bottleneck, as in a cluster whose engines run on GPUs: the added TTFT
there is the hop's own latency. Each router runs the streams at both, side by side with the
same streams sent straight to the same engines.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_router_throughput.py [--workers 1,2]
        [--policy round_robin,least_load,prism] [--with-sglang] [--conns 64] [--streams 64]
        [--seconds 8]

--baseline PATH also runs the router of another checkout (e.g. a git worktree of main) on the same
engines and client, in the same run, for a before / after comparison.

--with-sglang installs sglang-router (SGLang Model Gateway's router, Rust) into its own venv
(.venv-sglang, made once) and runs it with the same policy; without the flag, or when the install
fails, its row says why it is missing.

Logging, like for like: ours writes an access line per request by default and sglang-router at
its default level (info) two lines per request; ours with --no-access-log and sglang-router at
--log-level warn write none. Both pairs are run (--quiet-policy, --sglang-log): compare rows with
the same logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from _procs import ROOT, free_port, start, stop, wait_http  # noqa: E402

SGLANG_ROUTER = "sglang-router==0.3.2"
MODEL = "sim-llama-3-8b"


# ---- the client (runs in its own process) --------------------------------------------------
def _request(host: str, port: int, max_tokens: int, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": "benchmark the router " * 4,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    ).encode()
    return (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> float | None:
    """Read one response body (content-length or chunked); the monotonic time its first SSE
    event arrived (None when it had none)."""
    low = head.lower()
    i = low.find(b"content-length:")
    if i >= 0:
        n = int(head[i + 15 : head.index(b"\r\n", i)])
        data = await reader.readexactly(n)
        return time.monotonic() if b"data:" in data else None
    first = None
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return first
        data = await reader.readexactly(size + 2)
        if first is None and b"data:" in data:
            first = time.monotonic()


async def _conn(host, port, reqs, rng, stop_at, t_warm, counts, ttfts) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < stop_at:
            req = reqs[rng.randrange(len(reqs))] if len(reqs) > 1 else reqs[0]
            t = time.monotonic()
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            first = await _read_body(reader, head)
            if t >= t_warm:
                counts[0 if status == 200 else 1] += 1
                if first is not None:
                    ttfts.append(first - t)
    finally:
        writer.close()


async def _load(
    ports: list[int],
    conns: int,
    seconds: float,
    warmup: float,
    tokens: int,
    stream: bool,
    vary: bool = False,
):
    """`conns` closed-loop connections, connection k to ports[k % len(ports)]. With `vary`, each
    request's max_tokens is drawn from tokens/2 .. 3*tokens/2 by the connection's own seeded RNG
    (the same draws in every run): streams of one length stay in lockstep, so a batch's arrivals
    and step boundaries line up differently in each run and TTFT measures that phase, not a hop."""
    host = "127.0.0.1"
    lengths = range(max(1, tokens // 2), tokens + tokens // 2 + 1) if vary else [tokens]
    reqs = [[_request(host, port, n, stream) for n in lengths] for port in ports]
    counts = [0, 0]
    ttfts: list[float] = []
    t_warm = time.monotonic() + warmup
    stop_at = t_warm + seconds
    n = len(ports)
    await asyncio.gather(
        *[
            _conn(
                host, ports[k % n], reqs[k % n], random.Random(k), stop_at, t_warm, counts, ttfts
            )  # fmt: skip
            for k in range(conns)
        ]
    )
    span = time.monotonic() - t_warm
    ttfts.sort()

    def q(p: float) -> float | None:
        return ttfts[min(len(ttfts) - 1, int(p * len(ttfts)))] if ttfts else None

    return {"ok": counts[0], "errors": counts[1], "rps": counts[0] / span,
            "ttft_p50": q(0.5), "ttft_p99": q(0.99)}  # fmt: skip


def client_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", help="port, or ports separated by commas (connections alternate)")
    for name in ("--conns", "--max-tokens"):
        p.add_argument(name, type=int)
    p.add_argument("--seconds", type=float)
    p.add_argument("--warmup", type=float)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--vary", action="store_true")
    a = p.parse_args(argv)
    ports = [int(x) for x in a.port.split(",")]
    res = asyncio.run(_load(ports, a.conns, a.seconds, a.warmup, a.max_tokens, a.stream, a.vary))
    print(json.dumps(res))


# ---- the driver ----------------------------------------------------------------------------
def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and all its descendants, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total


def run_client(
    port: int | list[int],
    a: argparse.Namespace,
    stream: bool,
    cpu_of: int | list[int] | None = None,
    vary: bool = False,
):
    """One load run (on several ports: connections alternate between them); with cpu_of, also
    the CPU those process trees used in the measured window."""
    ports = port if isinstance(port, list) else [port]
    pids = cpu_of if isinstance(cpu_of, list) else [cpu_of] if cpu_of is not None else []
    conns = a.streams if stream else a.conns
    tokens = a.stream_tokens if stream else a.max_tokens
    cmd = [sys.executable, __file__, "--client", "--port", ",".join(map(str, ports)), "--conns", str(conns),
           "--seconds", str(a.seconds), "--warmup", str(a.warmup), "--max-tokens", str(tokens)]  # fmt: skip
    if stream:
        cmd.append("--stream")
    if vary:
        cmd.append("--vary")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    cpu = None
    if pids:
        time.sleep(a.warmup + 0.2)  # the client's clock started a little after ours
        c0 = sum(tree_cpu(p) for p in pids)
        time.sleep(a.seconds - 0.2)
        cpu = sum(tree_cpu(p) for p in pids) - c0
    out, _ = proc.communicate(timeout=a.seconds + a.warmup + 120)
    res = json.loads(out)
    if cpu is not None:
        res["cpu_per_1k"] = cpu / max(1, res["ok"]) * 1000.0
    return res


def sglang_python(a: argparse.Namespace) -> tuple[Path | None, str]:
    """The venv's python with sglang-router installed, or None and why not."""
    if not a.with_sglang:
        return None, "not asked (--with-sglang)"
    venv = Path(a.sglang_venv)
    py = venv / "bin" / "python"
    if not (venv / "bin" / "sglang-router").exists():
        try:
            if not py.exists():
                subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(py), "-m", "pip", "install", "-q", SGLANG_ROUTER],
                check=True,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except (subprocess.SubprocessError, OSError) as e:
            err = getattr(e, "stderr", "") or str(e)
            return None, f"install of {SGLANG_ROUTER} failed: {err.strip().splitlines()[-1:]}"
    return py, ""


def start_sglang(
    py: Path, engines: list[int], port: int, policy: str, log_level: str
) -> subprocess.Popen:
    """sglang-router at `log_level`: at `info`, its default, it logs two lines per request (as
    ours writes its access line, on by default); at `warn`, none (as ours with --no-access-log).
    Its log goes to a file, as ours does."""
    urls = [f"http://127.0.0.1:{p}" for p in engines]
    return subprocess.Popen(
        [str(py.parent / "sglang-router"), "launch", "--host", "127.0.0.1", "--port", str(port),
         "--policy", policy, "--log-level", log_level, "--worker-urls", *urls],
        stdout=tempfile.TemporaryFile(),
        stderr=tempfile.TemporaryFile(),
    )  # fmt: skip


def wait_ready(port: int, timeout: float = 60.0) -> None:
    """Until a completion goes through (a router may answer /health before its workers)."""
    import urllib.request

    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 1}).encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"router on port {port} did not serve within {timeout:.0f} s")


def backend_args(ports: list[int]) -> list[str]:
    return [x for ep in ports for x in ("--backend", f"http://127.0.0.1:{ep}")]


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> None:
    if "--client" in sys.argv:
        client_main([x for x in sys.argv[1:] if x != "--client"])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=int, default=2, help="engine-sims behind every router")
    p.add_argument("--conns", type=int, default=64, help="connections, non-streaming part")
    p.add_argument("--streams", type=int, default=64, help="concurrent streams, TTFT part")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--stream-tokens", type=int, default=16)
    p.add_argument(
        "--policy",
        default="round_robin,least_load,prism",
        help="comma-separated: ours runs each (prism as deployed: --mode prism, learning from "
        "the engines' telemetry); sglang-router runs the first",
    )
    p.add_argument("--workers", default="1,2", help="our router's worker counts to run")
    p.add_argument("--with-sglang", action="store_true")
    p.add_argument("--sglang-venv", default=str(ROOT / ".venv-sglang"))
    p.add_argument("--router-arg", action="append", default=[], help="extra flag for ours")
    p.add_argument(
        "--quiet-policy",
        default="round_robin",
        help="also run ours with this policy and --no-access-log at each worker count (like for "
        "like with sglang-router at --log-level warn); empty: not",
    )
    p.add_argument(
        "--sglang-log",
        default="info,warn",
        help="sglang-router's log levels to run, a row each: info (its default: two lines per "
        "request) is like for like with ours as deployed (an access line per request), warn "
        "(no request lines) with ours --no-access-log",
    )
    p.add_argument(
        "--baseline",
        metavar="PATH",
        help="another checkout of nexussched whose router also runs (rows marked 'baseline')",
    )
    p.add_argument(
        "--direct",
        choices=("spread", "one"),
        default="spread",
        help="the straight-to-engine streams the added TTFT is taken against: spread evenly over "
        "every engine, as the router spreads them (default), or all to the first engine (the "
        "figures before 2026-12-05: a router that spreads then gains the second engine's speed "
        "and its added TTFT can read below zero)",
    )
    p.add_argument(
        "--direct-each",
        action="store_true",
        help="measure the streams straight to the engine again just before each router's streams "
        "(its added p50 is then against that run, not the round's first: the machine's speed "
        "drifts within a round)",
    )
    p.add_argument(
        "--stream-speed",
        default="instant,real",
        help="the engines the streams run against, comma-separated: instant (--time-scale 0, "
        "the cores saturated) and/or real (engine-sims stepping in real time at --real-profile's "
        "speed, another set of --engines)",
    )
    p.add_argument(
        "--real-profile", default="a100", help="engine-sim profile for --stream-speed real"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every router this many times, in a rotated order each round (the machine's "
        "speed drifts between minutes); each row gives the median and the range over rounds",
    )
    a = p.parse_args()
    policies = [x for x in a.policy.split(",") if x]
    speeds = [x for x in a.stream_speed.split(",") if x]
    if not set(speeds) <= {"instant", "real"}:
        p.error(f"--stream-speed takes instant and/or real, got {a.stream_speed!r}")
    engines = [free_port() for _ in range(a.engines)]
    procs = [start(["engine-sim", "--time-scale", "0"], ep) for ep in engines]
    # the real-speed engines: their step times are the profile's, not the machine's
    real = [free_port() for _ in range(a.engines)] if "real" in speeds else []
    real_procs = [
        start(["engine-sim", "--time-scale", "1", "--profile", a.real_profile], ep) for ep in real
    ]
    trees = [("nexussched", ROOT)]
    if a.baseline:
        trees.insert(0, ("baseline", Path(a.baseline).resolve()))
    runs = [(pol, []) for pol in policies]
    if a.quiet_policy:
        runs.append((a.quiet_policy, ["--no-access-log"]))
    # (row name, how to start it in front of the given engines): ours per policy x workers x
    # tree, then sglang-router per level
    configs: list[tuple[str, Callable[[int, list[int]], subprocess.Popen]]] = []
    for pol, extra in runs:
        mode = ["--mode", "prism"] if pol == "prism" else []
        quiet = ", no access log" if extra else ""
        for w in [int(x) for x in a.workers.split(",") if x]:
            for label, root in trees:
                argv = [*mode, "--policy", pol, "--workers", str(w), *extra, *a.router_arg]
                name = f"{label} {pol}, {w} worker{'s' if w > 1 else ''}{quiet}"
                configs.append((name, lambda port, eps, argv=argv, root=root: start(
                    ["router", *backend_args(eps), *argv], port, root)))  # fmt: skip
    py, why = sglang_python(a)
    if py is not None:
        for level in [x for x in a.sglang_log.split(",") if x]:
            configs.append(
                (
                    f"{SGLANG_ROUTER}, log {level}",
                    lambda port, eps, level=level: start_sglang(py, eps, port, policies[0], level),
                )
            )
    results: dict[str, list[dict]] = {name: [] for name, _ in configs}
    reals: dict[str, list[dict]] = {name: [] for name, _ in configs}
    directs: list[dict] = []
    real_directs: list[dict] = []

    def straight(eps: list[int], ps: list[subprocess.Popen], vary: bool) -> dict:
        """The streams sent straight to these engines (--direct: spread, or the first only)."""
        if a.direct == "one":
            return run_client(eps[0], a, True, ps[0].pid, vary=vary)
        return run_client(eps, a, True, [p.pid for p in ps], vary=vary)

    def direct() -> dict:
        return straight(engines, procs, False)

    def real_direct() -> dict:
        return straight(real, real_procs, True)

    try:
        for ep in engines + real:
            wait_http(f"http://127.0.0.1:{ep}/health")
        for k in range(a.rounds):
            if "instant" in speeds:
                directs.append(direct())
            if real:
                real_directs.append(real_direct())
            order = configs[k % len(configs) :] + configs[: k % len(configs)]
            for name, launch in order:
                rp = free_port()
                r = launch(rp, engines)
                try:
                    wait_ready(rp)
                    res = run_client(rp, a, stream=False, cpu_of=r.pid)
                    if "instant" in speeds:
                        if a.direct_each:
                            directs.append(direct())
                        res["stream"] = run_client(rp, a, stream=True, cpu_of=r.pid)
                        res["stream"]["direct_p50"] = directs[-1]["ttft_p50"]
                    results[name].append(res)
                finally:
                    stop([r])
                if real:
                    rp = free_port()
                    r = launch(rp, real)
                    try:
                        wait_ready(rp)
                        if a.direct_each:
                            real_directs.append(real_direct())
                        res = run_client(rp, a, stream=True, cpu_of=r.pid, vary=True)
                        res["direct_p50"] = real_directs[-1]["ttft_p50"]
                        res["direct_p99"] = real_directs[-1]["ttft_p99"]
                        reals[name].append(res)
                    finally:
                        stop([r])
                if a.rounds > 1:
                    print(f"round {k + 1}/{a.rounds}: {name} done", file=sys.stderr, flush=True)
    finally:
        stop(procs + real_procs)
    load = os.getloadavg()[0]
    print(
        f"{a.engines} engine-sims (--time-scale 0), policies {a.policy}; non-streaming: "
        f"max_tokens={a.max_tokens}, {a.conns} keep-alive connections; streams: "
        f"{a.stream_tokens} tokens, {a.streams} concurrent; {a.seconds:g} s after "
        f"{a.warmup:g} s warm-up each; {a.rounds} round(s); {os.cpu_count()} CPUs, load "
        f"average {load:.1f}"
    )
    many = a.rounds > 1
    if many:
        print("median over rounds [min - max]; added p50: the median of each round's router p50")
        print(
            "less the straight-to-engine p50 measured just before it"
            if a.direct_each
            else "less that round's straight-to-engine p50"
        )

    def cell(vals: list[float | None], spec: str, width: int) -> str:
        vs = sorted(v for v in vals if v is not None)
        if not vs:
            return f"{'-':>{width}}"
        med = statistics.median(vs)
        text = format(med, spec)
        if many:
            text += f" [{format(vs[0], spec)}-{format(vs[-1], spec)}]"
        return f"{text:>{width}}"

    w1, w2, w3 = (20, 22, 22) if many else (8, 14, 13)
    print(
        f"{'router':<50}{'req/s':>{w1}}{'errors':>8}{'CPU s/1k req':>{w2}}{'TTFT p50 ms':>{w3}}"
        f"{'TTFT p99 ms':>{w3}}{'added p50 ms':>{w3}}{'streams/s':>{w1}}{'CPU ms/stream':>{w2}}"
    )
    direct_name = (
        "straight to one engine (streams)"
        if a.direct == "one"
        else f"straight to the {a.engines} engines (streams)"
    )
    ms = [ms_of(d["ttft_p50"]) for d in directs]
    m99 = [ms_of(d["ttft_p99"]) for d in directs]
    errs = sum(d["errors"] for d in directs)
    print(
        f"{direct_name:<50}{'-':>{w1}}{errs:>8}{'-':>{w2}}"
        f"{cell(ms, '.2f', w3)}{cell(m99, '.2f', w3)}{'-':>{w3}}"
        f"{cell([d['rps'] for d in directs], '.0f', w1)}"
        f"{cell([d.get('cpu_per_1k') for d in directs], '.3f', w2)}"
    )
    for name, _ in configs:
        rs = results[name]
        st = [r.get("stream", _NO_STREAM) for r in rs]
        print(
            f"{name:<50}{cell([r['rps'] for r in rs], '.0f', w1)}"
            f"{sum(r['errors'] + s['errors'] for r, s in zip(rs, st, strict=True)):>8}"
            f"{cell([r.get('cpu_per_1k') for r in rs], '.3f', w2)}"
            f"{cell([ms_of(s['ttft_p50']) for s in st], '.2f', w3)}"
            f"{cell([ms_of(s['ttft_p99']) for s in st], '.2f', w3)}"
            f"{cell([added_ms(s, 'ttft_p50', 'direct_p50') for s in st], '.2f', w3)}"
            f"{cell([s['rps'] for s in st], '.0f', w1)}"
            f"{cell([s.get('cpu_per_1k') for s in st], '.3f', w2)}"
        )
    if real:
        print()
        print(
            f"streams at real speed: {a.engines} {a.real_profile} engine-sims stepping in real "
            f"time (--time-scale 1), {a.streams} concurrent streams of {a.stream_tokens // 2}-"
            f"{a.stream_tokens + a.stream_tokens // 2} tokens (drawn per request); "
            "added: the router's p50 (p99) less the straight-to-engine p50 (p99)"
            + (" measured just before it" if a.direct_each else " of its round")
        )
        print(
            f"{'router':<50}{'TTFT p50 ms':>{w3}}{'TTFT p99 ms':>{w3}}{'added p50 ms':>{w3}}"
            f"{'added p99 ms':>{w3}}{'streams/s':>{w1}}{'errors':>8}{'CPU ms/stream':>{w2}}"
        )
        dm = [ms_of(d["ttft_p50"]) for d in real_directs]
        d99 = [ms_of(d["ttft_p99"]) for d in real_directs]
        print(
            f"{direct_name:<50}{cell(dm, '.2f', w3)}{cell(d99, '.2f', w3)}{'-':>{w3}}{'-':>{w3}}"
            f"{cell([d['rps'] for d in real_directs], '.0f', w1)}"
            f"{sum(d['errors'] for d in real_directs):>8}"
            f"{cell([d.get('cpu_per_1k') for d in real_directs], '.3f', w2)}"
        )
        for name, _ in configs:
            rs = reals[name]
            print(
                f"{name:<50}{cell([ms_of(r['ttft_p50']) for r in rs], '.2f', w3)}"
                f"{cell([ms_of(r['ttft_p99']) for r in rs], '.2f', w3)}"
                f"{cell([added_ms(r, 'ttft_p50', 'direct_p50') for r in rs], '.2f', w3)}"
                f"{cell([added_ms(r, 'ttft_p99', 'direct_p99') for r in rs], '.2f', w3)}"
                f"{cell([r['rps'] for r in rs], '.0f', w1)}{sum(r['errors'] for r in rs):>8}"
                f"{cell([r.get('cpu_per_1k') for r in rs], '.3f', w2)}"
            )
    if py is None:
        print(f"{'sglang-router':<50}  skipped: {why}")


_NO_STREAM = {"ttft_p50": None, "ttft_p99": None, "rps": None, "errors": 0}


def ms_of(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def added_ms(r: dict, key: str, base: str) -> float | None:
    """The router's figure less the straight-to-engine one, ms (None when either is missing)."""
    if r.get(key) is None or r.get(base) is None:
        return None
    return (r[key] - r[base]) * 1e3


if __name__ == "__main__":
    main()
