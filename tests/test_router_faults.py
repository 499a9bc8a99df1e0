"""Issue 13's engine and router repros: a stalled engine (SIGSTOP), SIGTERM with long streams, a
restart with a fixed replica id, client disconnects. Engines and routers are real processes on
127.0.0.1; each test prints a `REPRO` line with its counts. No wall-time assertions: a client
that waits past its own timeout counts as hung."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal

import pytest
from fastdeploy_harness import Tally, complete, dispatcher, router, wait_until

from nexussched.router.modes import SchedulerParams

pytestmark = pytest.mark.timeout(150)


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


async def test_sigterm_drains_then_ends_streams_with_an_error_event(spawn, session):
    """SIGTERM: short streams finish within --drain-timeout; longer ones then get an SSE error
    event (the openai client raises on it) instead of a cut connection."""
    e = await asyncio.to_thread(spawn, "engine-sim", "--time-scale", "1")
    r = await asyncio.to_thread(
        spawn,
        "router",
        "--backend",
        e.url,
        "--drain-timeout",
        "2",
        "--scrape-interval",
        "0.05",
        "--health-interval",
        "0.1",
    )

    async def healthy() -> bool:
        async with session.get(r.url + "/health") as resp:
            return resp.status == 200

    assert await wait_until(healthy, timeout=20)
    long = [asyncio.create_task(complete(session, r.url, 3000, timeout=60)) for _ in range(8)]
    short = [asyncio.create_task(complete(session, r.url, 20, timeout=60)) for _ in range(4)]
    await asyncio.sleep(0.5)  # all streaming
    r.proc.send_signal(signal.SIGTERM)
    res_long = await asyncio.gather(*long)
    res_short = await asyncio.gather(*short)
    await asyncio.to_thread(r.proc.wait, 30)
    t = Tally.of(res_long + res_short, 20)
    told = sum(1 for x in res_long if x.error and "shut down" in x.error)  # an SSE error event
    cut = len(res_long) - told  # ended some other way: a cut connection
    print(
        f"REPRO sigterm-8-long-4-short: long_cut={cut} long_told={told} short_served="
        f"{sum(1 for x in res_short if x.done and len(x.tokens) == 20)} hung={t.hung}"
    )
    assert cut == 0 and told == 8, res_long
    assert all(x.done and len(x.tokens) == 20 for x in res_short), res_short
    assert r.proc.returncode == 0


async def test_sigterm_with_a_hung_engine_ends_its_streams_instead_of_waiting(spawn, session):
    """SIGTERM while the only engine is hung (SIGSTOP: it accepts connections, answers nothing):
    the drain checks the engines it waits on, takes the hung one out of rotation and stops its
    streams, so the router exits long before --drain-timeout (was: it waited on streams that could
    never finish, for the whole drain timeout or until three scrapes timed out). Scrapes are rare
    here so that only the drain's check can find the engine hung."""
    e = await asyncio.to_thread(spawn, "engine-sim", "--time-scale", "1")
    r = await asyncio.to_thread(
        spawn, "router", "--backend", e.url, "--drain-timeout", "600",
        "--scrape-interval", "600", "--health-interval", "0.1",
    )  # fmt: skip

    async def healthy() -> bool:
        async with session.get(r.url + "/health") as resp:
            return resp.status == 200

    assert await wait_until(healthy, timeout=20)
    streams = [asyncio.create_task(complete(session, r.url, 3000, timeout=120)) for _ in range(3)]
    await asyncio.sleep(0.5)  # all streaming
    os.kill(e.proc.pid, signal.SIGSTOP)
    try:
        r.proc.send_signal(signal.SIGTERM)
        res = await asyncio.gather(*streams)
        # well inside the 600 s drain timeout: the drain did not wait for the hung engine
        rc = await asyncio.to_thread(r.proc.wait, 60)
    finally:
        os.kill(e.proc.pid, signal.SIGCONT)
    print(f"REPRO sigterm-hung-engine-3-streams: {[x.error for x in res]}")
    assert rc == 0
    for x in res:  # each told why, by an SSE error event, not cut or left hanging
        assert x.status == 200 and x.tokens and not x.done, x
        assert x.error and "while the router drained" in x.error, x.error


async def test_restart_with_a_fixed_replica_id(redis_proc, session):
    """A replica restarted under the same --scheduler-replica-id must not collide with the
    request ids its previous life left in the plane (was: 500 duplicate)."""
    from fastdeploy_harness import engine

    e = await engine(max_num_seqs=8, time_scale=0.0)
    p = SchedulerParams(
        name="global", port=redis_proc.port, topic="t", keepalive=1.5, lease=1.0,
        replica_id="fixed-1",
    ).validate()  # fmt: skip
    statuses = []
    try:
        for _life in range(2):
            r = await router([e.url], dataclasses.replace(p))
            try:
                assert await wait_until(lambda r=r: dispatcher(r).workers)
                res = await asyncio.gather(*(complete(session, r.url, 5) for _ in range(8)))
                statuses.append([x.status for x in res])
            finally:
                await r.stop()
    finally:
        await e.stop()
    bad = sum(s != 200 for s in statuses[1])
    print(f"REPRO fixed-replica-restart-8: second_life_not_200={bad}")
    assert statuses[0] == [200] * 8 and bad == 0, statuses


@pytest.mark.parametrize("server", ["raw", "aiohttp"])
async def test_every_client_disconnect_is_counted_as_499(
    server, spawn, session, caplog, monkeypatch
):
    """In the metrics and in the access log: a client that left is a 499 there, whether the
    router saw it as a cancelled handler or as a failed write (aiohttp does not cancel)."""
    from fastdeploy_harness import engine

    if server == "aiohttp":
        monkeypatch.setenv("NEXUSSCHED_AIOHTTP_SERVER", "1")
    caplog.set_level(logging.INFO, logger="nexussched.access")
    e = await engine(time_scale=1.0)
    r = await router([e.url], None)
    try:
        rr = r.app["router"]
        assert await wait_until(lambda: rr.registry.healthy_count() == 1)

        async def leave_early(k: int) -> None:
            body = {"model": "sim-llama-3-8b", "prompt": "x", "max_tokens": 500, "stream": True}
            hdr = {"x-request-id": f"leave-{k}"}
            async with session.post(r.url + "/v1/completions", json=body, headers=hdr) as resp:
                await resp.content.readany()  # the stream started; now go away
                resp.close()

        await asyncio.gather(*(leave_early(k) for k in range(30)))

        def counted() -> float:
            text = rr.metrics.render().decode()
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("nexussched_router_requests_total") and 'status="499"' in line
            )

        def logged() -> list[str]:
            return [m for m in caplog.messages if m.startswith("rid=leave-")]

        await wait_until(lambda: counted() >= 30 and len(logged()) >= 30, timeout=10)
        n = counted()
        lines = logged()
    finally:
        await r.stop()
        await e.stop()
    statuses = sorted(line.split(" status=", 1)[1].split(" ", 1)[0] for line in lines)
    print(f"REPRO disconnect-499-30 ({server}): counted={n:g} logged={statuses.count('499')}")
    assert n == 30
    assert statuses == ["499"] * 30, statuses
