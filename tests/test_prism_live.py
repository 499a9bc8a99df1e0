"""PRISM in the live router: telemetry from real engine-sim processes, replicas sharing state
through a real redis-server, requests over real HTTP."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer

from nexussched.eval.live_replicas import replay_replicas
from nexussched.router.compose import create_app
from nexussched.router.config import RouterSettings, backend_from_url
from nexussched.router.policies import Prism
from nexussched.router.prism_live import PrismDispatcher
from nexussched.router.prism_share import clock_key, model_key, share_key
from nexussched.traces import Trace, TraceRequest

MODEL = "sim-llama-3-8b"


async def start_router(urls, dispatcher) -> TestServer:
    settings = RouterSettings(
        backends=[backend_from_url(u) for u in urls], scrape_interval=0.1, health_interval=0.1
    )
    server = TestServer(create_app(settings, dispatcher))
    await server.start_server()
    return server


async def wait_healthy(server: TestServer, n: int) -> None:
    router = server.app["router"]
    for _ in range(200):
        if sum(b.healthy for b in router.backends) == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("backends did not come up")


async def complete(session, url: str, prompt: int, max_tokens: int, headers=None) -> int:
    # a distinct first token per call: engines cache prefixes, and these tests need every
    # prompt computed for the models to learn prefill speed
    first = random.randrange(20000, 30000)
    body = {"model": MODEL, "prompt": [first] + [1000 + k % 500 for k in range(prompt - 1)],
            "max_tokens": max_tokens, "ignore_eos": True}  # fmt: skip
    async with session.post(url + "/v1/completions", json=body, headers=headers or {}) as r:
        await r.read()
        return r.status


async def test_live_prism_learns_each_engine_from_its_telemetry(spawn):
    # a fast and a slow engine; engine-sim runs 20x faster than real time (telemetry stays in
    # engine seconds, which is all the models need)
    fast = spawn("engine-sim", "--profile", "h100", "--time-scale", "0.05", wait=False)
    slow = spawn("engine-sim", "--profile", "l4", "--time-scale", "0.05", wait=False)
    fast.wait_ready()
    slow.wait_ready()
    policy = Prism(late_binding=False)
    disp = PrismDispatcher(policy, telemetry_interval=0.05)
    server = await start_router([fast.url, slow.url], disp)
    try:
        await wait_healthy(server, 2)
        url = str(server.make_url("")).rstrip("/")
        async with aiohttp.ClientSession() as s:
            for _ in range(10):  # waves of mixed work, so both engines run prefill and decodes
                codes = await asyncio.gather(
                    *(complete(s, url, 300 + 150 * k, 24) for k in range(12))
                )
                assert set(codes) == {200}
                await asyncio.sleep(0.3)
        assert disp.feed is not None and disp.feed.records > 50
        st = [policy.engine_state(i) for i in range(2)]
        assert st[0]["steps_seen"] > 10 and st[1]["steps_seen"] > 10
        # what the two engines' own telemetry taught it: the l4 prefills far slower
        m0, m1 = policy.model(0), policy.model(1)
        assert m0.fitted and m1.fitted  # both past the prior, learned from their own steps
        assert m1.predict_step(prefill_tokens=2000) > 1.5 * m0.predict_step(prefill_tokens=2000)
    finally:
        await server.close()


async def test_two_live_replicas_share_clocks_counts_and_models_through_redis(spawn, redis_proc):
    engines = [spawn("engine-sim", "--time-scale", "0.05", wait=False) for _ in range(2)]
    for e in engines:
        e.wait_ready()
    urls = [e.url for e in engines]
    rurl = f"redis://127.0.0.1:{redis_proc.port}"
    disps = [
        PrismDispatcher(Prism(jitter=0.02, seed=k), redis=rurl, replica=f"r{k}", topic="live",
                        share_interval=0.05, telemetry_interval=0.05)
        for k in range(2)
    ]  # fmt: skip
    servers = [await start_router(urls, d) for d in disps]
    r = aioredis.Redis(port=redis_proc.port)
    try:
        for srv in servers:
            await wait_healthy(srv, 2)
        rurls = [str(srv.make_url("")).rstrip("/") for srv in servers]
        async with aiohttp.ClientSession() as s:
            for _ in range(5):
                codes = await asyncio.gather(
                    *(complete(s, rurls[k % 2], 200 + 60 * k, 16) for k in range(20))
                )
                assert set(codes) == {200}
        await asyncio.sleep(0.3)
        assert all(d.share is not None and d.share.syncs > 3 for d in disps)
        assert await r.exists(clock_key("live"))
        assert await r.exists(share_key("live", "r0")) and await r.exists(share_key("live", "r1"))
        # models learned from telemetry are published for the other replicas
        for d in disps:
            d.share.model_every = 0.0
        await asyncio.sleep(0.2)
        names = [b.name for b in servers[0].app["router"].backends]
        assert await r.exists(model_key("live", names[0]))
        # `nexussched eval --live URL1,URL2`: a trace replayed through both replicas in turn
        trace = Trace("t", [TraceRequest(i, i * 0.02, 100 + 10 * i, 8) for i in range(10)])
        sent = [sum(b.sent for b in srv.app["router"].backends) for srv in servers]
        out = await replay_replicas(",".join(rurls), trace, model=MODEL, slo_ttft=5.0,
                                    slo_tpot=1.0)  # fmt: skip
        assert [o.id for o in out] == list(range(10)) and all(o.completed for o in out)
        now = [sum(b.sent for b in srv.app["router"].backends) for srv in servers]
        assert [n - s for n, s in zip(now, sent, strict=True)] == [5, 5]
    finally:
        await r.aclose()
        for srv in servers:
            await srv.close()


async def test_live_shedding_answers_429_with_retry_after(spawn):
    eng = spawn("engine-sim", "--time-scale", "0.05")
    server = await start_router([eng.url], PrismDispatcher(Prism(shed=True)))
    try:
        await wait_healthy(server, 1)
        url = str(server.make_url("")).rstrip("/")
        body = {"model": MODEL, "prompt": [1000] * 30000, "max_tokens": 4}
        async with aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/completions", json=body,
                              headers={"x-slo-ttft-ms": "200"}) as r:  # fmt: skip
                assert r.status == 429
                assert int(r.headers["Retry-After"]) >= 1
                err = (await r.json())["error"]
                assert err["code"] == "slo_unattainable" and err["type"] == "rate_limit_error"
            # the same request with a TTFT SLO it can meet is served
            assert await complete(s, url, 300, 4, {"x-slo-ttft-ms": "20000"}) == 200
    finally:
        await server.close()


async def test_live_prism_learns_engine_sims_from_their_redis_streams(spawn, redis_proc):
    # engine-sim publishes like the vLLM plug-in (--redis-url); the router learns from the streams
    # and does not poll the same engines' GET /telemetry as well
    topic = "simplane"
    args = ["--time-scale", "0.05", "--redis-url", redis_proc.url, "--topic", topic]
    fast = spawn("engine-sim", "--profile", "h100", *args, wait=False)
    slow = spawn("engine-sim", "--profile", "l4", *args, wait=False)
    fast.wait_ready()
    slow.wait_ready()
    policy = Prism(late_binding=False)
    disp = PrismDispatcher(policy, redis=redis_proc.url, topic=topic, telemetry_interval=0.05)
    server = await start_router([fast.url, slow.url], disp)
    try:
        await wait_healthy(server, 2)
        url = str(server.make_url("")).rstrip("/")

        async def steps_ran(s, eng) -> int:
            async with s.get(eng.url + "/telemetry", params={"since": "0"}) as r:
                return len((await r.text()).splitlines())

        async with aiohttp.ClientSession() as s:
            # rounds until each engine has run over 50 steps (PRISM sends the slow l4 few
            # requests, and how many steps they take depends on the batching it sees)
            for rnd in range(40):
                codes = await asyncio.gather(
                    *(complete(s, url, 300 + 150 * k, 24) for k in range(12))
                )
                assert set(codes) == {200}
                await asyncio.sleep(0.3)
                if rnd >= 9 and min([await steps_ran(s, e) for e in (fast, slow)]) > 50:
                    break
        assert disp.streams is not None and disp.streams.covers(0) and disp.streams.covers(1)
        # every step each engine ran is taught exactly once: the HTTP feed (which may teach an
        # engine until its stream is found) and the stream never give the same step twice
        async with aiohttp.ClientSession() as s:
            for i, eng in enumerate((fast, slow)):
                ran = await steps_ran(s, eng)
                for _ in range(100):  # the stream is flushed every 0.1 s and read every 0.05 s
                    if policy.engine_state(i)["steps_seen"] >= ran:
                        break
                    await asyncio.sleep(0.1)
                # the l4 may get few requests once PRISM has learned it is slow: enough steps to
                # fit a model is what this needs, and every one of them taught exactly once
                need = policy.model(i).config.min_samples
                assert ran > need and policy.engine_state(i)["steps_seen"] == ran
                assert disp.streams.by_engine[i] >= ran // 2
        m0, m1 = policy.model(0), policy.model(1)
        assert m0.fitted and m1.fitted
        assert m1.predict_step(prefill_tokens=2000) > 1.5 * m0.predict_step(prefill_tokens=2000)
    finally:
        await server.close()
