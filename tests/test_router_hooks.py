"""The router's extension points, served for real on 127.0.0.1 in front of engine-sim processes:
a custom Dispatcher, a policy that holds requests (route() -> None, pull()), and a policy that
re-binds queued requests (tick() -> Moves)."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
from collections import deque

import aiohttp
import pytest
from aiohttp import web

from nexussched.router.compose import create_app
from nexussched.router.config import RouterSettings, backend_from_url
from nexussched.router.dispatch import Dispatcher, ProxyCall
from nexussched.router.policies import Move, RoutingPolicy
from nexussched.router.policy_dispatch import PolicyDispatcher

MODEL = "sim-llama-3-8b"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def engines(spawn_module):
    # engine 0: real time and one sequence at a time, so a second request queues there
    e0 = spawn_module("engine-sim", "--time-scale", "1", "--max-num-seqs", "1", wait=False)
    e1 = spawn_module("engine-sim", "--time-scale", "0", wait=False)
    return [e0.wait_ready(), e1.wait_ready()]


async def serve(engines, dispatcher: Dispatcher):
    settings = RouterSettings(
        backends=[backend_from_url(e.url) for e in engines],
        health_interval=0.2,
        scrape_interval=0.2,
    )
    app = create_app(settings, dispatcher)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, app["router"], f"http://127.0.0.1:{port}"


async def post(session, url: str, max_tokens: int = 4) -> dict:
    async with session.post(
        url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": max_tokens}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


class LastBackend(Dispatcher):
    """A placement mode written against the Router's primitives: always the last backend."""

    async def dispatch(self, call: ProxyCall) -> web.StreamResponse:
        idx = len(self.router.backends) - 1
        up = await self.router.open_upstream(call, idx)
        return await self.router.relay(call, up)


async def test_custom_dispatcher(engines):
    runner, router, url = await serve(engines, LastBackend())
    try:
        async with aiohttp.ClientSession() as s:
            outs = await asyncio.gather(*[post(s, url) for _ in range(5)])
        assert all(o["usage"]["completion_tokens"] == 4 for o in outs)
        assert router.metrics.answered(router.backends[1].name, 200) == 5
        assert router.metrics.answered(router.backends[0].name, 200) == 0
    finally:
        await runner.cleanup()


class OnePerEngine(RoutingPolicy):
    """Holds every request at the router and hands an engine one at a time."""

    name = "one_per_engine"
    holds = True

    def __init__(self) -> None:
        self.queue: deque = deque()
        self.assigned = [0, 0]
        self.max_assigned = 0
        self.max_inflight_seen = 0

    def route(self, req, engines, now):
        self.queue.append(req)
        return None

    def pull(self, idx, engines, now):
        self.max_inflight_seen = max(self.max_inflight_seen, engines[idx].inflight)
        if self.queue and self.assigned[idx] == 0:
            self.assigned[idx] += 1
            self.max_assigned = max(self.max_assigned, self.assigned[idx])
            return [self.queue.popleft()]
        return []

    def on_finish(self, req_id, idx, now):
        self.assigned[idx] -= 1


async def test_holding_policy_releases_through_pull(engines):
    pol = OnePerEngine()
    runner, router, url = await serve(engines, PolicyDispatcher(pol))
    try:
        async with aiohttp.ClientSession() as s:
            outs = await asyncio.wait_for(
                asyncio.gather(*[post(s, url, max_tokens=3) for _ in range(6)]), timeout=30
            )
        assert all(o["usage"]["completion_tokens"] == 3 for o in outs)
        assert pol.max_assigned == 1 and pol.max_inflight_seen <= 1
        assert not pol.queue and pol.assigned == [0, 0]
        assert sum(b.sent for b in router.backends) == 6
    finally:
        await runner.cleanup()


class MoveSecond(RoutingPolicy):
    """Sends everything to engine 0, then re-binds the second request to engine 1."""

    name = "move_second"
    tick_interval = 0.05

    def __init__(self) -> None:
        self.ids: list = []
        self.moved = False

    def route(self, req, engines, now):
        self.ids.append(req.id)
        return 0

    def tick(self, engines, now):
        if len(self.ids) >= 2 and not self.moved:
            self.moved = True
            return [Move(self.ids[1], 0, 1)]
        return []


