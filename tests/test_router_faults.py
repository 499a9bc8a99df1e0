"""Issue 13's engine and router repros: a stalled engine (SIGSTOP), SIGTERM with long streams, a
restart with a fixed replica id, client disconnects. Engines and routers are real processes on
127.0.0.1; each test prints a `REPRO` line with its counts. No wall-time assertions: a client
that waits past its own timeout counts as hung."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal

import aiohttp
import pytest
from fastdeploy_harness import Tally, complete, dispatcher, router, wait_until

from nexussched.router.modes import SchedulerParams

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def _settings_kw(**kw) -> dict:
    """RouterSettings fields this code knows (the same test runs on older code)."""
    from nexussched.router.config import RouterSettings

    known = {f.name for f in dataclasses.fields(RouterSettings)}
    return {k: v for k, v in kw.items() if k in known}


@pytest.mark.parametrize("mode", ["policy", "global"])
async def test_engine_stalled_its_requests_are_stopped_not_left_hanging(
    mode, spawn, session, redis_proc
):
    """SIGSTOP of one of two engines: once it is out of rotation, its requests that had sent
    nothing go to the other engine and its open streams end with an SSE error event."""
    e1, e2 = await asyncio.gather(
        *(
            asyncio.to_thread(spawn, "engine-sim", "--time-scale", "1", "--max-num-seqs", "3")
            for _ in range(2)
        )
    )
    sched = None
    if mode == "global":
        sched = SchedulerParams(
            name="global", port=redis_proc.port, topic="t", keepalive=1.5, lease=1.0
        ).validate()
    r = await router(
        [e1.url, e2.url],
        sched,
        **_settings_kw(scrape_timeout=0.3, idle_timeout=60.0),
    )
    try:
        if mode == "global":
            assert await wait_until(lambda: len(dispatcher(r).workers) == 2)
        else:
            rr = r.app["router"]
            assert await wait_until(lambda: rr.registry.healthy_count() == 2)
        tasks = [asyncio.create_task(complete(session, r.url, 150, timeout=40)) for _ in range(16)]
        await asyncio.sleep(1.0)  # both engines stream, and both hold waiting requests
        os.kill(e1.proc.pid, signal.SIGSTOP)
        try:
            res = await asyncio.gather(*tasks)
        finally:
            os.kill(e1.proc.pid, signal.SIGCONT)
    finally:
        await r.stop()
    t = Tally.of(res, 150)
    print(t.line(f"engine-sigstop-16-{mode}"))
    assert t.bad == (0, 0, 0, 0), res
    assert t.served >= 8  # at least the other engine's share, plus what moved to it
    for x in res:
        if x.error:
            assert "left rotation" in x.error or "failed" in x.error, x.error
