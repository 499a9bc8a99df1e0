"""Live replay against real engine-sim and router processes."""

from __future__ import annotations

import json
import math
import socket
import urllib.request

import pytest

from nexussched.eval.live import replay_live
from nexussched.eval.metrics import summarize
from nexussched.perfmodel.telemetry import StepRecord
from nexussched.traces import Trace, TraceRequest

MODEL = "sim-llama-3-8b"


def make_trace(n: int = 30, gap: float = 0.02) -> Trace:
    reqs = [
        TraceRequest(
            id=i,
            arrival=i * gap,
            prompt_tokens=20 + (i * 37) % 180,
            output_tokens=5 + (i * 11) % 30,
        )
        for i in range(n)
    ]
    if n > 3:
        reqs[3].slo_ttft = 0.123  # a per-request SLO overrides the run's default
    return Trace("test", reqs)


@pytest.fixture(scope="module")
def servers(spawn_module):
    e = spawn_module("engine-sim", "--time-scale", "0.05", wait=False)
    router = spawn_module("router", "--backend", e.url, "--health-interval", "0.2", wait=False)
    e.wait_ready()
    router.wait_ready()
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with urllib.request.urlopen(router.url + "/backends", timeout=5) as r:
            if json.loads(r.read())["backends"][0]["healthy"]:
                break
        time.sleep(0.05)
    return e, router


async def test_replay_direct_and_through_the_router(servers):
    e, router = servers
    trace = make_trace()
    done: list[int] = []
    for url in (e.url, router.url + "/v1"):
        outs = await replay_live(
            url, trace, MODEL, slo_ttft=1.0, slo_tpot=0.05, time_scale=1.0, progress=done.append
        )
        assert [o.id for o in outs] == [r.id for r in trace.requests]
        for o, r in zip(outs, trace.requests, strict=True):
            assert o.completed, o.error
            assert o.output_tokens == r.output_tokens
            assert o.prompt_tokens == r.prompt_tokens
            assert 0 < o.ttft <= o.e2e
            assert o.tpot >= 0 and o.max_itl >= 0
            assert o.max_itl == 0 or o.max_itl >= o.tpot * 0.5
        assert outs[3].slo_ttft == 0.123 and outs[4].slo_ttft == 1.0
        assert outs[0].slo_tpot == 0.05
        s = summarize(outs)
        assert s["completed"] == len(trace) and s["failed"] == 0
        assert s["ttft_p50"] > 0 and s["throughput_rps"] > 0
        # arrivals follow the trace's spacing (sent on time, not all at once)
        assert outs[-1].arrival >= trace.requests[-1].arrival * 0.9
    assert sum(done) == 2 * len(trace)


async def test_concurrency_limit_and_rate(servers):
    e, _ = servers
    with urllib.request.urlopen(e.url + "/telemetry?limit=0", timeout=5) as r:
        start = int(r.headers["X-Telemetry-Total"])
    trace = make_trace(12, gap=0.001)
    outs = await replay_live(e.url, trace, MODEL, 1.0, 0.05, rate=2000.0, concurrency=2)
    assert all(o.completed for o in outs)
    with urllib.request.urlopen(e.url + f"/telemetry?since={start}", timeout=5) as r:
        recs = [StepRecord.from_dict(json.loads(x)) for x in r.read().decode().splitlines()]
    # the engine never had more than two requests at once
    assert recs and max(rec.num_decodes + len(rec.prefill_chunks) for rec in recs) <= 2
    # every prompt token is either computed or served from the engine's prefix cache (the
    # module's earlier test sent the same prompts)
    assert sum(rec.prefill_tokens + rec.cached_tokens for rec in recs) == sum(
        r.prompt_tokens for r in trace.requests
    )


async def test_model_from_the_endpoint_and_progress_bar(servers):
    _, router = servers
    outs = await replay_live(
        router.url, make_trace(4), None, 1.0, 0.05, time_scale=0, progress=True
    )
    assert all(o.completed for o in outs)


async def test_chat_endpoint(servers):
    _, router = servers
    outs = await replay_live(
        router.url, make_trace(5), MODEL, 1.0, 0.05, endpoint="chat", time_scale=0
    )
    assert all(
        o.completed and o.output_tokens == r.output_tokens
        for o, r in zip(outs, make_trace(5).requests, strict=True)
    )


async def test_failures_come_back_as_outcomes(servers):
    _, router = servers
    outs = await replay_live(router.url, make_trace(4), "no-such-model", 1.0, 0.05, time_scale=0)
    assert all(not o.completed and o.error.startswith("HTTP 404") for o in outs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    outs = await replay_live(dead, make_trace(3), MODEL, 1.0, 0.05, time_scale=0)
    assert all(not o.completed and o.error and math.isnan(o.e2e) for o in outs)
    assert summarize(outs)["slo_attainment"] == 0.0
    with pytest.raises(ValueError):
        await replay_live(dead, make_trace(1), MODEL, 1.0, 0.05, endpoint="embeddings")