async def test_rebinding_moves_a_queued_request(engines):
    e0, e1 = engines
    aborts0 = metric(e0.url, "vllm:request_success_total", finished_reason="abort")
    pol = MoveSecond()
    runner, router, url = await serve(engines, PolicyDispatcher(pol))
    try:
        async with aiohttp.ClientSession() as s:
            first = asyncio.ensure_future(post(s, url, max_tokens=60))  # ~0.8 s on engine 0
            await asyncio.sleep(0.05)
            second = await asyncio.wait_for(post(s, url, max_tokens=5), timeout=10)
            assert second["usage"]["completion_tokens"] == 5
            assert not first.done()  # it finished before the first: it did not wait behind it
            assert (await first)["usage"]["completion_tokens"] == 60
        assert pol.moved and router.metrics.moves._value.get() == 1
        assert [b.sent for b in router.backends] == [2, 1]
        # the attempt on engine 0 was cancelled: the engine dropped the queued request
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if metric(e0.url, "vllm:request_success_total", finished_reason="abort") > aborts0:
                break
            await asyncio.sleep(0.05)
        assert metric(e0.url, "vllm:request_success_total", finished_reason="abort") == aborts0 + 1
    finally:
        await runner.cleanup()


class EndsOnce(RoutingPolicy):
    """Counts each request's end through on_end, the fused on_output + on_finish."""

    name = "ends_once"

    def __init__(self) -> None:
        self.ends: list[tuple[object, int, int | None]] = []

    def route(self, req, engines, now):
        return 1

    def on_output(self, req_id, output_tokens):
        raise AssertionError("on_end was defined: on_output is not called besides it")

    def on_finish(self, req_id, idx, now):
        raise AssertionError("on_end was defined: on_finish is not called besides it")

    def on_end(self, req_id, idx, now, output_tokens):
        self.ends.append((req_id, idx, output_tokens))


async def test_a_policy_with_on_end_gets_one_call_per_request(engines):
    pol = EndsOnce()
    runner, router, url = await serve(engines, PolicyDispatcher(pol))
    try:
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*[post(s, url, max_tokens=3) for _ in range(4)])
        assert sorted(t for _, _, t in pol.ends) == [3, 3, 3, 3]
        assert len({rid for rid, _, _ in pol.ends}) == 4 and {i for _, i, _ in pol.ends} == {1}
    finally:
        await runner.cleanup()


async def test_request_timeout_is_a_504_and_frees_the_engine(engines):
    e0, _ = engines
    aborts0 = metric(e0.url, "vllm:request_success_total", finished_reason="abort")
    settings = RouterSettings(backends=[backend_from_url(e0.url)], request_timeout=0.3)
    app = create_app(settings)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = _port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://127.0.0.1:{port}/v1/completions",
                json={"model": MODEL, "prompt": "x", "max_tokens": 500},
            ) as r:
                assert r.status == 504
                assert (await r.json())["error"]["code"] == "timeout"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if metric(e0.url, "vllm:request_success_total", finished_reason="abort") > aborts0:
                break
            await asyncio.sleep(0.05)
        assert metric(e0.url, "vllm:request_success_total", finished_reason="abort") == aborts0 + 1
        assert app["router"].backends[0].healthy  # slow is not dead
    finally:
        await runner.cleanup()


async def test_fast_mode_engine_serves_many_concurrent_requests(engines):
    """engine-sim with --time-scale 0 (fast mode): every request done, lengths exact."""
    _, fast = engines

    async def one(s, i):
        body = {
            "model": MODEL,
            "prompt": [1] * (10 + i),
            "max_tokens": 1 + i % 50,
            "ignore_eos": True,
        }
        async with s.post(fast.url + "/v1/completions", json=body) as r:
            return (await r.json())["usage"]

    async with aiohttp.ClientSession() as s:
        us = await asyncio.gather(*[one(s, i) for i in range(150)])
    assert [u["completion_tokens"] for u in us] == [1 + i % 50 for i in range(150)]
    assert [u["prompt_tokens"] for u in us] == [10 + i for i in range(150)]
