"""engine-sim keeps its own clock: a starved event loop does not make the engine slower."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from nexussched.localproc import free_port
from nexussched.sim.server import EngineServer
from nexussched.sim.server_config import ServerConfig

MODEL = "sim-llama-3-8b"


async def _stream(s: aiohttp.ClientSession, url: str, prompt: list[int], tokens: int) -> int:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
            "stream": True}  # fmt: skip
    async with s.post(url + "/v1/completions", json=body) as r:
        await r.read()
        return r.status


async def test_busy_steps_run_back_to_back_on_the_engine_clock_when_the_loop_is_late():
    server = EngineServer(ServerConfig(profile="a100", name="clk").validate())
    runner = web.AppRunner(server.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    stop = asyncio.Event()

    async def starve() -> None:
        # the process loses the CPU for 30 ms at a time, as on a loaded machine
        while not stop.is_set():
            await asyncio.sleep(0.02)
            time.sleep(0.03)

    try:
        async with aiohttp.ClientSession() as s:
            hog = asyncio.create_task(starve())
            first = asyncio.create_task(_stream(s, url, [1] * 300, 80))
            await asyncio.sleep(0.2)
            sent = server.now()  # the second request arrives no earlier than this
            second = await _stream(s, url, [2] * 200, 10)
            assert await first == 200 and second == 200
            stop.set()
            await hog
    finally:
        await runner.cleanup()
    recs = list(server._tele)
    assert sum(r.num_decodes for r in recs) == 79 + 9
    # a busy engine's steps follow each other without gaps on its clock...
    busy = [(a, b) for a, b in zip(recs, recs[1:], strict=False) if b.num_decodes > 0]
    assert len(busy) > 50
    assert all(abs(b.t - (a.t + a.duration)) < 1e-9 or b.t > a.t + a.duration for a, b in busy)
    gaps = sum(b.t - (a.t + a.duration) for a, b in busy)
    assert server.lag_recovered > 0.1  # it was late, and did not lose that time...
    assert gaps < 0.5 * server.lag_recovered  # ...only what waiting for an arrival costs
    # ...and never starts a step before a request in it arrived
    prefill2 = next(r for r in recs if any(c == 200 for c, _ in r.prefill_chunks))
    assert prefill2.t >= sent
