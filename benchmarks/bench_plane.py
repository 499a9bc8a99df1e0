"""The Redis state plane: Redis operations per request in `global` mode, and the steady request
rate one Redis sustains for the plane.

Both parts start their own redis-server (free port, no persistence, temp dir).

ops:  two router replicas in `global` mode, each driving one engine-sim backend, serve streaming
      requests that all arrive at replica A (skewed: B steals). Redis's INFO commandstats counts
      every command, including those run inside the Lua scripts; the client side counts its
      round trips (a pipeline or a script call is one).
rate: the plane alone with a null engine: P processes, each one replica with one node, run
      closed loops (enqueue -> claim with lease -> push the answer with fin -> origin reads it)
      for D seconds. Printed: completed requests/s, Redis CPU per request, and the rate at which
      one Redis core would saturate (requests/s / Redis CPU share).

  PYTHONPATH=. python benchmarks/bench_plane.py            # both parts
  PYTHONPATH=. python benchmarks/bench_plane.py --part rate --procs 1,2,4 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import redis  # noqa: E402
from aiohttp import web  # noqa: E402

from nexussched.localproc import LocalRedis, free_port  # noqa: E402
from nexussched.plane import Chunk, Plane, RedisAddress, lane_of, shard_of  # noqa: E402


# ---- a throwaway redis-server -----------------------------------------------------------------
class RedisServer(LocalRedis):
    def __init__(self) -> None:
        super().__init__(prefix="nxs-bench-redis-")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


def commandstats(r: redis.Redis) -> dict[str, int]:
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in r.info("commandstats").items()}


def redis_cpu(r: redis.Redis) -> float:
    i = r.info("cpu")
    return float(i["used_cpu_sys"]) + float(i["used_cpu_user"])


# ---- part 1: operations per request in global mode ----------------------------------------------
class _Host:
    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> _Host:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self


async def ops_per_request(n: int, max_tokens: int, time_scale: float, stream: bool) -> None:
    from redis.asyncio.client import Pipeline
    from redis.asyncio.client import Redis as AsyncRedis

    from nexussched.router.compose import create_app
    from nexussched.router.config import BackendSpec, RouterSettings
    from nexussched.router.modes import SchedulerParams
    from nexussched.sim.server import EngineServer, ServerConfig

    trips: Counter = Counter()
    orig_exec = AsyncRedis.execute_command
    orig_pipe = Pipeline.execute

    async def counted(self, *args, **kw):
        trips[str(args[0]).lower()] += 1
        return await orig_exec(self, *args, **kw)

    async def counted_pipe(self, *a, **kw):
        trips["<pipeline>"] += 1
        return await orig_pipe(self, *a, **kw)

    AsyncRedis.execute_command = counted  # type: ignore[method-assign]
    Pipeline.execute = counted_pipe  # type: ignore[method-assign]
    rs = RedisServer()
    hosts: list[_Host] = []
    try:
        engines = [
            await _Host(
                EngineServer(ServerConfig(time_scale=time_scale, max_num_seqs=8)).app()
            ).start()
            for _ in range(2)
        ]
        hosts += engines
        reps = []
        for e in engines:
            p = SchedulerParams(name="global", port=rs.port, topic="bench").validate()
            s = RouterSettings(
                backends=[BackendSpec(url=e.url, name=f"e{e.port}")],
                mode="global",
                mode_args={"params": p},
                scrape_interval=0.1,
            )
            h = _Host(create_app(s))
            s.port = h.port
            reps.append(await h.start())
        hosts += reps
        await asyncio.sleep(1.0)  # nodes registered, probes done
        r = rs.client()
        r.config_resetstat()
        trips.clear()
        t0 = time.monotonic()
        body = {
            "model": "sim-llama-3-8b",
            "prompt": "x " * 400,
            "max_tokens": max_tokens,
            "stream": stream,
            "ignore_eos": True,
        }
        async with aiohttp.ClientSession() as sess:

            async def one() -> int:
                async with sess.post(reps[0].url + "/v1/completions", json=body) as resp:
                    if not stream:
                        data = await resp.json()
                        return data["usage"]["completion_tokens"] if resp.status == 200 else 0
                    data = await resp.read()
                    return data.count(b"data: ") - 1  # minus [DONE]

            got = await asyncio.gather(*(one() for _ in range(n)))
            view = await (await sess.get(reps[0].url + "/scheduler")).json()
        wall = time.monotonic() - t0
        stats = commandstats(r)
        r.close()
        total = sum(stats.values())
        evals = stats.get("evalsha", 0) + stats.get("eval", 0)
        rtt = sum(trips.values())
        kind = "streaming" if stream else "non-streaming"
        print(
            f"\nops per request, global mode: {n} {kind} requests x {max_tokens} tokens, "
            f"all sent to replica A of 2 (1 engine each), {wall:.1f} s"
        )
        print(
            f"  completed {sum(1 for g in got if g == max_tokens)}/{n}, "
            f"stolen {view['stats'].get('stolen', 0)}, plane stats {view['stats']}"
        )
        print(f"  {'Redis commands (incl. inside Lua)':40s} {total:8d}  {total / n:8.1f} / request")
        print(f"  {'  of which script calls (EVALSHA)':40s} {evals:8d}  {evals / n:8.1f} / request")
        print(f"  {'client round trips':40s} {rtt:8d}  {rtt / n:8.1f} / request")
        print("  by command (calls / request):")
        for k, v in sorted(stats.items(), key=lambda kv: -kv[1]):
            print(f"    {k:22s} {v:8d} {v / n:8.2f}")
        print("  client round trips by command (per request):")
        for k, v in trips.most_common():
            print(f"    {k:22s} {v:8d} {v / n:8.2f}")
    finally:
        for h in reversed(hosts):
            await h.runner.cleanup()
        AsyncRedis.execute_command = orig_exec  # type: ignore[method-assign]
        Pipeline.execute = orig_pipe  # type: ignore[method-assign]
        rs.stop()


# ---- part 2: sustained request rate through the plane (null engine) -----------------------------
async def _replica(port: int, idx: int, procs: int, seconds: float, conc: int, q: mp.Queue) -> None:
    plane = await Plane.open(RedisAddress(port=port), topic="rate", shards=1, resp_ttl_s=60)
    me = f"node{idx}"
    replica = f"rep{idx}"
    shard = shard_of(me, 1)
    lanes = 2
    await plane.registry.own(me, replica, 30)
    waiting: dict[str, asyncio.Future] = {}
    done = 0
    stop = time.monotonic() + seconds
    lease = 10.0

    async def reader(lane: int) -> None:
        while True:
            for ch in await plane.responses.read(replica, lane, 200, 0.2):
                f = waiting.pop(ch.rid, None)
                if f is not None and not f.done():
                    f.set_result(None)

    async def worker() -> None:
        worker_id = f"{replica}/{me}"
        victims = [f"node{j}" for j in range(procs) if j != idx]
        k = 0
        while True:
            got = await plane.queues.claim(me, shard, 8, worker_id, lease)
            if not got and victims:
                v = victims[k % len(victims)]
                k += 1
                got = await plane.queues.claim(
                    me, shard, 8, worker_id, lease, victim=v, n_steal=2, min_score=3
                )
            if not got:
                await plane.client.blpop([plane.keys.bell(me)], timeout=0.05)
                continue
            for c in got:
                await plane.responses.push(
                    c, worker_id, [Chunk(c.rid, c.attempt, 0, ["ok"])], True, lease
                )

    async def origin(j: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop:
            rid = f"{replica}-{j}-{n}"
            n += 1
            f = asyncio.get_running_loop().create_future()
            waiting[rid] = f
            await plane.queues.enqueue(
                me, shard, rid, '{"prompt_tokens": 100}', replica, lane_of(rid, lanes), 60
            )
            await f
            done += 1

    bg = [asyncio.create_task(reader(i)) for i in range(lanes)]
    bg += [asyncio.create_task(worker()) for _ in range(2)]
    await asyncio.gather(*(origin(j) for j in range(conc)))
    q.put(done)
    # keep serving (others may have queued work here or stolen from here) until all are done
    await asyncio.sleep(max(0.0, seconds * 0.5))
    for t in bg:
        t.cancel()
    await plane.close()


def _replica_proc(port: int, idx: int, procs: int, seconds: float, conc: int, q) -> None:
    asyncio.run(_replica(port, idx, procs, seconds, conc, q))


def rate(procs_list: list[int], seconds: float, conc: int) -> None:
    print(
        f"\nsustained rate through the plane (null engine, closed loop, {conc} in flight "
        f"per process, {seconds:g} s; one request = enqueue, claim+lease, push+fin, read)"
    )
    hdr = (
        f"  {'procs':>5s} {'req/s':>9s} {'cmds/req':>9s} {'redis_cpu':>9s} "
        f"{'cpu_ms/req':>10s} {'ceiling req/s':>13s}"
    )
    print(hdr)
    for procs in procs_list:
        rs = RedisServer()
        try:
            r = rs.client()
            r.config_resetstat()
            c0 = redis_cpu(r)
            q: mp.Queue = mp.Queue()
            ps = [
                mp.Process(target=_replica_proc, args=(rs.port, i, procs, seconds, conc, q))
                for i in range(procs)
            ]
            t0 = time.monotonic()
            for p in ps:
                p.start()
            total = sum(q.get() for _ in ps)
            wall = time.monotonic() - t0
            for p in ps:
                p.join()
            cpu = redis_cpu(r) - c0
            cmds = sum(commandstats(r).values())
            r.close()
        finally:
            rs.stop()
        rps = total / seconds
        share = cpu / wall
        per = cpu / max(1, total)
        print(
            f"  {procs:5d} {rps:9.0f} {cmds / max(1, total):9.1f} {share:9.2f} "
            f"{per * 1e3:10.3f} {1.0 / per if per else 0:13.0f}"
        )
    print(
        "  ceiling = requests/s one fully busy Redis core would carry at this CPU cost per "
        "request (this machine's cores are shared with the client processes)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["ops", "rate", "both"], default="both")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--time-scale", type=float, default=0.25)
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    a = ap.parse_args()
    if a.part in ("ops", "both"):
        for stream in (False, True):
            asyncio.run(ops_per_request(a.requests, a.max_tokens, a.time_scale, stream))
    if a.part in ("rate", "both"):
        rate([int(x) for x in a.procs.split(",")], a.seconds, a.concurrency)


if __name__ == "__main__":
    main()
